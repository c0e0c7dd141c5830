//! GGUF to LLaMA: the `LlamaConfig` from `llama.*` and `tokenizer.ggml.*` metadata,
//! and every tensor registered under its HF name (q/k rows un-permuted).

use super::file::bad_config;
use super::GgufFile;
use crate::config::LlamaConfig;
use crate::source::{check_llama_shapes, map_file};
use crate::weights::{UnpermuteRope, WeightEntry};
use crate::{ModelError, Result, WeightStore};
use memmap2::Mmap;
use npurt_graph::{RopeScaling, TensorFact};
use std::path::Path;
use std::sync::Arc;

/// Loads a llama-architecture GGUF: config from `llama.*` metadata, every tensor
/// registered under its HF name (q/k rows un-permuted), shapes checked against the config.
pub fn load(path: &Path) -> Result<(LlamaConfig, WeightStore, GgufFile)> {
    let map = map_file(path)?;
    let file = GgufFile::parse(&map, &path.display().to_string())?;
    let cfg = llama_config(&file)?;
    let store = llama_weights(&file, &cfg, map)?;
    check_llama_shapes(&cfg, &store)?;
    Ok((cfg, store, file))
}

/// `LlamaConfig` from the `llama.*` and `tokenizer.ggml.*` metadata, validated.
pub fn llama_config(f: &GgufFile) -> Result<LlamaConfig> {
    match f.get_str("general.architecture") {
        Some("llama") => {}
        Some(other) => {
            return Err(bad_config(
                "general.architecture",
                format!("`{other}` is not supported (only llama)"),
            ))
        }
        None => {
            return Err(bad_config(
                "general.architecture",
                "missing or not a string",
            ))
        }
    }
    let hidden_size = f.require_usize("llama.embedding_length")?;
    let num_attention_heads = f.require_usize("llama.attention.head_count")?;
    let head_dim = match f.optional_usize("llama.attention.key_length")? {
        Some(h) => h,
        None => match f.optional_usize("llama.rope.dimension_count")? {
            Some(h) => h,
            None => hidden_size.checked_div(num_attention_heads).unwrap_or(0),
        },
    };
    let vocab_size = match f.optional_usize("llama.vocab_size")? {
        Some(v) => v,
        None => f
            .get_str_array("tokenizer.ggml.tokens")
            .map(<[String]>::len)
            .ok_or_else(|| {
                bad_config(
                    "llama.vocab_size",
                    "missing, and no tokenizer.ggml.tokens to count",
                )
            })?,
    };
    let max_position_embeddings = f.require_usize("llama.context_length")?;
    let eos = f.optional_token_id("tokenizer.ggml.eos_token_id")?;
    // Chat models end turns with EOT; generation should stop at either.
    let eot = f.optional_token_id("tokenizer.ggml.eot_token_id")?;
    let mut eos_token_ids: Vec<u32> = eos.into_iter().collect();
    eos_token_ids.extend(eot.filter(|t| Some(*t) != eos));
    let cfg = LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size: f.require_usize("llama.feed_forward_length")?,
        num_hidden_layers: f.require_usize("llama.block_count")?,
        num_attention_heads,
        num_key_value_heads: f
            .optional_usize("llama.attention.head_count_kv")?
            .unwrap_or(num_attention_heads),
        head_dim,
        rms_norm_eps: f
            .optional_f32("llama.attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| bad_config("llama.attention.layer_norm_rms_epsilon", "missing"))?,
        rope_theta: f.optional_f32("llama.rope.freq_base")?.unwrap_or(10000.0),
        rope_scaling: rope_scaling(f, max_position_embeddings)?,
        max_position_embeddings,
        tie_word_embeddings: f.tensor("output.weight").is_none(),
        attention_bias: f.tensors.iter().any(|t| {
            t.name.starts_with("blk.") && t.name.ends_with(".bias") && t.name.contains(".attn_")
        }),
        embed_layer_norm: None,
        bos_token_id: f.optional_token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_ids,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// `llama.rope.scaling.*` (llama.cpp's names), or the older `llama.rope.scale_linear`.
fn rope_scaling(f: &GgufFile, context_length: usize) -> Result<RopeScaling> {
    let factor = |key: &str| -> Result<f32> {
        f.optional_f32(key)?
            .filter(|x| *x > 0.0 && x.is_finite())
            .ok_or_else(|| bad_config(key, "missing or not positive"))
    };
    let kind = match f.get("llama.rope.scaling.type") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| bad_config("llama.rope.scaling.type", "not a string"))?,
        ),
    };
    match kind {
        None if f.get("llama.rope.scale_linear").is_some() => Ok(RopeScaling::Linear {
            factor: factor("llama.rope.scale_linear")?,
        }),
        None | Some("none") => Ok(RopeScaling::None),
        Some("linear") => Ok(RopeScaling::Linear {
            factor: factor("llama.rope.scaling.factor")?,
        }),
        Some("dynamic") => Ok(RopeScaling::DynamicNtk {
            factor: factor("llama.rope.scaling.factor")?,
            original_max_position: f
                .optional_usize("llama.rope.scaling.original_context_length")?
                .unwrap_or(context_length),
        }),
        Some(other) => Err(bad_config(
            "llama.rope.scaling.type",
            format!("rope scaling `{other}` is not supported"),
        )),
    }
}

/// Where a llama GGUF tensor goes in the HF naming.
enum Mapping {
    Hf { name: String, unpermute: bool },
    Unsupported(&'static str),
    Unknown,
}

/// llama.cpp's names of a llama's model-wide tensors and their HF names.
pub(crate) const GLOBAL_TENSORS: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// llama.cpp's names of a layer's tensors (after `blk.N.`), their HF names (after
/// `model.layers.N.`), and whether GGUF stores their rows permuted for RoPE.
pub(crate) const LAYER_TENSORS: &[(&str, &str, bool)] = &[
    ("attn_q.weight", "self_attn.q_proj.weight", true),
    ("attn_k.weight", "self_attn.k_proj.weight", true),
    ("attn_v.weight", "self_attn.v_proj.weight", false),
    ("attn_output.weight", "self_attn.o_proj.weight", false),
    ("attn_v.bias", "self_attn.v_proj.bias", false),
    ("attn_output.bias", "self_attn.o_proj.bias", false),
    ("ffn_gate.weight", "mlp.gate_proj.weight", false),
    ("ffn_up.weight", "mlp.up_proj.weight", false),
    ("ffn_down.weight", "mlp.down_proj.weight", false),
    ("attn_norm.weight", "input_layernorm.weight", false),
    ("ffn_norm.weight", "post_attention_layernorm.weight", false),
];

/// The GGUF name of an HF llama tensor and whether its rows are permuted in GGUF
/// (the inverse of [`hf_mapping`], for writers).
pub(crate) fn gguf_name(hf_name: &str) -> Option<(String, bool)> {
    if let Some((g, _)) = GLOBAL_TENSORS.iter().find(|(_, h)| *h == hf_name) {
        return Some((g.to_string(), false));
    }
    let (layer, suffix) = hf_name.strip_prefix("model.layers.")?.split_once('.')?;
    let (g, _, permuted) = LAYER_TENSORS.iter().find(|(_, h, _)| *h == suffix)?;
    Some((format!("blk.{layer}.{g}"), *permuted))
}

fn hf_mapping(gguf_name: &str, n_layers: usize) -> Mapping {
    let hf = |name: String, unpermute| Mapping::Hf { name, unpermute };
    if let Some((_, h)) = GLOBAL_TENSORS.iter().find(|(g, _)| *g == gguf_name) {
        return hf(h.to_string(), false);
    }
    if gguf_name == "rope_freqs.weight" {
        return Mapping::Unsupported(
            "per-dimension RoPE frequency factors (Llama 3.1 style) are not supported",
        );
    }
    let Some((layer, suffix)) = gguf_name
        .strip_prefix("blk.")
        .and_then(|rest| rest.split_once('.'))
    else {
        return Mapping::Unknown;
    };
    // Digits only: `parse` would also accept "+1", which would alias layer 1.
    let layer = match layer
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| layer.parse::<usize>().ok())
        .flatten()
    {
        Some(l) if l < n_layers => l,
        _ => return Mapping::Unknown,
    };
    // Un-permuting a 1-D bias is not something the WeightStore's row permutation
    // describes; no llama GGUF we target has one.
    if matches!(suffix, "attn_q.bias" | "attn_k.bias") {
        return Mapping::Unsupported(
            "q/k projection biases (row-permuted in GGUF) are not supported",
        );
    }
    match LAYER_TENSORS.iter().find(|(g, _, _)| *g == suffix) {
        Some((_, h, unpermute)) => hf(format!("model.layers.{layer}.{h}"), *unpermute),
        None => Mapping::Unknown,
    }
}

/// Registers every tensor of `file` (mapped as `map`) under its HF name.
fn llama_weights(file: &GgufFile, cfg: &LlamaConfig, map: Arc<Mmap>) -> Result<WeightStore> {
    let mut store = WeightStore::new();
    let file_idx = store.add_file(map);
    for t in &file.tensors {
        let dtype = t.dtype()?;
        let (name, unpermute) = match hf_mapping(&t.name, cfg.num_hidden_layers) {
            Mapping::Hf { name, unpermute } => (name, unpermute),
            Mapping::Unsupported(why) => return Err(bad_config(&t.name, why)),
            Mapping::Unknown => {
                let detail = format!(
                    "unexpected tensor `{}` for a {}-layer llama",
                    t.name, cfg.num_hidden_layers
                );
                return Err(ModelError::BadFormat {
                    file: file.file_name.clone(),
                    format: "llama GGUF",
                    detail,
                });
            }
        };
        let to_usize = |x: u64| {
            usize::try_from(x).map_err(|_| ModelError::LyingHeader {
                file: file.file_name.clone(),
                field: format!("tensor `{}` offset", t.name),
                detail: "does not fit this platform's address space".into(),
            })
        };
        let shape = t.shape();
        // A q/k matrix whose rows are not whole heads cannot be un-permuted; register it
        // as stored so that `check_llama_shapes` reports the shape the config expects.
        let whole_heads = shape.len() == 2 && shape[0] % cfg.head_dim == 0;
        let entry = WeightEntry {
            fact: TensorFact::new(dtype, shape),
            file: file_idx,
            offset: to_usize(t.file_offset)?,
            len: to_usize(t.size)?,
            unpermute: (unpermute && whole_heads).then_some(UnpermuteRope {
                head_dim: cfg.head_dim,
            }),
        };
        store.insert(name, entry, &file.file_name)?;
    }
    Ok(store)
}
