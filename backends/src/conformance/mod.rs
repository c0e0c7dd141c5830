//! The backend conformance suite: what tells a backend vendor they are done.
//!
//! Every op of the IR (`npurt_graph::Op`) is exercised by seeded one-op cases: each
//! builds a graph of one compute node plus its sources, draws its inputs from a seed
//! stored in the case, runs it on the backend under test exactly as the runtime would
//! (support query, `prepare_weight`, `compile`, `alloc`/`write`, `run`, `synchronize`,
//! `read`), and compares the result with the scalar reference kernels
//! (`npurt_kernels::reference`, on the dequantized weights for quantized formats) by
//! normalised mean squared error:
//!
//! ```text
//! NMSE = sum((ours - ref)^2) / sum(ref^2)
//! ```
//!
//! Each case carries its own threshold, written where the case is declared with the
//! reason for its value ([`cases`]). A node the backend declines through
//! [`Backend::supports`] makes the case **unsupported**, which is reported, never
//! counted as passed; errors and panics are failures with their message.
//!
//! # Vendor workflow
//!
//! 1. Implement [`Backend`] in your crate (depend on `npurt-backends` with
//!    `default-features = false`: you get the trait and this suite, not our backends).
//! 2. Add one line to your crate's tests (e.g. `tests/conformance.rs`):
//!
//!    ```text
//!    npurt_backends::conformance_tests!(my_npu::NpuBackend::new(Default::default()));
//!    ```
//!
//!    That generates a `#[test]` that runs every case, prints the table, and fails
//!    with the table if any case fails. Several backends (or configurations) in one
//!    file: name each test, `conformance_tests!(npu_fp16: make_fp16_backend());`.
//! 3. `cargo test --release -- --nocapture` and read the table: one row per case,
//!    `op  case  backend  NMSE  threshold  status`, then `N passed, N failed, N
//!    unsupported`. While working on one op, set `NPURT_CONFORMANCE_FILTER=matmul`
//!    (an op name), `=matmul/q4_0` (a case-name prefix) or
//!    `=attention/gqa9_3.hd16.pos13` (one case).
//! 4. Unsupported rows are fine: they tell the runtime's partitioner which nodes fall
//!    back to another backend (each fallback is logged and counted at load time).
//!    You are done when nothing fails and everything you claim to support passes.
//! 5. A failing case prints its seed; `conformance::cases::all()` plus
//!    [`Case::instantiate`] rebuild its exact graph and data for a debugger.
//!
//! From the command line the same suite runs with
//! `npurt conformance [--backend NAME] [--op NAME]`, and from code with [`run_suite`].

mod case;
pub mod cases;
mod oracle;
mod report;
mod rng;
mod runner;

pub use case::{Case, CaseBuilder, CaseData, Compared};
pub use report::{Report, Row, Status};
pub use rng::{seed_for, Rng};
pub use runner::{nmse, run_case};

use crate::Backend;

/// Does `filter` select `case`? An op name selects the op; anything with a `/` selects
/// the cases whose `op/name` label starts with it (so one exact label selects one case).
pub fn matches(case: &Case, filter: &str) -> bool {
    if filter.contains('/') {
        case.label().starts_with(filter)
    } else {
        case.op == filter
    }
}

/// Does `filter` select any case? If not, the error names the known ops: a filter that
/// selects nothing would otherwise "pass" with zero cases.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if cases::all().iter().any(|c| matches(c, filter)) {
        Ok(())
    } else {
        Err(format!(
            "no conformance case matches `{filter}` (an op name, or an `op/case` prefix; known ops: {})",
            cases::OP_KINDS.join(", ")
        ))
    }
}

/// Runs every case (or those `filter` selects, see [`matches`]) on `backend`, in order.
pub fn run_suite(backend: &dyn Backend, filter: Option<&str>) -> Report {
    let rows = cases::all()
        .iter()
        .filter(|c| filter.map(|f| matches(c, f)).unwrap_or(true))
        .map(|c| run_case(backend, c))
        .collect();
    Report { rows }
}

/// What [`conformance_tests!`] accepts: a backend by value, or behind `Arc`/`Box`.
pub trait SuiteTarget {
    fn as_backend(&self) -> &dyn Backend;
}

impl<B: Backend> SuiteTarget for B {
    fn as_backend(&self) -> &dyn Backend {
        self
    }
}

impl SuiteTarget for std::sync::Arc<dyn Backend> {
    fn as_backend(&self) -> &dyn Backend {
        self.as_ref()
    }
}

impl SuiteTarget for Box<dyn Backend> {
    fn as_backend(&self) -> &dyn Backend {
        self.as_ref()
    }
}

/// The body of the test [`conformance_tests!`] generates: runs the suite (filtered by
/// `NPURT_CONFORMANCE_FILTER` if set, for a vendor working on one op), prints the
/// table, panics with it on a failure or if nothing passed at all.
pub fn assert_conformance(target: &dyn SuiteTarget) {
    let filter = std::env::var("NPURT_CONFORMANCE_FILTER")
        .ok()
        .filter(|f| !f.is_empty());
    assert_conformance_filtered(target, filter.as_deref());
}

/// [`assert_conformance`] with an explicit filter (`None`: every case), whatever the
/// environment says. npurt's own tests use this, so a developer's
/// `NPURT_CONFORMANCE_FILTER` never narrows (or breaks) the project's suite.
pub fn assert_conformance_filtered(target: &dyn SuiteTarget, filter: Option<&str>) {
    if let Some(f) = filter {
        if let Err(e) = check_filter(f) {
            panic!("{e}");
        }
    }
    let report = run_suite(target.as_backend(), filter);
    println!("{report}");
    assert!(
        report.failed() == 0,
        "backend `{}` fails {} conformance case(s):\n{report}",
        target.as_backend().name(),
        report.failed()
    );
    assert!(
        report.passed() > 0,
        "backend `{}` passed no conformance case at all:\n{report}",
        target.as_backend().name()
    );
}

/// Generates a `#[test]` running the whole conformance suite against a backend:
///
/// ```text
/// npurt_backends::conformance_tests!(MyBackend::new());          // test `backend_conformance`
/// npurt_backends::conformance_tests!(my_fp16: MyBackend::fp16()); // test `my_fp16`
/// ```
///
/// The expression may be a backend, an `Arc<dyn Backend>` or a `Box<dyn Backend>`.
/// These forms honour `NPURT_CONFORMANCE_FILTER`; `filter: EXPR` (an `Option<&str>`)
/// fixes the filter instead, whatever the environment says (npurt's own tests pass
/// `filter: None` so they always run every case):
///
/// ```text
/// npurt_backends::conformance_tests!(cpu_one_thread: cpu(1), filter: None);
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($test:ident : $make_backend:expr, filter: $filter:expr) => {
        #[test]
        fn $test() {
            let backend = $make_backend;
            $crate::conformance::assert_conformance_filtered(&backend, $filter);
        }
    };
    ($test:ident : $make_backend:expr) => {
        #[test]
        fn $test() {
            let backend = $make_backend;
            $crate::conformance::assert_conformance(&backend);
        }
    };
    ($make_backend:expr) => {
        $crate::conformance_tests!(backend_conformance: $make_backend);
    };
}

#[cfg(test)]
mod tests;
