//! Greedy decoding with the KV cache.

use l4_core::{DType, Device, Error, Result, Tensor};

use crate::kv_cache::KvCache;
use crate::llama4::{Capture, Llama4};

/// Options for [`greedy`].
#[derive(Clone, Debug, Default)]
pub struct GreedyOptions {
    /// New tokens to produce per sequence.
    pub max_new_tokens: usize,
    /// Stop a sequence after it produces one of these ids (the batch stops when all have).
    pub stop_ids: Vec<i64>,
}

/// Index of the largest logit of each row of `logits [b, v]`, first index on ties.
fn argmax_rows(logits: &Tensor) -> Result<Vec<i64>> {
    let ids = logits.argmax(1, false)?;
    ids.to_vec::<i64>()
}

/// Greedy continuation of `prompt [b, t]`: prefills the whole prompt, then decodes one token
/// per step. `on_token` sees each step's new ids `[b]`. Returns the new ids `[b, n]` with
/// `n ≤ max_new_tokens`; a sequence that stopped early is padded with its stop id.
pub fn greedy(
    model: &Llama4,
    prompt: &Tensor,
    options: &GreedyOptions,
    on_token: impl FnMut(&[i64]),
) -> Result<Tensor> {
    greedy_with_images(model, prompt, None, options, on_token)
}

/// [`greedy`] over a prompt with images: `pixel_values [n, c, px, px]` go through the vision
/// tower once, at prefill, and their features replace the prompt's image-token embeddings
/// ([`Llama4::embed_with_images`]); decoding steps see only the cache.
pub fn greedy_with_images(
    model: &Llama4,
    prompt: &Tensor,
    pixel_values: Option<&Tensor>,
    options: &GreedyOptions,
    mut on_token: impl FnMut(&[i64]),
) -> Result<Tensor> {
    let [b, t] = prompt.shape()[..] else {
        return Err(Error::BadShape {
            op: "generate",
            shape: prompt.shape().to_vec(),
            msg: "input_ids must be [batch, tokens]".into(),
        });
    };
    if t == 0 {
        return Err(Error::invalid("generate", "the prompt is empty"));
    }
    let mut cache: KvCache = model.new_cache();
    let mut generated: Vec<Vec<i64>> = vec![Vec::new(); b];
    let mut finished = vec![false; b];
    let mut input = prompt.clone();
    for step in 0..options.max_new_tokens {
        let embeddings = match step {
            0 => model.embed_with_images(&input, pixel_values)?,
            _ => model.embed(&input)?,
        };
        let logits = model
            .forward_embeddings_with_ids(&embeddings, Some(&input), &mut cache, Capture::default())?
            .logits; // [b, t, v]
        let steps = logits.shape()[1];
        // Only the last position's row leaves the device.
        let last = l4_kernels::ops::contiguous(&logits.narrow(1, steps - 1, 1)?.squeeze(1)?)?
            .to_device(Device::Cpu)?
            .to_dtype(DType::F32)?; // [b, v]
        let next = argmax_rows(&last)?;
        let next: Vec<i64> = next
            .iter()
            .zip(&finished)
            .zip(&generated)
            .map(|((&id, &done), so_far)| if done { *so_far.last().unwrap_or(&id) } else { id })
            .collect();
        on_token(&next);
        for ((seq, &id), done) in generated.iter_mut().zip(&next).zip(finished.iter_mut()) {
            seq.push(id);
            *done |= options.stop_ids.contains(&id);
        }
        if finished.iter().all(|&f| f) {
            break;
        }
        input = Tensor::from_vec(next, &[b, 1], Device::Cpu)?;
    }
    let n = generated.first().map_or(0, Vec::len);
    Tensor::from_vec(generated.concat(), &[b, n], Device::Cpu)
}
