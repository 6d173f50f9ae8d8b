//! Pre-initialization ("baking"): instantiate a built component once, call its
//! `wizer-initialize` export (which parses, optimises and plans the model),
//! and write the snapshot. Every fresh instance of the baked component then
//! starts with the model ready in its copy-on-write memory image, and the
//! baked file is a plain component that Spin runs too.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Store};
use wasmtime_wizer::Wizer;

use crate::sandbox::{self, Capabilities, InstanceState, MemoryStats};

/// The export a bakeable component provides.
pub const INIT_EXPORT: &str = "wizer-initialize";

/// The engine baking runs on, and the code cache it compiles through.
///
/// No pool and no epochs: initialisation is trusted build-time work that may
/// need more memory than a request does. Wizer compiles the component it
/// instruments itself, out of reach of our [`crate::engine::CompileCache`],
/// so baking uses wasmtime's own code cache in the state dir: the generic
/// `oip` function, baked once per model (`models add`, `bench`), is then
/// compiled once, not once per model.
pub struct Baker {
    engine: Engine,
    cache: wasmtime::Cache,
}

impl Baker {
    pub fn new(state_dir: &Path) -> Result<Self> {
        let dir = std::path::absolute(state_dir.join("bake-cache"))
            .with_context(|| format!("resolving {}", state_dir.display()))?;
        let mut cache_config = wasmtime::CacheConfig::new();
        cache_config.with_directory(dir);
        let cache = wasmtime::Cache::new(cache_config)
            .map_err(anyhow::Error::from)
            .context("setting up the baking code cache")?;
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.wasm_component_model_async(true);
        config.cache(Some(cache.clone()));
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;
        Ok(Self { engine, cache })
    }

    /// How many compiles so far found their code in the cache.
    pub fn cache_hits(&self) -> usize {
        self.cache.cache_hits()
    }
}

/// Bakes `input` into `output`, unless `output` was already baked from the
/// same inputs (a sidecar `.sha256` records which): the component, and the
/// environment and files its initializer can read.
pub async fn bake(baker: &Baker, caps: &Capabilities, input: &Path, output: &Path) -> Result<bool> {
    let wasm = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let digest = inputs_digest(&wasm, caps)?;
    let stamp = output.with_extension("wasm.sha256");
    if output.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == digest) {
        return Ok(false);
    }

    let linker = sandbox::linker(&baker.engine)?;
    let caps = Capabilities {
        // Baking may hold the unplanned and the planned model at once.
        max_memory_bytes: 4 << 30,
        ..caps.clone()
    };
    let state = InstanceState::new(
        &caps,
        Arc::new(MemoryStats::default()),
        Default::default(),
        Default::default(),
    )?;
    let mut store = Store::new(&baker.engine, state);
    store.limiter(|s| s.limiter());
    // Wizer copies the initialized memory out through the host; the default
    // cap on such copies (128 MiB) is below a model's snapshot (~135 MiB for
    // MiniLM). Baking is trusted build-time work.
    store.set_hostcall_fuel(usize::MAX);
    let (snapshot, _) = Wizer::new()
        .init_func(INIT_EXPORT)
        // The component refers to the export; dropping it breaks the component.
        .keep_init_func(true)
        .run_component(&mut store, &wasm, async |store, component| {
            linker.instantiate_async(store, component).await
        })
        .await
        .map_err(anyhow::Error::from)
        .with_context(|| format!("pre-initializing {}", input.display()))?;

    // A handle is the build instance's: in a fresh instance of the snapshot
    // it names nothing, and a read through it fails at request time.
    let held = store.data_mut().held_handles();
    if held.files > 0 {
        anyhow::bail!(
            "pre-initializing {}: its initializer left {} file(s) open; a snapshot cannot \
             keep an open file, so close it before `{INIT_EXPORT}` returns and open it \
             again in the request",
            input.display(),
            held.files
        );
    }
    if held.other > 0 {
        tracing::warn!(
            component = %input.display(),
            handles = held.other,
            "the initializer left host handles open (directories, streams); they name \
             nothing in a fresh instance"
        );
    }
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = output.with_extension(format!("wasm.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &snapshot).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, output).with_context(|| format!("writing {}", output.display()))?;
    std::fs::write(&stamp, &digest).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(true)
}

fn inputs_digest(wasm: &[u8], caps: &Capabilities) -> Result<String> {
    let mut h = Sha256::new();
    h.update(Sha256::digest(wasm));
    for (k, v) in &caps.environment {
        h.update(format!("env {k}={v}\n"));
    }
    for (host, guest) in &caps.mounts {
        let mut files = Vec::new();
        collect_files(host, &mut files)?;
        files.sort();
        for f in files {
            let rel = f.strip_prefix(host).unwrap_or(&f);
            h.update(format!("file {guest}/{}\n", rel.display()));
            let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            h.update(Sha256::digest(&bytes));
        }
    }
    Ok(hex::encode(h.finalize()))
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}
