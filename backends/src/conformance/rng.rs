//! Seeded random inputs: each case draws from its own [`npurt_graph::SeededRng`]
//! (SplitMix64, the workspace's one generator), seeded from its label, so a failing case
//! reproduces exactly from the seed in its row.

/// The conformance suite's generator (the workspace's [`npurt_graph::SeededRng`],
/// under the name this module has always exported).
pub use npurt_graph::SeededRng as Rng;

/// Stable seed for a case from its `op/case` label (FNV-1a), so every case has its own
/// stream and adding a case never reshuffles the others' inputs.
pub fn seed_for(label: &str) -> u64 {
    label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_get_their_own_streams() {
        assert_ne!(seed_for("matmul/a"), seed_for("matmul/b"));
        let (mut a, mut b) = (Rng::new(seed_for("x/1")), Rng::new(seed_for("x/1")));
        assert_eq!(a.uniform_vec(8, -2.0, 3.0), b.uniform_vec(8, -2.0, 3.0));
    }
}
