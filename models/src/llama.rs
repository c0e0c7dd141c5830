//! LLaMA-family graph builder (stub).
