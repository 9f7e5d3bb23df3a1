//! Early fusion (llama4-spec.md §5.6): image features replace the embeddings of the image
//! token (`<|patch|>`), in order: rows of the batch one after the other, positions left to
//! right, which is the order of the tiles in `pixel_values` (HF's `masked_scatter`). Every other
//! row keeps its token embedding; nothing is scaled or normalised.

use l4_core::{DType, Device, Error, Result, Tensor};
use l4_kernels::ops;

/// How many of `ids [b, t]` are `image_token_id`.
pub fn count_image_tokens(ids: &Tensor, image_token_id: i64) -> Result<usize> {
    Ok(host_ids(ids)?.iter().filter(|&&id| id == image_token_id).count())
}

fn host_ids(ids: &Tensor) -> Result<Vec<i64>> {
    ids.to_device(Device::Cpu)?.to_dtype(DType::I64)?.to_vec::<i64>()
}

/// `embeddings [b, t, d]` with the rows where `ids [b, t]` is `image_token_id` replaced, in
/// order, by the rows of `features [m, d]`; `m` must equal the number of such rows. Runs on the
/// embeddings' device as one gather, so every value is copied exactly.
pub fn scatter_image_features(
    embeddings: &Tensor,
    ids: &Tensor,
    image_token_id: i64,
    features: &Tensor,
) -> Result<Tensor> {
    let [b, t, d] = embeddings.shape()[..] else {
        return Err(Error::BadShape {
            op: "image fusion",
            shape: embeddings.shape().to_vec(),
            msg: "embeddings must be [batch, tokens, width]".into(),
        });
    };
    if ids.shape() != [b, t] {
        return Err(Error::ShapeMismatch {
            op: "image fusion",
            lhs: ids.shape().to_vec(),
            rhs: vec![b, t],
        });
    }
    if features.rank() != 2 || features.shape()[1] != d {
        return Err(Error::BadShape {
            op: "image fusion",
            shape: features.shape().to_vec(),
            msg: format!("image features must be [tokens, {d}]"),
        });
    }
    let m = features.shape()[0];
    // Row r of [embeddings; features] for each output row: its own embedding, or the next
    // feature row for an image token.
    let mut next_feature = b * t;
    let sources: Vec<i64> = host_ids(ids)?
        .iter()
        .enumerate()
        .map(|(row, &id)| {
            if id == image_token_id {
                next_feature += 1;
                (next_feature - 1) as i64
            } else {
                row as i64
            }
        })
        .collect();
    let found = next_feature - b * t;
    if found != m {
        return Err(Error::invalid(
            "image fusion",
            format!("input_ids hold {found} image tokens (id {image_token_id}) for {m} image feature rows"),
        ));
    }
    let stacked = ops::cat(&[&ops::contiguous(embeddings)?.reshape(&[b * t, d])?, features], 0)?; // [b·t + m, d]
    let sources = Tensor::from_vec(sources, &[b * t], Device::Cpu)?.to_device(embeddings.device())?;
    ops::index_select(&stacked, 0, &sources)?.reshape(&[b, t, d])
}
