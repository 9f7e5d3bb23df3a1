//! l4-model
