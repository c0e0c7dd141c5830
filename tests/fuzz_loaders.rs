//! CI's seeded slice of the loader fuzzer (issue #11 point 9): a few thousand mutated
//! inputs per loader, each of which must be accepted or refused with a typed error,
//! within a second and 256 MiB. The full run is `npurt-fuzz` (README "Fuzzing and
//! soak"); a failure here prints the command that replays the input.

use npurt_tests::fuzz::{self, alloc::CountingAlloc, driver};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// CI's seed: fixed, so a failure is reproducible; `NPURT_FUZZ_SEED` runs another slice.
fn seed() -> u64 {
    std::env::var("NPURT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261129)
}

fn slice(target: &str, inputs: u64) {
    let mut loader = fuzz::loader(target).expect("a known target");
    let cfg = driver::FuzzConfig {
        seed: seed(),
        inputs,
        // The seven slices run in parallel on CI's two cores (and beside other test
        // binaries' leftovers), so wall time per input stretches several-fold; the full
        // run (`npurt-fuzz`, one loader at a time) holds inputs to 1 s.
        deadline: std::time::Duration::from_secs(3),
        ..Default::default()
    };
    let report = driver::run(loader.as_mut(), &cfg);
    eprintln!("{}", report.summary());
    let failures: Vec<String> = report
        .failures
        .iter()
        .map(|f| {
            format!(
                "input {}: {}\n  replay: cargo run --release -p npurt-tests --bin npurt-fuzz -- \
                 --target {target} --seed {} --first {} --inputs 1",
                f.index, f.what, cfg.seed, f.index
            )
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A slice where nothing is ever accepted (or nothing refused) is not exercising the
    // loader past its first check: the seeds or the mutations are broken.
    assert!(
        report.accepted > 0,
        "no input was accepted: {}",
        report.summary()
    );
    assert!(
        report.rejected > 0,
        "no input was refused: {}",
        report.summary()
    );
}

#[test]
fn gguf() {
    slice("gguf", 5000);
}

#[test]
fn safetensors() {
    slice("safetensors", 5000);
}

#[test]
fn config_json() {
    slice("config_json", 5000);
}

#[test]
fn tokenizer_config() {
    slice("tokenizer_config", 5000);
}

#[test]
fn chat_template() {
    slice("chat_template", 5000);
}

#[test]
fn image() {
    slice("image", 5000);
}

#[test]
fn model_dir() {
    slice("model_dir", 5000);
}

/// The same (seed, index) gives the same input: what makes a reported failure
/// replayable.
#[test]
fn inputs_replay_exactly() {
    for target in fuzz::TARGETS {
        let loader = fuzz::loader(target).unwrap();
        for i in [0, 1, 977] {
            let a = driver::input_for(loader.as_ref(), 7, i);
            let b = driver::input_for(loader.as_ref(), 7, i);
            assert_eq!(a, b, "{target} input {i}");
        }
    }
}
