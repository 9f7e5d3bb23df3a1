//! Shapes and strided layouts: how a tensor's logical indices map onto its storage.
//!
//! Strides count elements, not bytes. A stride of 0 repeats one element along a dimension
//! (broadcast). Views (narrow, permute, transpose, reshape of contiguous data, broadcast) only
//! build a new [`Layout`]; the storage is shared and nothing is copied.

use crate::{Error, Result};

/// A tensor's dimensions, outermost first.
pub type Shape = Vec<usize>;

/// Number of elements of a shape (1 for a scalar).
pub fn elem_count(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major (C-order) strides of a shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// The shape two shapes broadcast to under NumPy rules (trailing dimensions aligned; a
/// dimension of 1 stretches).
pub fn broadcast_shape(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Result<Shape> {
    let rank = lhs.len().max(rhs.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let l = if i < rank - lhs.len() {
            1
        } else {
            lhs[i - (rank - lhs.len())]
        };
        let r = if i < rank - rhs.len() {
            1
        } else {
            rhs[i - (rank - rhs.len())]
        };
        out[i] = match (l, r) {
            (a, b) if a == b => a,
            (1, b) => b,
            (a, 1) => a,
            _ => {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: lhs.to_vec(),
                    rhs: rhs.to_vec(),
                });
            }
        };
    }
    Ok(out)
}

/// Shape, strides and starting offset of a view into storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    /// A row-major layout of `shape` starting at offset 0.
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }

    /// A layout from its parts. The caller guarantees the strides stay inside the storage.
    pub(crate) fn from_parts(shape: Shape, strides: Vec<usize>, offset: usize) -> Self {
        Layout { shape, strides, offset }
    }

    /// The logical shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element strides, one per dimension.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Index of the first element in storage.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of logical elements.
    pub fn elem_count(&self) -> usize {
        elem_count(&self.shape)
    }

    /// Whether the elements are laid out row-major without gaps (offset aside). Dimensions of
    /// size 1 may have any stride.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&dim, &stride) in self.shape.iter().zip(&self.strides).rev() {
            if dim != 1 && stride != expected {
                return false;
            }
            expected *= dim;
        }
        true
    }

    /// One past the largest storage index this view can touch (0 for an empty view).
    pub fn storage_extent(&self) -> usize {
        if self.elem_count() == 0 {
            return 0;
        }
        self.offset
            + self
                .shape
                .iter()
                .zip(&self.strides)
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<usize>()
            + 1
    }

    fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        if dim >= self.rank() {
            return Err(Error::DimOutOfRange {
                op,
                dim,
                rank: self.rank(),
            });
        }
        Ok(())
    }

    /// The view of `len` entries of dimension `dim` starting at `start`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        self.check_dim("narrow", dim)?;
        if start.checked_add(len).is_none_or(|end| end > self.shape[dim]) {
            return Err(Error::BadShape {
                op: "narrow",
                shape: self.shape.clone(),
                msg: format!("range {start}..{} exceeds dimension {dim}", start.saturating_add(len)),
            });
        }
        let mut out = self.clone();
        out.shape[dim] = len;
        if len > 0 {
            out.offset += start * self.strides[dim];
        }
        Ok(out)
    }

    /// Reorders dimensions: output dimension `i` is input dimension `dims[i]`.
    pub fn permute(&self, dims: &[usize]) -> Result<Self> {
        let mut seen = vec![false; self.rank()];
        if dims.len() != self.rank()
            || dims
                .iter()
                .any(|&d| d >= self.rank() || std::mem::replace(&mut seen[d], true))
        {
            return Err(Error::BadShape {
                op: "permute",
                shape: self.shape.clone(),
                msg: format!("{dims:?} is not a permutation of 0..{}", self.rank()),
            });
        }
        Ok(Layout {
            shape: dims.iter().map(|&d| self.shape[d]).collect(),
            strides: dims.iter().map(|&d| self.strides[d]).collect(),
            offset: self.offset,
        })
    }

    /// Swaps two dimensions.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Self> {
        self.check_dim("transpose", a)?;
        self.check_dim("transpose", b)?;
        let mut dims: Vec<usize> = (0..self.rank()).collect();
        dims.swap(a, b);
        self.permute(&dims)
    }

    /// A new shape over the same elements; only for contiguous layouts (call `contiguous()` on
    /// the tensor first otherwise).
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        if elem_count(shape) != self.elem_count() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape.clone(),
                rhs: shape.to_vec(),
            });
        }
        if !self.is_contiguous() {
            return Err(Error::BadShape {
                op: "reshape",
                shape: self.shape.clone(),
                msg: "layout is not contiguous; call contiguous() first".into(),
            });
        }
        Ok(Layout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: self.offset,
        })
    }

    /// Broadcasts to `shape` (NumPy rules) by giving stretched dimensions stride 0.
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Self> {
        let mismatch = || Error::ShapeMismatch {
            op: "broadcast_as",
            lhs: self.shape.clone(),
            rhs: shape.to_vec(),
        };
        if shape.len() < self.rank() {
            return Err(mismatch());
        }
        let lead = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for (i, &target) in shape.iter().enumerate().skip(lead) {
            let (dim, stride) = (self.shape[i - lead], self.strides[i - lead]);
            strides[i] = match dim {
                d if d == target => stride,
                1 => 0,
                _ => return Err(mismatch()),
            };
        }
        Ok(Layout {
            shape: shape.to_vec(),
            strides,
            offset: self.offset,
        })
    }

    /// Storage indices of every element, in row-major logical order.
    pub fn storage_indices(&self) -> StorageIndices<'_> {
        StorageIndices {
            layout: self,
            index: vec![0; self.rank()],
            next: self.offset,
            remaining: self.elem_count(),
        }
    }
}

/// Iterator over the storage index of each logical element of a [`Layout`], row-major.
#[derive(Debug)]
pub struct StorageIndices<'a> {
    layout: &'a Layout,
    index: Vec<usize>,
    next: usize,
    remaining: usize,
}

impl Iterator for StorageIndices<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        let current = self.next;
        self.remaining -= 1;
        // Odometer step: bump the innermost index, carrying into outer dimensions.
        for d in (0..self.index.len()).rev() {
            self.index[d] += 1;
            self.next += self.layout.strides[d];
            if self.index[d] < self.layout.shape[d] {
                break;
            }
            self.next -= self.index[d] * self.layout.strides[d];
            self.index[d] = 0;
        }
        Some(current)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for StorageIndices<'_> {}
