//! Seeded random tensors. Being written.
