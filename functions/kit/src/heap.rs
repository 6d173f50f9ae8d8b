//! The request heap: once pre-initialization is done, what a request
//! allocates comes from untouched memory above the baked image, not from the
//! holes that loading the model left in the image's heap.
//!
//! Why: a fresh instance starts from the image, copy-on-write, and when it is
//! dropped wasmtime resets the pages it dirtied. With `PAGEMAP_SCAN` it does so
//! in place for the first 32 runs of dirty pages only; the rest of the slot is
//! decommitted and faults back in on the next instance's first touch. A model's
//! scratch spread over the image's free holes dirties 40 and more scattered
//! runs (squeezenet), so every cold call paid ~1,000 page faults; from one
//! heap above the image it is a single run, plus the few image pages a run
//! writes (reference counts, the plan's state).
//!
//! The heap starts as [`REQUEST_HEAP_RESERVE`](crate::REQUEST_HEAP_RESERVE)
//! bytes of zero pages grown at the end of pre-initialization and never
//! written there, so they cost the image nothing and a request need not grow
//! memory (whose reset would re-protect it). Past the reserve it grows memory
//! as usual.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use dlmalloc::Dlmalloc;

use crate::REQUEST_HEAP_RESERVE;

const WASM_PAGE: usize = 64 << 10;

/// The first address of the request heap; `usize::MAX` until [`seal`].
static SPLIT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Where the reserve starts, until the request heap takes it (0 after).
static RESERVE: AtomicUsize = AtomicUsize::new(0);

/// Memory for the request heap: the reserve first, then `memory.grow`.
struct Pages;

// SAFETY: hands out whole wasm pages that nothing else uses: the reserve
// (taken once) or pages just grown.
unsafe impl dlmalloc::Allocator for Pages {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        if size <= REQUEST_HEAP_RESERVE {
            let base = RESERVE.swap(0, Ordering::Relaxed);
            if base != 0 {
                return (base as *mut u8, REQUEST_HEAP_RESERVE, 0);
            }
        }
        let pages = size.div_ceil(WASM_PAGE);
        match core::arch::wasm32::memory_grow(0, pages) {
            usize::MAX => (std::ptr::null_mut(), 0, 0),
            prev => ((prev * WASM_PAGE) as *mut u8, pages * WASM_PAGE, 0),
        }
    }
    fn remap(&self, _: *mut u8, _: usize, _: usize, _: bool) -> *mut u8 {
        std::ptr::null_mut()
    }
    fn free_part(&self, _: *mut u8, _: usize, _: usize) -> bool {
        false
    }
    fn free(&self, _: *mut u8, _: usize) -> bool {
        false
    }
    fn can_release_part(&self, _: u32) -> bool {
        false
    }
    fn allocates_zeros(&self) -> bool {
        true
    }
    fn page_size(&self) -> usize {
        WASM_PAGE
    }
}

struct RequestHeap(UnsafeCell<Dlmalloc<Pages>>);

// SAFETY: a wasm32-wasip2 component has one thread.
unsafe impl Sync for RequestHeap {}

static REQUESTS: RequestHeap = RequestHeap(UnsafeCell::new(Dlmalloc::new_with_allocator(Pages)));

fn requests() -> &'static mut Dlmalloc<Pages> {
    // SAFETY: one thread, and no call below re-enters the allocator.
    unsafe { &mut *REQUESTS.0.get() }
}

fn sealed() -> bool {
    SPLIT.load(Ordering::Relaxed) != usize::MAX
}

fn in_request_heap(ptr: *mut u8) -> bool {
    ptr as usize >= SPLIT.load(Ordering::Relaxed)
}

/// The component's allocator: std's (wasi-libc's) until [`seal`], the request
/// heap after. Memory from before is freed where it came from.
pub struct TwoPhase;

// SAFETY: each block is freed or resized by the heap that allocated it, told
// apart by address: the request heap lies wholly above `SPLIT`.
unsafe impl GlobalAlloc for TwoPhase {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if sealed() {
            unsafe { requests().malloc(layout.size(), layout.align()) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if sealed() {
            unsafe { requests().calloc(layout.size(), layout.align()) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_request_heap(ptr) {
            unsafe { requests().free(ptr, layout.size(), layout.align()) }
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if in_request_heap(ptr) {
            return unsafe { requests().realloc(ptr, layout.size(), layout.align(), new_size) };
        }
        if !sealed() {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // A block from the image grows into the request heap.
        unsafe {
            let moved = requests().malloc(new_size, layout.align());
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                System.dealloc(ptr, layout);
            }
            moved
        }
    }
}

/// Ends pre-initialization's heap: sets the reserve aside above the current
/// end of memory (grown, not written) and sends every later allocation to the
/// request heap. Idempotent.
pub fn seal() {
    if sealed() {
        return;
    }
    let end = core::arch::wasm32::memory_size(0) * WASM_PAGE;
    if core::arch::wasm32::memory_grow(0, REQUEST_HEAP_RESERVE / WASM_PAGE) != usize::MAX {
        RESERVE.store(end, Ordering::Relaxed);
    }
    SPLIT.store(end, Ordering::Relaxed);
}
