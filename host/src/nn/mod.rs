//! `wasi:nn` for guests (`wasi:nn@0.2.0-rc-2024-10-28`, the version
//! wasmtime-wasi-nn 48 implements, so its guests run here too).
//!
//! Models are the host's: declared under `[nn.models.NAME]` in
//! edgeinfer.toml, loaded once when the app loads, and shared by every
//! instance of every component (`load-by-name`). `load` with bytes is cached
//! by sha256 (see `BytesCache`) and parsed off the instance's core, once
//! however many instances load the same bytes at once.
//!
//! `compute` never runs on the HTTP runtime's threads: called from an
//! instance, it runs on that instance's core (see `crate::cores`); from
//! elsewhere, on the blocking pool, at most one per core at a time.
//! Batched models run on their batcher's threads (until it finds that
//! batching does not pay for the model). A compute's time is counted for
//! the meter. Bad shapes and types come back to the guest as
//! `invalid-argument` errors, never as traps.
//!
//! wasmtime-wasi-nn's backend trait is synchronous and keyed by encoding, so
//! the interface is implemented here with `bindgen!` instead.

mod backend;
mod batch;
mod config;
#[cfg(feature = "onnxruntime")]
mod onnxruntime;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use sha2::{Digest as _, Sha256};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::metrics::RunsOn;

pub use backend::{Backend, NnTensor, TractBackend, from_kit};
pub use config::{BackendKind, Batching, NnModelConfig, Target};

mod bindings {
    wasmtime::component::bindgen!({
        world: "ml",
        path: "../wit/wasi-nn.wit",
        with: {
            "wasi:nn/graph.graph": super::Graph,
            "wasi:nn/tensor.tensor": super::NnTensor,
            "wasi:nn/inference.graph-execution-context": super::ExecutionContext,
            "wasi:nn/errors.error": super::NnError,
        },
        imports: {
            "wasi:nn/graph.load": async | trappable,
            "wasi:nn/inference.[method]graph-execution-context.compute": async | trappable,
            default: trappable,
        },
    });
}

use bindings::wasi::nn::errors::ErrorCode;
use bindings::wasi::nn::graph::{ExecutionTarget, GraphEncoding};
use bindings::wasi::nn::tensor::TensorType;

/// A loaded model, shared by every instance that uses it.
pub struct Model {
    pub name: String,
    pub backend: Arc<dyn Backend>,
    /// Where it runs, for the meter's rate (`per_nn_compute_ms.cpu|gpu`).
    pub target: Target,
    /// Set when `max_batch_size` > 1: concurrent calls are run together, for
    /// as long as the batcher finds it pays.
    pub batcher: Option<batch::Batcher>,
}

impl Model {
    /// Runs `inputs`; returns the outputs, the compute time to bill and
    /// where it ran.
    async fn compute(
        &self,
        inputs: Vec<(String, NnTensor)>,
        slots: &Arc<tokio::sync::Semaphore>,
    ) -> wasmtime::Result<(batch::Outcome, RunsOn)> {
        if let Some(batcher) = &self.batcher
            && batcher.batching()
        {
            return Ok((batcher.compute(inputs).await, RunsOn::Batch));
        }
        if crate::cores::on_core() {
            // The instance's own core: its thread is ours to block, and
            // staying here saves two cross-CPU hand-offs per call.
            let started = Instant::now();
            let result = crate::cores::run_native(|| self.backend.run(inputs));
            return Ok(((result, started.elapsed()), RunsOn::Core));
        }
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| wasmtime::format_err!("the compute pool is closed"))?;
        let backend = self.backend.clone();
        // Timed on the pool thread: the meter bills the model's run, not the
        // hand-offs to the pool and back.
        let (result, took) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = Instant::now();
            let result = backend.run(inputs);
            (result, started.elapsed())
        })
        .await
        .map_err(|e| wasmtime::format_err!("the compute task failed: {e}"))?;
        Ok(((result, took), RunsOn::Pool))
    }
}

/// A guest's handle on a model.
pub struct Graph(Arc<Model>);
/// What `init-execution-context` returns: the model again (backends hold no
/// per-context state; inputs come with `compute`).
pub struct ExecutionContext(Arc<Model>);

/// A wasi-nn error: a code and a message for the guest.
#[derive(Debug)]
pub struct NnError {
    pub code: ErrorCode,
    pub message: String,
}

impl NnError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::InvalidArgument,
            message: message.into(),
        }
    }

    pub fn runtime(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::RuntimeError,
            message: message.into(),
        }
    }
}

/// The host's models: the configured ones by name, and those loaded from
/// bytes by sha256. One per app; shared by all its instances.
pub struct Registry {
    named: HashMap<String, Arc<Model>>,
    by_digest: Mutex<BytesCache>,
    /// At most one `compute` per core at a time.
    compute_slots: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.named.keys().collect();
        names.sort();
        f.debug_struct("Registry").field("models", &names).finish()
    }
}

impl Registry {
    /// `named` for `load-by-name`; up to `max_from_bytes` models loaded from
    /// bytes stay loaded.
    pub fn new(named: HashMap<String, Arc<Model>>, max_from_bytes: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            named,
            by_digest: Mutex::new(BytesCache::new(max_from_bytes)),
            compute_slots: Arc::new(tokio::sync::Semaphore::new(cores)),
        }
    }

    pub fn empty() -> Self {
        Self::new(HashMap::new(), 0)
    }

    pub fn model_names(&self) -> impl Iterator<Item = &String> {
        self.named.keys()
    }
}

/// A model loaded from bytes, or why those bytes are not one.
type Loaded = Result<Arc<Model>, String>;

/// The models guests loaded from bytes, by sha256, most recently loaded
/// kept. Each entry is set once: the first `load` of some bytes parses
/// them, and a `load` of the same bytes meanwhile waits for it. A model
/// dropped from here lives on in the graphs that still hold it.
///
/// The bytes are kept too, so that a later `load` of them is found by
/// comparing bytes instead of hashing them again: sha256 runs at ~1.4 GB/s
/// on this project's machines (17 ms a load for MiniLM's 23 MB), a
/// comparison several times faster, and one that differs stops early.
struct BytesCache {
    capacity: usize,
    entries: HashMap<[u8; 32], Kept>,
    tick: u64,
}

struct Kept {
    loaded: Arc<tokio::sync::OnceCell<Loaded>>,
    bytes: Arc<Vec<u8>>,
    /// The tick of its last `load`.
    last: u64,
}

impl BytesCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            tick: 0,
        }
    }

    /// The kept bytes as long as `len`, with their digests: the only ones
    /// `load`'s bytes can be.
    fn same_length(&self, len: usize) -> Vec<([u8; 32], Arc<Vec<u8>>)> {
        self.entries
            .iter()
            .filter(|(_, kept)| kept.bytes.len() == len)
            .map(|(digest, kept)| (*digest, kept.bytes.clone()))
            .collect()
    }

    /// The entry for `bytes`, whose sha256 is `digest`; made (and the least
    /// recently loaded one dropped, if full) if there is none.
    fn entry(
        &mut self,
        digest: [u8; 32],
        bytes: &Arc<Vec<u8>>,
    ) -> Arc<tokio::sync::OnceCell<Loaded>> {
        self.tick += 1;
        if let Some(kept) = self.entries.get_mut(&digest) {
            kept.last = self.tick;
            return kept.loaded.clone();
        }
        let loaded = Arc::new(tokio::sync::OnceCell::new());
        if self.capacity == 0 {
            return loaded;
        }
        if self.entries.len() >= self.capacity
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, kept)| kept.last)
                .map(|(digest, _)| *digest)
        {
            self.entries.remove(&oldest);
        }
        let kept = Kept {
            loaded: loaded.clone(),
            bytes: bytes.clone(),
            last: self.tick,
        };
        self.entries.insert(digest, kept);
        loaded
    }
}

/// The sha256 of `bytes`: that of the same bytes kept in `cache`, or else
/// worked out. Compared and hashed outside the lock.
fn digest_of(cache: &Mutex<BytesCache>, bytes: &[u8]) -> [u8; 32] {
    let candidates = cache
        .lock()
        .expect("nn cache lock")
        .same_length(bytes.len());
    candidates
        .into_iter()
        .find(|(_, kept)| kept.as_slice() == bytes)
        .map_or_else(|| Sha256::digest(bytes).into(), |(digest, _)| digest)
}

/// Per instance: the app's registry, and what its calls used so far.
pub struct NnCtx {
    pub registry: Arc<Registry>,
    pub usage: Arc<NnUsage>,
}

/// What one instance's `wasi:nn` calls used, for its meter record.
#[derive(Debug, Default)]
pub struct NnUsage {
    pub compute_us: AtomicU64,
    /// The backend that ran them (the first, if several did).
    pub backend: std::sync::OnceLock<&'static str>,
    /// Whether any ran on a GPU, which is billed at the GPU rate.
    pub gpu: std::sync::atomic::AtomicBool,
}

pub struct NnView<'a> {
    pub ctx: &'a NnCtx,
    pub table: &'a mut ResourceTable,
}

struct HasNn;

impl HasData for HasNn {
    type Data<'a> = NnView<'a>;
}

/// Grants `wasi:nn` to every component linked with `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> NnView<'_>,
) -> Result<()> {
    use bindings::wasi::nn as api;
    api::graph::add_to_linker::<_, HasNn>(linker, view)?;
    api::tensor::add_to_linker::<_, HasNn>(linker, view)?;
    api::inference::add_to_linker::<_, HasNn>(linker, view)?;
    api::errors::add_to_linker::<_, HasNn>(linker, view)?;
    Ok(())
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

impl NnView<'_> {
    fn fail<T>(&mut self, e: NnError) -> NnResult<T> {
        tracing::debug!(code = ?e.code, message = %e.message, "wasi:nn error");
        Ok(Err(self.table.push(e)?))
    }
}

impl bindings::wasi::nn::graph::Host for NnView<'_> {
    async fn load(
        &mut self,
        builders: Vec<Vec<u8>>,
        encoding: GraphEncoding,
        target: ExecutionTarget,
    ) -> NnResult<Resource<Graph>> {
        if !matches!(encoding, GraphEncoding::Onnx | GraphEncoding::Autodetect) {
            return self.fail(NnError {
                code: ErrorCode::InvalidEncoding,
                message: format!("this host runs ONNX models only, not {encoding:?}"),
            });
        }
        if !matches!(target, ExecutionTarget::Cpu) {
            return self.fail(NnError {
                code: ErrorCode::UnsupportedOperation,
                message: format!(
                    "models loaded from bytes run on the CPU only; {target:?} needs a model \
                     declared in edgeinfer.toml with target = \"gpu\""
                ),
            });
        }
        let count = builders.len();
        let Ok::<[Vec<u8>; 1], _>([bytes]) = builders.try_into() else {
            return self.fail(NnError::invalid(format!(
                "an ONNX model is one buffer, got {count}"
            )));
        };
        let bytes = Arc::new(bytes);
        let cache = &self.ctx.registry.by_digest;
        let digest = digest_of(cache, &bytes);
        let cell = cache.lock().expect("nn cache lock").entry(digest, &bytes);
        let loaded = match cell.get() {
            Some(loaded) => loaded.clone(),
            None => {
                // The first load's parse runs in a task of its own, so that a
                // guest gone past its deadline does not take the parse's
                // result with it: the model is kept for the next load, instead
                // of each guest starting a parse that none lives to see.
                let slots = self.ctx.registry.compute_slots.clone();
                tokio::spawn(async move {
                    cell.get_or_init(|| load_from_bytes(bytes, digest, slots))
                        .await
                        .clone()
                })
                .await
                .unwrap_or_else(|e| Err(format!("loading the model failed: {e}")))
            }
        };
        match loaded {
            Ok(model) => Ok(Ok(self.table.push(Graph(model))?)),
            Err(message) => self.fail(NnError {
                code: ErrorCode::InvalidEncoding,
                message,
            }),
        }
    }

    fn load_by_name(&mut self, name: String) -> NnResult<Resource<Graph>> {
        match self.ctx.registry.named.get(&name) {
            Some(model) => Ok(Ok(self.table.push(Graph(model.clone()))?)),
            None => {
                let mut known: Vec<&String> = self.ctx.registry.named.keys().collect();
                known.sort();
                self.fail(NnError {
                    code: ErrorCode::NotFound,
                    message: format!(
                        "no model named `{name}` on this host (edgeinfer.toml's [nn.models] has {known:?})"
                    ),
                })
            }
        }
    }
}

impl bindings::wasi::nn::graph::HostGraph for NnView<'_> {
    fn init_execution_context(
        &mut self,
        graph: Resource<Graph>,
    ) -> NnResult<Resource<ExecutionContext>> {
        let model = self.table.get(&graph)?.0.clone();
        Ok(Ok(self.table.push(ExecutionContext(model))?))
    }

    fn drop(&mut self, graph: Resource<Graph>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}

impl bindings::wasi::nn::inference::HostGraphExecutionContext for NnView<'_> {
    async fn compute(
        &mut self,
        context: Resource<ExecutionContext>,
        inputs: Vec<(String, Resource<NnTensor>)>,
    ) -> NnResult<Vec<(String, Resource<NnTensor>)>> {
        let model = self.table.get(&context)?.0.clone();
        let mut tensors = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            tensors.push((name, self.table.delete(t)?));
        }
        let ((result, took), runs_on) = model
            .compute(tensors, &self.ctx.registry.compute_slots)
            .await?;
        let usage = &self.ctx.usage;
        usage
            .compute_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        usage.backend.get_or_init(|| model.backend.name());
        if model.target == Target::Gpu {
            usage.gpu.store(true, Ordering::Relaxed);
        }
        crate::metrics::global().observe_inference(
            &model.name,
            model.backend.name(),
            runs_on,
            took,
        );
        match result {
            Ok(outputs) => {
                let mut out = Vec::with_capacity(outputs.len());
                for (name, t) in outputs {
                    out.push((name, self.table.push(t)?));
                }
                Ok(Ok(out))
            }
            Err(e) => self.fail(e),
        }
    }

    fn drop(&mut self, context: Resource<ExecutionContext>) -> wasmtime::Result<()> {
        self.table.delete(context)?;
        Ok(())
    }
}

impl bindings::wasi::nn::tensor::HostTensor for NnView<'_> {
    fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<NnTensor>> {
        Ok(self.table.push(NnTensor {
            dimensions,
            ty,
            data,
        })?)
    }

    fn dimensions(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&t)?.dimensions.clone())
    }

    fn ty(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<TensorType> {
        Ok(self.table.get(&t)?.ty)
    }

    fn data(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&t)?.data.clone())
    }

    fn drop(&mut self, t: Resource<NnTensor>) -> wasmtime::Result<()> {
        self.table.delete(t)?;
        Ok(())
    }
}

impl bindings::wasi::nn::errors::HostError for NnView<'_> {
    fn code(&mut self, e: Resource<NnError>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table.get(&e)?.code)
    }

    fn data(&mut self, e: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&e)?.message.clone())
    }

    fn drop(&mut self, e: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(e)?;
        Ok(())
    }
}

impl bindings::wasi::nn::errors::Host for NnView<'_> {}
impl bindings::wasi::nn::tensor::Host for NnView<'_> {}
impl bindings::wasi::nn::inference::Host for NnView<'_> {}

/// Parses a model a guest loaded from bytes: on the blocking pool, since a
/// large model takes long enough to hold up the other instances of a core,
/// and in a compute slot, so that guests loading many models at once do
/// not take more than the cores.
async fn load_from_bytes(
    bytes: Arc<Vec<u8>>,
    digest: [u8; 32],
    slots: Arc<tokio::sync::Semaphore>,
) -> Loaded {
    let slot = slots
        .acquire_owned()
        .await
        .map_err(|_| "the compute pool is closed".to_string())?;
    let name = format!("sha256:{}", hex::encode(digest));
    tracing::info!(model = %name, bytes = bytes.len(), "parsing a model loaded from bytes");
    let started = Instant::now();
    // The parse holds the slot to its end, even if the guest that asked is
    // gone (past its deadline): a parse cannot be stopped halfway.
    let parsed = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        TractBackend::from_onnx(&bytes, &[])
    })
    .await;
    let parsed = match parsed {
        Ok(Ok(backend)) => Ok(backend),
        Ok(Err(e)) => Err(format!("the bytes are not a model tract can load: {e:#}")),
        // A panic the kit did not turn into an error (it does tract's).
        Err(e) => Err(format!("loading the model failed: {e}")),
    };
    let backend = parsed.inspect_err(|error| {
        tracing::info!(model = %name, %error, "a model loaded from bytes did not load");
    })?;
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(model = %name, ms, "parsed a model loaded from bytes");
    let model = Model {
        name,
        backend: Arc::new(backend),
        target: Target::Cpu,
        batcher: None,
    };
    crate::metrics::global().nn_model_loaded(&model.name);
    Ok(Arc::new(model))
}

/// Loads every `[nn.models.NAME]`, each once. An error names the model and
/// why. Up to `max_from_bytes` models that guests load from bytes are kept.
pub fn load_models(
    models: &std::collections::BTreeMap<String, NnModelConfig>,
    base_dir: &std::path::Path,
    max_from_bytes: usize,
) -> Result<Registry> {
    let mut named = HashMap::new();
    for (name, cfg) in models {
        let model = cfg
            .load(name, base_dir)
            .map_err(|e| anyhow::anyhow!("[nn.models.{name}]: {e:#}"))?;
        crate::metrics::global().nn_model_loaded(name);
        named.insert(name.clone(), Arc::new(model));
    }
    Ok(Registry::new(named, max_from_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(b: u8) -> Arc<Vec<u8>> {
        Arc::new(vec![b; 100])
    }

    #[test]
    fn the_bytes_cache_keeps_the_most_recently_loaded() {
        let mut cache = BytesCache::new(2);
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        let first_a = cache.entry(a, &bytes(1));
        cache.entry(b, &bytes(2));
        // A load of `a` again is the same entry, and makes `b` the oldest.
        assert!(Arc::ptr_eq(&first_a, &cache.entry(a, &bytes(1))));
        cache.entry(c, &bytes(3));
        assert_eq!(cache.entries.len(), 2);
        assert!(cache.entries.contains_key(&a) && cache.entries.contains_key(&c));
        assert!(Arc::ptr_eq(&first_a, &cache.entry(a, &bytes(1))));
    }

    #[test]
    fn a_bytes_cache_of_none_keeps_nothing() {
        let mut cache = BytesCache::new(0);
        let first = cache.entry([1; 32], &bytes(1));
        let second = cache.entry([1; 32], &bytes(1));
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(cache.entries.is_empty());
    }

    #[test]
    fn kept_bytes_are_known_by_comparison_and_others_by_hashing() {
        let sha = |b: &[u8]| -> [u8; 32] { Sha256::digest(b).into() };
        let cache = Mutex::new(BytesCache::new(4));
        // Kept under a made-up digest: found again only by comparing bytes.
        let kept = bytes(7);
        cache.lock().unwrap().entry([9; 32], &kept);
        assert_eq!(digest_of(&cache, &[7; 100]), [9; 32]);
        // Same length, other bytes; and other lengths: hashed.
        assert_eq!(digest_of(&cache, &[8; 100]), sha(&[8; 100]));
        assert_eq!(digest_of(&cache, &[7; 99]), sha(&[7; 99]));
    }
}
