//! Seeded random-weight LLaMA models of named shapes, written as an HF directory or a
//! GGUF file: the same weights in both forms, for speed runs and for comparing engines
//! (npurt, llama.cpp, PyTorch) on one model without shipping a checkpoint.
//!
//! - this module: the shapes ([`LlamaShape`]) and the weights' values;
//! - `tokenizer`: the `tokenizer.*` metadata (copied from a real GGUF, or a
//!   byte-level vocabulary made up here) and its HF form;
//! - `hf`, `gguf`: the two writers. Both stream tensor by tensor: the largest tensor
//!   is the most held in memory at once.
//!
//! Values: every matrix uniform with standard deviation 0.02 (about what trained
//! LLaMAs start from), every norm weight 1, so activations stay in a sane range
//! through any number of layers. Each tensor draws from its own stream, seeded by the
//! seed and its HF name ([`WeightStore::tensor_rng`]). The GGUF form stores q/k rows
//! in llama.cpp's RoPE order (as its converter does), which npurt's GGUF loader
//! undoes, so both forms are the same model.

mod gguf;
pub(crate) mod hf;
mod tokenizer;

use crate::config::bad;
use crate::{LlamaConfig, ModelError, Result, WeightStore};
use npurt_graph::RopeScaling;
use std::io::{self, Write};
use std::path::Path;

pub use tokenizer::{TokenizerKvs, BYTE_LEVEL_MIN_VOCAB};

/// The shape of a LLaMA-family model: what `config.json` or the `llama.*` metadata says.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaShape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Per-head width (default: hidden / heads).
    pub head_dim: Option<usize>,
    /// MLP (intermediate) width.
    pub mlp: usize,
    pub vocab: usize,
    /// The output projection is the embedding (no `lm_head` / `output` tensor).
    pub tied: bool,
    pub context: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f32,
}

/// The named shapes `make-model --shape` knows.
pub const SHAPE_NAMES: &[&str] = &["smollm2-135m", "llama-2.7b"];

impl LlamaShape {
    /// A named shape: `smollm2-135m` (SmolLM2-135M's: hidden 576, 30 layers, 9 heads /
    /// 3 KV heads, MLP 1536, vocab 49152, tied) or `llama-2.7b` (hidden 2560, 32
    /// layers, 32 heads of 80 / 8 KV heads, MLP 6912, vocab 49152, untied: a 2.7B model
    /// with SmolLM2's vocabulary, so one tokenizer serves both).
    pub fn by_name(name: &str) -> Option<LlamaShape> {
        Some(match name {
            "smollm2-135m" => LlamaShape {
                hidden: 576,
                layers: 30,
                heads: 9,
                kv_heads: 3,
                head_dim: None,
                mlp: 1536,
                vocab: 49152,
                tied: true,
                context: 8192,
                rope_theta: 100_000.0,
                rms_norm_eps: 1e-5,
            },
            "llama-2.7b" => LlamaShape {
                hidden: 2560,
                layers: 32,
                heads: 32,
                kv_heads: 8,
                head_dim: Some(80),
                mlp: 6912,
                vocab: 49152,
                tied: false,
                context: 4096,
                rope_theta: 10_000.0,
                rms_norm_eps: 1e-5,
            },
            _ => return None,
        })
    }

    /// The config this shape implies, validated (`BadConfig` naming the field: heads
    /// that do not divide the hidden width, KV heads that do not divide the heads, an
    /// odd head width, ...).
    pub fn config(&self) -> Result<LlamaConfig> {
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if self.heads == 0 => {
                return Err(bad("num_attention_heads", "must be at least 1"))
            }
            None if !self.hidden.is_multiple_of(self.heads) => {
                return Err(bad(
                    "num_attention_heads",
                    format!(
                        "{} heads do not divide hidden_size {} (give head_dim)",
                        self.heads, self.hidden
                    ),
                ))
            }
            None => self.hidden / self.heads,
        };
        let cfg = LlamaConfig {
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            intermediate_size: self.mlp,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: self.kv_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling: RopeScaling::None,
            max_position_embeddings: self.context,
            tie_word_embeddings: self.tied,
            attention_bias: false,
            embed_layer_norm: None,
            bos_token_id: None,
            eos_token_ids: vec![],
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// How the weights are stored (norm weights are f32 in GGUF whatever this says, as
/// llama.cpp's converter writes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDType {
    F32,
    /// What `llama-quantize` takes as input.
    F16,
}

impl WeightDType {
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "f32" => Some(WeightDType::F32),
            "f16" => Some(WeightDType::F16),
            _ => None,
        }
    }

    fn bytes_per_value(self) -> usize {
        match self {
            WeightDType::F32 => 4,
            WeightDType::F16 => 2,
        }
    }

    /// Writes `values` in this dtype, little-endian.
    pub(crate) fn write(self, values: &[f32], out: &mut dyn Write) -> io::Result<()> {
        let mut buf = Vec::with_capacity(values.len() * self.bytes_per_value());
        match self {
            WeightDType::F32 => values
                .iter()
                .for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
            WeightDType::F16 => values
                .iter()
                .for_each(|v| buf.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        }
        out.write_all(&buf)
    }
}

/// A random-weight model: a shape, a seed and a storage dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomLlama {
    pub shape: LlamaShape,
    pub seed: u64,
    pub dtype: WeightDType,
}

/// Standard deviation of the matrices' values.
const WEIGHT_STD: f32 = 0.02;

/// Values are generated and written this many at a time (4 MiB of f32).
const CHUNK_VALUES: usize = 1 << 20;

impl RandomLlama {
    /// Writes the values of tensor `name` (`elems` of them) to `out` in `dtype`, in
    /// pieces of at most [`CHUNK_VALUES`].
    fn write_values(
        &self,
        name: &str,
        elems: usize,
        dtype: WeightDType,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let mut values = TensorValues::new(self.seed, name);
        let mut chunk = vec![0f32; elems.min(CHUNK_VALUES)];
        let mut left = elems;
        while left > 0 {
            let piece = &mut chunk[..left.min(CHUNK_VALUES)];
            values.fill(piece);
            dtype.write(piece, out)?;
            left -= piece.len();
        }
        Ok(())
    }
}

/// The vocabulary the shape says must be the tokenizer's: llama.cpp sizes the
/// embedding by the token count, and a token id beyond the embedding means nothing.
fn check_vocab(cfg: &LlamaConfig, tokenizer: &TokenizerKvs) -> Result<()> {
    let n = tokenizer.token_count()?;
    if n != cfg.vocab_size {
        return Err(bad(
            "vocab_size",
            format!(
                "{} differs from the {n} tokens of {}",
                cfg.vocab_size, tokenizer.source
            ),
        ));
    }
    Ok(())
}

/// Writes a file through `PATH.partial`, renamed to `path` once `write` succeeded, so
/// an interrupted run leaves no truncated model under the real name. Errors name the
/// path (`ModelError::Write`).
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let result = std::fs::File::create(&partial).and_then(|f| {
        let mut out = io::BufWriter::with_capacity(8 << 20, f);
        write(&mut out)?;
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()
    });
    match result.and_then(|()| std::fs::rename(&partial, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            std::fs::remove_file(&partial).ok();
            Err(write_error(path, e))
        }
    }
}

pub(crate) fn write_error(path: &Path, source: io::Error) -> ModelError {
    ModelError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// The stream of one tensor's values, in row-major order.
struct TensorValues {
    rng: Option<npurt_graph::SeededRng>,
}

impl TensorValues {
    fn new(seed: u64, hf_name: &str) -> Self {
        // Norm weights are 1: a random scale would only make the activations' range
        // depend on the seed.
        let is_norm = hf_name.ends_with("norm.weight");
        TensorValues {
            rng: (!is_norm).then(|| WeightStore::tensor_rng(seed, hf_name)),
        }
    }

    fn fill(&mut self, out: &mut [f32]) {
        match &mut self.rng {
            None => out.fill(1.0),
            Some(rng) => out.iter_mut().for_each(|x| {
                // Uniform in [-1, 1) scaled by sqrt(3): unit variance.
                *x = WEIGHT_STD * 1.732_050_8 * rng.uniform(-1.0, 1.0);
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_shapes_are_valid_and_bad_ones_name_the_field() {
        for name in SHAPE_NAMES {
            let cfg = LlamaShape::by_name(name).unwrap().config().unwrap();
            assert_eq!(cfg.vocab_size, 49152, "{name}");
        }
        let mut s = LlamaShape::by_name("smollm2-135m").unwrap();
        s.heads = 7;
        let err = s.config().unwrap_err();
        assert!(
            matches!(&err, crate::ModelError::BadConfig { field, .. } if field == "num_attention_heads"),
            "{err}"
        );
        s.heads = 9;
        s.kv_heads = 2;
        assert!(s.config().is_err(), "2 KV heads do not divide 9 heads");
    }

    #[test]
    fn values_are_seeded_by_name_and_norms_are_one() {
        let mut a = [0f32; 8];
        let mut b = [0f32; 8];
        TensorValues::new(1, "model.layers.0.mlp.up_proj.weight").fill(&mut a);
        TensorValues::new(1, "model.layers.0.mlp.up_proj.weight").fill(&mut b);
        assert_eq!(a, b);
        TensorValues::new(2, "model.layers.0.mlp.up_proj.weight").fill(&mut b);
        assert_ne!(a, b);
        assert!(a.iter().all(|x| x.abs() < 0.035 && *x != 0.0));
        TensorValues::new(1, "model.layers.0.input_layernorm.weight").fill(&mut a);
        assert_eq!(a, [1.0; 8]);
    }
}
