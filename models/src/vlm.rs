//! The BlueLM-V model directory: one `config.json` naming a SigLIP vision directory, a
//! projector safetensors file and an LLM (GGUF file or HF LLaMA directory), with the
//! image placeholder and the tiling rule.
//!
//! ```text
//! DIR/config.json  {"model_type": "bluelm_v", "vision": "vision", "projector": "projector.safetensors",
//!                   "llm": "llm.gguf", "image_token": "<image>", "vision_feature": "last",
//!                   "projector_ln_eps": 1e-5,
//!                   "tiling": {"rule": "relaxed", "alpha": 0.1, "max_tiles": 9, "tile": 384}}
//! ```
//! Paths are relative to DIR (symlinks are followed). This module reads and checks the
//! file and that each part exists; whether the parts fit each other (widths, tile size)
//! is checked by the runtime once each part's config is read.

use crate::config::bad;
use crate::siglip::VisionFeature;
use crate::source::{io_error, read_json};
use crate::Result;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// `model_type` of a BlueLM-V directory.
pub const MODEL_TYPE: &str = "bluelm_v";

/// The tiling section: which grid rule, its threshold, the tile budget and side.
#[derive(Clone, Debug, PartialEq)]
pub struct VlmTiling {
    /// `relaxed` (BlueLM-V's Algorithm 1) or `llava-next`.
    pub rule: String,
    pub alpha: f64,
    pub max_tiles: u32,
    /// The vision tower's input side (must equal its `image_size`).
    pub tile: u32,
}

impl Default for VlmTiling {
    fn default() -> Self {
        VlmTiling {
            rule: "relaxed".into(),
            alpha: 0.1,
            max_tiles: 9,
            tile: 384,
        }
    }
}

/// A parsed `config.json` of a BlueLM-V directory, its paths resolved against it.
#[derive(Clone, Debug)]
pub struct VlmConfig {
    pub dir: PathBuf,
    /// The HF SigLIP vision directory.
    pub vision: PathBuf,
    /// `mm_projector.{ln,fc1,fc2}.{weight,bias}`.
    pub projector: PathBuf,
    /// A GGUF file or an HF LLaMA directory.
    pub llm: PathBuf,
    /// The placeholder a prompt marks an image with (never tokenized).
    pub image_token: String,
    pub vision_feature: VisionFeature,
    pub projector_ln_eps: f32,
    pub tiling: VlmTiling,
}

/// Whether `path` is a directory whose `config.json` says `"model_type": "bluelm_v"`
/// (a cheap probe: anything unreadable is "no", and the normal loader reports it).
pub fn is_vlm_dir(path: &Path) -> bool {
    let cfg = path.join("config.json");
    path.is_dir()
        && read_json(&cfg)
            .ok()
            .and_then(|v| {
                v.get("model_type")
                    .and_then(Value::as_str)
                    .map(|s| s == MODEL_TYPE)
            })
            .unwrap_or(false)
}

impl VlmConfig {
    /// Reads `dir/config.json` and checks that every part it names is there.
    pub fn load(dir: &Path) -> Result<VlmConfig> {
        let v = read_json(&dir.join("config.json"))?;
        let cfg = Self::from_json(dir, &v)?;
        for (field, path, want_dir) in [
            ("vision", &cfg.vision, Some(true)),
            ("projector", &cfg.projector, Some(false)),
            ("llm", &cfg.llm, None),
        ] {
            // `metadata` follows symlinks: a dangling link is "not found", named here.
            let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
            match want_dir {
                Some(true) if !meta.is_dir() => {
                    return Err(bad(field, format!("{} is not a directory", path.display())))
                }
                Some(false) if !meta.is_file() => {
                    return Err(bad(field, format!("{} is not a file", path.display())))
                }
                _ => {}
            }
        }
        Ok(cfg)
    }

    /// Parses the JSON of a BlueLM-V `config.json` found in `dir`.
    pub fn from_json(dir: &Path, v: &Value) -> Result<VlmConfig> {
        if !v.is_object() {
            return Err(bad("config", "is not a JSON object"));
        }
        match v.get("model_type").and_then(Value::as_str) {
            Some(MODEL_TYPE) => {}
            other => {
                return Err(bad(
                    "model_type",
                    format!("{other:?} (a BlueLM-V directory says \"{MODEL_TYPE}\")"),
                ))
            }
        }
        let path = |field: &str| -> Result<PathBuf> {
            let s = v
                .get(field)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| bad(field, "missing or not a non-empty path string"))?;
            Ok(dir.join(s))
        };
        let image_token = match v.get("image_token") {
            None => "<image>".to_string(),
            Some(x) => x
                .as_str()
                .filter(|s| !s.is_empty() && s.len() <= 64)
                .ok_or_else(|| bad("image_token", "not a string of 1 to 64 bytes"))?
                .to_string(),
        };
        let vision_feature = match v.get("vision_feature") {
            None => VisionFeature::Last,
            Some(x) => x.as_str().and_then(VisionFeature::parse).ok_or_else(|| {
                bad(
                    "vision_feature",
                    format!("{x} (known: \"last\", \"second_last\")"),
                )
            })?,
        };
        let projector_ln_eps = match v.get("projector_ln_eps") {
            None => 1e-5,
            Some(x) => x
                .as_f64()
                .filter(|e| e.is_finite() && *e > 0.0 && *e < 1.0)
                .ok_or_else(|| bad("projector_ln_eps", format!("{x} is not in (0, 1)")))?
                as f32,
        };
        Ok(VlmConfig {
            dir: dir.to_path_buf(),
            vision: path("vision")?,
            projector: path("projector")?,
            llm: path("llm")?,
            image_token,
            vision_feature,
            projector_ln_eps,
            tiling: parse_tiling(v.get("tiling"))?,
        })
    }
}

fn parse_tiling(v: Option<&Value>) -> Result<VlmTiling> {
    let mut t = VlmTiling::default();
    let Some(v) = v else { return Ok(t) };
    if !v.is_object() {
        return Err(bad("tiling", "is not a JSON object"));
    }
    let uint = |k: &str| -> Result<Option<u32>> {
        v.get(k)
            .map(|x| {
                x.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad(&format!("tiling.{k}"), format!("{x} is not a u32")))
            })
            .transpose()
    };
    if let Some(r) = v.get("rule") {
        t.rule = r
            .as_str()
            .filter(|s| matches!(*s, "relaxed" | "llava-next"))
            .ok_or_else(|| bad("tiling.rule", format!("{r} (known: relaxed, llava-next)")))?
            .to_string();
    }
    if let Some(a) = v.get("alpha") {
        t.alpha = a
            .as_f64()
            .ok_or_else(|| bad("tiling.alpha", format!("{a} is not a number")))?;
    }
    if let Some(n) = uint("max_tiles")? {
        t.max_tiles = n;
    }
    if let Some(n) = uint("tile")? {
        t.tile = n;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok() -> Value {
        json!({"model_type": "bluelm_v", "vision": "vision", "projector": "p.safetensors",
               "llm": "llm.gguf", "tiling": {"rule": "llava-next", "max_tiles": 4}})
    }

    #[test]
    fn parses_with_defaults_and_relative_paths() {
        let c = VlmConfig::from_json(Path::new("/m"), &ok()).unwrap();
        assert_eq!(c.vision, Path::new("/m/vision"));
        assert_eq!(c.llm, Path::new("/m/llm.gguf"));
        assert_eq!(c.image_token, "<image>");
        assert_eq!(c.vision_feature, VisionFeature::Last);
        assert_eq!(
            c.tiling,
            VlmTiling {
                rule: "llava-next".into(),
                max_tiles: 4,
                ..VlmTiling::default()
            }
        );
    }

    #[test]
    fn refuses_bad_fields_by_name() {
        let cases = [
            ("model_type", json!("llama")),
            ("llm", json!(3)),
            ("image_token", json!("")),
            ("vision_feature", json!("first")),
            ("projector_ln_eps", json!(-1.0)),
            ("tiling", json!({"rule": "square"})),
            ("tiling", json!({"max_tiles": -2})),
        ];
        for (field, value) in cases {
            let mut v = ok();
            v[field] = value;
            let e = VlmConfig::from_json(Path::new("/m"), &v)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn missing_part_is_named() {
        let dir = std::env::temp_dir().join(format!("npurt-vlm-missing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), ok().to_string()).unwrap();
        std::fs::create_dir_all(dir.join("vision")).unwrap();
        let e = VlmConfig::load(&dir).unwrap_err().to_string();
        assert!(e.contains("p.safetensors"), "{e}");
        assert!(is_vlm_dir(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
