//! Conversions between [`Tensor`] and `ndarray` arrays.
//!
//! Both directions copy and both follow logical (row-major) element order, whatever the memory
//! layout on either side: a transposed or sliced array becomes a contiguous tensor with the
//! same logical values, and a strided tensor view becomes a standard-layout array.

use ndarray::{ArrayD, ArrayRef, Dimension, IxDyn};

use crate::{Device, Element, Error, Result, Tensor};

impl Tensor {
    /// A contiguous tensor on `device` with the logical contents of any `ndarray` array or view
    /// of element type `T` (pass `&array`; any dimensionality, any memory order).
    pub fn from_ndarray<T: Element, D: Dimension>(array: &ArrayRef<T, D>, device: Device) -> Result<Tensor> {
        let values = match array.as_slice() {
            Some(slice) => slice.to_vec(),
            None => array.iter().copied().collect(),
        };
        Tensor::from_vec(values, array.shape(), device)
    }

    /// The tensor's elements as a standard-layout `ArrayD<T>` of the same shape, from any view
    /// and device. `T` must be the tensor's dtype ([`Error::DTypeMismatch`] otherwise).
    pub fn to_ndarray<T: Element>(&self) -> Result<ArrayD<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DTypeMismatch {
                op: "to_ndarray",
                got: self.dtype(),
                expected: Some(T::DTYPE),
            });
        }
        let values = self.to_vec::<T>()?;
        ArrayD::from_shape_vec(IxDyn(self.shape()), values).map_err(|e| Error::BadShape {
            op: "to_ndarray",
            shape: self.shape().to_vec(),
            msg: e.to_string(),
        })
    }
}
