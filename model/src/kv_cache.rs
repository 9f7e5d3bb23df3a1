//! The KV cache: per layer, a paged pool of fixed-size blocks (`l4_kernels::paged_kv`) with a
//! block table per sequence, and HF's semantics for chunked layers.
//!
//! A step writes only its own keys and values into the pool (no copy of the cached ones).
//! Global layers keep every key and grow by blocks. Chunked layers keep only the chunk that the
//! step's first token falls in: a query at offset r of its chunk needs exactly the r keys
//! before it in the same chunk, so the blocks of older chunks go back to the pool as soon as a
//! step crosses into a new chunk.
//!
//! Block size: 64 tokens ([`DEFAULT_BLOCK_SIZE`], the prefill kernel's key tile; Scout's
//! 8192-token chunk is 128 blocks) for global layers; for a chunked layer the largest power of
//! two up to 64 that divides the chunk, so that a chunk is whole blocks and freeing the previous
//! chunk frees all of it (a chunked layer then holds at most `chunk` tokens of blocks).

use l4_core::{Result, Tensor};
use l4_kernels::paged_kv::{DEFAULT_BLOCK_SIZE, PagedKv};

use crate::spec::Span;

/// The block size a layer with this span uses (see the module docs).
pub fn block_size_for(span: Span) -> usize {
    match span {
        Span::Global => DEFAULT_BLOCK_SIZE,
        Span::Chunked(chunk) => 1 << chunk.trailing_zeros().min(DEFAULT_BLOCK_SIZE.trailing_zeros()),
    }
}

/// One layer's cached keys and values.
#[derive(Debug)]
pub struct LayerCache {
    span: Span,
    block_size: usize,
    /// Made on the first append, when batch, heads, width, dtype and device are known.
    paged: Option<PagedKv>,
}

impl LayerCache {
    /// An empty cache for a layer with this span.
    pub fn new(span: Span) -> Self {
        Self::with_block_size(span, block_size_for(span))
    }

    /// An empty cache with `block_size` slots per block (a power of two).
    pub fn with_block_size(span: Span, block_size: usize) -> Self {
        LayerCache {
            span,
            block_size,
            paged: None,
        }
    }

    /// Keys held per sequence (the live chunk and, when the chunk is not whole blocks, the
    /// tail of the previous chunk sharing its first block).
    pub fn len(&self) -> usize {
        self.paged.as_ref().map_or(0, PagedKv::len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The paged pool (after the first append).
    pub fn paged(&self) -> Option<&PagedKv> {
        self.paged.as_ref()
    }

    /// Bytes of keys and values in the blocks held.
    pub fn bytes_held(&self) -> usize {
        self.paged.as_ref().map_or(0, PagedKv::bytes_held)
    }

    /// The first position a query at `pos` or later can see: its chunk's start, or 0.
    fn first_needed(&self, pos: usize) -> usize {
        match self.span {
            Span::Global => 0,
            Span::Chunked(chunk) => pos / chunk * chunk,
        }
    }

    /// Appends this step's `k, v [b, hk, t, dh]` at absolute positions `pos..pos+t`, after
    /// handing back the blocks no query of this step can see.
    pub fn append(&mut self, k: &Tensor, v: &Tensor, pos: usize) -> Result<()> {
        let first = self.first_needed(pos);
        let paged = match &mut self.paged {
            Some(paged) => paged,
            slot => {
                let [b, hk, _, dh] = k.shape()[..] else {
                    return Err(l4_core::Error::BadShape {
                        op: "kv_cache",
                        shape: k.shape().to_vec(),
                        msg: "keys must be [batch, kv heads, tokens, head dim]".into(),
                    });
                };
                slot.insert(PagedKv::new(b, hk, dh, self.block_size, k.dtype(), k.device())?)
            }
        };
        paged.release_before(first)?;
        paged.append(k, v, pos)
    }

    /// After a step ending before position `next`: hands back the blocks no later query can
    /// see (chunked layers), so the cache holds only the live chunk between steps.
    pub fn finish_step(&mut self, next: usize) -> Result<()> {
        let first = self.first_needed(next);
        match &mut self.paged {
            Some(paged) => paged.release_before(first),
            None => Ok(()),
        }
    }

    /// Bytes the layer's pool has allocated (blocks in use or free).
    pub fn bytes_reserved(&self) -> usize {
        self.paged.as_ref().map_or(0, PagedKv::bytes_reserved)
    }

    /// Every held key and value `[b, hk, s, dh]`, contiguous, with the position of the first
    /// (for the generic attention path).
    pub fn keys_and_values(&self) -> Result<Option<(Tensor, Tensor, usize)>> {
        match &self.paged {
            Some(paged) if !paged.is_empty() => {
                let (k, v) = paged.gather()?;
                Ok(Some((k, v, paged.base())))
            }
            _ => Ok(None),
        }
    }
}

/// The cache of every layer, plus the number of positions already processed.
#[derive(Debug)]
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

    /// Layer `i`'s cache.
    pub fn layer(&self, i: usize) -> &LayerCache {
        &self.layers[i]
    }

    /// Records that `t` more tokens were processed.
    pub fn advance(&mut self, t: usize) {
        self.position += t;
    }

    /// Keys held per layer (for memory reports and tests).
    pub fn lengths(&self) -> Vec<usize> {
        self.layers.iter().map(LayerCache::len).collect()
    }

    /// Bytes of keys and values held per layer, in whole blocks.
    pub fn bytes_per_layer(&self) -> Vec<usize> {
        self.layers.iter().map(LayerCache::bytes_held).collect()
    }

    /// Bytes each layer's pool has allocated, blocks in use or free.
    pub fn bytes_reserved_per_layer(&self) -> Vec<usize> {
        self.layers.iter().map(LayerCache::bytes_reserved).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use l4_core::{DType, Device};

    fn step(cache: &mut LayerCache, pos: usize, t: usize) -> (usize, usize) {
        let k = Tensor::zeros(&[1, 1, t, 2], DType::F32, Device::Cpu).unwrap();
        cache.append(&k, &k, pos).unwrap();
        let (keys, _, start) = cache.keys_and_values().unwrap().unwrap();
        cache.finish_step(pos + t).unwrap();
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

    #[test]
    fn chunks_are_whole_blocks() {
        assert_eq!(block_size_for(Span::Global), 64);
        assert_eq!(block_size_for(Span::Chunked(8192)), 64);
        assert_eq!(block_size_for(Span::Chunked(8)), 8);
        assert_eq!(block_size_for(Span::Chunked(24)), 8);
        assert_eq!(block_size_for(Span::Chunked(7)), 1);
    }

    /// Over a long decode a chunked layer never holds more than a chunk of blocks, and the pool
    /// stops growing once it covers one chunk: freed blocks are reused.
    #[test]
    fn chunked_layers_hold_at_most_a_chunk_of_blocks() {
        let (chunk, block) = (32, 8);
        let mut cache = LayerCache::with_block_size(Span::Chunked(chunk), block);
        step(&mut cache, 0, 45);
        let mut pos = 45;
        let mut capacity = 0;
        while pos < 300 {
            step(&mut cache, pos, 1);
            pos += 1;
            let paged = cache.paged().unwrap();
            assert!(paged.blocks_per_sequence() * block <= chunk, "position {pos}");
            assert_eq!(cache.len(), pos - pos / chunk * chunk, "position {pos}");
            if pos > 100 {
                assert_eq!(paged.capacity_blocks(), capacity, "the pool grew at {pos}");
            }
            capacity = paged.capacity_blocks();
        }
    }
}
