//! Seed inputs: small valid files of each format (the project's test-file writers and
//! the goldens), so mutations start from something every loader stage accepts.

use npurt_models::gguf::GgufValue;
use npurt_models::testfiles::{self, TinyLlama, TINY_CHAT_TEMPLATE};
use serde_json::json;
use std::path::{Path, PathBuf};

fn golden(rel: &str) -> PathBuf {
    crate::golden(rel)
}

fn read(rel: &str) -> Vec<u8> {
    let p = golden(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading the fuzz seed {}: {e}", p.display()))
}

/// GGUF seeds (the tiny llama, two sizes) and, per seed, the offsets of the fields a
/// mutation should aim at: the header counts, each metadata entry's key length, type id
/// and value (an array's element type and count), each tensor's name length, rank,
/// dimensions, type and data offset.
pub fn gguf() -> (Vec<Vec<u8>>, Vec<Vec<usize>>) {
    let models = [
        TinyLlama::default(),
        TinyLlama {
            layers: 1,
            ..TinyLlama::default()
        },
    ];
    let mut seeds = Vec::new();
    let mut fields = Vec::new();
    for (i, m) in models.iter().enumerate() {
        let mut w = m.gguf_writer();
        if i == 1 {
            // The second seed carries the golden SmolLM2 template.
            let t = String::from_utf8_lossy(&read("smollm2/chat_template.jinja")).into_owned();
            w.kv("tokenizer.chat_template", GgufValue::String(t));
        }
        let (bytes, layout) = w.build();
        let mut f = vec![layout.tensor_count_at, layout.kv_count_at];
        for (_, entry, value) in &layout.kvs {
            f.extend([*entry, value - 4, *value, value + 4]);
        }
        for (name, at) in &layout.tensor_infos {
            let rank_at = at + 8 + name.len();
            f.push(*at);
            f.push(rank_at);
            let rank = bytes
                .get(rank_at..rank_at + 4)
                .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
            let dims_at = rank_at + 4;
            f.extend((0..rank.min(4)).map(|k| dims_at + 8 * k));
            f.push(dims_at + 8 * rank.min(4)); // the ggml type
        }
        f.extend(layout.tensor_offset_fields.iter().map(|(_, at)| *at));
        f.retain(|&at| at < bytes.len());
        seeds.push(bytes);
        fields.push(f);
    }
    (seeds, fields)
}

/// safetensors seeds: every dtype the loader reads in one small file, and the tiny
/// llama's one-layer checkpoint.
pub fn safetensors() -> Vec<Vec<u8>> {
    let f32s: Vec<u8> = (0..6)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let mixed = testfiles::safetensors_bytes(&[
        ("a".into(), "F32", vec![2, 3], f32s),
        ("b".into(), "F16", vec![4], vec![0, 60, 0, 64, 0, 188, 0, 0]),
        (
            "c".into(),
            "BF16",
            vec![2, 2],
            vec![128, 63, 0, 64, 128, 191, 0, 0],
        ),
        ("d".into(), "F32", vec![], 1f32.to_le_bytes().to_vec()),
        ("e".into(), "F32", vec![0, 5], vec![]),
    ]);
    let tiny = TinyLlama {
        layers: 1,
        ..TinyLlama::default()
    };
    vec![mixed, testfiles::safetensors_f32(&tiny.hf_tensors())]
}

/// `config.json` seeds: the tiny llama's, SmolLM2-135M's shape, a llama3 rope-scaling
/// config, and the golden SigLIP vision config.
pub fn config_json() -> Vec<Vec<u8>> {
    let tiny = TinyLlama::default().hf_config();
    let smollm2 = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16", "rope_scaling": null
    });
    let mut llama3 = tiny.clone();
    llama3["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 256});
    llama3["eos_token_id"] = json!([2, 1]);
    vec![
        serde_json::to_vec_pretty(&tiny).unwrap(),
        serde_json::to_vec_pretty(&smollm2).unwrap(),
        serde_json::to_vec(&llama3).unwrap(),
        read("siglip_tiny/config.json"),
    ]
}

/// `tokenizer_config.json` seeds: the tiny llama's, SmolLM2's (golden), and the list
/// form of `chat_template` with an object-valued EOS.
pub fn tokenizer_config() -> Vec<Vec<u8>> {
    let tiny = json!({"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>", "lstrip": false},
        "chat_template": TINY_CHAT_TEMPLATE});
    let list = json!({"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|im_end|>",
        "chat_template": [{"name": "tool_use", "template": "{{ 'tools' }}"},
                          {"name": "default", "template": TINY_CHAT_TEMPLATE}]});
    vec![
        serde_json::to_vec(&tiny).unwrap(),
        read("smollm2/tokenizer_config.json"),
        serde_json::to_vec_pretty(&list).unwrap(),
    ]
}

/// A template in the style of recent instruct models: a namespace, a system-prompt
/// branch, loop variables, filters, string methods.
const RICH_TEMPLATE: &str = "{%- set ns = namespace(system='') -%}\
{%- for m in messages -%}{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] | trim -%}{%- endif -%}{%- endfor -%}\
{{ bos_token }}{%- if ns.system %}<|system|>{{ ns.system }}{{ eos_token }}{% endif -%}\
{%- for m in messages if m['role'] != 'system' -%}\
{%- if loop.index0 % 2 == 0 and m['role'] != 'user' -%}{{ raise_exception('roles must alternate') }}{%- endif -%}\
<|{{ m['role'] }}|>{{ m['content'].strip() | replace('\\n', ' ') }}{% if not loop.last %}{{ eos_token }}{% endif %}\
{%- endfor -%}{%- if add_generation_prompt %}<|assistant|>{% endif -%}";

/// Chat template seeds: SmolLM2's (golden), the tiny one, a richer one.
pub fn chat_templates() -> Vec<Vec<u8>> {
    vec![
        read("smollm2/chat_template.jinja"),
        TINY_CHAT_TEMPLATE.as_bytes().to_vec(),
        RICH_TEMPLATE.as_bytes().to_vec(),
    ]
}

/// Image seeds: the golden photos shrunk to thumbnails (about 24 pixels a side, so a
/// mutated file stays small and decodes fast) and re-encoded as PNG (RGB, grey, 16-bit
/// RGBA), JPEG and WebP (lossless).
pub fn images() -> Vec<Vec<u8>> {
    use image::{DynamicImage, ImageFormat};
    let mut out = Vec::new();
    for (i, name) in ["chelsea.png", "rocket.jpg", "coffee.png"]
        .iter()
        .enumerate()
    {
        let photo = image::load_from_memory(&read(&format!("images/{name}")))
            .unwrap_or_else(|e| panic!("decoding images/{name}: {e}"));
        let small = photo.thumbnail(24 + 4 * i as u32, 24);
        let variants: [(DynamicImage, ImageFormat); 3] = match i {
            0 => [
                (DynamicImage::ImageRgb8(small.to_rgb8()), ImageFormat::Png),
                (DynamicImage::ImageRgb8(small.to_rgb8()), ImageFormat::Jpeg),
                (
                    DynamicImage::ImageRgba8(small.to_rgba8()),
                    ImageFormat::WebP,
                ),
            ],
            1 => [
                (DynamicImage::ImageLuma8(small.to_luma8()), ImageFormat::Png),
                (DynamicImage::ImageRgb8(small.to_rgb8()), ImageFormat::Jpeg),
                (DynamicImage::ImageRgb8(small.to_rgb8()), ImageFormat::WebP),
            ],
            _ => [
                (
                    DynamicImage::ImageRgba16(small.to_rgba16()),
                    ImageFormat::Png,
                ),
                (
                    DynamicImage::ImageLuma8(small.to_luma8()),
                    ImageFormat::Jpeg,
                ),
                (DynamicImage::ImageRgb8(small.to_rgb8()), ImageFormat::Png),
            ],
        };
        for (img, format) in variants {
            let mut buf = std::io::Cursor::new(Vec::new());
            img.write_to(&mut buf, format)
                .unwrap_or_else(|e| panic!("encoding a {format:?} seed: {e}"));
            out.push(buf.into_inner());
        }
    }
    out
}

/// The BlueLM-V `config.json` of `scripts/make-vlm-tiny.sh`, one with only the required
/// fields, and one with LLaVA-NeXT tiling.
pub fn vlm_configs() -> Vec<Vec<u8>> {
    let full = json!({"model_type": "bluelm_v", "vision": "vision", "projector": "projector.safetensors",
        "llm": "llm.gguf", "image_token": "<image>", "vision_feature": "last",
        "projector_ln_eps": 1e-5,
        "tiling": {"rule": "relaxed", "alpha": 0.1, "max_tiles": 9, "tile": 384}});
    let minimal = json!({"model_type": "bluelm_v", "vision": "vision",
        "projector": "projector.safetensors", "llm": "llm.gguf"});
    let next = json!({"model_type": "bluelm_v", "vision": "vision", "projector": "projector.safetensors",
        "llm": "llm.gguf", "vision_feature": "second_last",
        "tiling": {"rule": "llava-next", "max_tiles": 4, "tile": 224}});
    [full, minimal, next]
        .iter()
        .map(|v| serde_json::to_vec_pretty(v).unwrap())
        .collect()
}

/// Lays out a BlueLM-V directory in `dir` as `scripts/make-vlm-tiny.sh` does, with the
/// tiny llama (not the 98 MB SmolLM2) as its LLM.
pub fn write_vlm_dir(dir: &Path) {
    let link = |target: PathBuf, name: &str| {
        let _ = std::fs::remove_file(dir.join(name));
        std::os::unix::fs::symlink(&target, dir.join(name))
            .unwrap_or_else(|e| panic!("linking {name} to {}: {e}", target.display()));
    };
    link(golden("siglip_tiny"), "vision");
    link(
        golden("vlm_tiny/projector.safetensors"),
        "projector.safetensors",
    );
    std::fs::write(dir.join("llm.gguf"), TinyLlama::default().gguf().0).expect("write llm.gguf");
    std::fs::write(dir.join("config.json"), &vlm_configs()[0]).expect("write config.json");
}
