//! l4-kernels
