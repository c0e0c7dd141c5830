//! `npurt make-model`'s writers (`npurt_models::random_llama`): the HF directory and
//! the GGUF file of one seed and shape are the same model. Both load on the CPU
//! backend and give the same logits (the GGUF's q/k rows are in llama.cpp's RoPE
//! order, which the loader must undo exactly), different seeds give different models,
//! a real GGUF's tokenizer carries over to both forms, and bad shapes and paths are
//! typed errors.

use npurt_graph::PrecisionPolicy;
use npurt_models::random_llama::{LlamaShape, RandomLlama, TokenizerKvs, WeightDType};
use npurt_models::testfiles::temp_path;
use npurt_models::{ModelError, ModelSource};
use npurt_runtime::{LoadOptions, Runtime, Session};
use npurt_tests::*;
use std::path::Path;

fn logits_f32(path: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    let opts = LoadOptions {
        ctx: Some(64),
        precision: PrecisionPolicy::F32,
        ..Default::default()
    };
    let model = Runtime::new().load(path, opts).unwrap();
    Session::new(model).unwrap().feed_all_logits(ids).unwrap()
}

/// Writes `m` in both forms under a fresh directory; returns (dir, HF dir, GGUF file).
fn write_both(
    m: &RandomLlama,
    tok: &TokenizerKvs,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let root = temp_path(name);
    let (hf, gguf) = (root.join("hf"), root.join("model.gguf"));
    std::fs::create_dir_all(&root).unwrap();
    m.write_hf_dir(&hf, tok).unwrap();
    m.write_gguf(&gguf, tok).unwrap();
    (root, hf, gguf)
}

/// Largest difference between two logit sequences, relative to the largest logit range.
fn rel_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let range = a.iter().map(|r| logit_range(r)).fold(0.0, f32::max);
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0.0, f32::max);
    (diff / range, range)
}

#[test]
fn hf_and_gguf_forms_give_the_same_logits() {
    let ids = [5u32, 17, 200, 3, 99, 258, 42, 7];
    for (dtype, tied) in [(WeightDType::F32, false), (WeightDType::F16, true)] {
        let m = RandomLlama {
            shape: small_llama_shape(300, tied),
            seed: 11,
            dtype,
        };
        let tok = TokenizerKvs::byte_level(300).unwrap();
        let (root, hf, gguf) = write_both(&m, &tok, "make_model_forms");
        let a = logits_f32(&hf, &ids);
        let b = logits_f32(&gguf, &ids);
        let (rel, range) = rel_diff(&a, &b);
        // Random weights of std 0.02 still give logits that differ by position.
        assert!(range > 0.05, "{dtype:?}: logit range {range} is degenerate");
        assert!(
            rel <= 1e-4,
            "{dtype:?}: HF vs GGUF logits differ by {rel} of the range"
        );
        assert_ne!(a[0], a[1], "{dtype:?}: logits do not depend on the token");

        // Another seed is another model: the comparison above can fail.
        let other = RandomLlama {
            seed: 12,
            ..m.clone()
        };
        other.write_gguf(&gguf, &tok).unwrap();
        let (rel, _) = rel_diff(&a, &logits_f32(&gguf, &ids));
        assert!(
            rel > 1e-2,
            "{dtype:?}: seeds 11 and 12 give the same logits"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}

#[test]
fn a_real_tokenizer_carries_over_to_both_forms() {
    let src = smollm2_gguf();
    let tok = TokenizerKvs::from_gguf(&src).unwrap();
    let m = RandomLlama {
        shape: small_llama_shape(tok.token_count().unwrap(), true),
        seed: 3,
        dtype: WeightDType::F16,
    };
    let (root, hf, gguf) = write_both(&m, &tok, "make_model_tokenizer");
    let text = "<|im_start|>user\nWhat is 2+2? Héllo, wörld!<|im_end|>";
    let want = ModelSource::open(&src)
        .unwrap()
        .tokenizer
        .encode(text, false)
        .unwrap();
    for path in [&hf, &gguf] {
        let source = ModelSource::open(path).unwrap();
        let got = source.tokenizer.encode(text, false).unwrap();
        assert_eq!(got.get_ids(), want.get_ids(), "{}", path.display());
        assert!(
            source.chat_template.is_some(),
            "{}: no chat template",
            path.display()
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_shapes_and_paths_are_typed_errors() {
    let tok = TokenizerKvs::byte_level(300).unwrap();
    let dir = temp_path("make_model_bad");
    let bad_heads = RandomLlama {
        shape: LlamaShape {
            heads: 5,
            ..small_llama_shape(300, true)
        },
        seed: 0,
        dtype: WeightDType::F32,
    };
    let err = bad_heads.write_hf_dir(&dir, &tok).unwrap_err();
    assert!(
        matches!(&err, ModelError::BadConfig { field, .. } if field == "num_attention_heads"),
        "{err}"
    );
    assert!(!dir.exists(), "a refused shape wrote {}", dir.display());

    let odd_kv = RandomLlama {
        shape: LlamaShape {
            kv_heads: 3,
            ..small_llama_shape(300, true)
        },
        ..bad_heads.clone()
    };
    let err = odd_kv.write_gguf(&dir.join("x.gguf"), &tok).unwrap_err();
    assert!(
        matches!(&err, ModelError::BadConfig { field, .. } if field == "num_key_value_heads"),
        "{err}"
    );

    let good = RandomLlama {
        shape: small_llama_shape(300, true),
        ..bad_heads.clone()
    };
    let err = good
        .write_gguf(&dir, &TokenizerKvs::byte_level(320).unwrap())
        .unwrap_err();
    assert!(
        matches!(&err, ModelError::BadConfig { field, .. } if field == "vocab_size"),
        "{err}"
    );
    assert!(
        TokenizerKvs::byte_level(100).is_err(),
        "no room for the bytes"
    );

    // A file where the output directory should be, and a GGUF path in a missing directory.
    std::fs::write(&dir, b"not a directory").unwrap();
    let err = good.write_hf_dir(&dir, &tok).unwrap_err();
    assert!(
        matches!(&err, ModelError::Write { path, .. } if path == &dir),
        "{err}"
    );
    let missing = dir.join("no/such/dir/model.gguf");
    let err = good.write_gguf(&missing, &tok).unwrap_err();
    assert!(
        matches!(&err, ModelError::Write { path, .. } if path == &missing),
        "{err}"
    );
    std::fs::remove_file(&dir).unwrap();
}

/// `make-model --shape bluelm-v-3b` (`random_vlm`): the directory loads as a BlueLM-V
/// model; its tower and projector are, value for value, the synthetic ones
/// `encode-image --synthetic` builds in memory (same features and projected rows, bit
/// for bit, at f32 and w8a16); and `bench --image-size`'s image prompt runs on it with
/// the plan's counts.
#[test]
fn a_bluelm_v_directory_holds_the_synthetic_tower_and_benches_an_image_prompt() {
    use npurt_models::random_vlm::{LlmForm, RandomBlueLmV};
    use npurt_runtime::{bench, VisionEncoder, VisionOptions};
    let tok = TokenizerKvs::byte_level(300).unwrap();
    let mut m = RandomBlueLmV::by_name("bluelm-v-3b", 0, WeightDType::F32, LlmForm::Gguf).unwrap();
    // One encoder block and a small LLM: the tower's widths stay so400m's.
    m.tower.num_hidden_layers = 1;
    m.llm.shape = LlamaShape {
        context: 2048,
        ..small_llama_shape(300, true)
    };
    let dir = temp_path("make_model_bluelm_v");
    m.write_dir(&dir, &tok).unwrap();

    let rt = Runtime::new();
    let pixels = npurt_graph::SeededRng::new(5).uniform_vec(3 * 384 * 384, -1.0, 1.0);
    for precision in [PrecisionPolicy::F32, PrecisionPolicy::W8A16] {
        let opts = VisionOptions {
            precision: precision.clone(),
            ..VisionOptions::default()
        };
        let written = VisionEncoder::load(
            &rt,
            &dir.join("vision"),
            Some(&dir.join("projector.safetensors")),
            opts.clone(),
        )
        .unwrap();
        let synthetic = VisionEncoder::synthetic(&rt, m.tower.clone(), 64, opts).unwrap();
        let (a, b) = (
            written.encode(&pixels, 1).unwrap(),
            synthetic.encode(&pixels, 1).unwrap(),
        );
        assert_eq!(a.features.len(), 729 * 1152, "{}", precision.name);
        assert!(
            a.features == b.features,
            "{}: tower features differ",
            precision.name
        );
        let (pa, pb) = (a.projected.unwrap(), b.projected.unwrap());
        assert_eq!(pa.len(), 196 * 64, "{}", precision.name);
        assert!(pa == pb, "{}: projected rows differ", precision.name);
    }

    let model = rt.load(&dir, LoadOptions::default()).unwrap();
    let run = bench::image_prompt(&model, "768x1536", 1).unwrap();
    assert_eq!((run.tiles, run.image_tokens), (9, 9 * 196));
    let question = model.encode(bench::IMAGE_QUESTION).unwrap().len();
    assert!(
        run.prompt_tokens >= run.image_tokens + question,
        "{} rows for {} image rows and a {question}-token question",
        run.prompt_tokens,
        run.image_tokens
    );
    assert!(run.encode_s[0] > 0.0 && run.prefill_s[0] > 0.0);
    // The tower's blocks (attention included) and the projector, one so400m block.
    let block: u64 = 729 * (4 * 1152 * 1152 + 2 * 1152 * 4304) + 2 * 729 * 729 * 1152;
    let projector: u64 = 196 * (4608 * 64 + 64 * 64);
    assert_eq!(run.encode_ops, 2.0 * 9.0 * (block + projector) as f64);
    let rows = run.rows(&model, 2);
    assert_eq!(rows[0].test, "enc 768x1536 (9 tiles)");
    assert_eq!(rows[0].precision, "vision w8a16");
    assert_eq!(rows[1].test, format!("pp{} image+text", run.prompt_tokens));
    let err = bench::image_prompt(&model, "768", 1).unwrap_err();
    assert!(err.to_string().contains("not WIDTHxHEIGHT"), "{err}");

    // A text-only model has no vision part.
    let text_only = rt
        .load(&dir.join("llm.gguf"), LoadOptions::default())
        .unwrap();
    let err = bench::image_prompt(&text_only, "768x1536", 1).unwrap_err();
    assert!(
        matches!(err, npurt_runtime::RuntimeError::NotMultimodal),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
