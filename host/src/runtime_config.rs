//! `edgeinfer.toml`: host-only settings, kept out of spin.toml so the same
//! manifest runs unchanged on Spin (as Spin keeps its runtime config apart).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::manifest::Manifest;
use crate::toml_file::{ConfigError, Source};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub component: BTreeMap<String, ComponentSettings>,
    #[serde(default)]
    pub metering: MeteringSettings,
    #[serde(default)]
    pub billing: crate::billing::BillingConfig,
    #[serde(default)]
    pub nn: NnSettings,
    /// `max_concurrency` of the components that do not set it: their fair
    /// share of the pool (see [`Scaling`]). Worked out by [`RuntimeConfig::load`].
    #[serde(skip)]
    default_concurrency: u32,
}

/// `[nn]`: models the host owns, for `wasi:nn`'s `load-by-name`, and how
/// many of those that guests load from bytes (`load`) stay loaded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NnSettings {
    #[serde(default)]
    pub models: BTreeMap<String, crate::nn::NnModelConfig>,
    /// Models loaded from bytes are kept by sha256 for the next `load` of
    /// the same bytes, up to this many; the least recently loaded goes
    /// first. 0 parses the bytes on every `load`.
    #[serde(default = "default_models_from_bytes")]
    pub max_models_from_bytes: usize,
}

impl Default for NnSettings {
    fn default() -> Self {
        Self {
            models: BTreeMap::new(),
            max_models_from_bytes: default_models_from_bytes(),
        }
    }
}

fn default_models_from_bytes() -> usize {
    8
}

/// `[metering]`: what the host records per call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeteringSettings {
    /// Write a meter record per call to the ledger.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Count wasmtime fuel, a deterministic CPU measure. It makes guest code
    /// 10-20% slower (see the README's benchmark), so when unset it is
    /// counted only if `[billing]` prices it (`per_million_fuel` above zero
    /// anywhere); records not counted carry `fuel = 0`. Read at startup only.
    pub fuel: Option<bool>,
    /// This host's name in records; defaults to the machine's host name.
    pub node: Option<String>,
}

impl Default for MeteringSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            fuel: None,
            node: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// Per-component settings; every key is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSettings {
    pub max_concurrency: Option<u32>,
    pub max_queue: Option<u32>,
    pub queue_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub max_memory_mb: Option<u64>,
    pub max_body_kb: Option<u64>,
    pub idle_unload_ms: Option<u64>,
    pub engine: Option<Engine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    Tract,
    WasiNn,
}

/// Settings with defaults applied.
#[derive(Debug, Clone)]
pub struct Limits {
    pub timeout: Duration,
    pub max_memory_bytes: u64,
    pub max_body_bytes: u64,
}

impl Limits {
    pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
    pub const DEFAULT_MAX_MEMORY_MB: u64 = 256;
    pub const DEFAULT_MAX_BODY_KB: u64 = 10_240;
    /// The pool reserves address space for this much per instance.
    pub const MAX_MEMORY_MB_CEILING: u64 = 4096;
}

/// Admission and scale-to-zero settings, with defaults applied.
///
/// Defaults:
/// - `max_concurrency`: a fair share of the engine's instance pool, which
///   all components share ([`crate::engine::pool_instances`]: 1000 unless
///   `EDGEINFER_POOL_INSTANCES` says otherwise). Components that set
///   `max_concurrency` reserve that many slots; what is left is split evenly
///   between the others (rounded down, at least 1 each). All settings
///   together may not add up to more than the pool, so a busy component can
///   never take the slots another was promised, and admission (429/503), not
///   the pool, is what turns load away.
/// - `max_queue`: 64 waiting requests beyond those running (0: no queue).
/// - `queue_timeout_ms`: 2000.
/// - `idle_unload_ms`: 300000 (5 minutes); a large value keeps a component loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaling {
    pub max_concurrency: u32,
    pub max_queue: u32,
    pub queue_timeout: Duration,
    pub idle_unload: Duration,
}

impl Scaling {
    pub const DEFAULT_MAX_QUEUE: u32 = 64;
    pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 2_000;
    pub const DEFAULT_IDLE_UNLOAD_MS: u64 = 300_000;
}

impl ComponentSettings {
    pub fn limits(&self) -> Limits {
        Limits {
            timeout: Duration::from_millis(self.timeout_ms.unwrap_or(Limits::DEFAULT_TIMEOUT_MS)),
            max_memory_bytes: self.max_memory_mb.unwrap_or(Limits::DEFAULT_MAX_MEMORY_MB) << 20,
            max_body_bytes: self.max_body_kb.unwrap_or(Limits::DEFAULT_MAX_BODY_KB) << 10,
        }
    }
}

impl RuntimeConfig {
    /// Whether the engine counts fuel: as `[metering] fuel` says, else
    /// when the billing table prices it.
    pub fn counts_fuel(&self) -> bool {
        self.metering
            .fuel
            .unwrap_or_else(|| self.billing.prices_fuel())
    }

    /// Loads `path`, checking it against the manifest. A missing file means defaults.
    pub fn load(path: &Path, manifest: &Manifest, required: bool) -> Result<Self, ConfigError> {
        let pool = crate::engine::pool_instances();
        if !required && !path.exists() {
            if manifest.components.len() > pool as usize {
                return Err(ConfigError {
                    file: manifest.path.clone(),
                    line: None,
                    column: None,
                    key: None,
                    message: format!(
                        "{} components, more than the host's pool of {pool} instances",
                        manifest.components.len()
                    ),
                });
            }
            return Ok(Self {
                default_concurrency: fair_share(pool, manifest.components.len()),
                ..Self::default()
            });
        }
        let src = Source::read(path)?;
        let mut cfg: RuntimeConfig = src.parse()?;
        for (id, settings) in &cfg.component {
            let key = format!("component.{id}");
            if !manifest.components.contains_key(id) {
                return Err(src.error_for_key(key, format!("spin.toml has no component `{id}`")));
            }
            let concurrency_msg =
                format!("must be between 1 and the host's pool of {pool} instances");
            let checks = [
                (
                    "timeout_ms",
                    settings.timeout_ms.is_some_and(|v| v == 0),
                    "must be at least 1",
                ),
                (
                    "max_memory_mb",
                    settings
                        .max_memory_mb
                        .is_some_and(|v| v == 0 || v > Limits::MAX_MEMORY_MB_CEILING),
                    "must be between 1 and 4096",
                ),
                (
                    "max_body_kb",
                    settings.max_body_kb.is_some_and(|v| v == 0),
                    "must be at least 1",
                ),
                (
                    "max_concurrency",
                    settings.max_concurrency.is_some_and(|v| v == 0 || v > pool),
                    concurrency_msg.as_str(),
                ),
                (
                    "max_queue",
                    settings.max_queue.is_some_and(|v| v > MAX_QUEUE_CEILING),
                    "must be at most 1000000",
                ),
                (
                    "queue_timeout_ms",
                    settings.queue_timeout_ms.is_some_and(|v| v == 0),
                    "must be at least 1",
                ),
                (
                    "idle_unload_ms",
                    settings.idle_unload_ms.is_some_and(|v| v == 0),
                    "must be at least 1 (a large value keeps the component loaded)",
                ),
            ];
            if let Some((field, _, msg)) = checks.iter().find(|(_, bad, _)| *bad) {
                return Err(src.error_for_key(format!("{key}.{field}"), *msg));
            }
        }

        for id in cfg.billing.component.keys() {
            if !manifest.components.contains_key(id) {
                return Err(src.error_for_key(
                    format!("billing.component.{id}"),
                    format!("spin.toml has no component `{id}`"),
                ));
            }
        }

        // The pool is shared: explicit reservations first, then at least one
        // slot for every component that leaves `max_concurrency` unset.
        let mut reserved: u64 = 0;
        for (id, settings) in &cfg.component {
            let Some(n) = settings.max_concurrency else {
                continue;
            };
            reserved += u64::from(n);
            if reserved > u64::from(pool) {
                return Err(src.error_for_key(
                    format!("component.{id}.max_concurrency"),
                    format!(
                        "max_concurrency adds up to {reserved} over the components so far, \
                         more than the host's pool of {pool} instances shared by all components"
                    ),
                ));
            }
        }
        let unset = manifest
            .components
            .keys()
            .filter(|id| cfg.settings(id).max_concurrency.is_none())
            .count();
        let left = pool - reserved as u32;
        if unset as u64 > u64::from(left) {
            let id = manifest
                .components
                .keys()
                .find(|id| {
                    cfg.component
                        .get(*id)
                        .is_some_and(|s| s.max_concurrency.is_some())
                })
                .cloned()
                .unwrap_or_default();
            return Err(src.error_for_key(
                format!("component.{id}.max_concurrency"),
                format!(
                    "the max_concurrency settings reserve {reserved} of the host's pool of \
                     {pool} instances, leaving {left} for {unset} component(s) without one; \
                     each needs at least 1"
                ),
            ));
        }
        cfg.default_concurrency = fair_share(left, unset);
        Ok(cfg)
    }

    pub fn settings(&self, component: &str) -> ComponentSettings {
        self.component.get(component).cloned().unwrap_or_default()
    }

    /// Admission and scale-to-zero settings of `component`, defaults applied.
    pub fn scaling(&self, component: &str) -> Scaling {
        let s = self.component.get(component);
        let get = |f: fn(&ComponentSettings) -> Option<u64>| s.and_then(f);
        Scaling {
            max_concurrency: s
                .and_then(|s| s.max_concurrency)
                .unwrap_or(self.default_concurrency.max(1)),
            max_queue: s
                .and_then(|s| s.max_queue)
                .unwrap_or(Scaling::DEFAULT_MAX_QUEUE),
            queue_timeout: Duration::from_millis(
                get(|s| s.queue_timeout_ms).unwrap_or(Scaling::DEFAULT_QUEUE_TIMEOUT_MS),
            ),
            idle_unload: Duration::from_millis(
                get(|s| s.idle_unload_ms).unwrap_or(Scaling::DEFAULT_IDLE_UNLOAD_MS),
            ),
        }
    }
}

/// Sanity bound for `max_queue`: waiting requests cost memory (their bodies).
const MAX_QUEUE_CEILING: u32 = 1_000_000;

/// `left` slots split evenly between `components` (rounded down, at least 1).
fn fair_share(left: u32, components: usize) -> u32 {
    match u32::try_from(components) {
        Ok(0) => left.max(1),
        Ok(n) => (left / n).max(1),
        Err(_) => 1,
    }
}
