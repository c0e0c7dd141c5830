//! A memory budget, as a phone app needs one: every part of a model (weights, each
//! session's KV cache and activation arenas, an image being encoded) reserves its
//! planned bytes before it allocates them, and what does not fit is refused with a
//! typed error naming the sizes, instead of growing until the OS kills the app.
//!
//! Reservations are planned sizes (weights at the compiled formats, KV cache for the
//! context, arenas from the memory planner), not measured RSS: the point is to refuse
//! before allocating.

use crate::{Result, RuntimeError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The share of the machine's available memory a model may plan for by default.
pub const DEFAULT_FRACTION: f64 = 0.8;

/// Bytes the OS reports as available (Linux `MemAvailable`), if it does.
pub fn available_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Parses `BYTES` with an optional K/M/G/T suffix (powers of 1024): `1500000000`,
/// `512M`, `2G`, `1.5G`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()?.to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0 && v * (mult as f64) < u64::MAX as f64)
        .then_some((v * mult as f64) as u64)
}

/// A limit and what is reserved against it (shared by a model's parts and sessions).
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    /// `limit` bytes, or by default [`DEFAULT_FRACTION`] of the available memory
    /// (unlimited where the OS does not say).
    pub fn new(limit: Option<u64>) -> Arc<Self> {
        let limit = limit.unwrap_or_else(|| {
            available_memory_bytes()
                .map(|a| (a as f64 * DEFAULT_FRACTION) as u64)
                .unwrap_or(u64::MAX)
        });
        Arc::new(MemoryBudget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` for `what`, or refuses (nothing is reserved then).
    pub fn reserve(self: &Arc<Self>, what: impl Into<String>, bytes: u64) -> Result<Reservation> {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let next = cur.saturating_add(bytes);
            if next > self.limit {
                return Err(RuntimeError::OverBudget {
                    what: what.into(),
                    needed: bytes,
                    used: cur,
                    budget: self.limit,
                });
            }
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(Reservation {
                        budget: self.clone(),
                        bytes,
                    })
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// Bytes held against a budget until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_or_are_refused_and_return_on_drop() {
        let b = MemoryBudget::new(Some(100));
        let a = b.reserve("a", 60).unwrap();
        let e = b.reserve("b", 50).unwrap_err().to_string();
        assert!(
            e.contains("b") && e.contains("50") && e.contains("60") && e.contains("100"),
            "{e}"
        );
        drop(a);
        let _c = b.reserve("c", 100).unwrap();
        assert_eq!(b.used(), 100);
    }

    #[test]
    fn byte_sizes_parse_with_suffixes() {
        assert_eq!(parse_bytes("1500"), Some(1500));
        assert_eq!(parse_bytes("2G"), Some(2 << 30));
        assert_eq!(parse_bytes("1.5k"), Some(1536));
        assert_eq!(parse_bytes("-1"), None);
        assert_eq!(parse_bytes("lots"), None);
    }
}
