//! A mutation fuzzer for npurt's loaders (issue #11 point 9), on stable Rust with no
//! extra dependencies: seeded from small valid files, a hand-written mutation engine,
//! each input run in-process with panics caught, time measured and allocations counted.
//!
//! - `cargo run --release -p npurt-tests --bin npurt-fuzz -- --inputs 1000000` runs it
//!   (README "Fuzzing and soak");
//! - `tests/fuzz_loaders.rs` runs a short seeded slice of every loader in CI.
//!
//! An input is fully determined by (target, seed, index), so any failure the driver
//! reports can be replayed (and dumped to a file) with `--first INDEX --inputs 1`.

pub mod alloc;
pub mod driver;
pub mod mutate;
pub mod rng;
pub mod seeds;
pub mod targets;

use rng::Rng;

/// One loader under test.
pub trait Loader {
    /// The name reports and `--target` use.
    fn name(&self) -> &'static str;
    /// Valid inputs mutations start from (also splice partners).
    fn seeds(&self) -> &[Vec<u8>];
    /// A mutated copy of seed `seed` (an index into [`Loader::seeds`]).
    fn mutate(&self, rng: &mut Rng, seed: usize) -> Vec<u8>;
    /// Runs the loader on `input`: true if it was accepted, false if it was refused
    /// with a typed error. Anything else (a panic) propagates to the driver.
    fn run(&mut self, input: &[u8]) -> bool;
}

/// Every target's name, in the order reports list them.
pub const TARGETS: [&str; 7] = [
    "gguf",
    "safetensors",
    "config_json",
    "tokenizer_config",
    "chat_template",
    "image",
    "model_dir",
];

/// The loader called `name` (one of [`TARGETS`]).
pub fn loader(name: &str) -> Option<Box<dyn Loader>> {
    Some(match name {
        "gguf" => Box::new(targets::Gguf::new()),
        "safetensors" => Box::new(targets::Safetensors::new()),
        "config_json" => Box::new(targets::ConfigJson::new()),
        "tokenizer_config" => Box::new(targets::TokenizerConfig::new()),
        "chat_template" => Box::new(targets::ChatTemplate::new()),
        "image" => Box::new(targets::Image::new()),
        "model_dir" => Box::new(targets::ModelDir::new()),
        _ => return None,
    })
}
