//! What a guest instance may touch: the per-instance store state, its memory
//! limiter, and the linker that grants capabilities (WASI p2 and p3,
//! `wasi:http` both versions, Spin variables). Nothing else is linked, so a
//! component importing anything more fails to load with the import named.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Result;
use wasmtime::component::{Accessor, HasData, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::guest_stderr::GuestStderr;
use crate::outbound::OutboundPolicy;

/// Per-component capabilities, resolved once at load and shared by its instances.
#[derive(Debug, Clone)]
pub struct Capabilities {
    pub environment: Vec<(String, String)>,
    /// Host directory → guest path, mounted read-only.
    pub mounts: Vec<(PathBuf, String)>,
    pub variables: Arc<BTreeMap<String, String>>,
    pub outbound: OutboundPolicy,
    pub max_memory_bytes: u64,
    /// The app's host-owned models, for `wasi:nn`.
    pub nn: Arc<crate::nn::Registry>,
}

/// Memory use of one instance, readable after the store is gone.
#[derive(Debug, Default)]
pub struct MemoryStats {
    pub current: AtomicU64,
    pub peak: AtomicU64,
    /// The guest asked for more than its cap.
    pub exceeded: AtomicBool,
}

struct Limiter {
    cap: u64,
    stats: Arc<MemoryStats>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Sum across all of the instance's memories, as the cap is per instance.
        let total = self.stats.current.load(Ordering::Relaxed) - current as u64 + desired as u64;
        if total > self.cap {
            self.stats.exceeded.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        self.stats.current.store(total, Ordering::Relaxed);
        self.stats.peak.fetch_max(total, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// The `T` of every `Store<T>`: one per instance, so one per request.
pub struct InstanceState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    outbound: OutboundPolicy,
    variables: Arc<BTreeMap<String, String>>,
    limiter: Limiter,
    nn: crate::nn::NnCtx,
}

impl InstanceState {
    /// `nn_usage` accumulates what the instance's `wasi:nn` calls use, and
    /// `stderr` keeps the end of what it writes there.
    pub fn new(
        caps: &Capabilities,
        memory: Arc<MemoryStats>,
        nn_usage: Arc<crate::nn::NnUsage>,
        stderr: GuestStderr,
    ) -> Result<Self> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.inherit_stdout().stderr(stderr);
        wasi.envs(&caps.environment);
        for (host, guest) in &caps.mounts {
            wasi.preopened_dir(host, guest, FsPerms::ReadOnly)?;
        }
        Ok(Self {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            outbound: caps.outbound.clone(),
            variables: caps.variables.clone(),
            limiter: Limiter {
                cap: caps.max_memory_bytes,
                stats: memory,
            },
            nn: crate::nn::NnCtx {
                registry: caps.nn.clone(),
                usage: nn_usage,
            },
        })
    }

    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    /// The host handles the guest still holds: open files, and anything else
    /// (directories, streams, requests). For a snapshot, which cannot keep them.
    pub fn held_handles(&mut self) -> HeldHandles {
        use wasmtime_wasi::filesystem::Descriptor;
        let mut held = HeldHandles::default();
        for entry in self.table.iter_mut() {
            match entry.downcast_ref::<Descriptor>() {
                Some(Descriptor::File(_)) => held.files += 1,
                _ => held.other += 1,
            }
        }
        held
    }
}

/// See [`InstanceState::held_handles`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeldHandles {
    pub files: usize,
    pub other: usize,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

mod spin_variables {
    wasmtime::component::bindgen!({
        inline: "
            package spin:variables@3.0.0;

            interface variables {
                variant error {
                    invalid-name(string),
                    undefined(string),
                    provider(string),
                    other(string),
                }
                get: async func(name: string) -> result<string, error>;
            }

            world host {
                import variables;
            }
        ",
    });
}

use spin_variables::spin::variables::variables as spin_vars;

struct SpinVariables;

impl HasData for SpinVariables {
    type Data<'a> = &'a mut InstanceState;
}

impl<T> spin_vars::HostWithStore<T> for SpinVariables {
    async fn get(accessor: &Accessor<T, Self>, name: String) -> Result<String, spin_vars::Error> {
        if crate::variables::check_name(&name).is_err() {
            return Err(spin_vars::Error::InvalidName(name));
        }
        accessor.with(|mut view| {
            view.get()
                .variables
                .get(&name)
                .cloned()
                .ok_or(spin_vars::Error::Undefined(name))
        })
    }
}

impl spin_vars::Host for &mut InstanceState {}

/// Every capability a guest may import, for every component of the app.
pub fn linker(engine: &Engine) -> Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    // std for wasm32-wasip2 imports WASIp2 even in p3 components.
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    spin_vars::add_to_linker::<_, SpinVariables>(&mut linker, |s| s)?;
    crate::nn::add_to_linker(&mut linker, |s| crate::nn::NnView {
        ctx: &s.nn,
        table: &mut s.table,
    })?;
    Ok(linker)
}
