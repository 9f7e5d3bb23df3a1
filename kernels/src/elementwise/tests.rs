//! `elementwise` on every device found: CPU always, CUDA when present (see `crate::testing`).
//!
//! Each device's result is compared with the CPU reference on the same inputs, element by
//! element over the whole output (under `cargo test` the CUDA launcher allocates its output
//! filled with NaN bytes, so an element a kernel skipped cannot pass):
//!
//! * bitwise (NaN meets any NaN) for neg, sqrt, square, recip, affine, scale, add, sub, mul and
//!   div: both sides do the same IEEE round-to-nearest f32 steps, then one rounding into the
//!   dtype;
//! * bitwise up to the sign of a zero for maximum and minimum (-0 and +0 rank equal; the CPU's
//!   choice between them is the platform's f32::max/min);
//! * `Tolerance::elementwise(dtype).pairwise()` for exp, tanh, sigmoid and silu. Derivation
//!   (u32 = 2^-24; one ulp is at most 2·u32 relative): CUDA's expf and tanhf are within 2 ulp
//!   (4·u32, CUDA math API documentation); glibc's expf within 1 ulp (2·u32), its tanhf within
//!   2 ulp (4·u32). exp: ≤ 6·u32 apart; tanh: ≤ 8·u32. sigmoid = 1/(1 + e^-x) or e^x/(1 + e^x):
//!   the exponential's relative error δ reaches the result damped by a factor ≤ 1
//!   (d ln σ / d ln e ≤ 1), then the sum and the quotient add one rounding each: GPU ≤ 6·u32,
//!   CPU ≤ 4·u32; silu adds a product: ≤ 7·u32 and 5·u32. So |gpu − cpu| ≤ 12·u32 relative in
//!   f32, within the pairwise rule's `2·(2·u32 + 4·u32)/(1 − 6·u32)`; for f16/bf16 outputs the
//!   final rounding (2·u(out) per side) dominates.
//! * gelu: `Tolerance::elementwise_conditioned(dtype, κ).pairwise()` per element, with
//!   κ ≤ 2 + x² + |x| for x < 0 (docs/numerics.md) and κ ≤ 2 for x ≥ 0 (κ = 1 + x·φ(x)/Φ(x),
//!   Φ ≥ 1/2 and x·φ(x) ≤ φ(1) < 0.25 there). CUDA's erfcf is within 4 ulp (8·u32), libm's within
//!   about 1 ulp, plus the two products: ≤ 12·u32 + (both sides round the argument identically),
//!   inside the rule's `(12 + 4κ)·u32`. For x < −20 the result underflows to −0 on both sides and
//!   is compared exactly.

use l4_core::testing::{Tolerance, test_devices};
use l4_core::{DType, Device, Error, Tensor};

use super::cuda::{BLOCK, BLOCKS_PER_SM, Geometry, MAX_RANK, Plan, binary_function_name, merge_dims, plan};
use super::{BinaryOp, UnaryOp, binary, reference, unary};
use crate::testing::{gpu_or_skip, nvrtc_or_skip};
use crate::{ELEMENTWISE, compile_cubin};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn unary_ops() -> Vec<UnaryOp> {
    vec![
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Sqrt,
        UnaryOp::Silu,
        UnaryOp::Gelu,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::Square,
        UnaryOp::Recip,
        UnaryOp::Affine { mul: 1.7, add: -0.3 },
        UnaryOp::Affine { mul: -0.1, add: 0.0 },
        UnaryOp::Scale(0.3),
    ]
}

/// The devices to run on: `test_devices()`, without CUDA when NVRTC is missing (skipped, or a
/// failure under `CI` / `L4_REQUIRE_GPU`), and with the kernels' broader `L4_REQUIRE_GPU` rule.
fn devices(test: &str) -> Vec<Device> {
    let mut devices = test_devices();
    if devices.iter().any(|d| matches!(d, Device::Cuda(_))) {
        if !nvrtc_or_skip(test) {
            devices.retain(|d| *d == Device::Cpu);
        }
    } else if let Some(backend) = gpu_or_skip(test)
        && nvrtc_or_skip(test)
    {
        devices.push(Device::Cuda(backend.info().ordinal));
    }
    devices
}

/// More elements than one capped grid covers, even at 8 elements per thread.
fn big_n(device: Device) -> Option<usize> {
    let Device::Cuda(ordinal) = device else {
        return None;
    };
    let sms = l4_core::cuda::backend(ordinal).unwrap().info().sm_count;
    Some(sms * BLOCKS_PER_SM * BLOCK as usize * 8 * 2 + 5)
}

/// How one element is compared.
#[derive(Clone, Copy, Debug)]
enum Check {
    /// Same value and same sign (every float dtype widens to f64 injectively, zeros aside); NaN
    /// meets any NaN.
    Bits,
    /// Same value, -0 == +0; NaN meets any NaN.
    ZeroSignFree,
    /// Within the tolerance (NaN meets NaN, ±∞ the same ±∞).
    Tol(Tolerance),
}

fn passes(check: Check, got: f64, want: f64) -> bool {
    if got.is_nan() || want.is_nan() {
        return got.is_nan() && want.is_nan();
    }
    match check {
        Check::Bits => got == want && got.is_sign_negative() == want.is_sign_negative(),
        Check::ZeroSignFree => got == want,
        Check::Tol(t) => t.allows(got, want),
    }
}

/// Compares two whole tensors element by element (`check(i)` for element i); panics naming the
/// case, the first failing element, its inputs and the number of failures.
fn assert_matches(what: &str, got: &Tensor, want: &Tensor, inputs: &[&Tensor], check: impl Fn(usize) -> Check) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes differ");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtypes differ");
    let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    let bad: Vec<usize> = (0..w.len()).filter(|&i| !passes(check(i), g[i], w[i])).collect();
    if let Some(&i) = bad.first() {
        let shape = want.shape().to_vec();
        let ins: Vec<String> = inputs
            .iter()
            .map(|t| {
                let v = t.broadcast_as(&shape).unwrap().to_f64_vec().unwrap();
                format!("{:e}", v[i])
            })
            .collect();
        panic!(
            "{what}: {} of {} elements differ; first at flat index {i} (inputs {ins:?}): got {:e}, want {:e} \
             under {:?}",
            bad.len(),
            w.len(),
            g[i],
            w[i],
            check(i)
        );
    }
}

fn unary_check(op: UnaryOp, dtype: DType, x: f64) -> Check {
    match op {
        UnaryOp::Neg
        | UnaryOp::Sqrt
        | UnaryOp::Square
        | UnaryOp::Recip
        | UnaryOp::Affine { .. }
        | UnaryOp::Scale(_) => Check::Bits,
        UnaryOp::Exp | UnaryOp::Tanh | UnaryOp::Sigmoid | UnaryOp::Silu => {
            Check::Tol(Tolerance::elementwise(dtype).pairwise())
        }
        UnaryOp::Gelu => {
            if x.is_nan() || x >= 0.0 {
                Check::Tol(Tolerance::elementwise_conditioned(dtype, 2.0).pairwise())
            } else if x >= -20.0 {
                Check::Tol(Tolerance::elementwise_conditioned(dtype, 2.0 + x * x - x).pairwise())
            } else {
                Check::Bits
            }
        }
    }
}

fn binary_check(op: BinaryOp) -> Check {
    match op {
        BinaryOp::Maximum | BinaryOp::Minimum => Check::ZeroSignFree,
        _ => Check::Bits,
    }
}

/// A view built from a base tensor (applied on the host and on the device alike, so strided
/// views reach the kernels as views).
type View = fn(&Tensor) -> l4_core::Result<Tensor>;

fn same(t: &Tensor) -> l4_core::Result<Tensor> {
    Ok(t.clone())
}

fn uniform(shape: &[usize], dtype: DType, seed: u64, range: f64) -> Tensor {
    Tensor::rand_uniform(shape, -range, range, dtype, seed, Device::Cpu).unwrap()
}

/// Unary cases: (name, base shape, view).
fn unary_cases() -> Vec<(&'static str, Vec<usize>, View)> {
    vec![
        ("one element", vec![1], same),
        ("scalar", vec![], same),
        ("odd length", vec![7], same),
        ("2-D odd", vec![33, 17], same),
        ("3-D", vec![3, 5, 7], same),
        ("transposed", vec![17, 5], |t| t.transpose(0, 1)),
        ("permuted 3-D", vec![3, 4, 5], |t| t.permute(&[2, 0, 1])),
        ("misaligned offset", vec![40], |t| t.narrow(0, 1, 37)),
        ("aligned offset", vec![80], |t| t.narrow(0, 16, 61)),
        ("narrowed columns", vec![9, 12], |t| t.narrow(1, 2, 7)),
        ("broadcast view", vec![1, 7], |t| t.broadcast_as(&[3, 7])),
        // Empty views of non-empty storage (CUDA cannot allocate zero bytes for a copy).
        ("empty", vec![2, 5], |t| t.narrow(0, 0, 0)),
    ]
}

#[test]
fn unary_ops_match_the_cpu_reference_on_every_device() {
    for device in devices("unary_ops_match_the_cpu_reference_on_every_device") {
        for dtype in DTYPES {
            for (k, op) in unary_ops().into_iter().enumerate() {
                for (c, (case, shape, view)) in unary_cases().into_iter().enumerate() {
                    // Fresh inputs per case; ±12 covers exp/tanh/sigmoid saturation without
                    // gelu's underflow region.
                    let base = uniform(&shape, dtype, 1000 + 100 * k as u64 + c as u64, 12.0);
                    let x = view(&base).unwrap();
                    let want = reference::unary(op, &x).unwrap();
                    let got = unary(op, &view(&base.to_device(device).unwrap()).unwrap()).unwrap();
                    assert_eq!(got.device(), device);
                    let xs = x.to_f64_vec().unwrap();
                    let what = format!("{} {dtype} {case} {shape:?} on {device}", op.name());
                    assert_matches(&what, &got, &want, &[&x], |i| unary_check(op, dtype, xs[i]));
                }
            }
        }
    }
}

/// Signed zeros, subnormals, infinities, NaN, the extremes and saturation points.
fn special_values() -> Vec<f32> {
    let tiny = f32::from_bits(1);
    vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        2.5,
        -3.75,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        tiny,
        -tiny,
        1.0e-40,
        3.0e38,
        88.5,
        -87.0,
        20.0,
        -20.0,
        -25.0,
        1.0e-3,
        65504.0,
        65520.0,
        1.0e20,
        -1.0e20,
    ]
}

#[test]
fn unary_special_values_match_the_cpu_reference() {
    for device in devices("unary_special_values_match_the_cpu_reference") {
        for dtype in DTYPES {
            let values = special_values();
            let n = values.len();
            let x = Tensor::from_f32_vec(values, &[n], dtype, Device::Cpu).unwrap();
            let x_dev = x.to_device(device).unwrap();
            let xs = x.to_f64_vec().unwrap();
            for op in unary_ops() {
                let want = reference::unary(op, &x).unwrap();
                let got = unary(op, &x_dev).unwrap();
                let what = format!("{} {dtype} special values on {device}", op.name());
                assert_matches(&what, &got, &want, &[&x], |i| unary_check(op, dtype, xs[i]));
            }
        }
    }
}

#[test]
fn large_unary_inputs_cover_every_grid_pass() {
    for device in devices("large_unary_inputs_cover_every_grid_pass") {
        let Some(n) = big_n(device) else { continue };
        for dtype in DTYPES {
            let base = uniform(&[n], dtype, 7, 6.0);
            let base_dev = base.to_device(device).unwrap();
            for op in [UnaryOp::Neg, UnaryOp::Silu] {
                let want = reference::unary(op, &base).unwrap();
                let got = unary(op, &base_dev).unwrap();
                let xs = base.to_f64_vec().unwrap();
                let what = format!("{} {dtype} contiguous n={n} on {device}", op.name());
                assert_matches(&what, &got, &want, &[&base], |i| unary_check(op, dtype, xs[i]));
            }
            // The strided kernel over more than one grid pass: a transposed [n/1024, 1024].
            let rows = n / 1024;
            let t = |b: &Tensor| b.narrow(0, 0, rows * 1024)?.reshape(&[rows, 1024])?.transpose(0, 1);
            let (x, x_dev) = (t(&base).unwrap(), t(&base_dev).unwrap());
            let want = reference::unary(UnaryOp::Square, &x).unwrap();
            let got = unary(UnaryOp::Square, &x_dev).unwrap();
            assert_matches(
                &format!("square {dtype} transposed on {device}"),
                &got,
                &want,
                &[&x],
                |_| Check::Bits,
            );
        }
    }
}

/// A binary case: name, a's base shape, a's view, b's base shape, b's view.
type BinaryCase = (&'static str, Vec<usize>, View, Vec<usize>, View);

fn binary_cases() -> Vec<BinaryCase> {
    vec![
        ("same shape", vec![33, 17], same, vec![33, 17], same),
        ("one element", vec![1], same, vec![1], same),
        ("row broadcast", vec![33, 17], same, vec![17], same),
        ("column broadcast", vec![33, 17], same, vec![33, 1], same),
        ("both broadcast", vec![7, 1, 5], same, vec![1, 4, 5], same),
        ("scalar", vec![], same, vec![3, 5], same),
        ("transposed a", vec![5, 17], |t| t.transpose(0, 1), vec![17, 5], same),
        (
            "permuted a, narrowed b",
            vec![4, 5, 6],
            |t| t.permute(&[2, 1, 0]),
            vec![8, 5, 4],
            |t| t.narrow(0, 1, 6),
        ),
        (
            "misaligned offsets",
            vec![101],
            |t| t.narrow(0, 3, 97),
            vec![98],
            |t| t.narrow(0, 1, 97),
        ),
        (
            "aligned offsets",
            vec![100],
            |t| t.narrow(0, 8, 64),
            vec![72],
            |t| t.narrow(0, 8, 64),
        ),
        (
            "broadcast views",
            vec![1, 9],
            |t| t.broadcast_as(&[6, 9]),
            vec![6, 1],
            |t| t.broadcast_as(&[6, 9]),
        ),
        ("empty", vec![2, 5], |t| t.narrow(0, 0, 0), vec![5], same),
        ("empty by broadcast", vec![3, 1], same, vec![2], |t| t.narrow(0, 0, 0)),
    ]
}

#[test]
fn binary_ops_match_the_cpu_reference_on_every_device() {
    for device in devices("binary_ops_match_the_cpu_reference_on_every_device") {
        for dtype in DTYPES {
            for (k, op) in BinaryOp::ALL.into_iter().enumerate() {
                for (c, (case, sa, va, sb, vb)) in binary_cases().into_iter().enumerate() {
                    let seed = 5000 + 100 * k as u64 + 2 * c as u64;
                    let (base_a, base_b) = (uniform(&sa, dtype, seed, 50.0), uniform(&sb, dtype, seed + 1, 50.0));
                    let (a, b) = (va(&base_a).unwrap(), vb(&base_b).unwrap());
                    let want = reference::binary(op, &a, &b).unwrap();
                    let a_dev = va(&base_a.to_device(device).unwrap()).unwrap();
                    let b_dev = vb(&base_b.to_device(device).unwrap()).unwrap();
                    let got = binary(op, &a_dev, &b_dev).unwrap();
                    assert_eq!(got.device(), device);
                    let what = format!("{} {dtype} {case} {sa:?}, {sb:?} on {device}", op.name());
                    assert_matches(&what, &got, &want, &[&a, &b], |_| binary_check(op));
                }
            }
        }
    }
}

#[test]
fn binary_special_values_match_the_cpu_reference() {
    for device in devices("binary_special_values_match_the_cpu_reference") {
        for dtype in DTYPES {
            let values = special_values();
            let n = values.len();
            // Every pair: a as a column, b as a row, broadcast to [n, n].
            let a = Tensor::from_f32_vec(values.clone(), &[n, 1], dtype, Device::Cpu).unwrap();
            let b = Tensor::from_f32_vec(values, &[1, n], dtype, Device::Cpu).unwrap();
            let (a_dev, b_dev) = (a.to_device(device).unwrap(), b.to_device(device).unwrap());
            for op in BinaryOp::ALL {
                let want = reference::binary(op, &a, &b).unwrap();
                let got = binary(op, &a_dev, &b_dev).unwrap();
                let what = format!("{} {dtype} special pairs on {device}", op.name());
                assert_matches(&what, &got, &want, &[&a, &b], |_| binary_check(op));
            }
        }
    }
}

#[test]
fn large_binary_inputs_cover_every_grid_pass() {
    for device in devices("large_binary_inputs_cover_every_grid_pass") {
        let Some(n) = big_n(device) else { continue };
        for dtype in DTYPES {
            let (a, b) = (uniform(&[n], dtype, 11, 9.0), uniform(&[n], dtype, 12, 9.0));
            let (a_dev, b_dev) = (a.to_device(device).unwrap(), b.to_device(device).unwrap());
            let want = reference::binary(BinaryOp::Mul, &a, &b).unwrap();
            let got = binary(BinaryOp::Mul, &a_dev, &b_dev).unwrap();
            assert_matches(
                &format!("mul {dtype} n={n} on {device}"),
                &got,
                &want,
                &[&a, &b],
                |_| Check::Bits,
            );
            // Broadcast (strided kernel): [n/1024, 1024] + [1024].
            let rows = n / 1024;
            let m = |t: &Tensor| t.narrow(0, 0, rows * 1024)?.reshape(&[rows, 1024]);
            let r = |t: &Tensor| t.narrow(0, 0, 1024);
            let (a2, b2) = (m(&a).unwrap(), r(&b).unwrap());
            let want = reference::binary(BinaryOp::Add, &a2, &b2).unwrap();
            let got = binary(BinaryOp::Add, &m(&a_dev).unwrap(), &r(&b_dev).unwrap()).unwrap();
            assert_matches(
                &format!("add {dtype} broadcast on {device}"),
                &got,
                &want,
                &[&a2, &b2],
                |_| Check::Bits,
            );
        }
    }
}

#[test]
fn operand_errors_are_errors_on_every_device() {
    for device in devices("operand_errors_are_errors_on_every_device") {
        let t = |shape: &[usize], dtype| {
            Tensor::zeros(shape, dtype, Device::Cpu)
                .unwrap()
                .to_device(device)
                .unwrap()
        };
        let shape = binary(BinaryOp::Add, &t(&[2, 3], DType::F32), &t(&[4], DType::F32)).unwrap_err();
        assert!(matches!(shape, Error::ShapeMismatch { .. }), "{shape}");
        let dtypes = binary(BinaryOp::Sub, &t(&[2], DType::F32), &t(&[2], DType::BF16)).unwrap_err();
        assert!(matches!(dtypes, Error::DTypeMismatch { .. }), "{dtypes}");
        let ints = unary(UnaryOp::Exp, &t(&[2], DType::I32)).unwrap_err();
        assert!(matches!(ints, Error::DTypeMismatch { .. }), "{ints}");
        let ints = binary(BinaryOp::Mul, &t(&[2], DType::I64), &t(&[2], DType::I64)).unwrap_err();
        assert!(matches!(ints, Error::DTypeMismatch { .. }), "{ints}");
        if let Device::Cuda(_) = device {
            // FP8 has no CUDA kernel here (the CPU computes it).
            let fp8 = unary(UnaryOp::Neg, &t(&[2], DType::F8E4M3)).unwrap_err();
            assert!(matches!(fp8, Error::DTypeMismatch { .. }), "{fp8}");
            let mixed = binary(
                BinaryOp::Add,
                &t(&[2], DType::F32),
                &Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap(),
            )
            .unwrap_err();
            assert!(matches!(mixed, Error::DeviceMismatch { .. }), "{mixed}");
            // Nine dimensions that cannot merge: more than the kernels' geometry holds.
            let nine = t(&[2; 9], DType::F32).permute(&[8, 7, 6, 5, 4, 3, 2, 1, 0]).unwrap();
            let deep = unary(UnaryOp::Neg, &nine).unwrap_err();
            assert!(matches!(deep, Error::InvalidArgument { .. }), "{deep}");
        }
    }
}

#[test]
fn cpu_semantics_of_the_special_cases() {
    let x = Tensor::from_vec(vec![-0.0f32, f32::NEG_INFINITY, 2.0], &[3], Device::Cpu).unwrap();
    let v = |op| unary(op, &x).unwrap().to_vec::<f32>().unwrap();
    // scale keeps the sign of zero; affine with add = 0 adds +0 and loses it.
    assert!(v(UnaryOp::Scale(3.0))[0].is_sign_negative());
    assert!(v(UnaryOp::Affine { mul: 3.0, add: 0.0 })[0].is_sign_positive());
    // silu and gelu at -inf are the limits -0, not NaN.
    for op in [UnaryOp::Silu, UnaryOp::Gelu] {
        let y = v(op)[1];
        assert!(y == 0.0 && y.is_sign_negative(), "{} of -inf: {y}", op.name());
    }
    let nan = Tensor::from_vec(vec![f32::NAN, 1.0], &[2], Device::Cpu).unwrap();
    let one = Tensor::from_vec(vec![0.0f32], &[1], Device::Cpu).unwrap();
    for op in [BinaryOp::Maximum, BinaryOp::Minimum] {
        let y = binary(op, &nan, &one).unwrap().to_vec::<f32>().unwrap();
        assert!(y[0].is_nan() && !y[1].is_nan(), "{} propagates NaN: {y:?}", op.name());
    }
    // The kernels' 1/√2 is Rust's constant bit for bit (EW_FRAC_1_SQRT_2 in elementwise.cu).
    assert_eq!(std::f32::consts::FRAC_1_SQRT_2.to_bits(), 0x3f35_04f3);
}

#[test]
fn geometry_matches_the_cuda_struct_layout() {
    // EwGeometry / CastGeometry: three u64[8] arrays and two u32, 8-byte aligned.
    assert_eq!(std::mem::size_of::<Geometry>(), 3 * 8 * MAX_RANK + 8);
    assert_eq!(std::mem::align_of::<Geometry>(), 8);
    assert_eq!(std::mem::offset_of!(Geometry, rank), 3 * 8 * MAX_RANK);
}

#[test]
fn merging_drops_unit_dimensions_and_joins_matching_strides() {
    // Contiguous: one dimension.
    assert_eq!(merge_dims(&[2, 3, 4], &[&[12, 4, 1]]), (vec![24], vec![vec![1]]));
    // Unit dimensions vanish whatever their stride.
    assert_eq!(merge_dims(&[1, 5, 1], &[&[99, 1, 7]]), (vec![5], vec![vec![1]]));
    // A transpose cannot merge (innermost first in the result).
    assert_eq!(merge_dims(&[4, 3], &[&[1, 4]]), (vec![3, 4], vec![vec![4, 1]]));
    // Row broadcast: a is contiguous, b repeats along rows: two dimensions.
    assert_eq!(
        merge_dims(&[6, 5], &[&[5, 1], &[0, 1]]),
        (vec![5, 6], vec![vec![1, 5], vec![1, 0]])
    );
    // Broadcast along two neighbouring dimensions merges (0 = 0·size).
    assert_eq!(
        merge_dims(&[2, 3, 4], &[&[12, 4, 1], &[0, 0, 1]]),
        (vec![4, 6], vec![vec![1, 4], vec![1, 0]])
    );
    assert_eq!(plan("t", &[3, 4], &[&[4, 1], &[4, 1]]).unwrap(), Plan::Contiguous);
    assert_eq!(plan("t", &[1, 1], &[&[0, 0]]).unwrap(), Plan::Contiguous);
    assert!(matches!(plan("t", &[3, 4], &[&[1, 3]]).unwrap(), Plan::Strided(_)));
    let nine: Vec<usize> = (0..9).map(|d| 1 << d).collect();
    assert!(plan("t", &[2; 9], &[&nine]).is_err());
}

/// Views to check the kernels' offset arithmetic on (mirrored by `Geometry::offsets`).
fn layout_views() -> Vec<(Vec<usize>, View)> {
    vec![
        (vec![24], same),
        (vec![6, 4], |t| t.transpose(0, 1)),
        (vec![2, 3, 4, 5], |t| t.permute(&[3, 1, 0, 2])),
        (vec![7, 9], |t| t.narrow(1, 2, 5)?.narrow(0, 1, 4)),
        (vec![5, 1, 3], |t| t.broadcast_as(&[2, 5, 4, 3])),
        (vec![4, 6], |t| {
            t.transpose(0, 1)?.unsqueeze(1)?.broadcast_as(&[6, 3, 4])
        }),
        (vec![3, 1, 4, 1, 5], |t| t.permute(&[4, 3, 2, 1, 0])),
    ]
}

#[test]
fn planned_offsets_walk_every_element_of_the_views() {
    // The offsets the kernels compute from the merged geometry must be exactly the storage
    // indices l4-core's own iterator walks, for one and for two (broadcast) operands.
    let views = layout_views();
    for (sa, va) in &views {
        let a = va(&Tensor::zeros(sa, DType::F32, Device::Cpu).unwrap()).unwrap();
        for (sb, vb) in &views {
            let b = vb(&Tensor::zeros(sb, DType::F32, Device::Cpu).unwrap()).unwrap();
            let Ok(shape) = l4_core::layout::broadcast_shape("t", a.shape(), b.shape()) else {
                continue;
            };
            let (la, lb) = (
                a.layout().broadcast_as(&shape).unwrap(),
                b.layout().broadcast_as(&shape).unwrap(),
            );
            let (ia, ib): (Vec<usize>, Vec<usize>) = (la.storage_indices().collect(), lb.storage_indices().collect());
            match plan("t", &shape, &[la.strides(), lb.strides()]).unwrap() {
                Plan::Contiguous => {
                    for i in 0..ia.len() {
                        assert_eq!((ia[i], ib[i]), (la.offset() + i, lb.offset() + i), "{shape:?}");
                    }
                }
                Plan::Strided(g) => {
                    for i in 0..ia.len() {
                        let (oa, ob) = g.offsets(i as u64);
                        let got = (la.offset() + oa as usize, lb.offset() + ob as usize);
                        assert_eq!(got, (ia[i], ib[i]), "{shape:?} element {i}, geometry {g:?}");
                    }
                    assert_eq!(g.extent(0) as usize, la.storage_extent() - la.offset(), "{shape:?}");
                }
            }
        }
    }
}

#[test]
fn function_names_follow_the_macro_scheme() {
    assert_eq!(
        super::cuda::unary_function_name(UnaryOp::Gelu, DType::BF16, true).unwrap(),
        "ew_unary_gelu_bf16_strided"
    );
    assert_eq!(
        binary_function_name(BinaryOp::Maximum, DType::F16, false).unwrap(),
        "ew_binary_maximum_f16"
    );
    assert!(binary_function_name(BinaryOp::Add, DType::F8E5M2, false).is_err());
}

#[test]
fn compiles_for_sm90a_with_nvrtc() {
    if !nvrtc_or_skip("elementwise::compiles_for_sm90a_with_nvrtc") {
        return;
    }
    for arch in ELEMENTWISE.archs {
        let compiled = compile_cubin(&ELEMENTWISE, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(compiled.cubin.starts_with(b"\x7fELF"), "a CUBIN is an ELF image");
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
        let mut names = Vec::new();
        for dtype in DTYPES {
            for strided in [false, true] {
                for op in unary_ops() {
                    names.push(super::cuda::unary_function_name(op, dtype, strided).unwrap());
                }
                for op in BinaryOp::ALL {
                    names.push(binary_function_name(op, dtype, strided).unwrap());
                }
            }
        }
        for name in names {
            let Some(stats) = crate::testing::ptxas_stats(&compiled, &name) else {
                continue;
            };
            // The launch bounds ask for 8 resident 256-thread blocks: at most 32 registers.
            assert!(stats.registers > 0 && stats.registers <= 32, "{name}: {stats:?}");
        }
    }
}
