//! `npurt`: the command-line frontend. The LLM subcommands (`run`, `chat`, `logits`,
//! `tokenize`, `perplexity`, `inspect`, `bench`) share `--model` (default: the fetched SmolLM2 GGUF),
//! `--backend`, `--precision`, `--kv-cache`, `--threads`, `--chunk` and `--ctx`;
//! `conformance` takes `--backend`, `--op` and `--threads`; `encode-image` has its own
//! flags; `image-plan`, `make-model` and `backends` need no model.
//!
//! Exit status: 2 for a usage error (an unknown or missing flag, a value that does not
//! parse: clap's convention), 1 for an error at run time, printed with its cause chain.
//! Long steps (loading a model, encoding an image) report on stderr as they start and
//! end, except with `--json`; stdout carries only the results.

use clap::{ArgGroup, Args, Parser, Subcommand};
use npurt_graph::PrecisionPolicy;
use npurt_runtime::{
    perplexity, GenerateOptions, LoadOptions, Model, Runtime, SamplingOptions, Session,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[path = "npurt/chat.rs"]
mod chat;
#[path = "npurt/encode_image.rs"]
mod encode_image;
#[path = "npurt/make_model.rs"]
mod make_model;
#[path = "npurt/run_prompt.rs"]
mod run_prompt;

const DEFAULT_MODEL: &str = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Parser)]
#[command(
    name = "npurt",
    version,
    about = "npurt: static-graph LLM/VLM runtime for on-device NPUs, GPUs and CPUs",
    after_help = "Environment: NPURT_MODEL sets the default --model; \
                  NPURT_CPU_ISA=portable|avx2|avx2vnni|avx512 forces the CPU kernels down \
                  to that path (default: the best this CPU supports)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Model: a .gguf file or an HF model directory (default: the fetched SmolLM2).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Backend name (see `npurt backends`).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Worker threads, 1 to 1024 (default: one per core). `bench` takes a list (`1,2`)
    /// and runs each; other commands use the first.
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Prefill chunk size (rows of the static prefill graph).
    #[arg(long, default_value_t = npurt_runtime::DEFAULT_CHUNK)]
    chunk: usize,
    /// Context length in tokens (default: min(model maximum, 2048)).
    #[arg(long)]
    ctx: Option<usize>,
    /// Precision preset: f32 (reference), w8a16, w8a8, w4a16, w4a8.
    #[arg(long, default_value = "w4a16")]
    precision: String,
    /// KV cache type, overriding the preset's (f32 for `f32`, f16 for the others);
    /// int8: symmetric, one scale per token per KV head (about a quarter of f32).
    #[arg(long, value_parser = ["f32", "f16", "int8"])]
    kv_cache: Option<String>,
    /// A BlueLM-V model's vision precision: f32, w8a16, w8a8 (default: f32 with
    /// `--precision f32`, else w8a16, INT8 weights and 16-bit activations).
    #[arg(long)]
    vision_precision: Option<String>,
    /// Memory the model, its sessions and images may plan for, in bytes (suffixes
    /// K, M, G: `1.5G`); what does not fit is refused before allocating (default: 80%
    /// of the available memory).
    #[arg(long)]
    mem_budget: Option<String>,
}

/// How an answer is generated (`run`, `chat`).
#[derive(Args, Clone)]
struct GenerationArgs {
    /// Most tokens to generate (generation also stops at EOS and at --stop).
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature: 0 is greedy (argmax); must be finite and >= 0.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only among the K most likely tokens (0: no limit).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches P,
    /// in (0, 1] (1: no limit).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// HF's repetition penalty on tokens already in the session (> 0; 1: off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Seed of the sampler's random numbers (same seed, same text).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Speculative decoding by prompt lookup: draft up to N tokens a step from what
    /// followed the last tokens earlier in the session, verified in one execution
    /// (1 to 7; 0: off). The text is the same, up to rounding at near-ties.
    #[arg(long, default_value_t = 0)]
    speculate: usize,
}

impl GenerationArgs {
    fn options(self, prompt_overflow: npurt_runtime::PromptOverflow) -> GenerateOptions {
        GenerateOptions {
            max_tokens: self.max_tokens,
            sampling: SamplingOptions {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
            },
            stop_at_eos: true,
            stop_strings: self.stop,
            prompt_overflow,
            speculation: (self.speculate > 0).then(|| npurt_runtime::PromptLookup {
                max_draft: self.speculate,
                ..Default::default()
            }),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a raw prompt or a chat message.
    // One of --prompt / --chat, named together in the error when neither is given.
    #[command(group(ArgGroup::new("input").required(true).multiple(false).args(["prompt", "chat"])))]
    Run {
        #[command(flatten)]
        common: Common,
        /// Raw text fed as is.
        #[arg(long)]
        prompt: Option<String>,
        /// A user message, wrapped in the model's chat template (`-`: read it from
        /// stdin, e.g. while the image encodes).
        #[arg(long)]
        chat: Option<String>,
        /// A system message before the user's (with --chat).
        #[arg(long)]
        system: Option<String>,
        /// An image to answer about (repeatable; needs a BlueLM-V model directory).
        /// It goes where the message's `<image>` placeholders are, else before the text.
        #[arg(long)]
        image: Vec<PathBuf>,
        /// Keep the vision encoder loaded after the images are encoded (default: release
        /// it, so the LLM stage does not carry its memory).
        #[arg(long)]
        keep_vision: bool,
        /// A prompt longer than the context keeps its first N tokens and its most
        /// recent ones that fit, dropping the middle (default: refuse it).
        #[arg(long, value_name = "N")]
        sliding_window: Option<usize>,
        /// Also write the logits of the prompt's last --logits-last positions to this
        /// safetensors file (tensor `logits` [N, vocab], f32).
        #[arg(long, value_name = "FILE")]
        logits_out: Option<PathBuf>,
        /// Prompt positions whose logits --logits-out writes.
        #[arg(long, default_value_t = 16)]
        logits_last: usize,
        #[command(flatten)]
        sampling: GenerationArgs,
        /// Print one JSON object instead of streaming text.
        #[arg(long)]
        json: bool,
    },
    /// A conversation on stdin, a line a turn: the session keeps it, so each turn feeds
    /// only its new rows. `/image PATH` (a BlueLM-V model) encodes the image at once
    /// and prefills the conversation up to it while the question is typed; `/reset`
    /// starts over; `/quit` or the end of input ends. Stats per turn on stderr.
    Chat {
        #[command(flatten)]
        common: Common,
        /// A system message at the start of the conversation.
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        sampling: GenerationArgs,
        /// One JSON object per turn (the answer and its stats) instead of streaming.
        #[arg(long)]
        json: bool,
    },
    /// Write fp32 logits [T, vocab] for the given ids to a safetensors file.
    Logits {
        #[command(flatten)]
        common: Common,
        /// Comma-separated token ids (at least one).
        #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
        ids: Vec<i64>,
        /// The safetensors file to write (tensor `logits`).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the token ids of a text as a JSON array.
    Tokenize {
        #[command(flatten)]
        common: Common,
        /// The text to tokenize.
        #[arg(long)]
        text: String,
    },
    /// Strided-window perplexity of a text file, as JSON
    /// `{"tokens","scored","nll","ppl"}`. `--ctx` is the window length (default 512).
    // Common's --ctx help gives the model default; here --ctx means the window.
    #[command(mut_arg("ctx", |a| a.help("Window length in tokens: each window is one \
        forward pass (default: 512)")))]
    Perplexity {
        #[command(flatten)]
        common: Common,
        /// The text to score (UTF-8).
        #[arg(long)]
        text_file: PathBuf,
        /// Tokens between window starts; each window scores only the tokens no earlier
        /// window scored (at most --ctx).
        #[arg(long, default_value_t = 256)]
        stride: usize,
        /// Only the first N tokens of the text.
        #[arg(long)]
        max_tokens: Option<usize>,
    },
    /// Print the compiled graphs: node counts per pass, each node's kernel and
    /// precision, and weight bytes per format.
    Inspect {
        #[command(flatten)]
        common: Common,
        /// Which graph: prefill, prefill-all, decode, verify.
        #[arg(long, default_value = "prefill")]
        graph: String,
        /// Only the summary (no per-node listing).
        #[arg(long)]
        summary: bool,
        /// Print one JSON object: weights_bytes, kv_bytes, arena_bytes,
        /// naive_activation_bytes, floor_bytes (totals over the model's graphs).
        #[arg(long)]
        json: bool,
    },
    /// Throughput table like llama-bench: ppN (prefill N tokens) and tgN (N decode
    /// steps) in tokens/s, mean ± sd over repetitions, per thread count.
    Bench {
        #[command(flatten)]
        common: Common,
        /// Prefill lengths.
        #[arg(
            short = 'p',
            long = "n-prompt",
            value_delimiter = ',',
            default_value = "128,512"
        )]
        prompt: Vec<usize>,
        /// Decode steps.
        #[arg(
            short = 'n',
            long = "n-gen",
            value_delimiter = ',',
            default_value = "128"
        )]
        gen: Vec<usize>,
        /// Tokens already in the KV cache before each decode test (llama-bench's
        /// `-d`), e.g. `0,2048,8192`.
        #[arg(
            short = 'd',
            long = "n-depth",
            value_delimiter = ',',
            default_value = "0"
        )]
        depth: Vec<usize>,
        /// Repetitions per test (at least 1).
        #[arg(short = 'r', long, default_value_t = 3,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        reps: usize,
        /// Print one JSON object `{"rows","machine"}` instead of the table.
        #[arg(long)]
        json: bool,
        /// Also profile one prefill chunk and one decode step: time per op kind and
        /// per node (GPU timestamps where the adapter has them, else host wall time),
        /// and the host's share of a run (JSON: `profile`).
        #[arg(long)]
        profile: bool,
        /// Slowest nodes listed per profile (with --profile).
        #[arg(long, default_value_t = 15)]
        profile_top: usize,
        /// A BlueLM-V model only: also time an image prompt per size (`WIDTHxHEIGHT`,
        /// a generated pattern; e.g. `768x1536`, the paper's 9 tiles): the image's
        /// encode, the prefill of a chat prompt holding it and a question, and the time
        /// to first token with nothing, the encode, or the encode and the prefill of
        /// the prompt's start up to the question hidden behind typing.
        #[arg(long, value_delimiter = ',')]
        image_size: Vec<String>,
    },
    /// Run the backend conformance suite: every op case against the scalar reference
    /// kernels by NMSE; prints the table and exits non-zero on any failure.
    Conformance {
        /// Backend to test (see `npurt backends`).
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// Only this op (e.g. `matmul`) or case prefix (`matmul/q4_1`).
        #[arg(long)]
        op: Option<String>,
        /// Host threads for the backend, 1 to 1024 (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// List the registered backends and what they report.
    Backends,
    /// Encode an image's tiles with a SigLIP vision tower (+ projector): per-stage
    /// times, GOP/s, peak RSS; `--out` writes the features.
    EncodeImage(encode_image::EncodeImageArgs),
    /// Write a seeded random-weight LLaMA of a named shape as an HF directory or a
    /// GGUF file (the same weights in both), for speed runs and engine comparisons.
    MakeModel(make_model::MakeModelArgs),
    /// What an image will cost the vision encoder, from its header only (no model, no
    /// pixel decode): the tile grid, canvas, resized size, padding, tiles and LLM tokens.
    ImagePlan {
        /// A PNG, JPEG or WebP file.
        #[arg(long)]
        image: PathBuf,
        /// Relaxed rule threshold (BlueLM-V-3B's alpha).
        #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
        alpha: f64,
        /// Most local tiles (the global thumbnail comes on top).
        #[arg(long, default_value_t = 9)]
        max_tiles: u32,
        /// Tile side in pixels (the encoder's input size).
        #[arg(long, default_value_t = 384)]
        tile: u32,
        /// Grid rule: relaxed (BlueLM-V-3B) or llava-next.
        #[arg(long, default_value = "relaxed")]
        rule: String,
        /// Largest image accepted, in pixels.
        #[arg(long, default_value_t = npurt_runtime::image::DEFAULT_MAX_PIXELS)]
        max_pixels: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn default_model() -> PathBuf {
    if let Ok(p) = std::env::var("NPURT_MODEL") {
        return p.into();
    }
    let in_cwd = PathBuf::from(DEFAULT_MODEL);
    if in_cwd.is_file() {
        return in_cwd;
    }
    // The project checkout this binary was built from.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DEFAULT_MODEL)
}

/// Loads the model `c` names. Unless `quiet` (the `--json` modes), says on stderr that
/// loading starts and how long it took: compiling a model takes seconds, and the
/// first run after a fresh build should not look hung.
fn load(c: &Common, ctx_at_least: Option<usize>, quiet: bool) -> anyhow_lite::Result<Arc<Model>> {
    let path = c.model.clone().unwrap_or_else(default_model);
    if c.model.is_none() && !path.exists() {
        return Err(anyhow_lite::msg(format!(
            "the default model {} is not there: run scripts/fetch-model.sh",
            path.display()
        )));
    }
    let ctx = match (c.ctx, ctx_at_least) {
        (Some(x), _) => Some(x),
        (None, Some(n)) => Some(n.max(npurt_runtime::DEFAULT_CTX)),
        (None, None) => None,
    };
    let preset = |name: &str| {
        PrecisionPolicy::by_name(name).ok_or_else(|| {
            anyhow_lite::msg(format!(
                "unknown precision `{name}` (known: {})",
                PrecisionPolicy::names().join(", ")
            ))
        })
    };
    let mut precision = preset(&c.precision)?;
    if let Some(name) = c.kv_cache.as_deref() {
        precision.kv_cache = npurt_graph::KvCacheType::by_name(name)
            .ok_or_else(|| anyhow_lite::msg(format!("unknown KV cache type `{name}`")))?;
    }
    let opts = LoadOptions {
        backend: c.backend.clone(),
        threads: c.threads.first().copied(),
        chunk: c.chunk,
        ctx,
        precision,
        mem_budget: c
            .mem_budget
            .as_deref()
            .map(|b| {
                npurt_runtime::budget::parse_bytes(b).ok_or_else(|| {
                    anyhow_lite::msg(format!(
                        "--mem-budget `{b}` is not a byte count (e.g. 1500000000, 512M, 2G)"
                    ))
                })
            })
            .transpose()?,
    };
    if !quiet {
        eprintln!(
            "loading {} on {} at {}...",
            path.display(),
            c.backend,
            c.precision
        );
    }
    let model = if npurt_models::vlm::is_vlm_dir(&path) {
        let vision = match (&c.vision_precision, c.precision.as_str()) {
            (Some(p), _) => preset(p)?,
            (None, "f32") => PrecisionPolicy::F32,
            (None, _) => PrecisionPolicy::W8A16,
        };
        let vopts = npurt_runtime::VisionOptions {
            precision: vision,
            ..Default::default()
        };
        Runtime::new().load_multimodal(&path, opts, vopts)?
    } else {
        Runtime::new().load(&path, opts)?
    };
    if !quiet {
        eprintln!(
            "loaded in {:.1} s: {} on {}",
            model.load_ms / 1e3,
            model.description,
            model.backend.capabilities().device
        );
    }
    Ok(model)
}

/// Mesa's Vulkan drivers (lavapipe included) connect to Wayland while enumerating
/// devices, and libwayland prints "XDG_RUNTIME_DIR is invalid or not set" on stderr
/// whenever the variable is unset or not an absolute path: twice per wgpu command on a
/// headless machine. When it is unset or does not name a directory, point it at a
/// private directory of ours (mode 0700, as the XDG spec requires). A directory of
/// that name that is not ours and private is left alone (the warning is cosmetic).
#[cfg(unix)]
fn ensure_xdg_runtime_dir() {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let current = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    if current.is_some_and(|p| p.is_absolute() && p.is_dir()) {
        return;
    }
    // The owner of /proc/self is this process's effective uid (no libc needed).
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("npurt-runtime-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return,
    }
    // symlink_metadata: a symlink planted under that name is not our directory.
    let ours = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o777 == 0o700);
    if ours {
        // Setting the environment races with threads reading it; main calls this
        // first, while the process is still single-threaded (no backend, pool or
        // logger thread exists yet).
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

/// A reader that stops early (`npurt ... | head`) ends the process quietly, as for any
/// Unix tool, instead of `println!` panicking on the broken pipe (Rust ignores SIGPIPE
/// by default).
#[cfg(unix)]
fn default_sigpipe() {
    extern "C" {
        fn signal(sig: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: restores the default disposition of one signal, before any thread exists.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

fn main() {
    #[cfg(unix)]
    default_sigpipe();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    #[cfg(unix)]
    ensure_xdg_runtime_dir();
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        let mut src = e.source();
        while let Some(s) = src {
            eprintln!("  caused by: {s}");
            src = s.source();
        }
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow_lite::Result<()> {
    match cli.cmd {
        Cmd::Run {
            common,
            prompt,
            chat,
            system,
            image,
            keep_vision,
            sliding_window,
            logits_out,
            logits_last,
            sampling,
            json,
        } => {
            let model = load(&common, None, json)?;
            let gen = sampling.options(match sliding_window {
                Some(keep_first) => npurt_runtime::PromptOverflow::SlidingWindow { keep_first },
                None => npurt_runtime::PromptOverflow::Error,
            });
            let args = run_prompt::PromptArgs {
                prompt,
                chat,
                system,
                images: image,
                keep_vision,
                logits_out: logits_out.map(|p| (p, logits_last)),
                json,
            };
            run_prompt::run(model, args, gen)?;
        }
        Cmd::Chat {
            common,
            system,
            sampling,
            json,
        } => {
            let model = load(&common, None, json)?;
            let gen = sampling.options(npurt_runtime::PromptOverflow::Error);
            chat::run(model, chat::ChatArgs { system, json }, gen)?;
        }
        Cmd::Logits { common, ids, out } => {
            let model = load(&common, Some(ids.len()), false)?;
            let vocab = model.config.vocab_size;
            let ids: Vec<u32> = ids
                .iter()
                .enumerate()
                .map(|(index, &id)| {
                    u32::try_from(id)
                        .ok()
                        .filter(|&v| (v as usize) < vocab)
                        .ok_or(npurt_runtime::RuntimeError::TokenOutOfRange { id, index, vocab })
                })
                .collect::<Result<_, _>>()?;
            let mut session = Session::new(model.clone())?;
            let rows = session.feed_all_logits(&ids)?;
            write_logits(&out, &rows, vocab)?;
        }
        Cmd::Tokenize { common, text } => {
            let model = load(&common, None, false)?;
            println!("{}", serde_json::to_string(&model.encode(&text)?)?);
        }
        Cmd::Perplexity {
            common,
            text_file,
            stride,
            max_tokens,
        } => {
            let window = common.ctx.unwrap_or(512);
            let text = std::fs::read_to_string(&text_file)
                .map_err(|e| anyhow_lite::msg(format!("reading {}: {e}", text_file.display())))?;
            let model = load(&common, Some(window), false)?;
            let mut ids = model.encode(&text)?;
            if let Some(n) = max_tokens {
                ids.truncate(n);
            }
            let p = perplexity(&model, &ids, window, stride)?;
            println!(
                "{}",
                serde_json::json!({"tokens": p.tokens, "scored": p.scored, "nll": p.nll, "ppl": p.ppl})
            );
        }
        Cmd::Inspect {
            common,
            graph,
            summary,
            json,
        } => {
            let model = load(&common, None, json)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&npurt_runtime::inspect::memory(&model))?
                );
                return Ok(());
            }
            let kind = match graph.as_str() {
                "prefill" => npurt_runtime::GraphKind::Prefill,
                "prefill-all" => npurt_runtime::GraphKind::PrefillAllLogits,
                "decode" => npurt_runtime::GraphKind::Decode,
                "verify" => npurt_runtime::GraphKind::Verify,
                other => {
                    return Err(anyhow_lite::msg(format!(
                        "unknown graph `{other}` (prefill, prefill-all, decode, verify)"
                    )))
                }
            };
            print!(
                "{}",
                npurt_runtime::inspect::describe(&model, kind, !summary)
            );
        }
        Cmd::Bench {
            common,
            prompt,
            gen,
            depth,
            reps,
            json,
            profile,
            profile_top,
            image_size,
        } => {
            // Host threads matter to the CPU backend only: another backend runs once,
            // and its rows name its device instead of a thread count.
            let host = common.backend == "cpu";
            let threads = match common.threads.as_slice() {
                [] => vec![default_threads()],
                [first, ..] if !host => vec![*first],
                list => list.to_vec(),
            };
            // `-p 0` / `-n 0` mean "no such test" (as in llama-bench), not a 0-token run.
            let prompt: Vec<usize> = prompt.into_iter().filter(|&p| p > 0).collect();
            let gen: Vec<usize> = gen.into_iter().filter(|&n| n > 0).collect();
            let max_depth = depth.iter().copied().max().unwrap_or(0);
            let ctx = prompt
                .iter()
                .copied()
                .chain(gen.iter().map(|n| n + max_depth))
                .max()
                .unwrap_or(128)
                + 1;
            // The profile feeds one whole chunk, fills the cache to the deepest depth
            // and then decodes one token.
            let ctx = if profile {
                ctx.max(common.chunk + 2).max(max_depth + 2)
            } else {
                ctx
            };
            // An image prompt needs the default context (a 9-tile image is 1960 rows);
            // one that does not fit is refused before encoding (`ImageTooLarge`).
            let ctx = if image_size.is_empty() {
                ctx
            } else {
                ctx.max(npurt_runtime::DEFAULT_CTX)
            };
            let mut image_runs = Vec::new();
            // A bad size is reported before the model loads.
            for size in &image_size {
                npurt_runtime::image::parse_size(size)?;
            }
            let mut rows = Vec::new();
            let mut machine = Vec::new();
            let mut peak_rss = 0u64;
            let mut profiles = Vec::new();
            for &t in &threads {
                // Each thread count's peak covers its load and its tests, not the
                // previous model nor the bandwidth probe's 512 MiB buffer (measured
                // after the peak is read). Where the peak cannot be reset (not Linux)
                // it is the process's.
                npurt_runtime::stats::reset_peak_rss();
                let model = load(
                    &Common {
                        threads: vec![t],
                        ctx: Some(common.ctx.unwrap_or(ctx).max(ctx)),
                        ..common.clone()
                    },
                    None,
                    json,
                )?;
                let weight_mib = model.weight_bytes as f64 / (1 << 20) as f64;
                for &p in &prompt {
                    rows.push(npurt_runtime::bench::row(
                        &model,
                        format!("pp{p}"),
                        t,
                        &npurt_runtime::bench::prefill(&model, p, reps)?,
                    ));
                }
                for &n in &gen {
                    for &d in &depth {
                        let r = npurt_runtime::bench::decode(&model, n, d, reps)?;
                        let test = match d {
                            0 => format!("tg{n}"),
                            d => format!("tg{n} @ d{d}"),
                        };
                        rows.push(npurt_runtime::bench::row(&model, test, t, &r));
                    }
                }

                for size in &image_size {
                    let b = npurt_runtime::bench::image_prompt(&model, size, reps)?;
                    rows.extend(b.rows(&model, t));
                    image_runs.push((host.then_some(t), b, [None; 2]));
                }
                // On the CPU: what each stage's matmul instruction can do on as many
                // threads, measured once after the image runs.
                if host && !image_size.is_empty() {
                    let peak = |act| {
                        npurt_runtime::bench::cpu_matmul_peak(act, t, Duration::from_millis(150))
                            .map(|p| p.1)
                    };
                    let encoder = model.vision.as_ref().and_then(|v| v.encoder());
                    let peaks = [
                        encoder.and_then(|e| peak(e.options.precision.linear_act)),
                        peak(model.options.precision.linear_act),
                    ];
                    for run in image_runs.iter_mut().filter(|r| r.0 == Some(t)) {
                        run.2 = peaks;
                    }
                }

                let peak = npurt_runtime::stats::peak_rss_bytes().unwrap_or(0);
                peak_rss = peak_rss.max(peak);
                // Decode is bandwidth-bound: its ceiling is the host's read bandwidth on
                // the CPU backend, the device's copy bandwidth (and arithmetic peaks,
                // from the backend's microbenchmarks) on a device with its own memory.
                let host = npurt_runtime::bench::is_cpu(&model);
                // A device too small for the probes' buffers still gets its table.
                let limits = if host {
                    None
                } else {
                    model.backend.measure_limits().unwrap_or_else(|e| {
                        eprintln!("warning: the device's limits were not measured: {e}");
                        None
                    })
                };
                let bw = if host {
                    Some(npurt_runtime::bench::read_bandwidth_gb_s(t))
                } else {
                    limits.as_ref().map(|l| l.copy_gb_s)
                };
                if profile {
                    let mut p = npurt_runtime::bench::profile(&model, max_depth)?;
                    p.limits = limits.clone();
                    profiles.push((t, p));
                }
                let caps = model.backend.capabilities();
                machine.push(serde_json::json!({
                    "threads": host.then_some(t), "device": caps.device, "kernels": caps.kernels,
                    "read_bandwidth_gb_s": host.then_some(bw).flatten(),
                    "device_limits": limits.as_ref().map(npurt_runtime::bench::limits_json),
                    "weight_mib": weight_mib, "peak_rss_bytes": peak}));
                if !json {
                    match (&limits, bw) {
                        (Some(l), _) => eprintln!(
                            "{} [{}]: weights {weight_mib:.1} MiB; measured {}",
                            caps.device,
                            caps.kernels,
                            l.summary()
                        ),
                        (None, Some(bw)) => eprintln!("threads {t}: weights {weight_mib:.1} MiB, measured read bandwidth {bw:.1} GB/s"),
                        (None, None) => eprintln!("{}: weights {weight_mib:.1} MiB", caps.device),
                    }
                }
            }
            if json {
                // `peak_rss_bytes`: the largest of the per-thread-count peaks (0 where
                // the OS does not report it).
                let mut v = serde_json::json!({"rows": rows, "machine": machine, "peak_rss_bytes": peak_rss});
                if !image_runs.is_empty() {
                    v["image_prompts"] = image_runs
                        .iter()
                        .map(|(t, b, p)| b.to_json(*t, *p))
                        .collect();
                }
                if profile {
                    v["profile"] = profiles
                        .iter()
                        .map(|(t, p)| {
                            let mut j = p.to_json();
                            j["threads"] = serde_json::json!(host.then_some(*t));
                            j
                        })
                        .collect();
                }
                println!("{v}");
            } else {
                // `-p 0 -n 0 --profile` profiles only: no empty table.
                if !rows.is_empty() {
                    println!("| model | precision | backend | kernels | threads | test | t/s |");
                    println!("|---|---|---|---|---|---|---|");
                }
                let desc = common
                    .model
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "SmolLM2-135M-Instruct Q4_1".into());
                for r in &rows {
                    println!(
                        "| {desc} | {} | {} | {} | {} | {} | {:.2} ± {:.2} |",
                        r.precision,
                        common.backend,
                        r.kernels,
                        r.threads.map_or("-".to_string(), |t| t.to_string()),
                        r.test,
                        r.tok_s_mean,
                        r.tok_s_sd
                    );
                }
                for m in &machine {
                    // The host's read bandwidth (CPU) or the device's copy bandwidth.
                    let bw = m["read_bandwidth_gb_s"]
                        .as_f64()
                        .map(|b| (b, "read bandwidth"))
                        .or_else(|| {
                            m["device_limits"]["copy_gb_s"]
                                .as_f64()
                                .map(|b| (b, "copy bandwidth (read + write)"))
                        });
                    let Some((bw, what)) = bw else { continue };
                    let t = m["threads"].as_u64().map(|t| t as usize);
                    let w = m["weight_mib"].as_f64().unwrap_or(0.0);
                    if let Some(tg) = rows
                        .iter()
                        .find(|r| r.threads == t && r.test.starts_with("tg"))
                    {
                        let gbs = tg.tok_s_mean * w * (1 << 20) as f64 / 1e9;
                        let at = t.map(|t| format!(" at {t} thread(s)")).unwrap_or_default();
                        println!("decode{at} reads {gbs:.1} GB/s of weights = {:.0}% of the measured {bw:.1} GB/s {what}", 100.0 * gbs / bw);
                    }
                }
                for (t, b, peaks) in &image_runs {
                    let (enc, pre) = b.means();
                    let at = t.map(|t| format!(", {t} thread(s)")).unwrap_or_default();
                    println!(
                        "time to first token, {} image ({} tiles, {} image tokens) + question ({}-row prompt{at}): {:.0} ms = encode {:.0} + prefill {:.0}; {:.0} ms with the image encoded while the question is typed; {:.0} ms with the image also prefilled (the {} rows after it)",
                        b.size, b.tiles, b.image_tokens, b.prompt_tokens,
                        (enc + pre) * 1e3, enc * 1e3, pre * 1e3, pre * 1e3,
                        b.after_typing_mean() * 1e3, b.rows_after_typing
                    );
                    let (enc_gops, pre_gops) = b.gops();
                    let of = |gops: f64, peak: Option<f64>| {
                        match peak {
                        Some(p) => format!("{gops:.0} GOP/s = {:.0}% of the {p:.0} GOP/s measured for its instruction", 100.0 * gops / p),
                        None => format!("{gops:.0} GOP/s"),
                    }
                    };
                    println!(
                        "  encode (tower + projector) {}; prefill (the LLM's matmuls) {}",
                        of(enc_gops, peaks[0]),
                        of(pre_gops, peaks[1])
                    );
                }
                for (t, p) in &profiles {
                    if host {
                        println!("\n## profile at {t} thread(s)");
                    } else {
                        println!("\n## profile");
                    }
                    print!("\n{}", p.format(profile_top));
                }
            }
        }
        Cmd::Conformance {
            backend,
            op,
            threads,
        } => {
            // A filter that selects nothing would "pass" with zero cases.
            if let Some(f) = op.as_deref() {
                npurt_backends::conformance::check_filter(f).map_err(anyhow_lite::msg)?;
            }
            let be = Runtime::new()
                .registry()
                .create(&backend, &npurt_backends::BackendOptions { threads })?;
            let report = npurt_backends::conformance::run_suite(be.as_ref(), op.as_deref());
            print!("{report}");
            if report.failed() > 0 {
                return Err(anyhow_lite::msg(format!(
                    "{} conformance case(s) failed on `{backend}`",
                    report.failed()
                )));
            }
        }
        Cmd::EncodeImage(a) => encode_image::run(a)?,
        Cmd::MakeModel(a) => make_model::run(a)?,
        Cmd::ImagePlan {
            image,
            alpha,
            max_tiles,
            tile,
            rule,
            max_pixels,
            json,
        } => image_plan(&image, alpha, max_tiles, tile, &rule, max_pixels, json)?,
        Cmd::Backends => {
            let rt = Runtime::new();
            for name in rt.registry().names() {
                match rt.registry().create(name, &Default::default()) {
                    Ok(b) => {
                        let caps = b.capabilities();
                        if caps.device.contains(&caps.kernels) {
                            println!("{name}: {}", caps.device)
                        } else {
                            println!("{name}: {} [kernels: {}]", caps.device, caps.kernels)
                        }
                    }
                    Err(e) => println!("{name}: unavailable ({e})"),
                }
            }
        }
    }
    Ok(())
}

fn image_plan(
    path: &std::path::Path,
    alpha: f64,
    max_tiles: u32,
    tile: u32,
    rule: &str,
    max_pixels: u64,
    json: bool,
) -> anyhow_lite::Result<()> {
    use npurt_runtime::image::{self, ImageError, TilingOptions, TilingRule};
    let rule = TilingRule::parse(rule).ok_or_else(|| ImageError::InvalidOption {
        option: "rule",
        reason: format!("`{rule}` (known: relaxed, llava-next)"),
    })?;
    let opts = TilingOptions {
        rule,
        alpha,
        max_tiles,
        tile,
        ..TilingOptions::default()
    };
    // Options first: a bad flag is reported even before the file is opened.
    opts.validate()?;
    let limits = image::DecodeLimits {
        max_pixels,
        ..Default::default()
    };
    let header = image::read_header(path, &limits)?;
    let p = image::plan(header.width, header.height, &opts)?;
    if json {
        let v = serde_json::json!({
            "image": path.display().to_string(), "format": header.format.name(),
            "width": p.width, "height": p.height, "rule": rule.name(), "alpha": alpha,
            "max_tiles": max_tiles, "tile": p.tile, "grid": p.grid, "canvas": p.canvas,
            "resized": p.resized, "padding": p.padding, "tiles": p.tiles,
            "tokens_per_tile": p.tokens_per_tile, "image_tokens": p.image_tokens,
        });
        println!("{v}");
    } else {
        let [l, t, r, b] = p.padding;
        println!(
            "image:    {} ({}, {}x{})",
            path.display(),
            header.format.name(),
            p.width,
            p.height
        );
        println!(
            "rule:     {} (alpha {alpha}, at most {max_tiles} tiles of {tile}x{tile})",
            rule.name()
        );
        println!("grid:     {}x{} (columns x rows)", p.grid[0], p.grid[1]);
        println!("canvas:   {}x{}", p.canvas[0], p.canvas[1]);
        println!("resized:  {}x{}", p.resized[0], p.resized[1]);
        println!("padding:  left {l}, top {t}, right {r}, bottom {b}");
        println!(
            "tiles:    {} (1 thumbnail + {} local)",
            p.tiles,
            p.tiles - 1
        );
        println!(
            "tokens:   {} image tokens ({} per tile)",
            p.image_tokens, p.tokens_per_tile
        );
    }
    Ok(())
}

/// Writes logit rows as tensor `logits` [rows, vocab] (f32) to a safetensors file.
fn write_logits(
    path: &std::path::Path,
    rows: &[Vec<f32>],
    vocab: usize,
) -> anyhow_lite::Result<()> {
    let flat: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![rows.len(), vocab],
        &flat,
    )
    .map_err(|e| anyhow_lite::msg(e.to_string()))?;
    safetensors::serialize_to_file([("logits", view)], &None, path)
        .map_err(|e| anyhow_lite::msg(format!("writing {}: {e}", path.display())))
}

/// A boxed error with its source chain kept, without pulling in anyhow.
mod anyhow_lite {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
    pub fn msg(s: String) -> Box<dyn std::error::Error + Send + Sync> {
        s.into()
    }
}
