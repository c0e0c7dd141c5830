//! `npurt make-model`: writes a seeded random-weight LLaMA of a named shape as an HF
//! directory or a GGUF file (the same weights in both), for speed runs and for
//! comparing engines on one model without a checkpoint (`scripts/bench-gpu.sh`); or a
//! whole BlueLM-V directory (`bluelm-v-3b`: SigLIP-so400m, projector, 2.7B LLM).

use super::anyhow_lite::{self, msg};
use clap::Args;
use npurt_models::random_llama::{LlamaShape, RandomLlama, TokenizerKvs, WeightDType, SHAPE_NAMES};
use npurt_models::random_vlm::{LlmForm, RandomBlueLmV, VLM_SHAPE_NAMES};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct MakeModelArgs {
    /// Named shape: smollm2-135m (hidden 576, 30 layers, 9/3 heads, MLP 1536, vocab
    /// 49152, tied) or llama-2.7b (hidden 2560, 32 layers, 32/8 heads of 80, MLP 6912,
    /// vocab 49152); the flags below override its fields. bluelm-v-3b: a BlueLM-V
    /// directory (SigLIP-so400m + projector + the llama-2.7b LLM, which the flags
    /// below override; the LLM is `llm/` or `llm.gguf` per --format).
    #[arg(long, default_value = "smollm2-135m",
          value_parser = clap::builder::PossibleValuesParser::new(
              SHAPE_NAMES.iter().chain(VLM_SHAPE_NAMES).copied()))]
    shape: String,
    /// bluelm-v-3b only: the vision tower's encoder blocks (so400m: 27).
    #[arg(long)]
    vision_layers: Option<usize>,
    /// Hidden (embedding) width.
    #[arg(long)]
    hidden: Option<usize>,
    /// Decoder layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Query heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Key/value heads (grouped-query attention: must divide the query heads).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Per-head width (default: the shape's, else hidden / heads).
    #[arg(long)]
    head_dim: Option<usize>,
    /// MLP (intermediate) width.
    #[arg(long)]
    mlp: Option<usize>,
    /// Vocabulary size (must equal the tokenizer's token count).
    #[arg(long)]
    vocab: Option<usize>,
    /// Tie the output projection to the embedding (true/false; default: the shape's).
    #[arg(long)]
    tied: Option<bool>,
    /// Seed of the weights: the same seed and shape give the same weights in both
    /// formats, on every machine.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output form: hf (a directory: config.json, model.safetensors, tokenizer files)
    /// or gguf (one file, llama.cpp's names).
    #[arg(long, value_parser = ["hf", "gguf"])]
    format: String,
    /// Storage type of the weights (f16 is what llama-quantize takes); GGUF norms stay f32.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    dtype: String,
    /// Copy the tokenizer (every `tokenizer.*` key) from this GGUF, e.g. the SmolLM2
    /// file scripts/fetch-model.sh fetches (default: a made-up byte-level vocabulary of
    /// the shape's size).
    #[arg(long, value_name = "FILE.gguf")]
    tokenizer_from: Option<PathBuf>,
    /// Where to write: a directory (hf, or any BlueLM-V shape) or a file (gguf).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: MakeModelArgs) -> anyhow_lite::Result<()> {
    let dtype = WeightDType::by_name(&a.dtype)
        .ok_or_else(|| msg(format!("unknown dtype `{}`", a.dtype)))?;
    let form = match a.format.as_str() {
        "hf" => LlmForm::Hf,
        _ => LlmForm::Gguf,
    };
    // A BlueLM-V shape, or an LLM's.
    let mut vlm = RandomBlueLmV::by_name(&a.shape, a.seed, dtype, form);
    if a.vision_layers.is_some() && vlm.is_none() {
        return Err(msg(format!(
            "--vision-layers needs a BlueLM-V shape ({}), not `{}`",
            VLM_SHAPE_NAMES.join(", "),
            a.shape
        )));
    }
    let mut shape = match &vlm {
        Some(v) => v.llm.shape.clone(),
        None => LlamaShape::by_name(&a.shape).ok_or_else(|| {
            msg(format!(
                "unknown shape `{}` (known: {})",
                a.shape,
                SHAPE_NAMES.join(", ")
            ))
        })?,
    };
    let set = |field: &mut usize, v: Option<usize>| *field = v.unwrap_or(*field);
    set(&mut shape.hidden, a.hidden);
    set(&mut shape.layers, a.layers);
    set(&mut shape.heads, a.heads);
    set(&mut shape.kv_heads, a.kv_heads);
    set(&mut shape.mlp, a.mlp);
    set(&mut shape.vocab, a.vocab);
    // Changing the width or the heads drops the named shape's head width.
    if a.hidden.is_some() || a.heads.is_some() {
        shape.head_dim = None;
    }
    shape.head_dim = a.head_dim.or(shape.head_dim);
    shape.tied = a.tied.unwrap_or(shape.tied);
    let model = RandomLlama {
        shape,
        seed: a.seed,
        dtype,
    };
    // The shapes first: a bad one is reported before any tokenizer file is read.
    let cfg = model.shape.config()?;
    let mut params = npurt_models::source::llama_tensor_shapes(&cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum::<usize>();
    if let Some(v) = &mut vlm {
        v.llm = model.clone();
        set(&mut v.tower.num_hidden_layers, a.vision_layers);
        v.tower.validate()?;
        let pc = v.projector()?;
        params += npurt_models::siglip::siglip_tensor_shapes(&v.tower)
            .iter()
            .chain(&npurt_models::projector::projector_tensor_shapes(&pc))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum::<usize>();
    }
    let tokenizer = match &a.tokenizer_from {
        Some(path) => TokenizerKvs::from_gguf(path)?,
        None => TokenizerKvs::byte_level(cfg.vocab_size)?,
    };
    eprintln!(
        "writing {} ({:.1}M parameters, {}, seed {}, tokenizer: {}) to {}...",
        a.shape,
        params as f64 / 1e6,
        a.dtype,
        a.seed,
        tokenizer.source,
        a.out.display()
    );
    let start = Instant::now();
    match (&vlm, form) {
        (Some(v), _) => v.write_dir(&a.out, &tokenizer)?,
        (None, LlmForm::Hf) => model.write_hf_dir(&a.out, &tokenizer)?,
        (None, LlmForm::Gguf) => model.write_gguf(&a.out, &tokenizer)?,
    }
    eprintln!("done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
