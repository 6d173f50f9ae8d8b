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
    /// Whether batching must first prove it pays (see `nn::batch`).
    #[serde(default)]
    pub batching: Batching,
    /// ONNX Runtime's shared library (`backend = "onnxruntime"`); else
    /// `ORT_DYLIB_PATH`. Relative to the manifest's directory.
    #[serde(default)]
    pub library: Option<std::path::PathBuf>,
    /// Threads one inference may use (ONNX Runtime's intra-op pool); by
    /// default one per core.
    #[serde(default)]
    pub threads: Option<usize>,
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
            batching: Batching::default(),
            library: None,
            threads: None,
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    #[default]
    Tract,
    Onnxruntime,
}

/// `batching = "auto"` (the default): the batcher tries stacking on its first
/// big batches and turns it off if a stacked call costs about as much as a
/// single run. `"always"`: stacked whatever it costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Batching {
    #[default]
    Auto,
    Always,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    #[default]
    Cpu,
    Gpu,
}

impl NnModelConfig {
    /// Loads the model, or says exactly why not. A request this build or
    /// machine cannot meet (a GPU, ONNX Runtime) is an error, never a fallback.
    pub fn load(&self, name: &str, base_dir: &Path) -> Result<Model> {
        if self.max_batch_size == 0 || self.max_batch_size > MAX_BATCH_CEILING {
            bail!("max_batch_size must be between 1 (no batching) and {MAX_BATCH_CEILING}");
        }
        if self.max_queue_delay_us > MAX_DELAY_CEILING_US {
            bail!("max_queue_delay_us must be at most {MAX_DELAY_CEILING_US} (1 s)");
        }
        if self.threads == Some(0) {
            bail!("threads must be at least 1");
        }
        let path = base_dir.join(&self.path);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let backend = self
            .backend(&bytes, base_dir)
            .with_context(|| format!("loading {}", path.display()))?;
        self.with_backend(name, backend)
    }

    /// The configured backend with `model` (ONNX bytes) loaded.
    pub fn backend(
        &self,
        model: &[u8],
        base_dir: &Path,
    ) -> Result<std::sync::Arc<dyn super::Backend>> {
        Ok(match self.backend {
            BackendKind::Tract => {
                if self.target == Target::Gpu {
                    bail!(
                        "target = \"gpu\" needs backend = \"onnxruntime\" (tract runs on the \
                         CPU only)"
                    );
                }
                std::sync::Arc::new(
                    TractBackend::from_onnx(model, &self.shapes).context("with tract")?,
                )
            }
            BackendKind::Onnxruntime => self
                .onnxruntime(model, base_dir)
                .context("with ONNX Runtime")?,
        })
    }

    #[cfg(feature = "onnxruntime")]
    fn onnxruntime(
        &self,
        bytes: &[u8],
        base_dir: &Path,
    ) -> Result<std::sync::Arc<dyn super::Backend>> {
        let library = self.library.as_ref().map(|l| base_dir.join(l));
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Ok(std::sync::Arc::new(super::onnxruntime::OrtBackend::load(
            bytes,
            library.as_deref(),
            self.target,
            threads,
        )?))
    }

    #[cfg(not(feature = "onnxruntime"))]
    fn onnxruntime(&self, _: &[u8], _: &Path) -> Result<std::sync::Arc<dyn super::Backend>> {
        bail!(
            "backend = \"onnxruntime\" is not in this build of edgeinfer; build it with \
             `--features onnxruntime` (or `--features gpu` for CUDA and TensorRT)"
        )
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
                    self.batching,
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
