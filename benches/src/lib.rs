//! l4-benches
