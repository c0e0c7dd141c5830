//! Opening a model by path: a `.gguf` file or an HF directory. Also what both loaders
//! share: memory-mapping a file, reading a JSON file, and checking a checkpoint's tensor
//! shapes against its config.

use crate::tokenizer::{self, Tokenizer};
use crate::{gguf, hf_dir};
use crate::{ChatTemplate, LlamaConfig, ModelError, Result, WeightStore};
use memmap2::Mmap;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// Everything a loaded checkpoint provides, whatever its format.
pub struct ModelSource {
    pub config: LlamaConfig,
    pub weights: WeightStore,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// A human-readable description (file name, format, tensor count).
    pub description: String,
}

impl ModelSource {
    /// Opens a GGUF file (by `.gguf` extension or by its magic) or an HF model directory
    /// (config.json, safetensors weights, tokenizer.json, tokenizer_config.json).
    pub fn open(path: &Path) -> Result<ModelSource> {
        let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
        if meta.is_dir() {
            open_hf_dir(path)
        } else if !meta.is_file() {
            Err(not_regular(path, &meta))
        } else if has_gguf_extension(path) || starts_with_gguf_magic(path)? {
            open_gguf(path)
        } else {
            Err(ModelError::BadFormat {
                file: path.display().to_string(),
                format: "GGUF file or HF model directory",
                detail:
                    "neither a .gguf file, nor a file starting with the GGUF magic, nor a directory"
                        .into(),
            })
        }
    }
}

fn has_gguf_extension(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn starts_with_gguf_magic(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = open_regular(path)?;
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(magic == gguf::GGUF_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(io_error(path, e)),
    }
}

fn open_gguf(path: &Path) -> Result<ModelSource> {
    let (config, weights, file) = gguf::load(path)?;
    let parts = file.tokenizer_parts()?;
    let tokenizer = tokenizer::from_bpe_parts(&parts)?;
    let chat_template = match file.get_str("tokenizer.chat_template") {
        Some(src) => {
            let bos = file.token_string(parts.bos_token_id).unwrap_or_default();
            let eos = file.token_string(parts.eos_token_id).unwrap_or_default();
            Some(ChatTemplate::new(src, bos, eos)?)
        }
        None => None,
    };
    let description = format!("{} ({})", display_name(path), file.summary());
    Ok(ModelSource {
        config,
        weights,
        tokenizer,
        chat_template,
        description,
    })
}

fn open_hf_dir(dir: &Path) -> Result<ModelSource> {
    let (config, weights) = hf_dir::load(dir)?;
    let tok_path = dir.join("tokenizer.json");
    require_file(&tok_path)?;
    let tokenizer = tokenizer::from_file(&tok_path)?;
    let chat_template = hf_chat_template(dir)?;
    let description = format!(
        "{} (safetensors, {})",
        display_name(dir),
        dtype_summary(&weights)
    );
    Ok(ModelSource {
        config,
        weights,
        tokenizer,
        chat_template,
        description,
    })
}

/// The chat template of an HF directory: `tokenizer_config.json`'s `chat_template` (a
/// string, or a list of `{name, template}` of which "default" is the one), else a
/// `chat_template.jinja` file (what recent transformers versions save). BOS/EOS strings
/// come from `tokenizer_config.json`.
fn hf_chat_template(dir: &Path) -> Result<Option<ChatTemplate>> {
    let cfg_path = dir.join("tokenizer_config.json");
    // `exists`: a tokenizer_config.json that is a FIFO or a directory is an error
    // (`read_json` names it), not silently "no template".
    let tok_cfg = if cfg_path.exists() {
        read_json(&cfg_path)?
    } else {
        Value::Null
    };
    let source = match tok_cfg.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    };
    let jinja = dir.join("chat_template.jinja");
    let source = match source {
        Some(s) => Some(s),
        None if jinja.exists() => {
            let mut text = String::new();
            open_regular(&jinja)?
                .read_to_string(&mut text)
                .map_err(|e| io_error(&jinja, e))?;
            Some(text)
        }
        None => None,
    };
    let Some(source) = source else {
        return Ok(None);
    };
    let bos = special_token(&tok_cfg, "bos_token");
    let eos = special_token(&tok_cfg, "eos_token");
    Ok(Some(ChatTemplate::new(source, bos, eos)?))
}

/// A special token in `tokenizer_config.json`: a string or an `{"content": ...}` object.
fn special_token(tok_cfg: &Value, key: &str) -> String {
    match tok_cfg.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        None => String::new(),
    }
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// E.g. "272 tensors: f32 x200, bf16 x72".
pub fn dtype_summary(w: &WeightStore) -> String {
    let mut counts = BTreeMap::new();
    let mut total = 0;
    for name in w.names() {
        if let Ok(f) = w.fact(name) {
            *counts.entry(f.dtype).or_insert(0usize) += 1;
            total += 1;
        }
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let parts: Vec<String> = counts.iter().map(|(d, n)| format!("{d} x{n}")).collect();
    format!("{total} tensors: {}", parts.join(", "))
}

// ---------------------------------------------------------------------------------------
// Shared by the loaders

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `Io` (not found) naming `path` if it does not exist, `NotRegularFile` if it is no
/// regular file (a FIFO, device, socket or directory).
pub(crate) fn require_file(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(meta) => Err(not_regular(path, &meta)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(io_error(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        )),
        Err(e) => Err(io_error(path, e)),
    }
}

/// What `meta` is, for [`ModelError::NotRegularFile`].
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "named pipe";
        } else if t.is_socket() {
            return "socket";
        } else if t.is_block_device() {
            return "block device";
        } else if t.is_char_device() {
            return "character device";
        }
    }
    "special file"
}

fn not_regular(path: &Path, meta: &std::fs::Metadata) -> ModelError {
    ModelError::NotRegularFile {
        path: path.to_path_buf(),
        kind: file_kind(meta),
    }
}

/// Opens a model file for reading. Anything but a regular file (after symlinks) is
/// refused first: `open` on a named pipe blocks until a writer comes, forever if none
/// does, and `/dev/zero` would read as an endless file.
pub(crate) fn open_regular(path: &Path) -> Result<File> {
    require_file(path)?;
    File::open(path).map_err(|e| io_error(path, e))
}

/// Memory-maps a file read-only.
pub(crate) fn map_file(path: &Path) -> Result<Arc<Mmap>> {
    let file = open_regular(path)?;
    // SAFETY: the mapping is read-only and every access is bounds-checked against its
    // length. Like every mmap-based loader, this assumes no other process truncates or
    // rewrites the file while it is mapped.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| io_error(path, e))?;
    Ok(Arc::new(map))
}

/// JSON configs are small; anything bigger than this is not a config.
const MAX_JSON_BYTES: u64 = 64 << 20;

/// Reads and parses a JSON file; errors name the file.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    require_file(path)?;
    let len = std::fs::metadata(path)
        .map_err(|e| io_error(path, e))?
        .len();
    if len > MAX_JSON_BYTES {
        return Err(ModelError::BadFormat {
            file: path.display().to_string(),
            format: "JSON",
            detail: format!("{len} bytes is more than the {MAX_JSON_BYTES}-byte limit"),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| ModelError::BadFormat {
        file: path.display().to_string(),
        format: "JSON",
        detail: e.to_string(),
    })
}

/// Every tensor a LLaMA-family checkpoint with this config must have, under its HF
/// name, with the row-major shape the config implies.
pub fn llama_tensor_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, q, kv, inter, vocab) = (
        cfg.hidden_size,
        cfg.q_width(),
        cfg.kv_width(),
        cfg.intermediate_size,
        cfg.vocab_size,
    );
    let mut v: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![vocab, h])];
    if cfg.embed_layer_norm.is_some() {
        v.push(("model.embed_layer_norm.weight".into(), vec![h]));
        v.push(("model.embed_layer_norm.bias".into(), vec![h]));
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        v.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        v.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        if cfg.attention_bias {
            v.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            v.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            v.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            v.push((format!("{p}.self_attn.o_proj.bias"), vec![h]));
        }
        v.push((format!("{p}.mlp.gate_proj.weight"), vec![inter, h]));
        v.push((format!("{p}.mlp.up_proj.weight"), vec![inter, h]));
        v.push((format!("{p}.mlp.down_proj.weight"), vec![h, inter]));
        v.push((format!("{p}.input_layernorm.weight"), vec![h]));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
    }
    v.push(("model.norm.weight".into(), vec![h]));
    if !cfg.tie_word_embeddings {
        v.push(("lm_head.weight".into(), vec![vocab, h]));
    }
    v
}

/// Checks that every tensor the config implies is present with the right shape
/// (`MissingTensor` / `ShapeMismatch` naming it). A tied checkpoint that still stores
/// `lm_head.weight` must store it with the right shape too.
pub fn check_llama_shapes(cfg: &LlamaConfig, w: &WeightStore) -> Result<()> {
    for (name, shape) in llama_tensor_shapes(cfg) {
        w.expect_shape(&name, &shape)?;
    }
    if cfg.tie_word_embeddings && w.contains("lm_head.weight") {
        w.expect_shape("lm_head.weight", &[cfg.vocab_size, cfg.hidden_size])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testfiles::{temp_path, write_json, TinyLlama};
    use serde_json::json;

    #[test]
    fn hf_dir_opens_with_tokenizer_and_chat_template() {
        let dir = temp_path("tiny_hf_source");
        TinyLlama::default().write_hf_dir(&dir).unwrap();
        let src = ModelSource::open(&dir).unwrap();
        let tmpl = src.chat_template.as_ref().expect("chat template");
        assert_eq!(
            (tmpl.bos_token.as_str(), tmpl.eos_token.as_str()),
            ("<|im_start|>", "<|im_end|>")
        );
        assert_eq!(src.tokenizer.get_vocab_size(false), 48);
        assert!(
            src.description
                .ends_with("(safetensors, 20 tensors: f32 x20)"),
            "{}",
            src.description
        );

        // A list of named templates: "default" is the one.
        let tok_cfg = json!({"bos_token": {"content": "B"}, "eos_token": "E",
                             "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "y"}]});
        write_json(&dir.join("tokenizer_config.json"), &tok_cfg).unwrap();
        let tmpl = hf_chat_template(&dir).unwrap().unwrap();
        assert_eq!(
            (tmpl.bos_token.as_str(), tmpl.eos_token.as_str()),
            ("B", "E")
        );

        std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
        let err = ModelSource::open(&dir).err().expect("no tokenizer.json");
        assert!(
            matches!(&err, ModelError::Io { path, .. } if path.ends_with("tokenizer.json")),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn gguf_opens_with_tokenizer_and_chat_template() {
        let path = temp_path("tiny_source.gguf");
        std::fs::write(&path, TinyLlama::default().gguf().0).unwrap();
        let src = ModelSource::open(&path).unwrap();
        std::fs::remove_file(&path).ok();
        let tmpl = src.chat_template.as_ref().expect("chat template");
        assert_eq!(
            (tmpl.bos_token.as_str(), tmpl.eos_token.as_str()),
            ("<|im_start|>", "<|im_end|>")
        );
        assert_eq!(src.tokenizer.get_vocab_size(true), 48);
        assert!(
            src.description
                .ends_with(".gguf (GGUF v3, 20 tensors: q4_1 x10, f32 x7, q8_0 x3)"),
            "{}",
            src.description
        );
    }

    #[test]
    fn missing_paths_and_other_files_are_named() {
        let p = temp_path("does_not_exist.gguf");
        assert!(matches!(ModelSource::open(&p), Err(ModelError::Io { path, .. }) if path == p));
        let p = temp_path("not_a_model.bin");
        std::fs::write(&p, b"hello world").unwrap();
        assert!(matches!(
            ModelSource::open(&p),
            Err(ModelError::BadFormat { .. })
        ));
        std::fs::remove_file(&p).ok();
    }
}
