//! ONNX Runtime as a `wasi:nn` backend (cargo feature `onnxruntime`).
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`), from the
//! model's `library` or `ORT_DYLIB_PATH`; one process loads one library.
//! `target = "gpu"` registers the CUDA execution provider (and TensorRT when
//! the library has it); if CUDA cannot be registered, loading fails and says
//! why. There is no quiet fallback to the CPU.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context as _, Result, bail};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use super::NnError;
use super::backend::{Backend, NnTensor};
use super::bindings::wasi::nn::tensor::TensorType;
use super::config::Target;

/// The library this process loaded, and its environment (kept alive here).
static RUNTIME: OnceLock<Result<(PathBuf, ort::environment::Environment), String>> =
    OnceLock::new();

/// Loads ONNX Runtime once; a second, different library is an error.
fn runtime(
    library: Option<&Path>,
) -> Result<(&'static Path, &'static ort::environment::Environment)> {
    let wanted = match library {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).context(
            "ONNX Runtime's library is not set: give `library = \"…/libonnxruntime.so\"` in the \
             model's [nn.models] table or set ORT_DYLIB_PATH",
        )?,
    };
    let loaded = RUNTIME.get_or_init(|| {
        let env = ort::init_from(&wanted)
            .map_err(|e| format!("loading ONNX Runtime from {}: {e}", wanted.display()))?
            .with_name("edgeinfer")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("starting ONNX Runtime from {}: {e}", wanted.display()))?;
        Ok((wanted.clone(), env))
    });
    match loaded {
        Ok((path, env)) if *path == wanted => Ok((path, env)),
        Ok((path, _)) => bail!(
            "ONNX Runtime is already loaded from {}; one process loads one library, not also {}",
            path.display(),
            wanted.display()
        ),
        Err(e) => bail!("{e}"),
    }
}

/// One model in an ONNX Runtime session.
pub struct OrtBackend {
    /// `ort` runs a session through `&mut`; each run uses `threads` threads,
    /// so runs of one model take turns (as one Triton model instance does).
    session: Mutex<Session>,
    inputs: Vec<(String, TensorElementType, Vec<i64>)>,
}

impl OrtBackend {
    pub fn load(
        bytes: &[u8],
        library: Option<&Path>,
        target: Target,
        threads: usize,
    ) -> Result<Self> {
        let (library, env) = runtime(library)?;
        let mut builder = Session::builder(env)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .with_intra_threads(threads)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if target == Target::Gpu {
            builder = gpu(builder, library)?;
        }
        let session = builder
            .commit_from_memory(bytes)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let inputs = session
            .inputs()
            .iter()
            .map(|i| match i.dtype() {
                ValueType::Tensor { ty, shape, .. } => {
                    Ok((i.name().to_string(), *ty, shape.iter().copied().collect()))
                }
                other => bail!("input `{}` is a {other}, not a tensor", i.name()),
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            session: Mutex::new(session),
            inputs,
        })
    }
}

#[cfg(feature = "gpu")]
fn gpu(
    builder: ort::session::builder::SessionBuilder,
    library: &Path,
) -> Result<ort::session::builder::SessionBuilder> {
    use ort::ep::{CUDA, ExecutionProvider as _, TensorRT};
    if !CUDA::is_available().map_err(|e| anyhow::anyhow!("{e}"))? {
        bail!(
            "target = \"gpu\": the CUDA execution provider is not in {} (a CPU-only build of \
             ONNX Runtime; install onnxruntime-gpu and point `library` at its \
             libonnxruntime.so)",
            library.display()
        );
    }
    let mut providers = Vec::new();
    if TensorRT::is_available().unwrap_or(false) {
        providers.push(TensorRT::default().build().error_on_failure());
    }
    providers.push(CUDA::default().build().error_on_failure());
    builder.with_execution_providers(providers).map_err(|e| {
        anyhow::anyhow!(
            "target = \"gpu\": registering the CUDA execution provider from {} failed (no \
             usable GPU, driver or CUDA libraries): {e}",
            library.display()
        )
    })
}

#[cfg(not(feature = "gpu"))]
fn gpu(
    _: ort::session::builder::SessionBuilder,
    _: &Path,
) -> Result<ort::session::builder::SessionBuilder> {
    bail!(
        "target = \"gpu\" needs ONNX Runtime's CUDA execution provider, which this build of \
         edgeinfer leaves out; build it with `--features gpu`"
    )
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn run(&self, inputs: Vec<(String, NnTensor)>) -> Result<Vec<(String, NnTensor)>, NnError> {
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            let Some((_, ty, dims)) = self.inputs.iter().find(|(n, ..)| *n == name) else {
                let known: Vec<_> = self.inputs.iter().map(|(n, ..)| n.as_str()).collect();
                return Err(NnError::invalid(format!(
                    "the model has no input '{name}' (its inputs: {})",
                    known.join(", ")
                )));
            };
            check_shape(&name, dims, &t.dimensions)?;
            values.push((name.clone(), to_value(&name, *ty, t)?));
        }
        if values.len() != self.inputs.len() {
            return Err(NnError::invalid(format!(
                "the model takes {} inputs, got {}",
                self.inputs.len(),
                values.len()
            )));
        }
        let mut session = self
            .session
            .lock()
            .map_err(|_| NnError::runtime("the ONNX Runtime session is poisoned"))?;
        let outputs = session
            .run(values)
            .map_err(|e| NnError::runtime(format!("ONNX Runtime: {e}")))?;
        outputs
            .iter()
            .map(|(name, value)| Ok((name.to_string(), from_value(name, &value)?)))
            .collect()
    }
}

/// Rank and fixed dimensions as the model declares them (-1: any).
fn check_shape(name: &str, model: &[i64], given: &[u32]) -> Result<(), NnError> {
    let fits = model.len() == given.len()
        && model
            .iter()
            .zip(given)
            .all(|(&m, &g)| m < 0 || m == i64::from(g));
    if fits {
        Ok(())
    } else {
        Err(NnError::invalid(format!(
            "input '{name}': shape {given:?} does not fit the model's {model:?} (-1: any)"
        )))
    }
}

fn tensor<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
    dims: &[u32],
    data: Vec<T>,
) -> Result<DynValue, NnError> {
    let shape: Vec<i64> = dims.iter().map(|&d| i64::from(d)).collect();
    Tensor::from_array((shape, data))
        .map(Tensor::into_dyn)
        .map_err(|e| NnError::invalid(format!("{e}")))
}

/// Little-endian values of `N` bytes each.
fn le<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks of N")))
        .collect()
}

/// The guest's tensor as the element type the model declares. U8 also
/// carries INT8 (two's complement) and BOOL (0/1), as wasi-nn has neither.
fn to_value(name: &str, ty: TensorElementType, t: NnTensor) -> Result<DynValue, NnError> {
    use TensorElementType as E;
    let width = match t.ty {
        TensorType::U8 => 1,
        TensorType::Fp16 | TensorType::Bf16 => 2,
        TensorType::Fp32 | TensorType::I32 => 4,
        TensorType::Fp64 | TensorType::I64 => 8,
    };
    let elements = t
        .dimensions
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d as usize));
    if elements.and_then(|n| n.checked_mul(width)) != Some(t.data.len()) {
        return Err(NnError::invalid(format!(
            "input '{name}': {:?} {:?} needs {} bytes, got {}",
            t.ty,
            t.dimensions,
            elements.unwrap_or(usize::MAX).saturating_mul(width),
            t.data.len()
        )));
    }
    let d = &t.dimensions;
    match (ty, t.ty) {
        (E::Float32, TensorType::Fp32) => tensor(d, le(&t.data, f32::from_le_bytes)),
        (E::Float32, TensorType::Bf16) => {
            tensor(d, le(&t.data, |b| half::bf16::from_le_bytes(b).to_f32()))
        }
        (E::Float16, TensorType::Fp16) => tensor(d, le(&t.data, half::f16::from_le_bytes)),
        (E::Bfloat16, TensorType::Bf16) => tensor(d, le(&t.data, half::bf16::from_le_bytes)),
        (E::Float64, TensorType::Fp64) => tensor(d, le(&t.data, f64::from_le_bytes)),
        (E::Int32, TensorType::I32) => tensor(d, le(&t.data, i32::from_le_bytes)),
        (E::Int64, TensorType::I64) => tensor(d, le(&t.data, i64::from_le_bytes)),
        (E::Uint8, TensorType::U8) => tensor(d, t.data),
        (E::Int8, TensorType::U8) => tensor(d, le(&t.data, i8::from_le_bytes)),
        (E::Bool, TensorType::U8) => tensor(d, t.data.iter().map(|&b| b != 0).collect()),
        (model, given) => Err(NnError::invalid(format!(
            "input '{name}': the model takes {model}, got {given:?}"
        ))),
    }
}

fn bytes_of<T: ort::value::PrimitiveTensorElementType + Copy, const N: usize>(
    name: &str,
    value: &ort::value::ValueRef<'_>,
    f: impl Fn(T) -> [u8; N],
) -> Result<(Vec<u32>, Vec<u8>), NnError> {
    let (shape, data) = value
        .try_extract_tensor::<T>()
        .map_err(|e| NnError::runtime(format!("output '{name}': {e}")))?;
    let dims = shape.iter().map(|&d| d as u32).collect();
    Ok((dims, data.iter().flat_map(|&v| f(v)).collect()))
}

/// A model output as a wasi-nn tensor; INT8 and BOOL travel as U8.
fn from_value(name: &str, value: &ort::value::ValueRef<'_>) -> Result<NnTensor, NnError> {
    use TensorElementType as E;
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(NnError::runtime(format!(
            "output '{name}' is not a tensor, which wasi-nn cannot return"
        )));
    };
    let (ty, (dimensions, data)) = match ty {
        E::Float32 => (TensorType::Fp32, bytes_of(name, value, f32::to_le_bytes)?),
        E::Float16 => (
            TensorType::Fp16,
            bytes_of(name, value, half::f16::to_le_bytes)?,
        ),
        E::Bfloat16 => (
            TensorType::Bf16,
            bytes_of(name, value, half::bf16::to_le_bytes)?,
        ),
        E::Float64 => (TensorType::Fp64, bytes_of(name, value, f64::to_le_bytes)?),
        E::Int32 => (TensorType::I32, bytes_of(name, value, i32::to_le_bytes)?),
        E::Int64 => (TensorType::I64, bytes_of(name, value, i64::to_le_bytes)?),
        E::Uint8 => (TensorType::U8, bytes_of(name, value, |v: u8| [v])?),
        E::Int8 => (TensorType::U8, bytes_of(name, value, i8::to_le_bytes)?),
        E::Bool => (
            TensorType::U8,
            bytes_of(name, value, |v: bool| [u8::from(v)])?,
        ),
        other => {
            return Err(NnError::runtime(format!(
                "output '{name}' is {other}, which has no wasi-nn tensor type"
            )));
        }
    };
    Ok(NnTensor {
        dimensions,
        ty,
        data,
    })
}
