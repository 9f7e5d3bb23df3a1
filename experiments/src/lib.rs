//! l4-experiments
