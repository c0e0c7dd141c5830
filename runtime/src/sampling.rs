//! Token selection: greedy, or temperature -> top-k -> top-p sampling (HF's order),
//! with HF's repetition penalty, driven by a seeded RNG so runs are reproducible.

use crate::{Result, RuntimeError};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 1.0 disables; >1 discourages tokens already in the session.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |option, reason: &str| {
            Err(RuntimeError::InvalidOption {
                option,
                reason: reason.into(),
            })
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", "must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty", "must be a finite number > 0");
        }
        Ok(())
    }
}

/// The sampler's generator: the workspace's one seeded generator (SplitMix64), under
/// the name this module has always exported.
pub use npurt_graph::SeededRng as Rng;

pub struct Sampler {
    pub opts: SamplingOptions,
    rng: Rng,
}

/// Index of the largest value (first on ties, as torch.argmax).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

impl Sampler {
    pub fn new(opts: SamplingOptions) -> Result<Self> {
        opts.validate()?;
        let rng = Rng::new(opts.seed);
        Ok(Sampler { opts, rng })
    }

    /// Picks the next token from `logits`, given the tokens seen so far (for the penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut l = logits.to_vec();
        if self.opts.repetition_penalty != 1.0 {
            let p = self.opts.repetition_penalty;
            let mut seen = vec![false; l.len()];
            for &t in history {
                if let Some(s) = seen.get_mut(t as usize) {
                    if !std::mem::replace(s, true) {
                        let v = &mut l[t as usize];
                        *v = if *v > 0.0 { *v / p } else { *v * p };
                    }
                }
            }
        }
        if self.opts.temperature == 0.0 {
            return argmax(&l) as u32;
        }
        // Sort by logit (dividing by t > 0 keeps the order), then scale the differences
        // to the maximum in f64: `logit / t` in f32 overflows to inf for tiny t (1e-38)
        // and inf - inf is NaN, while `(logit - max) / t` is <= 0 and at worst -inf,
        // whose exp is 0. Every accepted temperature thus gives finite probabilities;
        // tiny ones converge on greedy.
        let t = self.opts.temperature as f64;
        let mut cand: Vec<(usize, f32)> = l.iter().copied().enumerate().collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.opts.top_k > 0 {
            cand.truncate(self.opts.top_k);
        }
        let max = cand[0].1 as f64;
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|c| {
                let p = ((c.1 as f64 - max) / t).exp();
                // NaN only from a NaN or +inf logit: such a token gets no mass.
                if p.is_nan() {
                    0.0
                } else {
                    p
                }
            })
            .collect();
        let sum: f64 = probs.iter().sum();
        if !(sum > 0.0 && sum.is_finite()) {
            // Only reachable with non-finite logits (e.g. all NaN): fall back to greedy.
            return cand[0].0 as u32;
        }
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.opts.top_p < 1.0 {
            // Keep the smallest prefix whose mass reaches top_p (at least one token).
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.opts.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= s);
        }
        let r = self.rng.next_f64();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if r < acc {
                return cand[i].0 as u32;
            }
        }
        cand[probs.len() - 1].0 as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_penalty() {
        let mut s = Sampler::new(SamplingOptions::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 2.0, 1.9], &[]), 1);
        let mut s = Sampler::new(SamplingOptions {
            repetition_penalty: 2.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.sample(&[0.1, 2.0, 1.9], &[1]), 2);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let o = SamplingOptions {
            temperature: 0.8,
            top_k: 5,
            top_p: 0.9,
            seed: 42,
            ..Default::default()
        };
        let run = || {
            let mut s = Sampler::new(o.clone()).unwrap();
            (0..20).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let mut order: Vec<usize> = (0..50).collect();
        order.sort_by(|x, y| logits[*y].total_cmp(&logits[*x]));
        assert!(a.iter().all(|t| order[..5].contains(&(*t as usize))));
    }

    #[test]
    fn tiny_temperatures_stay_finite_and_pick_the_top_token() {
        // 20 / 1e-38 overflows f32: dividing first made every probability NaN.
        let logits = [10.0, 20.0, 19.0, -5.0];
        for t in [1e-38, f32::MIN_POSITIVE, 1e-45, 1e-20, 1e-3] {
            let mut s = Sampler::new(SamplingOptions {
                temperature: t,
                seed: 7,
                ..Default::default()
            })
            .unwrap();
            for _ in 0..50 {
                assert_eq!(s.sample(&logits, &[]), 1, "temperature {t}");
            }
        }
        // Logits near f32's range at a tiny temperature.
        let mut s = Sampler::new(SamplingOptions {
            temperature: 1e-38,
            top_p: 0.5,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.sample(&[-3e38, 3e38, 2e38], &[]), 1);
    }

    #[test]
    fn bad_options_are_rejected() {
        for temperature in [-1.0, -0.0001, f32::INFINITY, f32::NEG_INFINITY] {
            let e = Sampler::new(SamplingOptions {
                temperature,
                ..Default::default()
            })
            .err()
            .unwrap_or_else(|| panic!("temperature {temperature} accepted"));
            assert!(
                matches!(
                    e,
                    RuntimeError::InvalidOption {
                        option: "temperature",
                        ..
                    }
                ),
                "{e}"
            );
        }
        assert!(Sampler::new(SamplingOptions {
            top_p: 0.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingOptions {
            temperature: f32::NAN,
            ..Default::default()
        })
        .is_err());
    }
}
