//! An application ready to serve: the manifest and runtime config checked,
//! variables resolved, files staged, and every component compiled and
//! pre-instantiated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use wasmtime::Engine;

use crate::engine::{CompileCache, PoolSettings};
use crate::invoke::Runnable;
use crate::manifest::{Component, FileMount, Manifest, RouteTarget, StaticResponse};
use crate::outbound::{HostPattern, OutboundPolicy};
use crate::routes::Router;
use crate::runtime_config::{Limits, RuntimeConfig};
use crate::sandbox::{self, Capabilities};

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
        let (rc_path, required) = match runtime_config {
            Some(p) => (p.to_path_buf(), true),
            // As CONTRACTS.md says, `./edgeinfer.toml`; else the one beside the manifest.
            None => {
                let here = PathBuf::from("edgeinfer.toml");
                let path = if here.exists() {
                    here
                } else {
                    manifest.dir.join("edgeinfer.toml")
                };
                (path, false)
            }
        };
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
            ..PoolSettings::default()
        }
    }
}

/// A component ready to take requests.
pub struct Loaded {
    pub id: String,
    pub digest: String,
    pub limits: Limits,
    pub runnable: Arc<Runnable>,
}

pub struct App {
    pub name: String,
    pub router: Router<Target>,
    pub components: BTreeMap<String, Loaded>,
    /// Copies of `files` globs, removed when the app is dropped.
    _staged: Vec<tempfile::TempDir>,
}

impl App {
    /// Compiles (or maps from the cache) and pre-instantiates every component.
    pub fn load(plan: Plan, engine: &Engine, state_dir: &Path) -> Result<Self> {
        let cache = CompileCache::new(engine, state_dir);
        let linker = sandbox::linker(engine)?;
        let mut components = BTreeMap::new();
        let mut staged = Vec::new();
        for (id, c) in &plan.manifest.components {
            let limits = plan.runtime.settings(id).limits();
            let caps = plan
                .capabilities(c, &limits, state_dir, &mut staged)
                .with_context(|| format!("component `{id}`"))?;
            let started = std::time::Instant::now();
            let compiled = cache
                .load(engine, &c.source)
                .with_context(|| format!("component `{id}`"))?;
            let runnable = Runnable::new(&linker, &compiled.component, caps, limits.timeout)
                .with_context(|| format!("component `{id}` ({})", c.source.display()))?;
            tracing::info!(
                component = %id,
                cached = compiled.cached,
                ms = started.elapsed().as_millis() as u64,
                "component ready"
            );
            components.insert(
                id.clone(),
                Loaded {
                    id: id.clone(),
                    digest: compiled.digest,
                    limits,
                    runnable: Arc::new(runnable),
                },
            );
        }
        Ok(Self {
            name: plan.manifest.name,
            router: plan.router,
            components,
            _staged: staged,
        })
    }
}

impl Plan {
    /// What an instance of `c` may touch, with every template rendered.
    pub fn capabilities(
        &self,
        c: &Component,
        limits: &Limits,
        state_dir: &Path,
        staged: &mut Vec<tempfile::TempDir>,
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
        })
    }
}

/// Resolves `files`: directory mappings are mounted as they are; glob matches
/// are copied into a staging directory mounted at `/`, as Spin does.
fn stage_files(
    c: &Component,
    app_dir: &Path,
    state_dir: &Path,
    staged: &mut Vec<tempfile::TempDir>,
) -> Result<Vec<(PathBuf, String)>> {
    let mut mounts = Vec::new();
    // Private to this process, so several hosts may share one state dir.
    let staging_dir = tempfile::Builder::new()
        .prefix(&format!("files-{}-", c.id))
        .tempdir_in(state_dir)
        .with_context(|| format!("creating a staging dir in {}", state_dir.display()))?;
    let staging = staging_dir.path().to_path_buf();
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
