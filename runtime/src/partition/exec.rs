//! `Partitioned`: the segments behind one `Executable`. A run executes the segments in
//! order, moving each transfer from its producer's memory to its consumers' through
//! the host (`read` then `write`), and binding the caller's buffers to each segment's
//! own node ids. With one segment it is the backend's executable and nothing else.

use super::report::PartitionReport;
use npurt_backends::{
    Backend, BackendError, Bindings, BufferUsage, Completion, DeviceBuffer, Executable, Finished,
    HostTimes, Profile, Ready, Result, Scratch,
};
use npurt_graph::{NodeId, TensorFact};
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Where a segment source's buffer comes from at run time.
#[derive(Clone, Debug)]
pub(super) enum SegFeed {
    /// The caller's binding of this original source.
    Caller(NodeId),
    /// A per-scratch copy of a caller input, staged onto this segment's backend.
    Staged(usize),
    Transfer(usize),
}

#[derive(Clone, Debug)]
pub(super) enum SegSink {
    Caller(String),
    Transfer(usize),
}

pub(super) struct Segment {
    pub backend: usize,
    pub exec: Arc<dyn Executable>,
    pub feeds: Vec<(NodeId, SegFeed)>,
    pub sinks: Vec<(String, SegSink)>,
}

pub(super) struct Transfer {
    pub fact: TensorFact,
    pub from_segment: usize,
    pub src_backend: usize,
    /// Distinct consuming backends other than the producer's (same-backend consumers
    /// read the producer's buffer directly: no copy).
    pub dst_backends: Vec<usize>,
}

/// A caller input also read on another backend than the one its buffer lives on.
pub(super) struct Staged {
    pub source: NodeId,
    pub fact: TensorFact,
    pub home: usize,
    pub backend: usize,
}

pub(super) struct Split {
    pub segments: Vec<Segment>,
    pub transfers: Vec<Transfer>,
    pub staged: Vec<Staged>,
}

pub(super) enum Inner {
    /// One segment: the original graph compiled on one backend, run as is.
    Single(Arc<dyn Executable>),
    Split(Split),
}

/// A graph compiled across several backends, run as one [`Executable`].
pub struct Partitioned {
    pub(super) inner: Inner,
    pub(super) backends: Vec<Arc<dyn Backend>>,
    /// Backend (index) whose memory holds each caller-bound source / output.
    pub(super) source_home: HashMap<NodeId, usize>,
    pub(super) output_home: HashMap<String, usize>,
    pub(super) report: PartitionReport,
}

impl Partitioned {
    pub fn report(&self) -> &PartitionReport {
        &self.report
    }

    /// The backends the graph was compiled over (preference order).
    pub fn backends(&self) -> &[Arc<dyn Backend>] {
        &self.backends
    }

    pub fn segments(&self) -> usize {
        self.report.segments.len()
    }

    /// The backend a caller must allocate the buffer for source `id` (input or state)
    /// on; `None` if no segment reads it (then any buffer will do).
    pub fn source_backend(&self, id: NodeId) -> Option<&Arc<dyn Backend>> {
        self.source_home.get(&id).map(|&b| &self.backends[b])
    }

    /// The backend a caller must allocate the buffer for output `name` on.
    pub fn output_backend(&self, name: &str) -> Option<&Arc<dyn Backend>> {
        self.output_home.get(name).map(|&b| &self.backends[b])
    }

    /// Allocates a buffer for source `id` on the backend that reads it.
    pub fn alloc_source(
        &self,
        id: NodeId,
        fact: &TensorFact,
        usage: BufferUsage,
    ) -> Result<Arc<dyn DeviceBuffer>> {
        self.source_backend(id)
            .unwrap_or(&self.backends[0])
            .alloc(fact, usage)
    }

    /// Allocates a buffer for output `name` on the backend that produces it.
    pub fn alloc_output(&self, name: &str, fact: &TensorFact) -> Result<Arc<dyn DeviceBuffer>> {
        let b = self
            .output_backend(name)
            .ok_or_else(|| BackendError::Binding(format!("the graph has no output `{name}`")))?;
        b.alloc(fact, BufferUsage::Activations)
    }
}

struct SplitScratch {
    segments: Vec<Box<dyn Scratch>>,
    /// Per transfer: the producer-side buffer, then one per other consuming backend.
    src: Vec<Arc<dyn DeviceBuffer>>,
    dst: Vec<Vec<(usize, Arc<dyn DeviceBuffer>)>>,
    staged: Vec<Arc<dyn DeviceBuffer>>,
}

impl Scratch for SplitScratch {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Split {
    fn transfer_buffer<'a>(
        &self,
        sc: &'a SplitScratch,
        t: usize,
        backend: usize,
    ) -> Result<&'a Arc<dyn DeviceBuffer>> {
        if self.transfers[t].src_backend == backend {
            return Ok(&sc.src[t]);
        }
        sc.dst[t]
            .iter()
            .find(|(b, _)| *b == backend)
            .map(|(_, buf)| buf)
            .ok_or_else(|| {
                BackendError::Binding(format!("transfer {t} has no buffer on backend {backend}"))
            })
    }

    fn run(
        &self,
        backends: &[Arc<dyn Backend>],
        bindings: &Bindings,
        sc: &mut SplitScratch,
    ) -> Result<()> {
        self.run_with(backends, bindings, sc, |exec, b, s| exec.run(b, s))
    }

    /// Runs the segments in order, each through `run_segment`, moving the transfers
    /// between them.
    fn run_with(
        &self,
        backends: &[Arc<dyn Backend>],
        bindings: &Bindings,
        sc: &mut SplitScratch,
        mut run_segment: impl FnMut(&dyn Executable, &Bindings, &mut dyn Scratch) -> Result<()>,
    ) -> Result<()> {
        let caller_source = |id: NodeId| {
            bindings
                .source(id)
                .cloned()
                .ok_or_else(|| BackendError::Binding(format!("source {id} is not bound")))
        };
        for (k, st) in self.staged.iter().enumerate() {
            let data = backends[st.home].read(caller_source(st.source)?.as_ref())?;
            backends[st.backend].write(sc.staged[k].as_ref(), &data)?;
        }
        for (s, seg) in self.segments.iter().enumerate() {
            let mut sources = Vec::with_capacity(seg.feeds.len());
            for (id, feed) in &seg.feeds {
                let buf = match feed {
                    SegFeed::Caller(orig) => caller_source(*orig)?,
                    SegFeed::Staged(k) => sc.staged[*k].clone(),
                    SegFeed::Transfer(t) => self.transfer_buffer(sc, *t, seg.backend)?.clone(),
                };
                sources.push((*id, buf));
            }
            let mut outputs = Vec::with_capacity(seg.sinks.len());
            for (name, sink) in &seg.sinks {
                let buf = match sink {
                    SegSink::Caller(orig) => bindings.output(orig).cloned().ok_or_else(|| {
                        BackendError::Binding(format!("output `{orig}` is not bound"))
                    })?,
                    SegSink::Transfer(t) => sc.src[*t].clone(),
                };
                outputs.push((name.clone(), buf));
            }
            run_segment(
                seg.exec.as_ref(),
                &Bindings { sources, outputs },
                sc.segments[s].as_mut(),
            )?;
            let outgoing: Vec<usize> = (0..self.transfers.len())
                .filter(|&t| self.transfers[t].from_segment == s && !sc.dst[t].is_empty())
                .collect();
            if outgoing.is_empty() {
                continue;
            }
            let producer = &backends[seg.backend];
            producer.synchronize()?;
            for t in outgoing {
                let data = producer.read(sc.src[t].as_ref())?;
                for (b, buf) in &sc.dst[t] {
                    backends[*b].write(buf.as_ref(), &data)?;
                }
            }
        }
        Ok(())
    }
}

impl Executable for Partitioned {
    fn new_scratch(&self) -> Result<Box<dyn Scratch>> {
        let split = match &self.inner {
            Inner::Single(exec) => return exec.new_scratch(),
            Inner::Split(s) => s,
        };
        let act = BufferUsage::Activations;
        let b = &self.backends;
        Ok(Box::new(SplitScratch {
            segments: split
                .segments
                .iter()
                .map(|s| s.exec.new_scratch())
                .collect::<Result<_>>()?,
            src: split
                .transfers
                .iter()
                .map(|t| b[t.src_backend].alloc(&t.fact, act))
                .collect::<Result<_>>()?,
            dst: split
                .transfers
                .iter()
                .map(|t| {
                    t.dst_backends
                        .iter()
                        .map(|&d| Ok((d, b[d].alloc(&t.fact, act)?)))
                        .collect::<Result<_>>()
                })
                .collect::<Result<_>>()?,
            staged: split
                .staged
                .iter()
                .map(|s| b[s.backend].alloc(&s.fact, act))
                .collect::<Result<_>>()?,
        }))
    }

    fn run(&self, bindings: &Bindings, scratch: &mut dyn Scratch) -> Result<()> {
        match &self.inner {
            Inner::Single(exec) => exec.run(bindings, scratch),
            Inner::Split(split) => {
                let sc = scratch
                    .as_any_mut()
                    .downcast_mut::<SplitScratch>()
                    .ok_or_else(|| {
                        BackendError::Binding("scratch from another executable".into())
                    })?;
                split.run(&self.backends, bindings, sc)
            }
        }
    }

    /// One segment: the backend's profile. Split: each segment's profile in order
    /// (nodes of every segment, host times summed), the transfers between them counted
    /// as reading back.
    fn profile(&self, bindings: &Bindings, scratch: &mut dyn Scratch) -> Result<Profile> {
        let split = match &self.inner {
            Inner::Single(exec) => return exec.profile(bindings, scratch),
            Inner::Split(s) => s,
        };
        let sc = scratch
            .as_any_mut()
            .downcast_mut::<SplitScratch>()
            .ok_or_else(|| BackendError::Binding("scratch from another executable".into()))?;
        let mut parts: Vec<Profile> = Vec::new();
        let mut in_segments = 0.0;
        let t0 = Instant::now();
        split.run_with(&self.backends, bindings, sc, |exec, b, s| {
            let t = Instant::now();
            parts.push(exec.profile(b, s)?);
            in_segments += t.elapsed().as_secs_f64() * 1e3;
            Ok(())
        })?;
        for b in &self.backends {
            b.synchronize()?;
        }
        let mut out = Profile {
            method: parts
                .iter()
                .map(|p| p.method.clone())
                .collect::<Vec<_>>()
                .join("; "),
            nodes: Vec::new(),
            host: HostTimes::default(),
        };
        for p in parts {
            out.nodes.extend(p.nodes);
            let (h, o) = (&p.host, &mut out.host);
            o.record_ms += h.record_ms;
            o.submit_ms += h.submit_ms;
            o.wait_ms += h.wait_ms;
            o.readback_ms += h.readback_ms;
            o.compute_ms += h.compute_ms;
        }
        // What the wall time spent outside the segments' profiles: moving transfers
        // through the host.
        let wall = t0.elapsed().as_secs_f64() * 1e3;
        out.host.readback_ms += (wall - in_segments).max(0.0);
        out.host.total_ms = out.host.record_ms
            + out.host.submit_ms
            + out.host.wait_ms
            + out.host.readback_ms
            + out.host.compute_ms;
        Ok(out)
    }

    /// One segment: the backend's own submit (asynchronous where the backend is). Split
    /// runs copy transfers through the host between segments, so they run here and
    /// synchronise the backends before the handle (already finished) is returned.
    fn submit(
        &self,
        bindings: &Bindings,
        scratch: &mut dyn Scratch,
    ) -> Result<Box<dyn Completion>> {
        if let Inner::Single(exec) = &self.inner {
            return exec.submit(bindings, scratch);
        }
        let t0 = Instant::now();
        self.run(bindings, scratch)?;
        for b in &self.backends {
            b.synchronize()?;
        }
        Ok(Box::new(Ready::new(Finished {
            busy: Some(t0.elapsed()),
        })))
    }
}
