//! A strict parser for the safetensors header.
//!
//! Layout of a file: an 8-byte little-endian header length `n`, `n` bytes of UTF-8 JSON (an
//! object, possibly padded with trailing spaces), then the data section. Every tensor entry gives
//! its dtype, shape and `[begin, end)` byte offsets relative to the data section. The format
//! requires the entries, sorted by offset, to tile the data section exactly: no gaps, no
//! overlaps, nothing left over at the end.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{DType, Error, Result};

/// Bytes of the header-length prefix.
pub(super) const PREFIX_LEN: usize = 8;

/// The largest header accepted (the reference implementation's limit as well).
const MAX_HEADER_LEN: usize = 100_000_000;

/// The key of the free-form string map in the header.
pub(super) const METADATA_KEY: &str = "__metadata__";

/// Safetensors dtypes l4lab recognises but cannot hold, with their size in bits. Files holding
/// them still open (their sizes are validated); only loading such a tensor fails.
const UNSUPPORTED_DTYPES: [(&str, usize); 13] = [
    ("F64", 64),
    ("I8", 8),
    ("I16", 16),
    ("U16", 16),
    ("U32", 32),
    ("U64", 64),
    ("C64", 64),
    ("F8_E8M0", 8),
    ("F8_E4M3FNUZ", 8),
    ("F8_E5M2FNUZ", 8),
    ("F4", 4),
    ("F6_E2M3", 6),
    ("F6_E3M2", 6),
];

/// The dtype a header names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FileDType {
    /// A dtype l4lab tensors can hold.
    Supported(DType),
    /// A valid safetensors dtype l4lab has no storage for (its safetensors name).
    Unsupported(&'static str),
}

impl FileDType {
    fn parse(name: &str) -> Option<Self> {
        if let Some(d) = DType::ALL.into_iter().find(|d| d.safetensors_name() == name) {
            return Some(FileDType::Supported(d));
        }
        UNSUPPORTED_DTYPES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, _)| FileDType::Unsupported(n))
    }

    fn bits(self) -> usize {
        match self {
            FileDType::Supported(d) => d.size_in_bytes() * 8,
            FileDType::Unsupported(name) => UNSUPPORTED_DTYPES
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(8, |(_, bits)| *bits),
        }
    }
}

impl fmt::Display for FileDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileDType::Supported(d) => f.write_str(d.safetensors_name()),
            FileDType::Unsupported(n) => f.write_str(n),
        }
    }
}

/// One tensor entry of a validated header.
#[derive(Clone, Debug)]
pub(super) struct RawTensor {
    pub name: String,
    pub dtype: FileDType,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub bytes: Range<usize>,
}

/// A validated header.
#[derive(Debug)]
pub(super) struct Header {
    pub metadata: HashMap<String, String>,
    pub tensors: Vec<RawTensor>,
}

/// The entries of a JSON object in file order, duplicates kept (serde_json's own map would
/// silently keep only the last of two equal keys).
#[derive(Debug, Default)]
pub(super) struct Entries(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

impl Entries {
    /// The first key that occurs twice, if any.
    pub fn first_duplicate(&self) -> Option<&str> {
        let mut seen = HashSet::new();
        self.0.iter().map(|(k, _)| k.as_str()).find(|k| !seen.insert(*k))
    }
}

/// The fields of one tensor entry. Unknown extra fields are ignored, as the reference reader does.
#[derive(Deserialize)]
struct EntryFields {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

fn from_value<T: DeserializeOwned>(value: Value) -> std::result::Result<T, serde_json::Error> {
    serde_json::from_value(value)
}

/// Parses and validates the header of a whole safetensors file held in `bytes`. Never panics.
pub(super) fn parse(path: &Path, bytes: &[u8]) -> Result<Header> {
    let err = |msg: String| Error::file(path, msg);
    if bytes.is_empty() {
        return Err(err(
            "empty file; a safetensors file starts with an 8-byte header length".into(),
        ));
    }
    let Some(prefix) = bytes.first_chunk::<PREFIX_LEN>() else {
        return Err(err(format!(
            "file is {} bytes, too short for the 8-byte header length",
            bytes.len()
        )));
    };
    let after_prefix = bytes.len() - PREFIX_LEN;
    let header_len = u64::from_le_bytes(*prefix);
    if header_len > after_prefix as u64 {
        return Err(err(format!(
            "header length {header_len} exceeds the {after_prefix} bytes that follow it (truncated or not a safetensors file)"
        )));
    }
    let header_len = header_len as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(err(format!(
            "header length {header_len} exceeds the limit of {MAX_HEADER_LEN} bytes"
        )));
    }
    let header_bytes = &bytes[PREFIX_LEN..PREFIX_LEN + header_len];
    if header_bytes.first() != Some(&b'{') {
        return Err(err("header does not start with '{' (not a safetensors file)".into()));
    }
    let entries: Entries =
        serde_json::from_slice(header_bytes).map_err(|e| err(format!("header is not a valid JSON object: {e}")))?;
    if let Some(dup) = entries.first_duplicate() {
        return Err(err(format!("header names `{dup}` twice")));
    }

    let data_start = PREFIX_LEN + header_len;
    let data_len = bytes.len() - data_start;
    let mut metadata = HashMap::new();
    let mut tensors = Vec::with_capacity(entries.0.len());
    for (name, value) in entries.0 {
        if name == METADATA_KEY {
            metadata = from_value::<HashMap<String, String>>(value)
                .map_err(|e| err(format!("`{METADATA_KEY}` is not a map of strings to strings: {e}")))?;
            continue;
        }
        let tensor_err = |msg: String| err(format!("tensor `{name}`: {msg}"));
        let fields: EntryFields = from_value(value).map_err(|e| {
            tensor_err(format!(
                "invalid entry ({e}); expected {{\"dtype\", \"shape\", \"data_offsets\"}}"
            ))
        })?;
        let dtype =
            FileDType::parse(&fields.dtype).ok_or_else(|| tensor_err(format!("unknown dtype {:?}", fields.dtype)))?;
        let [begin, end] = fields.data_offsets;
        let bits = fields
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.bits()))
            .ok_or_else(|| tensor_err(format!("shape {:?} of dtype {dtype} overflows", fields.shape)))?;
        if !bits.is_multiple_of(8) {
            return Err(tensor_err(format!(
                "shape {:?} of dtype {dtype} is not a whole number of bytes",
                fields.shape
            )));
        }
        if begin > end {
            return Err(tensor_err(format!(
                "data_offsets [{begin}, {end}] end before they begin"
            )));
        }
        if end > data_len {
            return Err(tensor_err(format!(
                "data_offsets [{begin}, {end}] lie outside the {data_len}-byte data section (truncated file?)"
            )));
        }
        if end - begin != bits / 8 {
            return Err(tensor_err(format!(
                "data_offsets [{begin}, {end}] span {} bytes but shape {:?} of dtype {dtype} needs {}",
                end - begin,
                fields.shape,
                bits / 8
            )));
        }
        tensors.push(RawTensor {
            name,
            dtype,
            shape: fields.shape,
            bytes: data_start + begin..data_start + end,
        });
    }

    // The tensors must tile the data section: sorted by offset, each starts where the last ended.
    let mut order: Vec<&RawTensor> = tensors.iter().collect();
    order.sort_by_key(|t| (t.bytes.start, t.bytes.end));
    let mut covered = data_start;
    let mut previous: Option<&str> = None;
    for t in order {
        if t.bytes.start < covered {
            return Err(err(format!(
                "tensor `{}` overlaps tensor `{}`",
                t.name,
                previous.unwrap_or_default()
            )));
        }
        if t.bytes.start > covered {
            return Err(err(format!(
                "{} unused bytes before tensor `{}` (the data section must have no holes)",
                t.bytes.start - covered,
                t.name
            )));
        }
        covered = t.bytes.end;
        previous = Some(&t.name);
    }
    if covered != bytes.len() {
        return Err(err(format!(
            "the tensors cover {} bytes of the {data_len}-byte data section; {} trailing bytes",
            covered - data_start,
            bytes.len() - covered
        )));
    }
    Ok(Header { metadata, tensors })
}
