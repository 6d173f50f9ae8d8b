//! edgeinfer-kit: the plumbing every edgeinfer model function shares, with no
//! per-model logic. A model crate embeds its ONNX file, declares a
//! [`LazyEngine`](engine::LazyEngine), does its own pre/post-processing, and
//! hands `/v2/models/...` to [`oip::serve`].
//!
//! - [`tensor`]: kit-owned tensors in the OIP datatypes.
//! - [`body`]: reading a request body whole.
//! - [`decode`]: JSON, OIP inference requests, raw bytes, PNG.
//! - [`engine`]: the [`Engine`](engine::Engine) trait, input checks, the tract engine.
//! - [`respond`]: JSON replies, OIP responses and metadata, errors.
//! - [`oip`]: the OIP v2 router for one model.
//! - `p2` (feature `p2`): the `wasi:http@0.2` entry, for functions that never run on Spin.
//! - [`export_wizer_init!`]: the pre-initialization hook.
//! - `heap` (wasm only): the allocator, Rust's and C's; after
//!   pre-initialization, requests allocate above the baked image.
//!
//! ```ignore
//! static MODEL: LazyEngine<TractEngine> =
//!     LazyEngine::new(|| TractEngine::from_onnx(include_bytes!("model.onnx")));
//! kit::export_wizer_init!(|| MODEL.init());
//! ```

pub mod body;
pub mod decode;
pub mod engine;
mod error;
pub mod oip;
#[cfg(feature = "p2")]
pub mod p2;
pub mod respond;
pub mod tensor;

pub use error::KitError;

#[cfg(target_arch = "wasm32")]
pub mod heap;

/// The zero pages a pre-initialized function sets aside above its image for
/// what requests allocate (`heap`). The host keeps as much of each memory
/// slot resident between instances; past that, dirty pages are decommitted
/// at reset anyway.
pub const REQUEST_HEAP_RESERVE: usize = 16 << 20;

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: heap::TwoPhase = heap::TwoPhase;

/// Not public API: what [`export_wizer_init!`] expands to needs.
#[doc(hidden)]
pub mod __private {
    pub use spin_sdk::wit_bindgen;

    /// Drops what wasi-libc got from the bake's host, so that the snapshot
    /// does not keep it: its copy of the environment (the bake's values, not
    /// the instance's), its preopened directories and the streams behind
    /// stdin, stdout and stderr (resource handles of the bake's instance,
    /// which name nothing, or something else, in a fresh one). Each is
    /// fetched again on first use.
    #[cfg(target_arch = "wasm32")]
    pub fn forget_the_bake_host() {
        unsafe extern "C" {
            fn __wasilibc_deinitialize_environ();
            fn __wasilibc_reset_preopens();
            fn __wasilibc_init_stdio() -> i32;
            fn close(fd: i32) -> i32;
        }
        // SAFETY: these only reset wasi-libc's lazily filled state, and
        // nothing borrows from it across this call.
        unsafe {
            // Closing drops any stream a print opened; the entries are then
            // added again with none yet. wasi-libc hands out the fd closed
            // last first, so 2, 1, 0 come back as 0, 1, 2.
            for fd in (0..3).rev() {
                close(fd);
            }
            __wasilibc_init_stdio();
            __wasilibc_deinitialize_environ();
            __wasilibc_reset_preopens();
        }
    }
}

/// Exports the component-level function `wizer-initialize: func()`, which runs
/// `$init` (a `fn()` or a non-capturing closure). Pre-initialization (wizer with
/// `--keep-init-func=true`) calls it once at build time and snapshots the
/// instance, so whatever `$init` leaves in statics, typically an engine in a
/// [`LazyEngine`](engine::LazyEngine) via `MODEL.init()`, is ready in every fresh
/// instance. After `$init` the allocator moves to the request heap (`heap`), so
/// that what requests allocate lies above the image, and wasi-libc forgets the
/// environment, preopened directories and stdio streams it got, so that each
/// instance fetches its own. `$init` must not leave another host handle
/// behind, such as a file kept open: it names nothing in a fresh instance.
/// Requests still work without pre-initialization: the engine is then built
/// on first use. Use it once per component crate, at the crate root.
#[macro_export]
macro_rules! export_wizer_init {
    ($init:expr) => {
        #[doc(hidden)]
        const __KIT_WIZER_INIT: fn() = $init;

        #[doc(hidden)]
        mod __kit_wizer_init {
            $crate::__private::wit_bindgen::generate!({
                inline: "package edgeinfer:wizer;\nworld init {\n  export wizer-initialize: func();\n}\n",
                world: "edgeinfer:wizer/init",
                runtime_path: "::kit::__private::wit_bindgen::rt",
            });

            struct Init;

            impl Guest for Init {
                fn wizer_initialize() {
                    (super::__KIT_WIZER_INIT)();
                    #[cfg(target_arch = "wasm32")]
                    {
                        $crate::__private::forget_the_bake_host();
                        $crate::heap::seal();
                    }
                }
            }

            export!(Init);
        }
    };
}
