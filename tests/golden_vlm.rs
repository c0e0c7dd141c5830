//! A multimodal model end to end against HF transformers (`../shared/golden/vlm_tiny`,
//! README section 4): chelsea.png through the BlueLM-V model directory (siglip_tiny +
//! vlm_tiny's projector + the real SmolLM2), at fp32, on the CPU and wgpu backends.
//! Tolerances (README): projected embeddings max abs <= 1e-4; logits (last position and
//! the last 16 positions' top-k and lse) `<= 1e-3 x` the logit range at that position,
//! rank-1 id equal; the 16 greedy tokens identical.

use npurt_graph::PrecisionPolicy;
use npurt_models::ChatMessage;
use npurt_runtime::{
    GenerateOptions, ImageInput, LoadOptions, Model, Position, PromptPart, Runtime, RuntimeError,
    Session, VisionOptions,
};
use npurt_tests::*;
use std::sync::Arc;
use std::time::Instant;

fn load(backend: &str, ctx: Option<usize>) -> Arc<Model> {
    let dir = vlm_tiny_dir(|_| {});
    let opts = LoadOptions {
        backend: backend.into(),
        precision: PrecisionPolicy::F32,
        ctx,
        ..LoadOptions::default()
    };
    let vopts = VisionOptions {
        precision: PrecisionPolicy::F32,
        ..VisionOptions::default()
    };
    Runtime::new()
        .load_multimodal(&dir, opts, vopts)
        .unwrap_or_else(|e| panic!("loading vlm_tiny on {backend}: {e}"))
}

fn chelsea() -> ImageInput {
    ImageInput::File(golden("images/chelsea.png"))
}

/// The README's logits check at one position.
fn check_logits(what: &str, ours: &[f32], ids: &[i32], vals: &[f32], lse: f32) {
    let tol = 1e-3 * logit_range(ours);
    let top1 = (0..ours.len())
        .max_by(|&a, &b| ours[a].total_cmp(&ours[b]))
        .unwrap();
    assert_eq!(top1 as i32, ids[0], "{what}: rank-1 id");
    for (&id, &v) in ids.iter().zip(vals) {
        let d = (ours[id as usize] - v).abs();
        assert!(
            d <= tol,
            "{what}: id {id}: ours {} ref {v} tol {tol}",
            ours[id as usize]
        );
    }
    let d = (logsumexp(ours) - lse as f64).abs();
    assert!(d <= tol as f64, "{what}: lse differs by {d} > {tol}");
}

/// The whole golden path on one backend: encode (started before the prompt exists),
/// splice, prefill with every position's logits, greedy continuation.
fn end_to_end(backend: &str) {
    let m = load(backend, None);
    assert!(m.load_report.llm_ms > 0.0 && m.load_report.vision_ms > 0.0);
    let io = GoldenTensors::open("vlm_tiny/io.safetensors");
    let pending = m.encode_image(chelsea()).expect("encode_image");
    assert_eq!(
        (pending.plan().grid, pending.plan().image_tokens),
        ([2, 1], 588)
    );

    // The prompt as the README builds it: the placeholder before the text.
    let (text, images) = m
        .render_multimodal_chat(&[(
            ChatMessage::new("user", "Describe this image."),
            vec![&pending],
        )])
        .expect("render");
    let parts = m.split_prompt(&text, &images).expect("split");
    let (left, right) = match &parts[..] {
        [PromptPart::Text(l), PromptPart::Image(_), PromptPart::Text(r)] => (l.clone(), r.clone()),
        _ => panic!("expected text, image, text"),
    };
    let as_u32 = |v: Vec<i32>| v.into_iter().map(|x| x as u32).collect::<Vec<_>>();
    assert_eq!(
        left,
        as_u32(io.i32("input_ids_left").1),
        "ids left of the image"
    );
    assert_eq!(
        right,
        as_u32(io.i32("input_ids_right").1),
        "ids right of the image"
    );

    let emb = pending.wait().expect("encode");
    let d = max_abs_diff(&emb.data, &io.f32("projected").1);
    assert!(d <= 1e-4, "{backend} projected: max abs diff {d:e}");

    let parts = vec![
        PromptPart::Text(left.clone()),
        PromptPart::Image(emb.clone()),
        PromptPart::Text(right.clone()),
    ];
    let mut s = Session::new(m.clone()).unwrap();
    let rows = s.feed_prompt_last_logits(&parts, 16).expect("prefill");
    assert_eq!((s.len(), rows.len()), (623, 16));
    assert_eq!(s.positions()[23], Position::Token(left[23]));
    assert_eq!(s.positions()[24], Position::Image { image: 0, row: 0 });
    assert_eq!(s.positions()[611], Position::Image { image: 0, row: 587 });
    assert_eq!(s.tokens().len(), 35);

    let (_, ids) = io.i32("topk_ids_last16");
    let (_, vals) = io.f32("topk_vals_last16");
    let (_, lse) = io.f32("lse_last16");
    for (k, row) in rows.iter().enumerate() {
        check_logits(
            &format!("{backend} position {}", 607 + k),
            row,
            &ids[k * 16..(k + 1) * 16],
            &vals[k * 16..(k + 1) * 16],
            lse[k],
        );
    }
    let want_last = io.f32("logits_last").1;
    let d = max_abs_diff(&rows[15], &want_last);
    assert!(
        d <= 1e-3 * logit_range(&want_last),
        "{backend} logits_last: {d}"
    );

    let want: Vec<u32> = as_u32(io.i32("greedy_ids").1);
    let g = s
        .generate(
            &[],
            &GenerateOptions {
                max_tokens: 16,
                ..Default::default()
            },
            |_, _| true,
        )
        .expect("generate");
    assert_eq!(g.tokens, want, "{backend}: greedy tokens");
    assert_eq!(
        g.text,
        read_json("vlm_tiny/config.json")["golden"]["greedy_16"]["text"]
            .as_str()
            .unwrap()
    );

    // Rollback into the text after the image and feed it again: the same next token
    // (the image's cache rows are still there).
    s.truncate(612);
    assert_eq!(s.tokens().len(), 24);
    s.feed(&right).unwrap();
    let again = s.last_logits().unwrap();
    let d = max_abs_diff(again, &want_last);
    assert!(
        d <= 1e-3 * logit_range(&want_last),
        "{backend} after rollback: {d}"
    );
}

#[test]
fn vlm_tiny_matches_hf_end_to_end_on_cpu() {
    end_to_end("cpu");
}

#[test]
fn vlm_tiny_matches_hf_end_to_end_on_wgpu() {
    end_to_end("wgpu");
}

/// `encode_image` returns before the encode is done, the caller works meanwhile (here:
/// renders and prefills the text before the image), and `wait` then only waits for
/// what is left; the result equals an encode waited on at once.
#[test]
fn the_image_encodes_while_the_caller_works() {
    let m = load("cpu", None);
    let pending = m.encode_image(chelsea()).unwrap();
    let returned = Instant::now();
    let (text, images) = m
        .render_multimodal_chat(&[(
            ChatMessage::new("user", "Describe this image."),
            vec![&pending],
        )])
        .unwrap();
    let parts = m.split_prompt(&text, &images).unwrap();
    let PromptPart::Text(left) = &parts[0] else {
        panic!("text first")
    };
    let mut s = Session::new(m.clone()).unwrap();
    s.feed(left).unwrap();
    let caller_done = Instant::now();
    let emb = pending.wait().unwrap();
    let finished = pending.finished_at().expect("finished");
    assert!(
        finished > returned,
        "the encode finished after encode_image returned: it ran beside the caller"
    );
    eprintln!(
        "encode ran {:.1} ms after encode_image returned; the caller worked {:.1} ms meanwhile",
        (finished - returned).as_secs_f64() * 1e3,
        (caller_done - returned).as_secs_f64() * 1e3
    );
    let again = m.encode_image(chelsea()).unwrap().wait().unwrap();
    assert_eq!(emb.data, again.data);

    // A second image in the same conversation, after an answer: positions keep count.
    s.feed(&m.encode("\nAnd now?").unwrap()).unwrap();
    s.feed_prompt(&[PromptPart::Image(emb.clone())]).unwrap();
    let img_rows: Vec<_> = s
        .positions()
        .iter()
        .filter_map(|p| match p {
            Position::Image { image, .. } => Some(*image),
            _ => None,
        })
        .collect();
    assert_eq!(img_rows.len(), 588);
    assert!(
        img_rows.iter().all(|&i| i == 0),
        "the first image fed is image 0"
    );
    s.feed_prompt(&[PromptPart::Image(emb)]).unwrap();
    assert_eq!(
        s.positions().last(),
        Some(&Position::Image { image: 1, row: 587 })
    );
}

#[test]
fn bad_multimodal_inputs_are_typed_errors() {
    let m = load("cpu", Some(512));
    // chelsea is 3 tiles = 588 positions: more than a 512 context, refused before encoding.
    match m.encode_image(chelsea()) {
        Err(RuntimeError::ImageTooLarge {
            image_tokens: 588,
            tiles: 3,
            ctx: 512,
        }) => {}
        other => panic!("expected ImageTooLarge, got {:?}", other.err()),
    }
    let e = m
        .split_prompt::<()>("a <image> b", &[])
        .err()
        .expect("a placeholder without an image");
    assert!(
        matches!(e, RuntimeError::PlaceholderWithoutImage { .. }),
        "{e}"
    );
    let e = m
        .split_prompt("no placeholder", &[(), ()])
        .err()
        .expect("images without placeholders");
    assert!(
        matches!(e, RuntimeError::MoreImagesThanPlaceholders { .. }),
        "{e}"
    );

    // A text-only model refuses images by name.
    let text_only = Runtime::new()
        .load(&smollm2_gguf(), LoadOptions::default())
        .unwrap();
    assert!(matches!(
        text_only.encode_image(chelsea()),
        Err(RuntimeError::NotMultimodal)
    ));

    // Released vision: typed error.
    m.release_vision();
    assert!(m.vision.as_ref().unwrap().encoder().is_none());
    assert!(matches!(
        m.encode_image(ImageInput::File(golden("images/coffee.png"))),
        Err(RuntimeError::VisionReleased) | Err(RuntimeError::ImageTooLarge { .. })
    ));
}

/// Model directories whose parts disagree fail at load, naming what disagrees.
/// A config edit and what the refusal must name.
type ConfigCase = (&'static str, Box<dyn Fn(&mut serde_json::Value)>);

#[test]
fn inconsistent_model_directories_are_refused() {
    let cases: Vec<ConfigCase> = vec![
        (
            "takes 384x384",
            Box::new(|c| c["tiling"]["tile"] = serde_json::json!(224)),
        ),
        (
            "nothing.safetensors",
            Box::new(|c| c["projector"] = serde_json::json!("nothing.safetensors")),
        ),
        (
            "model_type",
            Box::new(|c| c["model_type"] = serde_json::json!("bluelm")),
        ),
    ];
    for (want, edit) in cases {
        let dir = vlm_tiny_dir(edit);
        let e = Runtime::new()
            .load_multimodal(&dir, LoadOptions::default(), VisionOptions::default())
            .err()
            .unwrap_or_else(|| panic!("{want}: loaded"));
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
    // The projector's width must be the LLM's hidden size: a tiny LLM of width 32.
    let dir = vlm_tiny_dir(|c| c["llm"] = serde_json::json!("tiny.gguf"));
    std::fs::write(
        dir.join("tiny.gguf"),
        npurt_models::testfiles::TinyLlama::default().gguf().0,
    )
    .unwrap();
    let e = Runtime::new()
        .load_multimodal(&dir, LoadOptions::default(), VisionOptions::default())
        .err()
        .expect("a projector into the wrong width");
    let msg = e.to_string();
    assert!(
        msg.contains("width 576") && msg.contains("hidden size 32"),
        "{msg}"
    );
}

/// A frontend prefills a conversation's start and its image while the user types
/// (`render_multimodal_chat_ahead`), then feeds the whole prompt with
/// `feed_pending_reusing`: only the question and the template's tail are fed then, and
/// the last logits and the greedy answer are those of the whole prompt fed at once
/// (within 1e-4 of the logit range: the chunks split the rows differently, which
/// reorders attention's sums).
/// The same prompt again feeds nothing; a session holding another question keeps the
/// shared start; another encode of the same picture is another image (fed again, with
/// the same result).
#[test]
fn a_prompt_start_prefilled_while_typing_is_reused() {
    let m = load("cpu", None);
    let pending = m.encode_image(chelsea()).unwrap();
    let turn = |text: &str| vec![(ChatMessage::new("user", text), vec![&pending])];
    let question = "What animal is this?";
    let (text, images) = m.render_multimodal_chat(&turn(question)).unwrap();
    let full = m.split_prompt(&text, &images).unwrap();
    let total: usize = full.iter().map(PromptPart::positions).sum();
    let gen = GenerateOptions {
        max_tokens: 8,
        ..Default::default()
    };
    let answer = |s: &mut Session| s.generate(&[], &gen, |_, _| true).unwrap().text;
    let same_logits = |what: &str, s: &Session, want: &[f32]| {
        let ours = s.last_logits().expect("logits");
        let d = max_abs_diff(ours, want);
        assert!(
            d <= 1e-4 * logit_range(want),
            "{what}: logits differ by {d}"
        );
    };
    let mut whole = Session::new(m.clone()).unwrap();
    whole.feed_pending(&full).unwrap();
    let want = whole.last_logits().unwrap().to_vec();
    let want_text = answer(&mut whole);

    // While typing: the start, whatever was typed so far left out.
    let (start, images) = m.render_multimodal_chat_ahead(&turn("What ani")).unwrap();
    assert!(text.starts_with(&start), "{start:?} starts {text:?}");
    assert!(!start.contains("ani"), "{start:?}");
    let ahead = m.split_prompt(&start, &images).unwrap();
    let mut s = Session::new(m.clone()).unwrap();
    // On a worker thread, as a frontend whose own thread takes the typing does.
    let fed_ahead =
        std::thread::scope(|t| t.spawn(|| s.feed_pending(&ahead).unwrap()).join().unwrap());
    // The question typed: the start (header, image) is kept.
    let PromptPart::Text(header) = &full[0] else {
        panic!("text first")
    };
    let image_end = header.len() + 588;
    let r = s.feed_pending_reusing(&full).unwrap();
    assert_eq!(r.reused + r.fed, total);
    assert!(
        r.reused >= image_end && r.reused <= fed_ahead,
        "{r:?}: the header and the image ({image_end} positions) are kept"
    );
    assert!(r.fed < 20, "{r:?}: the question and the template's tail");
    assert_eq!(s.len(), total);
    same_logits("prefilled while typing", &s, &want);
    assert_eq!(answer(&mut s), want_text);

    // The same prompt into a session that holds just it: nothing to feed.
    let mut again = Session::new(m.clone()).unwrap();
    again.feed_pending(&full).unwrap();
    let r = again.feed_pending_reusing(&full).unwrap();
    assert_eq!((r.reused, r.fed), (total, 0));
    assert_eq!(again.last_logits().unwrap(), &want[..], "untouched");
    // Holding it and its answer: the answer goes, the last token is fed again.
    let r = s.feed_pending_reusing(&full).unwrap();
    assert_eq!((r.reused, r.fed), (total - 1, 1));
    same_logits("the last token again", &s, &want);

    // Another question after the same start: the header and the image are kept.
    let (other_text, images) = m.render_multimodal_chat(&turn("Where is it?")).unwrap();
    let other = m.split_prompt(&other_text, &images).unwrap();
    let r = s.feed_pending_reusing(&other).unwrap();
    assert!(r.reused >= image_end, "{r:?}");

    // Another encode of the same picture: the image is fed again (after the header).
    let twin = m.encode_image(chelsea()).unwrap();
    let (twin_text, images) = m
        .render_multimodal_chat(&[(ChatMessage::new("user", question), vec![&twin])])
        .unwrap();
    let twin_parts = m.split_prompt(&twin_text, &images).unwrap();
    let r = s.feed_pending_reusing(&twin_parts).unwrap();
    assert_eq!((r.reused, r.fed), (header.len(), total - header.len()));
    same_logits("another encode", &s, &want);
}
