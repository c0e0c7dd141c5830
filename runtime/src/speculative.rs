//! Speculative decoding by prompt lookup: the tokens that followed the last few
//! generated tokens the previous time they occurred in the session (the prompt or the
//! answer so far) are proposed as a draft, and one execution of the `Verify` graph
//! (`GraphKind::Verify`, [`VERIFY_ROWS`] rows) feeds the sampled token with its draft
//! and returns the logits after each. Decode reads every weight once per step and is
//! bound by memory bandwidth, so a few more rows cost little, and each drafted token
//! the model agrees with saves a step. Answers that quote the prompt (summaries,
//! extraction, code edits) and repetitive text gain the most.
//!
//! The output does not change: the sampler draws each token from the logits at its
//! position, as without a draft, and a draft token is kept only where it equals the
//! token drawn (for a sampler, accepting a draft token with the probability it has is
//! exactly this), so the same seed gives the same text. Where a draft token differs,
//! the session is truncated to the tokens kept. The one caveat is rounding: a row of a
//! multi-row execution and a one-row decode step are computed by different kernels
//! (as are different chunkings of a prompt), and their logits differ by 1.5e-5 at f32,
//! about 2e-4 of the logit range at w4a16 and more at w4a8, enough to flip a near-tie
//! between the top two tokens (seen once in the history request of
//! `scripts/bench-speculative.sh` with 3-token lookups: gap 0.002 at a logit of 18.7).
//! At f32 the goldens hold.

/// Rows of the `Verify` graph: the token just sampled and up to `VERIFY_ROWS - 1`
/// drafted ones.
pub const VERIFY_ROWS: usize = 8;

/// The first draft's most tokens (then adapted, see [`PromptLookup::max_draft`]): a
/// rejected token costs a row of compute, which on a CPU is a fraction of a decode
/// step (SmolLM2 on 2 Zen 4 cores: 8 rows cost 2 to 3 steps), so drafts start short.
pub const START_DRAFT: usize = 3;

/// Most decode steps drafting pauses after drafts of which nothing was kept.
pub const MAX_PAUSE: usize = 16;

/// The drafts of one generation: [`lookup_draft`] with the lookup's n-grams, at a
/// length that adapts as Hugging Face's assisted generation adapts it (see
/// [`PromptLookup::max_draft`]); and after a draft of which nothing was kept, drafting
/// pauses for 1, 2, 4 ... up to [`MAX_PAUSE`] decode steps (reset by a kept token), so
/// text that does not quote its history pays for few verifications.
pub(crate) struct Drafter {
    lookup: PromptLookup,
    max: usize,
    len: usize,
    /// Tokens kept of the current draft.
    kept: usize,
    pause: usize,
    backoff: usize,
}

impl Drafter {
    pub(crate) fn new(lookup: &PromptLookup) -> Self {
        Drafter {
            lookup: *lookup,
            max: lookup.max_draft,
            len: lookup.max_draft.min(START_DRAFT),
            kept: 0,
            pause: 0,
            backoff: 1,
        }
    }

    /// The draft to feed after `next`, the token just drawn (`history` is what the
    /// session holds before it): at most `most` tokens, none while pausing. Once per
    /// step fed.
    pub(crate) fn draft(&mut self, history: &[u32], next: u32, most: usize) -> Vec<u32> {
        let most = self.allowed().min(most);
        if most == 0 {
            return Vec::new();
        }
        let mut h = Vec::with_capacity(history.len() + 1);
        h.extend_from_slice(history);
        h.push(next);
        let draft = lookup_draft(&h, self.lookup.min_ngram, self.lookup.max_ngram, most);
        if !draft.is_empty() {
            self.drafted();
        }
        draft
    }

    /// The most tokens to draft at this step (0 while pausing); once per step fed.
    fn allowed(&mut self) -> usize {
        if self.pause > 0 {
            self.pause -= 1;
            0
        } else {
            self.len
        }
    }

    /// A draft was made (and is fed).
    fn drafted(&mut self) {
        self.kept = 0;
    }

    /// A draft token was kept; `whole`: the last of its draft.
    pub(crate) fn kept(&mut self, whole: bool) {
        self.kept += 1;
        self.backoff = 1;
        if whole {
            self.len = (self.len + 2).min(self.max);
        }
    }

    /// A draft token was not the one drawn (the rest of its draft goes too).
    pub(crate) fn rejected(&mut self) {
        self.len = self.len.saturating_sub(1).max(1);
        if self.kept == 0 {
            self.pause = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_PAUSE);
        }
    }
}

/// How drafts are found ([`crate::GenerateOptions::speculation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromptLookup {
    /// Most tokens drafted per step, 1 to `VERIFY_ROWS - 1`. The draft starts at
    /// [`START_DRAFT`], shrinks by one after a step whose draft was not all kept and
    /// grows by two after one that was (as Hugging Face's assisted generation adapts
    /// its draft length), between 1 and this; see `Drafter` for the pauses.
    pub max_draft: usize,
    /// Longest run of last tokens looked up (the longest one found wins); runs down to
    /// `min_ngram` tokens are tried.
    pub max_ngram: usize,
    pub min_ngram: usize,
}

impl Default for PromptLookup {
    fn default() -> Self {
        PromptLookup {
            max_draft: VERIFY_ROWS - 1,
            max_ngram: 3,
            min_ngram: 2,
        }
    }
}

impl PromptLookup {
    pub fn validate(&self) -> crate::Result<()> {
        let bad =
            |option, reason: String| Err(crate::RuntimeError::InvalidOption { option, reason });
        if !(1..VERIFY_ROWS).contains(&self.max_draft) {
            return bad(
                "speculation max_draft",
                format!("must be 1 to {}, got {}", VERIFY_ROWS - 1, self.max_draft),
            );
        }
        if self.min_ngram == 0 || self.min_ngram > self.max_ngram || self.max_ngram > 64 {
            return bad(
                "speculation ngram",
                format!(
                    "needs 1 <= min_ngram <= max_ngram <= 64, got {}..={}",
                    self.min_ngram, self.max_ngram
                ),
            );
        }
        Ok(())
    }
}

/// What speculation did during one generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpeculationStats {
    /// Executions of the `Verify` graph (each fed a sampled token and its draft).
    pub verify_calls: usize,
    /// Tokens drafted, and those the model agreed with (each one a decode step saved).
    pub drafted: usize,
    pub accepted: usize,
}

impl SpeculationStats {
    /// `{"verify_calls", "drafted", "accepted"}`, for the CLI's JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "verify_calls": self.verify_calls, "drafted": self.drafted, "accepted": self.accepted,
        })
    }

    /// One phrase for a stats line ("" when nothing was drafted).
    pub fn describe(&self) -> String {
        match self.verify_calls {
            0 => String::new(),
            v => format!(
                " | speculation: {} of {} drafted tokens kept, {v} verifications",
                self.accepted, self.drafted
            ),
        }
    }
}

/// The draft for `history`: the up to `max_draft` tokens that followed the most recent
/// earlier occurrence of its last `n` tokens, for the largest `n` in
/// `min_ngram..=max_ngram` that occurred before. Empty when none did. A copy that
/// reaches the end of the history goes on through what it copied (as an LZ77 match
/// overlaps itself), so a loop of period `p` drafts `max_draft` tokens, not `p`.
pub fn lookup_draft(
    history: &[u32],
    min_ngram: usize,
    max_ngram: usize,
    max_draft: usize,
) -> Vec<u32> {
    let len = history.len();
    for n in (min_ngram.max(1)..=max_ngram).rev() {
        if n >= len {
            continue;
        }
        let tail = &history[len - n..];
        // Starts of earlier occurrences, latest first; the tail itself (start len - n)
        // is not one.
        if let Some(i) = (0..len - n).rev().find(|&i| &history[i..i + n] == tail) {
            let from = i + n;
            let mut draft = Vec::with_capacity(max_draft);
            for j in from..from + max_draft {
                let t = if j < len { history[j] } else { draft[j - len] };
                draft.push(t);
            }
            return draft;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_recent_match_gives_the_draft() {
        // ... 1 2 3 [7 8 9] ... 5 2 3 [4 5 6] ... 2 3 -> the later "2 3" wins.
        let h = [1, 2, 3, 7, 8, 9, 5, 2, 3, 4, 5, 6, 0, 2, 3];
        assert_eq!(lookup_draft(&h, 1, 3, 3), [4, 5, 6]);
        // A 3-token match beats a later 2-token one.
        let h = [9, 2, 3, 7, 7, 1, 2, 3, 4, 4, 9, 2, 3];
        assert_eq!(lookup_draft(&h, 1, 3, 2), [7, 7]);
        // At the end of the history the copy goes on through itself: a loop.
        let h = [1, 2, 1, 2];
        assert_eq!(lookup_draft(&h, 2, 2, 5), [1, 2, 1, 2, 1]);
        let h = [5, 1, 2, 3, 1, 2];
        assert_eq!(lookup_draft(&h, 2, 2, 4), [3, 1, 2, 3]);
    }

    #[test]
    fn no_match_no_draft() {
        assert!(lookup_draft(&[1, 2, 3, 4], 1, 3, 4).is_empty());
        assert!(lookup_draft(&[5], 1, 3, 4).is_empty());
        assert!(lookup_draft(&[], 1, 3, 4).is_empty());
        // Only one-token matches exist, and two are required.
        assert!(lookup_draft(&[1, 2, 3, 1], 2, 3, 4).is_empty());
        assert_eq!(lookup_draft(&[1, 2, 3, 1], 1, 3, 4), [2, 3, 1, 2]);
    }

    #[test]
    fn drafts_grow_when_kept_and_pause_when_not() {
        let mut d = Drafter::new(&PromptLookup::default());
        assert_eq!(d.allowed(), START_DRAFT);
        // A draft of 3 kept whole: the next may be 5, then 7 (the most).
        d.drafted();
        d.kept(false);
        d.kept(false);
        d.kept(true);
        assert_eq!(d.allowed(), 5);
        d.drafted();
        d.kept(true);
        assert_eq!(d.allowed(), 7);
        d.drafted();
        d.kept(true);
        assert_eq!(d.allowed(), 7);
        // One kept, then a rejection: shorter, no pause.
        d.drafted();
        d.kept(false);
        d.rejected();
        assert_eq!(d.allowed(), 6);
        // Nothing kept: pauses of 1, 2, 4 ... 16 steps, then drafts again.
        for pause in [1, 2, 4, 8, 16, 16] {
            d.drafted();
            d.rejected();
            assert!((0..pause).all(|_| d.allowed() == 0), "pause {pause}");
            assert!(d.allowed() >= 1, "after a pause of {pause}");
        }
        // A kept token resets the back-off.
        d.drafted();
        d.kept(false);
        d.rejected();
        d.drafted();
        d.rejected();
        assert_eq!(d.allowed(), 0);
        assert_eq!(d.allowed(), 1);
    }

    #[test]
    fn options_out_of_range_are_refused() {
        let ok = PromptLookup::default();
        assert!(ok.validate().is_ok());
        for bad in [
            PromptLookup { max_draft: 0, ..ok },
            PromptLookup {
                max_draft: VERIFY_ROWS,
                ..ok
            },
            PromptLookup { min_ngram: 0, ..ok },
            PromptLookup {
                min_ngram: 4,
                max_ngram: 3,
                ..ok
            },
            PromptLookup {
                max_ngram: 1000,
                ..ok
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
