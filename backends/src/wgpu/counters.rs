//! What the backend has done with the device so far: buffers and bind groups created,
//! submissions, host waits, bytes read back. A run in steady state must add nothing to
//! the first two, one submission, no host wait, and read back only the graph's outputs
//! (plus the 8 bytes of its kernel status words). Tests and the profiler read them, so
//! a fixed per-run cost that creeps back in shows up as a number, not as a slow GPU.

use std::sync::atomic::{AtomicU64, Ordering};

/// The live counters (one set per device).
#[derive(Default)]
pub(crate) struct Counters {
    buffers: AtomicU64,
    bind_groups: AtomicU64,
    submissions: AtomicU64,
    host_waits: AtomicU64,
    output_bytes_read: AtomicU64,
    status_bytes_read: AtomicU64,
}

/// A snapshot of the device's counters ([`super::WgpuBackend::counters`]); subtract
/// two snapshots to see what the work between them did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WgpuCounters {
    /// Device buffers created (weights, scratch, parameters, staging, query resolves).
    pub buffers: u64,
    /// Bind groups created.
    pub bind_groups: u64,
    /// Command buffers submitted to the queue.
    pub submissions: u64,
    /// Times the host blocked on the device (`poll` with `Wait`).
    pub host_waits: u64,
    /// Bytes copied back to the host by `read` (and the profiler's read-back).
    pub output_bytes_read: u64,
    /// Bytes of kernel status words copied back to the host (8 per checked run).
    pub status_bytes_read: u64,
}

impl std::ops::Sub for WgpuCounters {
    type Output = WgpuCounters;
    fn sub(self, o: WgpuCounters) -> WgpuCounters {
        WgpuCounters {
            buffers: self.buffers - o.buffers,
            bind_groups: self.bind_groups - o.bind_groups,
            submissions: self.submissions - o.submissions,
            host_waits: self.host_waits - o.host_waits,
            output_bytes_read: self.output_bytes_read - o.output_bytes_read,
            status_bytes_read: self.status_bytes_read - o.status_bytes_read,
        }
    }
}

impl Counters {
    pub fn buffer_created(&self) {
        self.buffers.fetch_add(1, Ordering::Relaxed);
    }
    pub fn bind_group_created(&self) {
        self.bind_groups.fetch_add(1, Ordering::Relaxed);
    }
    pub fn submitted(&self) {
        self.submissions.fetch_add(1, Ordering::Relaxed);
    }
    pub fn waited(&self) {
        self.host_waits.fetch_add(1, Ordering::Relaxed);
    }
    pub fn output_read(&self, bytes: u64) {
        self.output_bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn status_read(&self, bytes: u64) {
        self.status_bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> WgpuCounters {
        WgpuCounters {
            buffers: self.buffers.load(Ordering::Relaxed),
            bind_groups: self.bind_groups.load(Ordering::Relaxed),
            submissions: self.submissions.load(Ordering::Relaxed),
            host_waits: self.host_waits.load(Ordering::Relaxed),
            output_bytes_read: self.output_bytes_read.load(Ordering::Relaxed),
            status_bytes_read: self.status_bytes_read.load(Ordering::Relaxed),
        }
    }
}
