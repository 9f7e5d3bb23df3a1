//! Element types, their properties and the conversions between them.
//!
//! Conversions into a floating dtype round to nearest, ties to even. Conversions into FP8 follow
//! the `satfinite` rule of the Hopper `cvt.rn.satfinite` instruction, so CPU and GPU agree
//! bit for bit (see docs/numerics.md, "FP8 saturation and NaN"):
//! finite values beyond the largest finite code become ±max (448 for e4m3, 57344 for e5m2),
//! ±infinity also becomes ±max, and NaN stays NaN (e4m3 has no infinities at all).

use std::fmt;
use std::str::FromStr;

use float8::{F8E4M3, F8E5M2};
use half::{bf16, f16};

use crate::storage::CpuStorage;
use crate::{Error, Result};

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16: binary32's exponent range with 8 bits of precision.
    BF16,
    /// OCP FP8 e4m3fn: 4 exponent bits, 3 mantissa bits, no infinities, max 448.
    F8E4M3,
    /// OCP FP8 e5m2: 5 exponent bits, 2 mantissa bits, IEEE-like with infinities, max 57344.
    F8E5M2,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// 8-bit unsigned integer.
    U8,
    /// Boolean, one byte per element.
    Bool,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 9] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F8E4M3,
        DType::F8E5M2,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::Bool,
    ];

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F8E4M3 | DType::F8E5M2 | DType::U8 | DType::Bool => 1,
            DType::I64 => 8,
        }
    }

    /// The short lowercase name used on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F8E4M3 => "f8e4m3",
            DType::F8E5M2 => "f8e5m2",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
            DType::Bool => "bool",
        }
    }

    /// Whether the dtype is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::F8E5M2
        )
    }

    /// Whether the dtype is an integer type (bool excluded).
    pub fn is_int(self) -> bool {
        matches!(self, DType::I32 | DType::I64 | DType::U8)
    }

    /// Significand precision in bits, the implicit bit included (f32: 24, bf16: 8, e4m3: 4).
    /// `None` for non-float dtypes.
    pub fn precision_bits(self) -> Option<u32> {
        match self {
            DType::F32 => Some(24),
            DType::F16 => Some(11),
            DType::BF16 => Some(8),
            DType::F8E4M3 => Some(4),
            DType::F8E5M2 => Some(3),
            _ => None,
        }
    }

    /// Unit roundoff u = 2^-p: the largest relative error of one round-to-nearest into this
    /// dtype (within its normal range). Zero for integer dtypes, which hold their values exactly.
    pub fn unit_roundoff(self) -> f64 {
        self.precision_bits().map_or(0.0, |p| (-(p as f64)).exp2())
    }

    /// The largest finite value of a float dtype, or the largest value of an integer dtype.
    pub fn max_finite(self) -> f64 {
        match self {
            DType::F32 => f32::MAX as f64,
            DType::F16 => f16::MAX.to_f64(),
            DType::BF16 => bf16::MAX.to_f64(),
            DType::F8E4M3 => 448.0,
            DType::F8E5M2 => 57344.0,
            DType::I32 => i32::MAX as f64,
            DType::I64 => i64::MAX as f64,
            DType::U8 => 255.0,
            DType::Bool => 1.0,
        }
    }

    /// The smallest positive normal value of a float dtype (`None` for other dtypes).
    pub fn min_positive_normal(self) -> Option<f64> {
        match self {
            DType::F32 => Some(f32::MIN_POSITIVE as f64),
            DType::F16 => Some(f16::MIN_POSITIVE.to_f64()),
            DType::BF16 => Some(bf16::MIN_POSITIVE.to_f64()),
            DType::F8E4M3 => Some((-6f64).exp2()),
            DType::F8E5M2 => Some((-14f64).exp2()),
            _ => None,
        }
    }

    /// The safetensors name of the dtype (`"BF16"`, `"F8_E4M3"`...).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
            DType::I32 => "I32",
            DType::I64 => "I64",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        DType::ALL
            .into_iter()
            .find(|d| d.name() == lower || d.safetensors_name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = DType::ALL.iter().map(|d| d.name()).collect();
                Error::invalid(
                    "dtype",
                    format!("unknown dtype {s:?}; expected one of {}", names.join(", ")),
                )
            })
    }
}

/// A host element type that a tensor can hold.
///
/// `from_f64` is the one conversion into the type: round to nearest even for floats (satfinite
/// for FP8), round to nearest then saturate for integers, `v != 0` for bool.
pub trait Element: Copy + Send + Sync + fmt::Debug + PartialEq + 'static {
    /// The dtype tag of this element type.
    const DTYPE: DType;
    /// Exact widening to f64 (every supported type fits f64 exactly, except i64 beyond 2^53).
    fn to_f64(self) -> f64;
    /// Converts from f64 with the rounding rules above.
    fn from_f64(v: f64) -> Self;
    /// Converts from f32; the same result as `from_f64(v as f64)`.
    fn from_f32(v: f32) -> Self {
        Self::from_f64(v as f64)
    }
    /// Widens to f32 (exact for every type narrower than f32).
    fn to_f32(self) -> f32 {
        self.to_f64() as f32
    }
    /// Wraps a vector as typed CPU storage.
    fn into_storage(v: Vec<Self>) -> CpuStorage;
    /// Borrows typed CPU storage as a slice of this type, if the dtypes agree.
    fn slice_of(s: &CpuStorage) -> Option<&[Self]>;
}

macro_rules! float_element {
    ($t:ty, $dtype:ident, $to64:expr, $from64:expr, $from32:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$dtype;
            fn to_f64(self) -> f64 {
                $to64(self)
            }
            fn from_f64(v: f64) -> Self {
                $from64(v)
            }
            fn from_f32(v: f32) -> Self {
                $from32(v)
            }
            fn into_storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$dtype(v)
            }
            fn slice_of(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$dtype(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

float_element!(f32, F32, |x: f32| x as f64, |v: f64| v as f32, |v: f32| v);
float_element!(f16, F16, f16::to_f64, f16::from_f64, f16::from_f32);
float_element!(bf16, BF16, bf16::to_f64, bf16::from_f64, bf16::from_f32);
float_element!(
    F8E4M3,
    F8E4M3,
    |x: F8E4M3| F8E4M3::to_f64(&x),
    F8E4M3::from_f64,
    F8E4M3::from_f32
);
float_element!(
    F8E5M2,
    F8E5M2,
    |x: F8E5M2| F8E5M2::to_f64(&x),
    F8E5M2::from_f64,
    F8E5M2::from_f32
);

macro_rules! int_element {
    ($t:ty, $dtype:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$dtype;
            fn to_f64(self) -> f64 {
                self as f64
            }
            // `as` from float saturates at the type's bounds and maps NaN to 0.
            fn from_f64(v: f64) -> Self {
                v.round_ties_even() as $t
            }
            fn into_storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$dtype(v)
            }
            fn slice_of(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$dtype(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

int_element!(i32, I32);
int_element!(i64, I64);
int_element!(u8, U8);

impl Element for bool {
    const DTYPE: DType = DType::Bool;
    fn to_f64(self) -> f64 {
        if self { 1.0 } else { 0.0 }
    }
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    fn into_storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::Bool(v)
    }
    fn slice_of(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::Bool(v) => Some(v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
            assert_eq!(d.safetensors_name().parse::<DType>().unwrap(), d);
        }
        assert!("f7".parse::<DType>().is_err());
    }

    #[test]
    fn unit_roundoff_matches_the_types_epsilon() {
        // Machine epsilon (spacing above 1) is 2u for every binary float format.
        assert_eq!(DType::F32.unit_roundoff() * 2.0, f32::EPSILON as f64);
        assert_eq!(DType::F16.unit_roundoff() * 2.0, f16::EPSILON.to_f64());
        assert_eq!(DType::BF16.unit_roundoff() * 2.0, bf16::EPSILON.to_f64());
        assert_eq!(DType::F8E4M3.unit_roundoff() * 2.0, F8E4M3::EPSILON.to_f64());
        assert_eq!(DType::F8E5M2.unit_roundoff() * 2.0, F8E5M2::EPSILON.to_f64());
    }

    #[test]
    fn fp8_limits_are_the_largest_finite_codes() {
        // float8 0.7's own `MAX` constants are one code short (416 and 49152), so l4lab takes
        // the limits from the codes 0x7E (e4m3fn) and 0x7B (e5m2) instead.
        assert_eq!(DType::F8E4M3.max_finite(), F8E4M3::from_bits(0x7E).to_f64());
        assert_eq!(DType::F8E5M2.max_finite(), F8E5M2::from_bits(0x7B).to_f64());
        assert_eq!(DType::F8E4M3.min_positive_normal(), Some(F8E4M3::MIN_POSITIVE.to_f64()));
        assert_eq!(DType::F8E5M2.min_positive_normal(), Some(F8E5M2::MIN_POSITIVE.to_f64()));
    }

    #[test]
    fn fp8_widening_calls_the_crates_decoder() {
        // `x.to_f64()` inside the Element impl would resolve to Element::to_f64 itself.
        assert_eq!(<F8E4M3 as Element>::to_f64(F8E4M3::from_bits(0x38)), 1.0);
        assert_eq!(<F8E5M2 as Element>::to_f64(F8E5M2::from_bits(0x3C)), 1.0);
    }

    #[test]
    fn integer_conversion_rounds_and_saturates() {
        assert_eq!(i32::from_f64(2.5), 2);
        assert_eq!(i32::from_f64(3.5), 4);
        assert_eq!(u8::from_f64(300.0), 255);
        assert_eq!(u8::from_f64(-3.0), 0);
        assert_eq!(i64::from_f64(f64::NAN), 0);
    }
}
