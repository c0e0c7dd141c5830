//! The memory budget: weights, sessions and images reserve their planned bytes before
//! allocating, and what does not fit is a typed error naming the sizes. Also the
//! context limit: the model's trained length unless its rope scaling extends it.

use npurt_runtime::{ImageInput, LoadOptions, Runtime, RuntimeError, Session, VisionOptions};
use npurt_tests::{golden, smollm2_gguf, vlm_tiny_dir};

fn load(budget: Option<u64>, ctx: Option<usize>) -> Result<std::sync::Arc<npurt_runtime::Model>, RuntimeError> {
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
    assert!(weights > 60 << 20 && session > 10 << 20, "{weights} {session}");

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
        Err(RuntimeError::InvalidOption { option: "ctx", reason }) => {
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
