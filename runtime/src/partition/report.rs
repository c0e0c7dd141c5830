//! What the partitioner decided, printable (`npurt inspect`, load logs): the segments
//! and their backends, every transfer and its size, and every fallback.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub struct SegmentSummary {
    pub backend: String,
    /// Compute nodes in the segment.
    pub nodes: usize,
    /// Compute nodes per op kind, sorted by kind.
    pub kinds: Vec<(&'static str, usize)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TransferSummary {
    /// Name of the node whose value moves.
    pub value: String,
    /// e.g. `f32[7, 48]`.
    pub fact: String,
    /// Size of the value.
    pub bytes: usize,
    pub from_segment: usize,
    pub to_segments: Vec<usize>,
    /// Backends it is copied to each run (host read + write each). Empty when every
    /// consumer is on the producer's backend: the consumer reads the producer's buffer.
    pub copied_to: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PartitionReport {
    /// The most preferred backend.
    pub preferred: String,
    pub segments: Vec<SegmentSummary>,
    pub transfers: Vec<TransferSummary>,
    /// Compute nodes not on the most preferred backend.
    pub fallback_nodes: usize,
    /// Fallback nodes per (op kind, backend they run on), sorted.
    pub fallbacks: Vec<(&'static str, String, usize)>,
    /// Sources (inputs) read by segments on a backend other than the caller's buffer's,
    /// copied in at the start of every run.
    pub staged_inputs: Vec<String>,
}

impl PartitionReport {
    /// Bytes copied between backends per run.
    pub fn transfer_bytes(&self) -> usize {
        self.transfers
            .iter()
            .map(|t| t.bytes * t.copied_to.len())
            .sum()
    }

    /// Transfers that cross backends (the others cost nothing at run time).
    pub fn copies(&self) -> usize {
        self.transfers
            .iter()
            .filter(|t| !t.copied_to.is_empty())
            .count()
    }
}

fn kinds(k: &[(&'static str, usize)]) -> String {
    k.iter()
        .map(|(kind, n)| format!("{kind} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for PartitionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "partition: {} segment(s), {} transfer(s), {} across backends ({} bytes copied per run), {} fallback node(s) off `{}`",
            self.segments.len(),
            self.transfers.len(),
            self.copies(),
            self.transfer_bytes(),
            self.fallback_nodes,
            self.preferred
        )?;
        for (i, s) in self.segments.iter().enumerate() {
            writeln!(
                f,
                "  segment {i} on {}: {} node(s): {}",
                s.backend,
                s.nodes,
                kinds(&s.kinds)
            )?;
        }
        for t in &self.transfers {
            let to: Vec<String> = t.to_segments.iter().map(|s| s.to_string()).collect();
            let how = if t.copied_to.is_empty() {
                "same backend, no copy".to_string()
            } else {
                format!("copied to {}", t.copied_to.join(", "))
            };
            writeln!(
                f,
                "  transfer `{}` {} ({} bytes): segment {} -> {} ({how})",
                t.value,
                t.fact,
                t.bytes,
                t.from_segment,
                to.join(", ")
            )?;
        }
        for (kind, backend, n) in &self.fallbacks {
            writeln!(f, "  fallback: {kind} x{n} on {backend}")?;
        }
        for s in &self.staged_inputs {
            writeln!(f, "  staged input `{s}`")?;
        }
        Ok(())
    }
}
