//! GGUF v3 reader (stub; see the loader task).
