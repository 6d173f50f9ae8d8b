//! An application ready to serve: the manifest and runtime config checked,
//! variables resolved, files staged, and every component compiled and
//! pre-instantiated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use sha2::Digest as _;
use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::admission::Admission;
use crate::engine::{CompileCache, PoolSettings};
use crate::invoke::Runnable;
use crate::manifest::{Component, FileMount, Manifest, RouteTarget, StaticResponse};
use crate::metrics;
use crate::outbound::{HostPattern, OutboundPolicy};
use crate::routes::Router;
use crate::runtime_config::{Limits, RuntimeConfig, Scaling};
use crate::sandbox::{self, Capabilities, InstanceState};

/// Where a route leads.
#[derive(Debug, Clone)]
pub enum Target {
    Component(String),
    Static(StaticResponse),
}

/// Everything known before any code is compiled; cheap, and all errors here
/// are the user's to fix in spin.toml, edgeinfer.toml or the environment.
pub struct Plan {
    pub manifest: Manifest,
    pub runtime: RuntimeConfig,
    pub variables: BTreeMap<String, String>,
    pub router: Router<Target>,
}

impl Plan {
    pub fn load(manifest_path: &Path, runtime_config: Option<&Path>) -> Result<Self> {
        let manifest = Manifest::load(manifest_path)?;
        let (rc_path, required) = runtime_config_path(&manifest.dir, runtime_config);
        let runtime = RuntimeConfig::load(&rc_path, &manifest, required)?;
        let variables = crate::variables::resolve(&manifest.variables, |k| std::env::var(k).ok())
            .with_context(|| format!("{}", manifest.path.display()))?;
        let router = Router::new(
            &manifest.base,
            manifest.routes.iter().map(|r| {
                let target = match &r.target {
                    RouteTarget::Component(c) => Target::Component(c.clone()),
                    RouteTarget::Static(s) => Target::Static(s.clone()),
                };
                (r.raw.clone(), target)
            }),
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.path.display()))?;
        Ok(Self {
            manifest,
            runtime,
            variables,
            router,
        })
    }

    /// The given state dir, or `.edgeinfer` beside the manifest; created if missing.
    pub fn state_dir(&self, given: Option<PathBuf>) -> Result<PathBuf> {
        let dir = given.unwrap_or_else(|| self.manifest.dir.join(".edgeinfer"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating state dir {}", dir.display()))?;
        Ok(dir)
    }

    /// Whether edgeinfer.toml has `component` run with `engine = "wasi-nn"`.
    pub fn serves_wasi_nn(&self, component: &str) -> bool {
        self.runtime.settings(component).engine == Some(crate::runtime_config::Engine::WasiNn)
    }

    /// The file served for a component: its `source`, or with
    /// `engine = "wasi-nn"` its wasi:nn build (`tool.edgeinfer.wasi_nn`).
    pub fn served_source(&self, id: &str, c: &Component) -> Result<PathBuf> {
        if !self.serves_wasi_nn(id) {
            return Ok(c.source.clone());
        }
        c.wasi_nn.clone().with_context(|| {
            format!(
                "component `{id}` has engine = \"wasi-nn\" in edgeinfer.toml, but spin.toml \
                 gives it no wasi:nn build ([component.{id}.tool.edgeinfer] wasi_nn = \"…\")"
            )
        })
    }

    /// The pool must fit the largest per-instance memory any component may use.
    pub fn pool_settings(&self) -> PoolSettings {
        let max_memory_bytes = self
            .manifest
            .components
            .keys()
            .map(|id| self.runtime.settings(id).limits().max_memory_bytes)
            .max()
            .unwrap_or(Limits::DEFAULT_MAX_MEMORY_MB << 20);
        PoolSettings {
            max_memory_bytes,
            instances: crate::engine::pool_instances(),
            ..PoolSettings::default()
        }
    }
}

/// Where the runtime config is read from: the given file (which must exist),
/// else `./edgeinfer.toml` as CONTRACTS.md says, else the one beside the
/// manifest. The flag says whether the file must exist.
pub fn runtime_config_path(manifest_dir: &Path, given: Option<&Path>) -> (PathBuf, bool) {
    match given {
        Some(p) => (p.to_path_buf(), true),
        None => {
            let here = PathBuf::from("edgeinfer.toml");
            let path = if here.exists() {
                here
            } else {
                manifest_dir.join("edgeinfer.toml")
            };
            (path, false)
        }
    }
}

/// A component ready to take requests. Its compiled code is dropped after
/// `idle_unload_ms` without calls (scale to zero) and mapped again from the
/// compile cache by the next call.
pub struct Loaded {
    pub id: String,
    pub digest: String,
    /// For the meter: the model served (`EDGEINFER_MODEL_NAME`, else the
    /// component id) and the sha256 of its `.onnx` file when it is mounted
    /// rather than baked in (a baked model is covered by `digest`).
    pub model: String,
    pub model_digest: Option<String>,
    pub rates: crate::billing::Rates,
    pub limits: Limits,
    pub scaling: Scaling,
    pub admission: Arc<Admission>,
    /// `None` while scaled to zero.
    code: Mutex<Option<Arc<Runnable>>>,
    /// Held while loading from zero, so a burst loads once.
    loading: tokio::sync::Mutex<()>,
    loader: Arc<Loader>,
}

/// What it takes to load a component again from the compile cache.
struct Loader {
    engine: Engine,
    cache: CompileCache,
    linker: Arc<Linker<InstanceState>>,
    caps: Capabilities,
    source: PathBuf,
    timeout: Duration,
}

impl Loaded {
    /// The component's code, loading it first if it was scaled to zero (the
    /// flag says so: a cold start). Concurrent callers share one load.
    pub async fn runnable(&self) -> Result<(Arc<Runnable>, bool)> {
        if let Some(r) = self.loaded() {
            return Ok((r, false));
        }
        let _single_flight = self.loading.lock().await;
        if let Some(r) = self.loaded() {
            return Ok((r, false));
        }
        let started = Instant::now();
        let loader = self.loader.clone();
        let digest = self.digest.clone();
        let id = self.id.clone();
        let runnable = tokio::task::spawn_blocking(move || loader.reload(&id, &digest))
            .await
            .context("loading task")??;
        let runnable = Arc::new(runnable);
        *self.code.lock().expect("code lock") = Some(runnable.clone());
        let took = started.elapsed();
        let m = metrics::global();
        let label = metrics::component(&self.id);
        m.cold_starts.get_or_create(&label).inc();
        m.cold_start_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        m.loaded.get_or_create(&label).set(1);
        tracing::info!(component = %self.id, us = took.as_micros() as u64, "cold start: component loaded");
        Ok((runnable, true))
    }

    /// The code if it is loaded.
    pub fn loaded(&self) -> Option<Arc<Runnable>> {
        self.code.lock().expect("code lock").clone()
    }

    /// Drops the compiled code and `InstancePre` if the component has been
    /// idle for `idle_unload_ms`. Instances still running keep their own
    /// reference; the precompiled artifact stays in the on-disk cache.
    fn unload_if_idle(&self) -> bool {
        if !self.admission.is_idle() || self.admission.idle_for() < self.scaling.idle_unload {
            return false;
        }
        let Ok(_not_loading) = self.loading.try_lock() else {
            return false;
        };
        let dropped = self.code.lock().expect("code lock").take();
        if dropped.is_none() {
            return false;
        }
        drop(dropped);
        metrics::global()
            .loaded
            .get_or_create(&metrics::component(&self.id))
            .set(0);
        tracing::info!(component = %self.id, idle_ms = self.admission.idle_for().as_millis() as u64, "scaled to zero");
        true
    }
}

impl Loader {
    /// Maps the precompiled artifact again; compiles from `source` only if
    /// the cache lost it.
    fn reload(&self, id: &str, digest: &str) -> Result<Runnable> {
        let component = match self.cache.load_cached(&self.engine, digest) {
            Some(c) => c,
            None => {
                let compiled = self
                    .cache
                    .load(&self.engine, &self.source)
                    .with_context(|| format!("component `{id}`"))?;
                if compiled.digest != digest {
                    tracing::warn!(component = %id, "the component's file changed since the app was loaded; serving the new one");
                }
                compiled.component
            }
        };
        Runnable::new(&self.linker, &component, self.caps.clone(), self.timeout)
            .with_context(|| format!("component `{id}` ({})", self.source.display()))
    }
}

pub struct App {
    pub name: String,
    pub router: Router<Target>,
    pub components: BTreeMap<String, Arc<Loaded>>,
    /// Copies of `files` globs, removed when the app is dropped.
    _staged: Vec<Staged>,
    /// Scales idle components to zero; stopped when the app is replaced or dropped.
    reaper: Mutex<Option<AbortOnDrop>>,
}

impl App {
    /// Compiles (or maps from the cache) and pre-instantiates every component.
    pub fn load(plan: Plan, engine: &Engine, state_dir: &Path) -> Result<Self> {
        Self::load_after(plan, engine, state_dir, None)
    }

    /// [`Self::load`] for a hot reload: admission gates of `previous` whose
    /// limits did not change are kept, so limits hold across the swap.
    pub fn load_after(
        plan: Plan,
        engine: &Engine,
        state_dir: &Path,
        previous: Option<&App>,
    ) -> Result<Self> {
        let cache = CompileCache::new(engine, state_dir);
        let linker = Arc::new(sandbox::linker(engine)?);
        sweep_staged(state_dir);
        let mut staged = Vec::new();
        let mut prepared = Vec::new();
        // Host-owned models: those of [nn.models], plus the model of every
        // component that runs with `engine = "wasi-nn"`.
        let mut nn_models = plan.runtime.nn.models.clone();
        for (id, c) in &plan.manifest.components {
            let settings = plan.runtime.settings(id);
            let limits = settings.limits();
            let caps = plan
                .capabilities(c, &limits, state_dir, &mut staged)
                .with_context(|| format!("component `{id}`"))?;
            let model = c
                .environment
                .get("EDGEINFER_MODEL_NAME")
                .cloned()
                .unwrap_or_else(|| id.clone());
            let model_file = model_file(&caps.mounts);
            if plan.serves_wasi_nn(id)
                && let (Some(file), false) = (&model_file, nn_models.contains_key(&model))
            {
                nn_models.insert(
                    model.clone(),
                    crate::nn::NnModelConfig {
                        path: file.clone(),
                        shapes: c
                            .environment
                            .get("EDGEINFER_INPUT_SHAPES")
                            .map(|s| s.split(';').map(str::to_string).collect())
                            .unwrap_or_default(),
                        ..Default::default()
                    },
                );
            }
            let source = plan.served_source(id, c)?;
            prepared.push((id, limits, caps, model, model_file, source));
        }
        // Loaded once here, shared by every instance.
        let nn = Arc::new(crate::nn::load_models(
            &nn_models,
            &plan.manifest.dir,
            plan.runtime.nn.max_models_from_bytes,
        )?);
        let mut components = BTreeMap::new();
        for (id, limits, mut caps, model, model_file, source) in prepared {
            let scaling = plan.runtime.scaling(id);
            caps.nn = nn.clone();
            let started = Instant::now();
            let compiled = cache
                .load(engine, &source)
                .with_context(|| format!("component `{id}`"))?;
            let runnable =
                Runnable::new(&linker, &compiled.component, caps.clone(), limits.timeout)
                    .with_context(|| format!("component `{id}` ({})", source.display()))?;
            tracing::info!(
                component = %id,
                cached = compiled.cached,
                ms = started.elapsed().as_millis() as u64,
                "component ready"
            );
            let model_digest = model_file
                .map(|f| sha256_file(&f))
                .transpose()
                .with_context(|| format!("component `{id}`: hashing its model"))?;
            let admission = previous
                .and_then(|p| p.components.get(id))
                .map(|l| l.admission.clone())
                .filter(|a| a.fits(id, &scaling))
                .unwrap_or_else(|| Admission::new(id, &scaling));
            let loader = Arc::new(Loader {
                engine: engine.clone(),
                cache: cache.clone(),
                linker: linker.clone(),
                caps,
                source,
                timeout: limits.timeout,
            });
            components.insert(
                id.clone(),
                Arc::new(Loaded {
                    id: id.clone(),
                    digest: compiled.digest,
                    model,
                    model_digest,
                    rates: plan.runtime.billing.rates(id),
                    limits,
                    scaling,
                    admission,
                    code: Mutex::new(Some(Arc::new(runnable))),
                    loading: tokio::sync::Mutex::new(()),
                    loader,
                }),
            );
        }
        let reaper = spawn_reaper(components.values().cloned().collect());
        Ok(Self {
            name: plan.manifest.name,
            router: plan.router,
            components,
            _staged: staged,
            reaper: Mutex::new(reaper),
        })
    }

    /// Marks every component loaded in `/metrics`, and forgets components
    /// that `previous` had and this app does not. Called once the app serves;
    /// `previous` (which may live on while its last calls finish) stops
    /// scaling its components to zero, so it cannot report on this app's.
    pub fn publish(&self, previous: Option<&App>) {
        if let Some(p) = previous {
            p.reaper.lock().expect("reaper lock").take();
        }
        let m = metrics::global();
        for id in self.components.keys() {
            m.loaded.get_or_create(&metrics::component(id)).set(1);
        }
        for id in previous.iter().flat_map(|p| p.components.keys()) {
            if !self.components.contains_key(id) {
                m.loaded.remove(&metrics::component(id));
            }
        }
    }
}

/// The first `.onnx` file at the top of a mounted directory: the model a
/// generic function serves.
fn model_file(mounts: &[(PathBuf, String)]) -> Option<PathBuf> {
    mounts.iter().find_map(|(dir, _)| {
        let mut models: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "onnx") && p.is_file())
            .collect();
        models.sort();
        models.into_iter().next()
    })
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut file, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checks for idle components often enough to unload each within about a
/// quarter of its `idle_unload_ms`. Needs a tokio runtime; without one (a
/// caller that only wants the code compiled) nothing is ever unloaded.
fn spawn_reaper(components: Vec<Arc<Loaded>>) -> Option<AbortOnDrop> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let shortest = components.iter().map(|c| c.scaling.idle_unload).min()?;
    let tick = (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    Some(AbortOnDrop(handle.spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            for c in &components {
                c.unload_if_idle();
            }
        }
    })))
}

impl Plan {
    /// What an instance of `c` may touch, with every template rendered.
    pub fn capabilities(
        &self,
        c: &Component,
        limits: &Limits,
        state_dir: &Path,
        staged: &mut Vec<Staged>,
    ) -> Result<Capabilities> {
        let variables = c
            .variables
            .iter()
            .map(|(k, t)| (k.clone(), t.render(&self.variables)))
            .collect();
        let mut allowed = Vec::new();
        for tpl in &c.allowed_outbound_hosts {
            let text = tpl.render(&self.variables);
            allowed.push(
                HostPattern::parse(&text)
                    .map_err(|e| anyhow::anyhow!("allowed_outbound_hosts: {e}"))?,
            );
        }
        Ok(Capabilities {
            environment: c.environment.clone().into_iter().collect(),
            mounts: stage_files(c, &self.manifest.dir, state_dir, staged)?,
            variables: Arc::new(variables),
            outbound: OutboundPolicy::new(allowed),
            max_memory_bytes: limits.max_memory_bytes,
            nn: Arc::new(crate::nn::Registry::empty()),
        })
    }
}

/// Resolves `files`: directory mappings are mounted as they are; glob matches
/// are copied into a staging directory mounted at `/`, as Spin does.
fn stage_files(
    c: &Component,
    app_dir: &Path,
    state_dir: &Path,
    staged: &mut Vec<Staged>,
) -> Result<Vec<(PathBuf, String)>> {
    let mut mounts = Vec::new();
    // Private to this process, so several hosts may share one state dir.
    let staging_dir = Staged::new(state_dir, &c.id)
        .with_context(|| format!("creating a staging dir in {}", state_dir.display()))?;
    let staging = staging_dir.dir.clone();
    let excluded: Vec<glob::Pattern> = c
        .exclude_files
        .iter()
        .map(|p| glob::Pattern::new(p).with_context(|| format!("exclude_files: bad glob `{p}`")))
        .collect::<Result<_>>()?;
    let mut staged_any = false;
    for f in &c.files {
        match f {
            FileMount::Dir(d) => {
                let src = app_dir.join(&d.source);
                if !src.is_dir() {
                    bail!("files: `{}` is not a directory", src.display());
                }
                mounts.push((src, d.destination.clone()));
            }
            FileMount::Glob(pattern) => {
                let full = app_dir.join(pattern);
                let full = full.to_string_lossy();
                let mut matched = false;
                for entry in
                    glob::glob(&full).with_context(|| format!("files: bad glob `{pattern}`"))?
                {
                    let path = entry?;
                    if !path.is_file() {
                        continue;
                    }
                    let rel = path.strip_prefix(app_dir).unwrap_or(&path);
                    if excluded.iter().any(|p| p.matches_path(rel)) {
                        continue;
                    }
                    let dest = staging.join(rel);
                    std::fs::create_dir_all(dest.parent().unwrap_or(&staging))?;
                    std::fs::copy(&path, &dest)
                        .with_context(|| format!("staging {}", path.display()))?;
                    matched = true;
                    staged_any = true;
                }
                if !matched {
                    tracing::warn!(component = %c.id, pattern = %pattern, "files pattern matched nothing");
                }
            }
        }
    }
    if staged_any {
        mounts.push((staging, "/".to_string()));
        staged.push(staging_dir);
    }
    Ok(mounts)
}

/// A private copy of a component's `files` globs. Removed when dropped; if
/// its host dies first, by the next host that loads an app on the same state
/// dir ([`sweep_staged`]), which tells a dead owner from a live one by the
/// lock on the copy's `.lock` file beside it.
pub struct Staged {
    dir: PathBuf,
    /// `<dir>.lock`: created and locked before the dir, removed after it.
    _lock: tempfile::NamedTempFile,
}

impl Staged {
    fn new(state_dir: &Path, id: &str) -> std::io::Result<Self> {
        let lock = tempfile::Builder::new()
            .prefix(&format!("files-{id}-"))
            .suffix(".lock")
            .tempfile_in(state_dir)?;
        lock.as_file().lock()?;
        let dir = copy_of(lock.path()).ok_or_else(|| std::io::Error::other("unnamed lock file"))?;
        std::fs::create_dir(&dir)?;
        Ok(Self { dir, _lock: lock })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Before `_lock` goes: a sweep never finds the copy without its lock.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The copy a `.lock` file guards (`None` if `path` is not a lock file).
fn copy_of(lock: &Path) -> Option<PathBuf> {
    let name = lock.file_name()?.to_str()?.strip_suffix(".lock")?;
    Some(lock.with_file_name(name))
}

/// The lock file of a copy.
fn lock_of(copy: &Path) -> PathBuf {
    let mut name = copy.as_os_str().to_owned();
    name.push(".lock");
    name.into()
}

/// Removes the `files` copies in `state_dir` whose host died without
/// removing them: those whose lock nobody holds, and those without a lock
/// file (left by hosts from before lock files). Anything younger than a
/// minute is left alone, so a copy being created right now is never taken.
fn sweep_staged(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    let old = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(60))
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("files-") || !old(&path) {
            continue;
        }
        let removed = if let Some(copy) = copy_of(&path) {
            let Ok(lock) = std::fs::File::options().write(true).open(&path) else {
                continue;
            };
            if lock.try_lock().is_err() {
                continue; // its host is alive
            }
            let _ = std::fs::remove_dir_all(copy);
            std::fs::remove_file(&path)
        } else if path.is_dir() && !lock_of(&path).exists() {
            std::fs::remove_dir_all(&path)
        } else {
            continue;
        };
        if removed.is_ok() {
            tracing::info!(path = %path.display(), "removed a files copy its host left behind");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn age(path: &Path, by: Duration) {
        let f = std::fs::File::open(path).unwrap();
        f.set_modified(SystemTime::now() - by).unwrap();
    }

    fn copy(state: &Path, name: &str, locked: Option<Duration>) -> PathBuf {
        let dir = state.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.txt"), "a").unwrap();
        if let Some(lock_age) = locked {
            std::fs::write(lock_of(&dir), "").unwrap();
            age(&lock_of(&dir), lock_age);
        }
        age(&dir, Duration::from_secs(7200));
        dir
    }

    #[test]
    fn a_sweep_takes_only_the_copies_of_dead_hosts() {
        let state = tempfile::tempdir().unwrap();
        let hours = Duration::from_secs(7200);
        // Its host died: the lock file is there, but nobody holds it.
        let dead = copy(state.path(), "files-a-dead", Some(hours));
        // Left by a host from before lock files.
        let legacy = copy(state.path(), "files-b.v2-legacy", None);
        // Unlocked but just made: a host may be about to lock it.
        let fresh = copy(state.path(), "files-c-fresh", Some(Duration::ZERO));
        // A live one, made as `stage_files` makes it, and old.
        let live = Staged::new(state.path(), "d").unwrap();
        std::fs::write(live.dir.join("a.txt"), "a").unwrap();
        age(&lock_of(&live.dir), hours);
        age(&live.dir, hours);
        let other = state.path().join("cache");
        std::fs::create_dir(&other).unwrap();
        age(&other, hours);

        sweep_staged(state.path());

        for gone in [&dead, &lock_of(&dead), &legacy] {
            assert!(!gone.exists(), "{} should be gone", gone.display());
        }
        for kept in [&fresh, &live.dir, &lock_of(&live.dir), &other] {
            assert!(kept.exists(), "{} should be kept", kept.display());
        }
        let live_dir = live.dir.clone();
        drop(live);
        assert!(!live_dir.exists() && !lock_of(&live_dir).exists());
    }
}
