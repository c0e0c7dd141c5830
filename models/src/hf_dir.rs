//! HF model directory loader (stub; see the loader task).
