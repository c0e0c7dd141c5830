//! Backends are open: a backend defined here, outside npurt, plugs into the runtime
//! through the registry, without touching any npurt enum or crate. It wraps the CPU
//! backend and counts what the runtime asks of it, proving the runtime goes through
//! the trait for support queries, weight preparation, compilation and execution.
//! Also: runtime-level bad input (prompt longer than the context, ids out of range).

use npurt_backends::cpu::{CpuBackend, CpuOptions};
use npurt_backends::{
    Backend, Bindings, BufferUsage, Capabilities, DeviceBuffer, Executable, Registry, Scratch,
    Support,
};
use npurt_graph::PrecisionPolicy;
use npurt_graph::{Graph, NodeId, TensorFact};
use npurt_kernels::HostTensor;
use npurt_runtime::{GenerateOptions, LoadOptions, Runtime, RuntimeError, Session};
use npurt_tests::*;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

#[derive(Default)]
struct Counts {
    supports: AtomicUsize,
    prepared: AtomicUsize,
    compiled: AtomicUsize,
    runs: AtomicUsize,
}

struct CountingBackend {
    inner: CpuBackend,
    caps: Capabilities,
    counts: Arc<Counts>,
}

struct CountingExec {
    inner: Arc<dyn Executable>,
    counts: Arc<Counts>,
}

impl Executable for CountingExec {
    fn new_scratch(&self) -> npurt_backends::Result<Box<dyn Scratch>> {
        self.inner.new_scratch()
    }
    fn run(&self, b: &Bindings, s: &mut dyn Scratch) -> npurt_backends::Result<()> {
        self.counts.runs.fetch_add(1, Relaxed);
        self.inner.run(b, s)
    }
}

impl Backend for CountingBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn supports(&self, g: &Graph, id: NodeId) -> Support {
        self.counts.supports.fetch_add(1, Relaxed);
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
        self.counts.prepared.fetch_add(1, Relaxed);
        self.inner.prepare_weight(name, t)
    }
    fn compile(
        &self,
        g: &Graph,
        w: &[(NodeId, Arc<dyn DeviceBuffer>)],
    ) -> npurt_backends::Result<Arc<dyn Executable>> {
        self.counts.compiled.fetch_add(1, Relaxed);
        npurt_backends::check_support(self, g)?;
        Ok(Arc::new(CountingExec {
            inner: self.inner.compile(g, w)?,
            counts: self.counts.clone(),
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

#[test]
fn a_backend_defined_outside_npurt_runs_the_real_model() {
    let counts = Arc::new(Counts::default());
    let mut registry = Registry::with_builtin();
    let c = counts.clone();
    registry.register("counting", move |o| {
        let inner = CpuBackend::new(CpuOptions {
            threads: o.threads,
            ..Default::default()
        });
        let caps = Capabilities {
            name: "counting".into(),
            device: "counting wrapper over cpu".into(),
            ..inner.capabilities().clone()
        };
        Ok(Arc::new(CountingBackend {
            inner,
            caps,
            counts: c.clone(),
        }) as Arc<dyn Backend>)
    });
    let rt = Runtime::with_registry(registry);
    let model = rt
        .load(
            &smollm2_gguf(),
            LoadOptions {
                backend: "counting".into(),
                ctx: Some(256),
                precision: PrecisionPolicy::F32,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(model.backend.name(), "counting");

    let g = read_json("smollm2/greedy.json");
    let case = &g["results"][0];
    let ids: Vec<u32> = golden_ids(&case["prompt_ids"]);
    let want: Vec<u32> = golden_ids(&case["new_ids"]);
    let out = Session::new(model.clone())
        .unwrap()
        .generate(
            &ids,
            &GenerateOptions {
                max_tokens: want.len(),
                ..Default::default()
            },
            |_, _| true,
        )
        .unwrap();
    assert_eq!(out.tokens, want);

    // 4 graphs compiled (prefill, prefill with every row's logits, decode, a draft's
    // verification), every weight prepared once (shared by the graphs), and one run
    // per prefill chunk + decode step.
    assert_eq!(model.graphs.len(), 4);
    assert_eq!(counts.compiled.load(Relaxed), 4);
    let mut weights: Vec<&str> = model
        .graphs
        .values()
        .flat_map(|g| g.graph.sources("weight").into_iter().map(|(_, n, _)| n))
        .collect();
    weights.sort();
    weights.dedup();
    assert_eq!(counts.prepared.load(Relaxed), weights.len());
    // Fused q/k/v and gate/up weights: 6 per layer, plus embedding and final norm.
    assert_eq!(weights.len(), 30 * 6 + 2);
    assert!(counts.supports.load(Relaxed) > 3 * 300);
    assert_eq!(counts.runs.load(Relaxed), 1 + (want.len() - 1));
}

#[test]
fn sessions_take_text_and_chat_messages() {
    let model = Runtime::new()
        .load(
            &smollm2_gguf(),
            LoadOptions {
                ctx: Some(256),
                ..Default::default()
            },
        )
        .unwrap();
    let chat = read_json("smollm2/chat_cases.json");
    let case = &chat
        .as_array()
        .map(|a| a[0].clone())
        .unwrap_or_else(|| chat["cases"][0].clone());
    let messages: Vec<npurt_models::ChatMessage> = case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            npurt_models::ChatMessage::new(
                m["role"].as_str().unwrap(),
                m["content"].as_str().unwrap(),
            )
        })
        .collect();
    let mut s = Session::new(model.clone()).unwrap();
    let ids = s.feed_chat(&messages).unwrap();
    let want: Vec<u32> = golden_ids(&case["ids"]);
    assert_eq!(ids, want, "chat ids");
    assert_eq!(s.tokens(), &want[..]);
    let mut t = Session::new(model).unwrap();
    t.feed_text(case["rendered"].as_str().unwrap()).unwrap();
    assert_eq!(
        t.last_logits(),
        s.last_logits(),
        "text and chat feeding give the same state"
    );
}

#[test]
fn unknown_backend_is_a_typed_error_listing_known_ones() {
    let err = Runtime::new()
        .load(
            &smollm2_gguf(),
            LoadOptions {
                backend: "npu9000".into(),
                ..Default::default()
            },
        )
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains("npu9000") && msg.contains("cpu"), "{msg}");
}

#[test]
fn prompt_longer_than_context_and_bad_ids_are_typed_errors() {
    let model = Runtime::new()
        .load(
            &smollm2_gguf(),
            LoadOptions {
                ctx: Some(64),
                chunk: 32,
                ..Default::default()
            },
        )
        .unwrap();
    let mut s = Session::new(model.clone()).unwrap();
    match s.feed(&vec![42u32; 65]) {
        Err(RuntimeError::ContextOverflow {
            needed: 65,
            used: 0,
            ctx: 64,
        }) => {}
        other => panic!("expected ContextOverflow, got {other:?}"),
    }
    assert!(s.is_empty(), "a refused feed must not change the session");
    match s.feed(&[1, 2, 49152, 3]) {
        Err(
            e @ RuntimeError::TokenOutOfRange {
                id: 49152,
                index: 2,
                vocab: 49152,
            },
        ) => assert!(e.to_string().contains("49152")),
        other => panic!("expected TokenOutOfRange, got {other:?}"),
    }
    // The session still works after refused input, and fills up to exactly ctx.
    s.feed(&vec![42u32; 64]).unwrap();
    assert!(matches!(
        s.feed(&[42]),
        Err(RuntimeError::ContextOverflow { .. })
    ));
    // Generation stops cleanly at a full context.
    s.truncate(60);
    let g = s
        .generate(
            &[42],
            &GenerateOptions {
                max_tokens: 100,
                stop_at_eos: false,
                ..Default::default()
            },
            |_, _| true,
        )
        .unwrap();
    assert_eq!(g.stop, npurt_runtime::StopReason::ContextFull);
    assert_eq!(s.len(), 64);
}
