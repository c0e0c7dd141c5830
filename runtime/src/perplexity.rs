//! Strided-window perplexity, as HF's perplexity guide computes it: windows of
//! `window` tokens every `stride` tokens; each window scores only the tokens not
//! scored before (the first window scores all but its first token), each predicted
//! from the window's preceding tokens. Log-softmax in f64 on f32 logits.

use crate::{Model, Result, RuntimeError, Session};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    pub tokens: usize,
    /// Tokens scored (all but the first).
    pub scored: usize,
    pub nll: f64,
    pub ppl: f64,
}

pub fn perplexity(
    model: &Arc<Model>,
    ids: &[u32],
    window: usize,
    stride: usize,
) -> Result<Perplexity> {
    if window < 2 || stride == 0 || stride > window {
        return Err(RuntimeError::InvalidOption {
            option: "ctx/stride",
            reason: format!("need window >= 2 and 0 < stride <= window, got {window}/{stride}"),
        });
    }
    if window > model.ctx {
        return Err(RuntimeError::ContextOverflow {
            needed: window,
            used: 0,
            ctx: model.ctx,
        });
    }
    // One token scores nothing; reporting perplexity exp(0) = 1.0 for it would read
    // as a perfect model.
    if ids.len() < 2 {
        return Err(RuntimeError::NothingToScore { tokens: ids.len() });
    }
    let mut session = Session::new(model.clone())?;
    let (mut sum, mut scored, mut prev_end) = (0f64, 0usize, 0usize);
    let mut begin = 0;
    while begin < ids.len() {
        let end = (begin + window).min(ids.len());
        let new = end - prev_end;
        session.reset();
        let logits = session.feed_all_logits(&ids[begin..end])?;
        // Targets are the last `new` tokens of the window, excluding window position 0.
        for p in (end - new).max(begin + 1)..end {
            let row = &logits[p - begin - 1];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            sum += lse - row[ids[p] as usize] as f64;
            scored += 1;
        }
        prev_end = end;
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    // scored >= 1: the first window holds at least 2 tokens and scores all but one.
    let nll = sum / scored as f64;
    Ok(Perplexity {
        tokens: ids.len(),
        scored,
        nll,
        ppl: nll.exp(),
    })
}
