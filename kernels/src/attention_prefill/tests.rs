//! `attention_prefill`: the reference's window rule and its agreement with the decode
//! reference, and on CUDA the tensor-core kernel against the f64 reference on random shapes
//! (GQA, T off the 64-row tile, chunked windows crossing tiles, a cache before the step,
//! strided cache views), within the bound of docs/numerics.md ("Prefill attention").

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
    for case in 0..10 {
        let dtype = [DType::BF16, DType::F16][case % 2];
        let dh = [16, 32, 64, 128][case % 4];
        let (b, hk, g) = (1 + rng.below(2), 1 + rng.below(2), [1, 2, 5][case % 3]);
        let t = [1, 17, 64, 130, 200][case % 5];
        let cached = [0, 3, 70][case % 3];
        let chunk = [None, Some(8), Some(64), Some(100)][case % 4];
        let pad = rng.below(3);
        let s = cached + t;
        let q = random(&[b, hk * g, t, dh], &mut rng).to_dtype(dtype).unwrap();
        let full_k = random(&[b, hk, s + pad, dh], &mut rng).to_dtype(dtype).unwrap();
        let full_v = random(&[b, hk, s + pad, dh], &mut rng).to_dtype(dtype).unwrap();
        let (k, v) = (full_k.narrow(2, pad, s).unwrap(), full_v.narrow(2, pad, s).unwrap());
        let shape = PrefillShape {
            q_start: cached + 5,
            k_start: 5,
            chunk,
            scale: (dh as f64).powf(-0.5),
        };
        let want = reference::prefill_attention(&q, &k, &v, shape).unwrap();
        let on = |x: &Tensor| x.to_device(device).unwrap();
        let (kd, vd) = (
            on(&full_k).narrow(2, pad, s).unwrap(),
            on(&full_v).narrow(2, pad, s).unwrap(),
        );
        let context = format!("seed {seed}: b {b} hk {hk} g {g} t {t} cached {cached} dh {dh} {chunk:?} {dtype}");
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
