//! The component's one allocator, for Rust and for C (wasi-libc's `malloc`
//! family is replaced here). It has two heaps: the image heap, which
//! pre-initialization fills, and the request heap, which takes over at
//! [`seal`], so that what a request allocates comes from untouched memory
//! above the baked image, not from the holes that loading the model left in
//! the image.
//!
//! Why a request heap: a fresh instance starts from the image, copy-on-write,
//! and when it is dropped wasmtime resets the pages it dirtied. With
//! `PAGEMAP_SCAN` it does so in place for the first 32 runs of dirty pages
//! only; the rest of the slot is decommitted and faults back in on the next
//! instance's first touch. A model's scratch spread over the image's free
//! holes dirties 40 and more scattered runs (squeezenet), so every cold call
//! paid ~1,000 page faults; from one heap above the image it is a single run,
//! plus the few image pages a run writes (reference counts, the plan's state).
//!
//! Why C's allocator too: wasi-libc frees with `free` what its imports hand it
//! (the environment, file reads, random bytes), which the host allocated with
//! `cabi_realloc`, that is with Rust's allocator. With libc's own heap beside
//! this one, a block of the request heap went into libc's free lists, and both
//! heaps then handed out the same memory: a baked function that first read its
//! environment in a request trapped. Now every `free` reaches the heap the
//! block came from, told by the pages the request heap owns.
//!
//! The request heap starts as [`REQUEST_HEAP_RESERVE`](crate::REQUEST_HEAP_RESERVE)
//! bytes of zero pages grown at the end of pre-initialization and never
//! written there, so they cost the image nothing and a request need not grow
//! memory (whose reset would re-protect it). Past the reserve it grows memory
//! as usual.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use dlmalloc::Dlmalloc;

use crate::REQUEST_HEAP_RESERVE;

const WASM_PAGE: usize = 64 << 10;
/// Pages in a 32-bit linear memory.
const PAGES: usize = 1 << 16;
/// What C's `malloc` promises (`alignof(max_align_t)` on wasm32).
const C_ALIGN: usize = 16;
/// WASI's errno values, for `posix_memalign`.
const EINVAL: i32 = 28;
const ENOMEM: i32 = 48;

/// Whether [`seal`] has run: allocations go to the request heap.
static SEALED: AtomicBool = AtomicBool::new(false);
/// Where the reserve starts, until the request heap takes it (0 after).
static RESERVE: AtomicUsize = AtomicUsize::new(0);
/// The wasm pages the request heap owns, a bit each. Both heaps grow memory
/// after the seal, so an address's page, not its height, says whose it is.
static OWNED: [AtomicU32; PAGES / 32] = [const { AtomicU32::new(0) }; PAGES / 32];

fn own(base: usize, len: usize) {
    for page in base / WASM_PAGE..(base + len) / WASM_PAGE {
        OWNED[page / 32].fetch_or(1 << (page % 32), Ordering::Relaxed);
    }
}

fn in_request_heap(ptr: *mut u8) -> bool {
    let page = ptr as usize / WASM_PAGE;
    OWNED[page / 32].load(Ordering::Relaxed) & (1 << (page % 32)) != 0
}

/// Where a heap gets its memory.
enum Pages {
    /// Pages grown at the end of memory.
    Image,
    /// The reserve first, then pages grown, each marked as the request heap's.
    Requests,
}

// SAFETY: hands out whole wasm pages that nothing else uses: the reserve
// (taken once, by the request heap only) or pages just grown.
unsafe impl dlmalloc::Allocator for Pages {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        if let Pages::Requests = self
            && size <= REQUEST_HEAP_RESERVE
        {
            let base = RESERVE.swap(0, Ordering::Relaxed);
            if base != 0 {
                return (base as *mut u8, REQUEST_HEAP_RESERVE, 0);
            }
        }
        let pages = size.div_ceil(WASM_PAGE);
        match core::arch::wasm32::memory_grow(0, pages) {
            usize::MAX => (std::ptr::null_mut(), 0, 0),
            prev => {
                if let Pages::Requests = self {
                    own(prev * WASM_PAGE, pages * WASM_PAGE);
                }
                ((prev * WASM_PAGE) as *mut u8, pages * WASM_PAGE, 0)
            }
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

struct Heap(UnsafeCell<Dlmalloc<Pages>>);

// SAFETY: a wasm32-wasip2 component has one thread.
unsafe impl Sync for Heap {}

static IMAGE: Heap = Heap(UnsafeCell::new(Dlmalloc::new_with_allocator(Pages::Image)));
static REQUESTS: Heap = Heap(UnsafeCell::new(Dlmalloc::new_with_allocator(
    Pages::Requests,
)));

fn image() -> &'static mut Dlmalloc<Pages> {
    // SAFETY: one thread, and no call below re-enters the allocator.
    unsafe { &mut *IMAGE.0.get() }
}

fn requests() -> &'static mut Dlmalloc<Pages> {
    // SAFETY: as for `image`.
    unsafe { &mut *REQUESTS.0.get() }
}

fn sealed() -> bool {
    SEALED.load(Ordering::Relaxed)
}

/// The heap new blocks come from.
fn current() -> &'static mut Dlmalloc<Pages> {
    if sealed() { requests() } else { image() }
}

/// The heap `ptr` came from.
fn owner(ptr: *mut u8) -> &'static mut Dlmalloc<Pages> {
    if in_request_heap(ptr) {
        requests()
    } else {
        image()
    }
}

/// Rust's side of the allocator.
pub struct TwoPhase;

// SAFETY: each block is freed or resized by the heap that allocated it.
unsafe impl GlobalAlloc for TwoPhase {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { current().malloc(layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { current().calloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { owner(ptr).free(ptr, layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if in_request_heap(ptr) || !sealed() {
            return unsafe { owner(ptr).realloc(ptr, layout.size(), layout.align(), new_size) };
        }
        // A block of the image grows into the request heap, not into the
        // image's holes.
        unsafe {
            let moved = requests().malloc(new_size, layout.align());
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                image().free(ptr, layout.size(), layout.align());
            }
            moved
        }
    }
}

// C's side: wasi-libc's `malloc` family, so that its own allocations and its
// `free`s of what the host handed it reach these heaps too. Every symbol of
// its dlmalloc object that anything links against is defined here
// (`malloc_usable_size` is used by nothing), so the linker never pulls that
// object in; should something need it, the link fails on the duplicates
// rather than linking two allocators. Not `pub`: only C calls them.

#[unsafe(no_mangle)]
unsafe extern "C" fn malloc(size: usize) -> *mut u8 {
    unsafe { current().malloc(size, C_ALIGN) }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn __libc_malloc(size: usize) -> *mut u8 {
    unsafe { malloc(size) }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut u8 {
    match count.checked_mul(size) {
        Some(total) => unsafe { current().calloc(total, C_ALIGN) },
        None => std::ptr::null_mut(),
    }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn __libc_calloc(count: usize, size: usize) -> *mut u8 {
    unsafe { calloc(count, size) }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn free(ptr: *mut u8) {
    unsafe { owner(ptr).c_free(ptr) }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn __libc_free(ptr: *mut u8) {
    unsafe { free(ptr) }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn realloc(ptr: *mut u8, size: usize) -> *mut u8 {
    if ptr.is_null() {
        return unsafe { malloc(size) };
    }
    if size == 0 {
        // As wasi-libc's dlmalloc (REALLOC_ZERO_BYTES_FREES).
        unsafe { free(ptr) };
        return std::ptr::null_mut();
    }
    let resized = unsafe { owner(ptr).c_realloc(ptr, size) };
    if resized.is_null() || (resized as usize).is_multiple_of(C_ALIGN) {
        return resized;
    }
    // dlmalloc moved it with its own alignment, 8: move it once more.
    unsafe {
        let aligned = malloc(size);
        if !aligned.is_null() {
            std::ptr::copy_nonoverlapping(resized, aligned, size);
        }
        free(resized);
        aligned
    }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
    if !align.is_power_of_two() {
        return std::ptr::null_mut();
    }
    unsafe { current().malloc(size, align.max(C_ALIGN)) }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn posix_memalign(out: *mut *mut u8, align: usize, size: usize) -> i32 {
    if !align.is_power_of_two() || !align.is_multiple_of(size_of::<usize>()) {
        return EINVAL;
    }
    let block = unsafe { aligned_alloc(align, size) };
    if block.is_null() {
        return ENOMEM;
    }
    unsafe { out.write(block) };
    0
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
        own(end, REQUEST_HEAP_RESERVE);
        RESERVE.store(end, Ordering::Relaxed);
    }
    SEALED.store(true, Ordering::Relaxed);
}
