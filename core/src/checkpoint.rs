//! safetensors checkpoint I/O. Being written.
