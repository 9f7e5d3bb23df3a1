//! `paged_kv`: a KV cache of fixed-size blocks in one pool, with a block table per sequence.
//!
//! The pool holds `[NB, HK, BS, DH]` keys and the same for values: NB blocks of BS token slots
//! per KV head (one block of one head is `BS·DH` contiguous elements, the unit the attention
//! kernels load). Sequence `b`'s logical slot `j` (absolute position `base + j`) lives in block
//! `tables[b][j / BS]` at slot `j % BS`. Every sequence of a batch holds the same positions (the
//! model steps them together) but owns its blocks, which may sit anywhere in the pool.
//!
//! Appends write only the new tokens ([`PagedKv::append`]: the `kv_write` kernel on CUDA, byte
//! copies on the CPU); [`PagedKv::release_before`] hands whole blocks below a position back to
//! the pool, which is how chunked layers keep only the live chunk; the pool grows by blocks when
//! the free list runs out (global layers), copying the old pool once per growth. It grows by at
//! least a quarter (and 16 blocks), so the copies add up to at most 5× the final pool over a
//! decode, not O(n²), while the capacity overshoots what is held by at most a quarter (doubling
//! would reserve up to twice a 1M-token global layer's 4 GiB).
//!
//! The attention kernels read K/V through the block table (`attention_decode::paged_*`,
//! `attention_prefill::paged_*`); [`PagedKv::gather`] makes the contiguous `[B, HK, S, DH]`
//! tensors the generic attention path and the CPU references use.
//!
//! Block size: [`DEFAULT_BLOCK_SIZE`] = 64 tokens. It is the prefill kernel's key tile, so a
//! tile's rows of one head come from one block; Scout's 8192-token chunk is 128 whole blocks, so
//! a chunked layer frees exactly the previous chunk; one block of one bf16 head is 16 KiB
//! (dh 128), large enough that a table lookup per 64 keys costs nothing and small enough that a
//! sequence wastes at most 63 slots per layer. Any power of two works (tests use 1 to 16).

pub mod cuda;
pub mod reference;
#[cfg(test)]
pub(crate) mod tests;

use cudarc::driver::CudaSlice;
use l4_core::{CpuStorage, DType, Device, Error, Result, Tensor};

const OP: &str = "paged_kv";

/// Token slots per block unless a caller picks another power of two.
pub const DEFAULT_BLOCK_SIZE: usize = 64;

/// The fewest blocks a growing pool adds.
const MIN_GROWTH_BLOCKS: usize = 16;

/// Where the pool's bytes live.
enum Pool {
    Host {
        k: Vec<u8>,
        v: Vec<u8>,
    },
    Device {
        k: Option<CudaSlice<u8>>,
        v: Option<CudaSlice<u8>>,
        /// `[batch, max_blocks]` block ids (a prefix of the buffer), re-uploaded when a block
        /// is added or freed.
        table: Option<CudaSlice<i32>>,
    },
}

/// A paged KV cache for one layer and one batch. See the module docs.
pub struct PagedKv {
    dtype: DType,
    device: Device,
    batch: usize,
    heads_kv: usize,
    head_dim: usize,
    block_size: usize,
    /// Blocks the pool holds.
    capacity: usize,
    /// Free block ids, handed out from the end.
    free: Vec<u32>,
    /// Per sequence, the pool block of each logical block.
    tables: Vec<Vec<u32>>,
    /// Absolute position of logical slot 0.
    base: usize,
    /// Logical slots filled (positions `base..base + len`).
    len: usize,
    pool: Pool,
}

impl std::fmt::Debug for PagedKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PagedKv[b {}, hk {}, dh {}, {} {}, block {}, positions {}..{}, {} of {} blocks in use]",
            self.batch,
            self.heads_kv,
            self.head_dim,
            self.dtype,
            self.device,
            self.block_size,
            self.base,
            self.base + self.len,
            self.capacity - self.free.len(),
            self.capacity
        )
    }
}

/// Where a pool's elements sit, for the kernels that read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLayout {
    /// Elements between blocks (`HK·BS·DH`).
    pub block_stride: usize,
    /// Elements between heads of a block (`BS·DH`).
    pub head_stride: usize,
    /// log2 of the block size.
    pub block_log2: u32,
    /// Columns of the block table.
    pub max_blocks: usize,
    /// KV heads.
    pub heads_kv: usize,
    /// Head width.
    pub head_dim: usize,
}

/// The device buffers of a CUDA pool: keys, values, block table `[batch, max_blocks]`.
#[derive(Debug)]
pub struct DeviceParts<'a> {
    /// Key pool bytes.
    pub k: &'a CudaSlice<u8>,
    /// Value pool bytes.
    pub v: &'a CudaSlice<u8>,
    /// Block table.
    pub table: &'a CudaSlice<i32>,
}

impl PagedKv {
    /// An empty cache for `batch` sequences of `heads_kv` heads of width `head_dim` in `dtype`
    /// (f32, f16 or bf16) on `device`, with `block_size` slots per block (a power of two).
    pub fn new(
        batch: usize,
        heads_kv: usize,
        head_dim: usize,
        block_size: usize,
        dtype: DType,
        device: Device,
    ) -> Result<Self> {
        if !block_size.is_power_of_two() {
            return Err(Error::invalid(
                OP,
                format!("block size {block_size} is not a power of two"),
            ));
        }
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::DTypeMismatch {
                op: OP,
                got: dtype,
                expected: None,
            });
        }
        if batch == 0 || heads_kv == 0 || head_dim == 0 {
            return Err(Error::invalid(
                OP,
                format!("empty cache shape: batch {batch}, kv heads {heads_kv}, head dim {head_dim}"),
            ));
        }
        let pool = match device {
            Device::Cpu => Pool::Host {
                k: Vec::new(),
                v: Vec::new(),
            },
            Device::Cuda(_) => Pool::Device {
                k: None,
                v: None,
                table: None,
            },
        };
        Ok(PagedKv {
            dtype,
            device,
            batch,
            heads_kv,
            head_dim,
            block_size,
            capacity: 0,
            free: Vec::new(),
            tables: vec![Vec::new(); batch],
            base: 0,
            len: 0,
            pool,
        })
    }

    /// Makes a fresh cache hand out its first `order.len()` blocks in this order (a permutation
    /// of `0..order.len()`): tests use shuffled orders to check that nothing depends on where
    /// a sequence's blocks sit.
    pub fn with_block_order(mut self, order: Vec<u32>) -> Result<Self> {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        if self.capacity != 0 || sorted.iter().enumerate().any(|(i, &b)| b as usize != i) {
            return Err(Error::invalid(
                OP,
                "a block order must be a permutation of 0..n given to a fresh cache",
            ));
        }
        self.grow_to(order.len())?;
        self.free = order.into_iter().rev().collect();
        Ok(self)
    }

    /// The element dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the pool lives on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// KV heads.
    pub fn heads_kv(&self) -> usize {
        self.heads_kv
    }

    /// Head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Absolute position of the first slot held (keys before it are gone).
    pub fn base(&self) -> usize {
        self.base
    }

    /// Slots held per sequence (positions `base()..base() + len()`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Blocks each sequence holds.
    pub fn blocks_per_sequence(&self) -> usize {
        self.tables[0].len()
    }

    /// Blocks the pool holds, in use or free.
    pub fn capacity_blocks(&self) -> usize {
        self.capacity
    }

    /// Bytes of keys and values in the blocks the batch holds.
    pub fn bytes_held(&self) -> usize {
        2 * self.batch * self.blocks_per_sequence() * self.block_elems() * self.dtype.size_in_bytes()
    }

    /// Bytes of keys and values the pool has allocated, blocks in use or free.
    pub fn bytes_reserved(&self) -> usize {
        2 * self.capacity * self.block_elems() * self.dtype.size_in_bytes()
    }

    /// The block tables, one row per sequence.
    pub fn tables(&self) -> &[Vec<u32>] {
        &self.tables
    }

    /// Strides and table width for the kernels.
    pub fn layout(&self) -> PoolLayout {
        PoolLayout {
            block_stride: self.block_elems(),
            head_stride: self.block_size * self.head_dim,
            block_log2: self.block_size.trailing_zeros(),
            max_blocks: self.blocks_per_sequence(),
            heads_kv: self.heads_kv,
            head_dim: self.head_dim,
        }
    }

    /// The device buffers, when the pool is on a GPU and holds something.
    pub fn device_parts(&self) -> Option<DeviceParts<'_>> {
        match &self.pool {
            Pool::Device {
                k: Some(k),
                v: Some(v),
                table: Some(table),
            } => Some(DeviceParts { k, v, table }),
            _ => None,
        }
    }

    fn block_elems(&self) -> usize {
        self.heads_kv * self.block_size * self.head_dim
    }

    /// Appends `k, v [batch, hk, t, dh]` (this cache's dtype and device, any strides) at
    /// absolute positions `pos..pos + t`. `pos` must follow the last position held, unless the
    /// cache is empty.
    pub fn append(&mut self, k: &Tensor, v: &Tensor, pos: usize) -> Result<()> {
        let want = [
            self.batch,
            self.heads_kv,
            k.shape().get(2).copied().unwrap_or(0),
            self.head_dim,
        ];
        for (x, which) in [(k, "k"), (v, "v")] {
            if x.shape() != want || x.dtype() != self.dtype || x.device() != self.device {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "`{which}` is {:?} {} on {}; this cache takes {want:?} {} on {}",
                        x.shape(),
                        x.dtype(),
                        x.device(),
                        self.dtype,
                        self.device
                    ),
                ));
            }
        }
        if self.len == 0 {
            self.base = pos;
        } else if pos != self.base + self.len {
            return Err(Error::invalid(
                OP,
                format!(
                    "appending at position {pos}, but the cache ends at {}",
                    self.base + self.len
                ),
            ));
        }
        let t = want[2];
        if t == 0 {
            return Ok(());
        }
        let slot0 = self.len;
        let blocks_needed = (slot0 + t).div_ceil(self.block_size) - self.blocks_per_sequence();
        if blocks_needed > 0 {
            let short = (blocks_needed * self.batch).saturating_sub(self.free.len());
            if short > 0 {
                self.grow_to(self.capacity + short.max(self.capacity / 4).max(MIN_GROWTH_BLOCKS))?;
            }
            for table in &mut self.tables {
                for _ in 0..blocks_needed {
                    table.push(self.free.pop().expect("the pool grew to cover every new block"));
                }
            }
            self.upload_table()?;
        }
        self.len += t;
        let layout = self.layout();
        match &mut self.pool {
            Pool::Host { k: pk, v: pv } => {
                reference::write(pk, &self.tables, layout, k, slot0)?;
                reference::write(pv, &self.tables, layout, v, slot0)?;
            }
            Pool::Device {
                k: Some(pk),
                v: Some(pv),
                table: Some(table),
            } => {
                cuda::write(pk, table, layout, k, slot0)?;
                cuda::write(pv, table, layout, v, slot0)?;
            }
            Pool::Device { .. } => return Err(Error::invalid(OP, "internal: a device pool without buffers")),
        }
        Ok(())
    }

    /// Hands back to the pool every block whose slots all lie before absolute position `pos`;
    /// everything goes when `pos` is at or past the end.
    pub fn release_before(&mut self, pos: usize) -> Result<()> {
        if self.len == 0 || pos <= self.base {
            return Ok(());
        }
        let end = self.base + self.len;
        let whole = if pos >= end {
            self.blocks_per_sequence()
        } else {
            (pos - self.base) / self.block_size
        };
        if whole == 0 {
            return Ok(());
        }
        for table in &mut self.tables {
            // Freed in reverse, so the next blocks handed out are the oldest ones freed.
            self.free.extend(table.drain(..whole).rev());
        }
        if pos >= end {
            self.base = pos;
            self.len = 0;
        } else {
            self.base += whole * self.block_size;
            self.len -= whole * self.block_size;
        }
        self.upload_table()
    }

    /// Keys and values `[batch, hk, len, dh]` of positions `base()..base() + len()`, contiguous,
    /// in block-table order.
    pub fn gather(&self) -> Result<(Tensor, Tensor)> {
        let shape = [self.batch, self.heads_kv, self.len, self.head_dim];
        let layout = self.layout();
        match &self.pool {
            Pool::Host { k, v } => {
                let make = |pool: &[u8]| -> Result<Tensor> {
                    let bytes = reference::gather(pool, &self.tables, layout, self.dtype, &shape);
                    Tensor::from_cpu_storage(CpuStorage::from_le_bytes(self.dtype, &bytes)?, &shape)
                };
                Ok((make(k)?, make(v)?))
            }
            Pool::Device { .. } if self.len == 0 => {
                let empty = Tensor::zeros(&shape, self.dtype, Device::Cpu)?.to_device(self.device)?;
                Ok((empty.clone(), empty))
            }
            Pool::Device {
                k: Some(k),
                v: Some(v),
                table: Some(table),
            } => Ok((
                cuda::gather(k, table, layout, self.dtype, self.device, &shape)?,
                cuda::gather(v, table, layout, self.dtype, self.device, &shape)?,
            )),
            Pool::Device { .. } => Err(Error::invalid(OP, "internal: a device pool without buffers")),
        }
    }

    /// Grows the pool to `blocks` blocks (the new ones free, handed out lowest first).
    fn grow_to(&mut self, blocks: usize) -> Result<()> {
        if blocks <= self.capacity {
            return Ok(());
        }
        if blocks > i32::MAX as usize {
            return Err(Error::invalid(OP, format!("{blocks} blocks exceed 32-bit block ids")));
        }
        let bytes = blocks * self.block_elems() * self.dtype.size_in_bytes();
        match &mut self.pool {
            Pool::Host { k, v } => {
                k.resize(bytes, 0);
                v.resize(bytes, 0);
            }
            Pool::Device { k, v, .. } => {
                *k = Some(cuda::grown(k.take(), bytes, self.device)?);
                *v = Some(cuda::grown(v.take(), bytes, self.device)?);
            }
        }
        let fresh: Vec<u32> = (self.capacity as u32..blocks as u32).rev().collect();
        // New blocks go under the already free ones: those are handed out first.
        self.free.splice(0..0, fresh);
        self.capacity = blocks;
        Ok(())
    }

    /// Copies the tables to the device (a few bytes per block; only when they change, into the
    /// same buffer while it is large enough).
    fn upload_table(&mut self) -> Result<()> {
        let rows: Vec<i32> = self.tables.iter().flatten().map(|&b| b as i32).collect();
        if let Pool::Device { table, .. } = &mut self.pool {
            *table = cuda::upload_table(table.take(), &rows, self.device)?;
        }
        Ok(())
    }
}
