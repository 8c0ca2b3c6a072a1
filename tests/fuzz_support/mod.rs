//! Shared by the fuzz tests (fuzz_presets, fuzz_clips, fuzz_models): an allocation tracker to install as the
//! test binary's global allocator, a guard that runs one input under it, and a small fixed-seed PRNG.
//!
//! The tracker records the largest single request per thread (each test's inputs run on its own thread, so
//! tests in one binary do not see each other's allocations) and refuses any request above [`REFUSE_ABOVE`]:
//! a runaway size then aborts the test visibly instead of swapping the machine.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Requests above this get null (the process aborts with "memory allocation failed").
pub const REFUSE_ABOVE: usize = 512 << 20;

thread_local! {
    /// The largest single allocation request on this thread since the last reset.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// Install with `#[global_allocator] static ALLOCATOR: fuzz_support::Tracker = fuzz_support::Tracker;`.
pub struct Tracker;

fn note(size: usize) -> bool {
    // A const-initialised Cell needs no allocation and no destructor, so this is safe inside the allocator.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    size <= REFUSE_ABOVE
}

// SAFETY: every call is forwarded to `System` unchanged, or answered with null (allowed for any request).
unsafe impl GlobalAlloc for Tracker {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if note(layout.size()) { unsafe { System.alloc(layout) } } else { std::ptr::null_mut() }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if note(layout.size()) { unsafe { System.alloc_zeroed(layout) } } else { std::ptr::null_mut() }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if note(new_size) { unsafe { System.realloc(ptr, layout, new_size) } } else { std::ptr::null_mut() }
    }
}

/// What `f` returns (or that it panicked), and the largest single allocation it asked for on this thread.
pub fn guarded<T>(f: impl FnOnce() -> T) -> (std::thread::Result<T>, usize) {
    LARGEST.with(|l| l.set(0));
    let out = catch_unwind(AssertUnwindSafe(f));
    (out, LARGEST.with(Cell::get))
}

/// The text of a caught panic.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Checks that the tracker can fail a test: it sees an allocation just over `cap`, and refuses a runaway.
/// Call it from a test in each binary that installs the tracker.
pub fn assert_tracker_works(cap: usize) {
    let (_, seen) = guarded(|| std::hint::black_box(Vec::<u8>::with_capacity(cap + 1)).capacity());
    assert!(seen > cap, "an allocation of {} bytes went unseen ({seen})", cap + 1);
    let (_, small) = guarded(|| ());
    assert!(small < cap, "nothing allocated, yet {small} bytes were recorded");
    let layout = Layout::from_size_align(REFUSE_ABOVE + 1, 8).unwrap_or(Layout::new::<u8>());
    // SAFETY: a valid layout; the tracker answers null, so nothing is allocated that would need freeing.
    let ptr = unsafe { Tracker.alloc(layout) };
    assert!(ptr.is_null(), "a request above REFUSE_ABOVE was served");
}

/// splitmix64: a small deterministic generator, so every run feeds the same inputs.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in 0..n (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}
