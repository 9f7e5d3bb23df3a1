//! Property tests of strided views (permute, transpose, narrow, broadcast, reshape, contiguous,
//! storage_indices) against an independent model: the list of base-element indices a view
//! selects, computed by plain multi-index arithmetic.

use l4_core::layout::{broadcast_shape, contiguous_strides};
use l4_core::{DType, Device, Error, Layout, Tensor};
use proptest::prelude::*;
use proptest::sample::Index;

// ---- The independent model ----------------------------------------------------------------

/// Row-major multi-index of flat position `flat` in `shape`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        index[d] = flat % shape[d];
        flat /= shape[d];
    }
    index
}

/// Row-major flat position of a multi-index.
fn ravel(index: &[usize], shape: &[usize]) -> usize {
    index.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
}

fn count(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A view as the base-element index of each of its elements, in row-major order.
#[derive(Clone, Debug, PartialEq)]
struct Model {
    shape: Vec<usize>,
    base: Vec<usize>,
}

impl Model {
    fn contiguous(shape: &[usize]) -> Model {
        Model {
            shape: shape.to_vec(),
            base: (0..count(shape)).collect(),
        }
    }

    /// Builds a view whose element at multi-index `i` is this view's element at `source(i)`.
    fn remap(&self, shape: Vec<usize>, source: impl Fn(&[usize]) -> Vec<usize>) -> Model {
        let base = (0..count(&shape))
            .map(|flat| self.base[ravel(&source(&unravel(flat, &shape)), &self.shape)])
            .collect();
        Model { shape, base }
    }

    fn permute(&self, dims: &[usize]) -> Model {
        let shape = dims.iter().map(|&d| self.shape[d]).collect();
        self.remap(shape, |i| {
            let mut j = vec![0; dims.len()];
            for (k, &d) in dims.iter().enumerate() {
                j[d] = i[k];
            }
            j
        })
    }

    fn narrow(&self, dim: usize, start: usize, len: usize) -> Model {
        let mut shape = self.shape.clone();
        shape[dim] = len;
        self.remap(shape, |i| {
            let mut j = i.to_vec();
            j[dim] += start;
            j
        })
    }

    fn broadcast(&self, target: &[usize]) -> Model {
        let lead = target.len() - self.shape.len();
        let src = self.shape.clone();
        self.remap(target.to_vec(), |i| {
            (0..src.len())
                .map(|k| if src[k] == 1 { 0 } else { i[lead + k] })
                .collect()
        })
    }
}

/// NumPy's broadcasting rule, written out independently.
fn numpy_broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (a, b) = (pad(a), pad(b));
    a.iter()
        .zip(&b)
        .map(|(&x, &y)| match (x, y) {
            _ if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

// ---- Strategies -----------------------------------------------------------------------------

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 3 => Just(1usize), 6 => 2usize..=6]
}

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(dim(), 0..=5)
}

fn nonempty_rank_shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(dim(), 1..=5)
}

/// Distinct-ish pseudo-random values from a seed (xorshift64*), exact in f32 and f64.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ((r >> 40) as i32 - (1 << 23)) as f32 / 64.0
        })
        .collect()
}

fn base_tensor(shape: &[usize], seed: u64) -> (Tensor, Vec<f32>) {
    let data = values(seed, count(shape));
    (Tensor::from_slice(&data, shape, Device::Cpu).unwrap(), data)
}

fn expected_values(model: &Model, data: &[f32]) -> Vec<f64> {
    model.base.iter().map(|&i| f64::from(data[i])).collect()
}

/// A random permutation of `0..rank` from a seed (Fisher–Yates).
fn permutation(rank: usize, seed: u64) -> Vec<usize> {
    let mut dims: Vec<usize> = (0..rank).collect();
    let mut state = seed | 1;
    for i in (1..rank).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        dims.swap(i, (state >> 33) as usize % (i + 1));
    }
    dims
}

fn inverse(dims: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; dims.len()];
    for (k, &d) in dims.iter().enumerate() {
        inv[d] = k;
    }
    inv
}

/// One view operation; its parameters are resolved against the current shape when applied.
#[derive(Clone, Debug)]
enum Op {
    Permute(u64),
    Transpose(Index, Index),
    Narrow(Index, Index, Index),
    /// New leading dimensions, and sizes to stretch existing size-1 dimensions to.
    Broadcast(Vec<usize>, Vec<Option<usize>>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u64>().prop_map(Op::Permute),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Op::Transpose(a, b)),
        (any::<Index>(), any::<Index>(), any::<Index>()).prop_map(|(d, s, l)| Op::Narrow(d, s, l)),
        (
            prop::collection::vec(dim(), 0..=2),
            prop::collection::vec(prop::option::of(dim()), 0..=5)
        )
            .prop_map(|(lead, stretch)| Op::Broadcast(lead, stretch)),
    ]
}

/// Applies `op` to both the tensor and the model (skipping ops that do not apply).
fn apply(op: &Op, t: &Tensor, m: &Model) -> (Tensor, Model) {
    let rank = m.shape.len();
    match op {
        Op::Permute(seed) => {
            let dims = permutation(rank, *seed);
            (t.permute(&dims).unwrap(), m.permute(&dims))
        }
        Op::Transpose(a, b) if rank > 0 => {
            let (a, b) = (a.index(rank), b.index(rank));
            let mut dims: Vec<usize> = (0..rank).collect();
            dims.swap(a, b);
            (t.transpose(a, b).unwrap(), m.permute(&dims))
        }
        Op::Narrow(d, s, l) if rank > 0 => {
            let dim = d.index(rank);
            let start = s.index(m.shape[dim] + 1);
            let len = l.index(m.shape[dim] - start + 1);
            (t.narrow(dim, start, len).unwrap(), m.narrow(dim, start, len))
        }
        Op::Broadcast(lead, stretch) => {
            let mut target = lead.clone();
            target.extend(m.shape.iter().enumerate().map(|(k, &d)| match stretch.get(k) {
                Some(Some(s)) if d == 1 => *s,
                _ => d,
            }));
            if count(&target) > 20_000 || target.len() > 8 {
                return (t.clone(), m.clone());
            }
            (t.broadcast_as(&target).unwrap(), m.broadcast(&target))
        }
        _ => (t.clone(), m.clone()),
    }
}

fn view_strategy() -> impl Strategy<Value = (Vec<usize>, u64, Vec<Op>)> {
    (shape(), any::<u64>(), prop::collection::vec(op(), 0..=4))
}

/// Applies `ops` to a contiguous tensor and to its model.
fn apply_all(base: Tensor, ops: &[Op]) -> (Tensor, Model) {
    let mut m = Model::contiguous(base.shape());
    let mut t = base;
    for op in ops {
        (t, m) = apply(op, &t, &m);
    }
    (t, m)
}

fn build_view(shape: &[usize], seed: u64, ops: &[Op]) -> (Tensor, Model, Vec<f32>) {
    let (base, data) = base_tensor(shape, seed);
    let (t, m) = apply_all(base, ops);
    (t, m, data)
}

// ---- Properties -----------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn permute_then_inverse_permute_is_the_identity(shape in shape(), seed in any::<u64>(), p in any::<u64>()) {
        let (t, data) = base_tensor(&shape, seed);
        let dims = permutation(shape.len(), p);
        let there = t.permute(&dims).unwrap();
        let expected_shape: Vec<usize> = dims.iter().map(|&d| shape[d]).collect();
        prop_assert_eq!(there.shape(), expected_shape.as_slice());
        let back = there.permute(&inverse(&dims)).unwrap();
        prop_assert_eq!(back.shape(), shape.as_slice());
        prop_assert_eq!(back.layout(), t.layout());
        let data64: Vec<f64> = data.iter().map(|&v| f64::from(v)).collect();
        prop_assert_eq!(back.to_f64_vec().unwrap(), data64);
        // The permuted view holds what index arithmetic says.
        let model = Model::contiguous(&shape).permute(&dims);
        prop_assert_eq!(there.to_f64_vec().unwrap(), expected_values(&model, &data));
    }

    #[test]
    fn narrow_of_narrow_is_one_narrow(
        shape in nonempty_rank_shape(),
        seed in any::<u64>(),
        (d, s1, l1, s2, l2) in (any::<Index>(), any::<Index>(), any::<Index>(), any::<Index>(), any::<Index>()),
    ) {
        let (t, data) = base_tensor(&shape, seed);
        let dim = d.index(shape.len());
        let start1 = s1.index(shape[dim] + 1);
        let len1 = l1.index(shape[dim] - start1 + 1);
        let start2 = s2.index(len1 + 1);
        let len2 = l2.index(len1 - start2 + 1);
        let twice = t.narrow(dim, start1, len1).unwrap().narrow(dim, start2, len2).unwrap();
        let once = t.narrow(dim, start1 + start2, len2).unwrap();
        prop_assert_eq!(twice.shape(), once.shape());
        prop_assert_eq!(twice.layout().strides(), once.layout().strides());
        let values = once.to_f64_vec().unwrap();
        prop_assert_eq!(twice.to_f64_vec().unwrap(), values.clone());
        let model = Model::contiguous(&shape).narrow(dim, start1 + start2, len2);
        prop_assert_eq!(values, expected_values(&model, &data));
        // Past the end is an error, whatever the start.
        prop_assert!(t.narrow(dim, start1, shape[dim] - start1 + 1).is_err());
    }

    #[test]
    fn views_hold_what_index_arithmetic_says((shape, seed, ops) in view_strategy()) {
        let (view, model, data) = build_view(&shape, seed, &ops);
        prop_assert_eq!(view.shape(), model.shape.as_slice());
        let expected = expected_values(&model, &data);
        prop_assert_eq!(view.to_f64_vec().unwrap(), expected.clone());
        let dense = view.contiguous().unwrap();
        prop_assert!(dense.is_contiguous());
        prop_assert_eq!(dense.shape(), model.shape.as_slice());
        prop_assert_eq!(dense.to_f64_vec().unwrap(), expected.clone());
        prop_assert_eq!(dense.to_vec::<f32>().unwrap(), model.base.iter().map(|&i| data[i]).collect::<Vec<_>>());
        // Other dtypes gather the same way.
        let ints = Tensor::from_slice(&(0..count(&shape) as i64).collect::<Vec<_>>(), &shape, Device::Cpu).unwrap();
        let (int_view, int_model) = apply_all(ints, &ops);
        let want: Vec<i64> = int_model.base.iter().map(|&i| i as i64).collect();
        prop_assert_eq!(int_view.contiguous().unwrap().to_vec::<i64>().unwrap(), want);
    }

    #[test]
    fn storage_indices_match_naive_enumeration((shape, seed, ops) in view_strategy()) {
        let (view, model, _) = build_view(&shape, seed, &ops);
        let layout = view.layout();
        // The base is contiguous from 0, so a view's storage index is its base index.
        let indices: Vec<usize> = layout.storage_indices().collect();
        prop_assert_eq!(&indices, &model.base);
        prop_assert_eq!(layout.storage_indices().len(), layout.elem_count());
        // Naive: offset + Σ index·stride over all multi-indices in row-major order.
        let naive: Vec<usize> = (0..layout.elem_count())
            .map(|flat| {
                let idx = unravel(flat, layout.shape());
                layout.offset() + idx.iter().zip(layout.strides()).map(|(i, s)| i * s).sum::<usize>()
            })
            .collect();
        prop_assert_eq!(&indices, &naive);
        let extent = indices.iter().max().map_or(0, |m| m + 1);
        prop_assert_eq!(layout.storage_extent(), extent);
        // is_contiguous means exactly "consecutive storage from the offset" for non-empty views.
        if !indices.is_empty() {
            let consecutive = indices.iter().enumerate().all(|(k, &i)| i == layout.offset() + k);
            prop_assert_eq!(layout.is_contiguous(), consecutive, "{:?}", layout);
        }
    }

    #[test]
    fn reshape_preserves_row_major_order_and_needs_contiguity((shape, seed, ops) in view_strategy(), split in any::<Index>()) {
        let (view, model, data) = build_view(&shape, seed, &ops);
        let n = count(&model.shape);
        let expected = expected_values(&model, &data);
        let mut reversed = model.shape.clone();
        reversed.reverse();
        let k = split.index(model.shape.len() + 1);
        let grouped = vec![count(&model.shape[..k]), count(&model.shape[k..])];
        for target in [vec![n], reversed, grouped, vec![1, n, 1]] {
            match view.reshape(&target) {
                Ok(r) => {
                    prop_assert!(view.is_contiguous());
                    prop_assert_eq!(r.shape(), target.as_slice());
                    prop_assert!(r.is_contiguous());
                    prop_assert_eq!(r.to_f64_vec().unwrap(), expected.clone());
                }
                Err(e) => {
                    prop_assert!(!view.is_contiguous(), "contiguous view refused: {e}");
                    let is_bad_shape = matches!(e, Error::BadShape { .. });
                    prop_assert!(is_bad_shape, "{e:?}");
                    // After contiguous() it works and keeps the order.
                    let r = view.contiguous().unwrap().reshape(&target).unwrap();
                    prop_assert_eq!(r.to_f64_vec().unwrap(), expected.clone());
                }
            }
        }
        // A different element count is always a shape mismatch.
        let wrong = view.reshape(&[n + 1]);
        prop_assert!(matches!(wrong, Err(Error::ShapeMismatch { .. })), "{wrong:?}");
    }

    #[test]
    fn broadcast_shape_follows_numpy(a in shape(), b in shape()) {
        let ours = broadcast_shape("test", &a, &b).ok();
        prop_assert_eq!(ours, numpy_broadcast(&a, &b));
    }

    #[test]
    fn broadcast_as_follows_numpy(
        src in shape(),
        lead in prop::collection::vec(dim(), 0..=2),
        changes in prop::collection::vec(prop::option::of(0usize..=6), 0..=5),
        seed in any::<u64>(),
    ) {
        // A target built from the source: new leading dims, some dims replaced at random.
        let mut target = lead;
        target.extend(src.iter().enumerate().map(|(k, &d)| changes.get(k).copied().flatten().unwrap_or(d)));
        let (t, data) = base_tensor(&src, seed);
        let compatible = numpy_broadcast(&src, &target).as_deref() == Some(target.as_slice());
        match t.broadcast_as(&target) {
            Ok(b) => {
                prop_assert!(compatible, "{src:?} -> {target:?} accepted");
                prop_assert_eq!(b.shape(), target.as_slice());
                let model = Model::contiguous(&src).broadcast(&target);
                prop_assert_eq!(b.to_f64_vec().unwrap(), expected_values(&model, &data));
            }
            Err(e) => {
                prop_assert!(!compatible, "{src:?} -> {target:?} refused: {e}");
                let is_mismatch = matches!(e, Error::ShapeMismatch { .. });
                prop_assert!(is_mismatch, "{e:?}");
            }
        }
        // Broadcasting to a lower rank is never possible.
        if !src.is_empty() {
            prop_assert!(t.broadcast_as(&src[1..]).is_err());
        }
    }

    #[test]
    fn bad_arguments_are_errors_not_panics(
        shape in shape(),
        dim in 0usize..8,
        other in 0usize..8,
        start in prop_oneof![0usize..10, Just(usize::MAX), Just(usize::MAX / 2)],
        len in prop_oneof![0usize..10, Just(usize::MAX)],
        dims in prop::collection::vec(0usize..7, 0..7),
        target in shape(),
    ) {
        let layout = Layout::contiguous(&shape);
        let rank = shape.len();

        let narrowed = layout.narrow(dim, start, len);
        let fits = dim < rank && start.checked_add(len).is_some_and(|end| end <= shape[dim]);
        prop_assert_eq!(narrowed.is_ok(), fits, "narrow({}, {}, {}) of {:?}", dim, start, len, shape);
        if let Ok(n) = narrowed {
            prop_assert_eq!(n.shape()[dim], len);
        }

        let mut sorted = dims.clone();
        sorted.sort_unstable();
        let is_perm = sorted == (0..rank).collect::<Vec<_>>();
        prop_assert_eq!(layout.permute(&dims).is_ok(), is_perm, "permute({:?}) of {:?}", dims, shape);
        prop_assert_eq!(layout.transpose(dim, other).is_ok(), dim < rank && other < rank);

        let compatible = numpy_broadcast(&shape, &target).as_deref() == Some(target.as_slice());
        prop_assert_eq!(layout.broadcast_as(&target).is_ok(), compatible);
        prop_assert_eq!(layout.reshape(&target).is_ok(), count(&target) == count(&shape));

        let t = Tensor::zeros(&shape, DType::BF16, Device::Cpu).unwrap();
        prop_assert_eq!(t.unsqueeze(dim).is_ok(), dim <= rank);
        prop_assert_eq!(t.squeeze(dim).is_ok(), dim < rank && shape[dim] == 1);
        prop_assert_eq!(t.dim(dim).is_ok(), dim < rank);
        if let Ok(u) = t.unsqueeze(dim) {
            let squeezed = u.squeeze(dim).unwrap();
            prop_assert_eq!(squeezed.shape(), shape.as_slice());
        }
    }
}

#[test]
fn specific_bad_arguments_are_reported() {
    let t = Tensor::arange(12, DType::F32, Device::Cpu)
        .unwrap()
        .reshape(&[3, 4])
        .unwrap();
    assert!(matches!(t.narrow(1, 3, 2), Err(Error::BadShape { .. })));
    assert!(matches!(t.narrow(1, usize::MAX, 2), Err(Error::BadShape { .. })));
    assert!(matches!(
        t.narrow(2, 0, 1),
        Err(Error::DimOutOfRange { dim: 2, rank: 2, .. })
    ));
    assert!(matches!(t.permute(&[0, 0]), Err(Error::BadShape { .. })));
    assert!(matches!(t.permute(&[0]), Err(Error::BadShape { .. })));
    assert!(matches!(t.permute(&[0, 2]), Err(Error::BadShape { .. })));
    assert!(matches!(t.transpose(0, 5), Err(Error::DimOutOfRange { .. })));
    assert!(matches!(t.broadcast_as(&[4]), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(t.broadcast_as(&[2, 3, 5]), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(t.reshape(&[5, 2]), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(
        t.transpose(0, 1).unwrap().reshape(&[12]),
        Err(Error::BadShape { .. })
    ));
    assert!(matches!(t.squeeze(0), Err(Error::BadShape { .. })));
    assert!(matches!(t.unsqueeze(3), Err(Error::DimOutOfRange { .. })));
}

#[test]
fn contiguous_strides_are_row_major() {
    assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
    assert_eq!(contiguous_strides(&[]), Vec::<usize>::new());
    assert_eq!(contiguous_strides(&[5]), vec![1]);
    assert_eq!(contiguous_strides(&[2, 0, 3]), vec![0, 3, 1]);
    let scalar = Tensor::full(2.5, &[], DType::F32, Device::Cpu).unwrap();
    assert_eq!(scalar.layout().storage_indices().collect::<Vec<_>>(), vec![0]);
    assert_eq!(
        scalar.broadcast_as(&[2, 2]).unwrap().to_f64_vec().unwrap(),
        vec![2.5; 4]
    );
}
