//! Loading kernels onto a device: compile for the device's own architecture, cache the CUBIN on
//! disk, cache the loaded module and its functions in the process.
//!
//! The first launch of a kernel in a process costs one NVRTC compile (0.1–0.3 s) or one disk
//! read; later launches cost one hash-map lookup.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;
use l4_core::cuda::CudaBackend;

use crate::nvrtc::{CompiledKernel, compile_cubin, compile_options, nvrtc_version, parse_ptxas_log};
use crate::{KernelError, KernelResult, KernelSource, disk_cache};

pub use crate::disk_cache::cache_dir;

/// The NVRTC target for a compute capability: `sm_{major}{minor}`, with the `a` suffix
/// (architecture-specific features such as wgmma and TMA) from Hopper on: (9, 0) → `sm_90a`.
pub fn device_arch(compute_capability: (i32, i32)) -> String {
    let (major, minor) = compute_capability;
    let suffix = if major >= 9 { "a" } else { "" };
    format!("sm_{major}{minor}{suffix}")
}

/// A kernel compiled for `arch` with the given extra options, from the disk cache
/// ([`cache_dir`]) when a valid entry exists, else compiled with NVRTC
/// and written to the cache (write failures are ignored). Returns the cache key with it.
pub fn cached_compile(
    kernel: &KernelSource,
    arch: &str,
    extra_opts: &[String],
) -> KernelResult<(String, CompiledKernel)> {
    cached_compile_in(disk_cache::cache_dir().as_deref(), kernel, arch, extra_opts)
}

/// [`cached_compile`] with an explicit cache directory (`None`: no disk cache).
pub fn cached_compile_in(
    dir: Option<&Path>,
    kernel: &KernelSource,
    arch: &str,
    extra_opts: &[String],
) -> KernelResult<(String, CompiledKernel)> {
    let options = compile_options(arch, extra_opts);
    let version = nvrtc_version().map_err(|e| e.for_kernel(kernel.name))?;
    let key = disk_cache::cache_key(kernel.name, &kernel.full_source(), arch, &options, version);
    let entry = dir.map(|dir| disk_cache::entry_path(dir, kernel.name, arch, &key));
    if let Some((cubin, log)) = entry.as_deref().and_then(disk_cache::read) {
        let compiled = CompiledKernel {
            kernel: kernel.name.into(),
            arch: arch.into(),
            options,
            nvrtc_version: version,
            functions: parse_ptxas_log(&log),
            cubin,
            log,
        };
        return Ok((key, compiled));
    }
    let compiled = compile_cubin(kernel, arch, extra_opts)?;
    if let Some(path) = entry {
        // A read-only or full cache directory only costs a recompile next time.
        let _ = disk_cache::write(&path, &compiled.cubin, &compiled.log);
    }
    Ok((key, compiled))
}

/// Identifies a loaded function: device ordinal, kernel name, the address and length of its
/// `'static` source text (so two sources under one name never collide), extra options and the
/// function name.
type FunctionKey = (usize, &'static str, usize, usize, Vec<String>, String);

/// In-process cache of loaded modules (per device and cache key) and their functions.
#[derive(Default)]
pub struct KernelModules {
    modules: Mutex<HashMap<(usize, String), Arc<CudaModule>>>,
    functions: Mutex<HashMap<FunctionKey, CudaFunction>>,
}

impl fmt::Debug for KernelModules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let modules = self.modules.lock().map(|m| m.len()).unwrap_or(0);
        let functions = self.functions.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "KernelModules {{ modules: {modules}, functions: {functions} }}")
    }
}

impl KernelModules {
    /// The process-wide cache.
    pub fn global() -> &'static KernelModules {
        static GLOBAL: OnceLock<KernelModules> = OnceLock::new();
        GLOBAL.get_or_init(KernelModules::default)
    }

    /// The module of `kernel` compiled for `backend`'s architecture and loaded into its context.
    pub fn module(
        &self,
        backend: &CudaBackend,
        kernel: &KernelSource,
        extra_opts: &[String],
    ) -> KernelResult<Arc<CudaModule>> {
        let arch = device_arch(backend.info().compute_capability);
        let ordinal = backend.info().ordinal;
        // The key is computed without compiling, so a module already loaded costs no compile.
        let options = compile_options(&arch, extra_opts);
        let version = nvrtc_version().map_err(|e| e.for_kernel(kernel.name))?;
        let key = disk_cache::cache_key(kernel.name, &kernel.full_source(), &arch, &options, version);
        if let Some(module) = lock(&self.modules).get(&(ordinal, key.clone())) {
            return Ok(module.clone());
        }
        let (_, compiled) = cached_compile(kernel, &arch, extra_opts)?;
        let module = backend
            .context()
            .load_module(Ptx::from_binary(compiled.cubin))
            .map_err(|e| KernelError::Load {
                kernel: kernel.name.into(),
                msg: format!("loading the {arch} CUBIN on device {ordinal} failed: {e}"),
            })?;
        Ok(lock(&self.modules).entry((ordinal, key)).or_insert(module).clone())
    }

    /// The function `function_name` of `kernel` on `backend`'s device, compiling and loading
    /// the module on first use.
    pub fn load_function(
        &self,
        backend: &CudaBackend,
        kernel: &KernelSource,
        extra_opts: &[String],
        function_name: &str,
    ) -> KernelResult<CudaFunction> {
        let key: FunctionKey = (
            backend.info().ordinal,
            kernel.name,
            kernel.source.as_ptr() as usize,
            kernel.source.len(),
            extra_opts.to_vec(),
            function_name.to_string(),
        );
        if let Some(f) = lock(&self.functions).get(&key) {
            return Ok(f.clone());
        }
        let module = self.module(backend, kernel, extra_opts)?;
        let function = module.load_function(function_name).map_err(|e| KernelError::Load {
            kernel: kernel.name.into(),
            msg: format!("function {function_name} not found in the module: {e}"),
        })?;
        Ok(lock(&self.functions).entry(key).or_insert(function).clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The function `function_name` of `kernel` on `backend`'s device, through the process-wide
/// [`KernelModules`] cache and the default options. Errors name the kernel.
pub fn load_function(
    backend: &CudaBackend,
    kernel: &KernelSource,
    function_name: &str,
) -> l4_core::Result<CudaFunction> {
    Ok(KernelModules::global().load_function(backend, kernel, &[], function_name)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_follow_compute_capability() {
        assert_eq!(device_arch((9, 0)), "sm_90a");
        assert_eq!(device_arch((10, 0)), "sm_100a");
        assert_eq!(device_arch((12, 0)), "sm_120a");
        assert_eq!(device_arch((8, 9)), "sm_89");
        assert_eq!(device_arch((8, 0)), "sm_80");
    }

    #[test]
    fn the_disk_cache_is_written_reused_and_repaired() {
        if !crate::testing::nvrtc_or_skip("the_disk_cache_is_written_reused_and_repaired") {
            return;
        }
        let dir = std::env::temp_dir().join(format!("l4-kernel-loader-test-{}", std::process::id()));
        let kernel = &crate::VECTOR_ADD;
        let (key, fresh) = cached_compile_in(Some(&dir), kernel, "sm_90a", &[]).unwrap();
        let entry = disk_cache::entry_path(&dir, kernel.name, "sm_90a", &key);
        assert!(entry.is_file(), "{} was not written", entry.display());

        let (key2, cached) = cached_compile_in(Some(&dir), kernel, "sm_90a", &[]).unwrap();
        assert_eq!(
            (key2.as_str(), &cached),
            (key.as_str(), &fresh),
            "a cache hit returns the same CUBIN and log"
        );

        std::fs::write(&entry, b"not a cubin").unwrap();
        let (_, rebuilt) = cached_compile_in(Some(&dir), kernel, "sm_90a", &[]).unwrap();
        assert_eq!(rebuilt.cubin, fresh.cubin);
        assert!(disk_cache::read(&entry).is_some(), "a corrupt entry is rewritten");

        let (other_key, _) = cached_compile_in(Some(&dir), kernel, "sm_90a", &["-DUNUSED=1".into()]).unwrap();
        assert_ne!(other_key, key, "options are part of the key");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
