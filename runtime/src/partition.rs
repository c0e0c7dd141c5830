//! Splitting one graph across several backends (ggml's scheduler, ONNX Runtime's
//! execution providers), so a backend that runs most but not all ops still runs them.
//!
//! 1. **Assign** ([`assign`]): each compute node goes to the first backend, in the
//!    caller's preference order, that supports it and the sources it reads. Weights
//!    follow their consumers (a weight read on two backends is prepared on both). A
//!    state (KV cache) lives in one backend's memory, so when its writes and reads land
//!    on different backends they all move to the most preferred backend running all.
//! 2. **Split** ([`split`]): the topological order is cut into maximal runs on one
//!    backend ("segments"), each rebuilt as its own graph; every value crossing
//!    segments becomes an explicit transfer (an extra output of its producer, an
//!    `Input` of the same fact in each consumer).
//! 3. **Compile** each segment with its backend; [`Partitioned`] runs them in order
//!    behind the ordinary [`Executable`] trait, copying transfers through the host.
//!
//! Nothing is hidden: [`Partitioned::report`] prints every segment, transfer and
//! fallback, and each fallback op kind is logged once with its count (ggml users' worst
//! surprise is a silent CPU fallback). When the first backend runs everything there is
//! one segment, no transfer, and `run` is the backend's own executable.
//!
//! Buffers: the caller binds inputs, states and outputs as for any executable, but must
//! allocate each on the backend that reads or writes it ([`Partitioned::source_backend`],
//! [`Partitioned::output_backend`], or the `alloc_*` helpers). An input also read on
//! another backend is copied there at the start of each run.

mod assign;
mod exec;
mod report;
mod split;

pub use exec::Partitioned;
pub use report::{PartitionReport, SegmentSummary, TransferSummary};

use crate::{Result, RuntimeError};
use exec::{Inner, SegFeed, SegSink, Segment, Split, Staged, Transfer};
use npurt_backends::{Backend, DeviceBuffer, Executable, Support};
use npurt_graph::{Graph, NodeId, Op};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Gives the prepared buffer of weight node `id` on `backend` (the caller caches per
/// backend, so a weight prepared once is shared by every graph compiled for it).
pub type PrepareWeight<'a> =
    dyn Fn(&dyn Backend, NodeId) -> Result<Arc<dyn DeviceBuffer>> + Sync + 'a;

/// Compiles `graph` across `backends` (most preferred first; the last one, normally
/// cpu, should support everything). Fails with the node no backend supports.
pub fn compile_partitioned(
    graph: &Graph,
    backends: &[Arc<dyn Backend>],
    prepare: &PrepareWeight,
) -> Result<Partitioned> {
    if backends.is_empty() {
        return Err(RuntimeError::InvalidOption {
            option: "backends",
            reason: "no backend to compile the graph for".into(),
        });
    }
    graph.validate()?;
    let a = assign::assign(graph, backends)?;
    let used: BTreeSet<usize> = a.backend.iter().flatten().copied().collect();
    let built = match used.len() {
        0 | 1 => single(graph, backends, used.first().copied().unwrap_or(0), prepare)?,
        _ => multi(graph, backends, &a, prepare)?,
    };
    let report = report(
        graph,
        backends,
        &a,
        built.segment_nodes,
        built.transfers,
        built.staged_inputs,
    );
    for (kind, backend, n) in &report.fallbacks {
        let first = graph.ids().find(|id| {
            graph.node(*id).op.kind() == *kind && a.backend[id.0].is_some_and(|b| b != 0)
        });
        let why = match first.map(|id| backends[0].supports(graph, id)) {
            Some(Support::Unsupported(why)) => why,
            _ => "kept on the backend holding its KV cache".into(),
        };
        log::warn!(
            "{n} `{kind}` node(s) fall back from `{}` to `{backend}` ({why})",
            backends[0].name()
        );
    }
    if report.segments.len() > 1 {
        log::info!("{report}");
    }
    Ok(Partitioned {
        inner: built.inner,
        backends: backends.to_vec(),
        source_home: built.source_home,
        output_home: built.output_home,
        report,
    })
}

/// The compiled executable plus what the report and the buffer helpers need.
struct Built {
    inner: Inner,
    source_home: HashMap<NodeId, usize>,
    output_home: HashMap<String, usize>,
    /// (backend, original compute nodes) per segment.
    segment_nodes: Vec<(usize, Vec<NodeId>)>,
    transfers: Vec<TransferSummary>,
    staged_inputs: Vec<String>,
}

/// Prepares each (backend, weight) pair once, in parallel (repacking is the slow part
/// of loading).
fn prepare_all(
    backends: &[Arc<dyn Backend>],
    pairs: BTreeSet<(usize, NodeId)>,
    prepare: &PrepareWeight,
) -> Result<HashMap<(usize, NodeId), Arc<dyn DeviceBuffer>>> {
    let pairs: Vec<_> = pairs.into_iter().collect();
    pairs
        .par_iter()
        .map(|&(b, id)| Ok(((b, id), prepare(backends[b].as_ref(), id)?)))
        .collect()
}

/// Everything on backend `b`: the original graph, compiled as is.
fn single(
    graph: &Graph,
    backends: &[Arc<dyn Backend>],
    b: usize,
    prepare: &PrepareWeight,
) -> Result<Built> {
    let weights = graph
        .sources("weight")
        .into_iter()
        .map(|(id, _, _)| (b, id))
        .collect();
    let prepared = prepare_all(backends, weights, prepare)?;
    let weights: Vec<_> = prepared
        .into_iter()
        .map(|((_, id), buf)| (id, buf))
        .collect();
    let exec = backends[b].compile(graph, &weights)?;
    Ok(Built {
        inner: Inner::Single(exec),
        source_home: graph
            .ids()
            .filter(|id| matches!(graph.node(*id).op, Op::Input { .. } | Op::State { .. }))
            .map(|id| (id, b))
            .collect(),
        output_home: graph.outputs.iter().map(|(n, _)| (n.clone(), b)).collect(),
        segment_nodes: vec![(
            b,
            graph
                .ids()
                .filter(|id| !graph.node(*id).op.is_source())
                .collect(),
        )],
        transfers: Vec::new(),
        staged_inputs: Vec::new(),
    })
}

fn multi(
    graph: &Graph,
    backends: &[Arc<dyn Backend>],
    a: &assign::Assignment,
    prepare: &PrepareWeight,
) -> Result<Built> {
    let plan = split::split(graph, a)?;
    let pairs = plan
        .segments
        .iter()
        .flat_map(|s| s.weights.iter().map(move |(_, orig)| (s.backend, *orig)))
        .collect();
    let prepared = prepare_all(backends, pairs, prepare)?;

    // A caller source lives where it is first read; later readers on other backends
    // get a staged copy. States never need one (assign keeps their users together).
    let mut source_home: HashMap<NodeId, usize> = HashMap::new();
    let mut output_home: HashMap<String, usize> = HashMap::new();
    let mut staged: Vec<Staged> = Vec::new();
    let mut segments = Vec::with_capacity(plan.segments.len());
    for s in &plan.segments {
        let mut feeds = Vec::with_capacity(s.feeds.len());
        for (id, feed) in &s.feeds {
            feeds.push((
                *id,
                match feed {
                    split::Feed::Transfer(t) => SegFeed::Transfer(*t),
                    split::Feed::Caller(orig) => {
                        let home = *source_home.entry(*orig).or_insert(s.backend);
                        if home == s.backend {
                            SegFeed::Caller(*orig)
                        } else if matches!(graph.node(*orig).op, Op::State { .. }) {
                            return Err(npurt_backends::BackendError::Binding(format!(
                                "state `{}` would be read on two backends",
                                graph.node(*orig).name
                            ))
                            .into());
                        } else {
                            let k = staged
                                .iter()
                                .position(|st| st.source == *orig && st.backend == s.backend)
                                .unwrap_or_else(|| {
                                    staged.push(Staged {
                                        source: *orig,
                                        fact: graph.fact(*orig).clone(),
                                        home,
                                        backend: s.backend,
                                    });
                                    staged.len() - 1
                                });
                            SegFeed::Staged(k)
                        }
                    }
                },
            ));
        }
        let sinks = s
            .sinks
            .iter()
            .map(|(name, sink)| match sink {
                split::Sink::Caller(orig) => {
                    output_home.insert(orig.clone(), s.backend);
                    (name.clone(), SegSink::Caller(orig.clone()))
                }
                split::Sink::Transfer(t) => (name.clone(), SegSink::Transfer(*t)),
            })
            .collect();
        let weights: Vec<_> = s
            .weights
            .iter()
            .map(|(seg_id, orig)| (*seg_id, prepared[&(s.backend, *orig)].clone()))
            .collect();
        let exec: Arc<dyn Executable> = backends[s.backend].compile(&s.graph, &weights)?;
        segments.push(Segment {
            backend: s.backend,
            exec,
            feeds,
            sinks,
        });
    }

    let mut transfers = Vec::with_capacity(plan.transfers.len());
    let mut summaries = Vec::with_capacity(plan.transfers.len());
    for t in &plan.transfers {
        let src_backend = plan.segments[t.from].backend;
        let mut dst_backends: Vec<usize> =
            t.to.iter()
                .map(|&s| plan.segments[s].backend)
                .filter(|&b| b != src_backend)
                .collect();
        dst_backends.sort_unstable();
        dst_backends.dedup();
        let fact = graph.fact(t.value).clone();
        summaries.push(TransferSummary {
            value: graph.node(t.value).name.clone(),
            fact: fact.to_string(),
            bytes: fact.bytes().unwrap_or(0),
            from_segment: t.from,
            to_segments: t.to.clone(),
            copied_to: dst_backends
                .iter()
                .map(|&b| backends[b].name().to_string())
                .collect(),
        });
        transfers.push(Transfer {
            fact,
            from_segment: t.from,
            src_backend,
            dst_backends,
        });
    }
    Ok(Built {
        staged_inputs: staged
            .iter()
            .map(|s| {
                format!(
                    "{} -> {}",
                    graph.node(s.source).name,
                    backends[s.backend].name()
                )
            })
            .collect(),
        segment_nodes: plan
            .segments
            .iter()
            .map(|s| (s.backend, s.nodes.clone()))
            .collect(),
        inner: Inner::Split(Split {
            segments,
            transfers,
            staged,
        }),
        source_home,
        output_home,
        transfers: summaries,
    })
}

fn report(
    graph: &Graph,
    backends: &[Arc<dyn Backend>],
    a: &assign::Assignment,
    segments: Vec<(usize, Vec<NodeId>)>,
    transfers: Vec<TransferSummary>,
    staged_inputs: Vec<String>,
) -> PartitionReport {
    let histogram = |nodes: &[NodeId]| {
        let mut m: BTreeMap<&'static str, usize> = BTreeMap::new();
        nodes
            .iter()
            .for_each(|id| *m.entry(graph.node(*id).op.kind()).or_default() += 1);
        m.into_iter().collect::<Vec<_>>()
    };
    let segments = segments
        .iter()
        .map(|(b, nodes)| SegmentSummary {
            backend: backends[*b].name().to_string(),
            nodes: nodes.len(),
            kinds: histogram(nodes),
        })
        .collect();
    let mut fallbacks: BTreeMap<(&'static str, usize), usize> = BTreeMap::new();
    for id in graph.ids() {
        if let Some(b) = a.backend[id.0].filter(|&b| b != 0) {
            *fallbacks.entry((graph.node(id).op.kind(), b)).or_default() += 1;
        }
    }
    PartitionReport {
        preferred: backends[0].name().to_string(),
        segments,
        transfers,
        fallback_nodes: fallbacks.values().sum(),
        fallbacks: fallbacks
            .into_iter()
            .map(|((kind, b), n)| (kind, backends[b].name().to_string(), n))
            .collect(),
        staged_inputs,
    }
}
