//! `[nn.models.NAME]` in edgeinfer.toml: a model the host owns.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::{Model, TractBackend};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NnModelConfig {
    /// The .onnx file, relative to the manifest's directory.
    pub path: std::path::PathBuf,
    #[serde(default)]
    pub backend: BackendKind,
    #[serde(default)]
    pub target: Target,
    /// Input shapes to plan at load, `x=1,3,224,224` (one per input).
    #[serde(default)]
    pub shapes: Vec<String>,
    /// Calls run together at most; 1 turns batching off.
    #[serde(default = "one")]
    pub max_batch_size: u32,
    /// How long the first call of a batch waits for others.
    #[serde(default = "default_delay")]
    pub max_queue_delay_us: u64,
}

impl Default for NnModelConfig {
    fn default() -> Self {
        Self {
            path: Default::default(),
            backend: BackendKind::default(),
            target: Target::default(),
            shapes: Vec::new(),
            max_batch_size: one(),
            max_queue_delay_us: default_delay(),
        }
    }
}

fn one() -> u32 {
    1
}

fn default_delay() -> u64 {
    500
}

const MAX_BATCH_CEILING: u32 = 1024;
const MAX_DELAY_CEILING_US: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    #[default]
    Tract,
    Onnxruntime,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    #[default]
    Cpu,
    Gpu,
}

impl NnModelConfig {
    /// Loads the model, or says exactly why not. A request this build cannot
    /// meet (a GPU, ONNX Runtime, batching) is an error, never a fallback.
    pub fn load(&self, name: &str, base_dir: &Path) -> Result<Model> {
        if self.target == Target::Gpu {
            bail!(
                "target = \"gpu\" needs the onnxruntime backend with a CUDA execution provider; \
                 this host has no GPU backend (build with `--features onnxruntime` and a CUDA \
                 build of ONNX Runtime), so model `{name}` cannot run on a GPU here"
            );
        }
        if self.backend == BackendKind::Onnxruntime {
            bail!(
                "backend = \"onnxruntime\" is not in this build of edgeinfer (the `onnxruntime` \
                 cargo feature is not implemented yet); use backend = \"tract\""
            );
        }
        if self.max_batch_size == 0 || self.max_batch_size > MAX_BATCH_CEILING {
            bail!("max_batch_size must be between 1 (no batching) and {MAX_BATCH_CEILING}");
        }
        if self.max_queue_delay_us > MAX_DELAY_CEILING_US {
            bail!("max_queue_delay_us must be at most {MAX_DELAY_CEILING_US} (1 s)");
        }
        let path = base_dir.join(&self.path);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let backend = TractBackend::from_onnx(&bytes, &self.shapes)
            .with_context(|| format!("loading {} with tract", path.display()))?;
        self.with_backend(name, std::sync::Arc::new(backend))
    }

    /// The model around a backend already loaded, batching as configured.
    pub fn with_backend(
        &self,
        name: &str,
        backend: std::sync::Arc<dyn super::Backend>,
    ) -> Result<Model> {
        let batcher = (self.max_batch_size > 1)
            .then(|| {
                super::batch::Batcher::start(
                    name,
                    backend.clone(),
                    self.max_batch_size as usize,
                    std::time::Duration::from_micros(self.max_queue_delay_us),
                )
            })
            .transpose()?;
        Ok(Model {
            name: name.to_string(),
            backend,
            target: self.target,
            batcher,
        })
    }
}
