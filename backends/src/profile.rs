//! Per-node timing of one run ([`crate::Executable::profile`]): what each compute node
//! of a graph cost, where the time was measured, and the host's share of a run.

use npurt_graph::Op;

/// Where a node's time was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSource {
    /// GPU timestamp queries around the node's dispatches (device time).
    Gpu,
    /// Host wall time around the node (on a GPU: one submission per node, waited for,
    /// so it includes the submit and wait overheads of that node).
    Host,
}

impl TimeSource {
    pub fn describe(self) -> &'static str {
        match self {
            TimeSource::Gpu => "GPU timestamps",
            TimeSource::Host => "host wall time per node",
        }
    }
}

/// One compute node's time in the profiled run.
#[derive(Clone, Debug)]
pub struct NodeTime {
    /// The node's name in the graph.
    pub node: String,
    /// Its op kind (`matmul`, `attention`, ...).
    pub op: String,
    pub ms: f64,
    pub source: TimeSource,
}

/// The host's share of one ordinary (not per-node) run, in milliseconds. A synchronous
/// backend (CPU) records nothing and waits for nothing: its compute is in `compute_ms`.
#[derive(Clone, Debug, Default)]
pub struct HostTimes {
    /// Checking bindings and recording the work (command encoding, bind groups; on
    /// the CPU: locking the bound buffers).
    pub record_ms: f64,
    /// Handing the work to the device (`queue.submit`).
    pub submit_ms: f64,
    /// Waiting for the device to finish (and checking its status words).
    pub wait_ms: f64,
    /// Reading the outputs back to the host.
    pub readback_ms: f64,
    /// Computing on the host itself (the CPU backend's nodes; 0 on a device).
    pub compute_ms: f64,
    /// Wall time of the whole run, readback included.
    pub total_ms: f64,
}

/// The per-node timing of one run of an executable.
#[derive(Clone, Debug)]
pub struct Profile {
    /// The backend(s) and how they measured, e.g. `wgpu (llvmpipe): GPU timestamps
    /// inside one pass`.
    pub method: String,
    /// Every compute node of the graph once, in execution order. Sources and
    /// reshapes (which compute nothing) are not listed.
    pub nodes: Vec<NodeTime>,
    pub host: HostTimes,
}

/// One op kind's total in a [`Profile`].
#[derive(Clone, Debug)]
pub struct KindTime {
    pub op: String,
    pub ms: f64,
    pub count: usize,
}

impl Profile {
    /// Sum of the node times.
    pub fn nodes_ms(&self) -> f64 {
        self.nodes.iter().map(|n| n.ms).sum()
    }

    /// Totals per op kind, slowest first.
    pub fn by_kind(&self) -> Vec<KindTime> {
        let mut kinds: Vec<KindTime> = Vec::new();
        for n in &self.nodes {
            match kinds.iter_mut().find(|k| k.op == n.op) {
                Some(k) => {
                    k.ms += n.ms;
                    k.count += 1;
                }
                None => kinds.push(KindTime {
                    op: n.op.clone(),
                    ms: n.ms,
                    count: 1,
                }),
            }
        }
        kinds.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        kinds
    }

    /// The `n` slowest nodes, slowest first.
    pub fn slowest(&self, n: usize) -> Vec<&NodeTime> {
        let mut v: Vec<&NodeTime> = self.nodes.iter().collect();
        v.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        v.truncate(n);
        v
    }

    /// The sources the node times came from, described (`GPU timestamps`, or both
    /// where a partitioned graph mixes them).
    pub fn sources(&self) -> String {
        let mut s: Vec<&str> = Vec::new();
        for n in &self.nodes {
            let d = n.source.describe();
            if !s.contains(&d) {
                s.push(d);
            }
        }
        if s.is_empty() {
            "no nodes".into()
        } else {
            s.join(" + ")
        }
    }
}

/// Whether a node computes something a profile lists: every node but the sources and
/// reshapes (a view of its input).
pub fn is_compute(op: &Op) -> bool {
    !op.is_source() && !matches!(op, Op::Reshape { .. })
}

pub(crate) fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendError, Bindings, Executable, Result, Scratch};

    /// A vendor's executable that implements only what it must.
    struct Minimal;
    struct NoScratch;
    impl Scratch for NoScratch {
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
    }
    impl Executable for Minimal {
        fn new_scratch(&self) -> Result<Box<dyn Scratch>> {
            Ok(Box::new(NoScratch))
        }
        fn run(&self, _: &Bindings, _: &mut dyn Scratch) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_executable_without_a_profiler_says_so_typed() {
        let x: std::sync::Arc<dyn Executable> = std::sync::Arc::new(Minimal);
        let mut s = x.new_scratch().unwrap();
        match x.profile(&Bindings::default(), s.as_mut()) {
            Err(BackendError::ProfilingUnsupported(reason)) => {
                assert!(reason.contains("profile"), "{reason}")
            }
            other => panic!(
                "want ProfilingUnsupported, got {:?}",
                other.map(|p| p.method)
            ),
        }
    }

    fn node(name: &str, op: &str, ms: f64) -> NodeTime {
        NodeTime {
            node: name.into(),
            op: op.into(),
            ms,
            source: TimeSource::Host,
        }
    }

    #[test]
    fn kinds_sum_their_nodes_and_slowest_sorts() {
        let p = Profile {
            method: "test".into(),
            nodes: vec![
                node("a", "matmul", 2.0),
                node("b", "rope", 0.5),
                node("c", "matmul", 3.0),
                node("d", "attention", 1.0),
            ],
            host: HostTimes::default(),
        };
        let k = p.by_kind();
        assert_eq!(k.len(), 3);
        assert_eq!((k[0].op.as_str(), k[0].ms, k[0].count), ("matmul", 5.0, 2));
        assert_eq!((k[1].op.as_str(), k[1].count), ("attention", 1));
        assert_eq!(p.nodes_ms(), 6.5);
        let s: Vec<&str> = p.slowest(2).iter().map(|n| n.node.as_str()).collect();
        assert_eq!(s, ["c", "a"]);
        assert_eq!(p.sources(), "host wall time per node");
    }
}
