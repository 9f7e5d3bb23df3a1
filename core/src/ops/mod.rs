//! CPU ops (the CPU backend and reference). Being written.
