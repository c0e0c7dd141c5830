//! Seeded random-weight BlueLM-V model directories (`npurt make-model --shape
//! bluelm-v-3b`): the product's real shapes end to end, a SigLIP-so400m tower, its
//! projector and a 2.7B LLaMA, laid out as [`crate::vlm`] reads them, so `run --image`
//! and `bench --image-size` measure the whole pipeline without a trained checkpoint.
//!
//! ```text
//! DIR/config.json              {"model_type": "bluelm_v", "vision": "vision", ...}
//! DIR/vision/config.json       SiglipVisionModel
//! DIR/vision/model.safetensors
//! DIR/projector.safetensors    mm_projector.{ln,fc1,fc2}.{weight,bias}
//! DIR/llm/ or DIR/llm.gguf     the LLM (random_llama's HF or GGUF form)
//! ```
//!
//! The tower and projector take their values from `siglip::synthetic_weights`' and
//! `projector::synthetic_weights`' generators: at [`SYNTHETIC_SEED`] (`--seed 0`) they
//! are the weights `npurt encode-image --synthetic so400m` builds in memory (rounded to
//! f16 at `--dtype f16`). The tower is written unpadded, as HF stores it
//! (`intermediate_size` 4304); the loader pads it.

use crate::projector::{self, ProjectorConfig};
use crate::random_llama::hf::{write_file, write_safetensors};
use crate::random_llama::{LlamaShape, RandomLlama, TokenizerKvs, WeightDType};
use crate::siglip::{self, SiglipVisionConfig, SYNTHETIC_SEED};
use crate::vlm::{VlmTiling, MODEL_TYPE};
use crate::{Result, WeightStore};
use std::io;
use std::path::Path;

/// The named shapes a BlueLM-V directory is made in.
pub const VLM_SHAPE_NAMES: &[&str] = &["bluelm-v-3b"];

/// The token merge of BlueLM-V's downsampler (2x2).
const MERGE: usize = 2;
/// Its projector LayerNorm's eps (written to `config.json` as f64; the reader narrows
/// it to f32).
const PROJECTOR_LN_EPS: f64 = 1e-5;

/// How the LLM part is stored inside the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlmForm {
    /// `DIR/llm/`, an HF LLaMA directory.
    Hf,
    /// `DIR/llm.gguf`.
    Gguf,
}

/// A random-weight BlueLM-V: a tower shape, an LLM and the seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomBlueLmV {
    pub tower: SiglipVisionConfig,
    pub llm: RandomLlama,
    /// Seed of the tower's values; the projector's is one more.
    pub vision_seed: u64,
    pub llm_form: LlmForm,
}

impl RandomBlueLmV {
    /// A named shape (`bluelm-v-3b`: SigLIP-so400m at 384x384 tiles and the
    /// `llama-2.7b` LLM, BlueLM-V-3B's sizes), seeded by `seed`: the LLM with `seed`
    /// itself, the vision part with `SYNTHETIC_SEED ^ seed`.
    pub fn by_name(
        name: &str,
        seed: u64,
        dtype: WeightDType,
        llm_form: LlmForm,
    ) -> Option<RandomBlueLmV> {
        match name {
            "bluelm-v-3b" => Some(RandomBlueLmV {
                tower: SiglipVisionConfig::so400m(),
                llm: RandomLlama {
                    shape: LlamaShape::by_name("llama-2.7b")?,
                    seed,
                    dtype,
                },
                vision_seed: SYNTHETIC_SEED ^ seed,
                llm_form,
            }),
            _ => None,
        }
    }

    /// The projector between this tower and this LLM.
    pub fn projector(&self) -> Result<ProjectorConfig> {
        let llm = self.llm.shape.config()?;
        Ok(ProjectorConfig::for_tower(
            &self.tower,
            MERGE,
            llm.hidden_size,
            PROJECTOR_LN_EPS as f32,
        ))
    }

    /// Writes the directory at `dir` (created if missing; files in it are replaced),
    /// each weights file through `PATH.partial`. Every shape is checked before the
    /// first byte is written.
    pub fn write_dir(&self, dir: &Path, tokenizer: &TokenizerKvs) -> Result<()> {
        self.tower.validate()?;
        let pc = self.projector()?;
        let vision_dir = dir.join("vision");
        std::fs::create_dir_all(&vision_dir)
            .map_err(|e| crate::random_llama::write_error(&vision_dir, e))?;
        let llm_name = match self.llm_form {
            LlmForm::Hf => {
                self.llm.write_hf_dir(&dir.join("llm"), tokenizer)?;
                "llm"
            }
            LlmForm::Gguf => {
                self.llm.write_gguf(&dir.join("llm.gguf"), tokenizer)?;
                "llm.gguf"
            }
        };

        write_file(
            &vision_dir.join("config.json"),
            self.tower.to_hf_json().to_string().as_bytes(),
        )?;
        let tower = siglip::siglip_tensor_shapes(&self.tower);
        let values = siglip::synthetic_store(&tower, self.vision_seed)?;
        write_store(
            &vision_dir.join("model.safetensors"),
            self.llm.dtype,
            &tower,
            &values,
        )?;

        let proj = projector::projector_tensor_shapes(&pc);
        let values = projector::synthetic_weights(&pc, self.vision_seed + 1)?;
        write_store(
            &dir.join("projector.safetensors"),
            self.llm.dtype,
            &proj,
            &values,
        )?;

        let tiling = VlmTiling::default();
        let config = serde_json::json!({
            "model_type": MODEL_TYPE, "vision": "vision", "projector": "projector.safetensors",
            "llm": llm_name, "image_token": "<image>", "vision_feature": "last",
            "projector_ln_eps": PROJECTOR_LN_EPS,
            "tiling": {"rule": tiling.rule, "alpha": tiling.alpha,
                       "max_tiles": tiling.max_tiles, "tile": self.tower.image_size},
        });
        write_file(&dir.join("config.json"), config.to_string().as_bytes())
    }
}

/// Writes the generated tensors `tensors` of `values` as one safetensors file.
fn write_store(
    path: &Path,
    dtype: WeightDType,
    tensors: &[(String, Vec<usize>)],
    values: &WeightStore,
) -> Result<()> {
    write_safetensors(path, dtype, tensors, |name, _, out| {
        let t = values.to_f32(name).map_err(io::Error::other)?;
        let v = t.as_f32().ok_or_else(|| io::Error::other("not f32"))?;
        dtype.write(v, out)
    })
}
