//! The backend conformance suite against the CPU backend (one and two threads), and
//! proof that the suite can fail: wrappers that perturb, break or decline one op.

use npurt_backends::conformance::{self, Report, Status};
use npurt_backends::cpu::{CpuBackend, CpuOptions};
use npurt_backends::{
    Backend, Bindings, BufferUsage, Capabilities, DeviceBuffer, Executable, Scratch, Support,
};
use npurt_graph::{Graph, NodeId, TensorFact};
use npurt_kernels::{HostData, HostTensor};
use std::sync::Arc;

fn cpu(threads: usize) -> CpuBackend {
    CpuBackend::new(CpuOptions {
        threads: Some(threads),
        ..Default::default()
    })
}

// What a vendor writes: one line per backend configuration. `filter: None` runs every
// case even when NPURT_CONFORMANCE_FILTER is set (the plain form honours it).
npurt_backends::conformance_tests!(cpu_one_thread: cpu(1), filter: None);
npurt_backends::conformance_tests!(cpu_two_threads: Arc::new(cpu(2)) as Arc<dyn Backend>, filter: None);

/// The whole suite on every kernel path this CPU has (the tests above run the best
/// one), at one and two threads: kernels take their path from the calling thread,
/// where the suite runs each case.
#[test]
fn every_kernel_path_passes_the_suite() {
    use npurt_kernels::cpu::{with_isa, Isa};
    for isa in Isa::supported() {
        for threads in [1, 2] {
            let report = with_isa(isa, || conformance::run_suite(&cpu(threads), None));
            assert_eq!(
                report.failed(),
                0,
                "path {} at {threads} thread(s):\n{report}",
                isa.name()
            );
            assert!(report.passed() > 100, "{report}");
        }
    }
}

/// Everything in f32 must pass on the CPU backend. Other weight formats pass or are
/// declined while its quantized kernels land, but never fail; and every op of the IR
/// has at least one passing case.
#[test]
fn cpu_passes_every_f32_case_and_fails_none() {
    let report = conformance::run_suite(&cpu(1), None);
    println!("{report}");
    assert_eq!(report.failed(), 0, "{report}");
    assert!(report.passed() > 100, "{report}");
    for row in &report.rows {
        let f32_only = !["f16.", "bf16.", "q4_0.", "q4_1.", "q8_0.", "q8_channel."]
            .iter()
            .any(|p| row.case.starts_with(p));
        if let Status::Unsupported(why) = &row.status {
            assert!(
                !f32_only,
                "{}/{} is all f32 but unsupported: {why}",
                row.op, row.case
            );
        }
    }
    for op in conformance::cases::OP_KINDS {
        assert!(
            report
                .rows
                .iter()
                .any(|r| r.op == op && r.status == Status::Pass),
            "no passing `{op}` case"
        );
    }
}

#[test]
fn a_filter_that_selects_nothing_is_an_error_naming_the_ops() {
    for f in [
        "softmax",
        "matmul/q4_1",
        "attention/gqa9_3.hd16.pos13.n_valid4",
    ] {
        assert_eq!(conformance::check_filter(f), Ok(()), "{f}");
    }
    for f in ["softmaxx", "nosuchop/x", "matmul/no-such-case"] {
        let e = conformance::check_filter(f).unwrap_err();
        assert!(
            e.contains(f) && conformance::cases::OP_KINDS.iter().all(|op| e.contains(op)),
            "{f}: {e}"
        );
    }
    // The vendor test refuses it too, rather than passing with zero cases.
    let err = std::panic::catch_unwind(|| {
        conformance::assert_conformance_filtered(&cpu(1), Some("softmaxx"))
    })
    .unwrap_err();
    let msg = err.downcast_ref::<String>().expect("panic message");
    assert!(
        msg.contains("no conformance case matches `softmaxx`"),
        "{msg}"
    );
}

#[test]
fn filter_runs_one_op_or_one_case() {
    let r = conformance::run_suite(&cpu(1), Some("softmax"));
    assert!(r.rows.len() > 1 && r.rows.iter().all(|x| x.op == "softmax"));
    let r = conformance::run_suite(&cpu(1), Some("attention/gqa9_3.hd16.pos13.n_valid4"));
    assert_eq!(r.rows.len(), 1);
    assert_eq!(
        r.to_string().lines().last(),
        Some("1 passed, 0 failed, 0 unsupported")
    );
}

/// How [`Broken`] misbehaves on nodes of one op kind.
#[derive(Clone, Copy)]
enum Fault {
    /// Adds +-1e-2 to every output (a subtly wrong kernel).
    Noise,
    /// Panics while running.
    Panic,
    /// Declines the op in `supports`.
    Decline,
}

/// The CPU backend with one op broken.
struct Broken {
    inner: CpuBackend,
    caps: Capabilities,
    op: &'static str,
    fault: Fault,
}

impl Broken {
    fn new(op: &'static str, fault: Fault) -> Self {
        let inner = cpu(1);
        let caps = Capabilities {
            name: format!("broken-{op}"),
            ..inner.capabilities().clone()
        };
        Broken {
            inner,
            caps,
            op,
            fault,
        }
    }
}

struct BrokenExec {
    inner: Arc<dyn Executable>,
    backend: CpuBackend,
    fault: Option<Fault>,
}

impl Executable for BrokenExec {
    fn new_scratch(&self) -> npurt_backends::Result<Box<dyn Scratch>> {
        self.inner.new_scratch()
    }
    fn run(&self, b: &Bindings, s: &mut dyn Scratch) -> npurt_backends::Result<()> {
        if let Some(Fault::Panic) = self.fault {
            panic!("kernel crashed");
        }
        self.inner.run(b, s)?;
        if let Some(Fault::Noise) = self.fault {
            for (_, buf) in &b.outputs {
                let mut t = self.backend.read(buf.as_ref())?;
                if let HostData::F32(v) = &mut t.data {
                    v.iter_mut()
                        .enumerate()
                        .for_each(|(i, x)| *x += if i % 2 == 0 { 1e-2 } else { -1e-2 });
                }
                self.backend.write(buf.as_ref(), &t)?;
            }
        }
        Ok(())
    }
}

impl Backend for Broken {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn supports(&self, g: &Graph, id: NodeId) -> Support {
        if matches!(self.fault, Fault::Decline) && g.node(id).op.kind() == self.op {
            return Support::Unsupported(format!("{} is declined on purpose", self.op));
        }
        self.inner.supports(g, id)
    }
    fn alloc(
        &self,
        f: &TensorFact,
        u: BufferUsage,
    ) -> npurt_backends::Result<Arc<dyn DeviceBuffer>> {
        self.inner.alloc(f, u)
    }
    fn prepare_weight(
        &self,
        name: &str,
        t: HostTensor,
    ) -> npurt_backends::Result<Arc<dyn DeviceBuffer>> {
        self.inner.prepare_weight(name, t)
    }
    fn compile(
        &self,
        g: &Graph,
        w: &[(NodeId, Arc<dyn DeviceBuffer>)],
    ) -> npurt_backends::Result<Arc<dyn Executable>> {
        let hit = g.nodes.iter().any(|n| n.op.kind() == self.op);
        Ok(Arc::new(BrokenExec {
            inner: self.inner.compile(g, w)?,
            backend: cpu(1),
            fault: hit.then_some(self.fault),
        }))
    }
    fn write(&self, b: &dyn DeviceBuffer, d: &HostTensor) -> npurt_backends::Result<()> {
        self.inner.write(b, d)
    }
    fn read(&self, b: &dyn DeviceBuffer) -> npurt_backends::Result<HostTensor> {
        self.inner.read(b)
    }
    fn copy_rows(
        &self,
        s: &dyn DeviceBuffer,
        d: &dyn DeviceBuffer,
        rows: usize,
    ) -> npurt_backends::Result<()> {
        self.inner.copy_rows(s, d, rows)
    }
}

fn rows_of<'a>(
    r: &'a Report,
    op: &'a str,
) -> impl Iterator<Item = &'a npurt_backends::conformance::Row> {
    r.rows.iter().filter(move |x| x.op == op)
}

#[test]
fn a_noisy_silu_fails_the_suite_and_nothing_else_does() {
    let report = conformance::run_suite(&Broken::new("silu", Fault::Noise), None);
    println!("{report}");
    assert!(report.failed() > 0 && !report.is_ok());
    assert!(report.failures().all(|r| r.op == "silu"), "{report}");
    assert!(rows_of(&report, "silu").all(
        |r| matches!(&r.status, Status::Fail(m) if m.contains("NMSE"))
            && r.nmse.unwrap() > r.threshold
    ));
    // The vendor macro's test body panics with the table on exactly this report.
    let err = std::panic::catch_unwind(|| {
        conformance::assert_conformance_filtered(&Broken::new("silu", Fault::Noise), None)
    })
    .unwrap_err();
    let msg = err.downcast_ref::<String>().expect("panic message");
    assert!(
        msg.contains("fails") && msg.contains("silu") && msg.contains("failed"),
        "{msg}"
    );
}

#[test]
fn a_panicking_kernel_is_a_failure_not_a_crash() {
    let report = conformance::run_suite(&Broken::new("gelu", Fault::Panic), Some("gelu"));
    assert!(report.rows.len() > 1);
    assert!(
        report.rows.iter().all(
            |r| matches!(&r.status, Status::Fail(m) if m.contains("panicked: kernel crashed"))
        ),
        "{report}"
    );
}

#[test]
fn a_declined_op_is_unsupported_never_passed() {
    let report = conformance::run_suite(&Broken::new("attention", Fault::Decline), None);
    assert_eq!(report.failed(), 0, "{report}");
    assert!(rows_of(&report, "attention").all(
        |r| matches!(&r.status, Status::Unsupported(m) if m.contains("on purpose"))
            && r.nmse.is_none()
    ));
    assert_eq!(
        rows_of(&report, "attention").count() + conformance::run_suite(&cpu(1), None).unsupported(),
        report.unsupported()
    );
    // Declining everything proves nothing: the vendor test fails on zero passes too.
    let none = conformance::run_suite(&Broken::new("attention", Fault::Decline), Some("attention"));
    assert!(!none.is_ok());
}
