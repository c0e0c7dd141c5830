//! The memory budget: weights, sessions and images reserve their planned bytes before
//! allocating, and what does not fit is a typed error naming the sizes. Also the
//! context limit: the model's trained length unless its rope scaling extends it.

use npurt_runtime::{ImageInput, LoadOptions, Runtime, RuntimeError, Session, VisionOptions};
use npurt_tests::{golden, smollm2_gguf, vlm_tiny_dir};

fn load(
    budget: Option<u64>,
    ctx: Option<usize>,
) -> Result<std::sync::Arc<npurt_runtime::Model>, RuntimeError> {
    Runtime::new().load(
        &smollm2_gguf(),
        LoadOptions {
            mem_budget: budget,
            ctx,
            ..LoadOptions::default()
        },
    )
}

fn over_budget(r: Result<impl Sized, RuntimeError>, what: &str) -> (u64, u64) {
    match r {
        Err(RuntimeError::OverBudget {
            what: w,
            needed,
            budget,
            ..
        }) => {
            assert!(w.contains(what), "refused `{w}`, expected `{what}`");
            (needed, budget)
        }
        Err(e) => panic!("expected OverBudget for {what}, got {e}"),
        Ok(_) => panic!("expected OverBudget for {what}, it fit"),
    }
}

#[test]
fn weights_and_sessions_that_do_not_fit_are_refused_before_allocating() {
    let m = load(Some(64 << 30), None).unwrap();
    let (weights, session) = (m.budget.used(), m.session_bytes);
    assert!(
        weights > 60 << 20 && session > 10 << 20,
        "{weights} {session}"
    );

    let (needed, _) = over_budget(load(Some(50 << 20), None), "LLM weights");
    assert_eq!(needed, weights);
    over_budget(load(Some(weights + session - 1), None), "one session");

    // Room for the weights and one session: the second session is refused until the
    // first is dropped.
    let m = load(Some(weights + session), None).unwrap();
    let first = Session::new(m.clone()).unwrap();
    over_budget(Session::new(m.clone()), "a session");
    drop(first);
    Session::new(m.clone()).expect("the first session's bytes came back");
}

#[test]
fn contexts_beyond_the_trained_length_are_refused() {
    match load(None, Some(1 << 20)) {
        Err(RuntimeError::InvalidOption {
            option: "ctx",
            reason,
        }) => {
            assert!(reason.contains("8192"), "{reason}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a 1M context loaded"),
    }
    let m = load(None, Some(8192)).expect("the trained length loads");
    assert_eq!(m.ctx, 8192);
}

#[test]
fn an_image_that_does_not_fit_the_budget_is_refused_before_encoding() {
    let dir = vlm_tiny_dir(|_| {});
    let opts = |budget| LoadOptions {
        mem_budget: budget,
        ..LoadOptions::default()
    };
    let rt = Runtime::new();
    let m = rt
        .load_multimodal(&dir, opts(Some(64 << 30)), VisionOptions::default())
        .unwrap();
    let fits = m.budget.used() + m.session_bytes;
    drop(m);
    let m = rt
        .load_multimodal(&dir, opts(Some(fits)), VisionOptions::default())
        .unwrap();
    let _s = Session::new(m.clone()).unwrap();
    over_budget(
        m.encode_image(ImageInput::File(golden("images/chelsea.png"))),
        "an image of 451x300",
    );
}

#[test]
fn prompts_longer_than_the_context_are_refused_or_windowed() {
    use npurt_runtime::{GenerateOptions, PromptOverflow};
    let m = load(None, Some(256)).unwrap();
    let ids: Vec<u32> = (0..1000).map(|i| 100 + (i % 500)).collect();
    let mut s = Session::new(m.clone()).unwrap();
    let opts = GenerateOptions {
        max_tokens: 8,
        ..Default::default()
    };
    match s.generate(&ids, &opts, |_, _| true) {
        Err(RuntimeError::ContextOverflow {
            needed: 1000,
            ctx: 256,
            ..
        }) => {}
        other => panic!(
            "expected ContextOverflow, got {:?}",
            other.map(|g| g.tokens)
        ),
    }
    let windowed = GenerateOptions {
        prompt_overflow: PromptOverflow::SlidingWindow { keep_first: 10 },
        ..opts
    };
    let fitted = s.fit_prompt(&ids, windowed.prompt_overflow, 8).unwrap();
    assert_eq!(
        fitted.ids.len(),
        248,
        "256 positions less room for 8 new tokens"
    );
    assert_eq!(&fitted.ids[..10], &ids[..10], "the first tokens are kept");
    assert_eq!(
        &fitted.ids[10..],
        &ids[1000 - 238..],
        "then the most recent ones"
    );
    let g = s.generate(&ids, &windowed, |_, _| true).unwrap();
    assert_eq!((g.prompt_tokens, g.prompt_dropped), (248, 752));
    assert!(s.len() <= 256);
    // Keeping more than fits is refused by name.
    let e = s
        .fit_prompt(&ids, PromptOverflow::SlidingWindow { keep_first: 900 }, 8)
        .unwrap_err();
    assert!(e.to_string().contains("sliding window"), "{e}");
}
