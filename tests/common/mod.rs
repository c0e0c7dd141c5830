//! Shared helpers for npurt's integration tests: locating `../shared/golden` and the
//! fetched model, reading golden tensors, and the tolerances the golden README states.

use std::path::{Path, PathBuf};

/// The project root (the workspace directory).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `../shared/golden` relative to the project root. Panics with a clear message if it is
/// missing: golden tests fail, they never skip.
pub fn golden_dir() -> PathBuf {
    let dir = project_root().join("../shared/golden");
    assert!(
        dir.join("README.md").is_file(),
        "golden data not found at {} (expected ../shared/golden relative to the project root); \
         golden tests cannot run without it",
        dir.display()
    );
    dir
}

pub fn golden(rel: &str) -> PathBuf {
    golden_dir().join(rel)
}

pub fn read_json(rel: &str) -> serde_json::Value {
    let p = golden(rel);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("parsing {}: {e}", p.display()))
}

/// Token ids from a golden JSON array (`prompt_ids`, `new_ids`, `ids`, ...).
pub fn golden_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array of ids, got {v}"))
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// The fetched SmolLM2 GGUF (`scripts/fetch-model.sh`). Panics with the fix if missing.
pub fn smollm2_gguf() -> PathBuf {
    let p = project_root().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-model.sh (the README's test command does)",
        p.display()
    );
    p
}

/// SmolLM2's LLaMA graph of `rows` rows (a prefill chunk, or 1: decode) as the runtime
/// compiles it at `policy`, over a 2048-position context.
pub fn smollm2_graph(
    rows: usize,
    logits: npurt_models::llama::LogitsMode,
    input: npurt_models::llama::InputKind,
    policy: npurt_graph::PrecisionPolicy,
) -> npurt_graph::Graph {
    llama_graph(&smollm2_gguf(), rows, logits, input, policy)
}

/// A small GQA LLaMA shape with head width 16 (8 rotated pairs per head), 2 layers.
pub fn small_llama_shape(vocab: usize, tied: bool) -> npurt_models::random_llama::LlamaShape {
    npurt_models::random_llama::LlamaShape {
        hidden: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: None,
        mlp: 128,
        vocab,
        tied,
        context: 256,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
    }
}

/// The LLaMA graph of the model at `path`, as [`smollm2_graph`] builds SmolLM2's.
pub fn llama_graph(
    path: &Path,
    rows: usize,
    logits: npurt_models::llama::LogitsMode,
    input: npurt_models::llama::InputKind,
    policy: npurt_graph::PrecisionPolicy,
) -> npurt_graph::Graph {
    let src = npurt_models::ModelSource::open(path).unwrap();
    let stored = src.weights.stored_dtypes();
    let mut g = npurt_models::llama::build(
        &src.config,
        &npurt_models::llama::LlamaGraphOptions {
            rows,
            cache_rows: 2048 + rows - 1,
            logits,
            input,
            taps: false,
        },
    )
    .unwrap();
    npurt_graph::passes::Pipeline::compile(policy, Box::new(move |n| stored.get(n).copied()))
        .run(&mut g)
        .unwrap();
    g
}

/// Reads a golden safetensors file into (name -> (shape, f32 or i32 values as f64-free vecs)).
pub struct GoldenTensors {
    bytes: Vec<u8>,
}

impl GoldenTensors {
    pub fn open(rel: &str) -> Self {
        let p = golden(rel);
        GoldenTensors {
            bytes: std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())),
        }
    }
    fn view(&self, name: &str) -> safetensors::tensor::TensorView<'_> {
        let st =
            safetensors::SafeTensors::deserialize(&self.bytes).expect("golden safetensors parse");
        let v = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("golden tensor {name} missing"));
        safetensors::tensor::TensorView::new(v.dtype(), v.shape().to_vec(), v.data()).unwrap()
    }
    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let v = self.view(name);
        assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name} is not f32");
        (
            v.shape().to_vec(),
            v.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }
    pub fn i32(&self, name: &str) -> (Vec<usize>, Vec<i32>) {
        let v = self.view(name);
        assert_eq!(v.dtype(), safetensors::Dtype::I32, "{name} is not i32");
        (
            v.shape().to_vec(),
            v.data()
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }
}

/// The README's relative tolerance: `max abs(ours - ref) <= rel * max abs(ref)`.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Max minus min of a logit row (the README's logits tolerance is relative to it).
pub fn logit_range(v: &[f32]) -> f32 {
    v.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        - v.iter().copied().fold(f32::INFINITY, f32::min)
}

/// `logsumexp` of a logit row, in f64.
pub fn logsumexp(v: &[f32]) -> f64 {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

/// A BlueLM-V model directory for vlm_tiny (golden README section 4), written by
/// `scripts/make-vlm-tiny.sh` (the script the README and the demo use); `edit` changes
/// its config before the test loads it. A fresh directory per call.
pub fn vlm_tiny_dir(edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = npurt_models::testfiles::temp_path("vlm_tiny");
    smollm2_gguf();
    let status = std::process::Command::new("bash")
        .arg(project_root().join("scripts/make-vlm-tiny.sh"))
        .arg(&dir)
        .status()
        .expect("running scripts/make-vlm-tiny.sh");
    assert!(status.success(), "scripts/make-vlm-tiny.sh failed");
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config.json")).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).expect("writing config.json");
    dir
}

/// The loader fuzzer (its own directory: it is a tool as well as a test helper).
#[path = "../fuzz/mod.rs"]
pub mod fuzz;
