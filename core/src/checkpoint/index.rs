//! The index of a sharded checkpoint (`model.safetensors.index.json`):
//! `{"metadata": {"total_size": N, ...}, "weight_map": {"tensor name": "shard file", ...}}`.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::Deserialize;
use serde_json::Value;

use super::header::Entries;
use crate::{Error, Result};

/// The index's one required field; others (`metadata`) are ignored.
#[derive(Deserialize)]
struct IndexFile {
    weight_map: Entries,
}

/// Whether a shard name stays inside the index's folder (relative, no `..`).
fn is_plain_relative(shard: &str) -> bool {
    let path = Path::new(shard);
    !shard.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Reads and validates an index: tensor name → shard file name (relative to the index's folder).
pub(super) fn read_weight_map(path: &Path) -> Result<BTreeMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read index: {e}")))?;
    let index: IndexFile = serde_json::from_slice(&bytes).map_err(|e| {
        Error::file(
            path,
            format!("not a valid safetensors index (a JSON object with a \"weight_map\" object): {e}"),
        )
    })?;
    if let Some(dup) = index.weight_map.first_duplicate() {
        return Err(Error::file(path, format!("weight_map names tensor `{dup}` twice")));
    }
    let mut map = BTreeMap::new();
    for (tensor, shard) in index.weight_map.0 {
        let Value::String(shard) = shard else {
            return Err(Error::file(
                path,
                format!("weight_map entry for tensor `{tensor}` is {shard}, not a file name"),
            ));
        };
        if !is_plain_relative(&shard) {
            return Err(Error::file(
                path,
                format!(
                    "weight_map maps tensor `{tensor}` to {shard:?}, which is not a path inside the index's folder"
                ),
            ));
        }
        map.insert(tensor, shard);
    }
    Ok(map)
}
