//! safetensors checkpoint I/O: memory-mapped, strictly validated reading of single-file and
//! sharded checkpoints, and atomic writing.
//!
//! Reading never panics on malformed input: every problem (truncated header, invalid JSON,
//! offsets outside the file, overlapping or unsorted data, sizes that do not match shape×dtype,
//! unknown dtypes, missing shards) is an [`Error::File`] naming the file and, where there is
//! one, the tensor.
//!
//! ```no_run
//! # fn main() -> l4_core::Result<()> {
//! use l4_core::checkpoint::{Checkpoint, save_safetensors};
//! use l4_core::{DType, Device, Tensor};
//!
//! let w = Tensor::zeros(&[4, 8], DType::BF16, Device::Cpu)?;
//! save_safetensors("weights.safetensors", &[("w", &w)], None)?;
//! let ckpt = Checkpoint::open("weights.safetensors")?;
//! let w2 = ckpt.load_expect("w", &[4, 8], DType::BF16, Device::Cpu)?;
//! # let _ = w2;
//! # Ok(())
//! # }
//! ```

mod header;
mod index;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// Tells the kernel it may drop the mapped pages of a tensor that was just copied out, so that
/// loading a checkpoint keeps about one copy of the weights resident (the copies), not two (the
/// copies plus the page cache mapped into this process). Best effort: failure only costs memory.
fn release_pages(mmap: &Mmap, range: std::ops::Range<usize>) {
    #[cfg(unix)]
    // SAFETY: the mapping is a private, read-only file mapping (`Mmap::map`), and no reference
    // into the range is alive (the bytes were copied above). After MADV_DONTNEED a later read of
    // the range, or of a neighbouring tensor sharing its first or last page, faults the page back
    // in from the file; nothing is lost.
    unsafe {
        let _ = mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len());
    }
    #[cfg(not(unix))]
    let _ = (mmap, range);
}

use self::header::{FileDType, RawTensor};
use crate::{CpuStorage, DType, Device, Error, Result, Tensor};

pub use self::write::{save_safetensors, save_sharded};

/// The file name of a single-file checkpoint inside a model directory.
pub const SINGLE_FILE_NAME: &str = "model.safetensors";

/// The file name of a sharded checkpoint's index inside a model directory.
pub const INDEX_FILE_NAME: &str = "model.safetensors.index.json";

/// What the checkpoint records about one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The element type.
    pub dtype: DType,
    /// The shape, outermost dimension first.
    pub shape: Vec<usize>,
    /// The safetensors file that holds the tensor's bytes.
    pub file: PathBuf,
}

/// One memory-mapped safetensors file.
#[derive(Debug)]
struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    metadata: HashMap<String, String>,
}

/// Where one tensor lives.
#[derive(Debug)]
struct Slot {
    /// Index into [`Checkpoint::files`].
    file: usize,
    tensor: RawTensor,
}

/// An opened safetensors checkpoint: one file, or the shards an index names.
///
/// Every file is opened, memory-mapped and validated once, in [`Checkpoint::open`]; the maps stay
/// alive as long as the checkpoint, and [`Checkpoint::load`] copies a tensor's bytes out of them.
/// As with any memory map, the files must not be modified or truncated while the checkpoint is
/// open.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, Slot>,
}

/// Opens, maps and validates one safetensors file.
fn map_file(path: &Path) -> Result<(MappedFile, Vec<RawTensor>)> {
    let file = File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| Error::file(path, format!("cannot stat: {e}")))?
        .len();
    if len < header::PREFIX_LEN as u64 {
        // Parse the few bytes read normally, for the same message as any short buffer; also
        // avoids mapping an empty file.
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        let short = header::parse(path, &bytes).err();
        return Err(short.unwrap_or_else(|| Error::file(path, "file too short")));
    }
    // SAFETY: the map is read-only and private to this checkpoint. Like every reader of memory
    // mapped files we rely on the file not being modified or truncated while it is mapped; the
    // type's documentation states this requirement.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::file(path, format!("cannot memory-map: {e}")))?;
    let header = header::parse(path, &mmap)?;
    Ok((
        MappedFile {
            path: path.to_path_buf(),
            mmap,
            metadata: header.metadata,
        },
        header.tensors,
    ))
}

fn is_index_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
}

impl Checkpoint {
    /// Opens a checkpoint from
    /// - a `.safetensors` file,
    /// - a sharded checkpoint's index (`model.safetensors.index.json`, or any `.json` file of
    ///   that form), whose `weight_map` maps each tensor name to a shard file relative to the
    ///   index's folder, or
    /// - a directory holding `model.safetensors.index.json` (preferred) or `model.safetensors`.
    ///
    /// Every file is validated here; a later [`load`](Self::load) can only fail on a tensor's
    /// content (an unsupported dtype, a bool byte other than 0 or 1) or on the device.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::file(path, format!("cannot open checkpoint: {e}")))?;
        if meta.is_dir() {
            let index = path.join(INDEX_FILE_NAME);
            if index.is_file() {
                return Self::open_index(&index);
            }
            let single = path.join(SINGLE_FILE_NAME);
            if single.is_file() {
                return Self::open_single(&single);
            }
            return Err(Error::file(
                path,
                format!("directory contains neither {INDEX_FILE_NAME} nor {SINGLE_FILE_NAME}"),
            ));
        }
        if is_index_file(path) {
            Self::open_index(path)
        } else {
            Self::open_single(path)
        }
    }

    fn open_single(path: &Path) -> Result<Checkpoint> {
        let (file, raw) = map_file(path)?;
        let tensors = raw
            .into_iter()
            .map(|tensor| (tensor.name.clone(), Slot { file: 0, tensor }))
            .collect();
        Ok(Checkpoint {
            path: path.to_path_buf(),
            files: vec![file],
            tensors,
        })
    }

    fn open_index(index_path: &Path) -> Result<Checkpoint> {
        let weight_map = index::read_weight_map(index_path)?;
        let folder = index_path.parent().unwrap_or(Path::new(""));
        // Each shard, in sorted order, with the tensors the index assigns to it.
        let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tensor, shard) in &weight_map {
            shards.entry(shard.as_str()).or_default().push(tensor.as_str());
        }
        let mut files = Vec::with_capacity(shards.len());
        let mut tensors = BTreeMap::new();
        for (shard, wanted) in shards {
            let shard_path = folder.join(shard);
            if !shard_path.is_file() {
                return Err(Error::file(
                    index_path,
                    format!(
                        "shard {shard} (holding tensor `{}`) is missing: {} does not exist",
                        wanted.first().copied().unwrap_or_default(),
                        shard_path.display()
                    ),
                ));
            }
            let (file, raw) = map_file(&shard_path)?;
            let mut by_name: HashMap<String, RawTensor> = raw.into_iter().map(|t| (t.name.clone(), t)).collect();
            for name in wanted {
                let tensor = by_name.remove(name).ok_or_else(|| {
                    Error::file(
                        &shard_path,
                        format!(
                            "index {} maps tensor `{name}` to this shard, which does not contain it",
                            index_path.display()
                        ),
                    )
                })?;
                tensors.insert(
                    name.to_string(),
                    Slot {
                        file: files.len(),
                        tensor,
                    },
                );
            }
            files.push(file);
        }
        Ok(Checkpoint {
            path: index_path.to_path_buf(),
            files,
            tensors,
        })
    }

    /// The path the checkpoint was opened from (the file or the index; for a directory, the
    /// file found in it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The safetensors files that make up the checkpoint (one, or the shards in name order).
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// The tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the checkpoint holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Whether the checkpoint holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The `__metadata__` string map of the first file (the only file, or the first shard in
    /// name order); empty when the file has none.
    pub fn metadata(&self) -> &HashMap<String, String> {
        static EMPTY: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();
        self.files
            .first()
            .map_or_else(|| EMPTY.get_or_init(HashMap::new), |f| &f.metadata)
    }

    fn slot(&self, name: &str) -> Result<(&Slot, &MappedFile)> {
        let slot = self.tensors.get(name).ok_or_else(|| {
            Error::file(
                &self.path,
                format!(
                    "no tensor named `{name}` in the checkpoint ({} tensors)",
                    self.tensors.len()
                ),
            )
        })?;
        Ok((slot, &self.files[slot.file]))
    }

    fn supported_dtype(slot: &Slot, file: &MappedFile) -> Result<DType> {
        match slot.tensor.dtype {
            FileDType::Supported(d) => Ok(d),
            FileDType::Unsupported(name) => {
                let supported: Vec<_> = DType::ALL.iter().map(|d| d.safetensors_name()).collect();
                Err(Error::file(
                    &file.path,
                    format!(
                        "tensor `{}` has dtype {name}, which l4lab does not support (supported: {})",
                        slot.tensor.name,
                        supported.join(", ")
                    ),
                ))
            }
        }
    }

    /// The dtype, shape and file of a tensor, without reading its data. Fails when the tensor
    /// is missing or its dtype is one l4lab cannot hold (F64, I8, I16, U16...).
    pub fn info(&self, name: &str) -> Result<TensorInfo> {
        let (slot, file) = self.slot(name)?;
        Ok(TensorInfo {
            dtype: Self::supported_dtype(slot, file)?,
            shape: slot.tensor.shape.clone(),
            file: file.path.clone(),
        })
    }

    /// Copies a tensor out of the file into a new contiguous tensor on `device`.
    pub fn load(&self, name: &str, device: Device) -> Result<Tensor> {
        let (slot, file) = self.slot(name)?;
        let dtype = Self::supported_dtype(slot, file)?;
        let in_file = |e: Error| Error::file(&file.path, format!("tensor `{name}`: {e}"));
        let range = slot.tensor.bytes.clone();
        let storage = CpuStorage::from_le_bytes(dtype, &file.mmap[range.clone()]).map_err(in_file)?;
        release_pages(&file.mmap, range);
        Tensor::from_cpu_storage(storage, &slot.tensor.shape)
            .map_err(in_file)?
            .to_device(device)
    }

    /// [`load`](Self::load), after checking that the tensor has exactly this shape and dtype;
    /// a mismatch is an error naming the file, the tensor and both shapes and dtypes.
    pub fn load_expect(&self, name: &str, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let info = self.info(name)?;
        if info.shape != shape || info.dtype != dtype {
            return Err(Error::file(
                &info.file,
                format!(
                    "tensor `{name}`: expected shape {shape:?} dtype {dtype}, found shape {:?} dtype {}",
                    info.shape, info.dtype
                ),
            ));
        }
        self.load(name, device)
    }
}
