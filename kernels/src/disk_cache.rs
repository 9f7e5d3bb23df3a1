//! The on-disk CUBIN cache.
//!
//! An entry is named by the sha256 of everything that determines the CUBIN (kernel name, source,
//! architecture, NVRTC options and NVRTC version), so a stale entry is never hit; it is simply
//! never looked up again. Each file carries its own checksum: a truncated or corrupt entry is
//! ignored and rebuilt. Writes go to a temporary file renamed into place, and write failures
//! are not errors (the cache is an optimisation).
//!
//! File layout: `L4CUBIN1` · cubin length (u64 LE) · log length (u64 LE) · cubin · log ·
//! sha256 of all the preceding bytes.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"L4CUBIN1";
const HEADER: usize = 8 + 8 + 8;
const DIGEST: usize = 32;

/// The cache directory: `$L4_KERNEL_CACHE`, else `$XDG_CACHE_HOME/l4lab/kernels`, else
/// `$HOME/.cache/l4lab/kernels`. `L4_KERNEL_CACHE=off` (or `0`) disables the disk cache.
pub fn cache_dir() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty("L4_KERNEL_CACHE") {
        if dir == "off" || dir == "0" {
            return None;
        }
        return Some(PathBuf::from(dir));
    }
    if let Some(xdg) = non_empty("XDG_CACHE_HOME") {
        return Some(PathBuf::from(xdg).join("l4lab").join("kernels"));
    }
    non_empty("HOME").map(|home| PathBuf::from(home).join(".cache").join("l4lab").join("kernels"))
}

/// The hex sha256 identifying a compilation.
pub(crate) fn cache_key(kernel: &str, source: &str, arch: &str, options: &[String], nvrtc: (i32, i32)) -> String {
    let mut h = Sha256::new();
    // Every field is length-prefixed so that no two different inputs hash the same bytes.
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(MAGIC);
    field(kernel.as_bytes());
    field(source.as_bytes());
    field(arch.as_bytes());
    for option in options {
        field(option.as_bytes());
    }
    field(format!("nvrtc {}.{}", nvrtc.0, nvrtc.1).as_bytes());
    hex(&h.finalize())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The path of the entry for `key`.
pub(crate) fn entry_path(dir: &Path, kernel: &str, arch: &str, key: &str) -> PathBuf {
    dir.join(format!("{kernel}.{arch}.{key}.l4cubin"))
}

/// Encodes an entry.
fn encode(cubin: &[u8], log: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + cubin.len() + log.len() + DIGEST);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(cubin.len() as u64).to_le_bytes());
    out.extend_from_slice(&(log.len() as u64).to_le_bytes());
    out.extend_from_slice(cubin);
    out.extend_from_slice(log.as_bytes());
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// Decodes an entry; `None` for anything malformed.
fn decode(bytes: &[u8]) -> Option<(Vec<u8>, String)> {
    let body_len = bytes.len().checked_sub(DIGEST)?;
    let (body, digest) = bytes.split_at(body_len);
    if body.len() < HEADER || &body[..8] != MAGIC || Sha256::digest(body).as_slice() != digest {
        return None;
    }
    let cubin_len = usize::try_from(u64::from_le_bytes(body[8..16].try_into().ok()?)).ok()?;
    let log_len = usize::try_from(u64::from_le_bytes(body[16..24].try_into().ok()?)).ok()?;
    if HEADER.checked_add(cubin_len)?.checked_add(log_len)? != body.len() || cubin_len == 0 {
        return None;
    }
    let cubin = body[HEADER..HEADER + cubin_len].to_vec();
    let log = String::from_utf8(body[HEADER + cubin_len..].to_vec()).ok()?;
    Some((cubin, log))
}

/// Reads a valid entry; a missing, unreadable or corrupt file reads as `None`.
pub(crate) fn read(path: &Path) -> Option<(Vec<u8>, String)> {
    decode(&std::fs::read(path).ok()?)
}

/// Writes an entry atomically (temporary file, then rename).
pub(crate) fn write(path: &Path, cubin: &[u8], log: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("entry");
    let tmp = dir.join(format!(".{file_name}.{}.{nanos}.tmp", std::process::id()));
    std::fs::write(&tmp, encode(cubin, log))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_corruption_is_detected() {
        let cubin = b"\x7fELF fake cubin".to_vec();
        let bytes = encode(&cubin, "ptxas info : Used 8 registers");
        assert_eq!(
            decode(&bytes),
            Some((cubin, "ptxas info : Used 8 registers".to_string()))
        );
        for cut in [0, 1, 10, bytes.len() - 1] {
            assert_eq!(decode(&bytes[..cut]), None, "truncated to {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        assert_eq!(decode(&flipped), None);
    }

    #[test]
    fn write_then_read_through_the_file_system() {
        let dir = std::env::temp_dir().join(format!("l4-kernel-cache-test-{}", std::process::id()));
        let path = entry_path(&dir, "k", "sm_90a", "abc");
        write(&path, b"cubin", "log").unwrap();
        assert_eq!(read(&path), Some((b"cubin".to_vec(), "log".to_string())));
        std::fs::write(&path, b"garbage").unwrap();
        assert_eq!(read(&path), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_depend_on_every_input() {
        let opts = vec!["--gpu-architecture=sm_90a".to_string()];
        let base = cache_key("k", "src", "sm_90a", &opts, (13, 0));
        assert_eq!(base.len(), 64);
        assert_ne!(base, cache_key("k", "src ", "sm_90a", &opts, (13, 0)));
        assert_ne!(base, cache_key("k", "src", "sm_100a", &opts, (13, 0)));
        assert_ne!(base, cache_key("k", "src", "sm_90a", &[], (13, 0)));
        assert_ne!(base, cache_key("k", "src", "sm_90a", &opts, (13, 5)));
        assert_ne!(base, cache_key("j", "src", "sm_90a", &opts, (13, 0)));
    }
}
