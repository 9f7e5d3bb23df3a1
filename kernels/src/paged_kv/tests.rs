//! `paged_kv` on every device: appends in random pieces into pools handing out blocks in a
//! shuffled order read back equal (bit for bit) to the concatenated pieces; releases free whole
//! blocks only and keep the positions that are still needed; bad input is an error.

use l4_core::testing::test_devices;
use l4_core::{DType, Device, Tensor};

use super::PagedKv;
use crate::testing::{Rng, fresh_seed, nvrtc_or_skip};
use crate::{PAGED_KV, compile_cubin, ops};

fn random(shape: &[usize], dtype: DType, rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| ((rng.next() >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
        .collect();
    Tensor::from_vec(values, shape, Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// A cache holding `k, v [b, hk, s, dh]` at positions `start..start + s`, appended in random
/// pieces into blocks of `block` slots handed out in a shuffled order (for the attention tests).
pub(crate) fn paged_from(k: &Tensor, v: &Tensor, start: usize, block: usize, rng: &mut Rng) -> PagedKv {
    let [b, hk, s, dh] = k.shape()[..] else {
        panic!("k must be 4-D")
    };
    let blocks = b * s.div_ceil(block);
    let mut cache = PagedKv::new(b, hk, dh, block, k.dtype(), k.device())
        .unwrap()
        .with_block_order(shuffled(blocks, rng))
        .unwrap();
    let mut done = 0;
    while done < s {
        let t = (1 + rng.below(2 * block + 1)).min(s - done);
        let piece = |x: &Tensor| x.narrow(2, done, t).unwrap();
        cache.append(&piece(k), &piece(v), start + done).unwrap();
        done += t;
    }
    cache
}

pub(crate) fn shuffled(n: usize, rng: &mut Rng) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

pub(crate) fn devices(test: &str) -> Vec<Device> {
    test_devices()
        .into_iter()
        .filter(|d| !d.is_cuda() || nvrtc_or_skip(test))
        .collect()
}

pub(crate) fn bits(t: &Tensor) -> Vec<u8> {
    t.to_device(Device::Cpu)
        .unwrap()
        .cpu_storage("test")
        .unwrap()
        .gather(t.layout())
        .to_le_bytes()
}

#[test]
fn shuffled_pools_read_back_what_was_appended() {
    let seed = fresh_seed();
    let mut rng = Rng(seed);
    for device in devices("shuffled_pools_read_back_what_was_appended") {
        for case in 0..8 {
            let (b, hk, dh) = (1 + rng.below(3), 1 + rng.below(3), [1, 8, 40, 128][case % 4]);
            let block = [1, 2, 4, 16][rng.below(4)];
            let dtype = [DType::F32, DType::BF16, DType::F16][case % 3];
            let pieces: Vec<usize> = (0..1 + rng.below(5)).map(|_| 1 + rng.below(2 * block + 3)).collect();
            let total: usize = pieces.iter().sum();
            // Fewer blocks than needed up front, so the pool also grows while in use.
            let reserved = b * total.div_ceil(block) / 2;
            let mut cache = PagedKv::new(b, hk, dh, block, dtype, device)
                .unwrap()
                .with_block_order(shuffled(reserved, &mut rng))
                .unwrap();
            let start = rng.below(50);
            let (mut ks, mut vs) = (Vec::new(), Vec::new());
            let mut pos = start;
            for &t in &pieces {
                let k = random(&[b, hk, t, dh], dtype, &mut rng);
                let v = random(&[b, hk, t, dh], dtype, &mut rng);
                cache
                    .append(&k.to_device(device).unwrap(), &v.to_device(device).unwrap(), pos)
                    .unwrap();
                pos += t;
                ks.push(k);
                vs.push(v);
            }
            let want_k = ops::cat(&ks.iter().collect::<Vec<_>>(), 2).unwrap();
            let want_v = ops::cat(&vs.iter().collect::<Vec<_>>(), 2).unwrap();
            let (k, v) = cache.gather().unwrap();
            let context = format!("seed {seed}, case {case}, {device}, b {b} hk {hk} dh {dh} block {block} {pieces:?}");
            assert_eq!((cache.base(), cache.len()), (start, total), "{context}");
            assert_eq!(k.shape(), want_k.shape(), "{context}");
            assert!(bits(&k) == bits(&want_k), "keys differ: {context}");
            assert!(bits(&v) == bits(&want_v), "values differ: {context}");
            assert_eq!(cache.blocks_per_sequence(), total.div_ceil(block), "{context}");
            // Every sequence owns distinct blocks.
            let mut used: Vec<u32> = cache.tables().iter().flatten().copied().collect();
            used.sort_unstable();
            used.dedup();
            assert_eq!(used.len(), b * cache.blocks_per_sequence(), "{context}");
        }
    }
}

#[test]
fn releases_free_whole_blocks_and_keep_later_positions() {
    for device in devices("releases_free_whole_blocks_and_keep_later_positions") {
        let mut rng = Rng(11);
        let (b, hk, dh, block) = (2, 1, 4, 4);
        let mut cache = PagedKv::new(b, hk, dh, block, DType::F32, device).unwrap();
        let k = random(&[b, hk, 10, dh], DType::F32, &mut rng)
            .to_device(device)
            .unwrap();
        cache.append(&k, &k, 0).unwrap(); // positions 0..10 in 3 blocks
        assert_eq!(cache.blocks_per_sequence(), 3);
        cache.release_before(3).unwrap(); // block 0 still holds position 3
        assert_eq!((cache.base(), cache.len(), cache.blocks_per_sequence()), (0, 10, 3));
        cache.release_before(8).unwrap(); // blocks of 0..4 and 4..8 go
        assert_eq!((cache.base(), cache.len(), cache.blocks_per_sequence()), (8, 2, 1));
        let (kept, _) = cache.gather().unwrap();
        assert!(bits(&kept) == bits(&k.narrow(2, 8, 2).unwrap()), "{device}");
        let capacity = cache.capacity_blocks();
        // The freed blocks are reused: appending two more blocks' worth does not grow the pool.
        let more = random(&[b, hk, 8, dh], DType::F32, &mut rng).to_device(device).unwrap();
        cache.append(&more, &more, 10).unwrap();
        assert_eq!(cache.capacity_blocks(), capacity, "{device}");
        cache.release_before(100).unwrap();
        assert!(cache.is_empty());
        assert_eq!(cache.blocks_per_sequence(), 0);
        let next = random(&[b, hk, 1, dh], DType::F32, &mut rng).to_device(device).unwrap();
        cache.append(&next, &next, 100).unwrap();
        assert_eq!((cache.base(), cache.len()), (100, 1));
    }
}

#[test]
fn bad_input_is_an_error() {
    assert!(PagedKv::new(1, 1, 4, 3, DType::F32, Device::Cpu).is_err(), "block 3");
    assert!(PagedKv::new(1, 1, 4, 4, DType::I32, Device::Cpu).is_err(), "i32");
    let fresh = || PagedKv::new(1, 1, 4, 4, DType::F32, Device::Cpu).unwrap();
    assert!(fresh().with_block_order(vec![0, 2]).is_err(), "not a permutation");
    let mut cache = fresh();
    let k = Tensor::zeros(&[1, 1, 2, 4], DType::F32, Device::Cpu).unwrap();
    cache.append(&k, &k, 5).unwrap();
    assert!(cache.append(&k, &k, 8).is_err(), "a gap");
    let wide = Tensor::zeros(&[1, 1, 2, 5], DType::F32, Device::Cpu).unwrap();
    assert!(cache.append(&wide, &wide, 7).is_err(), "head width");
    let half = k.to_dtype(DType::BF16).unwrap();
    assert!(cache.append(&half, &half, 7).is_err(), "dtype");
}

#[test]
fn compiles_for_every_declared_arch_without_spills() {
    if !nvrtc_or_skip("compiles_for_every_declared_arch_without_spills") {
        return;
    }
    for arch in PAGED_KV.archs {
        let compiled = compile_cubin(&PAGED_KV, arch, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.spill_bytes(), 0, "{}", compiled.log);
    }
}

/// A growing pool reserves at most a quarter (or 16 blocks) more than it holds.
#[test]
fn growth_overshoots_by_at_most_a_quarter() {
    let mut cache = PagedKv::new(1, 1, 2, 1, DType::F32, Device::Cpu).unwrap();
    let k = Tensor::zeros(&[1, 1, 1, 2], DType::F32, Device::Cpu).unwrap();
    let mut growths = 0;
    for pos in 0..3000 {
        let before = cache.capacity_blocks();
        cache.append(&k, &k, pos).unwrap();
        growths += usize::from(cache.capacity_blocks() != before);
        let held = cache.blocks_per_sequence();
        assert!(
            cache.capacity_blocks() <= (held + held / 4).max(held + 16),
            "{held} held, {} reserved",
            cache.capacity_blocks()
        );
    }
    // Geometric growth: a few dozen copies of the pool, not one per block.
    assert!(growths < 30, "{growths} growths over 3000 blocks");
}
