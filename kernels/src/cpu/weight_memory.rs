//! Memory for packed weights, carved from large anonymous mappings backed by 2 MiB
//! transparent huge pages where the OS allows it.
//!
//! Decode streams every weight byte from DRAM once per token (~90 MiB for SmolLM2,
//! more than the L3). With 4 KiB pages that is a TLB miss every 4 KiB and the hardware
//! prefetchers stop at every page boundary; most single matrices are far smaller than
//! 2 MiB, so per-matrix allocations would never get huge pages. Matrices are therefore
//! bump-allocated from shared 64 MiB chunks (one `madvise(MADV_HUGEPAGE)` each); a chunk
//! is unmapped when the last matrix in it is dropped.

use memmap2::MmapMut;
use std::sync::{Arc, Mutex};

const CHUNK: usize = 64 << 20;
const ALIGN: usize = 64;

struct Chunk {
    /// Keeps the mapping alive; all access goes through `base`.
    _map: MmapMut,
    base: *mut u8,
}

/// A 64-byte aligned, zero-initialised byte buffer owned by one packed matrix.
pub(crate) struct WeightBytes {
    chunk: Arc<Chunk>,
    off: usize,
    len: usize,
}

// SAFETY: the mapping lives as long as the Chunk; each WeightBytes is the only handle
// to its byte range, `&self` gives shared reads of it and `&mut self` the only writes.
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

struct Arena {
    current: Option<Arc<Chunk>>,
    used: usize,
}

static ARENA: Mutex<Arena> = Mutex::new(Arena {
    current: None,
    used: 0,
});

fn map(len: usize) -> std::io::Result<Arc<Chunk>> {
    let mut map = MmapMut::map_anon(len)?;
    #[cfg(target_os = "linux")]
    if let Err(e) = map.advise(memmap2::Advice::HugePage) {
        log::debug!("no transparent huge pages for packed weights: {e}");
    }
    let base = map.as_mut_ptr();
    Ok(Arc::new(Chunk { _map: map, base }))
}

impl WeightBytes {
    /// `len` zero bytes, or an error naming the size when the OS refuses the memory.
    pub(crate) fn zeroed(len: usize) -> Result<Self, String> {
        let need = len.div_ceil(ALIGN).max(1) * ALIGN;
        let oom =
            |e: std::io::Error| format!("out of memory for {len} bytes of packed weights ({e})");
        if need > CHUNK / 4 {
            // Large matrices (the LM head) get a mapping of their own.
            return Ok(WeightBytes {
                chunk: map(need).map_err(oom)?,
                off: 0,
                len,
            });
        }
        let mut a = ARENA.lock().unwrap_or_else(|p| p.into_inner());
        let chunk = match &a.current {
            Some(c) if a.used + need <= CHUNK => c.clone(),
            _ => {
                let c = map(CHUNK).map_err(oom)?;
                a.current = Some(c.clone());
                a.used = 0;
                c
            }
        };
        let off = a.used;
        a.used += need;
        Ok(WeightBytes { chunk, off, len })
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: off..off+len lies in the mapping (checked at allocation) and no
        // `&mut` to it exists while `&self` is borrowed.
        unsafe { std::slice::from_raw_parts(self.chunk.base.add(self.off), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: this buffer is the only handle to off..off+len (the arena hands each
        // range out once), and `&mut self` makes this borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.chunk.base.add(self.off), self.len) }
    }
}
