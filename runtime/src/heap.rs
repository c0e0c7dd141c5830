//! Giving freed heap memory back to the OS after a load.
//!
//! Loading repacks every weight through temporaries of up to tens of MiB (a matrix
//! dequantized to f32, then quantized to its compiled format). glibc serves the first
//! such block with its own mapping and returns it on free, but then raises its mmap
//! threshold to that size (up to 32 MiB), so every later temporary comes from the heap,
//! and the heap's freed middle is never returned: after loading the synthetic
//! SigLIP-so400m, 450 MB of freed temporaries stayed resident beside 440 MB of
//! weights. `malloc_trim` releases the free pages of every arena.

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
