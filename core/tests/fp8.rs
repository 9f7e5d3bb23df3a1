//! FP8 conversions checked exhaustively against an independent decoder and reference encoder.
//!
//! l4lab's policy (core/src/dtype.rs): round to nearest, ties to even; finite values beyond the
//! largest finite code and ±infinity saturate to ±max (the `cvt.rn.satfinite` rule: 448 = 0x7E
//! for e4m3fn, 57344 = 0x7B for e5m2); NaN stays NaN; e4m3fn has no infinities (S.1111.111 is
//! NaN). Nothing here uses float8's own constants or conversions as a reference.

use l4_core::{CpuStorage, DType, Element, F8E4M3, F8E5M2, Layout};
use proptest::prelude::*;

/// The two OCP FP8 formats, described by their bit fields only.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    E4M3,
    E5M2,
}

impl Format {
    fn exp_bits(self) -> u32 {
        match self {
            Format::E4M3 => 4,
            Format::E5M2 => 5,
        }
    }

    fn man_bits(self) -> u32 {
        7 - self.exp_bits()
    }

    fn bias(self) -> i32 {
        (1 << (self.exp_bits() - 1)) - 1
    }

    /// The largest finite positive code.
    fn max_code(self) -> u8 {
        match self {
            Format::E4M3 => 0x7E,
            Format::E5M2 => 0x7B,
        }
    }

    /// Decodes a code from its sign, exponent and mantissa fields.
    fn decode(self, code: u8) -> f64 {
        let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
        let man_bits = self.man_bits();
        let exp = i32::from((code & 0x7F) >> man_bits);
        let man = f64::from(code & ((1 << man_bits) - 1));
        let all_ones = (1 << self.exp_bits()) - 1;
        let scale = f64::from(1u32 << man_bits);
        match self {
            // e4m3fn: only S.1111.111 is special (NaN); the rest of the top binade is finite.
            Format::E4M3 if exp == all_ones && man == scale - 1.0 => f64::NAN,
            // e5m2: IEEE-style; the all-ones exponent is infinity (mantissa 0) or NaN.
            Format::E5M2 if exp == all_ones => {
                if man == 0.0 {
                    sign * f64::INFINITY
                } else {
                    f64::NAN
                }
            }
            _ if exp == 0 => sign * (man / scale) * 2f64.powi(1 - self.bias()),
            _ => sign * (1.0 + man / scale) * 2f64.powi(exp - self.bias()),
        }
    }

    /// The reference encoder: nearest finite code, ties to the even code, saturating.
    /// Returns `None` for NaN input (any NaN code is acceptable then).
    fn encode(self, x: f64) -> Option<u8> {
        if x.is_nan() {
            return None;
        }
        let sign = if x.is_sign_negative() { 0x80 } else { 0 };
        let a = x.abs();
        let max = self.max_code();
        // Positive finite codes are ordered like their values. Compare against the exact
        // midpoints between neighbours (they have few significant bits, so no rounding).
        let mut magnitude = max;
        for c in 0..max {
            let mid = (self.decode(c) + self.decode(c + 1)) / 2.0;
            if a < mid {
                magnitude = c;
                break;
            }
            if a == mid {
                magnitude = if c % 2 == 0 { c } else { c + 1 };
                break;
            }
        }
        // Beyond the last midpoint (including +inf): saturate to max.
        Some(sign | magnitude)
    }

    fn lib_decode_f32(self, code: u8) -> f32 {
        match self {
            Format::E4M3 => F8E4M3::from_bits(code).to_f32(),
            Format::E5M2 => F8E5M2::from_bits(code).to_f32(),
        }
    }

    fn lib_decode_f64(self, code: u8) -> f64 {
        match self {
            Format::E4M3 => <F8E4M3 as Element>::to_f64(F8E4M3::from_bits(code)),
            Format::E5M2 => <F8E5M2 as Element>::to_f64(F8E5M2::from_bits(code)),
        }
    }

    fn lib_from_f32(self, x: f32) -> u8 {
        match self {
            Format::E4M3 => <F8E4M3 as Element>::from_f32(x).to_bits(),
            Format::E5M2 => <F8E5M2 as Element>::from_f32(x).to_bits(),
        }
    }

    fn lib_from_f64(self, x: f64) -> u8 {
        match self {
            Format::E4M3 => <F8E4M3 as Element>::from_f64(x).to_bits(),
            Format::E5M2 => <F8E5M2 as Element>::from_f64(x).to_bits(),
        }
    }

    fn dtype(self) -> DType {
        match self {
            Format::E4M3 => DType::F8E4M3,
            Format::E5M2 => DType::F8E5M2,
        }
    }

    /// Codes via the storage path: `CpuStorage::from_f32_vec` and `from_f64_iter`.
    fn storage_codes(self, values: &[f32]) -> (Vec<u8>, Vec<u8>) {
        let a = CpuStorage::from_f32_vec(self.dtype(), values.to_vec()).to_le_bytes();
        let b = CpuStorage::from_f64_iter(self.dtype(), values.iter().map(|&v| f64::from(v))).to_le_bytes();
        (a, b)
    }
}

const FORMATS: [Format; 2] = [Format::E4M3, Format::E5M2];

/// Whether `code` is what the reference encoder demands for `x`.
fn conforms(format: Format, x: f64, code: u8) -> bool {
    match format.encode(x) {
        Some(expected) => code == expected,
        None => format.decode(code).is_nan(),
    }
}

fn same_value(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

/// Checks one input through every conversion path, collecting readable failures.
fn check_f32(format: Format, x: f32, failures: &mut Vec<String>) {
    let code = format.lib_from_f32(x);
    if !conforms(format, f64::from(x), code) {
        failures.push(format!(
            "{format:?}::from_f32({x:e} = {:#010x}) = {code:#04x} ({}), reference {:?}",
            x.to_bits(),
            format.decode(code),
            format
                .encode(f64::from(x))
                .map(|c| (format!("{c:#04x}"), format.decode(c)))
        ));
    }
    check_f64(format, f64::from(x), failures);
}

fn check_f64(format: Format, x: f64, failures: &mut Vec<String>) {
    let code = format.lib_from_f64(x);
    if !conforms(format, x, code) {
        failures.push(format!(
            "{format:?}::from_f64({x:e} = {:#018x}) = {code:#04x} ({}), reference {:?}",
            x.to_bits(),
            format.decode(code),
            format.encode(x).map(|c| (format!("{c:#04x}"), format.decode(c)))
        ));
    }
}

fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} conversions disagree with the reference, e.g.:\n{}",
        failures.len(),
        failures.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_reference_decoder_knows_the_landmarks() {
    let e4 = Format::E4M3;
    assert_eq!(e4.decode(0x7E), 448.0);
    assert!(e4.decode(0x7F).is_nan() && e4.decode(0xFF).is_nan());
    assert_eq!(e4.decode(0x78), 256.0); // finite, unlike in IEEE-style formats
    assert_eq!(e4.decode(0x01), 2f64.powi(-9));
    assert_eq!(e4.decode(0x08), 2f64.powi(-6));
    assert_eq!(e4.decode(0x38), 1.0);
    assert_eq!(e4.decode(0x80).to_bits(), (-0.0f64).to_bits());
    let e5 = Format::E5M2;
    assert_eq!(e5.decode(0x7B), 57344.0);
    assert_eq!(e5.decode(0x7C), f64::INFINITY);
    assert_eq!(e5.decode(0xFC), f64::NEG_INFINITY);
    assert!((0x7D..=0x7F).all(|c| e5.decode(c).is_nan()));
    assert_eq!(e5.decode(0x01), 2f64.powi(-16));
    assert_eq!(e5.decode(0x04), 2f64.powi(-14));
    assert_eq!(e5.decode(0x3C), 1.0);
    // The dtype's documented limits are these codes.
    assert_eq!(DType::F8E4M3.max_finite(), e4.decode(e4.max_code()));
    assert_eq!(DType::F8E5M2.max_finite(), e5.decode(e5.max_code()));
    assert_eq!(DType::F8E4M3.min_positive_normal(), Some(e4.decode(0x08)));
    assert_eq!(DType::F8E5M2.min_positive_normal(), Some(e5.decode(0x04)));
    // The reference encoder's edge cases.
    assert_eq!(e4.encode(1000.0), Some(0x7E));
    assert_eq!(e4.encode(f64::NEG_INFINITY), Some(0xFE));
    assert_eq!(e4.encode(-0.0), Some(0x80));
    assert_eq!(e4.encode(2f64.powi(-10)), Some(0x00)); // half the smallest subnormal: tie to 0
    assert_eq!(e4.encode(-2f64.powi(-10) * 1.01), Some(0x81));
    assert_eq!(e5.encode(61440.0), Some(0x7B)); // would be a tie to inf without satfinite
}

#[test]
fn every_code_decodes_like_the_bit_fields_say() {
    let mut failures = Vec::new();
    for format in FORMATS {
        for code in 0..=255u8 {
            let want = format.decode(code);
            let via_f32 = f64::from(format.lib_decode_f32(code));
            let via_f64 = format.lib_decode_f64(code);
            if !same_value(via_f32, want) || !same_value(via_f64, want) {
                failures.push(format!(
                    "{format:?} {code:#04x}: to_f32 {via_f32}, Element::to_f64 {via_f64}, fields say {want}"
                ));
            }
        }
    }
    assert_no_failures(failures);
}

#[test]
fn decode_then_encode_is_the_identity_on_finite_codes() {
    let mut failures = Vec::new();
    for format in FORMATS {
        for code in 0..=255u8 {
            let x = format.decode(code);
            let expected = if x.is_infinite() {
                // satfinite: e5m2's infinities come back as ±max.
                Some((code & 0x80) | format.max_code())
            } else if x.is_nan() {
                None
            } else {
                Some(code)
            };
            for (path, got) in [
                ("from_f64", format.lib_from_f64(x)),
                ("from_f32", format.lib_from_f32(x as f32)),
            ] {
                let ok = match expected {
                    Some(e) => got == e,
                    None => format.decode(got).is_nan(),
                };
                if !ok {
                    failures.push(format!("{format:?} {code:#04x} ({x}) → {path} → {got:#04x}"));
                }
            }
        }
    }
    assert_no_failures(failures);
}

/// Interesting inputs derived from the codes themselves: every midpoint between neighbours
/// (exact ties), one f32/f64 ulp either side of it, every code value ± one ulp, and the region
/// beyond max.
fn derived_inputs(format: Format) -> Vec<f64> {
    let mut out = Vec::new();
    let max = format.max_code();
    let step = |x: f64, up: bool| {
        let f = x as f32;
        let f_next = if up {
            f32::from_bits(f.to_bits() + 1)
        } else {
            f32::from_bits(f.to_bits() - 1)
        };
        let d_next = if up {
            f64::from_bits(x.to_bits() + 1)
        } else {
            f64::from_bits(x.to_bits() - 1)
        };
        [f64::from(f_next), d_next]
    };
    for c in 0..=max {
        let v = format.decode(c);
        out.push(v);
        if v > 0.0 {
            out.extend(step(v, true));
            out.extend(step(v, false));
        }
        if c < max {
            let mid = (v + format.decode(c + 1)) / 2.0;
            out.push(mid);
            out.extend(step(mid, true));
            out.extend(step(mid, false));
        }
    }
    let top = format.decode(max);
    let ulp = top - format.decode(max - 1);
    for k in [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 10.0, 1e3] {
        out.push(top + k * ulp);
    }
    out.extend([
        f64::from(f32::MAX),
        f64::MAX,
        f64::INFINITY,
        1e-300,
        f64::MIN_POSITIVE,
        5e-324,
    ]);
    out.extend([f64::from(f32::MIN_POSITIVE), f64::from(f32::from_bits(1))]);
    let negated: Vec<f64> = out.iter().map(|x| -x).collect();
    out.extend(negated);
    out.extend([0.0, -0.0, f64::NAN, -f64::NAN]);
    out
}

#[test]
fn ties_and_boundaries_round_like_the_reference() {
    let mut failures = Vec::new();
    for format in FORMATS {
        for x in derived_inputs(format) {
            check_f64(format, x, &mut failures);
            // The f32 path on inputs f32 can hold exactly.
            if f64::from(x as f32) == x || x.is_nan() {
                check_f32(format, x as f32, &mut failures);
            }
        }
    }
    assert_no_failures(failures);
}

#[test]
fn storage_conversions_agree_with_the_reference() {
    let mut failures = Vec::new();
    for format in FORMATS {
        let inputs: Vec<f32> = derived_inputs(format)
            .into_iter()
            .filter(|&x| f64::from(x as f32) == x || x.is_nan())
            .map(|x| x as f32)
            .collect();
        let (via_f32, via_f64) = format.storage_codes(&inputs);
        for ((x, a), b) in inputs.iter().zip(via_f32).zip(via_f64) {
            for (path, code) in [("from_f32_vec", a), ("from_f64_iter", b)] {
                if !conforms(format, f64::from(*x), code) {
                    failures.push(format!("{format:?} CpuStorage::{path}({x:e}) = {code:#04x}"));
                }
            }
        }
        // And the way back: storage → f32 values equal the decoder.
        let all: Vec<u8> = (0..=255).collect();
        let storage = CpuStorage::from_le_bytes(format.dtype(), &all).unwrap();
        let decoded = storage.to_f32_vec(&Layout::contiguous(&[256]));
        for (code, v) in all.iter().zip(decoded) {
            if !same_value(f64::from(v), format.decode(*code)) {
                failures.push(format!("{format:?} CpuStorage::to_f32_vec({code:#04x}) = {v}"));
            }
        }
    }
    assert_no_failures(failures);
}

/// Values within a few f64 or f32 ulps of a midpoint between two neighbouring codes of
/// `format`, or of a code.
fn near_midpoint(format: Format) -> impl Strategy<Value = f64> {
    let parts = (
        0..format.max_code(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        -64i64..=64,
    );
    parts.prop_map(move |(c, negative, on_code, f32_ulps, nudge)| {
        let lo = format.decode(c);
        let base = if on_code { lo } else { (lo + format.decode(c + 1)) / 2.0 };
        let x = if f32_ulps {
            // Every midpoint has few significant bits, so it is exact in f32 too.
            f64::from(f32::from_bits(
                (i64::from((base as f32).to_bits()) + nudge).max(0) as u32
            ))
        } else {
            f64::from_bits((base.to_bits() as i64 + nudge).max(0) as u64)
        };
        if negative { -x } else { x }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_f32_bit_patterns_encode_like_the_reference(bits in any::<u32>()) {
        let x = f32::from_bits(bits);
        let mut failures = Vec::new();
        for format in FORMATS {
            check_f32(format, x, &mut failures);
            let (a, b) = format.storage_codes(&[x]);
            prop_assert!(conforms(format, f64::from(x), a[0]), "{format:?} from_f32_vec({x:e}) = {:#04x}", a[0]);
            prop_assert!(conforms(format, f64::from(x), b[0]), "{format:?} from_f64_iter({x:e}) = {:#04x}", b[0]);
        }
        prop_assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn random_f32_values_in_range_encode_like_the_reference(
        mantissa in 0u32..(1 << 23),
        exponent in 100u32..150,
        negative in any::<bool>(),
    ) {
        // Biased towards the FP8 ranges (2^-27 .. 2^22), subnormals included.
        let x = f32::from_bits((u32::from(negative) << 31) | (exponent << 23) | mantissa);
        let mut failures = Vec::new();
        for format in FORMATS {
            check_f32(format, x, &mut failures);
        }
        prop_assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn random_f64_bit_patterns_encode_like_the_reference(bits in any::<u64>()) {
        let mut failures = Vec::new();
        for format in FORMATS {
            check_f64(format, f64::from_bits(bits), &mut failures);
        }
        prop_assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn values_near_e4m3_midpoints_encode_like_the_reference(x in near_midpoint(Format::E4M3)) {
        let mut failures = Vec::new();
        check_f64(Format::E4M3, x, &mut failures);
        if f64::from(x as f32) == x {
            check_f32(Format::E4M3, x as f32, &mut failures);
        }
        prop_assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn values_near_e5m2_midpoints_encode_like_the_reference(x in near_midpoint(Format::E5M2)) {
        let mut failures = Vec::new();
        check_f64(Format::E5M2, x, &mut failures);
        if f64::from(x as f32) == x {
            check_f32(Format::E5M2, x as f32, &mut failures);
        }
        prop_assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
