// Split-key decode attention's shared definitions (flash-decoding): attention.wgsl's
// `attention` with SPLIT_KEYS writes one softmax state per key range, and
// attention_combine.wgsl merges a row's states. Both read the ranges and the state
// layout from here; the including file declares `params` (attention_params.wgsl).

// The shortest range: one step of `attention` (its ATTN_THREADS keys), so every
// thread of a range's workgroup has a key.
const SPLIT_MIN_KEYS: u32 = 256u;

// Keys per range of a row whose keys are 0..=row_last: the keys in `params.splits`
// equal ranges, none shorter than SPLIT_MIN_KEYS. Ranges from `splits_used` on are
// empty: their workgroups return at once and write no state, so a short context
// pays little for a grid sized for the whole cache.
fn split_len(row_last: u32) -> u32 {
    return max((row_last + params.splits) / params.splits, SPLIT_MIN_KEYS);
}

fn splits_used(row_last: u32) -> u32 {
    return min(row_last / split_len(row_last) + 1u, params.splits);
}

// Where range `split` of (row t, head h) keeps its state: its running max, its sum
// of weights, then head_dim sums of weighted values, not yet divided by the sum.
fn split_state(t: u32, h: u32, split: u32) -> u32 {
    return ((t * params.n_heads + h) * params.splits + split) * (params.head_dim + 2u);
}
