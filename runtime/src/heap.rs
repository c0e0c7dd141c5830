//! How npurt uses the C heap: large blocks mapped on their own, and freed memory given
//! back to the OS after a load.
//!
//! glibc serves a block above its mmap threshold (128 KiB at start) with a mapping of
//! its own and unmaps it on free, but on that free it raises the threshold to the
//! block's size (up to 32 MiB). From then on every tens-of-MiB block (a weight
//! dequantized to f32 while loading; a batch of tile features read back to the host;
//! the quantized activations of a matmul) comes from a heap, and a heap's freed pages
//! stay resident: in the heap of the thread that freed them, where another thread's
//! next block cannot use them. Measured on the synthetic so400m encode (9 tiles,
//! w8a8): peak RSS 918 MB with the dynamic threshold, 850 MB with it fixed at 1 MiB;
//! after loading it, 450 MB of freed temporaries stayed resident beside 440 MB of
//! weights until `malloc_trim`.

/// Blocks of at least this many bytes get a mapping of their own (and give it back
/// when freed). Small enough for every activation-sized block, large enough that the
/// per-token allocations of decode (a logits row: 200 KB) stay in the heap.
const MMAP_THRESHOLD: i32 = 1 << 20;

/// Fixes glibc's mmap threshold at `MMAP_THRESHOLD` (which also turns off its
/// dynamic raising), once per process; a no-op on other allocators. Called when a
/// runtime is created: the process's allocator is the embedding app's, and this is a
/// setting a memory-conscious app would choose too.
pub(crate) fn map_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only sets a glibc tunable under the allocator's own lock.
        ONCE.call_once(|| unsafe {
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        });
    }
}

/// Returns the allocator's free pages to the OS (glibc; a no-op elsewhere).
pub(crate) fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only walks glibc's own arenas; it takes their locks and
        // may be called from any thread at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}
