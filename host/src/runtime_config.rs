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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
    /// Loads `path`, checking it against the manifest. A missing file means defaults.
    pub fn load(path: &Path, manifest: &Manifest, required: bool) -> Result<Self, ConfigError> {
        if !required && !path.exists() {
            return Ok(Self::default());
        }
        let src = Source::read(path)?;
        let cfg: RuntimeConfig = src.parse()?;
        for (id, settings) in &cfg.component {
            let key = format!("component.{id}");
            if !manifest.components.contains_key(id) {
                return Err(src.error_for_key(key, format!("spin.toml has no component `{id}`")));
            }
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
                    settings.max_concurrency.is_some_and(|v| v == 0),
                    "must be at least 1",
                ),
            ];
            if let Some((field, _, msg)) = checks.iter().find(|(_, bad, _)| *bad) {
                return Err(src.error_for_key(format!("{key}.{field}"), *msg));
            }
            // Accepted by the schema (CONTRACTS.md) but not enforced yet: refuse
            // rather than let a limit the user relies on silently do nothing.
            let pending = [
                ("max_concurrency", settings.max_concurrency.is_some()),
                ("max_queue", settings.max_queue.is_some()),
                ("queue_timeout_ms", settings.queue_timeout_ms.is_some()),
                ("idle_unload_ms", settings.idle_unload_ms.is_some()),
            ];
            if let Some((field, _)) = pending.iter().find(|(_, set)| *set) {
                return Err(src.error_for_key(
                    format!("{key}.{field}"),
                    "admission control and scale-to-zero are not implemented yet",
                ));
            }
            if settings.engine == Some(Engine::WasiNn) {
                return Err(src.error_for_key(
                    format!("{key}.engine"),
                    "the wasi-nn engine is not available in this build yet",
                ));
            }
        }
        Ok(cfg)
    }

    pub fn settings(&self, component: &str) -> ComponentSettings {
        self.component.get(component).cloned().unwrap_or_default()
    }
}
