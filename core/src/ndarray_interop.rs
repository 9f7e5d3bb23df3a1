//! ndarray interop. Being written.
