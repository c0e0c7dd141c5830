//! The fuzz loop: for each input index, derive its generator from (seed, index), pick
//! a seed file, mutate it, run the loader in-process, and classify what happened:
//! accepted, rejected with a typed error, panicked (caught), slow (over the deadline),
//! or over the allocation budget. A watchdog aborts the process, naming the input, if
//! one input runs far past the deadline (a real hang would otherwise stall the run).

use super::alloc;
use super::Loader;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct FuzzConfig {
    pub seed: u64,
    /// Input indices `first..first + inputs` (a slice of a longer run replays exactly).
    pub first: u64,
    pub inputs: u64,
    /// Most bytes one input may have live on the loader's thread.
    pub budget_bytes: usize,
    /// An input slower than this is a failure.
    pub deadline: Duration,
    /// An input still running after this aborts the process (a hang).
    pub hang_abort: Duration,
}

impl Default for FuzzConfig {
    fn default() -> Self {
        FuzzConfig {
            seed: 1,
            first: 0,
            inputs: 1000,
            budget_bytes: 256 << 20,
            deadline: Duration::from_secs(1),
            hang_abort: Duration::from_secs(30),
        }
    }
}

/// One failing input: which, and why.
#[derive(Clone, Debug)]
pub struct Failure {
    pub index: u64,
    pub what: String,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub target: &'static str,
    pub seed: u64,
    pub inputs: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub failures: Vec<Failure>,
    pub slowest: Duration,
    pub peak_alloc_bytes: usize,
    pub elapsed: Duration,
}

impl Report {
    pub fn summary(&self) -> String {
        format!(
            "{}: {} inputs (seed {}): {} accepted, {} rejected with an error, {} failures; \
             slowest {:.1} ms, largest peak allocation {:.0} KiB, {:.1} s",
            self.target,
            self.inputs,
            self.seed,
            self.accepted,
            self.rejected,
            self.failures.len(),
            self.slowest.as_secs_f64() * 1e3,
            self.peak_alloc_bytes as f64 / 1024.0,
            self.elapsed.as_secs_f64()
        )
    }
}

thread_local! {
    /// Set while this thread runs fuzz inputs: the panic hook stays quiet and keeps the
    /// message for the report instead.
    static CAPTURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that records a fuzzing thread's panic message instead
/// of printing it, and defers to the previous hook on every other thread.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        *slot = info.to_string();
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                previous(info);
            }
        }));
    });
}

/// The input for `index` of a run: a mutated seed (the loader chooses how).
pub fn input_for(loader: &dyn Loader, seed: u64, index: u64) -> Vec<u8> {
    let mut rng = super::rng::for_input(seed, index);
    let which = rng.below(loader.seeds().len());
    loader.mutate(&mut rng, which)
}

/// Runs `cfg.inputs` mutated inputs through `loader`.
pub fn run(loader: &mut dyn Loader, cfg: &FuzzConfig) -> Report {
    install_panic_hook();
    let target = loader.name();
    let mut report = Report {
        target,
        seed: cfg.seed,
        ..Report::default()
    };
    let t0 = Instant::now();
    // Watchdog: the start time (ms since t0, +1 so 0 means idle) and index of the input
    // in flight.
    let started = AtomicU64::new(0);
    let current = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let at = started.load(Ordering::Relaxed);
                let now = t0.elapsed().as_millis() as u64 + 1;
                if at != 0 && now.saturating_sub(at) > cfg.hang_abort.as_millis() as u64 {
                    eprintln!(
                        "npurt-fuzz: target {target}, seed {}, input {} ran over {:?}: a hang; aborting",
                        cfg.seed,
                        current.load(Ordering::Relaxed),
                        cfg.hang_abort
                    );
                    std::process::abort();
                }
            }
        });
        CAPTURE.with(|c| *c.borrow_mut() = Some(String::new()));
        for index in cfg.first..cfg.first + cfg.inputs {
            let input = input_for(loader, cfg.seed, index);
            current.store(index, Ordering::Relaxed);
            started.store(t0.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
            alloc::begin_input(cfg.budget_bytes, target, cfg.seed, index);
            let t = Instant::now();
            let outcome = catch_unwind(AssertUnwindSafe(|| loader.run(&input)));
            let dt = t.elapsed();
            let (peak, refused) = alloc::end_input();
            started.store(0, Ordering::Relaxed);
            report.inputs += 1;
            report.slowest = report.slowest.max(dt);
            report.peak_alloc_bytes = report.peak_alloc_bytes.max(peak);
            let mut fail = |what: String| report.failures.push(Failure { index, what });
            match outcome {
                Ok(true) => report.accepted += 1,
                Ok(false) => report.rejected += 1,
                Err(_) => {
                    let msg = CAPTURE.with(|c| c.borrow().clone().unwrap_or_default());
                    fail(format!("panic: {msg}"));
                }
            }
            if dt > cfg.deadline {
                fail(format!(
                    "took {:.2} s (deadline {:?})",
                    dt.as_secs_f64(),
                    cfg.deadline
                ));
            }
            if refused > 0 {
                fail(format!(
                    "asked for {refused} bytes, over the {} byte budget",
                    cfg.budget_bytes
                ));
            } else if peak > cfg.budget_bytes {
                fail(format!("peak allocation {peak} bytes, over the budget"));
            }
        }
        CAPTURE.with(|c| *c.borrow_mut() = None);
        done.store(true, Ordering::Relaxed);
    });
    report.elapsed = t0.elapsed();
    report
}
