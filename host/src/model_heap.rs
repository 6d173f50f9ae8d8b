//! Model weights in a heap of their own.
//!
//! mimalloc backs its arenas with transparent huge pages, and gives freed
//! memory back to the OS in 64 KiB runs, which splits them. A model loaded
//! after the heap has been through a build or a reload sits partly on 4 KiB
//! pages, and a memory-bound one runs slower for it: MiniLM int8 by 4–10%,
//! 17% with no huge pages at all (README, "Why two loads differ"). So what a
//! model load allocates goes to a heap in an arena that nothing else uses:
//! fresh address space, faulted in as huge pages and never given back, so
//! what one model frees is kept for the next model to load.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::OnceLock;

use libmimalloc_sys as mi;

/// Address space for every model's weights; reserved, not committed.
const ARENA_BYTES: usize = 8 << 30;

/// The process's allocator: mimalloc, with model loads in their own heap.
pub struct Allocator;

thread_local! {
    static LOADING: Cell<bool> = const { Cell::new(false) };
}

struct Heap {
    heap: *mut mi::mi_heap_t,
    /// Where the arena starts; it spans `ARENA_BYTES`.
    start: usize,
}

// mimalloc v3 heaps take allocations from any thread.
unsafe impl Send for Heap {}
unsafe impl Sync for Heap {}

/// `None` if the arena could not be reserved: models then share the heap.
static HEAP: OnceLock<Option<Heap>> = OnceLock::new();

fn reserve() -> Option<Heap> {
    const ALIGN: usize = 2 << 20;
    // SAFETY: plain FFI calls on a fresh private mapping that only the arena uses.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            ARENA_BYTES + ALIGN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            tracing::warn!("no address space for model weights: models share the heap");
            return None;
        }
        let start = (p as usize).next_multiple_of(ALIGN) as *mut libc::c_void;
        libc::madvise(start, ARENA_BYTES, libc::MADV_HUGEPAGE);
        let mut arena: mi::mi_arena_id_t = std::ptr::null_mut();
        // Pinned: never purged, so that freeing a load's scratch cannot split
        // the huge pages of the weights beside it.
        if !mi::mi_manage_os_memory_ex(start, ARENA_BYTES, true, true, true, -1, true, &mut arena) {
            tracing::warn!("no arena for model weights: models share the heap");
            return None;
        }
        let heap = mi::mi_heap_new_in_arena(arena);
        if heap.is_null() {
            return None;
        }
        let reserved = Heap {
            heap,
            start: start as usize,
        };
        // Where to look in /proc/PID/smaps for the weights' huge pages.
        tracing::debug!(start = %format_args!("{:#x}", reserved.start), "arena for model weights");
        Some(reserved)
    }
}

/// Runs `load` with what it allocates on this thread in the models' heap.
pub fn in_model_heap<R>(load: impl FnOnce() -> R) -> R {
    HEAP.get_or_init(reserve);
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            LOADING.set(self.0);
        }
    }
    let _restore = Restore(LOADING.replace(true));
    load()
}

/// The block `get` takes from the models' heap, if this thread is loading a
/// model and the arena has room.
fn from_model_heap(get: impl FnOnce(*mut mi::mi_heap_t) -> *mut libc::c_void) -> Option<*mut u8> {
    if !LOADING.get() {
        return None;
    }
    let p = get(HEAP.get()?.as_ref()?.heap);
    (!p.is_null()).then(|| p.cast())
}

// SAFETY: every block comes from mimalloc, whose `mi_free` and realloc take
// blocks of any heap; a full arena falls back to the shared heap.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        from_model_heap(|heap| unsafe {
            mi::mi_heap_malloc_aligned(heap, layout.size(), layout.align())
        })
        .unwrap_or_else(|| unsafe { mimalloc::MiMalloc.alloc(layout) })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        from_model_heap(|heap| unsafe {
            mi::mi_heap_zalloc_aligned(heap, layout.size(), layout.align())
        })
        .unwrap_or_else(|| unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // On failure the block is left as it was, for the shared heap to move.
        from_model_heap(|heap| unsafe {
            mi::mi_heap_realloc_aligned(heap, ptr.cast(), new_size, layout.align())
        })
        .unwrap_or_else(|| unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `p` lies in the models' arena.
    fn in_heap(p: *mut u8) -> bool {
        let start = HEAP
            .get()
            .and_then(Option::as_ref)
            .expect("the arena")
            .start;
        (start..start + ARENA_BYTES).contains(&(p as usize))
    }

    #[test]
    fn a_load_allocates_in_the_models_heap_and_nothing_else_does() {
        let layout = Layout::from_size_align(1 << 20, 64).unwrap();
        let (weights, grown) = in_model_heap(|| unsafe {
            let weights = Allocator.alloc(layout);
            let small = Allocator.alloc_zeroed(Layout::new::<[u64; 4]>());
            let grown = Allocator.realloc(small, Layout::new::<[u64; 4]>(), 4096);
            (weights, grown)
        });
        assert!(in_heap(weights) && in_heap(grown));
        assert_eq!(weights as usize % 64, 0);
        // After the load, and on other threads during it, the shared heap.
        let other = unsafe { Allocator.alloc(layout) };
        let elsewhere = in_model_heap(|| {
            std::thread::spawn(move || unsafe { Allocator.alloc(layout) as usize })
                .join()
                .unwrap()
        }) as *mut u8;
        assert!(!in_heap(other) && !in_heap(elsewhere));
        unsafe {
            for p in [weights, other, elsewhere] {
                Allocator.dealloc(p, layout);
            }
            Allocator.dealloc(grown, Layout::from_size_align(4096, 8).unwrap());
        }
    }
}
