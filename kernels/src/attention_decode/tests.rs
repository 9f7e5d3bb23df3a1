//! `attention_decode` on every device against its f64 reference, on random shapes: GQA groups,
//! several step tokens, keys across several splits, chunk-style key windows that start after
//! position 0, strided (narrowed) cache views; plus the reference against plain-op attention and
//! bad input.

use l4_core::testing::{Tolerance, assert_close, gamma, test_devices};
use l4_core::{DType, Device, Tensor};

use super::{DecodeShape, SPLIT, decode_attention, reference};
use crate::testing::{Rng, fresh_seed, nvrtc_or_skip};
use crate::{ATTENTION_DECODE, compile_cubin};

const U32: f64 = f32::EPSILON as f64 / 2.0;

fn random(shape: &[usize], rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| ((rng.next() >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
        .collect();
    Tensor::from_vec(values, shape, Device::Cpu).unwrap()
}

/// The bound of docs/numerics.md ("Decode attention") for one f32 evaluation against the exact
/// result: scores off by `e_s = γ_dh·scale·max Σ|q·k|`, softmax weights then off by a relative
/// `2·e_s + (s + 4)·u`, the weighted sum by `γ_s`, all times `max |v|`; rounding into the dtype
/// adds `u(dtype)` relative (the reference rounds once too, hence twice that).
fn bound(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, dtype: DType) -> Tolerance {
    let (qv, kv) = (q.to_f64_vec().unwrap(), k.to_f64_vec().unwrap());
    let dh = q.shape()[3];
    let keys = k.shape()[2];
    let max_abs = |x: &[f64]| x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let score_mass = max_abs(&qv) * max_abs(&kv) * dh as f64 * scale;
    let e_s = gamma(dh, U32) * score_mass;
    let vmax = max_abs(&v.to_f64_vec().unwrap());
    let u_out = match dtype {
        DType::F32 => U32,
        DType::BF16 => 2f64.powi(-8),
        _ => 2f64.powi(-11),
    };
    Tolerance {
        atol: (2.0 * e_s + (keys as f64 + 4.0) * U32 + gamma(keys, U32)) * vmax + 2.0 * u_out * vmax,
        rtol: 0.0,
    }
}

#[test]
fn matches_the_reference_on_every_device() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    let devices: Vec<Device> = test_devices()
        .into_iter()
        .filter(|d| d.is_cuda() && nvrtc_or_skip("matches_the_reference_on_every_device"))
        .collect();
    for case in 0..12 {
        let (b, hk) = (1 + rng.below(2), 1 + rng.below(3));
        let g = [1, 2, 5, 8][case % 4];
        let tq = if g <= 4 { 1 + rng.below(2) } else { 1 };
        let dh = [16, 64, 128, 40][case % 4];
        let keys = [1, 37, SPLIT, SPLIT + 3, 3 * SPLIT + 11][case % 5];
        let rows = g * tq;
        let dtype = [DType::F32, DType::BF16][case % 2];
        // Cache views narrowed out of a longer buffer, as the model's chunked caches are.
        let pad = rng.below(5);
        let full_k = random(&[b, hk, keys + pad, dh], &mut rng);
        let full_v = random(&[b, hk, keys + pad, dh], &mut rng);
        let q = random(&[b, hk, rows, dh], &mut rng).to_dtype(dtype).unwrap();
        let (full_k, full_v) = (full_k.to_dtype(dtype).unwrap(), full_v.to_dtype(dtype).unwrap());
        let k_start = rng.below(100);
        let shape = DecodeShape {
            tq,
            q_start: k_start + keys - tq.min(keys),
            k_start,
            scale: (dh as f64).powf(-0.5),
        };
        let k = full_k.narrow(2, pad, keys).unwrap();
        let v = full_v.narrow(2, pad, keys).unwrap();
        let want = reference::decode_attention(&q, &k, &v, shape).unwrap();
        let tol = bound(&q, &k, &v, shape.scale, dtype);
        for &device in &devices {
            let on = |t: &Tensor| t.to_device(device).unwrap();
            let (kd, vd) = (
                on(&full_k).narrow(2, pad, keys).unwrap(),
                on(&full_v).narrow(2, pad, keys).unwrap(),
            );
            let context = format!("seed {seed}: b {b} hk {hk} g {g} tq {tq} dh {dh} keys {keys} {dtype} on {device}");
            let got = decode_attention(&on(&q), &kd, &vd, shape).unwrap_or_else(|e| panic!("{context}: {e}"));
            assert_close(&got.to_f64_vec().unwrap(), &want.to_f64_vec().unwrap(), tol, &context).unwrap();
        }
    }
}

/// A long context: more splits than the combine's 8 warps, not a multiple of them, in Scout's
/// head layout (5 query heads per KV head, dh 128, bf16), with the two step tokens of a
/// speculative step; and the result is bit-identical on a second run.
#[test]
fn a_context_of_many_splits_matches_the_reference() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    let devices: Vec<Device> = test_devices()
        .into_iter()
        .filter(|d| d.is_cuda() && nvrtc_or_skip("a_context_of_many_splits_matches_the_reference"))
        .collect();
    for &device in &devices {
        for (g, tq, keys) in [(5, 1, 43 * SPLIT + 17), (2, 2, 9 * SPLIT)] {
            let (b, hk, dh, dtype) = (1, 2, 128, DType::BF16);
            let q = random(&[b, hk, g * tq, dh], &mut rng).to_dtype(dtype).unwrap();
            let k = random(&[b, hk, keys, dh], &mut rng).to_dtype(dtype).unwrap();
            let v = random(&[b, hk, keys, dh], &mut rng).to_dtype(dtype).unwrap();
            let shape = DecodeShape {
                tq,
                q_start: 7 + keys - tq,
                k_start: 7,
                scale: (dh as f64).powf(-0.5),
            };
            let want = reference::decode_attention(&q, &k, &v, shape).unwrap();
            let on = |t: &Tensor| t.to_device(device).unwrap();
            let got = decode_attention(&on(&q), &on(&k), &on(&v), shape).unwrap();
            let context = format!("seed {seed}: g {g} tq {tq} keys {keys} on {device}");
            let tol = bound(&q, &k, &v, shape.scale, dtype);
            assert_close(&got.to_f64_vec().unwrap(), &want.to_f64_vec().unwrap(), tol, &context).unwrap();
            let again = decode_attention(&on(&q), &on(&k), &on(&v), shape).unwrap();
            assert!(
                got.to_f64_vec().unwrap() == again.to_f64_vec().unwrap(),
                "a second run differs: {context}"
            );
        }
    }
}

/// The reference against attention composed of plain ops (matmul, mask, softmax, matmul).
#[test]
fn the_reference_is_masked_softmax_attention() {
    let mut rng = Rng(fresh_seed());
    let (rows, tq, dh, keys) = (4, 2, 8, 9);
    let q = random(&[1, 1, rows, dh], &mut rng);
    let k = random(&[1, 1, keys, dh], &mut rng);
    let v = random(&[1, 1, keys, dh], &mut rng);
    let shape = DecodeShape {
        tq,
        q_start: 12,
        k_start: 5,
        scale: 0.3,
    };
    let got = reference::decode_attention(&q, &k, &v, shape).unwrap();
    let scores = q.matmul(&k.transpose(2, 3).unwrap()).unwrap().scale(0.3).unwrap();
    let mut mask = vec![0.0f32; rows * keys];
    for r in 0..rows {
        for j in 0..keys {
            if 5 + j > 12 + r % tq {
                mask[r * keys + j] = f32::NEG_INFINITY;
            }
        }
    }
    let mask = Tensor::from_vec(mask, &[rows, keys], Device::Cpu).unwrap();
    let want = scores.add(&mask).unwrap().softmax(3).unwrap().matmul(&v).unwrap();
    let tol = bound(&q, &k, &v, 0.3, DType::F32);
    let pairwise = Tolerance {
        atol: 2.0 * tol.atol,
        rtol: 0.0,
    };
    assert_close(
        &got.to_f64_vec().unwrap(),
        &want.to_f64_vec().unwrap(),
        pairwise,
        "reference vs ops",
    )
    .unwrap();
}

#[test]
fn bad_operands_are_errors() {
    let q = Tensor::zeros(&[1, 2, 3, 8], DType::F32, Device::Cpu).unwrap();
    let k = Tensor::zeros(&[1, 2, 5, 8], DType::F32, Device::Cpu).unwrap();
    let shape = DecodeShape {
        tq: 1,
        q_start: 4,
        k_start: 0,
        scale: 1.0,
    };
    assert!(decode_attention(&q, &k, &k, shape).is_ok());
    assert!(
        decode_attention(&q, &k, &k, DecodeShape { tq: 2, ..shape }).is_err(),
        "3 rows, tq 2"
    );
    assert!(
        decode_attention(&q, &k, &k, DecodeShape { k_start: 5, ..shape }).is_err(),
        "no visible key"
    );
    let wide = Tensor::zeros(&[1, 2, 5, 9], DType::F32, Device::Cpu).unwrap();
    assert!(decode_attention(&q, &wide, &wide, shape).is_err(), "head dims differ");
    let bf = k.to_dtype(DType::BF16).unwrap();
    assert!(decode_attention(&q, &bf, &bf, shape).is_err(), "dtypes differ");
}

/// The (batch, KV head) groups are grid y, at most 65535: more is an error before any launch
/// (checked on host tensors, which the launcher inspects before it needs a device).
#[test]
fn the_launcher_rejects_grids_past_cudas_limits() {
    let q = Tensor::zeros(&[2, 32768, 1, 16], DType::BF16, Device::Cpu).unwrap();
    let k = Tensor::zeros(&[2, 32768, 1, 16], DType::BF16, Device::Cpu).unwrap();
    let shape = DecodeShape {
        tq: 1,
        q_start: 0,
        k_start: 0,
        scale: 1.0,
    };
    let err = super::cuda::decode_attention(&q, &k, &k, shape).unwrap_err();
    assert!(err.to_string().contains("too large for the launch"), "{err}");
}

#[test]
fn compiles_for_every_declared_arch_without_spills() {
    if !nvrtc_or_skip("compiles_for_every_declared_arch_without_spills") {
        return;
    }
    for arch in ATTENTION_DECODE.archs {
        let compiled = compile_cubin(&ATTENTION_DECODE, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
    }
}

mod paged {
    //! The paged variant: shuffled block tables give bit-identical results to contiguous keys,
    //! chunked windows hide the previous chunk's tail still held in the first block, and a
    //! sequence's result does not depend on the batch it is decoded in.

    use super::*;
    use crate::attention_decode::{PagedDecodeShape, paged_decode_attention};
    use crate::paged_kv::tests::{bits, devices, paged_from};

    #[test]
    fn shuffled_block_tables_equal_contiguous_keys() {
        let seed = fresh_seed();
        let mut rng = Rng(seed);
        for device in devices("shuffled_block_tables_equal_contiguous_keys") {
            for case in 0..10 {
                let (b, hk, g) = (1 + rng.below(2), 1 + rng.below(3), [1, 2, 5, 8][case % 4]);
                let tq = if g <= 4 { 1 + rng.below(2) } else { 1 };
                let dh = [16, 64, 128, 40][case % 4];
                let keys = [1, 37, SPLIT, SPLIT + 3, 3 * SPLIT + 11][case % 5].max(tq);
                let block = [1, 4, 16, 64][rng.below(4)];
                let dtype = [DType::F32, DType::BF16][case % 2];
                let on = |t: Tensor| t.to_dtype(dtype).unwrap().to_device(device).unwrap();
                let q = on(random(&[b, hk, g * tq, dh], &mut rng));
                let k = on(random(&[b, hk, keys, dh], &mut rng));
                let v = on(random(&[b, hk, keys, dh], &mut rng));
                let k_start = rng.below(100);
                let cache = paged_from(&k, &v, k_start, block, &mut rng);
                let q_start = k_start + keys - tq;
                let scale = (dh as f64).powf(-0.5);
                let paged = PagedDecodeShape {
                    tq,
                    q_start,
                    chunk: None,
                    scale,
                };
                let got = paged_decode_attention(&q, &cache, paged).unwrap();
                let contiguous = DecodeShape {
                    tq,
                    q_start,
                    k_start,
                    scale,
                };
                let want = decode_attention(&q, &k, &v, contiguous).unwrap();
                let context = format!(
                    "seed {seed}, case {case}, {device}: b {b} hk {hk} g {g} tq {tq} dh {dh} keys {keys} block {block}"
                );
                assert!(bits(&got) == bits(&want), "{context}");
            }
        }
    }

    #[test]
    fn chunked_windows_hide_the_previous_chunk() {
        let seed = fresh_seed();
        let mut rng = Rng(seed);
        for device in devices("chunked_windows_hide_the_previous_chunk") {
            for case in 0..6 {
                let (b, hk, g, dh) = (1 + rng.below(2), 1 + rng.below(2), [1, 5][case % 2], 64);
                let chunk = [8, 300, 600][case % 3];
                let dtype = [DType::F32, DType::BF16][case % 2];
                let on = |t: Tensor| t.to_dtype(dtype).unwrap().to_device(device).unwrap();
                // The cache starts mid-chunk before the query's chunk, as a chunked layer's pool
                // does when its chunk is not a multiple of the block.
                let q_pos = 3 * chunk + rng.below(chunk);
                let k_start = 2 * chunk + rng.below(chunk);
                let keys = q_pos + 1 - k_start;
                let q = on(random(&[b, hk, g, dh], &mut rng));
                let k = on(random(&[b, hk, keys, dh], &mut rng));
                let v = on(random(&[b, hk, keys, dh], &mut rng));
                let cache = paged_from(&k, &v, k_start, 16, &mut rng);
                let scale = (dh as f64).powf(-0.5);
                let shape = PagedDecodeShape {
                    tq: 1,
                    q_start: q_pos,
                    chunk: Some(chunk),
                    scale,
                };
                let got = paged_decode_attention(&q, &cache, shape).unwrap();
                let window = q_pos - q_pos % chunk;
                let (kw, vw) = (
                    k.narrow(2, window - k_start, q_pos + 1 - window).unwrap(),
                    v.narrow(2, window - k_start, q_pos + 1 - window).unwrap(),
                );
                let cpu = |t: &Tensor| t.to_device(Device::Cpu).unwrap();
                let contiguous = DecodeShape {
                    tq: 1,
                    q_start: q_pos,
                    k_start: window,
                    scale,
                };
                let want = reference::decode_attention(&cpu(&q), &cpu(&kw), &cpu(&vw), contiguous).unwrap();
                let context =
                    format!("seed {seed}, case {case}, {device}: chunk {chunk} q {q_pos} keys from {k_start}");
                let tol = if device.is_cuda() {
                    bound(&cpu(&q), &cpu(&kw), &cpu(&vw), scale, dtype)
                } else {
                    Tolerance::exact()
                };
                assert_close(&got.to_f64_vec().unwrap(), &want.to_f64_vec().unwrap(), tol, &context).unwrap();
            }
        }
    }

    /// A step of several tokens whose rows straddle a chunk boundary: each row sees its own
    /// chunk only, as if it were decoded alone over its window's keys.
    #[test]
    fn rows_straddling_a_chunk_boundary_use_their_own_windows() {
        let seed = fresh_seed();
        let mut rng = Rng(seed);
        for device in devices("rows_straddling_a_chunk_boundary_use_their_own_windows") {
            let (b, hk, g, tq, dh, chunk) = (2, 2, 2, 4, 64, 16);
            let dtype = [DType::F32, DType::BF16][rng.below(2)];
            let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(device).unwrap();
            let k_start = 5 + rng.below(10); // mid-chunk, in the previous chunk
            let q_start = 2 * chunk - 2; // rows at 30, 31 | 32, 33
            let keys = q_start + tq - k_start;
            let q = random(&[b, hk, g * tq, dh], &mut rng);
            let k = random(&[b, hk, keys, dh], &mut rng);
            let v = random(&[b, hk, keys, dh], &mut rng);
            let cache = paged_from(&on(&k), &on(&v), k_start, 4, &mut rng);
            let scale = (dh as f64).powf(-0.5);
            let shape = PagedDecodeShape {
                tq,
                q_start,
                chunk: Some(chunk),
                scale,
            };
            let got = paged_decode_attention(&on(&q), &cache, shape)
                .unwrap()
                .to_f64_vec()
                .unwrap();
            let cpu = |t: &Tensor| t.to_dtype(dtype).unwrap();
            for ti in 0..tq {
                let pos = q_start + ti;
                let window = pos - pos % chunk;
                // Row ti of every head of the group: rows gi·tq + ti.
                let rows: Vec<Tensor> = (0..g).map(|gi| q.narrow(2, gi * tq + ti, 1).unwrap()).collect();
                let q_one = crate::ops::cat(&rows.iter().collect::<Vec<_>>(), 2).unwrap();
                let kw = k.narrow(2, window - k_start, pos + 1 - window).unwrap();
                let vw = v.narrow(2, window - k_start, pos + 1 - window).unwrap();
                let one = DecodeShape {
                    tq: 1,
                    q_start: pos,
                    k_start: window,
                    scale,
                };
                let (q_one, kw, vw) = (
                    cpu(&q_one),
                    cpu(&kw).contiguous().unwrap(),
                    cpu(&vw).contiguous().unwrap(),
                );
                let want = reference::decode_attention(&q_one, &kw, &vw, one)
                    .unwrap()
                    .to_f64_vec()
                    .unwrap();
                let tol = if device.is_cuda() {
                    bound(&q_one, &kw, &vw, scale, dtype)
                } else {
                    Tolerance::exact()
                };
                // got [b, hk, g·tq, dh] → the rows of token ti.
                let mut picked = Vec::new();
                for group in 0..b * hk {
                    for gi in 0..g {
                        let row = group * g * tq + gi * tq + ti;
                        picked.extend_from_slice(&got[row * dh..(row + 1) * dh]);
                    }
                }
                let context = format!("seed {seed}, {device}, {dtype}, token {ti} at {pos}, keys from {k_start}");
                assert_close(&picked, &want, tol, &context).unwrap();
            }
        }
    }

    #[test]
    fn a_sequence_decodes_the_same_in_any_batch() {
        let seed = fresh_seed();
        let mut rng = Rng(seed);
        for device in devices("a_sequence_decodes_the_same_in_any_batch") {
            let (b, hk, g, dh, keys) = (3, 2, 5, 128, 700);
            let on = |t: Tensor| t.to_dtype(DType::BF16).unwrap().to_device(device).unwrap();
            let q = on(random(&[b, hk, g, dh], &mut rng));
            let k = on(random(&[b, hk, keys, dh], &mut rng));
            let v = on(random(&[b, hk, keys, dh], &mut rng));
            let shape = PagedDecodeShape {
                tq: 1,
                q_start: keys - 1,
                chunk: None,
                scale: 0.1,
            };
            let batched = paged_decode_attention(&q, &paged_from(&k, &v, 0, 64, &mut rng), shape).unwrap();
            for i in 0..b {
                let one = |x: &Tensor| x.narrow(0, i, 1).unwrap();
                let alone =
                    paged_decode_attention(&one(&q), &paged_from(&one(&k), &one(&v), 0, 64, &mut rng), shape).unwrap();
                assert!(
                    bits(&alone) == bits(&one(&batched)),
                    "seed {seed}, sequence {i} on {device}"
                );
            }
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let k = Tensor::zeros(&[1, 2, 5, 8], DType::F32, Device::Cpu).unwrap();
        let cache = paged_from(&k, &k, 10, 4, &mut Rng(1));
        let q = Tensor::zeros(&[1, 2, 3, 8], DType::F32, Device::Cpu).unwrap();
        let shape = PagedDecodeShape {
            tq: 1,
            q_start: 14,
            chunk: None,
            scale: 1.0,
        };
        assert!(paged_decode_attention(&q, &cache, shape).is_ok());
        assert!(
            paged_decode_attention(&q, &cache, PagedDecodeShape { q_start: 9, ..shape }).is_err(),
            "no key"
        );
        let chunked = PagedDecodeShape {
            chunk: Some(4),
            q_start: 16,
            ..shape
        };
        assert!(
            paged_decode_attention(&q, &cache, chunked).is_err(),
            "the chunk at 16 holds no cached key"
        );
        assert!(
            paged_decode_attention(
                &q,
                &cache,
                PagedDecodeShape {
                    chunk: Some(0),
                    ..shape
                }
            )
            .is_err()
        );
        let other_heads = Tensor::zeros(&[1, 3, 3, 8], DType::F32, Device::Cpu).unwrap();
        assert!(paged_decode_attention(&other_heads, &cache, shape).is_err(), "kv heads");
        let bf = q.to_dtype(DType::BF16).unwrap();
        assert!(paged_decode_attention(&bf, &cache, shape).is_err(), "dtype");
    }
}
