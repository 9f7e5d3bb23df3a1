//! Writing safetensors files and sharded checkpoints, atomically.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::INDEX_FILE_NAME;
use super::header::{METADATA_KEY, PREFIX_LEN};
use crate::{Device, Error, Result, Tensor};

/// Header padding: the data section starts at a multiple of this many bytes, so every element
/// is naturally aligned in a memory map.
const ALIGN: usize = 8;

/// A temporary file's path, removed on drop unless [`TempPath::keep`] disarmed it.
struct TempPath(Option<PathBuf>);

impl TempPath {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Writes a file through `fill`, atomically: the bytes go to a temporary file next to `dest`,
/// which is synced and renamed into place only when `fill` succeeded. On any error the
/// temporary file is removed and `dest` is left untouched.
fn write_atomically(dest: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io = |e: std::io::Error| Error::file(dest, format!("cannot write: {e}"));
    let name = dest
        .file_name()
        .ok_or_else(|| Error::file(dest, "not a file path"))?
        .to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_path = dest.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .map_err(|e| {
            Error::file(
                dest,
                format!("cannot create temporary file {}: {e}", tmp_path.display()),
            )
        })?;
    let guard = TempPath(Some(tmp_path.clone()));
    let mut writer = BufWriter::new(file);
    fill(&mut writer)?;
    let file = writer.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp_path, dest).map_err(|e| Error::file(dest, format!("cannot move into place: {e}")))?;
    guard.keep();
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Best effort: make the rename itself durable.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

fn check_names(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let mut seen = HashSet::new();
    for (name, _) in tensors {
        if *name == METADATA_KEY {
            return Err(Error::file(
                path,
                format!("`{METADATA_KEY}` is reserved and cannot name a tensor"),
            ));
        }
        if !seen.insert(*name) {
            return Err(Error::file(path, format!("duplicate tensor name `{name}`")));
        }
    }
    Ok(())
}

fn byte_size(tensor: &Tensor) -> usize {
    tensor.elem_count() * tensor.dtype().size_in_bytes()
}

fn json_string(path: &Path, s: &str) -> Result<String> {
    serde_json::to_string(s).map_err(|e| Error::file(path, format!("cannot encode {s:?} as JSON: {e}")))
}

/// The header-length prefix and the JSON header, padded with spaces so the data is aligned.
fn encode_header(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: Option<&HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut json = String::from("{");
    if let Some(metadata) = metadata {
        let sorted: BTreeMap<_, _> = metadata.iter().collect();
        let encoded = serde_json::to_string(&sorted)
            .map_err(|e| Error::file(path, format!("cannot encode metadata as JSON: {e}")))?;
        json.push_str(&format!("\"{METADATA_KEY}\":{encoded}"));
    }
    let mut offset = 0usize;
    for (name, tensor) in tensors {
        if json.len() > 1 {
            json.push(',');
        }
        let end = offset + byte_size(tensor);
        json.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{offset},{end}]}}",
            json_string(path, name)?,
            tensor.dtype().safetensors_name(),
            tensor.shape(),
        ));
        offset = end;
    }
    json.push('}');
    let padded = (PREFIX_LEN + json.len()).next_multiple_of(ALIGN) - PREFIX_LEN;
    let mut out = Vec::with_capacity(PREFIX_LEN + padded);
    out.extend_from_slice(&(padded as u64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    out.resize(PREFIX_LEN + padded, b' ');
    Ok(out)
}

/// The tensor's elements as contiguous little-endian bytes, from any layout and device.
fn tensor_bytes(path: &Path, name: &str, tensor: &Tensor) -> Result<Vec<u8>> {
    let in_file = |e: Error| Error::file(path, format!("tensor `{name}`: {e}"));
    let host = tensor.to_device(Device::Cpu).map_err(in_file)?;
    let storage = host.cpu_storage("save_safetensors").map_err(in_file)?;
    Ok(storage.gather(host.layout()).to_le_bytes())
}

/// Writes `tensors` (any layout, any device) to one safetensors file, with an optional
/// `__metadata__` string map.
///
/// The file is written to a temporary file in the same directory and renamed into place, so a
/// failure leaves no partial file (and an existing file at `path` untouched). Tensor names
/// must be unique and may not be `__metadata__`. The data section is 8-byte aligned.
pub fn save_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(&str, &Tensor)],
    metadata: Option<&HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    check_names(path, tensors)?;
    let header = encode_header(path, tensors, metadata)?;
    write_atomically(path, |w| {
        let io = |e: std::io::Error| Error::file(path, format!("cannot write: {e}"));
        w.write_all(&header).map_err(io)?;
        for (name, tensor) in tensors {
            let bytes = tensor_bytes(path, name, tensor)?;
            debug_assert_eq!(bytes.len(), byte_size(tensor));
            w.write_all(&bytes).map_err(io)?;
        }
        Ok(())
    })
}

/// Writes a sharded checkpoint into `dir` (created if needed): shards
/// `model-00001-of-0000M.safetensors`... holding the tensors in the given order, each shard
/// closed before it would exceed `max_shard_bytes` of tensor data (a larger tensor gets a shard
/// of its own), plus `model.safetensors.index.json` with `metadata.total_size` and the
/// `weight_map`. Every file is written atomically and the index last, so a failure never leaves
/// an index naming incomplete shards. [`Checkpoint::open`](super::Checkpoint::open) reads the
/// result from `dir`.
pub fn save_sharded(dir: impl AsRef<Path>, tensors: &[(&str, &Tensor)], max_shard_bytes: usize) -> Result<()> {
    let dir = dir.as_ref();
    check_names(dir, tensors)?;
    if max_shard_bytes == 0 {
        return Err(Error::file(dir, "max_shard_bytes must be positive"));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create directory: {e}")))?;

    let mut shards: Vec<Vec<(&str, &Tensor)>> = Vec::new();
    let mut current_bytes = 0;
    for &(name, tensor) in tensors {
        let size = byte_size(tensor);
        match shards.last_mut() {
            Some(shard) if current_bytes + size <= max_shard_bytes => {
                shard.push((name, tensor));
                current_bytes += size;
            }
            _ => {
                shards.push(vec![(name, tensor)]);
                current_bytes = size;
            }
        }
    }

    let count = shards.len();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file_name = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        save_safetensors(dir.join(&file_name), shard, None)?;
        for (name, _) in shard {
            weight_map.insert(name.to_string(), file_name.clone());
        }
    }
    let total_size: usize = tensors.iter().map(|(_, t)| byte_size(t)).sum();
    let index = serde_json::json!({
        "metadata": { "total_size": total_size },
        "weight_map": weight_map,
    });
    let index_path = dir.join(INDEX_FILE_NAME);
    let encoded = serde_json::to_vec_pretty(&index)
        .map_err(|e| Error::file(&index_path, format!("cannot encode the index: {e}")))?;
    write_atomically(&index_path, |w| {
        w.write_all(&encoded)
            .map_err(|e| Error::file(&index_path, format!("cannot write: {e}")))
    })
}
