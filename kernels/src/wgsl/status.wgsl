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
