//! A counting global allocator for the fuzz binaries: per thread, the bytes live and
//! their peak since the current input began, with a budget. An allocation that would
//! take the input's live bytes past the budget is refused (so a hostile length field
//! cannot take the machine's memory) and recorded; the message names the input, since
//! a refused allocation usually aborts the process.
//!
//! Accounting is per thread (each loader runs on one): bytes freed on another thread
//! than the one that allocated them skew both threads' counts a little, which is fine
//! for catching a loader that allocates hundreds of MiB for a few KiB of input.
//!
//! A binary opts in with `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct CountingAlloc;

thread_local! {
    // `const` thread-locals of `Copy` types: no lazy initialisation, no destructor, so
    // the allocator can use them without allocating or recursing.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    /// Live bytes when the current input began.
    static BASE: Cell<isize> = const { Cell::new(0) };
    /// The budget over `BASE` (`isize::MAX`: not armed).
    static LIMIT: Cell<isize> = const { Cell::new(isize::MAX) };
    static REFUSED: Cell<usize> = const { Cell::new(0) };
    static INPUT: Cell<(&'static str, u64, u64)> = const { Cell::new(("", 0, 0)) };
}

fn add(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

/// Whether `size` more bytes stay within the budget; records and reports a refusal.
fn admit(size: usize) -> bool {
    let over = LIMIT
        .try_with(|lim| {
            let used = LIVE.with(Cell::get) - BASE.with(Cell::get);
            used.saturating_add(size as isize) > lim.get()
        })
        .unwrap_or(false);
    if over {
        let _ = REFUSED.try_with(|r| r.set(r.get().max(size)));
        // Disarm before printing: the message must not be refused too.
        let limit = LIMIT.with(|l| l.replace(isize::MAX));
        let (target, seed, index) = INPUT.with(Cell::get);
        eprintln!(
            "npurt-fuzz: refused an allocation of {size} bytes (budget {limit} per input) \
             in target {target}, seed {seed}, input {index}"
        );
        LIMIT.with(|l| l.set(limit));
    }
    !over
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        add(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let grow = new_size.saturating_sub(layout.size());
        if grow > 0 && !admit(grow) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Starts accounting one input on this thread: peak reset, budget armed.
pub fn begin_input(budget: usize, target: &'static str, seed: u64, index: u64) {
    let live = LIVE.with(Cell::get);
    BASE.with(|b| b.set(live));
    PEAK.with(|p| p.set(live));
    REFUSED.with(|r| r.set(0));
    INPUT.with(|i| i.set((target, seed, index)));
    LIMIT.with(|l| l.set(budget.min(isize::MAX as usize) as isize));
}

/// Ends the input: (peak bytes over the start, largest refused allocation or 0). Peak
/// is 0 in a binary that does not install [`CountingAlloc`].
pub fn end_input() -> (usize, usize) {
    LIMIT.with(|l| l.set(isize::MAX));
    let peak = PEAK.with(Cell::get) - BASE.with(Cell::get);
    (peak.max(0) as usize, REFUSED.with(Cell::get))
}
