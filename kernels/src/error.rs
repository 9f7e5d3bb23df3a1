//! Errors of the compile-and-load layer. Every variant names the kernel it concerns.

/// Why a kernel could not be compiled or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// NVRTC (libnvrtc.so.13) could not be loaded, so no kernel can be compiled.
    #[error(
        "kernel {kernel}: NVRTC not available ({reason}). Run `cargo xtask cuda-tools` and put the \
         printed cu13/lib directory on LD_LIBRARY_PATH before starting the process, or point \
         LD_LIBRARY_PATH at a CUDA 13.0 toolkit's lib64"
    )]
    NvrtcUnavailable {
        /// The kernel that needed NVRTC.
        kernel: String,
        /// What went wrong.
        reason: String,
    },
    /// NVRTC or its built-in ptxas rejected the source (this includes spills, which the spill
    /// gate turns into errors). The log is the complete compiler output.
    #[error("kernel {kernel}: NVRTC compile for {arch} failed ({status}); compile log:\n{log}")]
    Compile {
        /// The kernel.
        kernel: String,
        /// The target architecture, e.g. `sm_90a`.
        arch: String,
        /// NVRTC's status code.
        status: String,
        /// The full compile log (NVRTC front end and ptxas).
        log: String,
    },
    /// An NVRTC call other than the compile itself failed.
    #[error("kernel {kernel}: {call} failed: {status}")]
    Nvrtc {
        /// The kernel.
        kernel: String,
        /// The NVRTC function.
        call: &'static str,
        /// Its status.
        status: String,
    },
    /// The CUDA driver could not load the CUBIN or find a function in it.
    #[error("kernel {kernel}: {msg}")]
    Load {
        /// The kernel.
        kernel: String,
        /// What failed.
        msg: String,
    },
}

/// `Result` with [`KernelError`].
pub type KernelResult<T> = std::result::Result<T, KernelError>;

impl KernelError {
    /// The kernel the error concerns.
    pub fn kernel(&self) -> &str {
        match self {
            KernelError::NvrtcUnavailable { kernel, .. }
            | KernelError::Compile { kernel, .. }
            | KernelError::Nvrtc { kernel, .. }
            | KernelError::Load { kernel, .. } => kernel,
        }
    }

    /// The same error attributed to `kernel` (for errors raised before a kernel was known,
    /// such as the NVRTC version query).
    pub(crate) fn for_kernel(self, kernel: &str) -> Self {
        match self {
            KernelError::NvrtcUnavailable { reason, .. } => KernelError::NvrtcUnavailable {
                kernel: kernel.into(),
                reason,
            },
            KernelError::Nvrtc { call, status, .. } => KernelError::Nvrtc {
                kernel: kernel.into(),
                call,
                status,
            },
            other => other,
        }
    }
}

/// Kernel errors surface to tensor code as [`l4_core::Error::Cuda`], message unchanged.
impl From<KernelError> for l4_core::Error {
    fn from(e: KernelError) -> Self {
        l4_core::Error::Cuda(e.to_string())
    }
}
