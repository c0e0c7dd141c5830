//! Bad inputs: truncated, lying and corrupted model files and absurd configs must come
//! back as typed errors whose message names the problem, never as a panic or an
//! allocation sized by a hostile header.
//!
//! The files are synthetic (`npurt_models::testfiles`): a tiny llama in GGUF and in HF
//! safetensors form, corrupted at known positions.

use npurt_graph::SeededRng;
use npurt_models::gguf::{self, GgmlType, GgufArray, GgufFile, GgufValue};
use npurt_models::hf_dir;
use npurt_models::testfiles::{
    safetensors_f32, safetensors_raw, temp_path, write_json, GgufLayout, GgufWriter, TinyLlama,
};
use npurt_models::{ModelError, ModelSource};
use serde_json::{json, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// A temp file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let p = temp_path(name);
        std::fs::write(&p, bytes).expect("write temp file");
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

/// A temp directory holding the tiny llama in HF form, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn tiny_hf(name: &str) -> Self {
        let d = TempDir(temp_path(name));
        TinyLlama::default()
            .write_hf_dir(&d.0)
            .expect("write tiny HF dir");
        d
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
    fn edit_config(&self, edit: impl FnOnce(&mut Value)) {
        let mut cfg = TinyLlama::default().hf_config();
        edit(&mut cfg);
        write_json(&self.path("config.json"), &cfg).expect("write config");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn tiny_gguf() -> (Vec<u8>, GgufLayout) {
    TinyLlama::default().gguf()
}

fn put_u64(b: &mut [u8], at: usize, x: u64) {
    b[at..at + 8].copy_from_slice(&x.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, x: u32) {
    b[at..at + 4].copy_from_slice(&x.to_le_bytes());
}

/// Loads `bytes` as a GGUF file through the full loader; the error it must give.
fn gguf_err(bytes: &[u8]) -> ModelError {
    let f = TempFile::new("bad.gguf", bytes);
    match gguf::load(&f.0) {
        Ok(_) => panic!("a corrupt GGUF loaded"),
        Err(e) => e,
    }
}

fn hf_err(dir: &Path) -> ModelError {
    match hf_dir::load(dir) {
        Ok(_) => panic!("a corrupt HF dir loaded"),
        Err(e) => e,
    }
}

fn assert_mentions(err: &ModelError, needles: &[&str]) {
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} should mention {n:?}");
    }
}

// ---------------------------------------------------------------------------------------
// GGUF

#[test]
fn gguf_truncated_anywhere_is_an_error() {
    let (bytes, layout) = tiny_gguf();
    let cuts = [
        ("empty", 0, None),
        ("inside the magic", 3, None),
        ("inside the header", 10, Some("tensor_count")),
        ("inside the first key", layout.kvs[0].1 + 4, None),
        (
            "inside the token list",
            layout.value_at("tokenizer.ggml.tokens") + 40,
            None,
        ),
        (
            "inside the tensor infos",
            layout.tensor_infos[3].1 + 5,
            None,
        ),
        (
            "inside the data",
            layout.data_at + 5,
            Some("data of tensor `"),
        ),
        (
            "one byte short",
            bytes.len() - 1,
            Some("data of tensor `output_norm.weight`"),
        ),
    ];
    for (what, at, needle) in cuts {
        let err = gguf_err(&bytes[..at]);
        assert!(
            matches!(
                err,
                ModelError::Truncated { .. }
                    | ModelError::LyingHeader { .. }
                    | ModelError::BadFormat { .. }
            ),
            "cut {what}: {err}"
        );
        assert_mentions(&err, &["bad.gguf"]);
        if let Some(n) = needle {
            assert_mentions(&err, &[n]);
        }
    }
    // Past the header, a cut is a truncation or a count that no longer fits, never a
    // format error.
    let err = gguf_err(&bytes[..layout.data_at + 5]);
    assert!(matches!(err, ModelError::Truncated { .. }), "{err}");
}

#[test]
fn gguf_tensor_offset_beyond_the_file_names_the_tensor() {
    let (bytes, layout) = tiny_gguf();
    let (name, at) = layout.tensor_offset_fields.last().cloned().unwrap();
    for offset in [1u64 << 40, u64::MAX - 31] {
        let mut b = bytes.clone();
        put_u64(&mut b, at, offset);
        let err = gguf_err(&b);
        assert!(matches!(err, ModelError::Truncated { .. }), "{err}");
        assert_mentions(&err, &[&format!("`{name}`")]);
    }
    // A misaligned offset is a lie about the layout.
    let mut b = bytes.clone();
    put_u64(&mut b, at, 33);
    let err = gguf_err(&b);
    assert!(matches!(err, ModelError::LyingHeader { .. }), "{err}");
    assert_mentions(&err, &[&format!("`{name}`"), "alignment"]);
}

#[test]
fn gguf_lying_tensor_count_is_refused_before_allocating() {
    let (bytes, layout) = tiny_gguf();
    for count in [1u64 << 40, u64::MAX] {
        let mut b = bytes.clone();
        put_u64(&mut b, layout.tensor_count_at, count);
        let err = gguf_err(&b);
        assert!(matches!(err, ModelError::LyingHeader { .. }), "{err}");
        assert_mentions(&err, &["tensor_count"]);
    }
}

#[test]
fn gguf_lying_kv_count_is_refused_before_allocating() {
    let (bytes, layout) = tiny_gguf();
    for count in [1u64 << 40, u64::MAX] {
        let mut b = bytes.clone();
        put_u64(&mut b, layout.kv_count_at, count);
        let err = gguf_err(&b);
        assert!(matches!(err, ModelError::LyingHeader { .. }), "{err}");
        assert_mentions(&err, &["kv_count"]);
    }
}

#[test]
fn gguf_lying_string_lengths_are_refused() {
    let (bytes, layout) = tiny_gguf();
    // The first metadata key's length.
    let mut b = bytes.clone();
    put_u64(&mut b, layout.kvs[0].1, 1 << 62);
    let err = gguf_err(&b);
    assert!(matches!(err, ModelError::LyingHeader { .. }), "{err}");
    assert_mentions(&err, &["length of key of metadata entry #0"]);

    // A string value's length.
    let mut b = bytes.clone();
    put_u64(&mut b, layout.value_at("general.name"), 1 << 62);
    let err = gguf_err(&b);
    assert!(matches!(err, ModelError::LyingHeader { .. }), "{err}");
    assert_mentions(&err, &["general.name"]);

    // A tensor name's length.
    let mut b = bytes.clone();
    put_u64(&mut b, layout.tensor_infos[0].1, 1 << 62);
    let err = gguf_err(&b);
    assert!(matches!(err, ModelError::LyingHeader { .. }), "{err}");
    assert_mentions(&err, &["name of tensor #0"]);
}

#[test]
fn gguf_lying_array_length_is_refused() {
    let (bytes, layout) = tiny_gguf();
    // Array value: u32 element type, then the u64 count.
    let count_at = layout.value_at("tokenizer.ggml.tokens") + 4;
    for count in [1u64 << 61, u64::MAX] {
        let mut b = bytes.clone();
        put_u64(&mut b, count_at, count);
        let err = gguf_err(&b);
        assert!(matches!(err, ModelError::LyingHeader { .. }), "{err}");
        assert_mentions(
            &err,
            &["array length of metadata key `tokenizer.ggml.tokens`"],
        );
    }
}

#[test]
fn gguf_bad_magic_and_version_are_format_errors() {
    let (bytes, _) = tiny_gguf();
    let mut b = bytes.clone();
    b[..4].copy_from_slice(b"GGML");
    let err = gguf_err(&b);
    assert!(matches!(err, ModelError::BadFormat { .. }), "{err}");
    assert_mentions(&err, &["magic"]);

    for (version, needle) in [
        (1u32, "v1"),
        (7, "version 7"),
        (3u32.swap_bytes(), "big-endian"),
    ] {
        let mut b = bytes.clone();
        put_u32(&mut b, 4, version);
        let err = gguf_err(&b);
        assert!(matches!(err, ModelError::BadFormat { .. }), "{err}");
        assert_mentions(&err, &[needle]);
    }
}

#[test]
fn gguf_deeply_nested_arrays_are_refused() {
    let mut a = GgufArray::U8(vec![1]);
    for _ in 0..1000 {
        a = GgufArray::Array(vec![a]);
    }
    let mut w = GgufWriter::new();
    w.kv("bomb", GgufValue::Array(a));
    let err = GgufFile::parse(&w.build().0, "nested.gguf").unwrap_err();
    assert!(matches!(err, ModelError::LyingHeader { .. }), "{err}");
    assert_mentions(&err, &["bomb", "nested"]);
}

#[test]
fn gguf_unknown_value_type_names_the_key() {
    let (bytes, layout) = tiny_gguf();
    let mut b = bytes.clone();
    let (key, _, value_at) = layout.kvs[1].clone();
    put_u32(&mut b, value_at - 4, 99);
    let err = gguf_err(&b);
    assert!(matches!(err, ModelError::LyingHeader { .. }), "{err}");
    assert_mentions(&err, &[&key, "unknown value type 99"]);
}

#[test]
fn gguf_unsupported_tensor_type_names_the_tensor() {
    let tiny = TinyLlama::default();
    let mut w = tiny.gguf_writer();
    w.tensor(
        "output.weight",
        &[256, tiny.vocab as u64],
        GgmlType::Q6_K,
        vec![0; 210 * tiny.vocab],
    );
    let err = gguf_err(&w.build().0);
    assert!(
        matches!(&err, ModelError::UnsupportedDType { tensor, .. } if tensor == "output.weight"),
        "{err}"
    );
    assert_mentions(&err, &["q6_k"]);

    // An id no ggml version has: the layout cannot even be checked.
    let (mut b, layout) = tiny.gguf();
    let (name, offset_at) = layout.tensor_offset_fields[0].clone();
    put_u32(&mut b, offset_at - 4, 1000);
    let err = gguf_err(&b);
    assert!(
        matches!(&err, ModelError::UnsupportedDType { tensor, .. } if *tensor == name),
        "{err}"
    );
    assert_mentions(&err, &["ggml type 1000"]);
}

#[test]
fn gguf_shape_disagreeing_with_config_names_the_tensor() {
    let (mut b, layout) = tiny_gguf();
    put_u32(&mut b, layout.value_at("llama.feed_forward_length"), 96);
    let err = gguf_err(&b);
    assert!(
        matches!(&err, ModelError::ShapeMismatch { tensor, .. } if tensor == "model.layers.0.mlp.gate_proj.weight"),
        "{err}"
    );
    assert_mentions(&err, &["[96, 32]", "[64, 32]"]);

    // A q projection whose rows are not whole heads (so cannot be un-permuted) is
    // reported against the config's shape, not as a permutation problem.
    let mut w = TinyLlama::default().gguf_writer();
    w.remove_tensor("blk.0.attn_q.weight");
    w.tensor(
        "blk.0.attn_q.weight",
        &[32, 24],
        GgmlType::F32,
        vec![0; 32 * 24 * 4],
    );
    let err = gguf_err(&w.build().0);
    assert!(
        matches!(&err, ModelError::ShapeMismatch { tensor, expected, found } if tensor == "model.layers.0.self_attn.q_proj.weight" && expected == &[32, 32] && found == &[24, 32]),
        "{err}"
    );
}

#[test]
fn gguf_missing_tensor_is_named() {
    let mut w = TinyLlama::default().gguf_writer();
    w.remove_tensor("blk.1.ffn_up.weight");
    let err = gguf_err(&w.build().0);
    assert!(
        matches!(&err, ModelError::MissingTensor(t) if t == "model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}

#[test]
fn gguf_absurd_config_names_the_field() {
    for (key, value, field) in [
        ("llama.block_count", 0, "num_hidden_layers"),
        ("llama.embedding_length", u32::MAX, "hidden_size"),
        ("llama.attention.head_count", 5, "num_attention_heads"),
    ] {
        let (mut b, layout) = tiny_gguf();
        put_u32(&mut b, layout.value_at(key), value);
        let err = gguf_err(&b);
        assert!(
            matches!(&err, ModelError::BadConfig { field: f, .. } if f == field),
            "{key}: {err}"
        );
    }
}

/// Overwrites bytes of a valid tiny GGUF at 200 seeded positions (half of them in the
/// header and metadata, where the structure is) and opens each result: every outcome
/// must be `Ok` or `Err`, never a panic.
#[test]
fn gguf_corrupted_bytes_never_panic() {
    let (bytes, layout) = tiny_gguf();
    let mut rng = SeededRng::new(0x5eed_1234);
    let mut errors = 0;
    for i in 0..200 {
        let mut b = bytes.clone();
        let range = if i % 2 == 0 { layout.data_at } else { b.len() };
        let at = rng.below(range);
        // Mix single-bit flips, random bytes and extreme values.
        match rng.below(3) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = rng.next_u64() as u8,
            _ => b[at] = 0xff,
        }
        let f = TempFile::new("fuzz.gguf", &b);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let parsed = GgufFile::parse(&b, "fuzz.gguf").is_ok();
            let loaded = gguf::load(&f.0).is_ok();
            let opened = ModelSource::open(&f.0).is_ok();
            (parsed, loaded, opened)
        }));
        match outcome {
            Ok((_, loaded, _)) => errors += usize::from(!loaded),
            Err(_) => panic!("iteration {i}: overwriting byte {at} made the loader panic"),
        }
    }
    // Most structural corruptions must actually be detected, not silently accepted.
    assert!(
        errors >= 40,
        "only {errors} of 200 corruptions were detected"
    );
}

/// The same for safetensors: corrupt the header of a valid file.
#[test]
fn safetensors_corrupted_bytes_never_panic() {
    let dir = TempDir::tiny_hf("fuzz_hf");
    let bytes = std::fs::read(dir.path("model.safetensors")).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut rng = SeededRng::new(0xfeed_beef);
    for i in 0..200 {
        let mut b = bytes.clone();
        let at = rng.below(header_end);
        b[at] = rng.next_u64() as u8;
        std::fs::write(dir.path("model.safetensors"), &b).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let _ = hf_dir::parse_safetensors(&b, "fuzz.safetensors");
            let _ = hf_dir::load(&dir.0);
        }));
        assert!(
            outcome.is_ok(),
            "iteration {i}: overwriting byte {at} made the loader panic"
        );
    }
}

// ---------------------------------------------------------------------------------------
// safetensors / HF directories

#[test]
fn safetensors_truncated_anywhere_is_an_error() {
    let dir = TempDir::tiny_hf("trunc_hf");
    let bytes = std::fs::read(dir.path("model.safetensors")).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for (what, at, needle) in [
        ("empty", 0, "header length"),
        ("inside the length", 4, "header length"),
        ("inside the header", 20, "JSON header"),
        ("at the end of the header", header_end, "tensor `"),
        ("inside the data", header_end + 100, "tensor `"),
        ("one byte short", bytes.len() - 1, "tensor `"),
    ] {
        std::fs::write(dir.path("model.safetensors"), &bytes[..at]).unwrap();
        let err = hf_err(&dir.0);
        assert!(
            matches!(err, ModelError::Truncated { .. }),
            "cut {what}: {err}"
        );
        assert_mentions(&err, &["model.safetensors", needle]);
    }
}

#[test]
fn safetensors_header_length_beyond_the_file_is_refused() {
    let dir = TempDir::tiny_hf("hdr_hf");
    let bytes = std::fs::read(dir.path("model.safetensors")).unwrap();
    // Credible but larger than the file: a truncation of the header.
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    std::fs::write(dir.path("model.safetensors"), &b).unwrap();
    let err = hf_err(&dir.0);
    assert!(matches!(err, ModelError::Truncated { .. }), "{err}");
    assert_mentions(&err, &["JSON header"]);
    // Beyond any credible header: a lie, refused before reading.
    for len in [1u64 << 40, u64::MAX] {
        b[..8].copy_from_slice(&len.to_le_bytes());
        std::fs::write(dir.path("model.safetensors"), &b).unwrap();
        let err = hf_err(&dir.0);
        assert!(matches!(err, ModelError::LyingHeader { .. }), "{err}");
        assert_mentions(&err, &["header length"]);
    }
}

#[test]
fn safetensors_byte_length_disagreeing_with_shape_names_the_tensor() {
    let dir = TempDir::tiny_hf("len_hf");
    let header =
        json!({"model.norm.weight": {"dtype": "F32", "shape": [32], "data_offsets": [0, 100]}});
    std::fs::write(
        dir.path("model.safetensors"),
        safetensors_raw(&header, &[0; 128]),
    )
    .unwrap();
    let err = hf_err(&dir.0);
    assert!(matches!(err, ModelError::LyingHeader { .. }), "{err}");
    assert_mentions(&err, &["`model.norm.weight`", "100 bytes", "128"]);

    let header = json!({"model.norm.weight": {"dtype": "F32", "shape": [1u64 << 62, 1u64 << 62], "data_offsets": [0, 128]}});
    std::fs::write(
        dir.path("model.safetensors"),
        safetensors_raw(&header, &[0; 128]),
    )
    .unwrap();
    let err = hf_err(&dir.0);
    assert!(matches!(err, ModelError::LyingHeader { .. }), "{err}");
    assert_mentions(&err, &["`model.norm.weight`", "overflows"]);
}

#[test]
fn hf_shape_disagreeing_with_config_names_the_tensor() {
    let dir = TempDir::tiny_hf("shape_hf");
    let mut tensors = TinyLlama::default().hf_tensors();
    let down = tensors
        .iter_mut()
        .find(|(n, _)| n == "model.layers.1.mlp.down_proj.weight")
        .unwrap();
    down.1 = vec![32, 96];
    std::fs::write(dir.path("model.safetensors"), safetensors_f32(&tensors)).unwrap();
    let err = hf_err(&dir.0);
    assert!(
        matches!(&err, ModelError::ShapeMismatch { tensor, expected, found } if tensor == "model.layers.1.mlp.down_proj.weight" && expected == &[32, 64] && found == &[32, 96]),
        "{err}"
    );
}

#[test]
fn hf_missing_tensor_and_files_are_named() {
    let dir = TempDir::tiny_hf("missing_hf");
    let mut tensors = TinyLlama::default().hf_tensors();
    tensors.retain(|(n, _)| n != "model.layers.0.self_attn.k_proj.weight");
    std::fs::write(dir.path("model.safetensors"), safetensors_f32(&tensors)).unwrap();
    let err = hf_err(&dir.0);
    assert!(
        matches!(&err, ModelError::MissingTensor(t) if t == "model.layers.0.self_attn.k_proj.weight"),
        "{err}"
    );

    // A config that unties the embeddings needs lm_head.weight.
    dir.edit_config(|c| c["tie_word_embeddings"] = json!(false));
    std::fs::write(
        dir.path("model.safetensors"),
        safetensors_f32(&TinyLlama::default().hf_tensors()),
    )
    .unwrap();
    let err = hf_err(&dir.0);
    assert!(
        matches!(&err, ModelError::MissingTensor(t) if t == "lm_head.weight"),
        "{err}"
    );

    std::fs::remove_file(dir.path("model.safetensors")).unwrap();
    let err = hf_err(&dir.0);
    assert!(
        matches!(&err, ModelError::Io { path, .. } if path.ends_with("model.safetensors")),
        "{err}"
    );

    std::fs::remove_file(dir.path("config.json")).unwrap();
    let err = hf_err(&dir.0);
    assert!(
        matches!(&err, ModelError::Io { path, .. } if path.ends_with("config.json")),
        "{err}"
    );
    let err = ModelSource::open(&dir.0).err().expect("no config.json");
    assert!(
        matches!(&err, ModelError::Io { path, .. } if path.ends_with("config.json")),
        "{err}"
    );
}

#[test]
fn hf_absurd_configs_name_the_field() {
    let dir = TempDir::tiny_hf("config_hf");
    let cases: [(&str, Value, &str); 5] = [
        ("hidden_size", json!(1u64 << 40), "hidden_size"),
        ("num_hidden_layers", json!(0), "num_hidden_layers"),
        // 5 heads do not divide hidden 32 (and no head_dim says otherwise).
        ("num_attention_heads", json!(5), "num_attention_heads"),
        ("vocab_size", json!(-3), "vocab_size"),
        ("intermediate_size", json!("big"), "intermediate_size"),
    ];
    for (key, value, field) in cases {
        dir.edit_config(|c| {
            c[key] = value.clone();
            if key == "num_attention_heads" {
                c.as_object_mut().unwrap().remove("head_dim");
                c["num_key_value_heads"] = json!(5);
            }
        });
        let err = hf_err(&dir.0);
        assert!(
            matches!(&err, ModelError::BadConfig { field: f, .. } if f == field),
            "{key}: {err}"
        );
    }

    std::fs::write(dir.path("config.json"), b"{\"hidden_size\": 32,").unwrap();
    let err = hf_err(&dir.0);
    assert!(matches!(err, ModelError::BadFormat { .. }), "{err}");
    assert_mentions(&err, &["config.json"]);
}

#[test]
fn hf_token_ids_beyond_u32_are_refused_like_gguf() {
    let dir = TempDir::tiny_hf("token_ids_hf");
    // 2^32 + 2 would truncate to 2 with an unchecked cast.
    let huge = json!((1u64 << 32) + 2);
    for (key, value) in [
        ("bos_token_id", huge.clone()),
        ("eos_token_id", huge.clone()),
        ("eos_token_id", json!([2, huge.clone()])),
        ("pad_token_id", huge.clone()),
        ("eos_token_id", json!("2")),
    ] {
        dir.edit_config(|c| c[key] = value.clone());
        let err = hf_err(&dir.0);
        assert!(
            matches!(&err, ModelError::BadConfig { field, reason } if field == key && reason.contains("not a valid token id")),
            "{key} = {value}: {err}"
        );
    }
    // "No such token" the way real configs write it still loads.
    dir.edit_config(|c| {
        c["pad_token_id"] = json!(-1);
        c["bos_token_id"] = Value::Null;
        c["eos_token_id"] = json!([2, 3]);
    });
    let (cfg, _) = hf_dir::load(&dir.0).expect("null/negative ids mean none");
    assert_eq!((cfg.bos_token_id, cfg.eos_token_ids), (None, vec![2, 3]));
}

/// Opens `path` on another thread: a loader that blocks on a FIFO fails the test after
/// a timeout instead of hanging the suite.
fn open_with_timeout(path: &Path) -> Result<(), ModelError> {
    let path = path.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tx.send(ModelSource::open(&path).map(|_| ())).ok();
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .expect("opening the model blocked (a FIFO opened for reading waits for a writer)")
}

fn mkfifo(path: &Path) {
    std::fs::remove_file(path).ok();
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo")
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

#[test]
fn named_pipes_and_devices_are_refused_not_opened() {
    let assert_refused = |path: &Path, kind: &str| {
        let err = open_with_timeout(path).expect_err("a special file loaded");
        assert!(
            matches!(&err, ModelError::NotRegularFile { path: p, kind: k } if p == path && *k == kind),
            "{}: {err}",
            path.display()
        );
        assert_mentions(&err, &[&path.display().to_string(), kind]);
    };
    // A model path that is a FIFO, with and without the .gguf extension.
    let dir = TempDir(temp_path("fifo_models"));
    std::fs::create_dir_all(&dir.0).unwrap();
    for name in ["model.gguf", "model.bin"] {
        let fifo = dir.path(name);
        mkfifo(&fifo);
        assert_refused(&fifo, "named pipe");
    }
    assert_refused(Path::new("/dev/null"), "character device");

    // Each file of an HF directory in turn.
    let hf = TempDir::tiny_hf("fifo_hf");
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        let keep = std::fs::read(hf.path(name)).unwrap();
        mkfifo(&hf.path(name));
        let err = open_with_timeout(&hf.0).expect_err("a FIFO in the HF dir loaded");
        assert!(
            matches!(&err, ModelError::NotRegularFile { path, kind: "named pipe" } if path.ends_with(name)),
            "{name}: {err}"
        );
        std::fs::remove_file(hf.path(name)).unwrap();
        std::fs::write(hf.path(name), keep).unwrap();
    }
    open_with_timeout(&hf.0).expect("the restored HF dir loads");
}

/// Found by the loader fuzzer (tests/fuzz_loaders.rs): printing `messages * 100000` is
/// one template step that formatted 400,000 messages (6 s, 40 MB) before the output
/// limit applied, and `tojson` of it built the whole string. Both stop at 1 MiB now.
#[test]
fn template_printing_a_huge_list_is_refused_quickly() {
    use npurt_models::chat::MAX_VALUE_TEXT_BYTES;
    use npurt_models::{ChatMessage, ChatTemplate};
    let messages = [
        ChatMessage::new("user", "hello"),
        ChatMessage::new("assistant", "hi"),
    ];
    for src in [
        "{{ messages * 1000000 }}",
        "{{ [messages * 1000000] }}",
        "{{ (messages * 10000000) | tojson }}",
    ] {
        let t = ChatTemplate::new(src, "", "").unwrap();
        let start = std::time::Instant::now();
        let e = t.render(&messages, true).unwrap_err();
        assert!(
            e.to_string().contains(&MAX_VALUE_TEXT_BYTES.to_string()),
            "{src}: {e}"
        );
        // Generous: the bound makes it milliseconds; unbounded it took seconds.
        assert!(
            start.elapsed().as_secs_f64() < 1.0,
            "{src}: {:?}",
            start.elapsed()
        );
    }
    // A small list still prints.
    let t = ChatTemplate::new("{{ messages | length }} {{ [1, 2] }}", "", "").unwrap();
    assert_eq!(t.render(&messages, false).unwrap(), "2 [1, 2]");
}

/// Found by the loader fuzzer: an empty tensor whose other dimension is absurd
/// (`[0, 2^63]`: 0 bytes, so the header is consistent) panicked in `to_f32`, which sized
/// a row (2^63 x 4 bytes overflows). Its empty rows are now never sized.
#[test]
fn safetensors_empty_tensor_with_an_absurd_dimension_converts_to_nothing() {
    let header = json!({"e": {"dtype": "F32", "shape": [0u64, 1u64 << 63], "data_offsets": [0, 0]},
                        "z": {"dtype": "F32", "shape": [64, 0], "data_offsets": [0, 0]}});
    let file = TempFile::new("empty_absurd.safetensors", &safetensors_raw(&header, &[]));
    let mut store = npurt_models::WeightStore::new();
    hf_dir::add_safetensors(&mut store, &file.0).unwrap();
    for name in ["e", "z"] {
        let t = store.to_f32(name).unwrap();
        assert!(t.into_f32().unwrap().is_empty(), "{name}");
    }
}
