//! Speculative decoding by prompt lookup (`GenerateOptions::speculation`) on the real
//! SmolLM2 at the default precision (w4a16): for greedy and seeded sampling, with a stop
//! string, a full context and a cancelling callback, the generation and the session it
//! leaves are those of plain decoding. Tokens and text must be identical; the logits
//! the session is left with agree within 1e-3 of their range (the verification and
//! the decode step are different kernels; these requests have no near-tie that the
//! difference flips, see `runtime/src/speculative.rs`). The greedy goldens with
//! speculation are in `golden_smollm2.rs`.

use npurt_runtime::{
    GenerateOptions, Generation, LoadOptions, Model, PromptLookup, Runtime, SamplingOptions,
    Session, StopReason,
};
use npurt_tests::*;
use std::sync::{Arc, OnceLock};

fn model() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| {
        Runtime::new()
            .load(
                &smollm2_gguf(),
                LoadOptions {
                    ctx: Some(512),
                    ..Default::default()
                },
            )
            .expect("load SmolLM2")
    })
    .clone()
}

/// A request whose answer repeats itself (the small model loops on it), so drafts
/// are found and kept, and one whose answer mostly does not.
const QUESTIONS: [&str; 2] = [
    "Rewrite this list in the same order, one item per line, each starting with a dash: apples, bananas, cherries, dates, elderberries, figs, grapes, honeydew melons, kiwis, lemons, mangoes, nectarines, oranges, papayas.",
    "What is the capital of France? Answer with a long paragraph about its history.",
];

fn prompt(m: &Model, q: &str) -> Vec<u32> {
    let text = m
        .render_chat(&[npurt_models::ChatMessage::new("user", q)])
        .unwrap();
    m.encode(&text).unwrap()
}

/// Generates into a fresh session, the callback cancelling at the `cancel_after`th
/// piece; returns the generation, the streamed pieces and the session.
fn generate(
    ids: &[u32],
    opts: &GenerateOptions,
    cancel_after: Option<usize>,
) -> (Generation, Vec<String>, Session) {
    let mut s = Session::new(model()).unwrap();
    let mut pieces = Vec::new();
    let g = s
        .generate(ids, opts, |p, _| {
            pieces.push(p.to_string());
            cancel_after.is_none_or(|n| pieces.len() < n)
        })
        .unwrap();
    (g, pieces, s)
}

/// Plain decoding and speculation give the same generation and leave the same session.
fn check_same(
    name: &str,
    ids: &[u32],
    opts: GenerateOptions,
    cancel_after: Option<usize>,
) -> usize {
    let (plain, plain_pieces, ps) = generate(ids, &opts, cancel_after);
    let spec_opts = GenerateOptions {
        speculation: Some(PromptLookup::default()),
        ..opts
    };
    let (spec, spec_pieces, ss) = generate(ids, &spec_opts, cancel_after);
    assert_eq!(spec.tokens, plain.tokens, "{name}: tokens");
    assert_eq!(spec.text, plain.text, "{name}: text");
    assert_eq!(spec.stop, plain.stop, "{name}: stop reason");
    assert_eq!(spec_pieces, plain_pieces, "{name}: streamed pieces");
    assert_eq!(ss.tokens(), ps.tokens(), "{name}: session tokens");
    let (a, b) = (ss.last_logits().unwrap(), ps.last_logits().unwrap());
    assert!(
        max_abs_diff(a, b) <= 1e-3 * logit_range(b),
        "{name}: last logits differ by {} (range {})",
        max_abs_diff(a, b),
        logit_range(b)
    );
    assert_eq!(
        plain.speculation.drafted, 0,
        "{name}: plain decoding drafted"
    );
    assert!(spec.speculation.accepted <= spec.speculation.drafted);
    spec.speculation.accepted
}

#[test]
fn speculation_changes_no_output_greedy_or_sampled() {
    let m = model();
    let sampled = SamplingOptions {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        repetition_penalty: 1.1,
        seed: 3,
    };
    let mut kept = Vec::new();
    for q in QUESTIONS {
        let ids = prompt(&m, q);
        for sampling in [SamplingOptions::default(), sampled.clone()] {
            let opts = GenerateOptions {
                max_tokens: 80,
                sampling: sampling.clone(),
                ..Default::default()
            };
            kept.push(check_same(
                &format!("{q:.20} {sampling:?}"),
                &ids,
                opts,
                None,
            ));
        }
    }
    // The looping answer's drafts are kept, greedy and sampled.
    assert!(kept[0] > 20 && kept[1] > 0, "draft tokens kept: {kept:?}");
}

#[test]
fn speculation_stops_where_plain_decoding_stops() {
    let m = model();
    let ids = prompt(&m, QUESTIONS[0]);
    let greedy = GenerateOptions {
        max_tokens: 80,
        ..Default::default()
    };
    // A stop string taken from the middle of the plain answer (inside a drafted run).
    let (plain, _, _) = generate(&ids, &greedy, None);
    let mid = plain.text.len() / 2;
    let (from, to) = (
        (mid..).find(|&i| plain.text.is_char_boundary(i)).unwrap(),
        (mid + 6..)
            .find(|&i| plain.text.is_char_boundary(i))
            .unwrap(),
    );
    let stop = plain.text[from..to].to_string();
    let opts = GenerateOptions {
        stop_strings: vec![stop.clone()],
        ..greedy.clone()
    };
    check_same("stop string", &ids, opts.clone(), None);
    assert_eq!(
        generate(&ids, &opts, None).0.stop,
        StopReason::StopString,
        "{stop:?}"
    );

    // A cancelling callback.
    check_same("cancelled", &ids, greedy.clone(), Some(9));

    // A context that fills during the answer: the session may not outgrow it.
    let ctx = m.ctx;
    let long: Vec<u32> = ids.iter().copied().cycle().take(ctx - 30).collect();
    for speculation in [None, Some(PromptLookup::default())] {
        let mut s = Session::new(m.clone()).unwrap();
        s.feed(&long).unwrap();
        let g = s
            .generate(
                &[],
                &GenerateOptions {
                    speculation,
                    ..greedy.clone()
                },
                |_, _| true,
            )
            .unwrap();
        assert_eq!(g.stop, StopReason::ContextFull, "{speculation:?}");
        assert_eq!(
            s.len(),
            ctx,
            "{speculation:?}: the session fills the context exactly"
        );
    }
}
