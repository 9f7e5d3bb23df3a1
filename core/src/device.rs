//! Where a tensor lives: the host, or one CUDA device chosen by ordinal.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result, cuda};

/// A compute device. CUDA support is always compiled in; whether a CUDA device is usable is
/// decided at run time (see [`cuda::backend`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// The host CPU.
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl Device {
    /// CUDA device 0 when it is usable, else the CPU. Never panics: a missing driver or device
    /// just means CPU.
    pub fn auto() -> Device {
        if cuda::backend(0).is_ok() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }
    }

    /// Checks that the device can be used now (always true for the CPU).
    pub fn ensure_usable(self) -> Result<Device> {
        match self {
            Device::Cpu => Ok(self),
            Device::Cuda(ordinal) => cuda::backend(ordinal).map(|_| self),
        }
    }

    /// Whether this is a CUDA device.
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// Parses `cpu`, `cuda` (ordinal 0), `cuda:N`, or `auto` (see [`Device::auto`]).
impl FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "device",
                format!("unknown device {s:?}; expected cpu, cuda, cuda:N or auto"),
            )
        };
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "auto" => Ok(Device::auto()),
            _ => {
                let ordinal = s.strip_prefix("cuda:").ok_or_else(bad)?;
                ordinal.parse().map(Device::Cuda).map_err(|_| bad())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_never_panics() {
        let device = Device::auto();
        assert_eq!(device.ensure_usable().unwrap(), device);
    }
}
