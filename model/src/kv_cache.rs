//! The KV cache, with HF's semantics for chunked layers.
//!
//! Global layers keep every key. Chunked layers keep only the keys of the chunk that the next
//! token will fall in: a query at offset r of its chunk needs exactly the r keys before it in
//! the same chunk, so older chunks are dropped as soon as a step crosses into a new one.

use l4_core::{Result, Tensor};
use l4_kernels::ops;

use crate::spec::Span;

/// One layer's cached keys and values.
#[derive(Clone, Debug)]
pub struct LayerCache {
    span: Span,
    keys: Option<Tensor>,   // [b, hk, s, dh]
    values: Option<Tensor>, // [b, hk, s, dh]
    /// Absolute position of the first cached key.
    start: usize,
}

impl LayerCache {
    /// An empty cache for a layer with this span.
    pub fn new(span: Span) -> Self {
        LayerCache {
            span,
            keys: None,
            values: None,
            start: 0,
        }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.shape()[2])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends this step's `k, v [b, hk, t, dh]` at absolute positions `pos..pos+t` and
    /// returns all keys and values this step may attend to, with the position of the first.
    /// Afterwards, chunked layers drop the keys no later query can see.
    pub fn append(&mut self, k: &Tensor, v: &Tensor, pos: usize) -> Result<(Tensor, Tensor, usize)> {
        let (keys, values, start) = match (&self.keys, &self.values) {
            (Some(ck), Some(cv)) => (ops::cat(&[ck, k], 2)?, ops::cat(&[cv, v], 2)?, self.start),
            _ => (k.clone(), v.clone(), pos),
        };
        let next = pos + k.shape()[2];
        let keep_from = match self.span {
            Span::Global => start,
            Span::Chunked(chunk) => (next / chunk * chunk).max(start),
        };
        let kept = next - keep_from;
        self.keys = Some(ops::contiguous(&keys.narrow(2, keep_from - start, kept)?)?);
        self.values = Some(ops::contiguous(&values.narrow(2, keep_from - start, kept)?)?);
        self.start = keep_from;
        Ok((keys, values, start))
    }
}

/// The cache of every layer, plus the number of positions already processed.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    position: usize,
}

impl KvCache {
    /// An empty cache for layers with these spans.
    pub fn new(spans: impl IntoIterator<Item = Span>) -> Self {
        KvCache {
            layers: spans.into_iter().map(LayerCache::new).collect(),
            position: 0,
        }
    }

    /// Tokens processed so far (the absolute position of the next token).
    pub fn position(&self) -> usize {
        self.position
    }

    /// Layer `i`'s cache.
    pub fn layer_mut(&mut self, i: usize) -> &mut LayerCache {
        &mut self.layers[i]
    }

    /// Records that `t` more tokens were processed.
    pub fn advance(&mut self, t: usize) {
        self.position += t;
    }

    /// Keys held per layer (for memory reports and tests).
    pub fn lengths(&self) -> Vec<usize> {
        self.layers.iter().map(LayerCache::len).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use l4_core::{DType, Device};

    fn step(cache: &mut LayerCache, pos: usize, t: usize) -> (usize, usize) {
        let k = Tensor::zeros(&[1, 1, t, 2], DType::F32, Device::Cpu).unwrap();
        let (keys, _, start) = cache.append(&k, &k, pos).unwrap();
        (keys.shape()[2], start)
    }

    #[test]
    fn chunked_cache_keeps_only_the_live_chunk() {
        let mut cache = LayerCache::new(Span::Chunked(4));
        assert_eq!(step(&mut cache, 0, 6), (6, 0)); // prefill 0..6
        assert_eq!(cache.len(), 2); // positions 4, 5 remain
        assert_eq!(step(&mut cache, 6, 1), (3, 4)); // position 6 sees 4..7
        assert_eq!(step(&mut cache, 7, 1), (4, 4)); // position 7 sees 4..8; 8 starts a chunk
        assert_eq!(cache.len(), 0);
        assert_eq!(step(&mut cache, 8, 1), (1, 8));
    }

    #[test]
    fn global_cache_keeps_everything() {
        let mut cache = LayerCache::new(Span::Global);
        step(&mut cache, 0, 5);
        assert_eq!(step(&mut cache, 5, 1), (6, 0));
    }
}
