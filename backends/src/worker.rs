//! [`WorkerExecutable`]: an executable whose submissions run on a dedicated thread.
//!
//! A host backend computes inside `run`, on the calling thread, so its default
//! [`Executable::submit`] is synchronous. Wrapped in a worker, the same executable
//! becomes an asynchronous stream: `submit` hands the run to the worker thread and
//! returns at once; the caller runs something else (another stage, on another
//! backend or another thread pool) and then waits on the [`Completion`].

use crate::{BackendError, Bindings, Completion, Executable, Finished, Result, Scratch};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

fn worker_error(reason: impl Into<String>) -> BackendError {
    BackendError::Execution {
        node: "<worker>".into(),
        reason: reason.into(),
    }
}

/// Runs the inner executable's submissions, one at a time in submission order, on a
/// thread of its own. Its scratch wraps the inner one in an `Arc<Mutex>` that the
/// in-flight run holds, so nothing borrowed crosses threads.
pub struct WorkerExecutable {
    inner: Arc<dyn Executable>,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

struct Job {
    bindings: Bindings,
    scratch: Arc<Mutex<Box<dyn Scratch>>>,
    complete: Arc<AtomicBool>,
    done: mpsc::SyncSender<Result<Finished>>,
}

impl Job {
    fn run(self, exec: &dyn Executable) {
        let t0 = Instant::now();
        let result = match self.scratch.lock() {
            Err(_) => Err(worker_error("the scratch was poisoned by an earlier panic")),
            Ok(mut sc) => catch_unwind(AssertUnwindSafe(|| {
                exec.submit(&self.bindings, sc.as_mut())?.wait()
            }))
            .unwrap_or_else(|_| Err(worker_error("the run panicked on the worker thread"))),
        };
        // The worker's clock covers submit and wait: the whole run, whatever the
        // inner executable measured.
        let result = result.map(|_| Finished {
            busy: Some(t0.elapsed()),
        });
        self.complete.store(true, Ordering::Release);
        // The receiver may be gone (its handle dropped): nobody wants the result.
        let _ = self.done.send(result);
    }
}

struct WorkerScratch {
    inner: Arc<Mutex<Box<dyn Scratch>>>,
}

impl Scratch for WorkerScratch {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

struct WorkerCompletion {
    result: Option<mpsc::Receiver<Result<Finished>>>,
    complete: Arc<AtomicBool>,
}

impl Completion for WorkerCompletion {
    fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    fn wait(mut self: Box<Self>) -> Result<Finished> {
        let rx = self
            .result
            .take()
            .ok_or_else(|| worker_error("waited twice"))?;
        rx.recv()
            .unwrap_or_else(|_| Err(worker_error("the worker thread is gone")))
    }
}

impl Drop for WorkerCompletion {
    /// A dropped handle still waits for its run, so the caller may reuse the buffers
    /// it bound as soon as the handle is gone.
    fn drop(&mut self) {
        if let Some(rx) = self.result.take() {
            let _ = rx.recv();
        }
    }
}

impl WorkerExecutable {
    /// Starts the worker thread (`npurt-{name}`) for `inner`.
    pub fn spawn(name: &str, inner: Arc<dyn Executable>) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let exec = inner.clone();
        let thread = std::thread::Builder::new()
            .name(format!("npurt-{name}"))
            .spawn(move || {
                for job in rx {
                    job.run(exec.as_ref());
                }
            })
            .map_err(|e| BackendError::Unavailable {
                backend: "worker".into(),
                reason: format!("cannot start a worker thread: {e}"),
            })?;
        Ok(WorkerExecutable {
            inner,
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    /// The executable the worker runs.
    pub fn inner(&self) -> &Arc<dyn Executable> {
        &self.inner
    }
}

impl Executable for WorkerExecutable {
    fn new_scratch(&self) -> Result<Box<dyn Scratch>> {
        Ok(Box::new(WorkerScratch {
            inner: Arc::new(Mutex::new(self.inner.new_scratch()?)),
        }))
    }

    /// Runs on the worker and waits, so every run of this executable happens there.
    fn run(&self, bindings: &Bindings, scratch: &mut dyn Scratch) -> Result<()> {
        self.submit(bindings, scratch)?.wait().map(|_| ())
    }

    fn submit(
        &self,
        bindings: &Bindings,
        scratch: &mut dyn Scratch,
    ) -> Result<Box<dyn Completion>> {
        let scratch = scratch
            .as_any_mut()
            .downcast_mut::<WorkerScratch>()
            .ok_or_else(|| BackendError::Binding("scratch from another executable".into()))?;
        let (done, result) = mpsc::sync_channel(1);
        let complete = Arc::new(AtomicBool::new(false));
        let job = Job {
            bindings: bindings.clone(),
            scratch: scratch.inner.clone(),
            complete: complete.clone(),
            done,
        };
        self.jobs
            .as_ref()
            .ok_or_else(|| worker_error("the worker is shut down"))?
            .send(job)
            .map_err(|_| worker_error("the worker thread is gone"))?;
        Ok(Box::new(WorkerCompletion {
            result: Some(result),
            complete,
        }))
    }

    /// The inner executable's profile, on the calling thread. As for `run`, the
    /// caller has waited for this scratch's submissions.
    fn profile(&self, bindings: &Bindings, scratch: &mut dyn Scratch) -> Result<crate::Profile> {
        let scratch = scratch
            .as_any_mut()
            .downcast_mut::<WorkerScratch>()
            .ok_or_else(|| BackendError::Binding("scratch from another executable".into()))?;
        let mut inner = scratch
            .inner
            .lock()
            .map_err(|_| worker_error("the scratch was poisoned by a panic"))?;
        self.inner.profile(bindings, inner.as_mut())
    }
}

impl Drop for WorkerExecutable {
    /// Closes the queue; the worker finishes what was submitted and exits.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests;
