//! `attention_prefill`: the reference's window rule and its agreement with the decode
//! reference, and on CUDA the tensor-core kernel against the f64 reference on random shapes
//! (GQA, T off the 64-row tile, chunked windows crossing tiles, a cache before the step, rows
//! before the first key, strided cache views on and off the 16-byte grid), within the bound of
//! docs/numerics.md ("Prefill attention").

use l4_core::testing::{Tolerance, assert_close, gamma, test_devices};
use l4_core::{DType, Device, Tensor};

use super::reference::visible;
use super::{PrefillShape, prefill_attention, reference};
use crate::attention_decode::{self, DecodeShape};
use crate::testing::{Rng, fresh_seed, nvrtc_or_skip};
use crate::{ATTENTION_PREFILL, compile_cubin};

const U32: f64 = f32::EPSILON as f64 / 2.0;

fn random(shape: &[usize], rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| ((rng.next() >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
        .collect();
    Tensor::from_vec(values, shape, Device::Cpu).unwrap()
}

/// One f32 evaluation with 16-bit P (the kernel rounds the softmax weights to the input dtype
/// before P·V) against the exact result, per element: the decode-attention bound plus
/// `2·u(dtype)` relative for the rounded weights (numerator and normaliser disagree by it),
/// plus the final rounding on each side.
fn bound(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tolerance {
    let max_abs = |t: &Tensor| t.to_f64_vec().unwrap().iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let (dh, keys) = (q.shape()[3], k.shape()[2]);
    let e_s = gamma(dh, U32) * max_abs(q) * max_abs(k) * dh as f64 * scale;
    let u_half = match q.dtype() {
        DType::BF16 => 2f64.powi(-8),
        _ => 2f64.powi(-11),
    };
    let relative = 2.0 * e_s + (keys as f64 + 4.0) * U32 + gamma(keys, U32) + 2.0 * u_half + 2.0 * u_half;
    Tolerance {
        atol: relative * max_abs(v),
        rtol: 0.0,
    }
}

#[test]
fn windows_are_causal_and_chunk_aligned() {
    assert!(visible(5, 5, None) && visible(5, 0, None) && !visible(5, 6, None));
    // Chunk 4: position 9 sees 8 and 9 only; 8 starts a chunk and sees itself only.
    assert!(visible(9, 8, Some(4)) && !visible(9, 7, Some(4)) && !visible(9, 10, Some(4)));
    assert!(visible(8, 8, Some(4)) && !visible(8, 7, Some(4)));
}

#[test]
fn the_reference_agrees_with_the_decode_reference() {
    let mut rng = Rng(fresh_seed());
    let (b, hk, g, t, dh, s) = (2, 2, 3, 4, 8, 11);
    let q = random(&[b, hk * g, t, dh], &mut rng);
    let k = random(&[b, hk, s, dh], &mut rng);
    let v = random(&[b, hk, s, dh], &mut rng);
    let shape = PrefillShape {
        q_start: 7,
        k_start: 0,
        chunk: None,
        scale: 0.4,
    };
    let got = reference::prefill_attention(&q, &k, &v, shape).unwrap();
    // The decode layout: the g heads × t tokens of each KV head as rows.
    let rows = q.reshape(&[b, hk, g * t, dh]).unwrap();
    let decode = DecodeShape {
        tq: t,
        q_start: 7,
        k_start: 0,
        scale: 0.4,
    };
    let want = attention_decode::reference::decode_attention(&rows, &k, &v, decode).unwrap();
    // Both are f64 evaluations rounded once into f32.
    let tol = Tolerance::elementwise(DType::F32).pairwise();
    assert_close(
        &got.to_f64_vec().unwrap(),
        &want.to_f64_vec().unwrap(),
        tol,
        "prefill vs decode reference",
    )
    .unwrap();
}

#[test]
fn cuda_matches_the_reference() {
    let Some(device) = test_devices()
        .into_iter()
        .find(|d| d.is_cuda() && nvrtc_or_skip("cuda_matches_the_reference"))
    else {
        eprintln!("skipping cuda_matches_the_reference: no usable CUDA device");
        return;
    };
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    // Every (head width, chunk) pair once; dtype, GQA group, T and the cache drawn apart from
    // them, so no dtype or group is tied to one width.
    for case in 0..16 {
        let dtype = [DType::BF16, DType::F16][rng.below(2)];
        let dh = [16, 32, 64, 128][case % 4];
        let (b, hk, g) = (1 + rng.below(2), 1 + rng.below(2), [1, 2, 5][rng.below(3)]);
        let t = [1, 17, 64, 130, 200][rng.below(5)];
        let cached = [0, 3, 70][rng.below(3)];
        let chunk = [None, Some(8), Some(64), Some(100)][case / 4];
        // Some steps start before the first key: with no cache their first rows see no key at
        // all (output 0), and the first key tiles are wholly masked for them.
        let early = if rng.below(3) == 0 { 1 + rng.below(5) } else { 0 };
        let pad = rng.below(3);
        let s = cached + t;
        let q = random(&[b, hk * g, t, dh], &mut rng).to_dtype(dtype).unwrap();
        // Half the cases read rows of width dh out of rows of dh + 3 starting one element in:
        // rows off the 16-byte grid, which the kernel loads element by element.
        let (width, first) = if rng.below(2) == 0 { (dh, 0) } else { (dh + 3, 1) };
        let full_k = random(&[b, hk, s + pad, width], &mut rng).to_dtype(dtype).unwrap();
        let full_v = random(&[b, hk, s + pad, width], &mut rng).to_dtype(dtype).unwrap();
        let view = |x: &Tensor| x.narrow(2, pad, s).unwrap().narrow(3, first, dh).unwrap();
        let (k, v) = (view(&full_k), view(&full_v));
        let shape = PrefillShape {
            q_start: cached + 5 - early,
            k_start: 5,
            chunk,
            scale: (dh as f64).powf(-0.5),
        };
        let want = reference::prefill_attention(&q, &k, &v, shape).unwrap();
        let on = |x: &Tensor| x.to_device(device).unwrap();
        let (kd, vd) = (view(&on(&full_k)), view(&on(&full_v)));
        let context = format!(
            "seed {seed}: b {b} hk {hk} g {g} t {t} cached {cached} early {early} dh {dh} row width {width} {chunk:?} {dtype}"
        );
        let got = prefill_attention(&on(&q), &kd, &vd, shape).unwrap_or_else(|e| panic!("{context}: {e}"));
        let tol = bound(&q, &k, &v, shape.scale);
        assert_close(&got.to_f64_vec().unwrap(), &want.to_f64_vec().unwrap(), tol, &context).unwrap();
    }
}

#[test]
fn bad_operands_are_errors() {
    let q = Tensor::zeros(&[1, 3, 4, 8], DType::F32, Device::Cpu).unwrap();
    let k = Tensor::zeros(&[1, 2, 4, 8], DType::F32, Device::Cpu).unwrap();
    let shape = PrefillShape {
        q_start: 0,
        k_start: 0,
        chunk: None,
        scale: 1.0,
    };
    assert!(prefill_attention(&q, &k, &k, shape).is_err(), "3 heads over 2 KV heads");
    let q = Tensor::zeros(&[1, 2, 4, 8], DType::F32, Device::Cpu).unwrap();
    assert!(prefill_attention(&q, &k, &k, shape).is_ok());
    assert!(
        prefill_attention(
            &q,
            &k,
            &k,
            PrefillShape {
                chunk: Some(0),
                ..shape
            }
        )
        .is_err()
    );
    assert!(prefill_attention(&q, &k.to_dtype(DType::BF16).unwrap(), &k, shape).is_err());
}

/// Heads are grid y and the batch grid z, each at most 65535: more is an error before any
/// launch (checked on host tensors, which the launcher inspects before it needs a device).
#[test]
fn the_launcher_rejects_grids_past_cudas_limits() {
    let q = Tensor::zeros(&[1, 65536, 1, 16], DType::BF16, Device::Cpu).unwrap();
    let k = Tensor::zeros(&[1, 1, 1, 16], DType::BF16, Device::Cpu).unwrap();
    let shape = PrefillShape {
        q_start: 0,
        k_start: 0,
        chunk: None,
        scale: 1.0,
    };
    let err = super::cuda::prefill_attention(&q, &k, &k, shape).unwrap_err();
    assert!(err.to_string().contains("too large for the launch"), "{err}");
}

#[test]
fn compiles_for_every_declared_arch_without_spills() {
    if !nvrtc_or_skip("compiles_for_every_declared_arch_without_spills") {
        return;
    }
    for arch in ATTENTION_PREFILL.archs {
        let compiled = compile_cubin(&ATTENTION_PREFILL, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
    }
}

mod paged {
    //! The paged variant: shuffled block tables give bit-identical results to contiguous keys,
    //! a chunk of at least the sequence is global attention, and decoding token t from the same
    //! cache gives row t of the prefill output.

    use super::*;
    use crate::attention_decode::{PagedDecodeShape, paged_decode_attention};
    use crate::attention_prefill::{PagedPrefillShape, paged_prefill_attention};
    use crate::paged_kv::tests::{bits, devices, paged_from};

    /// bf16 on CUDA (the kernel's dtypes), f32 on the CPU.
    fn dtype_on(device: Device) -> DType {
        if device.is_cuda() { DType::BF16 } else { DType::F32 }
    }

    #[test]
    fn shuffled_block_tables_equal_contiguous_keys() {
        let seed = fresh_seed();
        let mut rng = Rng(seed);
        for device in devices("shuffled_block_tables_equal_contiguous_keys") {
            for case in 0..8 {
                let (b, hk, g) = (1 + rng.below(2), 1 + rng.below(2), [1, 2, 5][case % 3]);
                let dh = [16, 64, 128, 32][case % 4];
                let t = 1 + rng.below(150);
                let cached = rng.below(100);
                let block = [1, 8, 64][rng.below(3)];
                let chunk = [None, Some(16), Some(64), Some(100)][case % 4];
                let on = |x: Tensor| x.to_dtype(dtype_on(device)).unwrap().to_device(device).unwrap();
                let q = on(random(&[b, hk * g, t, dh], &mut rng));
                let k = on(random(&[b, hk, cached + t, dh], &mut rng));
                let v = on(random(&[b, hk, cached + t, dh], &mut rng));
                let k_start = rng.below(40);
                let cache = paged_from(&k, &v, k_start, block, &mut rng);
                let scale = (dh as f64).powf(-0.5);
                let q_start = k_start + cached;
                let got = paged_prefill_attention(&q, &cache, PagedPrefillShape { q_start, chunk, scale }).unwrap();
                let want = prefill_attention(
                    &q,
                    &k,
                    &v,
                    PrefillShape {
                        q_start,
                        k_start,
                        chunk,
                        scale,
                    },
                )
                .unwrap();
                let context = format!(
                    "seed {seed}, case {case}, {device}: b {b} hk {hk} g {g} t {t} cached {cached} dh {dh} block {block} chunk {chunk:?}"
                );
                assert!(bits(&got) == bits(&want), "{context}");
                // A chunk covering every position is global attention, bit for bit.
                if chunk.is_none() {
                    let wide = Some(q_start + t);
                    let chunked = paged_prefill_attention(
                        &q,
                        &cache,
                        PagedPrefillShape {
                            q_start,
                            chunk: wide,
                            scale,
                        },
                    )
                    .unwrap();
                    assert!(bits(&chunked) == bits(&got), "chunk {wide:?} vs global: {context}");
                }
            }
        }
    }

    #[test]
    fn decoding_token_t_gives_row_t_of_the_prefill() {
        let seed = fresh_seed();
        let mut rng = Rng(seed);
        for device in devices("decoding_token_t_gives_row_t_of_the_prefill") {
            for chunk in [None, Some(32)] {
                let (b, hk, g, dh, t) = (2, 2, 5, 64, 90);
                let on = |x: Tensor| x.to_dtype(dtype_on(device)).unwrap().to_device(device).unwrap();
                let q = on(random(&[b, hk * g, t, dh], &mut rng));
                let k = on(random(&[b, hk, t, dh], &mut rng));
                let v = on(random(&[b, hk, t, dh], &mut rng));
                let cache = paged_from(&k, &v, 0, 16, &mut rng);
                let scale = (dh as f64).powf(-0.5);
                let prefill = paged_prefill_attention(
                    &q,
                    &cache,
                    PagedPrefillShape {
                        q_start: 0,
                        chunk,
                        scale,
                    },
                )
                .unwrap();
                let cpu = |x: &Tensor| x.to_device(Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
                // One evaluation each against the exact result, so twice the bound between them.
                let tol = if device.is_cuda() {
                    let one = bound(&q.to_device(Device::Cpu).unwrap(), &cpu(&k), &cpu(&v), scale);
                    Tolerance {
                        atol: 2.0 * one.atol,
                        rtol: 0.0,
                    }
                } else {
                    Tolerance::exact()
                };
                for pos in [0, 1, 31, 32, 63, 89] {
                    // Row pos of every head, grouped by KV head: [b, hk, g, dh].
                    let q_row = q
                        .narrow(2, pos, 1)
                        .unwrap()
                        .contiguous()
                        .unwrap()
                        .reshape(&[b, hk, g, dh])
                        .unwrap();
                    let shape = PagedDecodeShape {
                        tq: 1,
                        q_start: pos,
                        chunk,
                        scale,
                    };
                    let decoded = paged_decode_attention(&q_row, &cache, shape).unwrap();
                    let row = crate::ops::contiguous(&prefill.narrow(2, pos, 1).unwrap()).unwrap();
                    let context = format!("seed {seed}, {device}, chunk {chunk:?}, position {pos}");
                    assert_close(
                        &decoded.to_f64_vec().unwrap(),
                        &row.to_f64_vec().unwrap(),
                        tol,
                        &context,
                    )
                    .unwrap();
                }
            }
        }
    }
}
