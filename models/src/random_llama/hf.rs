//! The HF form: `config.json` (LlamaForCausalLM), `model.safetensors`, and the
//! tokenizer files, in a directory.

use super::{write_error, RandomLlama, TokenizerKvs, WeightDType};
use crate::source::llama_tensor_shapes;
use crate::stream_write::{start_safetensors, SafetensorsEntry};
use crate::Result;
use serde_json::json;
use std::path::Path;

impl RandomLlama {
    /// Writes the model as an HF directory at `dir` (created if missing; files in it are
    /// replaced). The weights go to `model.safetensors.partial` first and are renamed
    /// when complete, so an interrupted run leaves no truncated model behind.
    pub fn write_hf_dir(&self, dir: &Path, tokenizer: &TokenizerKvs) -> Result<()> {
        let cfg = self.shape.config()?;
        let tensors = llama_tensor_shapes(&cfg);
        super::check_vocab(&cfg, tokenizer)?;
        std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
        let (bos, eos) = tokenizer.special_ids()?;
        let dtype_name = match self.dtype {
            WeightDType::F32 => "float32",
            WeightDType::F16 => "float16",
        };
        let config = json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
            "hidden_act": "silu", "max_position_embeddings": cfg.max_position_embeddings,
            "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
            "tie_word_embeddings": cfg.tie_word_embeddings, "attention_bias": false,
            "bos_token_id": bos, "eos_token_id": eos, "torch_dtype": dtype_name,
        });
        let (tokenizer_json, tokenizer_config) = tokenizer.hf_files()?;
        write_file(&dir.join("config.json"), config.to_string().as_bytes())?;
        write_file(&dir.join("tokenizer.json"), tokenizer_json.as_bytes())?;
        write_file(
            &dir.join("tokenizer_config.json"),
            tokenizer_config.to_string().as_bytes(),
        )?;

        write_safetensors(
            &dir.join("model.safetensors"),
            self.dtype,
            &tensors,
            |name, elems, out| self.write_values(name, elems, self.dtype, out),
        )
    }
}

/// Writes `tensors` (HF names and shapes, in this order) as a safetensors file of
/// `dtype`, each tensor's values streamed by `values(name, elems, out)`, through
/// `PATH.partial` (see `write_atomically`).
pub(crate) fn write_safetensors(
    path: &Path,
    dtype: WeightDType,
    tensors: &[(String, Vec<usize>)],
    mut values: impl FnMut(&str, usize, &mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<()> {
    let st_dtype = match dtype {
        WeightDType::F32 => "F32",
        WeightDType::F16 => "F16",
    };
    let entries: Vec<SafetensorsEntry> = tensors
        .iter()
        .map(|(name, shape)| SafetensorsEntry {
            name: name.clone(),
            dtype: st_dtype.into(),
            shape: shape.clone(),
            bytes: (shape.iter().product::<usize>() * dtype.bytes_per_value()) as u64,
        })
        .collect();
    super::write_atomically(path, |out| {
        let mut st = start_safetensors(out, &entries)?;
        for (name, shape) in tensors {
            let elems = shape.iter().product();
            st.tensor(|o| values(name, elems, o))?;
        }
        st.finish().map(drop)
    })
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| write_error(path, e))
}
