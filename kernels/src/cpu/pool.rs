//! The CPU kernels' thread pool: persistent workers that spin between calls.
//!
//! Decode runs ~150 parallel kernel calls per token of a few tens of microseconds each,
//! so the cost of handing work to a thread matters as much as the kernels: a general
//! work-stealing pool (rayon) pays a deque push, a steal and often a futex wake-up per
//! call. Here a call is one atomic store that workers polling in a spin loop see within
//! nanoseconds; tasks are claimed by compare-and-swap on the same word; the caller
//! works too and then spins until the last task is done. Workers that see no call for
//! [`SPIN`] go to sleep on a condition variable, so an idle pool costs nothing.
//!
//! Kernels call [`for_each`] on the current pool: the one [`ThreadPool::install`]ed on
//! this thread, else a global pool with one thread per core.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker polls before it sleeps: longer than any gap between two
/// kernel calls of one decode step, short enough not to burn a core between requests.
const SPIN: Duration = Duration::from_millis(2);

/// The call word: `epoch (32 bits) | n_tasks (16) | next task (16)`. Epoch, size and
/// cursor live in one atomic so a claim (one CAS) can only succeed for the call it read:
/// a worker that wakes late can never take a task of a newer call for an older one.
const FIELD: u32 = 16;
const MAX_TASKS: usize = (1 << FIELD) - 1;

fn epoch(word: u64) -> u64 {
    word >> (2 * FIELD)
}
fn n_tasks(word: u64) -> usize {
    ((word >> FIELD) & MAX_TASKS as u64) as usize
}
fn next(word: u64) -> usize {
    (word & MAX_TASKS as u64) as usize
}

/// Keeps a hot atomic on its own cache lines (workers poll `word` while tasks bump
/// `done`).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Shared {
    threads: usize,
    word: Padded<AtomicU64>,
    /// The current call's closure, type-erased: a data pointer and the monomorphised
    /// function that calls it. Written before the word is published (Release) and read
    /// only after a successful claim (Acquire), while the call cannot have returned.
    data: AtomicPtr<()>,
    call: AtomicUsize,
    done: Padded<AtomicUsize>,
    panicked: AtomicBool,
    /// Set while a call is in flight: a second caller (another session on the same
    /// pool) runs its call on its own thread instead of corrupting this one.
    busy: AtomicBool,
    quit: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
    /// True on pool workers and on a caller while it runs tasks: nested calls run inline.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

unsafe fn call_erased<F: Fn(usize) + Sync>(data: *const (), i: usize) {
    // SAFETY: `data` was made from an `&F` by `run`, which outlives every task.
    unsafe { (*(data as *const F))(i) }
}

impl Shared {
    /// Claims and runs tasks of call `e` until none are left; false if `e` is over.
    fn work(&self, e: u64) {
        let mut word = self.word.load(Acquire);
        loop {
            if epoch(word) != e || next(word) >= n_tasks(word) {
                return;
            }
            match self
                .word
                .compare_exchange_weak(word, word + 1, AcqRel, Acquire)
            {
                Ok(_) => {
                    let i = next(word);
                    // SAFETY: task `i` of call `e` is claimed and not done, so the caller
                    // is still waiting in `run` and its closure is alive; `data`/`call`
                    // were written before `e` was published.
                    let f: unsafe fn(*const (), usize) =
                        unsafe { std::mem::transmute(self.call.load(Relaxed)) };
                    let data = self.data.load(Relaxed) as *const ();
                    if catch_unwind(AssertUnwindSafe(|| unsafe { f(data, i) })).is_err() {
                        self.panicked.store(true, Relaxed);
                    }
                    self.done.fetch_add(1, Release);
                    word = self.word.load(Acquire);
                }
                Err(w) => word = w,
            }
        }
    }

    fn worker(self: Arc<Self>) {
        IN_TASK.with(|t| t.set(true));
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
        let mut seen = epoch(self.word.load(Acquire));
        loop {
            let mut idle_since: Option<Instant> = None;
            let mut spins = 0u32;
            let e = loop {
                let e = epoch(self.word.load(Acquire));
                if e != seen {
                    break e;
                }
                if self.quit.load(Acquire) {
                    return;
                }
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(1024)
                    && idle_since.get_or_insert_with(Instant::now).elapsed() > SPIN
                {
                    self.sleep(seen);
                    idle_since = None;
                }
            };
            seen = e;
            self.work(e);
        }
    }

    /// Sleeps until the epoch moves past `seen` (or the pool quits). The epoch is
    /// re-checked under the lock after announcing the sleep, and `run` notifies under
    /// the same lock after publishing: a call can never be missed.
    fn sleep(&self, seen: u64) {
        let mut g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.sleepers.fetch_add(1, SeqCst);
        while epoch(self.word.load(SeqCst)) == seen && !self.quit.load(SeqCst) {
            g = self.wake.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        self.sleepers.fetch_sub(1, SeqCst);
    }

    fn notify(&self) {
        if self.sleepers.load(SeqCst) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.notify_all();
        }
    }

    /// Runs `f(0..n)` on this pool, the calling thread included.
    fn run<F: Fn(usize) + Sync>(&self, n: usize, f: &F) {
        debug_assert!(n <= MAX_TASKS);
        if self
            .busy
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_err()
        {
            return (0..n).for_each(f);
        }
        self.data.store(f as *const F as *mut (), Relaxed);
        self.call.store(
            call_erased::<F> as unsafe fn(*const (), usize) as usize,
            Relaxed,
        );
        self.done.store(0, Relaxed);
        self.panicked.store(false, Relaxed);
        let e = (epoch(self.word.load(Relaxed)) + 1) & 0xffff_ffff;
        self.word
            .store((e << (2 * FIELD)) | ((n as u64) << FIELD), SeqCst);
        self.notify();
        IN_TASK.with(|t| t.set(true));
        self.work(e);
        IN_TASK.with(|t| t.set(false));
        let mut spins = 0u32;
        while self.done.load(Acquire) < n {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            // A worker descheduled mid-task (a busy neighbour): let it run.
            if spins.is_multiple_of(4096) {
                std::thread::yield_now();
            }
        }
        let panicked = self.panicked.load(Relaxed);
        self.busy.store(false, Release);
        assert!(!panicked, "a CPU kernel task panicked");
    }
}

/// A fixed set of worker threads for the CPU kernels (see the module docs).
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl ThreadPool {
    /// A pool of `threads` threads in all: the caller of each kernel and `threads - 1`
    /// workers.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            threads,
            word: Padded(AtomicU64::new(0)),
            data: AtomicPtr::new(std::ptr::null_mut()),
            call: AtomicUsize::new(0),
            done: Padded(AtomicUsize::new(0)),
            panicked: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut pool = ThreadPool {
            shared: shared.clone(),
            workers: Vec::new(),
        };
        for w in 1..threads {
            let s = shared.clone();
            pool.workers.push(
                std::thread::Builder::new()
                    .name(format!("npurt-cpu-{w}"))
                    .spawn(move || s.worker())?,
            );
        }
        Ok(pool)
    }

    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Runs `f` with this pool as the current pool of the calling thread: the kernels
    /// it calls split their work over this pool's threads.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Arc<Shared>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| *c.borrow_mut() = self.0.take());
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(self.shared.clone())));
        f()
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.quit.store(true, SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn global() -> &'static ThreadPool {
    static GLOBAL: OnceLock<ThreadPool> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        ThreadPool::new(n)
            .or_else(|_| ThreadPool::new(1))
            .expect("a one-thread pool spawns no thread")
    })
}

fn with_current<R>(f: impl FnOnce(&Shared) -> R) -> R {
    CURRENT.with(|c| match c.borrow().as_ref() {
        Some(s) => f(s),
        None => f(&global().shared),
    })
}

/// Threads of the current pool.
pub fn current_threads() -> usize {
    with_current(|s| s.threads)
}

/// Runs `f(i)` for every `i in 0..n` on the current pool's threads, in any order, and
/// returns when all are done. Inline (in order) on a one-thread pool, for one task, or
/// when called from inside a task.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    if n <= 1 || IN_TASK.with(|t| t.get()) {
        return (0..n).for_each(f);
    }
    with_current(|s| {
        if s.threads == 1 {
            return (0..n).for_each(&f);
        }
        // More tasks than the call word holds: each task takes a run of indices.
        let per = n.div_ceil(MAX_TASKS);
        if per == 1 {
            s.run(n, &f)
        } else {
            s.run(n.div_ceil(per), &|t| {
                (t * per..((t + 1) * per).min(n)).for_each(&f)
            })
        }
    })
}

/// Runs `run` over `x` and `out` (rows of `width` values): on the pool, in chunks of
/// whole rows, once there are `parallel_min` values and more than one thread; else on
/// the calling thread in one call (the row-wise glue kernels).
pub(crate) fn for_row_chunks(
    x: &[f32],
    out: &mut [f32],
    width: usize,
    parallel_min: usize,
    run: impl Fn(&[f32], &mut [f32]) + Sync,
) {
    if x.len() >= parallel_min && current_threads() > 1 {
        let chunk = width * (parallel_min / 4 / width).max(1);
        for_each_item(
            x.chunks(chunk).zip(out.chunks_mut(chunk)).collect(),
            |(x, o)| run(x, o),
        );
    } else {
        run(x, out);
    }
}

/// Runs `f` on every item, each task owning its item (chunks of `&mut` outputs).
pub fn for_each_item<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    for_each(slots.len(), |i| {
        if let Some(t) = slots[i].lock().unwrap_or_else(|p| p.into_inner()).take() {
            f(t)
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_once_across_many_calls() {
        let pool = ThreadPool::new(3).unwrap();
        pool.install(|| {
            for n in [0, 1, 2, 7, 64, 1000] {
                let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                for_each(n, |i| {
                    hits[i].fetch_add(1, Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "n = {n}");
            }
            // More tasks than one call word holds.
            let n = MAX_TASKS * 2 + 5;
            let sum = AtomicUsize::new(0);
            for_each(n, |i| {
                sum.fetch_add(i, Relaxed);
            });
            assert_eq!(sum.load(Relaxed), n * (n - 1) / 2);
        });
    }

    #[test]
    fn sleeping_workers_wake_and_concurrent_callers_are_safe() {
        let pool = Arc::new(ThreadPool::new(2).unwrap());
        std::thread::sleep(SPIN * 3);
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    pool.install(|| {
                        for _ in 0..200 {
                            for_each(10, |_| {
                                total.fetch_add(1, Relaxed);
                            });
                        }
                    })
                });
            }
        });
        assert_eq!(total.load(Relaxed), 3 * 200 * 10);
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_still_works() {
        let pool = ThreadPool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| for_each(8, |i| assert!(i != 5)))
        }));
        assert!(r.is_err());
        let sum = AtomicUsize::new(0);
        pool.install(|| {
            for_each(8, |i| {
                sum.fetch_add(i, Relaxed);
            })
        });
        assert_eq!(sum.load(Relaxed), 28);
    }
}
