//! Writers for synthetic test files: GGUF and safetensors files built in memory, and a
//! tiny llama checkpoint in both formats whose tensor values are known exactly.
//!
//! Used by this crate's unit tests and by the bad-input integration tests (which corrupt
//! these files in targeted ways, hence the byte layouts they return). They are not a way
//! to produce real checkpoints, and unlike the loaders they may panic on misuse.

use crate::gguf::{
    put_str, put_value, GgmlType, GgufArray, GgufValue, DEFAULT_ALIGNMENT, GGUF_MAGIC,
};
use crate::source::llama_tensor_shapes;
use crate::stream_write::{start_safetensors, SafetensorsEntry};
use crate::LlamaConfig;
use half::{bf16, f16};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh path under the system temp dir, unique per process and call.
pub fn temp_path(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("npurt-test-{}-{n}-{name}", std::process::id()))
}

// ---------------------------------------------------------------------------------------
// GGUF

/// Builds a GGUF file: metadata in insertion order, tensors laid out back to back at the
/// file's alignment.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    pub version: u32,
    kvs: Vec<(String, GgufValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

/// Where the fields of a built GGUF file are, for tests that corrupt them.
#[derive(Clone, Debug, Default)]
pub struct GgufLayout {
    /// The header's u64 tensor count and KV count.
    pub tensor_count_at: usize,
    pub kv_count_at: usize,
    /// Per metadata entry: key, start of the entry (the key's u64 length), start of the
    /// value (after the u32 type id; for arrays the element type, then the u64 count).
    pub kvs: Vec<(String, usize, usize)>,
    pub tensor_infos_at: usize,
    /// Per tensor: name and start of its info (the name's u64 length).
    pub tensor_infos: Vec<(String, usize)>,
    /// Per tensor: name and position of its u64 offset field.
    pub tensor_offset_fields: Vec<(String, usize)>,
    pub data_at: usize,
    /// Per tensor: name and absolute position of its data.
    pub tensor_data: Vec<(String, usize)>,
}

impl GgufLayout {
    /// Position of the value of metadata key `key`.
    pub fn value_at(&self, key: &str) -> usize {
        self.kvs
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no metadata key {key}"))
    }
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter {
            version: 3,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn kv(&mut self, key: &str, value: GgufValue) -> &mut Self {
        self.kvs.push((key.into(), value));
        self
    }

    /// Adds a tensor; `ne` is ggml order (innermost first), `data` its exact bytes.
    pub fn tensor(&mut self, name: &str, ne: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.into(), ne.to_vec(), ty, data));
        self
    }

    /// Removes a tensor by name (to build files that lack one).
    pub fn remove_tensor(&mut self, name: &str) -> &mut Self {
        self.tensors.retain(|t| t.0 != name);
        self
    }

    /// The alignment used for layout: `general.alignment` when it is a usable value (a
    /// test may set a bad one to check it is refused), else the default.
    fn alignment(&self) -> u64 {
        let a = self
            .kvs
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64());
        a.filter(|a| a.is_power_of_two() && *a <= 1 << 16)
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    pub fn build(&self) -> (Vec<u8>, GgufLayout) {
        let align = self.alignment() as usize;
        let mut b = Vec::new();
        let mut layout = GgufLayout::default();
        b.extend_from_slice(&GGUF_MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        layout.tensor_count_at = b.len();
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        layout.kv_count_at = b.len();
        b.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            let entry = b.len();
            put_str(&mut b, k);
            b.extend_from_slice(&v.type_id().to_le_bytes());
            layout.kvs.push((k.clone(), entry, b.len()));
            put_value(&mut b, v);
        }
        layout.tensor_infos_at = b.len();
        let mut offsets = Vec::new();
        let mut next = 0usize;
        for (name, ne, ty, data) in &self.tensors {
            layout.tensor_infos.push((name.clone(), b.len()));
            put_str(&mut b, name);
            b.extend_from_slice(&(ne.len() as u32).to_le_bytes());
            for d in ne {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.0.to_le_bytes());
            layout.tensor_offset_fields.push((name.clone(), b.len()));
            b.extend_from_slice(&(next as u64).to_le_bytes());
            offsets.push(next);
            next = (next + data.len()).next_multiple_of(align);
        }
        b.resize(b.len().next_multiple_of(align), 0);
        layout.data_at = b.len();
        for ((name, _, _, data), off) in self.tensors.iter().zip(offsets) {
            b.resize(layout.data_at + off, 0);
            layout.tensor_data.push((name.clone(), b.len()));
            b.extend_from_slice(data);
        }
        (b, layout)
    }
}

/// One Q8_0 block: f16 scale `d`, then 32 signed quants (x = d * q).
pub fn q8_0_block(d: f32, q: &[i8; 32]) -> Vec<u8> {
    let mut b = f16::from_f32(d).to_le_bytes().to_vec();
    b.extend(q.iter().map(|&x| x as u8));
    b
}

/// One Q4_1 block: f16 scale `d`, f16 min `m`, 32 4-bit quants (x = d * q + m); byte j
/// holds value j in its low nibble and value j + 16 in its high nibble.
pub fn q4_1_block(d: f32, m: f32, q: &[u8; 32]) -> Vec<u8> {
    let mut b = f16::from_f32(d).to_le_bytes().to_vec();
    b.extend_from_slice(&f16::from_f32(m).to_le_bytes());
    b.extend((0..16).map(|j| (q[j] & 0x0f) | (q[j + 16] << 4)));
    b
}

/// Element `(r, c)` of a synthetic tensor stored as `ty`, chosen so that the format
/// represents it exactly (each Q8_0/Q4_1 block's scale is a power of two).
pub fn pattern_value(ty: GgmlType, r: usize, c: usize) -> f32 {
    match ty {
        GgmlType::F32 => (r * 100 + c) as f32,
        GgmlType::F16 | GgmlType::BF16 => ((r * 7 + c) % 64) as f32,
        GgmlType::Q8_0 => 0.5 * ((r + c) % 100) as f32,
        GgmlType::Q4_1 => (c % 16) as f32 + (r % 8) as f32,
        other => panic!("no synthetic pattern for {other}"),
    }
}

/// The bytes of a `[rows, cols]` tensor of `pattern_value`s stored as `ty`.
pub fn pattern_bytes(ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for r in 0..rows {
        match ty {
            GgmlType::F32 => {
                (0..cols).for_each(|c| b.extend_from_slice(&pattern_value(ty, r, c).to_le_bytes()))
            }
            GgmlType::F16 => (0..cols).for_each(|c| {
                b.extend_from_slice(&f16::from_f32(pattern_value(ty, r, c)).to_le_bytes())
            }),
            GgmlType::BF16 => (0..cols).for_each(|c| {
                b.extend_from_slice(&bf16::from_f32(pattern_value(ty, r, c)).to_le_bytes())
            }),
            GgmlType::Q8_0 => {
                assert_eq!(cols % 32, 0, "Q8_0 rows are whole blocks");
                for blk in 0..cols / 32 {
                    let q: [i8; 32] = std::array::from_fn(|j| ((r + blk * 32 + j) % 100) as i8);
                    b.extend(q8_0_block(0.5, &q));
                }
            }
            GgmlType::Q4_1 => {
                assert_eq!(cols % 32, 0, "Q4_1 rows are whole blocks");
                for blk in 0..cols / 32 {
                    let q: [u8; 32] = std::array::from_fn(|j| ((blk * 32 + j) % 16) as u8);
                    b.extend(q4_1_block(1.0, (r % 8) as f32, &q));
                }
            }
            other => panic!("no synthetic pattern for {other}"),
        }
    }
    b
}

// ---------------------------------------------------------------------------------------
// safetensors

/// A safetensors file: u64 header length, JSON header, data. Tensors are
/// `(name, dtype name, shape, bytes)` laid out in the given order.
pub fn safetensors_bytes(tensors: &[(String, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let entries: Vec<SafetensorsEntry> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| SafetensorsEntry {
            name: name.clone(),
            dtype: dtype.to_string(),
            shape: shape.clone(),
            bytes: data.len() as u64,
        })
        .collect();
    let mut w = start_safetensors(Vec::new(), &entries).expect("writing to memory");
    for t in tensors {
        w.tensor(|o| o.write_all(&t.3)).expect("sizes agree");
    }
    w.finish().expect("every tensor written")
}

/// A safetensors file from an explicit header (for lying headers) and data section.
pub fn safetensors_raw(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut b = crate::stream_write::safetensors_header(header);
    b.extend_from_slice(data);
    b
}

/// F32 pattern tensors of the given shapes (1-D tensors are one row).
pub fn safetensors_f32(tensors: &[(String, Vec<usize>)]) -> Vec<u8> {
    let parts: Vec<_> = tensors
        .iter()
        .map(|(name, shape)| {
            let (rows, cols) = rows_cols(shape);
            (
                name.clone(),
                "F32",
                shape.clone(),
                pattern_bytes(GgmlType::F32, rows, cols),
            )
        })
        .collect();
    safetensors_bytes(&parts)
}

fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (1, *n),
        [rows @ .., cols] => (rows.iter().product(), *cols),
    }
}

pub fn write_json(path: &Path, v: &Value) -> std::io::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(v)?)
}

// ---------------------------------------------------------------------------------------
// A tiny llama

/// A tiny llama checkpoint: 2 layers, hidden 32, 2 query heads / 1 KV head of 16, MLP 64,
/// vocab 48, tied embeddings. In GGUF it mixes F32, Q8_0 and Q4_1 tensors.
#[derive(Clone, Debug)]
pub struct TinyLlama {
    pub vocab: usize,
    pub hidden: usize,
    pub inter: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Default for TinyLlama {
    fn default() -> Self {
        TinyLlama {
            vocab: 48,
            hidden: 32,
            inter: 64,
            layers: 2,
            heads: 2,
            kv_heads: 1,
            head_dim: 16,
        }
    }
}

pub const TINY_CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

impl TinyLlama {
    /// GGUF types of the tiny model's tensors (q is F32 and k Q4_1, so the row
    /// un-permutation is checked on both a plain and a block format).
    pub const EMBED_TYPE: GgmlType = GgmlType::Q8_0;
    pub const Q_TYPE: GgmlType = GgmlType::F32;
    pub const K_TYPE: GgmlType = GgmlType::Q4_1;
    pub const V_TYPE: GgmlType = GgmlType::Q8_0;
    pub const MATRIX_TYPE: GgmlType = GgmlType::Q4_1;

    /// Token strings: the three SmolLM specials, `t`, `3` and their merge `t3`, then
    /// `w6`, `w7`, ...
    pub fn tokens(&self) -> Vec<String> {
        let fixed = [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "t",
            "3",
            "t3",
        ];
        (0..self.vocab)
            .map(|i| {
                fixed
                    .get(i)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| format!("w{i}"))
            })
            .collect()
    }

    pub fn gguf_writer(&self) -> GgufWriter {
        let mut w = GgufWriter::new();
        let u32v = |x: usize| GgufValue::U32(x as u32);
        w.kv("general.architecture", GgufValue::String("llama".into()))
            .kv("general.name", GgufValue::String("tiny".into()))
            .kv("llama.block_count", u32v(self.layers))
            .kv("llama.context_length", u32v(256))
            .kv("llama.embedding_length", u32v(self.hidden))
            .kv("llama.feed_forward_length", u32v(self.inter))
            .kv("llama.attention.head_count", u32v(self.heads))
            .kv("llama.attention.head_count_kv", u32v(self.kv_heads))
            .kv("llama.rope.freq_base", GgufValue::F32(100000.0))
            .kv(
                "llama.attention.layer_norm_rms_epsilon",
                GgufValue::F32(1e-5),
            )
            .kv("llama.rope.dimension_count", u32v(self.head_dim))
            .kv("llama.vocab_size", u32v(self.vocab))
            .kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
            .kv("tokenizer.ggml.pre", GgufValue::String("smollm".into()))
            .kv(
                "tokenizer.ggml.tokens",
                GgufValue::Array(GgufArray::String(self.tokens())),
            )
            .kv(
                "tokenizer.ggml.token_type",
                GgufValue::Array(GgufArray::I32(
                    (0..self.vocab).map(|i| if i < 3 { 3 } else { 1 }).collect(),
                )),
            )
            .kv(
                "tokenizer.ggml.merges",
                GgufValue::Array(GgufArray::String(vec!["t 3".into()])),
            )
            .kv("tokenizer.ggml.bos_token_id", u32v(1))
            .kv("tokenizer.ggml.eos_token_id", u32v(2))
            .kv("tokenizer.ggml.unknown_token_id", u32v(0))
            .kv("tokenizer.ggml.padding_token_id", u32v(2))
            .kv("tokenizer.ggml.add_bos_token", GgufValue::Bool(false))
            .kv(
                "tokenizer.chat_template",
                GgufValue::String(TINY_CHAT_TEMPLATE.into()),
            );

        let matrix = |w: &mut GgufWriter, name: &str, ty: GgmlType, rows: usize, cols: usize| {
            w.tensor(
                name,
                &[cols as u64, rows as u64],
                ty,
                pattern_bytes(ty, rows, cols),
            );
        };
        let (h, q, kv, i) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.inter,
        );
        matrix(&mut w, "token_embd.weight", Self::EMBED_TYPE, self.vocab, h);
        for l in 0..self.layers {
            matrix(
                &mut w,
                &format!("blk.{l}.attn_q.weight"),
                Self::Q_TYPE,
                q,
                h,
            );
            matrix(
                &mut w,
                &format!("blk.{l}.attn_k.weight"),
                Self::K_TYPE,
                kv,
                h,
            );
            matrix(
                &mut w,
                &format!("blk.{l}.attn_v.weight"),
                Self::V_TYPE,
                kv,
                h,
            );
            matrix(
                &mut w,
                &format!("blk.{l}.attn_output.weight"),
                Self::MATRIX_TYPE,
                h,
                q,
            );
            matrix(
                &mut w,
                &format!("blk.{l}.ffn_gate.weight"),
                Self::MATRIX_TYPE,
                i,
                h,
            );
            matrix(
                &mut w,
                &format!("blk.{l}.ffn_up.weight"),
                Self::MATRIX_TYPE,
                i,
                h,
            );
            matrix(
                &mut w,
                &format!("blk.{l}.ffn_down.weight"),
                Self::MATRIX_TYPE,
                h,
                i,
            );
            for norm in ["attn_norm", "ffn_norm"] {
                w.tensor(
                    &format!("blk.{l}.{norm}.weight"),
                    &[h as u64],
                    GgmlType::F32,
                    pattern_bytes(GgmlType::F32, 1, h),
                );
            }
        }
        w.tensor(
            "output_norm.weight",
            &[h as u64],
            GgmlType::F32,
            pattern_bytes(GgmlType::F32, 1, h),
        );
        w
    }

    /// The tiny model as a GGUF file, and where its fields are.
    pub fn gguf(&self) -> (Vec<u8>, GgufLayout) {
        self.gguf_writer().build()
    }

    /// The HF `config.json` of the tiny model.
    pub fn hf_config(&self) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": self.vocab, "hidden_size": self.hidden, "intermediate_size": self.inter,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
            "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2
        })
    }

    /// HF names and shapes of the tensors `config` implies.
    pub fn hf_tensors_for(config: &Value) -> Vec<(String, Vec<usize>)> {
        let cfg = LlamaConfig::from_hf_json(config).expect("test config is valid");
        llama_tensor_shapes(&cfg)
    }

    pub fn hf_tensors(&self) -> Vec<(String, Vec<usize>)> {
        Self::hf_tensors_for(&self.hf_config())
    }

    /// A WordLevel `tokenizer.json` over `tokens()` (enough for loading tests).
    pub fn tokenizer_json(&self) -> Value {
        let vocab: serde_json::Map<String, Value> = self
            .tokens()
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, json!(i)))
            .collect();
        json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<|endoftext|>"}
        })
    }

    /// Writes an HF model directory: config.json, model.safetensors (F32 patterns),
    /// tokenizer.json and tokenizer_config.json (with the chat template).
    pub fn write_hf_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        write_json(&dir.join("config.json"), &self.hf_config())?;
        std::fs::write(
            dir.join("model.safetensors"),
            safetensors_f32(&self.hf_tensors()),
        )?;
        write_json(&dir.join("tokenizer.json"), &self.tokenizer_json())?;
        let tok_cfg = json!({"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>", "lstrip": false}, "chat_template": TINY_CHAT_TEMPLATE});
        write_json(&dir.join("tokenizer_config.json"), &tok_cfg)
    }
}
