//! Soak test (issue #11 point 9): many generate requests on one model, from several
//! threads, each in a session created, used and dropped, with mixed prompt lengths;
//! RSS is read after a warm-up and at the end, and must stay flat (within 5% by
//! default). A leak per request (a KV cache, a scratch buffer, a runner not freed with
//! its session) shows up as growth proportional to the request count.
//!
//! `scripts/soak.sh` builds and runs it:
//!   soak [--model PATH] [--requests N] [--threads T] [--warmup W] [--tolerance 0.05]
//! Prints one JSON line; exits 1 when the end RSS is outside the tolerance.

use npurt_runtime::sampling::SamplingOptions;
use npurt_runtime::{GenerateOptions, LoadOptions, Runtime, Session};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

struct Args {
    model: PathBuf,
    requests: usize,
    threads: usize,
    warmup: usize,
    tolerance: f64,
}

fn parse_args() -> Result<Args, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut a = Args {
        model: root.join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        requests: 10_000,
        threads: 4,
        warmup: 200,
        tolerance: 0.05,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--model" => a.model = PathBuf::from(value()?),
            "--requests" => a.requests = num(value()?)?,
            "--threads" => a.threads = num(value()?)?.max(1),
            "--warmup" => a.warmup = num(value()?)?,
            "--tolerance" => a.tolerance = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok(a)
}

/// Resident set size now (VmRSS), in bytes.
fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Prompt lengths cycle through short and chunk-spanning ones (the chunk is 16 here, so
/// 40 and 57 take several prefill chunks and a partial last one).
const PROMPT_LENGTHS: [usize; 7] = [1, 3, 8, 16, 17, 40, 57];

/// Request `i`'s work: a prompt slice of `ids`, 1 to 8 new tokens, greedy or sampled,
/// and whether its session serves a second turn before it is dropped.
fn request(i: usize, ids: &[u32]) -> (Vec<u32>, GenerateOptions, bool) {
    let len = PROMPT_LENGTHS[i % PROMPT_LENGTHS.len()].min(ids.len());
    let start = (i * 13) % (ids.len() - len + 1);
    let opts = GenerateOptions {
        max_tokens: 1 + i % 8,
        sampling: SamplingOptions {
            temperature: if i.is_multiple_of(3) { 0.0 } else { 0.8 },
            seed: i as u64,
            ..SamplingOptions::default()
        },
        ..GenerateOptions::default()
    };
    (ids[start..start + len].to_vec(), opts, i.is_multiple_of(5))
}

/// Runs requests `[from, to)` on `threads` threads; returns how many ran.
fn run_requests(
    model: &Arc<npurt_runtime::Model>,
    ids: &[u32],
    from: usize,
    to: usize,
    threads: usize,
) -> Result<usize, String> {
    let next = AtomicUsize::new(from);
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| -> Result<(), String> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<(), String> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= to {
                            return Ok(());
                        }
                        let (prompt, opts, second_turn) = request(i, ids);
                        let mut session = Session::new(model.clone()).map_err(|e| e.to_string())?;
                        session
                            .generate(&prompt, &opts, |_, _| true)
                            .map_err(|e| format!("request {i}: {e}"))?;
                        if second_turn {
                            let more = &prompt[..prompt.len().min(5)];
                            session
                                .generate(more, &opts, |_, _| true)
                                .map_err(|e| format!("request {i} (turn 2): {e}"))?;
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        // `session` drops here: its KV cache and runners must go with it.
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "a worker panicked".to_string())??;
        }
        Ok(())
    })?;
    Ok(done.into_inner())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    // One backend thread per worker: the workers are the parallelism, and a small
    // context and chunk keep each session's KV cache and prefill cheap.
    let opts = LoadOptions {
        threads: Some(1),
        ctx: Some(256),
        chunk: 16,
        ..LoadOptions::default()
    };
    let model = match Runtime::new().load(&args.model, opts) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("soak: loading {}: {e}", args.model.display());
            std::process::exit(2);
        }
    };
    let text = "The quick brown fox jumps over the lazy dog. Memory must not grow with the \
                number of requests served, whatever their prompt lengths, whichever thread \
                runs them, and however many sessions come and go.";
    let ids = model
        .encode(&text.repeat(2))
        .expect("encode the soak prompt");

    let run = |from, to| {
        run_requests(&model, &ids, from, to, args.threads).unwrap_or_else(|e| {
            eprintln!("soak: {e}");
            std::process::exit(2);
        })
    };
    // The warm-up lets the allocator's per-thread arenas and the model's lazily built
    // state reach their steady size before the baseline is read.
    let warm = args.warmup.min(args.requests);
    run(0, warm);
    let rss_start = rss_bytes();
    let t = Instant::now();
    let mut done = warm;
    // Progress every 10%, on stderr, so a long run shows it is alive and how RSS moves.
    let step = (args.requests / 10).max(1);
    while done < args.requests {
        let to = (done + step).min(args.requests);
        run(done, to);
        done = to;
        eprintln!(
            "soak: {done}/{} requests, {:.1} req/s, RSS {:.1} MiB",
            args.requests,
            (done - warm) as f64 / t.elapsed().as_secs_f64(),
            rss_bytes() as f64 / (1 << 20) as f64
        );
    }
    let secs = t.elapsed().as_secs_f64();
    let rss_end = rss_bytes();
    let ratio = rss_end as f64 / rss_start.max(1) as f64;
    let flat = (ratio - 1.0).abs() <= args.tolerance;
    println!(
        "{}",
        serde_json::json!({
            "requests": args.requests, "warmup": warm, "threads": args.threads,
            "seconds": secs, "req_s": (args.requests - warm) as f64 / secs,
            "rss_start_bytes": rss_start, "rss_end_bytes": rss_end,
            "rss_ratio": ratio, "tolerance": args.tolerance, "flat": flat
        })
    );
    if !flat {
        std::process::exit(1);
    }
}
