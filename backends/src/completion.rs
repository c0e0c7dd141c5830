//! Completion handles of asynchronous submits ([`crate::Executable::submit`]), in the
//! manner of ggml-backend's events: the caller submits work, does something else (runs
//! another stream), then waits on the handle.

use crate::Result;
use std::time::Duration;

/// Work in flight from [`crate::Executable::submit`].
///
/// The handle keeps alive (owns or holds an `Arc` of) everything the work touches, so
/// dropping it early, or breaking the caller's rules below, can give stale values but
/// never unsoundness. Dropping a handle without waiting is allowed: the work still
/// finishes (an implementation may block in `drop` until it has), but its errors are
/// lost.
pub trait Completion: Send {
    /// Whether the work has finished, so that [`Completion::wait`] will not block.
    fn is_complete(&self) -> bool;

    /// Blocks until the work has finished and reports its error, if any.
    fn wait(self: Box<Self>) -> Result<Finished>;
}

/// What a finished submission reports besides success.
#[derive(Clone, Copy, Debug, Default)]
pub struct Finished {
    /// How long the work itself ran, when the executor measured it (the default
    /// synchronous submit and [`crate::WorkerExecutable`] time their run; a GPU could
    /// use timestamp queries). `None`: not measured (then the caller's own clock from
    /// submit to wait is the best bound it has).
    pub busy: Option<Duration>,
}

/// An already finished submission: what the default, synchronous
/// [`crate::Executable::submit`] returns.
pub struct Ready {
    finished: Finished,
}

impl Ready {
    pub fn new(finished: Finished) -> Self {
        Ready { finished }
    }
}

impl Completion for Ready {
    fn is_complete(&self) -> bool {
        true
    }

    fn wait(self: Box<Self>) -> Result<Finished> {
        Ok(self.finished)
    }
}
