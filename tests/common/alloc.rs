//! A counting global allocator for the no-allocation tests: each such test
//! binary declares `#[global_allocator] static GLOBAL: Counting = Counting;`
//! (one binary per test, so no other test's allocations are counted) and
//! reads [`ALLOCS`] around the steady state it checks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Allocations and reallocations so far (frees are not counted).
pub static ALLOCS: AtomicU64 = AtomicU64::new(0);

/// Forwards to the system allocator, counting calls.
pub struct Counting;

// SAFETY: forwards every call to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}
