//! `LlamaConfig`: the one config that drives the LLaMA-family graph builder, parsed
//! from an HF `config.json` or from GGUF metadata, and validated before anything is
//! sized by it.

use crate::{ModelError, Result};
use npurt_graph::RopeScaling;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// HF Llama `attention_bias`: biases on q, k, v and o projections.
    pub attention_bias: bool,
    /// BlueLM's `use_stable_embedding`: LayerNorm right after the embedding.
    pub embed_layer_norm: Option<f32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Upper bounds that no real checkpoint this runtime targets exceeds; anything larger
/// is a corrupt or hostile file, refused before any allocation is sized by it.
pub const MAX_HIDDEN: usize = 1 << 16;
pub const MAX_LAYERS: usize = 1024;
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_CONTEXT: usize = 1 << 20;

impl LlamaConfig {
    /// The longest context the model supports: its trained length, or the length its
    /// rope scaling extends it to (linear and dynamic NTK scale the trained length by
    /// their factor; Llama 3's scaling is already counted in `max_position_embeddings`).
    pub fn max_context(&self) -> usize {
        let scaled = |f: f32, base: usize| ((base as f64) * f64::from(f.max(1.0))) as usize;
        let n = match self.rope_scaling {
            RopeScaling::None | RopeScaling::Llama3 { .. } => self.max_position_embeddings,
            RopeScaling::Linear { factor } => scaled(factor, self.max_position_embeddings),
            RopeScaling::DynamicNtk {
                factor,
                original_max_position,
            } => scaled(factor, original_max_position).max(self.max_position_embeddings),
        };
        n.min(MAX_CONTEXT)
    }
}

/// A `BadConfig` error naming the field (shared by every config parser here).
pub(crate) fn bad(field: &str, reason: impl Into<String>) -> ModelError {
    ModelError::BadConfig {
        field: field.into(),
        reason: reason.into(),
    }
}

fn get_usize(v: &Value, field: &str) -> Result<usize> {
    v.get(field)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| bad(field, "missing or not a non-negative integer"))
}

fn get_f32(v: &Value, field: &str) -> Option<f32> {
    v.get(field).and_then(Value::as_f64).map(|x| x as f32)
}

/// One token id as `u32`. A value beyond `u32` is refused as the GGUF loader refuses
/// it (a truncating cast would turn 2^32+2 into 2). A null or negative id (old LLaMA
/// configs write `-1` for "none") stays "no such token", as HF reads it.
fn token_id(field: &str, v: &Value) -> Result<Option<u32>> {
    match v.as_u64() {
        Some(x) => u32::try_from(x)
            .map(Some)
            .map_err(|_| bad(field, format!("{x} is not a valid token id"))),
        None if v.is_null() || v.as_i64().is_some() => Ok(None),
        None => Err(bad(field, format!("{v} is not a valid token id"))),
    }
}

/// `eos_token_id`: one id or a list of them.
fn ids(field: &str, v: Option<&Value>) -> Result<Vec<u32>> {
    let one = |v: &Value| token_id(field, v);
    Ok(match v {
        Some(Value::Array(a)) => a
            .iter()
            .map(one)
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect(),
        Some(v) => one(v)?.into_iter().collect(),
        None => vec![],
    })
}

/// Parses HF `rope_scaling` (or transformers 5's `rope_parameters`) into the IR's form.
pub fn parse_rope_scaling(v: Option<&Value>) -> Result<RopeScaling> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor = || {
        get_f32(v, "factor")
            .filter(|f| *f > 0.0 && f.is_finite())
            .ok_or_else(|| bad("rope_scaling.factor", "missing or not positive"))
    };
    let orig = |default: Option<usize>| {
        v.get("original_max_position_embeddings")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .or(default)
            .ok_or_else(|| bad("rope_scaling.original_max_position_embeddings", "missing"))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "dynamic" => RopeScaling::DynamicNtk {
            factor: factor()?,
            original_max_position: orig(Some(0))?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: get_f32(v, "low_freq_factor").unwrap_or(1.0),
            high_freq_factor: get_f32(v, "high_freq_factor").unwrap_or(4.0),
            original_max_position: orig(None)?,
        },
        other => {
            return Err(bad(
                "rope_scaling.rope_type",
                format!("unsupported rope scaling `{other}`"),
            ))
        }
    })
}

impl LlamaConfig {
    /// From an HF `config.json` value.
    pub fn from_hf_json(v: &Value) -> Result<Self> {
        let hidden_size = get_usize(v, "hidden_size")?;
        let num_attention_heads = get_usize(v, "num_attention_heads")?;
        let head_dim = match v.get("head_dim").and_then(Value::as_u64) {
            Some(h) => h as usize,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => 0,
        };
        let rope = v.get("rope_parameters");
        let rope_theta = get_f32(v, "rope_theta")
            .or_else(|| rope.and_then(|r| get_f32(r, "rope_theta")))
            .unwrap_or(10000.0);
        let max_position_embeddings = get_usize(v, "max_position_embeddings").unwrap_or(2048);
        let mut rope_scaling = parse_rope_scaling(v.get("rope_scaling").or(rope))?;
        if let RopeScaling::DynamicNtk {
            original_max_position,
            ..
        } = &mut rope_scaling
        {
            if *original_max_position == 0 {
                *original_max_position = max_position_embeddings;
            }
        }
        // Not used (generation stops at EOS), but checked like the GGUF loader checks
        // `tokenizer.ggml.padding_token_id`: a corrupt id is a corrupt config.
        if let Some(id) = v.get("pad_token_id") {
            token_id("pad_token_id", id)?;
        }
        let cfg = LlamaConfig {
            vocab_size: get_usize(v, "vocab_size")?,
            hidden_size,
            intermediate_size: get_usize(v, "intermediate_size")?,
            num_hidden_layers: get_usize(v, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: get_usize(v, "num_key_value_heads").unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: get_f32(v, "rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            attention_bias: v
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            embed_layer_norm: v
                .get("use_stable_embedding")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .then(|| get_f32(v, "layer_norm_eps").unwrap_or(1e-5)),
            bos_token_id: match v.get("bos_token_id") {
                Some(id) => token_id("bos_token_id", id)?,
                None => None,
            },
            eos_token_ids: ids("eos_token_id", v.get("eos_token_id"))?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects configs no real model has, before they size any allocation.
    pub fn validate(&self) -> Result<()> {
        let in_range = |field: &str, x: usize, max: usize| {
            if x == 0 || x > max {
                Err(bad(field, format!("{x} is outside 1..={max}")))
            } else {
                Ok(())
            }
        };
        in_range("hidden_size", self.hidden_size, MAX_HIDDEN)?;
        in_range("intermediate_size", self.intermediate_size, 4 * MAX_HIDDEN)?;
        in_range("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS)?;
        in_range("vocab_size", self.vocab_size, MAX_VOCAB)?;
        in_range(
            "num_attention_heads",
            self.num_attention_heads,
            self.hidden_size,
        )?;
        in_range(
            "num_key_value_heads",
            self.num_key_value_heads,
            self.num_attention_heads,
        )?;
        in_range("head_dim", self.head_dim, 1024)?;
        in_range(
            "max_position_embeddings",
            self.max_position_embeddings,
            MAX_CONTEXT,
        )?;
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                format!("{} must be even for RoPE", self.head_dim),
            ));
        }
        if self.num_attention_heads * self.head_dim != self.hidden_size
            && !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(bad(
                "num_attention_heads",
                format!(
                    "{} heads do not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        let positive = |v: f32| v > 0.0 && v.is_finite();
        if !positive(self.rms_norm_eps) || !positive(self.rope_theta) {
            return Err(bad(
                "rms_norm_eps/rope_theta",
                "must be positive and finite",
            ));
        }
        Ok(())
    }

    pub fn q_width(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }
    pub fn kv_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256})
    }

    #[test]
    fn absurd_configs_are_rejected_by_field() {
        for (field, val, needle) in [
            ("hidden_size", json!(1u64 << 40), "hidden_size"),
            ("num_hidden_layers", json!(0), "num_hidden_layers"),
            ("num_attention_heads", json!(5), "num_attention_heads"),
        ] {
            let mut v = base();
            v[field] = val;
            let err = LlamaConfig::from_hf_json(&v).unwrap_err().to_string();
            assert!(err.contains(needle), "{field}: {err}");
        }
    }

    #[test]
    fn rope_scalings_parse() {
        let mut v = base();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        assert!(matches!(
            LlamaConfig::from_hf_json(&v).unwrap().rope_scaling,
            RopeScaling::Llama3 { .. }
        ));
        v["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
        assert_eq!(
            LlamaConfig::from_hf_json(&v).unwrap().rope_scaling,
            RopeScaling::DynamicNtk {
                factor: 2.0,
                original_max_position: 256
            }
        );
    }
}
