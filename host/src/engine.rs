//! The wasmtime engine shared by every component, its epoch clock, and the
//! on-disk cache of precompiled components.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; guest deadlines are checked at this granularity
/// and long-running guests yield to the scheduler this often.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Sizing of the instance pool shared by all components.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Instances alive at once, across all components.
    pub instances: u32,
    /// Largest linear memory any instance may have.
    pub max_memory_bytes: u64,
    /// Per memory slot, kept mapped between instances.
    pub keep_resident_bytes: usize,
}

impl PoolSettings {
    /// The instance budget shared by all components: `edgeinfer.toml`'s
    /// `max_concurrency` settings may not add up to more (see
    /// [`crate::runtime_config::Scaling`]).
    pub const DEFAULT_INSTANCES: u32 = 1000;
}

/// The instance budget in force: `EDGEINFER_POOL_INSTANCES` if set to a
/// positive number (for hosts that want a smaller or larger pool), else
/// [`PoolSettings::DEFAULT_INSTANCES`].
pub fn pool_instances() -> u32 {
    std::env::var("EDGEINFER_POOL_INSTANCES")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(PoolSettings::DEFAULT_INSTANCES)
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            instances: Self::DEFAULT_INSTANCES,
            max_memory_bytes: 256 << 20,
            // Above a function's dirty set (filetype's calls dirty ~5 MiB),
            // so its next instance starts on resident pages; see `new_engine`.
            // As large as a kit function's request heap, whose pages are
            // the ones a request dirties.
            keep_resident_bytes: kit::REQUEST_HEAP_RESERVE,
        }
    }
}

/// The engine for serving; `fuel` turns on fuel counting for the meter.
pub fn new_engine(pool: &PoolSettings, fuel: bool) -> Result<Engine> {
    let mut config = Config::new();
    config.consume_fuel(fuel);
    config.wasm_component_model(true);
    config.wasm_component_model_async(true);
    config.epoch_interruption(true);
    // `EDGEINFER_PROFILE=perfmap` names guest functions for `perf`, as
    // `wasmtime --profile=perfmap` does.
    if std::env::var("EDGEINFER_PROFILE").is_ok_and(|v| v == "perfmap") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }

    let mut pooling = PoolingAllocationConfig::new();
    // spin-sdk components are built of a handful of core modules, each with
    // a memory and a table; leave room for adapters.
    let per_component = 16;
    pooling.total_component_instances(pool.instances);
    pooling.total_core_instances(pool.instances * per_component);
    pooling.total_memories(pool.instances * 2);
    pooling.total_tables(pool.instances * per_component);
    pooling.total_stacks(pool.instances);
    pooling.max_core_instances_per_component(per_component * 4);
    pooling.max_memories_per_component(per_component);
    pooling.max_tables_per_component(per_component * 2);
    pooling.max_memories_per_module(2);
    pooling.max_memory_size(pool.max_memory_bytes as usize);
    pooling.max_component_instance_size(1 << 20);
    pooling.max_core_instance_size(1 << 20);
    // A fresh instance per request lives or dies by slot reuse. Keep reused
    // slots' pages mapped and, where the kernel has PAGEMAP_SCAN (6.7+), reset
    // only the pages the last instance dirtied instead of page-faulting them
    // all back in. The scan resets in place at most `keep_resident` bytes in
    // at most 32 runs (wasmtime's `MAX_REGIONS`); what lies past that is
    // decommitted, and the next instance faults it back in (1–2 µs a page
    // here), which is most of a cold call's extra time.
    pooling.pagemap_scan(wasmtime::Enabled::Auto);
    pooling.linear_memory_keep_resident(pool.keep_resident_bytes);
    pooling.table_keep_resident(64 << 10);
    pooling.async_stack_keep_resident(64 << 10);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    // Reservations must cover the largest memory allowed, plus a guard.
    config.memory_reservation(pool.max_memory_bytes.next_power_of_two().max(1 << 32));

    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("configuring the wasmtime engine")
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub struct EpochClock {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochClock {
    pub fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("epoch".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                }
            })
            .expect("spawning the epoch thread");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochClock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Precompiled artifacts in `<state>/cache/<engine>/<sha256>.cwasm`, keyed by
/// the engine's compatibility hash and the component's digest, so a second
/// start maps the code instead of compiling it again. Every rebuilt
/// component has a new digest, so the cache is kept to a size: when a new
/// artifact is written, the least recently used go first.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

/// A compiled component and the digest of the bytes it came from.
pub struct Compiled {
    pub component: Component,
    pub digest: String,
    /// True when the code came from the cache rather than a compile.
    pub cached: bool,
}

impl CompileCache {
    pub fn new(engine: &Engine, state_dir: &Path) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let dir = state_dir.join("cache").join(format!("{:016x}", h.finish()));
        Self { dir }
    }

    /// Maps the artifact precompiled earlier from a component with this
    /// digest (scale from zero); `None` if it is gone or unusable.
    pub fn load_cached(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let artifact = self.dir.join(format!("{digest}.cwasm"));
        // SAFETY: as in `load`: our own artifact, written by `precompile_component`
        // under this engine's compatibility hash; wasmtime checks its header.
        match unsafe { Component::deserialize_file(engine, &artifact) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(artifact = %artifact.display(), error = %e, "cached artifact unusable");
                None
            }
        }
    }

    pub fn load(&self, engine: &Engine, path: &Path) -> Result<Compiled> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading component {}", path.display()))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let artifact = self.dir.join(format!("{digest}.cwasm"));
        if artifact.exists() {
            // SAFETY: the file was written by `precompile_component` below, into
            // our own state dir, under the engine's compatibility hash; wasmtime
            // still checks its header before use.
            match unsafe { Component::deserialize_file(engine, &artifact) } {
                Ok(component) => {
                    mark_used(&artifact);
                    return Ok(Compiled {
                        component,
                        digest,
                        cached: true,
                    });
                }
                Err(e) => {
                    tracing::warn!(artifact = %artifact.display(), error = %e, "discarding unusable cached artifact");
                }
            }
        }
        let compiled = engine
            .precompile_component(&bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling component {}", path.display()))?;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        // Write then rename, so a concurrent or interrupted start never maps a
        // half-written file.
        let tmp = self
            .dir
            .join(format!("{digest}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &compiled).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &artifact)
            .with_context(|| format!("writing {}", artifact.display()))?;
        // The cache only grows here, so this is where it is kept to size.
        if let Some(all) = self.dir.parent() {
            let removed = prune(all, &artifact, cache_max_bytes());
            if removed > 0 {
                tracing::info!(cache = %all.display(), removed, "compile cache over its size: removed the least recently used artifacts");
            }
        }
        // SAFETY: as above; we just wrote this artifact with this engine.
        let component = unsafe { Component::deserialize_file(engine, &artifact) }
            .map_err(anyhow::Error::from)
            .with_context(|| format!("loading {}", artifact.display()))?;
        Ok(Compiled {
            component,
            digest,
            cached: false,
        })
    }
}

/// How much the compile cache may hold, across engines: `EDGEINFER_CACHE_MAX_MB`
/// if set, else 4 GiB (a model component compiles to ~70 MB).
fn cache_max_bytes() -> u64 {
    std::env::var("EDGEINFER_CACHE_MAX_MB")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(4 << 30, |mb| mb << 20)
}

/// Records a use of `artifact` in its mtime, which [`prune`] orders by
/// (access times are often not kept). Best effort: a read-only cache still works.
fn mark_used(artifact: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(artifact) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Removes artifacts under `cache` (every engine's dir), least recently used
/// first, until they take at most `max_bytes`; `keep` (the one just written)
/// is never removed. Leftovers of interrupted writes older than an hour go
/// too. Processes that have an artifact mapped keep it; one that needs it
/// again compiles it again. Returns how many files were removed.
fn prune(cache: &Path, keep: &Path, max_bytes: u64) -> usize {
    let now = std::time::SystemTime::now();
    let mut artifacts = Vec::new();
    let mut removed = 0;
    let engines = std::fs::read_dir(cache).into_iter().flatten().flatten();
    for entry in engines.flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten()) {
        let (path, Ok(meta)) = (entry.path(), entry.metadata()) else {
            continue;
        };
        let used = meta.modified().unwrap_or(now);
        match path.extension().and_then(|e| e.to_str()) {
            Some("cwasm") if path != keep => artifacts.push((used, meta.len(), path)),
            Some("cwasm") => {}
            Some("tmp")
                if now.duration_since(used).unwrap_or_default() > Duration::from_secs(3600) =>
            {
                removed += usize::from(std::fs::remove_file(&path).is_ok());
            }
            _ => {}
        }
    }
    let keep_len = std::fs::metadata(keep).map_or(0, |m| m.len());
    let mut total: u64 = keep_len + artifacts.iter().map(|(_, len, _)| len).sum::<u64>();
    artifacts.sort();
    for (_, len, path) in artifacts {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    /// A file of `len` bytes under `dir`, last used `age` ago.
    fn artifact(dir: &Path, name: &str, len: usize, age: Duration) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; len]).unwrap();
        let f = std::fs::File::options().append(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
        path
    }

    #[test]
    fn prune_removes_the_least_recently_used_first_across_engines() {
        let tmp = tempfile::tempdir().unwrap();
        let (e1, e2) = (tmp.path().join("e1"), tmp.path().join("e2"));
        let hour = Duration::from_secs(3600);
        let oldest = artifact(&e1, "a.cwasm", 100, 3 * hour);
        let older = artifact(&e2, "b.cwasm", 100, 2 * hour);
        let recent = artifact(&e1, "d.cwasm", 100, Duration::ZERO);
        // Just written, yet dated as the oldest: still kept.
        let new = artifact(&e2, "c.cwasm", 100, 4 * hour);
        let stale_tmp = artifact(&e1, "x.42.tmp", 10, 2 * hour);
        let live_tmp = artifact(&e1, "y.43.tmp", 10, Duration::ZERO);

        assert_eq!(prune(tmp.path(), &new, 250), 3);
        for gone in [&oldest, &older, &stale_tmp] {
            assert!(!gone.exists(), "{} should be gone", gone.display());
        }
        for kept in [&recent, &new, &live_tmp] {
            assert!(kept.exists(), "{} should be kept", kept.display());
        }
        // Under the limit nothing more goes.
        assert_eq!(prune(tmp.path(), &new, 250), 0);
    }

    #[test]
    fn a_cache_hit_counts_as_a_use() {
        let tmp = tempfile::tempdir().unwrap();
        let path = artifact(tmp.path(), "a.cwasm", 1, Duration::from_secs(7200));
        mark_used(&path);
        let age = SystemTime::now()
            .duration_since(std::fs::metadata(&path).unwrap().modified().unwrap())
            .unwrap_or_default();
        assert!(age < Duration::from_secs(60), "mtime is {age:?} old");
    }
}
