//! The model parts the per-layer plan chooses from.

pub mod attention;
pub mod fp8;
pub mod linear;
pub mod mlp;
pub mod moe;
pub mod rope;
pub mod router;
