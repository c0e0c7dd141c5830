// Run-time validation from inside kernels: a shader that finds a run-time value it
// cannot accept (a token id outside the table, a position past the KV cache) skips the
// bad work, sets a flag bit in status[0] and records the lowest offending node index
// in status[1]. The host resets both before each run and reads them back when it
// synchronises, turning them into a typed error (GPU work cannot return one itself).

const STATUS_BAD_TOKEN: u32 = 1u;
const STATUS_BAD_POSITION: u32 = 2u;
const STATUS_BAD_ROW: u32 = 4u;

@group(0) @binding(15) var<storage, read_write> status: array<atomic<u32>, 2>;

fn raise_status(flag: u32, node: u32) {
    atomicOr(&status[0], flag);
    atomicMin(&status[1], node);
}

// A chunk's run-time positions as attention accepts them (the reference's rule): the
// `n_valid` rows of a `rows`-row chunk start at `pos` and fit a cache of `cache_rows`.
// Compared in i32 after bounding each term, so nothing overflows.
fn positions_ok(pos: i32, n_valid: i32, rows: u32, cache_rows: u32) -> bool {
    return pos >= 0 && n_valid >= 1 && u32(n_valid) <= rows && pos <= i32(cache_rows)
        && u32(pos) + u32(n_valid) <= cache_rows;
}
