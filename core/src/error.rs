//! The one error type of l4lab's tensor core.
//!
//! Every fallible public function in `l4-core` returns [`Result`]. Variants carry enough context
//! (both shapes, the file, the tensor name) that a user can act on the message without a debugger.

use std::path::PathBuf;

use crate::{DType, Device};

/// Errors from tensor construction, views, ops, devices and checkpoint I/O.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two shapes that had to agree did not.
    #[error("{op}: shape mismatch: {lhs:?} vs {rhs:?}")]
    ShapeMismatch {
        /// The operation that compared them.
        op: &'static str,
        /// The first operand's shape.
        lhs: Vec<usize>,
        /// The second operand's shape.
        rhs: Vec<usize>,
    },
    /// A shape was invalid for the operation on its own (wrong rank, wrong element count...).
    #[error("{op}: {msg} (shape {shape:?})")]
    BadShape {
        /// The operation.
        op: &'static str,
        /// The shape at fault.
        shape: Vec<usize>,
        /// What is wrong with it.
        msg: String,
    },
    /// A dimension index was out of range for a tensor's rank.
    #[error("{op}: dimension {dim} out of range for rank {rank}")]
    DimOutOfRange {
        /// The operation.
        op: &'static str,
        /// The requested dimension.
        dim: usize,
        /// The tensor's rank.
        rank: usize,
    },
    /// An index into a tensor (an embedding id, an index_select entry...) was out of range.
    #[error("{op}: index {index} out of range for size {size}")]
    IndexOutOfRange {
        /// The operation.
        op: &'static str,
        /// The offending index.
        index: i64,
        /// The size of the indexed dimension.
        size: usize,
    },
    /// An operation got a dtype it does not support, or two dtypes that had to agree did not.
    #[error("{op}: unsupported dtype {got}{}", expected.map(|e| format!(" (expected {e})")).unwrap_or_default())]
    DTypeMismatch {
        /// The operation.
        op: &'static str,
        /// The dtype it got.
        got: DType,
        /// The dtype it needed, when there is exactly one.
        expected: Option<DType>,
    },
    /// Operands live on different devices.
    #[error("{op}: operands on different devices: {lhs} vs {rhs}")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
        /// The first operand's device.
        lhs: Device,
        /// The second operand's device.
        rhs: Device,
    },
    /// The operation has no implementation on this device yet.
    #[error("{op} is not implemented on {device}")]
    NotImplementedOnDevice {
        /// The operation.
        op: &'static str,
        /// The device it was asked to run on.
        device: Device,
    },
    /// CUDA is not usable: no driver, no device, or a driver call failed.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// An invalid argument that is not a shape or dtype (a negative epsilon, k = 0...).
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A checkpoint or other file could not be read, parsed or written.
    #[error("{}: {msg}", path.display())]
    File {
        /// The file at fault.
        path: PathBuf,
        /// What went wrong, naming the tensor where there is one.
        msg: String,
    },
}

/// `Result` with l4lab's core [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A [`Error::File`] from any displayable cause.
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    /// An [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, msg: impl std::fmt::Display) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.to_string(),
        }
    }
}

impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Cuda(e.to_string())
    }
}
