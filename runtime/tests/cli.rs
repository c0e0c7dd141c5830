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
fn run_speculate_keeps_drafts_and_the_text() {
    // The small model loops on this request, so drafts are found and kept.
    let list = "Rewrite this list in the same order, one item per line, each starting with a dash: apples, bananas, cherries, dates, elderberries, figs, grapes, honeydew melons, kiwis, lemons, mangoes, nectarines, oranges, papayas.";
    let run = |speculate: &str| {
        let (ok, out, err) = npurt(&[
            "run",
            "--chat",
            list,
            "--max-tokens",
            "40",
            "--speculate",
            speculate,
            "--json",
        ]);
        assert!(ok, "{err}");
        json(&out)
    };
    let (plain, spec) = (run("0"), run("7"));
    assert_eq!(spec["text"], plain["text"]);
    assert_eq!(plain["speculation"]["drafted"], 0, "{plain}");
    let s = &spec["speculation"];
    let (kept, drafted) = (
        s["accepted"].as_u64().unwrap(),
        s["drafted"].as_u64().unwrap(),
    );
    assert!(
        kept > 0 && kept <= drafted && s["verify_calls"].as_u64().unwrap() > 0,
        "{s}"
    );
    // A draft longer than the verification graph holds is refused, naming the option.
    let (ok, _, err) = npurt(&["run", "--prompt", "hi", "--speculate", "8"]);
    assert!(!ok && err.contains("max_draft"), "{err}");
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
        // Every node but the head's row selection and its matmul.
        "valid rows 361 of 363 nodes compute only the chunk's n_valid rows",
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
    // After the "loading ..." progress line, the error.
    assert!(
        err.contains("npu9000") && err.lines().any(|l| l.starts_with("error:")),
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

/// vlm_tiny as a fresh BlueLM-V directory (scripts/make-vlm-tiny.sh), named by `tag`.
fn vlm_tiny_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("npurt-cli-vlm-{tag}-{}", std::process::id()));
    let made = Command::new("bash")
        .arg(root().join("scripts/make-vlm-tiny.sh"))
        .arg(&dir)
        .status()
        .expect("make-vlm-tiny.sh");
    assert!(made.success());
    dir
}

/// vlm_tiny as a BlueLM-V directory (scripts/make-vlm-tiny.sh) answering about
/// chelsea.png at fp32 through the CLI: the README's greedy 16 tokens, on `backend`.
fn run_image_json(backend: &str) {
    let dir = vlm_tiny_dir(backend);
    let img = golden("images/chelsea.png");
    let logits_file = dir.join("last16.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_npurt"))
        .args(["run", "--model"])
        .arg(&dir)
        .arg("--image")
        .arg(&img)
        .args(["--chat", "Describe this image.", "--max-tokens", "16"])
        .args(["--precision", "f32", "--backend", backend, "--json"])
        .arg("--logits-out")
        .arg(&logits_file)
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
        "image_wait_ms",
        "first_token_ms",
        "image_ready_before_prompt_ms",
        "vision_stage_peak_rss_bytes",
        "llm_stage_peak_rss_bytes",
        "peak_rss_bytes",
    ] {
        assert!(v[key].is_number(), "missing `{key}` in {v}");
    }
    assert_eq!(v["vision_released"], true);
    assert!(v["load"]["vision_ms"].as_f64().unwrap() > 0.0);
    // The prefill's own time leaves out the wait for the image; the first token comes
    // after both.
    let f = |k: &str| v[k].as_f64().unwrap();
    assert!(f("image_wait_ms") <= f("encode_ms"), "{v}");
    assert!(
        f("first_token_ms") >= f("prefill_ms") + f("image_wait_ms"),
        "{v}"
    );

    // The last 16 positions' logits against HF's top-16 and logsumexp, and the last
    // row against `logits_last` (README: within 1e-3 x the logit range, rank 1 equal).
    let tensor = |bytes: &[u8], name: &str| -> Vec<f32> {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let ours = tensor(&std::fs::read(&logits_file).unwrap(), "logits");
    let io = std::fs::read(golden("vlm_tiny/io.safetensors")).unwrap();
    let (ids, vals, lse, last) = (
        tensor(&io, "topk_ids_last16"), // i32, read as bits below
        tensor(&io, "topk_vals_last16"),
        tensor(&io, "lse_last16"),
        tensor(&io, "logits_last"),
    );
    let vocab = 49152;
    assert_eq!(ours.len(), 16 * vocab);
    for k in 0..16 {
        let row = &ours[k * vocab..(k + 1) * vocab];
        let range = row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
            - row.iter().copied().fold(f32::INFINITY, f32::min);
        let tol = 1e-3 * range;
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let our_lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        assert!(
            (our_lse - lse[k] as f64).abs() <= tol as f64,
            "{backend} row {k}: lse"
        );
        let top1 = (0..vocab)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        for j in 0..16 {
            let id = ids[k * 16 + j].to_bits() as usize;
            if j == 0 {
                assert_eq!(top1, id, "{backend} row {k}: rank-1 id");
            }
            let d = (row[id] - vals[k * 16 + j]).abs();
            assert!(d <= tol, "{backend} row {k} id {id}: {d} > {tol}");
        }
    }
    let range = last.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        - last.iter().copied().fold(f32::INFINITY, f32::min);
    let d = ours[15 * vocab..]
        .iter()
        .zip(&last)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(d <= 1e-3 * range, "{backend} logits_last: {d}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_answers_about_an_image_on_cpu() {
    run_image_json("cpu");
}

/// `npurt chat` with `--json`: one object per answered turn.
fn chat_turns(args: &[&str], input: &str) -> (Vec<serde_json::Value>, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_npurt"))
        .arg("chat")
        .args(args)
        .arg("--json")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("npurt chat");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("npurt chat");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    let turns = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(json)
        .collect();
    (turns, err)
}

/// `npurt chat` keeps the conversation in its session: the second turn feeds only its
/// own rows (the first turn's prompt and answer are held), and it answers.
#[test]
fn chat_turns_feed_only_their_new_rows() {
    let (turns, _) = chat_turns(
        &["--max-tokens", "12"],
        "What is the capital of France?\nAnd of Italy?\n/quit\nNot read.\n",
    );
    assert_eq!(turns.len(), 2, "{turns:?}");
    let n = |t: &serde_json::Value, k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{k}: {t}"));
    assert_eq!(n(&turns[0], "reused"), 0);
    assert_eq!(n(&turns[0], "fed"), n(&turns[0], "prompt_positions"));
    assert!(
        turns[0]["text"].as_str().unwrap().contains("Paris"),
        "{}",
        turns[0]
    );
    let held = n(&turns[1], "reused");
    assert!(held >= n(&turns[0], "prompt_positions"), "{}", turns[1]);
    assert_eq!(held + n(&turns[1], "fed"), n(&turns[1], "prompt_positions"));
    assert!(n(&turns[1], "fed") < 20, "{}", turns[1]);
    assert!(!turns[1]["text"].as_str().unwrap().is_empty());
}

/// A chat that outgrows the context drops its oldest exchanges, and goes on.
#[test]
fn chat_drops_the_oldest_turns_to_fit_the_context() {
    let (turns, _) = chat_turns(
        &["--ctx", "100", "--max-tokens", "10"],
        "What is the capital of France?\nAnd of Italy?\nAnd of Spain?\nAnd of Germany?\n",
    );
    assert_eq!(turns.len(), 4, "{turns:?}");
    let n = |t: &serde_json::Value, k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{k}: {t}"));
    assert_eq!(n(&turns[0], "dropped_turns"), 0);
    let last = &turns[3];
    assert!(n(last, "dropped_turns") >= 1, "{last}");
    assert!(n(last, "prompt_positions") + 10 <= 100, "{last}");
    assert!(n(last, "context_positions") <= 100, "{last}");
    assert!(!last["text"].as_str().unwrap().is_empty(), "{last}");
}

/// `npurt chat` with `/image`: the image is encoded and the conversation prefilled up
/// to it before the question is read, so the question's turn feeds only its own rows
/// and gives the golden answer; a bad image is an error line, and the chat goes on.
#[test]
fn chat_prefills_an_image_before_its_question() {
    let dir = vlm_tiny_dir("chat");
    let img = golden("images/chelsea.png");
    let input = format!(
        "/image {}\nDescribe this image.\n/image {}\nAnd now?\n",
        img.display(),
        dir.join("missing.png").display()
    );
    let model = dir.to_str().unwrap();
    let (turns, err) = chat_turns(
        &["--model", model, "--precision", "f32", "--max-tokens", "16"],
        &input,
    );
    assert_eq!(turns.len(), 2, "{turns:?}\n{err}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("vlm_tiny/config.json")).unwrap())
            .unwrap();
    let t = &turns[0];
    assert_eq!(t["text"], cfg["golden"]["greedy_16"]["text"], "{t}");
    assert_eq!(t["prompt_positions"].as_u64(), Some(623), "{t}");
    assert_eq!(t["images"].as_u64(), Some(1), "{t}");
    let ahead = t["prefilled_ahead"].as_u64().unwrap();
    assert!((600..623).contains(&ahead), "{t}");
    assert!(t["reused"].as_u64().unwrap() >= 600, "{t}");
    assert!(err.contains("missing.png"), "{err}");
    // The second turn holds the first (its image included) and has no image of its own.
    let t = &turns[1];
    assert_eq!(t["images"].as_u64(), Some(0), "{t}");
    assert!(t["reused"].as_u64().unwrap() >= 623, "{t}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `run --chat -` with an image prefills the conversation's start and the image while
/// the message is still being typed (here: written to stdin a while later). Only the
/// message and the template's tail are fed after it, and the answer is the golden one.
#[test]
fn run_prefills_the_image_while_the_message_is_typed() {
    use std::io::Write;
    let dir = vlm_tiny_dir("typed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_npurt"))
        .args(["run", "--model"])
        .arg(&dir)
        .arg("--image")
        .arg(golden("images/chelsea.png"))
        .args([
            "--chat",
            "-",
            "--max-tokens",
            "16",
            "--precision",
            "f32",
            "--json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run npurt");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::sleep(std::time::Duration::from_millis(500));
    stdin.write_all(b"Describe this image.\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().expect("npurt run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&String::from_utf8_lossy(&out.stdout));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("vlm_tiny/config.json")).unwrap())
            .unwrap();
    assert_eq!(v["text"], cfg["golden"]["greedy_16"]["text"], "{v}");
    assert_eq!(v["prompt_tokens"].as_u64(), Some(623));
    // The template's start and the 588 image rows, not the message.
    let ahead = v["prefilled_while_typing"]
        .as_u64()
        .expect("prefilled_while_typing");
    assert!((600..623).contains(&ahead), "{v}");
    assert!(v["prefilled_while_typing_ms"].is_number(), "{v}");
    std::fs::remove_dir_all(&dir).ok();
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

/// Runs `npurt` with exactly `args` (no `--model` added) and `env_remove` unset:
/// exit code, stdout, stderr.
fn npurt_code(args: &[&str], env_remove: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_npurt"));
    cmd.args(args);
    for k in env_remove {
        cmd.env_remove(k);
    }
    let out = cmd.output().expect("run npurt");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn model_path() -> String {
    root()
        .join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        .to_string_lossy()
        .into_owned()
}

/// The line of `error:` output, for messages.
fn error_line(err: &str) -> &str {
    err.lines().find(|l| l.starts_with("error:")).unwrap_or(err)
}

#[test]
fn usage_errors_exit_2_and_runtime_errors_exit_1() {
    // Usage errors are clap's: exit 2 and a usage message.
    for args in [
        &["run", "--no-such-flag"][..],
        &["run"],
        &["run", "--prompt", "a", "--chat", "b"],
        &["logits", "--out", "/dev/null"],
        &["bench", "-r", "0"],
        &["tokenize", "--text", "x", "--threads", "two"],
    ] {
        let (code, _, err) = npurt_code(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("error:") && (err.contains("Usage:") || err.contains("'--help'")),
            "{args:?}: {err}"
        );
    }
    // Errors at run time: exit 1, `error: ...`.
    let m = model_path();
    for args in [
        &[
            "run",
            "--prompt",
            "hi",
            "--backend",
            "npu9000",
            "--model",
            &m,
        ][..],
        &["conformance", "--op", "softmaxx"],
        &[
            "tokenize",
            "--text",
            "x",
            "--model",
            "/nonexistent/model.gguf",
        ],
    ] {
        let (code, _, err) = npurt_code(args, &[]);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.lines().any(|l| l.starts_with("error: ")),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn run_without_input_names_both_prompt_and_chat() {
    let (code, _, err) = npurt_code(&["run"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--prompt") && err.contains("--chat"), "{err}");
}

#[test]
fn a_missing_file_prints_its_cause_once() {
    let (code, _, err) = npurt_code(
        &[
            "tokenize",
            "--text",
            "x",
            "--model",
            "/nonexistent/model.gguf",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        error_line(&err).contains("/nonexistent/model.gguf"),
        "{err}"
    );
    // The OS's text for ENOENT, once (it used to be in the message and the chain).
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert_eq!(err.matches("caused by:").count(), 1, "{err}");
}

#[test]
fn every_option_has_help_and_perplexity_states_one_ctx_default() {
    for cmd in [
        "run",
        "logits",
        "tokenize",
        "perplexity",
        "inspect",
        "bench",
        "conformance",
        "encode-image",
        "image-plan",
    ] {
        let (code, out, err) = npurt_code(&[cmd, "-h"], &[]);
        assert_eq!(code, Some(0), "{cmd}: {err}");
        // Each option's help is on its line after two spaces, or (when clap switches
        // to its long layout) on the next, indented line.
        let lines: Vec<&str> = out.lines().map(str::trim_start).collect();
        for (i, line) in lines.iter().enumerate().filter(|(_, l)| l.starts_with('-')) {
            let same = line.split_once("  ").map(|(_, h)| h.trim()).unwrap_or("");
            let next = lines.get(i + 1).copied().unwrap_or("").trim();
            assert!(
                !same.is_empty() || !(next.is_empty() || next.starts_with('-')),
                "`npurt {cmd}`: no help for `{line}`:\n{out}"
            );
        }
    }
    let (_, out, _) = npurt_code(&["perplexity", "-h"], &[]);
    // The option's line and the next (clap's long layout puts the help there).
    let lines: Vec<&str> = out.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.trim_start().starts_with("--ctx"))
        .expect("--ctx in perplexity's help");
    let ctx = format!("{} {}", lines[i], lines.get(i + 1).unwrap_or(&""));
    assert!(ctx.contains("512") && !ctx.contains("2048"), "{ctx}");
    // The other subcommands keep the model's default.
    let (_, out, _) = npurt_code(&["run", "-h"], &[]);
    assert!(out.contains("min(model maximum, 2048)"), "{out}");
}

#[test]
fn bad_counts_are_refused_with_the_reason() {
    let (code, _, err) = npurt_code(&["bench", "-r", "0"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--reps") && err.contains('0'), "{err}");

    let (code, _, err) = npurt_code(&["conformance", "--op", "softmaxx"], &[]);
    assert_eq!(code, Some(1));
    let e = error_line(&err);
    assert!(
        e.contains("softmaxx") && e.contains("matmul") && e.contains("attention"),
        "{err}"
    );

    let (code, _, err) = npurt_code(&["logits", "--out", "/dev/null"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--ids"), "{err}");

    let m = model_path();
    for n in ["0", "100000"] {
        let (code, _, err) = npurt_code(
            &["tokenize", "--text", "x", "--threads", n, "--model", &m],
            &[],
        );
        assert_eq!(code, Some(1), "--threads {n}: {err}");
        let e = error_line(&err);
        assert!(
            e.contains("threads") && e.contains("1..=1024") && e.contains(n),
            "{err}"
        );
        let (code, _, err) = npurt_code(&["conformance", "--op", "softmax", "--threads", n], &[]);
        assert_eq!(code, Some(1), "conformance --threads {n}: {err}");
        assert!(error_line(&err).contains("1..=1024"), "{err}");
    }
}

#[test]
fn perplexity_with_nothing_to_score_is_an_error() {
    let text = golden("texts/apache-2.0.txt");
    for max in ["1", "0"] {
        let (ok, out, err) = npurt(&[
            "perplexity",
            "--text-file",
            text.to_str().unwrap(),
            "--max-tokens",
            max,
        ]);
        assert!(!ok, "--max-tokens {max} scored: {out}");
        assert!(
            error_line(&err).contains("nothing to score")
                && error_line(&err).contains(&format!("has {max}")),
            "{err}"
        );
    }
}

#[test]
fn loading_reports_on_stderr_unless_json() {
    let (ok, out, err) = npurt(&["tokenize", "--text", "Hello"]);
    assert!(ok, "{err}");
    json(&out); // stdout stays one JSON value
    assert!(
        err.contains("loading ") && err.contains("loaded in "),
        "{err}"
    );
    let (ok, out, err) = npurt(&["run", "--prompt", "Hi", "--max-tokens", "1", "--json"]);
    assert!(ok, "{err}");
    json(&out);
    assert!(!err.contains("loading"), "{err}");
}

#[test]
fn wgpu_commands_do_not_print_the_xdg_warning() {
    // Unset, and set to something libwayland calls invalid (not an absolute path).
    let (code, out, err) = npurt_code(&["backends"], &["XDG_RUNTIME_DIR"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("wgpu"), "{out}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_npurt"))
        .arg("backends")
        .env("XDG_RUNTIME_DIR", "relative/dir")
        .output()
        .expect("run npurt");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
}

/// Bench rows name the kernels (wgpu: the family and its optional instructions; CPU:
/// the instruction path) and decode is quoted against the ceiling measured in the same
/// run (wgpu: the device's copy bandwidth; CPU: the host's read bandwidth).
#[test]
fn bench_rows_name_the_kernels_and_quote_decode_against_measured_bandwidth() {
    let (code, out, err) = npurt_code(&["backends"], &[]);
    assert_eq!(code, Some(0), "{err}");
    // `wgpu: <device> [kernels: <family (variants)>]`.
    let (device, kernels) = out
        .lines()
        .find_map(|l| l.strip_prefix("wgpu: "))
        .and_then(|l| l.strip_suffix(']')?.split_once(" [kernels: "))
        .unwrap_or_else(|| panic!("a wgpu line naming its kernels:\n{out}"));
    assert!(!device.starts_with("unavailable"), "{out}");
    assert_eq!(kernels, "lanes", "{out}");

    let m = model_path();
    let (code, out, err) = npurt_code(
        &[
            "bench",
            "--backend",
            "wgpu",
            "-p",
            "0",
            "-n",
            "2",
            "-r",
            "1",
            "--threads",
            "1,2",
            "--model",
            &m,
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("| tg2 |")).collect();
    assert_eq!(rows.len(), 1, "one run, not one per thread count:\n{out}");
    // lavapipe runs the lanes family by default; no thread count on a device.
    assert!(
        rows[0].contains("| lanes |") && rows[0].contains("| - |"),
        "{out}"
    );
    assert!(
        err.contains(device) && err.contains("measured copy"),
        "{err}"
    );
    assert!(
        out.contains("of the measured") && out.contains("GB/s copy bandwidth"),
        "{out}"
    );
    assert!(
        !out.contains("read bandwidth") && !out.contains("thread(s)"),
        "{out}"
    );
    // The tiled family names the optional instructions it uses.
    let tiled = [
        "bench",
        "--backend",
        "wgpu",
        "-p",
        "0",
        "-n",
        "2",
        "-r",
        "1",
        "--json",
        "--model",
        &m,
    ];
    let run = Command::new(env!("CARGO_BIN_EXE_npurt"))
        .args(tiled)
        .env("NPURT_WGPU_KERNELS", "tiled")
        .env_remove("NPURT_WGPU_VARIANTS")
        .output()
        .expect("run npurt");
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v = json(&out);
    assert_eq!(v["rows"][0]["kernels"], "tiled (f16+subgroup+dot4)", "{v}");
    let limits = &v["machine"][0]["device_limits"];
    assert!(limits["copy_gb_s"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(limits["peaks"].as_array().map(Vec::len), Some(3), "{v}");
    assert!(v["machine"][0]["read_bandwidth_gb_s"].is_null(), "{v}");

    let (code, out, err) = npurt_code(
        &[
            "bench",
            "-p",
            "0",
            "-n",
            "2",
            "-r",
            "1",
            "--threads",
            "1",
            "--json",
            "--model",
            &m,
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let v = json(&out);
    assert_eq!(v["rows"][0]["threads"], 1, "{v}");
    assert!(
        !v["rows"][0]["kernels"].as_str().unwrap().contains("Vulkan"),
        "{v}"
    );
    assert!(
        v["machine"][0]["read_bandwidth_gb_s"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    // Peak RSS (issue #11 point 6): at least the weights, and not the bandwidth probe's
    // 512 MiB buffer.
    let peak = v["peak_rss_bytes"]
        .as_u64()
        .expect("peak_rss_bytes is a number");
    let weights = v["machine"][0]["weight_mib"].as_f64().unwrap() * (1 << 20) as f64;
    assert!(peak as f64 > weights, "{v}");
    assert_eq!(
        v["machine"][0]["peak_rss_bytes"].as_u64(),
        Some(peak),
        "{v}"
    );
}

/// `npurt bench --profile` (issue #12 point 1): per-op-kind and slowest-node tables of a
/// prefill chunk and a decode step (at `-d`'s deepest depth), labelled with the time source, and the host share;
/// `--json` carries the same profile.
#[test]
fn bench_profile_prints_per_kind_and_per_node_tables() {
    let m = model_path();
    let base = [
        "bench",
        "-p",
        "0",
        "-n",
        "0",
        "--chunk",
        "16",
        "--ctx",
        "64",
        "-d",
        "0,40",
        "--profile",
        "--model",
        &m,
    ];
    for (backend, source) in [
        ("cpu", "host wall time per node"),
        ("wgpu", "GPU timestamps"),
    ] {
        let mut args = base.to_vec();
        args.extend(["--backend", backend, "--threads", "2", "--profile-top", "7"]);
        let (code, out, err) = npurt_code(&args, &[]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(
            out.matches("| op kind | ms | share | nodes |").count(),
            2,
            "{out}"
        );
        assert_eq!(
            out.matches("| slowest nodes | op kind | ms | share |")
                .count(),
            2,
            "{out}"
        );
        assert!(out.contains("profile: prefill chunk (16 rows)"), "{out}");
        // The decode step at -d's deepest depth.
        assert!(
            out.contains("profile: decode step (1 row, 40 tokens in the KV cache)"),
            "{out}"
        );
        assert_eq!(
            out.matches(&format!("time source: {source};")).count(),
            2,
            "{backend}: {out}"
        );
        assert_eq!(
            out.matches("host share of an ordinary run").count(),
            2,
            "{out}"
        );
        assert!(out.contains("| matmul |"), "{out}");
        // The matmuls' rate; on a device, also as a fraction of its measured peak.
        assert_eq!(out.matches("\nmatmuls: ").count(), 2, "{out}");
        let fractions = out.matches("of the measured f32 FMA peak").count();
        assert_eq!(fractions, if backend == "wgpu" { 2 } else { 0 }, "{out}");
        if backend == "wgpu" {
            assert!(
                err.contains("measured copy") && err.contains("f32 fma"),
                "{err}"
            );
        }
        // Seven slowest nodes per profile (the rows after each table's header).
        let node_rows = out
            .split("| slowest nodes |")
            .skip(1)
            .map(|t| {
                t.split("\n\n")
                    .next()
                    .unwrap()
                    .lines()
                    .filter(|l| l.starts_with("| ") && !l.starts_with("|---"))
                    .count()
            })
            .collect::<Vec<_>>();
        assert_eq!(node_rows, [7, 7], "7 rows each: {out}");
    }

    let mut args = base.to_vec();
    args.extend(["--threads", "2", "--json"]);
    let (code, out, err) = npurt_code(&args, &[]);
    assert_eq!(code, Some(0), "{err}");
    let v = json(&out);
    let p = &v["profile"][0];
    assert_eq!(p["threads"], 2, "{v}");
    assert_eq!(p["prefill_rows"], 16, "{v}");
    assert_eq!(p["decode_depth"], 40, "{v}");
    for part in ["prefill", "decode"] {
        let nodes = p[part]["nodes"].as_array().expect("nodes");
        assert!(nodes.len() > 100, "{part}: {} nodes", nodes.len());
        let total: f64 = nodes.iter().map(|n| n["ms"].as_f64().unwrap()).sum();
        let kinds: f64 = p[part]["by_kind"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["ms"].as_f64().unwrap())
            .sum();
        assert!(
            (total - kinds).abs() <= 1e-6 * total.max(1.0),
            "{part}: {total} vs {kinds}"
        );
        assert!(nodes.iter().all(|n| n["source"] == "host"), "{part}");
        assert!(
            p[part]["host"]["total_ms"].as_f64().unwrap() > 0.0,
            "{part}"
        );
    }
    // SmolLM2's matmuls: per layer and row 576 x (576 + 192 + 192 + 576) + 3 x 576 x
    // 1536 multiply-adds, 30 layers, and the LM head (576 x 49152) on the last row only.
    let layer = 576 * (576 + 192 + 192 + 576) + 3 * 576 * 1536;
    let head = 576 * 49152;
    for (part, rows) in [("prefill", 16), ("decode", 1)] {
        let want = 2.0 * f64::from(rows * 30 * layer + head);
        assert_eq!(p[part]["matmul"]["ops"].as_f64(), Some(want), "{part}: {v}");
        assert!(p[part]["matmul"]["ms"].as_f64().unwrap() > 0.0, "{part}");
    }
}

/// `make-model --shape bluelm-v-3b` writes a BlueLM-V directory that `bench
/// --image-size` measures end to end: the encode and image-prompt rows in the table,
/// and per size the time to first token, cold (encode + prefill) and with the encode
/// hidden behind typing (the prefill). Bad sizes and a text-only model are refused.
#[test]
fn bench_times_an_image_prompt_on_a_made_bluelm_v_directory() {
    let dir = std::env::temp_dir().join(format!("npurt-cli-bluelm-{}", std::process::id()));
    let d = dir.to_string_lossy().into_owned();
    let small = [
        "--vision-layers",
        "1",
        "--layers",
        "1",
        "--hidden",
        "64",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--mlp",
        "128",
        "--vocab",
        "300",
    ];
    let mut args = vec![
        "make-model",
        "--shape",
        "bluelm-v-3b",
        "--format",
        "hf",
        "--out",
        &d,
    ];
    args.extend(small);
    let (code, _, err) = npurt_code(&args, &[]);
    assert_eq!(code, Some(0), "{err}");

    let bench = [
        "bench",
        "--model",
        &d,
        "-p",
        "0",
        "-n",
        "0",
        "-r",
        "1",
        "--threads",
        "2",
    ];
    let (code, out, err) = npurt_code(
        &[&bench[..], &["--image-size", "768x1536", "--json"]].concat(),
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let v = json(&out);
    let tests: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["test"].as_str().unwrap())
        .collect();
    let p = &v["image_prompts"][0];
    let prompt = p["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        tests,
        [
            "enc 768x1536 (9 tiles)".to_string(),
            format!("pp{prompt} image+text")
        ],
        "{out}"
    );
    assert_eq!(
        (p["tiles"].as_u64(), p["image_tokens"].as_u64()),
        (Some(9), Some(9 * 196)),
        "{out}"
    );
    assert!(prompt > 9 * 196, "{out}");
    let ms = |k: &str| p[k].as_f64().unwrap_or_else(|| panic!("{k}: {out}"));
    assert!(ms("encode_ms") > 0.0 && ms("prefill_ms") > 0.0, "{out}");
    assert!(
        (ms("ttft_ms") - ms("encode_ms") - ms("prefill_ms")).abs() < 1e-6,
        "{out}"
    );
    assert_eq!(
        ms("ttft_encoded_while_typing_ms"),
        ms("prefill_ms"),
        "{out}"
    );

    let (code, out, err) = npurt_code(&[&bench[..], &["--image-size", "451x300"]].concat(), &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("| enc 451x300 (3 tiles) |"), "{out}");
    assert!(
        out.contains("time to first token, 451x300 image (3 tiles, 588 image tokens)")
            && out.contains("with the image encoded while the question is typed")
            && out.contains("encode (tower + projector) "),
        "{out}"
    );

    let (code, _, err) = npurt_code(&[&bench[..], &["--image-size", "0x5"]].concat(), &[]);
    assert_ne!(code, Some(0));
    assert!(error_line(&err).contains("0x5 is outside"), "{err}");
    let m = model_path();
    let (code, _, err) = npurt_code(
        &[
            "bench",
            "--model",
            &m,
            "-p",
            "0",
            "-n",
            "0",
            "-r",
            "1",
            "--image-size",
            "768x1536",
        ],
        &[],
    );
    assert_ne!(code, Some(0));
    assert!(error_line(&err).contains("no vision part"), "{err}");
    let (code, _, err) = npurt_code(
        &[
            "make-model",
            "--vision-layers",
            "1",
            "--format",
            "hf",
            "--out",
            &d,
        ],
        &[],
    );
    assert_ne!(code, Some(0));
    assert!(
        error_line(&err).contains("--vision-layers needs a BlueLM-V shape"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
