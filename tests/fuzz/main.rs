//! `npurt-fuzz`: the loader fuzzer's command line (see `fuzz/mod.rs`).
//!
//!   npurt-fuzz [--target NAME|all] [--inputs N] [--seed S] [--first I]
//!              [--budget-mib M] [--dump DIR]
//!
//! Runs N mutated inputs per target (default all targets, 10,000 each), prints one
//! summary line per target and every failure with the command that replays it; exits 1
//! if any input panicked, ran past one second or allocated past the budget. `--dump DIR`
//! writes each input to DIR/<target>-<seed>-<index> instead of running it.

use npurt_tests::fuzz::{self, alloc::CountingAlloc, driver};
use std::path::PathBuf;
use std::time::Duration;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

struct Args {
    targets: Vec<String>,
    cfg: driver::FuzzConfig,
    dump: Option<PathBuf>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        targets: fuzz::TARGETS.iter().map(|s| s.to_string()).collect(),
        cfg: driver::FuzzConfig {
            inputs: 10_000,
            ..Default::default()
        },
        dump: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |s: &str| s.parse::<u64>().map_err(|e| format!("{flag} {s}: {e}"));
        match flag.as_str() {
            "--target" if value == "all" => {}
            "--target" => {
                if !fuzz::TARGETS.contains(&value.as_str()) {
                    return Err(format!(
                        "unknown target {value} (known: {})",
                        fuzz::TARGETS.join(", ")
                    ));
                }
                a.targets = vec![value];
            }
            "--inputs" => a.cfg.inputs = num(&value)?,
            "--seed" => a.cfg.seed = num(&value)?,
            "--first" => a.cfg.first = num(&value)?,
            "--budget-mib" => a.cfg.budget_bytes = (num(&value)? as usize) << 20,
            "--deadline-ms" => a.cfg.deadline = Duration::from_millis(num(&value)?),
            "--dump" => a.dump = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok(a)
}

fn main() {
    let args = parse().unwrap_or_else(|e| {
        eprintln!("npurt-fuzz: {e}");
        std::process::exit(2);
    });
    let mut failed = false;
    for name in &args.targets {
        let mut loader = fuzz::loader(name).expect("a known target");
        if let Some(dir) = &args.dump {
            std::fs::create_dir_all(dir).expect("create the dump directory");
            for i in args.cfg.first..args.cfg.first + args.cfg.inputs {
                let input = driver::input_for(loader.as_ref(), args.cfg.seed, i);
                let p = dir.join(format!("{name}-{}-{i}", args.cfg.seed));
                std::fs::write(&p, input).expect("write a dumped input");
            }
            continue;
        }
        let report = driver::run(loader.as_mut(), &args.cfg);
        println!("{}", report.summary());
        for f in &report.failures {
            failed = true;
            println!(
                "  FAIL input {}: {}\n    replay: npurt-fuzz --target {name} --seed {} --first {} --inputs 1",
                f.index, f.what, args.cfg.seed, f.index
            );
        }
    }
    if failed {
        std::process::exit(1);
    }
}
