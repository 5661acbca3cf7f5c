//! The filter's memory allocator on Wasm: dlmalloc, as Rust's standard library uses there, whose
//! first region is a 256 KiB static arena inside the module's initial memory.
//!
//! With the standard library's allocator the first allocation of every instance grows linear
//! memory by a page. Growing memory makes the host change page protections when the instance is
//! created, and again when its memory slot is reused for the next one: two `mprotect` calls, each
//! a TLB shootdown on every core, which was about an eighth of the cost of a fresh instance
//! (`isolation = "request"`). Most filters never need more than the arena; past it, memory grows
//! as before.
//!
//! Filters are single-threaded, so the allocator needs no lock. A filter crate that sets its own
//! `#[global_allocator]` turns this one off with `default-features = false`.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use dlmalloc::{Allocator, Dlmalloc};

const ARENA_BYTES: usize = 256 * 1024;
const WASM_PAGE: usize = 64 * 1024;
/// dlmalloc's flag for a region it did not get from the system (never merged or released).
const EXTERN_REGION: u32 = 1;

#[repr(C, align(16))]
struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

// SAFETY: a filter instance runs on one thread; the arena is handed to dlmalloc once.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));

/// Where dlmalloc gets memory: the arena first, then `memory.grow`.
struct Regions {
    arena_taken: AtomicBool,
}

// SAFETY: regions are handed out once each and never overlap; nothing is ever released.
unsafe impl Allocator for Regions {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        if size <= ARENA_BYTES && !self.arena_taken.swap(true, Ordering::Relaxed) {
            return (ARENA.0.get().cast(), ARENA_BYTES, EXTERN_REGION);
        }
        let pages = size.div_ceil(WASM_PAGE);
        let previous = core::arch::wasm32::memory_grow(0, pages);
        if previous == usize::MAX {
            return (core::ptr::null_mut(), 0, 0);
        }
        ((previous * WASM_PAGE) as *mut u8, pages * WASM_PAGE, 0)
    }

    fn remap(&self, _ptr: *mut u8, _old: usize, _new: usize, _can_move: bool) -> *mut u8 {
        core::ptr::null_mut()
    }

    fn free_part(&self, _ptr: *mut u8, _old: usize, _new: usize) -> bool {
        false
    }

    fn free(&self, _ptr: *mut u8, _size: usize) -> bool {
        false
    }

    fn can_release_part(&self, _flags: u32) -> bool {
        false
    }

    fn allocates_zeros(&self) -> bool {
        // The arena is zero (static memory of a fresh instance) and so are grown pages.
        true
    }

    fn page_size(&self) -> usize {
        WASM_PAGE
    }
}

struct Heap(UnsafeCell<Dlmalloc<Regions>>);

// SAFETY: a filter instance runs on one thread.
unsafe impl Sync for Heap {}

#[global_allocator]
static HEAP: Heap =
    Heap(UnsafeCell::new(Dlmalloc::new_with_allocator(Regions { arena_taken: AtomicBool::new(false) })));

// SAFETY: dlmalloc upholds GlobalAlloc's contract; calls never overlap (one thread, no
// reentrancy: dlmalloc does not allocate).
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).malloc(layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).calloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { (*self.0.get()).free(ptr, layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { (*self.0.get()).realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}
