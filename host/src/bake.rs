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

/// An engine for baking only: no pool and no epochs, since initialisation is
/// trusted build-time work that may need more memory than a request does.
pub fn engine() -> Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.wasm_component_model_async(true);
    Engine::new(&config).map_err(anyhow::Error::from)
}

/// Bakes `input` into `output`, unless `output` was already baked from the
/// same bytes (a sidecar `.sha256` records which).
pub async fn bake(
    engine: &Engine,
    caps: &Capabilities,
    input: &Path,
    output: &Path,
) -> Result<bool> {
    let wasm = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let digest = hex::encode(Sha256::digest(&wasm));
    let stamp = output.with_extension("wasm.sha256");
    if output.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == digest) {
        return Ok(false);
    }

    let linker = sandbox::linker(engine)?;
    let caps = Capabilities {
        // Baking may hold the unplanned and the planned model at once.
        max_memory_bytes: 4 << 30,
        ..caps.clone()
    };
    let state = InstanceState::new(&caps, Arc::new(MemoryStats::default()))?;
    let mut store = Store::new(engine, state);
    store.limiter(|s| s.limiter());
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

    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = output.with_extension(format!("wasm.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &snapshot).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, output).with_context(|| format!("writing {}", output.display()))?;
    std::fs::write(&stamp, &digest).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(true)
}
