//! The fuzzer's draws: the workspace's one generator (`npurt_graph::SeededRng`,
//! SplitMix64), one independent stream per input, so that (seed, input index)
//! reproduces an input exactly on any machine.

pub use npurt_graph::SeededRng as Rng;

/// The stream of input `index` of a run seeded `seed`: inputs are independent, so one
/// can be replayed without replaying those before it.
pub fn for_input(seed: u64, index: u64) -> Rng {
    let mut r = Rng::new(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    r.next_u64();
    r
}

/// The mutators' extra draws.
pub trait Draws {
    /// True with probability `1 / n`.
    fn one_in(&mut self, n: usize) -> bool;
    /// One of `items` (non-empty).
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T;
}

impl Draws for Rng {
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}
