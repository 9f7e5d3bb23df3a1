//! Run-time compilation: CUDA C++ → CUBIN with NVRTC, through cudarc's lower layers.
//!
//! cudarc's safe `compile_ptx_with_opts` returns PTX only and drops the log, so this module
//! drives `cudarc::nvrtc::{result, sys}` directly: it always keeps the compile log (the ptxas
//! `-v` lines carry register and spill counts), reads the CUBIN, and parses the log into
//! per-function [`FunctionStats`].
//!
//! Every entry point first asks [`l4_core::cuda::nvrtc_present`]: with dynamic loading, cudarc
//! panics on the first call into a missing library. Any panic that still escapes (a missing
//! symbol) is caught and returned as an error.

use std::ffi::CString;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use cudarc::nvrtc::{result, sys};

use crate::{KernelError, KernelResult, KernelSource};

/// Spill gate: ptxas warns on any spill to local memory and treats warnings as errors, so a
/// spilling kernel fails to compile instead of running slowly.
pub const SPILL_GATE: [&str; 2] = ["--ptxas-options=--warn-on-spills", "--ptxas-options=--warning-as-error"];

/// A compiled kernel: the CUBIN, the complete compile log and what ptxas reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledKernel {
    /// The kernel's registry name.
    pub kernel: String,
    /// The architecture it was compiled for, e.g. `sm_90a`.
    pub arch: String,
    /// Every NVRTC option used, in order.
    pub options: Vec<String>,
    /// The NVRTC version (major, minor) that compiled it.
    pub nvrtc_version: (i32, i32),
    /// The CUBIN (an ELF image), loadable with `cuModuleLoadData` without JIT.
    pub cubin: Vec<u8>,
    /// NVRTC's log, ptxas `-v` output included. Possibly empty only for CUBINs from a cache
    /// written without a log.
    pub log: String,
    /// Per-function resource usage parsed from [`CompiledKernel::log`].
    pub functions: Vec<FunctionStats>,
}

impl CompiledKernel {
    /// Total spill bytes (stores plus loads) over all functions.
    pub fn spill_bytes(&self) -> u64 {
        self.functions.iter().map(FunctionStats::spill_bytes).sum()
    }

    /// The most registers any function uses.
    pub fn max_registers(&self) -> u32 {
        self.functions.iter().map(|f| f.registers).max().unwrap_or(0)
    }

    /// The most static shared memory any function uses, in bytes.
    pub fn max_shared_bytes(&self) -> u64 {
        self.functions.iter().map(|f| f.shared_bytes).max().unwrap_or(0)
    }
}

/// Resource usage of one function as reported by ptxas `-v`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionStats {
    /// The (possibly mangled) function name; `extern "C"` kernels keep their source name.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Named barriers used.
    pub barriers: u32,
    /// Static shared memory in bytes (dynamic shared memory is set at launch and not counted).
    pub shared_bytes: u64,
    /// Stack frame in bytes.
    pub stack_bytes: u64,
    /// Bytes stored to local memory because registers ran out.
    pub spill_store_bytes: u64,
    /// Bytes loaded back from local memory.
    pub spill_load_bytes: u64,
}

impl FunctionStats {
    /// Spill stores plus spill loads, in bytes.
    pub fn spill_bytes(&self) -> u64 {
        self.spill_store_bytes + self.spill_load_bytes
    }
}

/// Runs a closure that calls into the dynamically loaded NVRTC, turning a loader panic into
/// [`KernelError::NvrtcUnavailable`].
fn guarded<T>(kernel: &str, f: impl FnOnce() -> KernelResult<T>) -> KernelResult<T> {
    if !l4_core::cuda::nvrtc_present() {
        return Err(KernelError::NvrtcUnavailable {
            kernel: kernel.to_string(),
            reason: "libnvrtc could not be loaded".into(),
        });
    }
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let reason = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic inside cudarc".into());
        Err(KernelError::NvrtcUnavailable {
            kernel: kernel.to_string(),
            reason,
        })
    })
}

/// The version of the loaded NVRTC, (major, minor), e.g. (13, 0). Part of every cache key.
pub fn nvrtc_version() -> KernelResult<(i32, i32)> {
    static VERSION: OnceLock<(i32, i32)> = OnceLock::new();
    if let Some(v) = VERSION.get() {
        return Ok(*v);
    }
    let v = guarded("(nvrtcVersion)", || {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: both pointers are valid for writes; the library is present (checked above).
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| KernelError::Nvrtc {
                kernel: "(nvrtcVersion)".into(),
                call: "nvrtcVersion",
                status: format!("{e:?}"),
            })?;
        Ok((major, minor))
    })?;
    Ok(*VERSION.get_or_init(|| v))
}

/// The NVRTC options used for `arch` (e.g. `sm_90a`) and the given extra options:
/// architecture, C++17, ptxas `-v`, the [`SPILL_GATE`], one `--include-path` per entry of
/// `CUDA_INCLUDE_DIRS` when that variable is set, then `extra`.
pub fn compile_options(arch: &str, extra: &[String]) -> Vec<String> {
    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "-std=c++17".to_string(),
        "--ptxas-options=-v".to_string(),
    ];
    options.extend(SPILL_GATE.iter().map(|s| s.to_string()));
    if let Some(dirs) = std::env::var_os("CUDA_INCLUDE_DIRS") {
        for dir in std::env::split_paths(&dirs) {
            if !dir.as_os_str().is_empty() {
                options.push(format!("--include-path={}", dir.display()));
            }
        }
    }
    options.extend(extra.iter().cloned());
    options
}

/// Compiles a registered kernel for `arch` (`sm_90a`, `sm_100a`, ...). See [`compile_source`].
pub fn compile_cubin(source: &KernelSource, arch: &str, extra_opts: &[String]) -> KernelResult<CompiledKernel> {
    let file = source.path.rsplit('/').next().unwrap_or(source.path);
    compile_source(source.name, file, &source.full_source(), arch, extra_opts)
}

/// Compiles CUDA C++ `source` (reported as `file` in diagnostics) to a CUBIN for `arch` with
/// [`compile_options`]. On failure the error carries the full compile log and the kernel name.
pub fn compile_source(
    kernel: &str,
    file: &str,
    source: &str,
    arch: &str,
    extra_opts: &[String],
) -> KernelResult<CompiledKernel> {
    // `compute_XX` targets produce PTX only: ptxas would never run and even invalid code would
    // "compile". Insist on a real SASS target.
    if !arch.starts_with("sm_") {
        return Err(KernelError::Compile {
            kernel: kernel.into(),
            arch: arch.into(),
            status: "invalid architecture".into(),
            log: format!("architecture {arch:?} is not an sm_XX target; CUBINs need e.g. sm_90a"),
        });
    }
    let nul_error = |what: &str| KernelError::Compile {
        kernel: kernel.into(),
        arch: arch.into(),
        status: "invalid input".into(),
        log: format!("the {what} contains a NUL byte"),
    };
    let src = CString::new(source).map_err(|_| nul_error("source"))?;
    let name = CString::new(file).map_err(|_| nul_error("file name"))?;
    let options = compile_options(arch, extra_opts);
    if options.iter().any(|o| o.contains('\0')) {
        return Err(nul_error("option list"));
    }
    let nvrtc_version = nvrtc_version().map_err(|e| e.for_kernel(kernel))?;

    let (cubin, log) = guarded(kernel, || {
        let nvrtc_err = |call: &'static str, e: result::NvrtcError| KernelError::Nvrtc {
            kernel: kernel.into(),
            call,
            status: format!("{:?}", e.0),
        };
        let prog = result::create_program(&src, Some(&name)).map_err(|e| nvrtc_err("nvrtcCreateProgram", e))?;
        // SAFETY: `prog` was just created and is destroyed exactly once below; `src` and `name`
        // outlive it.
        let compiled = unsafe { result::compile_program(prog, &options) };
        // SAFETY: as above; the log exists after a compile, failed or not.
        let log = unsafe { result::get_program_log(prog) }
            .map(|chars| c_chars_to_string(&chars))
            .unwrap_or_else(|e| format!("(nvrtcGetProgramLog failed: {:?})", e.0));
        let cubin = match compiled {
            Ok(()) => read_cubin(prog).map_err(|e| nvrtc_err("nvrtcGetCUBIN", e)),
            Err(e) => Err(KernelError::Compile {
                kernel: kernel.into(),
                arch: arch.into(),
                status: format!("{:?}", e.0),
                log: log.clone(),
            }),
        };
        // SAFETY: `prog` is live and not used afterwards.
        let _ = unsafe { result::destroy_program(prog) };
        Ok((cubin?, log))
    })?;

    if cubin.is_empty() {
        return Err(KernelError::Compile {
            kernel: kernel.into(),
            arch: arch.into(),
            status: "empty CUBIN".into(),
            log,
        });
    }
    Ok(CompiledKernel {
        kernel: kernel.into(),
        arch: arch.into(),
        options,
        nvrtc_version,
        functions: parse_ptxas_log(&log),
        cubin,
        log,
    })
}

fn read_cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, result::NvrtcError> {
    let mut size = 0usize;
    // SAFETY: `prog` is a live, successfully compiled program; `size` is valid for writes.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }.result()?;
    let mut cubin = vec![0u8; size];
    if size > 0 {
        // SAFETY: the buffer holds exactly the `size` bytes NVRTC reported.
        unsafe { sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()) }.result()?;
    }
    Ok(cubin)
}

fn c_chars_to_string(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The unsigned integer written right before `suffix` in `line` (`"60 registers"` → 60).
fn number_before(line: &str, suffix: &str) -> Option<u64> {
    let at = line.find(suffix)?;
    let head = line[..at].trim_end();
    let digits = head.rsplit(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// The text between the first pair of single quotes after `marker`.
fn quoted_after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let start = rest.find('\'')? + 1;
    let len = rest[start..].find('\'')?;
    Some(&rest[start..start + len])
}

/// Parses ptxas `-v` output into one [`FunctionStats`] per function, in log order.
///
/// NVRTC 13.0's ptxas prints, per function:
/// ```text
/// ptxas info    : Compiling entry function 'k' for 'sm_90a'
/// ptxas info    : Function properties for k
/// ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 60 registers, used 1 barriers, 4096 bytes smem
/// ```
/// and, under `--warn-on-spills`, `Registers are spilled to local memory in function 'k', N
/// bytes spill stores, M bytes spill loads` (also when the spill gate turned it into an error).
pub fn parse_ptxas_log(log: &str) -> Vec<FunctionStats> {
    let mut functions: Vec<FunctionStats> = Vec::new();
    let mut current: Option<usize> = None;
    let select = |functions: &mut Vec<FunctionStats>, name: &str| -> usize {
        if let Some(i) = functions.iter().position(|f| f.name == name) {
            return i;
        }
        functions.push(FunctionStats {
            name: name.to_string(),
            ..Default::default()
        });
        functions.len() - 1
    };
    for line in log.lines() {
        if let Some(name) = quoted_after(line, "Compiling entry function") {
            current = Some(select(&mut functions, name));
        } else if let Some(at) = line.find("Function properties for ") {
            let name = line[at + "Function properties for ".len()..].trim();
            current = Some(select(&mut functions, name));
        } else if let Some(name) = quoted_after(line, "spilled to local memory in function") {
            let i = select(&mut functions, name);
            let f = &mut functions[i];
            f.spill_store_bytes = f
                .spill_store_bytes
                .max(number_before(line, "bytes spill stores").unwrap_or(0));
            f.spill_load_bytes = f
                .spill_load_bytes
                .max(number_before(line, "bytes spill loads").unwrap_or(0));
        } else if let Some(f) = current.map(|i| &mut functions[i]) {
            if line.contains("bytes stack frame") {
                f.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                f.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(f.spill_store_bytes);
                f.spill_load_bytes = number_before(line, "bytes spill loads").unwrap_or(f.spill_load_bytes);
            } else if line.contains("Used ") && line.contains(" registers") {
                f.registers = number_before(line, "registers").unwrap_or(0) as u32;
                f.barriers = number_before(line, "barriers").unwrap_or(0) as u32;
                f.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    functions
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'gemm' for 'sm_90a'
ptxas info    : Function properties for gemm
    8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 60 registers, used 1 barriers, 4096 bytes smem, 380 bytes cmem[0]
ptxas info    : Compiling entry function 'small' for 'sm_90a'
ptxas info    : Function properties for small
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 0 barriers
ptxas info    : Compile time = 2.103 ms
ptxas error   : Registers are spilled to local memory in function 'pressure', 448 bytes spill stores, 472 bytes spill loads
";

    #[test]
    fn parses_ptxas_verbose_output() {
        let f = parse_ptxas_log(LOG);
        assert_eq!(f.len(), 3, "{f:?}");
        assert_eq!(
            f[0],
            FunctionStats {
                name: "gemm".into(),
                registers: 60,
                barriers: 1,
                shared_bytes: 4096,
                stack_bytes: 8,
                spill_store_bytes: 0,
                spill_load_bytes: 0,
            }
        );
        assert_eq!(
            (f[1].name.as_str(), f[1].registers, f[1].shared_bytes),
            ("small", 10, 0)
        );
        assert_eq!((f[2].name.as_str(), f[2].spill_bytes()), ("pressure", 920));
    }

    #[test]
    fn options_carry_arch_and_spill_gate() {
        let o = compile_options("sm_90a", &["-DTILE=64".to_string()]);
        assert_eq!(o[0], "--gpu-architecture=sm_90a");
        assert!(o.contains(&"--ptxas-options=-v".to_string()));
        assert!(SPILL_GATE.iter().all(|g| o.iter().any(|x| x == g)));
        assert_eq!(o.last().unwrap(), "-DTILE=64");
    }

    /// Needs more than 24 registers: 48 values stay live across the whole product loop.
    const PRESSURE: &str = r#"
extern "C" __global__ void pressure(const float* in, float* out) {
    float v[48];
#pragma unroll
    for (int i = 0; i < 48; ++i) v[i] = in[threadIdx.x + i * 1024];
    float acc = 0.0f;
#pragma unroll
    for (int i = 0; i < 48; ++i)
#pragma unroll
        for (int j = 0; j < 48; ++j) acc += v[i] * v[(i * 7 + j) % 48];
    out[threadIdx.x] = acc;
}
"#;

    #[test]
    fn the_spill_gate_fails_a_spilling_kernel_and_keeps_the_log() {
        if !crate::testing::nvrtc_or_skip("the_spill_gate_fails_a_spilling_kernel_and_keeps_the_log") {
            return;
        }
        let fine = compile_source("pressure", "pressure.cu", PRESSURE, "sm_90a", &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fine.spill_bytes(), 0, "{}", fine.log);
        assert!(fine.functions[0].registers > 24, "{:?}", fine.functions);
        assert_eq!(fine.nvrtc_version, nvrtc_version().unwrap());

        let err = compile_source(
            "pressure",
            "pressure.cu",
            PRESSURE,
            "sm_90a",
            &["--maxrregcount=24".into()],
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("kernel pressure") && msg.contains("sm_90a"), "{msg}");
        let KernelError::Compile { log, .. } = &err else {
            panic!("{err:?}")
        };
        let spilled = parse_ptxas_log(log);
        assert!(
            spilled.iter().any(|f| f.name == "pressure" && f.spill_bytes() > 0),
            "{log}"
        );
    }

    #[test]
    fn syntax_errors_return_the_log_and_the_kernel_name() {
        if !crate::testing::nvrtc_or_skip("syntax_errors_return_the_log_and_the_kernel_name") {
            return;
        }
        let src = "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_name; }";
        let msg = compile_source("broken", "broken.cu", src, "sm_90a", &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("kernel broken") && msg.contains("undefined_name"), "{msg}");
    }

    #[test]
    fn ptx_only_targets_are_refused() {
        let e = compile_source("k", "k.cu", "", "compute_90a", &[]).unwrap_err();
        assert!(e.to_string().contains("kernel k"), "{e}");
    }
}
