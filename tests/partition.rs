//! Splitting a real (tiny) LLaMA graph across two backends: a "device" that declines
//! some ops and the CPU fallback. The split graph must compute exactly what the unsplit
//! CPU graph computes, over two chunks (so KV-cache state crosses runs), and the report
//! must count every fallback and transfer.
//!
//! The device wraps the CPU backend but keeps its own buffer type, so a buffer bound on
//! the wrong backend, or a transfer that was never copied, is an error, not a silent
//! success through shared host memory.

use npurt_backends::cpu::{CpuBackend, CpuOptions};
use npurt_backends::{
    Backend, BackendError, Bindings, BufferUsage, Capabilities, DeviceBuffer, Executable, Scratch,
    Support,
};
use npurt_graph::{Graph, NodeId, Op, SeededRng, TensorFact};
use npurt_kernels::HostTensor;
use npurt_models::llama::{self, InputKind, LlamaGraphOptions, LogitsMode};
use npurt_models::LlamaConfig;
use npurt_runtime::partition::{compile_partitioned, Partitioned};
use npurt_runtime::RuntimeError;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

// ---- a device backend with its own memory that declines some op kinds ----

struct DevBuffer(Arc<dyn DeviceBuffer>);

impl DeviceBuffer for DevBuffer {
    fn fact(&self) -> &TensorFact {
        self.0.fact()
    }
    fn usage(&self) -> BufferUsage {
        self.0.usage()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn unwrap(b: &dyn DeviceBuffer) -> npurt_backends::Result<&Arc<dyn DeviceBuffer>> {
    b.as_any()
        .downcast_ref::<DevBuffer>()
        .map(|d| &d.0)
        .ok_or_else(|| BackendError::Binding(format!("{} buffer is not a device buffer", b.fact())))
}

fn unwrap_all<K: Clone>(
    v: &[(K, Arc<dyn DeviceBuffer>)],
) -> npurt_backends::Result<Vec<(K, Arc<dyn DeviceBuffer>)>> {
    v.iter()
        .map(|(k, b)| Ok((k.clone(), unwrap(b.as_ref())?.clone())))
        .collect()
}

struct Device {
    cpu: CpuBackend,
    caps: Capabilities,
    declines: &'static [&'static str],
    /// Whether its executables implement `Executable::profile` (else the default).
    profiles: bool,
}

impl Device {
    fn arc(name: &str, declines: &'static [&'static str]) -> Arc<dyn Backend> {
        Self::with_profiling(name, declines, false)
    }

    /// A device whose executables profile (forwarding to the CPU's).
    fn arc_profiling(name: &str, declines: &'static [&'static str]) -> Arc<dyn Backend> {
        Self::with_profiling(name, declines, true)
    }

    fn with_profiling(
        name: &str,
        declines: &'static [&'static str],
        profiles: bool,
    ) -> Arc<dyn Backend> {
        let cpu = CpuBackend::new(CpuOptions {
            threads: Some(1),
            ..Default::default()
        });
        let caps = Capabilities {
            name: name.into(),
            host_memory: false,
            ..cpu.capabilities().clone()
        };
        Arc::new(Device {
            cpu,
            caps,
            declines,
            profiles,
        })
    }
}

fn unwrap_bindings(b: &Bindings) -> npurt_backends::Result<Bindings> {
    Ok(Bindings {
        sources: unwrap_all(&b.sources)?,
        outputs: unwrap_all(&b.outputs)?,
    })
}

/// `DevExec` with `Executable::profile`.
struct ProfDevExec(Arc<dyn Executable>);

impl Executable for ProfDevExec {
    fn new_scratch(&self) -> npurt_backends::Result<Box<dyn Scratch>> {
        self.0.new_scratch()
    }
    fn run(&self, b: &Bindings, s: &mut dyn Scratch) -> npurt_backends::Result<()> {
        self.0.run(&unwrap_bindings(b)?, s)
    }
    fn profile(
        &self,
        b: &Bindings,
        s: &mut dyn Scratch,
    ) -> npurt_backends::Result<npurt_backends::Profile> {
        self.0.profile(&unwrap_bindings(b)?, s)
    }
}

struct DevExec(Arc<dyn Executable>);

impl Executable for DevExec {
    fn new_scratch(&self) -> npurt_backends::Result<Box<dyn Scratch>> {
        self.0.new_scratch()
    }
    fn run(&self, b: &Bindings, s: &mut dyn Scratch) -> npurt_backends::Result<()> {
        self.0.run(
            &Bindings {
                sources: unwrap_all(&b.sources)?,
                outputs: unwrap_all(&b.outputs)?,
            },
            s,
        )
    }
}

impl Backend for Device {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn supports(&self, g: &Graph, id: NodeId) -> Support {
        let kind = g.node(id).op.kind();
        if self.declines.contains(&kind) {
            return Support::Unsupported(format!("{kind} is not implemented on this device"));
        }
        self.cpu.supports(g, id)
    }
    fn alloc(
        &self,
        f: &TensorFact,
        u: BufferUsage,
    ) -> npurt_backends::Result<Arc<dyn DeviceBuffer>> {
        Ok(Arc::new(DevBuffer(self.cpu.alloc(f, u)?)))
    }
    fn prepare_weight(
        &self,
        name: &str,
        t: HostTensor,
    ) -> npurt_backends::Result<Arc<dyn DeviceBuffer>> {
        Ok(Arc::new(DevBuffer(self.cpu.prepare_weight(name, t)?)))
    }
    fn compile(
        &self,
        g: &Graph,
        w: &[(NodeId, Arc<dyn DeviceBuffer>)],
    ) -> npurt_backends::Result<Arc<dyn Executable>> {
        npurt_backends::check_support(self, g)?;
        let exec = self.cpu.compile(g, &unwrap_all(w)?)?;
        if self.profiles {
            return Ok(Arc::new(ProfDevExec(exec)));
        }
        Ok(Arc::new(DevExec(exec)))
    }
    fn write(&self, b: &dyn DeviceBuffer, d: &HostTensor) -> npurt_backends::Result<()> {
        self.cpu.write(unwrap(b)?.as_ref(), d)
    }
    fn read(&self, b: &dyn DeviceBuffer) -> npurt_backends::Result<HostTensor> {
        self.cpu.read(unwrap(b)?.as_ref())
    }
    fn copy_rows(
        &self,
        s: &dyn DeviceBuffer,
        d: &dyn DeviceBuffer,
        rows: usize,
    ) -> npurt_backends::Result<()> {
        self.cpu
            .copy_rows(unwrap(s)?.as_ref(), unwrap(d)?.as_ref(), rows)
    }
}

// ---- the model ----

const ROWS: usize = 8;
const CACHE: usize = 24;

fn tiny_llama() -> Graph {
    let cfg = LlamaConfig::from_hf_json(&serde_json::json!({
        "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "tie_word_embeddings": true, "rms_norm_eps": 1e-5
    }))
    .unwrap();
    llama::build(
        &cfg,
        &LlamaGraphOptions {
            rows: ROWS,
            cache_rows: CACHE,
            logits: LogitsMode::All,
            input: InputKind::Ids,
            taps: false,
        },
    )
    .unwrap()
}

/// Seeded small weights (norm weights near 1), by name.
fn weights(g: &Graph) -> HashMap<String, HostTensor> {
    let mut rng = SeededRng::new(0x2545_f491_4f6c_dd1d);
    let mut next = move || rng.uniform(-0.5, 0.5);
    g.sources("weight")
        .into_iter()
        .map(|(_, name, fact)| {
            let n = fact.elems().unwrap();
            let v: Vec<f32> = if name.contains("norm") {
                (0..n).map(|_| 1.0 + 0.2 * next()).collect()
            } else {
                (0..n).map(|_| 0.6 * next()).collect()
            };
            (name.to_string(), HostTensor::f32(fact.shape.clone(), v))
        })
        .collect()
}

/// (pos, ids) of the two chunks every test runs: a full one, then a padded one.
fn chunks() -> [(usize, Vec<i32>); 2] {
    [
        (0, vec![1, 17, 42, 5, 63, 0, 8, 30]),
        (ROWS, vec![9, 2, 44, 61, 3]),
    ]
}

/// Runs both chunks; returns the logits of each. `alloc_source`/`alloc_output` say
/// where each caller buffer lives; `write` fills one.
fn run_chunks(
    g: &Graph,
    exec: &dyn Executable,
    alloc_source: &dyn Fn(NodeId, &TensorFact, BufferUsage) -> Arc<dyn DeviceBuffer>,
    alloc_output: &dyn Fn(&str, &TensorFact) -> Arc<dyn DeviceBuffer>,
    backend_of: &dyn Fn(NodeId) -> Arc<dyn Backend>,
    output_backend: Arc<dyn Backend>,
) -> Vec<Vec<f32>> {
    let mut scratch = exec.new_scratch().unwrap();
    let states: Vec<_> = g
        .sources("state")
        .into_iter()
        .map(|(id, _, f)| (id, alloc_source(id, f, BufferUsage::State)))
        .collect();
    let logits_id = g.output("logits").unwrap();
    let logits = alloc_output("logits", g.fact(logits_id));
    let mut out = Vec::new();
    for (pos, ids) in chunks() {
        let n_valid = ids.len();
        let mut padded = ids.clone();
        padded.resize(ROWS, 0);
        let mut sources = states.clone();
        for (name, t) in [
            ("ids", HostTensor::i32([ROWS], padded)),
            ("pos", HostTensor::i32([1], vec![pos as i32])),
            ("n_valid", HostTensor::i32([1], vec![n_valid as i32])),
        ] {
            let id = g.find_source("input", name).unwrap();
            let buf = alloc_source(id, &t.fact, BufferUsage::Activations);
            backend_of(id).write(buf.as_ref(), &t).unwrap();
            sources.push((id, buf));
        }
        exec.run(
            &Bindings {
                sources,
                outputs: vec![("logits".into(), logits.clone())],
            },
            scratch.as_mut(),
        )
        .unwrap();
        output_backend.synchronize().unwrap();
        let all = output_backend
            .read(logits.as_ref())
            .unwrap()
            .into_f32()
            .unwrap();
        out.push(all[..n_valid * 64].to_vec());
    }
    out
}

/// The unsplit graph on the CPU backend.
fn reference(g: &Graph) -> Vec<Vec<f32>> {
    let cpu: Arc<dyn Backend> = Arc::new(CpuBackend::new(CpuOptions {
        threads: Some(1),
        ..Default::default()
    }));
    let w = weights(g);
    let prepared: Vec<_> = g
        .sources("weight")
        .into_iter()
        .map(|(id, name, _)| (id, cpu.prepare_weight(name, w[name].clone()).unwrap()))
        .collect();
    let exec = cpu.compile(g, &prepared).unwrap();
    let c = cpu.clone();
    let c2 = cpu.clone();
    run_chunks(
        g,
        exec.as_ref(),
        &|_, f, u| c.alloc(f, u).unwrap(),
        &|_, f| c2.alloc(f, BufferUsage::Activations).unwrap(),
        &|_| cpu.clone(),
        cpu.clone(),
    )
}

/// Prepare calls per backend name, and the closure `compile_partitioned` calls.
struct Preparer {
    weights: HashMap<String, HostTensor>,
    graph: Graph,
    calls: Mutex<HashMap<String, usize>>,
}

impl Preparer {
    fn prepare(
        &self,
        backend: &dyn Backend,
        id: NodeId,
    ) -> npurt_runtime::Result<Arc<dyn DeviceBuffer>> {
        let Op::Weight { name, .. } = &self.graph.node(id).op else {
            panic!("{id} is not a weight")
        };
        *self
            .calls
            .lock()
            .unwrap()
            .entry(backend.name().to_string())
            .or_default() += 1;
        Ok(backend.prepare_weight(name, self.weights[name].clone())?)
    }
}

fn partitioned(g: &Graph, backends: &[Arc<dyn Backend>]) -> (Partitioned, HashMap<String, usize>) {
    let p = Preparer {
        weights: weights(g),
        graph: g.clone(),
        calls: Mutex::new(HashMap::new()),
    };
    let part = compile_partitioned(g, backends, &|b, id| p.prepare(b, id)).unwrap();
    let calls = p.calls.into_inner().unwrap();
    (part, calls)
}

fn run_partitioned(g: &Graph, part: &Partitioned) -> Vec<Vec<f32>> {
    let out_backend = part.output_backend("logits").unwrap().clone();
    run_chunks(
        g,
        part,
        &|id, f, u| part.alloc_source(id, f, u).unwrap(),
        &|name, f| part.alloc_output(name, f).unwrap(),
        &|id| part.source_backend(id).unwrap().clone(),
        out_backend,
    )
}

fn assert_same_logits(got: &[Vec<f32>], want: &[Vec<f32>]) {
    for (chunk, (g, w)) in got.iter().zip(want).enumerate() {
        let (lo, hi) = w
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
                (a.min(*v), b.max(*v))
            });
        let diff = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            diff <= 1e-5 * (hi - lo),
            "chunk {chunk}: max abs diff {diff} over a logit range {}",
            hi - lo
        );
    }
}

fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new(CpuOptions {
        threads: Some(1),
        ..Default::default()
    }))
}

fn count(kinds: &[(&'static str, usize)], kind: &str) -> usize {
    kinds
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(0, |(_, n)| *n)
}

// ---- tests ----

#[test]
fn silu_falls_back_to_cpu_and_logits_match() {
    let g = tiny_llama();
    let want = reference(&g);
    let (part, calls) = partitioned(&g, &[Device::arc("dev-no-silu", &["silu"]), cpu()]);
    let r = part.report().clone();
    println!("{r}");
    // Per layer: device .. gate/up | cpu: silu | device: mul .. => 2 layers, 5 segments.
    assert_eq!(r.segments.len(), 5, "{r}");
    assert_eq!(r.fallback_nodes, 2, "{r}");
    assert_eq!(r.fallbacks, vec![("silu", "cpu".to_string(), 2)]);
    // Per layer, copied: gate output -> cpu, silu output -> device; and on the device
    // from before the silu to after it, without a copy: up_proj and the residual.
    assert_eq!(r.transfers.len(), 2 * 4, "{r}");
    assert_eq!(r.copies(), 2 * 2, "{r}");
    assert_eq!(r.transfer_bytes(), 2 * 2 * 8 * 48 * 4, "{r}");
    assert!(
        r.transfers
            .iter()
            .filter(|t| !t.copied_to.is_empty())
            .all(|t| t.fact == "f32[8, 48]"),
        "{r}"
    );
    assert_eq!(
        r.segments
            .iter()
            .filter(|s| s.backend == "cpu")
            .map(|s| s.nodes)
            .sum::<usize>(),
        2
    );
    assert!(r.to_string().contains("fallback: silu x2 on cpu"), "{r}");
    // silu reads no weight: every weight is prepared on the device only.
    assert_eq!(calls.get("cpu"), None);
    assert_eq!(calls["dev-no-silu"], g.sources("weight").len());
    assert_same_logits(&run_partitioned(&g, &part), &want);
}

#[test]
fn attention_and_kv_writes_fall_back_together() {
    let g = tiny_llama();
    let want = reference(&g);
    let (part, _) = partitioned(
        &g,
        &[
            Device::arc("dev-no-attn", &["attention", "kv_write"]),
            cpu(),
        ],
    );
    let r = part.report().clone();
    println!("{r}");
    assert_eq!(r.fallback_nodes, 2 * 3, "{r}");
    assert_eq!(
        r.fallbacks,
        vec![
            ("attention", "cpu".to_string(), 2),
            ("kv_write", "cpu".to_string(), 4)
        ]
    );
    // Per layer, copied: k_rope, v and q_rope to the cpu, the attention output back;
    // not copied: the residual stream, from before the attention to after it.
    assert_eq!(r.copies(), 2 * 4, "{r}");
    assert_eq!(r.transfers.len(), 2 * 5, "{r}");
    assert_eq!(r.segments.len(), 5, "{r}");
    // The caches live on the cpu; pos / n_valid are read on both sides.
    for (id, _, _) in g.sources("state") {
        assert_eq!(part.source_backend(id).unwrap().name(), "cpu");
    }
    assert!(r.staged_inputs.iter().any(|s| s.starts_with("pos")), "{r}");
    assert_same_logits(&run_partitioned(&g, &part), &want);
}

#[test]
fn a_cache_is_never_split_across_backends() {
    // The device can write the cache but not attend over it: the writes follow the
    // attention to the cpu rather than leave the cache on the device.
    let g = tiny_llama();
    let want = reference(&g);
    let (part, _) = partitioned(
        &g,
        &[Device::arc("dev-no-attention", &["attention"]), cpu()],
    );
    let r = part.report().clone();
    assert_eq!(
        r.fallbacks,
        vec![
            ("attention", "cpu".to_string(), 2),
            ("kv_write", "cpu".to_string(), 4)
        ],
        "{r}"
    );
    assert_same_logits(&run_partitioned(&g, &part), &want);
}

#[test]
fn a_weight_read_on_two_backends_is_prepared_on_both() {
    // Declining `gather` puts the tied embedding table's lookup on the cpu while the
    // LM head, which reads the same table, stays on the device.
    let g = tiny_llama();
    let want = reference(&g);
    let (part, calls) = partitioned(&g, &[Device::arc("dev-no-gather", &["gather"]), cpu()]);
    let r = part.report().clone();
    assert_eq!(calls["cpu"], 1, "{r}");
    assert_eq!(calls["dev-no-gather"], g.sources("weight").len(), "{r}");
    assert_eq!(r.segments.len(), 2, "{r}");
    assert_eq!(r.segments[0].backend, "cpu");
    assert_eq!(count(&r.segments[0].kinds, "gather"), 1);
    assert_same_logits(&run_partitioned(&g, &part), &want);
}

#[test]
fn a_backend_that_runs_everything_gives_one_segment_and_no_transfers() {
    let g = tiny_llama();
    let want = reference(&g);
    let (part, calls) = partitioned(&g, &[Device::arc("dev-all", &[]), cpu()]);
    let r = part.report().clone();
    println!("{r}");
    assert_eq!(r.segments.len(), 1);
    assert_eq!(part.segments(), 1);
    assert!(r.transfers.is_empty() && r.staged_inputs.is_empty());
    assert_eq!(r.fallback_nodes, 0);
    assert_eq!(r.segments[0].backend, "dev-all");
    assert_eq!(
        r.segments[0].nodes,
        g.nodes.iter().filter(|n| !n.op.is_source()).count()
    );
    assert_eq!(calls.get("cpu"), None);
    assert_same_logits(&run_partitioned(&g, &part), &want);
}

#[test]
fn nothing_to_fall_back_to_is_a_typed_error() {
    let g = tiny_llama();
    let p = Preparer {
        weights: weights(&g),
        graph: g.clone(),
        calls: Mutex::new(HashMap::new()),
    };
    let prepare = |b: &dyn Backend, id| p.prepare(b, id);
    let err = compile_partitioned(&g, &[Device::arc("dev-no-silu", &["silu"])], &prepare)
        .err()
        .expect("silu has nowhere to run");
    assert!(
        matches!(&err, RuntimeError::Backend(BackendError::Unsupported { node, .. }) if node.ends_with("silu")),
        "{err}"
    );
    assert!(
        err.to_string().contains("not implemented on this device"),
        "{err}"
    );
    let err = compile_partitioned(&g, &[], &prepare)
        .err()
        .expect("no backends");
    assert!(
        matches!(
            err,
            RuntimeError::InvalidOption {
                option: "backends",
                ..
            }
        ),
        "{err}"
    );
}

/// Counts warnings per message so the test can check one warning per fallback kind.
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if r.level() <= log::Level::Warn {
            self.0.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));
static INSTALL: AtomicUsize = AtomicUsize::new(0);

#[test]
fn each_fallback_kind_is_warned_once_with_its_count() {
    if INSTALL.fetch_add(1, Relaxed) == 0 {
        log::set_logger(&CAPTURE).ok();
        log::set_max_level(log::LevelFilter::Warn);
    }
    let g = tiny_llama();
    partitioned(
        &g,
        &[
            Device::arc("dev-warn", &["attention", "kv_write", "silu"]),
            cpu(),
        ],
    );
    let logs: Vec<String> = CAPTURE
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.contains("`dev-warn`"))
        .cloned()
        .collect();
    assert_eq!(logs.len(), 3, "{logs:#?}");
    for (n, kind) in [(2, "attention"), (4, "kv_write"), (2, "silu")] {
        assert!(
            logs.iter().any(|m| m.starts_with(&format!(
                "{n} `{kind}` node(s) fall back from `dev-warn` to `cpu`"
            ))),
            "{logs:#?}"
        );
    }
}

/// A cache written in one device segment and attended over in a later one (a cpu
/// segment in between), an output that is an input itself, and an output that is the
/// written cache: the later segment must read the cache from its state, not from a
/// stale transfer, and every output must come back from where it lives.
#[test]
fn a_cache_written_in_one_segment_is_read_from_its_state_in_the_next() {
    use npurt_graph::Builder;
    let mut b = Builder::new();
    let x = b.input("x", TensorFact::f32([4, 16])).unwrap();
    let pos = b.input("pos", TensorFact::i32([1])).unwrap();
    let n_valid = b.input("n_valid", TensorFact::i32([1])).unwrap();
    let kc = b.state("k_cache", TensorFact::f32([12, 16])).unwrap();
    let vc = b.state("v_cache", TensorFact::f32([12, 16])).unwrap();
    let k = b.reshape("k", x, &[4, 16]).unwrap();
    let kw = b.kv_write("k_write", kc, k, pos).unwrap();
    let vw = b.kv_write("v_write", vc, k, pos).unwrap();
    let q = b.silu("q", x).unwrap();
    let att = b
        .attention("attention", q, kw, vw, pos, n_valid, 2, 2, 8)
        .unwrap();
    b.output("y", att);
    b.output("x_echo", x);
    b.output("k_after", kw);
    let g = b.finish().unwrap();

    let data = |id: NodeId| -> HostTensor {
        let f = g.fact(id);
        if id == pos {
            HostTensor::i32([1], vec![3])
        } else if id == n_valid {
            HostTensor::i32([1], vec![4])
        } else {
            HostTensor::f32(
                f.shape.clone(),
                (0..f.elems().unwrap())
                    .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                    .collect(),
            )
        }
    };
    let run = |exec: &dyn Executable,
               backend_of: &dyn Fn(NodeId) -> Arc<dyn Backend>,
               out_backend: &dyn Fn(&str) -> Arc<dyn Backend>| {
        let mut sources = Vec::new();
        for id in [x, pos, n_valid, kc, vc] {
            let be = backend_of(id);
            let usage = if id == kc || id == vc {
                BufferUsage::State
            } else {
                BufferUsage::Activations
            };
            let buf = be.alloc(g.fact(id), usage).unwrap();
            be.write(buf.as_ref(), &data(id)).unwrap();
            sources.push((id, buf));
        }
        let outputs: Vec<(String, Arc<dyn DeviceBuffer>)> = g
            .outputs
            .iter()
            .map(|(n, id)| {
                (
                    n.clone(),
                    out_backend(n)
                        .alloc(g.fact(*id), BufferUsage::Activations)
                        .unwrap(),
                )
            })
            .collect();
        let bindings = Bindings { sources, outputs };
        exec.run(&bindings, exec.new_scratch().unwrap().as_mut())
            .unwrap();
        g.outputs
            .iter()
            .map(|(n, _)| {
                out_backend(n)
                    .read(bindings.output(n).unwrap().as_ref())
                    .unwrap()
                    .into_f32()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };

    let cpu_be = cpu();
    let exec = cpu_be.compile(&g, &[]).unwrap();
    let want = run(exec.as_ref(), &|_| cpu_be.clone(), &|_| cpu_be.clone());

    let (part, _) = partitioned(&g, &[Device::arc("dev-no-silu-2", &["silu"]), cpu()]);
    let r = part.report().clone();
    println!("{r}");
    assert_eq!(
        r.segments
            .iter()
            .map(|s| s.backend.as_str())
            .collect::<Vec<_>>(),
        ["dev-no-silu-2", "cpu", "dev-no-silu-2"],
        "{r}"
    );
    // Only q crosses; the caches are re-read from state, x is staged onto the cpu.
    assert_eq!(
        r.transfers
            .iter()
            .map(|t| t.value.as_str())
            .collect::<Vec<_>>(),
        ["q"],
        "{r}"
    );
    assert_eq!(r.staged_inputs, ["x -> cpu"], "{r}");
    assert_eq!(
        part.output_backend("k_after").unwrap().name(),
        "dev-no-silu-2"
    );
    let got = run(
        &part,
        &|id| part.source_backend(id).unwrap().clone(),
        &|n| part.output_backend(n).unwrap().clone(),
    );
    assert_eq!(got, want);
}

/// Profiles the first chunk through `part` (bindings as `run_partitioned` makes them).
fn profile_first_chunk(
    g: &Graph,
    part: &Partitioned,
) -> npurt_backends::Result<npurt_backends::Profile> {
    let mut scratch = part.new_scratch()?;
    let mut sources: Vec<(NodeId, Arc<dyn DeviceBuffer>)> = Vec::new();
    for (id, _, f) in g.sources("state") {
        sources.push((id, part.alloc_source(id, f, BufferUsage::State)?));
    }
    let (pos, ids) = chunks()[0].clone();
    for (name, t) in [
        ("ids", HostTensor::i32([ROWS], ids.clone())),
        ("pos", HostTensor::i32([1], vec![pos as i32])),
        ("n_valid", HostTensor::i32([1], vec![ids.len() as i32])),
    ] {
        let id = g.find_source("input", name).unwrap();
        let buf = part.alloc_source(id, &t.fact, BufferUsage::Activations)?;
        part.source_backend(id).unwrap().write(buf.as_ref(), &t)?;
        sources.push((id, buf));
    }
    let logits = part.alloc_output("logits", g.fact(g.output("logits").unwrap()))?;
    part.profile(
        &Bindings {
            sources,
            outputs: vec![("logits".into(), logits)],
        },
        scratch.as_mut(),
    )
}

/// A split graph's profile lists every compute node once, from every segment; a
/// segment whose backend has no profiler makes it a typed error, not a panic.
#[test]
fn a_split_graph_profiles_every_segment_or_says_one_cannot() {
    let g = tiny_llama();
    let (part, _) = partitioned(&g, &[Device::arc("dev-no-silu", &["silu"]), cpu()]);
    assert_eq!(part.segments(), 5);
    match profile_first_chunk(&g, &part) {
        Err(BackendError::ProfilingUnsupported(_)) => {}
        other => panic!(
            "want ProfilingUnsupported, got {:?}",
            other.map(|p| p.method)
        ),
    }

    let (part, _) = partitioned(
        &g,
        &[Device::arc_profiling("dev-no-silu", &["silu"]), cpu()],
    );
    let p = profile_first_chunk(&g, &part).expect("profile");
    let mut want: Vec<&str> = g
        .ids()
        .filter(|&id| npurt_backends::profile::is_compute(&g.node(id).op))
        .map(|id| g.node(id).name.as_str())
        .collect();
    let mut got: Vec<&str> = p.nodes.iter().map(|n| n.node.as_str()).collect();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want, "{}", p.method);
    assert_eq!(
        p.by_kind()
            .iter()
            .filter(|k| k.op == "silu")
            .map(|k| k.count)
            .sum::<usize>(),
        2
    );
    assert!(p.nodes.iter().all(|n| n.ms.is_finite() && n.ms >= 0.0));
    // Five segments on two CPU-backed backends, each named in the method.
    assert_eq!(
        p.method.matches("cpu (1 threads)").count(),
        5,
        "{}",
        p.method
    );
    assert!(
        p.host.total_ms > 0.0 && p.host.readback_ms >= 0.0,
        "{:?}",
        p.host
    );
}
