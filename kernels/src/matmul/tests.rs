//! matmul on every device (CPU always; CUDA through cuBLASLt when usable) against the CPU
//! reference, on fresh random inputs of odd sizes, batched and broadcast, with transposed and
//! offset views. Tolerances are `Tolerance::reduction(dtype, k, M)` with `M` the largest
//! `Σ_p |a_ip·b_pj|` over the outputs, computed here from the actual (rounded) inputs:
//! `.pairwise()` against the CPU, and the rule itself against an f64 product for f32 (which a
//! TF32 GEMM, ~2^-11 relative per product, cannot meet). The seed is printed in every failure;
//! set `L4_TEST_SEED` to replay one.

use cudarc::cublaslt::{CudaBlasLT, Matmul};
use l4_core::layout::elem_count;
use l4_core::testing::{Tolerance, assert_close, test_devices};
use l4_core::{DType, Device, Error, Tensor};

use super::cuda::{F32_COMPUTE_TYPE, FullF32, OperandLayout, matmul_config, operand_layout};
use super::{cublaslt_matmul, matmul, reference};
use crate::testing::env_flag;
use crate::testing::{Rng, fresh_seed};

/// The devices to run on: the CPU, plus CUDA device 0 when it is usable and libcublasLt loads
/// (with `L4_REQUIRE_GPU` set, a missing GPU or libcublasLt is a failure).
fn devices(test: &str) -> Vec<Device> {
    test_devices()
        .into_iter()
        .filter(|d| {
            // SAFETY: the probe only tries to dlopen the library by name.
            if !d.is_cuda() || unsafe { cudarc::cublaslt::sys::is_culib_present() } {
                return true;
            }
            assert!(
                !env_flag("L4_REQUIRE_GPU"),
                "{test}: L4_REQUIRE_GPU is set but libcublasLt cannot be loaded"
            );
            eprintln!("skipping {test} on {d}: libcublasLt not on the loader path");
            false
        })
        .collect()
}

const ODD_SIZES: [usize; 5] = [1, 3, 17, 33, 129];

/// How an operand is stored.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Storage {
    /// Contiguous row-major.
    Plain,
    /// A transposed view of a contiguous `[.., c, r]` tensor.
    Transposed,
    /// A contiguous view at an offset that is not 256-byte aligned (one junk batch entry and a
    /// few junk elements in front).
    Offset,
}

/// A host tensor `[batch.., r, c]` of `dtype` stored as `storage`, with standard-normal values
/// (rounded into `dtype`), and the same on `device`.
fn operand(
    batch: &[usize],
    r: usize,
    c: usize,
    dtype: DType,
    storage: Storage,
    device: Device,
    rng: &mut Rng,
) -> (Tensor, Tensor) {
    let mut shape = batch.to_vec();
    let rank = shape.len() + 2;
    let seed = rng.next();
    match storage {
        Storage::Plain => {
            shape.extend([r, c]);
            let t = Tensor::randn(&shape, dtype, seed, Device::Cpu).unwrap();
            let d = t.to_device(device).unwrap();
            (t, d)
        }
        Storage::Transposed => {
            shape.extend([c, r]);
            let t = Tensor::randn(&shape, dtype, seed, Device::Cpu).unwrap();
            let d = t.to_device(device).unwrap();
            (
                t.transpose(rank - 2, rank - 1).unwrap(),
                d.transpose(rank - 2, rank - 1).unwrap(),
            )
        }
        Storage::Offset => {
            shape.extend([r, c]);
            let n = elem_count(&shape);
            // 3 junk elements first: an offset of 3 elements is never 256-byte aligned.
            let flat = Tensor::randn(&[n + 3], dtype, seed, Device::Cpu).unwrap();
            let d = flat.to_device(device).unwrap();
            let view = |t: &Tensor| t.narrow(0, 3, n).unwrap().reshape(&shape).unwrap();
            (view(&flat), view(&d))
        }
    }
}

/// `max over outputs of Σ_p |a_ip·b_pj|` (the magnitude in `Tolerance::reduction`) and the f64
/// product, from host tensors `a [.., m, k]`, `b [.., k, n]` broadcast over `out_batch`.
fn magnitude_and_f64_product(a: &Tensor, b: &Tensor, out_batch: &[usize]) -> (f64, Vec<f64>) {
    let (m, k) = (a.shape()[a.rank() - 2], a.shape()[a.rank() - 1]);
    let n = b.shape()[b.rank() - 1];
    let full = |t: &Tensor, r, c| {
        let mut s = out_batch.to_vec();
        s.extend([r, c]);
        t.broadcast_as(&s).unwrap().to_f64_vec().unwrap()
    };
    let (av, bv) = (full(a, m, k), full(b, k, n));
    let batch = elem_count(out_batch);
    let mut magnitude = 0f64;
    let mut product = vec![0f64; batch * m * n];
    for bi in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut abs) = (0f64, 0f64);
                for p in 0..k {
                    let t = av[(bi * m + i) * k + p] * bv[(bi * k + p) * n + j];
                    sum += t;
                    abs += t.abs();
                }
                product[(bi * m + i) * n + j] = sum;
                magnitude = magnitude.max(abs);
            }
        }
    }
    (magnitude, product)
}

#[test]
fn f32_asks_cublaslt_for_full_f32_not_tf32() {
    assert_eq!(
        F32_COMPUTE_TYPE,
        cudarc::cublaslt::sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
    );
    assert_eq!(<FullF32<'_> as Matmul<f32>>::compute_type(), F32_COMPUTE_TYPE);
    // Why the wrapper exists: cudarc's own f32 matmul asks for TF32. If this changes, the
    // wrapper is still right, merely redundant.
    assert_eq!(
        <CudaBlasLT as Matmul<f32>>::compute_type(),
        cudarc::cublaslt::sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    );
    for compute in [
        <CudaBlasLT as Matmul<half::f16>>::compute_type(),
        <CudaBlasLT as Matmul<half::bf16>>::compute_type(),
    ] {
        assert_eq!(compute, cudarc::cublaslt::sys::cublasComputeType_t::CUBLAS_COMPUTE_32F);
    }
}

#[test]
fn operand_layouts_map_views_to_cublas_arguments() {
    let t = |shape: &[usize]| Tensor::zeros(shape, DType::F32, Device::Cpu).unwrap();
    // Contiguous [2, 3, 5]: row-major, pitch 5, batch stride 15.
    let a = operand_layout(&t(&[2, 3, 5]), "a", &[2]).unwrap();
    let want = OperandLayout {
        transposed: false,
        ld: 5,
        batch_stride: 15,
        start: 0,
        end: 30,
    };
    assert_eq!(a, want);
    // A transposed view of [2, 5, 3]: column-major, pitch 3.
    let at = operand_layout(&t(&[2, 5, 3]).transpose(1, 2).unwrap(), "a", &[2]).unwrap();
    assert_eq!((at.transposed, at.ld, at.batch_stride), (true, 3, 15));
    // A 2-D operand broadcast over a batch of 4: batch stride 0.
    let b = operand_layout(&t(&[5, 7]), "b", &[4]).unwrap();
    assert_eq!((b.transposed, b.ld, b.batch_stride, b.end), (false, 7, 0, 35));
    // Two batch dimensions that collapse: [2, 3, 4, 5] contiguous.
    let c = operand_layout(&t(&[2, 3, 4, 5]), "a", &[2, 3]).unwrap();
    assert_eq!(c.batch_stride, 20);
    // A narrowed last dimension keeps its row pitch: [3, 8] narrowed to [3, 5] (offset 2).
    let n = operand_layout(&t(&[3, 8]).narrow(1, 2, 5).unwrap(), "a", &[]).unwrap();
    assert_eq!((n.transposed, n.ld, n.start, n.end), (false, 8, 2, 23));
    // Vectors: [1, k] and [k, 1] need no stride at all.
    assert!(!operand_layout(&t(&[1, 9]), "a", &[]).unwrap().transposed);
    assert_eq!(operand_layout(&t(&[9, 1]), "a", &[]).unwrap().ld, 1);
    // Unsupported: permuted batch dimensions, partial broadcasts, no unit stride.
    let permuted = t(&[2, 3, 4, 5]).permute(&[1, 0, 2, 3]).unwrap();
    assert!(operand_layout(&permuted, "a", &[3, 2]).is_err());
    assert!(operand_layout(&t(&[2, 1, 4, 5]), "a", &[2, 3]).is_err());
    // Every other element of [4, 5, 2]: strides [10, 2].
    let every_other = t(&[4, 5, 2]).narrow(2, 0, 1).unwrap().squeeze(2).unwrap();
    assert_eq!(every_other.layout().strides(), &[10, 2]);
    assert!(operand_layout(&every_other, "b", &[]).is_err());
}

#[test]
fn a_broadcast_weight_folds_the_batch_into_m() {
    let t = |shape: &[usize]| Tensor::zeros(shape, DType::F32, Device::Cpu).unwrap();
    let a = operand_layout(&t(&[4, 3, 5]), "a", &[4]).unwrap();
    let b = operand_layout(&t(&[5, 7]), "b", &[4]).unwrap();
    let folded = matmul_config(&a, &b, 4, 3, 5, 7);
    assert_eq!((folded.m, folded.n, folded.k, folded.batch_size), (7, 12, 5, None));
    assert_eq!((folded.lda, folded.ldb, folded.ldc), (7, 5, 7));
    // A transposed lhs cannot fold: a strided batch with a zero stride for b.
    let at = operand_layout(&t(&[4, 5, 3]).transpose(1, 2).unwrap(), "a", &[4]).unwrap();
    let batched = matmul_config(&at, &b, 4, 3, 5, 7);
    assert_eq!(batched.batch_size, Some(4));
    assert_eq!(
        (batched.stride_a, batched.stride_b, batched.stride_c),
        (Some(0), Some(15), Some(21))
    );
    assert!(batched.transb && !batched.transa);
}

/// One random case: `(batch_a, batch_b, m, k, n, storage_a, storage_b)`.
type Case = (Vec<usize>, Vec<usize>, usize, usize, usize, Storage, Storage);

fn random_case(rng: &mut Rng) -> Case {
    let (m, k, n) = (rng.pick(&ODD_SIZES), rng.pick(&ODD_SIZES), rng.pick(&ODD_SIZES));
    let batch = rng.pick(&[1, 2, 3]);
    let (ba, bb) = match rng.below(4) {
        0 => (vec![], vec![]),
        1 => (vec![batch], vec![batch]),
        2 => (vec![batch], vec![]),
        _ => (vec![], vec![batch]),
    };
    let storages = [Storage::Plain, Storage::Transposed, Storage::Offset];
    (ba, bb, m, k, n, rng.pick(&storages), rng.pick(&storages))
}

#[test]
fn matmul_matches_the_cpu_on_every_device() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for device in devices("matmul_matches_the_cpu_on_every_device") {
        for case in 0..18 {
            let dtype = [DType::F32, DType::F16, DType::BF16][case % 3];
            let (ba, bb, m, k, n, sa, sb) = random_case(&mut rng);
            let (a, a_dev) = operand(&ba, m, k, dtype, sa, device, &mut rng);
            let (b, b_dev) = operand(&bb, k, n, dtype, sb, device, &mut rng);
            let context = format!(
                "seed {seed}, {device}, {dtype} {:?} ({sa:?}) x {:?} ({sb:?})",
                a.shape(),
                b.shape()
            );
            let want = reference::matmul(&a, &b).unwrap();
            let got = matmul(&a_dev, &b_dev).unwrap_or_else(|e| panic!("{context}: {e}"));
            assert_eq!(
                (got.shape(), got.dtype(), got.device()),
                (want.shape(), dtype, device),
                "{context}"
            );
            let out_batch = &want.shape()[..want.rank() - 2];
            let (magnitude, _) = magnitude_and_f64_product(&a, &b, out_batch);
            let tol = Tolerance::reduction(dtype, k, magnitude).pairwise();
            let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
            if let Err(msg) = assert_close(&g, &w, tol, &context) {
                panic!("{msg}");
            }
        }
    }
}

#[test]
fn f32_meets_the_f32_reduction_bound_against_f64() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for device in devices("f32_meets_the_f32_reduction_bound_against_f64") {
        for (m, k, n) in [(33, 129, 17), (3, 1000, 5), (129, 33, 129)] {
            let (a, a_dev) = operand(&[2], m, k, DType::F32, Storage::Plain, device, &mut rng);
            let (b, b_dev) = operand(&[2], k, n, DType::F32, Storage::Transposed, device, &mut rng);
            let got = matmul(&a_dev, &b_dev).unwrap().to_f64_vec().unwrap();
            let (magnitude, exact) = magnitude_and_f64_product(&a, &b, &[2]);
            // Rounding the f64 product for comparison would add a rounding; compare with the
            // unrounded value instead (the rule bounds |f32 result - exact|).
            let tol = Tolerance::reduction(DType::F32, k, magnitude);
            let context = format!("seed {seed}, {device}, f32 [2, {m}, {k}] x [2, {k}, {n}] vs f64");
            if let Err(msg) = assert_close(&got, &exact, tol, &context) {
                panic!("{msg} (a TF32 GEMM misses this bound by orders of magnitude)");
            }
        }
    }
}

#[test]
fn empty_products_on_every_device() {
    for device in devices("empty_products_on_every_device") {
        // k = 0: zeros. The operands are empty views (CUDA refuses zero-byte allocations).
        let a = Tensor::zeros(&[3, 1], DType::BF16, device)
            .unwrap()
            .narrow(1, 0, 0)
            .unwrap();
        let b = Tensor::zeros(&[1, 4], DType::BF16, device)
            .unwrap()
            .narrow(0, 0, 0)
            .unwrap();
        let out = matmul(&a, &b).unwrap();
        assert_eq!((out.shape(), out.dtype()), (&[3usize, 4][..], DType::BF16));
        assert_eq!(out.to_f32_vec().unwrap(), vec![0.0; 12], "{device}");
        // m = 0: an empty output.
        let a = Tensor::zeros(&[1, 2], DType::F32, device)
            .unwrap()
            .narrow(0, 0, 0)
            .unwrap();
        let b = Tensor::full(1.0, &[2, 5], DType::F32, device).unwrap();
        let out = matmul(&a, &b).unwrap();
        assert_eq!(out.shape(), &[0, 5], "{device}");
    }
}

#[test]
fn bad_operands_are_errors_on_every_device() {
    for device in devices("bad_operands_are_errors_on_every_device") {
        let z = |shape: &[usize], dtype| Tensor::zeros(shape, dtype, device).unwrap();
        let f = DType::F32;
        assert!(
            matches!(matmul(&z(&[3], f), &z(&[3, 2], f)), Err(Error::BadShape { .. })),
            "{device}"
        );
        assert!(
            matches!(matmul(&z(&[2, 3], f), &z(&[4, 2], f)), Err(Error::ShapeMismatch { .. })),
            "{device}"
        );
        assert!(
            matches!(
                matmul(&z(&[2, 2, 3], f), &z(&[3, 3, 2], f)),
                Err(Error::ShapeMismatch { .. })
            ),
            "{device}"
        );
        assert!(
            matches!(
                matmul(&z(&[2, 3], f), &z(&[3, 2], DType::BF16)),
                Err(Error::DTypeMismatch { .. })
            ),
            "{device}"
        );
        assert!(
            matches!(
                matmul(&z(&[2, 3], DType::I32), &z(&[3, 2], DType::I32)),
                Err(Error::DTypeMismatch { .. })
            ),
            "{device}"
        );
        if device.is_cuda() {
            let host = Tensor::zeros(&[3, 2], f, Device::Cpu).unwrap();
            assert!(matches!(
                matmul(&z(&[2, 3], f), &host),
                Err(Error::DeviceMismatch { .. })
            ));
            assert!(matches!(
                matmul(&host, &z(&[2, 3], f)),
                Err(Error::DeviceMismatch { .. })
            ));
            // A batch that does not collapse to one stride is a clear error on CUDA.
            let permuted = z(&[2, 3, 4, 5], f).permute(&[1, 0, 2, 3]).unwrap();
            let err = cublaslt_matmul(&permuted, &z(&[5, 2], f)).unwrap_err();
            assert!(err.to_string().contains("contiguous"), "{err}");
        }
    }
}

/// What cuBLAS(Lt) computes for `cfg` (column-major, per the cuBLAS documentation), in f64:
/// `C[i + j·ldc + b·stride_c] = Σ_p op(A)[i, p]·op(B)[p, j]` with `op(A)[i, p] = A[i + p·lda]`,
/// or `A[p + i·lda]` when transposed (likewise B), batch entry b starting at `b·stride`.
/// Indexing panics if the configuration reads outside the buffers it is given.
fn cublas_semantics(cfg: &cudarc::cublaslt::MatmulConfig, a: &[f64], b: &[f64]) -> Vec<f64> {
    let (m, n, k) = (cfg.m as usize, cfg.n as usize, cfg.k as usize);
    let (lda, ldb, ldc) = (cfg.lda as usize, cfg.ldb as usize, cfg.ldc as usize);
    let batch = cfg.batch_size.unwrap_or(1) as usize;
    let stride = |s: Option<i64>| s.unwrap_or(0) as usize;
    let (sa, sb, sc) = (stride(cfg.stride_a), stride(cfg.stride_b), stride(cfg.stride_c));
    assert!(lda >= if cfg.transa { k } else { m }.max(1), "lda {lda} too small");
    assert!(ldb >= if cfg.transb { n } else { k }.max(1), "ldb {ldb} too small");
    assert!(ldc >= m.max(1), "ldc {ldc} too small");
    let mut c = vec![f64::NAN; (batch - 1) * sc + (n - 1) * ldc + m];
    for bi in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let mut sum = 0f64;
                for p in 0..k {
                    let av = if cfg.transa {
                        a[bi * sa + p + i * lda]
                    } else {
                        a[bi * sa + i + p * lda]
                    };
                    let bv = if cfg.transb {
                        b[bi * sb + j + p * ldb]
                    } else {
                        b[bi * sb + p + j * ldb]
                    };
                    sum += av * bv;
                }
                c[bi * sc + i + j * ldc] = sum;
            }
        }
    }
    c
}

/// The storage elements `start..end` of a host tensor, as f64.
fn storage_range(t: &Tensor, start: usize, end: usize) -> Vec<f64> {
    let cpu = t.cpu_storage("test").unwrap();
    cpu.to_f64_vec(&l4_core::Layout::contiguous(&[cpu.len()]))[start..end].to_vec()
}

#[test]
fn the_cublas_arguments_compute_the_row_major_product() {
    // Host-side check of the row-major ↔ column-major mapping, the transpose flags, pitches,
    // batch strides, broadcasting and the batch fold: the arguments passed to cuBLASLt, read
    // with cuBLAS's documented semantics, give the row-major product.
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for _ in 0..60 {
        let (ba, bb, m, k, n, sa, sb) = random_case(&mut rng);
        let (a, _) = operand(&ba, m, k, DType::F32, sa, Device::Cpu, &mut rng);
        let (b, _) = operand(&bb, k, n, DType::F32, sb, Device::Cpu, &mut rng);
        let out_batch = l4_core::layout::broadcast_shape("test", &ba, &bb).unwrap();
        let batch = elem_count(&out_batch);
        let (al, bl) = (
            operand_layout(&a, "a", &out_batch).unwrap(),
            operand_layout(&b, "b", &out_batch).unwrap(),
        );
        let cfg = matmul_config(&al, &bl, batch, m, k, n);
        // cuBLAS's A is our b, its B our a; each buffer starts at the operand's first element.
        let got = cublas_semantics(
            &cfg,
            &storage_range(&b, bl.start, bl.end),
            &storage_range(&a, al.start, al.end),
        );
        let (magnitude, want) = magnitude_and_f64_product(&a, &b, &out_batch);
        let context = format!(
            "seed {seed}, {:?} ({sa:?}) x {:?} ({sb:?}): {cfg:?}",
            a.shape(),
            b.shape()
        );
        assert_eq!(got.len(), want.len(), "{context}: C is written row-major [batch, m, n]");
        let tol = Tolerance::new(1e-12 * magnitude, 0.0);
        if let Err(msg) = assert_close(&got, &want, tol, &context) {
            panic!("{msg}");
        }
    }
}
