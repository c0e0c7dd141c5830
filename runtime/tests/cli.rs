//! The `npurt` CLI forms other tools drive, run as a real process on the fetched
//! SmolLM2: `tokenize`, `logits`, `perplexity`, `run --json`, `inspect`, and the error
//! path (cause chain on stderr, non-zero exit). Golden data: ../shared/golden.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden(rel: &str) -> PathBuf {
    let p = root().join("../shared/golden").join(rel);
    assert!(
        p.exists(),
        "golden data missing: {} (expected ../shared/golden relative to the project root)",
        p.display()
    );
    p
}

fn npurt(args: &[&str]) -> (bool, String, String) {
    let model = root().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        model.is_file(),
        "{} is missing: run scripts/fetch-model.sh",
        model.display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_npurt"))
        .args(args)
        .arg("--model")
        .arg(&model)
        .output()
        .expect("run npurt");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not one JSON value ({e}): {s}"))
}

#[test]
fn tokenize_prints_the_golden_ids() {
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden("smollm2/tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    let case = cases
        .as_array()
        .map(|a| a[0].clone())
        .unwrap_or_else(|| cases["cases"][0].clone());
    let (ok, out, err) = npurt(&["tokenize", "--text", case["text"].as_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(json(&out), case["ids"]);
}

#[test]
fn logits_writes_safetensors_matching_hf() {
    let prompts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("smollm2/prompts.json")).unwrap())
            .unwrap();
    let ids: Vec<String> = prompts["prompts"][0]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let out_file = std::env::temp_dir().join(format!(
        "npurt-cli-logits-{}.safetensors",
        std::process::id()
    ));
    let (ok, _, err) = npurt(&[
        "logits",
        "--precision",
        "f32",
        "--ids",
        &ids.join(","),
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&out_file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("logits").unwrap();
    assert_eq!(t.shape(), [ids.len(), 49152]);
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let v: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    // The last row against HF's full last-position logits (golden README tolerance).
    let gbytes = std::fs::read(golden("smollm2/logits.safetensors")).unwrap();
    let g = safetensors::SafeTensors::deserialize(&gbytes).unwrap();
    let reference: Vec<f32> = g
        .tensor("p0.last")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let ours = &v[(ids.len() - 1) * 49152..];
    let range = reference.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        - reference.iter().copied().fold(f32::INFINITY, f32::min);
    let diff = ours
        .iter()
        .zip(&reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-3 * range,
        "last-position logits differ from HF by {diff} (range {range})"
    );
    std::fs::remove_file(out_file).ok();
}

#[test]
fn perplexity_prints_tokens_nll_ppl() {
    let text = golden("texts/apache-2.0.txt");
    let (ok, out, err) = npurt(&[
        "perplexity",
        "--text-file",
        text.to_str().unwrap(),
        "--ctx",
        "128",
        "--stride",
        "64",
        "--max-tokens",
        "200",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["tokens"], 200);
    let (nll, ppl) = (v["nll"].as_f64().unwrap(), v["ppl"].as_f64().unwrap());
    assert!(
        (ppl - nll.exp()).abs() < 1e-9 * ppl && ppl > 1.0 && ppl < 100.0,
        "{v}"
    );
}

#[test]
fn run_json_prints_exactly_one_object_with_the_stats() {
    let (ok, out, err) = npurt(&[
        "run",
        "--chat",
        "What is the capital of France?",
        "--max-tokens",
        "16",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    for key in [
        "text",
        "tokens",
        "load_ms",
        "prefill_tok_s",
        "decode_tok_s",
        "peak_rss_bytes",
    ] {
        assert!(v.get(key).is_some(), "missing `{key}` in {v}");
    }
    assert!(v["text"].as_str().unwrap().contains("Paris"), "{v}");
}

#[test]
fn inspect_prints_passes_kernels_and_weight_bytes() {
    let (ok, out, err) = npurt(&["inspect", "--precision", "w4a16"]);
    assert!(ok, "{err}");
    for needle in [
        "fuse-swiglu",
        "fuse-norm-quant",
        "matmul_packed[rms_norm+q4_1 x i16+swiglu",
        "kv_write_f16",
        "q8_0",
        "partition: 1 segment(s)",
    ] {
        assert!(
            out.contains(needle),
            "`{needle}` not in inspect output:\n{out}"
        );
    }
}

#[test]
fn kv_cache_int8_runs_q8head_kernels_and_counts_its_blocks() {
    let (ok, out, err) = npurt(&["inspect", "--kv-cache", "int8"]);
    assert!(ok, "{err}");
    for needle in [
        "KV cache int8",
        "kv_write_q8head[q8_head64]",
        "attention_f32[q8_head64 kv",
    ] {
        assert!(
            out.contains(needle),
            "`{needle}` not in inspect output:\n{out}"
        );
    }
    // SmolLM2 (head_dim 64): an int8 block is 64 values + a 4-byte scale, 68 bytes
    // where f16 takes 128.
    let kv = |t: &str| {
        let (ok, out, err) = npurt(&["inspect", "--kv-cache", t, "--json"]);
        assert!(ok, "{err}");
        json(&out)["kv_bytes"].as_u64().unwrap()
    };
    assert_eq!(kv("int8") * 128, kv("f16") * 68);
}

#[test]
fn errors_print_the_cause_and_exit_non_zero() {
    let (ok, _, err) = npurt(&["run", "--prompt", "hi", "--backend", "npu9000"]);
    assert!(!ok);
    assert!(
        err.contains("npu9000") && err.starts_with("error:"),
        "{err}"
    );
    let (ok, _, err) = npurt(&["logits", "--ids", "1,99999999", "--out", "/dev/null"]);
    assert!(!ok);
    assert!(
        err.contains("99999999") && err.contains("out of range"),
        "{err}"
    );
}

/// Runs `npurt` without `--model`: `image-plan` needs none.
fn npurt_bare(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_npurt"))
        .args(args)
        .output()
        .expect("run npurt");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn image_plan_json_for_the_golden_images() {
    let chelsea = golden("images/chelsea.png");
    let (ok, out, err) =
        npurt_bare(&["image-plan", "--image", chelsea.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["grid"], serde_json::json!([2, 1]), "{v}");
    assert_eq!(v["canvas"], serde_json::json!([768, 384]), "{v}");
    assert_eq!(v["resized"], serde_json::json!([578, 384]), "{v}");
    assert_eq!(v["padding"], serde_json::json!([95, 0, 95, 0]), "{v}");
    assert_eq!(
        (v["tiles"].as_u64(), v["image_tokens"].as_u64()),
        (Some(3), Some(588)),
        "{v}"
    );
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(451), Some(300)),
        "{v}"
    );
    assert_eq!(
        (v["rule"].as_str(), v["alpha"].as_f64()),
        (Some("relaxed"), Some(0.1)),
        "{v}"
    );

    let rocket = golden("images/rocket.jpg");
    let (ok, out, err) = npurt_bare(&["image-plan", "--image", rocket.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["grid"], serde_json::json!([2, 2]), "{v}");
    assert_eq!(v["resized"], serde_json::json!([768, 513]), "{v}");
    assert_eq!(v["padding"], serde_json::json!([0, 127, 0, 128]), "{v}");
    assert_eq!(
        (v["tiles"].as_u64(), v["image_tokens"].as_u64()),
        (Some(5), Some(980)),
        "{v}"
    );

    // The other flags reach the plan: LLaVA-NeXT's rule, a 1-tile budget (only 1:1 is
    // left) and 336-pixel tiles.
    let (ok, out, err) = npurt_bare(&[
        "image-plan",
        "--image",
        chelsea.to_str().unwrap(),
        "--json",
        "--rule",
        "llava-next",
        "--max-tiles",
        "1",
        "--tile",
        "336",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["grid"], serde_json::json!([1, 1]), "{v}");
    assert_eq!(v["canvas"], serde_json::json!([336, 336]), "{v}");
    assert_eq!(v["rule"], "llava-next", "{v}");
    assert_eq!(v["image_tokens"], 2 * 144, "{v}"); // 336 / 14 = 24 -> 12x12 after the merge

    // Without --json: a readable summary.
    let (ok, out, err) = npurt_bare(&["image-plan", "--image", chelsea.to_str().unwrap()]);
    assert!(ok, "{err}");
    for needle in ["2x1", "578x384", "left 95", "588 image tokens"] {
        assert!(out.contains(needle), "`{needle}` not in:\n{out}");
    }
}

#[test]
fn image_plan_errors_name_the_problem() {
    let dir = std::env::temp_dir().join(format!("npurt-cli-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("notes.jpg");
    std::fs::write(&text, "not a picture\n").unwrap();
    let (ok, _, err) = npurt_bare(&["image-plan", "--image", text.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.starts_with("error:") && err.contains("notes.jpg") && err.contains("not an image"),
        "{err}"
    );

    // A PNG whose bytes stop inside the header.
    let png = std::fs::read(golden("images/chelsea.png")).unwrap();
    let cut = dir.join("cut.png");
    std::fs::write(&cut, &png[..20]).unwrap();
    let (ok, _, err) = npurt_bare(&["image-plan", "--image", cut.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("cut.png") && err.contains("corrupt or truncated"),
        "{err}"
    );

    let chelsea = golden("images/chelsea.png");
    let chelsea = chelsea.to_str().unwrap();
    for (flag, value, needle) in [
        ("--alpha", "-0.5", "alpha"),
        ("--alpha", "NaN", "alpha"),
        ("--max-tiles", "0", "max_tiles"),
        ("--tile", "0", "tile"),
        ("--rule", "internvl", "rule"),
    ] {
        let (ok, _, err) = npurt_bare(&["image-plan", "--image", chelsea, flag, value]);
        assert!(!ok, "{flag} {value} was accepted");
        assert!(
            err.contains("invalid image option") && err.contains(needle),
            "{flag} {value}: {err}"
        );
    }
    let (ok, _, err) = npurt_bare(&["image-plan", "--image", chelsea, "--max-pixels", "1000"]);
    assert!(!ok);
    assert!(
        err.contains("too large") && err.contains("451x300"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// vlm_tiny as a BlueLM-V directory (scripts/make-vlm-tiny.sh) answering about
/// chelsea.png at fp32 through the CLI: the README's greedy 16 tokens, on `backend`.
fn run_image_json(backend: &str) {
    let dir = std::env::temp_dir().join(format!("npurt-cli-vlm-{backend}-{}", std::process::id()));
    let made = Command::new("bash")
        .arg(root().join("scripts/make-vlm-tiny.sh"))
        .arg(&dir)
        .status()
        .expect("make-vlm-tiny.sh");
    assert!(made.success());
    let img = golden("images/chelsea.png");
    let out = Command::new(env!("CARGO_BIN_EXE_npurt"))
        .args(["run", "--model"])
        .arg(&dir)
        .arg("--image")
        .arg(&img)
        .args(["--chat", "Describe this image.", "--max-tokens", "16"])
        .args(["--precision", "f32", "--backend", backend, "--json"])
        .output()
        .expect("run npurt");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v = json(&String::from_utf8_lossy(&out.stdout));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("vlm_tiny/config.json")).unwrap())
            .unwrap();
    assert_eq!(v["text"], cfg["golden"]["greedy_16"]["text"], "{v}");
    assert_eq!(v["grid"], serde_json::json!([2, 1]));
    assert_eq!(
        (v["tiles"].as_u64(), v["image_tokens"].as_u64()),
        (Some(3), Some(588))
    );
    assert_eq!(v["prompt_tokens"].as_u64(), Some(623));
    for key in [
        "encode_ms",
        "hidden_ms",
        "image_ready_before_prompt_ms",
        "vision_stage_peak_rss_bytes",
        "llm_stage_peak_rss_bytes",
        "peak_rss_bytes",
    ] {
        assert!(v[key].is_number(), "missing `{key}` in {v}");
    }
    assert_eq!(v["vision_released"], true);
    assert!(v["load"]["vision_ms"].as_f64().unwrap() > 0.0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_answers_about_an_image_on_cpu() {
    run_image_json("cpu");
}

#[test]
fn run_answers_about_an_image_on_wgpu() {
    run_image_json("wgpu");
}

#[test]
fn run_image_errors_are_typed() {
    // A text-only model cannot take images.
    let img = golden("images/chelsea.png");
    let (ok, _, err) = npurt(&["run", "--chat", "hi", "--image", img.to_str().unwrap()]);
    assert!(!ok && err.contains("no vision part"), "{err}");
    // --system with a raw prompt.
    let (ok, _, err) = npurt(&["run", "--prompt", "hi", "--system", "be brief"]);
    assert!(!ok && err.contains("--system needs --chat"), "{err}");
}

#[test]
fn run_takes_a_system_message_for_text_chat() {
    let (ok, out, err) = npurt(&[
        "run",
        "--system",
        "You answer in French.",
        "--chat",
        "What is the capital of France?",
        "--max-tokens",
        "12",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    // The rendered prompt holds this system message instead of the template's default.
    let rendered = "<|im_start|>system\nYou answer in French.<|im_end|>\n<|im_start|>user\n\
                    What is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let (ok, ids, err) = npurt(&["tokenize", "--text", rendered]);
    assert!(ok, "{err}");
    let n = json(&ids).as_array().unwrap().len() as u64;
    assert_eq!(v["prompt_tokens"].as_u64(), Some(n), "{v}");
    assert!(v["text"].as_str().unwrap().contains("Paris"), "{v}");
}

/// `encode-image` on siglip_tiny + the vlm_tiny projector (9 tiles of a 768x1536
/// pattern, batches of 4): pipelined by default with the pipeline's times in the JSON,
/// `--no-pipeline` sequential (nothing hidden), and both write the same tensors.
#[test]
fn encode_image_pipelines_and_no_pipeline_agrees() {
    let tmp = std::env::temp_dir();
    let run = |extra: &[&str], out: &PathBuf| {
        let o = Command::new(env!("CARGO_BIN_EXE_npurt"))
            .arg("encode-image")
            .arg("--model")
            .arg(golden("siglip_tiny"))
            .arg("--projector")
            .arg(golden("vlm_tiny/projector.safetensors"))
            .args(["--image-size", "768x1536", "--precision", "f32", "--json"])
            .arg("--out")
            .arg(out)
            .args(extra)
            .output()
            .expect("run npurt");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        json(&String::from_utf8_lossy(&o.stdout))
    };
    let id = std::process::id();
    let (piped_out, seq_out) = (
        tmp.join(format!("npurt-cli-piped-{id}.safetensors")),
        tmp.join(format!("npurt-cli-seq-{id}.safetensors")),
    );
    let piped = run(&[], &piped_out);
    let seq = run(&["--no-pipeline"], &seq_out);
    assert_eq!(piped["tiles"].as_u64(), Some(9), "{piped}");
    assert_eq!(piped["pipelined"], true, "{piped}");
    assert_eq!(seq["pipelined"], false, "{seq}");
    for v in [&piped, &seq] {
        for key in [
            "conv_ms",
            "blocks_ms",
            "project_ms",
            "encode_ms",
            "sequential_ms",
            "hidden_ms",
        ] {
            assert!(v[key].as_f64().is_some_and(|x| x >= 0.0), "`{key}` in {v}");
        }
    }
    assert_eq!(seq["hidden_ms"].as_f64(), Some(0.0), "{seq}");
    let (a, b) = (
        std::fs::read(&piped_out).unwrap(),
        std::fs::read(&seq_out).unwrap(),
    );
    assert!(a == b, "pipelined and sequential outputs differ");
    std::fs::remove_file(&piped_out).ok();
    std::fs::remove_file(&seq_out).ok();
}
