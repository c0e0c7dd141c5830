//! The GGUF form: llama.cpp's tensor names and `llama.*` metadata, q/k rows in its
//! RoPE order, the `tokenizer.*` metadata, one file.

use super::{RandomLlama, TensorValues, TokenizerKvs, WeightDType};
use crate::gguf::{gguf_name, start_gguf, GgmlType, GgufValue, TensorInfo};
use crate::source::llama_tensor_shapes;
use crate::weights::UnpermuteRope;
use crate::{LlamaConfig, Result};
use std::io::{self, Write};
use std::path::Path;

/// llama.cpp's `general.file_type` values (`LLAMA_FTYPE_ALL_F32`, `_MOSTLY_F16`).
const FILE_TYPE_F32: u32 = 0;
const FILE_TYPE_F16: u32 = 1;

impl RandomLlama {
    /// Writes the model as one GGUF file at `path` (replaced if it exists), through
    /// `path.partial` renamed when complete.
    pub fn write_gguf(&self, path: &Path, tokenizer: &TokenizerKvs) -> Result<()> {
        let cfg = self.shape.config()?;
        let tensors = llama_tensor_shapes(&cfg);
        super::check_vocab(&cfg, tokenizer)?;
        let mut kvs = self.llama_metadata(&cfg);
        kvs.extend(tokenizer.kvs().iter().cloned());
        // (GGUF name, HF name, row-major shape, type, q/k rows permuted).
        let mut plan = Vec::with_capacity(tensors.len());
        for (hf, shape) in tensors {
            let Some((name, permuted)) = gguf_name(&hf) else {
                return Err(crate::config::bad(&hf, "no llama.cpp name for this tensor"));
            };
            // 1-D tensors (the norms) stay f32, as llama.cpp's converter writes them.
            let ty = match (self.dtype, shape.len()) {
                (WeightDType::F16, 2) => GgmlType::F16,
                _ => GgmlType::F32,
            };
            plan.push((name, hf, shape, ty, permuted));
        }
        let infos: Vec<TensorInfo> = plan
            .iter()
            .map(|(name, _, shape, ty, _)| TensorInfo {
                name: name.clone(),
                ne: shape.iter().rev().map(|&d| d as u64).collect(),
                ty: *ty,
            })
            .collect();
        super::write_atomically(path, |out| {
            let mut g = start_gguf(out, &kvs, &infos)?;
            for (_, hf, shape, ty, permuted) in &plan {
                let dtype = if *ty == GgmlType::F16 {
                    WeightDType::F16
                } else {
                    WeightDType::F32
                };
                let elems = shape.iter().product();
                g.tensor(|o| match permuted {
                    false => self.write_values(hf, elems, dtype, o),
                    true => self.write_rope_rows(hf, shape, cfg.head_dim, dtype, o),
                })?;
            }
            g.finish().map(drop)
        })
    }

    /// The `general.*` and `llama.*` metadata llama.cpp reads for this config.
    fn llama_metadata(&self, cfg: &LlamaConfig) -> Vec<(String, GgufValue)> {
        let u = |x: usize| GgufValue::U32(x as u32);
        let file_type = match self.dtype {
            WeightDType::F32 => FILE_TYPE_F32,
            WeightDType::F16 => FILE_TYPE_F16,
        };
        let name = format!("random-weight llama (npurt make-model, seed {})", self.seed);
        [
            ("general.architecture", GgufValue::String("llama".into())),
            ("general.name", GgufValue::String(name)),
            ("general.file_type", GgufValue::U32(file_type)),
            ("llama.context_length", u(cfg.max_position_embeddings)),
            ("llama.embedding_length", u(cfg.hidden_size)),
            ("llama.block_count", u(cfg.num_hidden_layers)),
            ("llama.feed_forward_length", u(cfg.intermediate_size)),
            ("llama.attention.head_count", u(cfg.num_attention_heads)),
            ("llama.attention.head_count_kv", u(cfg.num_key_value_heads)),
            ("llama.attention.key_length", u(cfg.head_dim)),
            ("llama.attention.value_length", u(cfg.head_dim)),
            ("llama.rope.dimension_count", u(cfg.head_dim)),
            ("llama.rope.freq_base", GgufValue::F32(cfg.rope_theta)),
            (
                "llama.attention.layer_norm_rms_epsilon",
                GgufValue::F32(cfg.rms_norm_eps),
            ),
            ("llama.vocab_size", u(cfg.vocab_size)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// A q/k projection in llama.cpp's order: HF row `r` of each head goes to GGUF row
    /// `UnpermuteRope::source_row(r)`, the row npurt's loader reads it back from (what
    /// convert_hf_to_gguf.py's `permute` does). Small enough to hold whole.
    fn write_rope_rows(
        &self,
        hf_name: &str,
        shape: &[usize],
        head_dim: usize,
        dtype: WeightDType,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let (rows, cols) = (shape[0], shape[1]);
        let mut hf = vec![0f32; rows * cols];
        TensorValues::new(self.seed, hf_name).fill(&mut hf);
        let perm = UnpermuteRope { head_dim };
        let mut gguf = vec![0f32; rows * cols];
        for r in 0..rows {
            let g = perm.source_row(r);
            gguf[g * cols..(g + 1) * cols].copy_from_slice(&hf[r * cols..(r + 1) * cols]);
        }
        dtype.write(&gguf, out)
    }
}
