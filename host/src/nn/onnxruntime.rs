//! ONNX Runtime as a `wasi:nn` backend (cargo feature `onnxruntime`).
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`), from the
//! model's `library` or `ORT_DYLIB_PATH`; one process loads one library.
//! `target = "gpu"` registers the CUDA execution provider (and TensorRT when
//! the library has it and it registers); if CUDA cannot be registered,
//! loading fails and says why. There is no quiet fallback to the CPU.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context as _, Result, anyhow, bail};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use super::NnError;
use super::backend::{Backend, NnTensor};
use super::bindings::wasi::nn::tensor::TensorType;
use super::config::Target;

/// The library this process loaded and its environment, kept for the life of
/// the process. A failed load is not remembered: a later model may name a
/// library that exists.
static RUNTIME: Mutex<Option<(PathBuf, &'static ort::environment::Environment)>> = Mutex::new(None);

/// Loads ONNX Runtime once; a second, different library is an error (`ort`
/// itself would silently keep the first).
fn runtime(library: Option<&Path>) -> Result<(PathBuf, &'static ort::environment::Environment)> {
    let given = match library {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("ORT_DYLIB_PATH")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .context(
                "ONNX Runtime's library is not set: give `library = \"…/libonnxruntime.so\"` in \
                 the model's [nn.models] table or set ORT_DYLIB_PATH",
            )?,
    };
    // Absolute, so `ort` does not look beside the executable first, and so
    // two spellings of one file are one library.
    let wanted = std::fs::canonicalize(&given)
        .with_context(|| format!("ONNX Runtime's library {}", given.display()))?;
    let mut loaded = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((path, env)) = loaded.as_ref() {
        if *path != wanted {
            bail!(
                "ONNX Runtime is already loaded from {}; one process loads one library, not also \
                 {}",
                path.display(),
                wanted.display()
            );
        }
        return Ok((path.clone(), env));
    }
    let env = ort::init_from(&wanted)
        .map_err(|e| match &e {
            // `ort` shows "dlopen failed" alone; the reason is its source.
            ort::LoadDynamicError::Dlopen { error, path } => match std::error::Error::source(error)
            {
                Some(why) => anyhow!("loading ONNX Runtime from {}: {why}", path.display()),
                None => anyhow!("loading ONNX Runtime: {e}"),
            },
            _ => anyhow!("loading ONNX Runtime: {e}"),
        })?
        .with_name("edgeinfer")
        .with_telemetry(false)
        .build()
        .map_err(|e| anyhow!("starting ONNX Runtime from {}: {e}", wanted.display()))?;
    let env: &'static _ = Box::leak(Box::new(env));
    *loaded = Some((wanted.clone(), env));
    Ok((wanted, env))
}

/// One model input as the session declares it.
struct Input {
    name: String,
    ty: TensorElementType,
    /// -1 for a dimension of any size.
    shape: Vec<i64>,
    /// The name of each dimension of any size ("" if none): ONNX says that
    /// dimensions of one name have one size across the graph.
    symbols: Vec<String>,
}

/// One model in an ONNX Runtime session.
pub struct OrtBackend {
    /// `ort` 2.0.0-rc.15 runs a session only through `&mut` (every public
    /// `run*` takes `&mut self`); each run uses `threads` threads, so runs of
    /// one model take turns, as one Triton model instance does.
    session: Mutex<Session>,
    inputs: Vec<Input>,
}

impl OrtBackend {
    /// Loads ONNX Runtime (once per process) and `bytes` (an ONNX model) in a
    /// session whose runs use `threads` threads (the intra-op pool).
    pub fn load(
        bytes: &[u8],
        library: Option<&Path>,
        target: Target,
        threads: usize,
    ) -> Result<Self> {
        let (library, env) = runtime(library)?;
        // `All` (ORT_ENABLE_ALL), as Python's `InferenceSession` does by
        // default; `ort`'s `Level3` is ORT_ENABLE_LAYOUT, one level short.
        let mut builder = Session::builder(env)
            .map_err(|e| anyhow!("{e}"))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| anyhow!("{e}"))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| anyhow!("{e}"))?;
        if target == Target::Gpu {
            builder = gpu(builder, &library)?;
        }
        let session = builder
            .commit_from_memory(bytes)
            .map_err(|e| match target {
                Target::Cpu => anyhow!("{e}"),
                Target::Gpu => anyhow!(
                    "target = \"gpu\": starting the session with the CUDA execution provider of {} \
                 failed (no usable GPU, driver or CUDA libraries?): {e}",
                    library.display()
                ),
            })?;
        let inputs = session
            .inputs()
            .iter()
            .map(|i| match i.dtype() {
                ValueType::Tensor {
                    ty,
                    shape,
                    dimension_symbols,
                } => Ok(Input {
                    name: i.name().to_string(),
                    ty: *ty,
                    shape: shape.iter().copied().collect(),
                    symbols: shape
                        .iter()
                        .zip(dimension_symbols.iter())
                        .map(|(&d, s)| if d < 0 { s.clone() } else { String::new() })
                        .collect(),
                }),
                other => bail!(
                    "input '{}' is a {other}, which wasi-nn cannot give",
                    i.name()
                ),
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            session: Mutex::new(session),
            inputs,
        })
    }
}

#[cfg(feature = "gpu")]
fn gpu(mut builder: SessionBuilder, library: &Path) -> Result<SessionBuilder> {
    use ort::ep::{CUDA, ExecutionProvider as _, TensorRT};
    // GetAvailableProviders: the providers this build of the library has.
    if !CUDA::is_available().map_err(|e| anyhow!("{e}"))? {
        bail!(
            "target = \"gpu\": the CUDA execution provider is not in {} (a CPU-only build of \
             ONNX Runtime; install onnxruntime-gpu and point `library` or \
             ORT_DYLIB_PATH at its libonnxruntime.so)",
            library.display()
        );
    }
    // TensorRT first (providers registered first take the nodes they can
    // run), when it registers: onnxruntime-gpu lists it even where the
    // TensorRT libraries (libnvinfer) are not installed.
    if TensorRT::is_available().unwrap_or(false)
        && let Err(e) = TensorRT::default().register(&mut builder)
    {
        tracing::warn!(
            library = %library.display(),
            "the TensorRT execution provider did not register, running on CUDA alone: {e}"
        );
    }
    // Registering CUDA loads libonnxruntime_providers_cuda.so and the CUDA
    // and cuDNN libraries; a failure is an error, not a fallback.
    CUDA::default().register(&mut builder).map_err(|e| {
        anyhow!(
            "target = \"gpu\": registering the CUDA execution provider of {} failed (no usable \
             GPU, driver or CUDA/cuDNN libraries?): {e}",
            library.display()
        )
    })?;
    Ok(builder)
}

#[cfg(not(feature = "gpu"))]
fn gpu(_: SessionBuilder, _: &Path) -> Result<SessionBuilder> {
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
        // One slot per model input, in the model's order.
        let mut values: Vec<Option<DynValue>> = self.inputs.iter().map(|_| None).collect();
        // Named dimensions seen so far: (name, size, input).
        let mut sizes: Vec<(&str, u32, &str)> = Vec::new();
        for (name, t) in inputs {
            let Some(at) = self.inputs.iter().position(|i| i.name == name) else {
                return Err(NnError::invalid(format!(
                    "the model has no input '{name}' (its inputs: {})",
                    self.input_names()
                )));
            };
            if values[at].is_some() {
                return Err(NnError::invalid(format!("input '{name}' is given twice")));
            }
            let input = &self.inputs[at];
            check_shape(&name, &input.shape, &t.dimensions)?;
            for (symbol, &size) in input.symbols.iter().zip(&t.dimensions) {
                // "?" is how some exporters write an unnamed dimension.
                if symbol.is_empty() || symbol == "?" {
                    continue;
                }
                match sizes.iter().find(|(s, ..)| s == symbol) {
                    Some(&(_, seen, other)) if seen != size => {
                        return Err(NnError::invalid(format!(
                            "input '{name}': dimension '{symbol}' is {size}, but {seen} in input \
                             '{other}'"
                        )));
                    }
                    Some(_) => {}
                    None => sizes.push((symbol, size, &input.name)),
                }
            }
            values[at] = Some(to_value(&name, input.ty, t)?);
        }
        let values = values
            .into_iter()
            .zip(&self.inputs)
            .map(|(v, i)| {
                v.map(SessionInputValue::from).ok_or_else(|| {
                    NnError::invalid(format!(
                        "input '{}' is missing (the model's inputs: {})",
                        i.name,
                        self.input_names()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A panic never leaves the session half-changed: take it back.
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(values.as_slice()).map_err(|e| {
            let message = format!("ONNX Runtime: {e}");
            match e.code() {
                ort::ErrorCode::InvalidArgument => NnError::invalid(message),
                _ => NnError::runtime(message),
            }
        })?;
        // The session's outputs, in its order.
        outputs
            .iter()
            .map(|(name, value)| Ok((name.to_string(), from_value(name, &value)?)))
            .collect()
    }
}

impl OrtBackend {
    fn input_names(&self) -> String {
        let names: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
        names.join(", ")
    }
}

/// Rank and fixed dimensions as the model declares them (-1: any).
fn check_shape(name: &str, model: &[i64], given: &[u32]) -> Result<(), NnError> {
    if model.len() != given.len() {
        return Err(NnError::invalid(format!(
            "input '{name}': rank {} ({given:?}), but the model takes rank {} ({model:?}, -1: \
             any)",
            given.len(),
            model.len()
        )));
    }
    let fits = model
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
    name: &str,
    dims: &[u32],
    data: Vec<T>,
) -> Result<DynValue, NnError> {
    let shape: Vec<i64> = dims.iter().map(|&d| i64::from(d)).collect();
    Tensor::from_array((shape, data))
        .map(Tensor::into_dyn)
        .map_err(|e| NnError::invalid(format!("input '{name}': {e}")))
}

/// Little-endian values of `N` bytes each.
fn le<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks of N")))
        .collect()
}

/// The guest's tensor as the element type the model declares; any other
/// pairing is refused before ONNX Runtime sees it. BF16 is also taken for an
/// FP32 input (widened exactly, as the tract backend does), and U8 carries
/// INT8 (two's complement) and BOOL (0/1), which wasi-nn does not have.
fn to_value(name: &str, ty: TensorElementType, t: NnTensor) -> Result<DynValue, NnError> {
    use TensorElementType as E;
    super::backend::check_bytes(name, &t)?;
    let d = &t.dimensions;
    match (ty, t.ty) {
        (E::Float32, TensorType::Fp32) => tensor(name, d, le(&t.data, f32::from_le_bytes)),
        (E::Float32, TensorType::Bf16) => tensor(
            name,
            d,
            le(&t.data, |b| half::bf16::from_le_bytes(b).to_f32()),
        ),
        (E::Float16, TensorType::Fp16) => tensor(name, d, le(&t.data, half::f16::from_le_bytes)),
        (E::Bfloat16, TensorType::Bf16) => tensor(name, d, le(&t.data, half::bf16::from_le_bytes)),
        (E::Float64, TensorType::Fp64) => tensor(name, d, le(&t.data, f64::from_le_bytes)),
        (E::Int32, TensorType::I32) => tensor(name, d, le(&t.data, i32::from_le_bytes)),
        (E::Int64, TensorType::I64) => tensor(name, d, le(&t.data, i64::from_le_bytes)),
        (E::Uint8, TensorType::U8) => tensor(name, d, t.data),
        (E::Int8, TensorType::U8) => tensor(name, d, le(&t.data, i8::from_le_bytes)),
        (E::Bool, TensorType::U8) => tensor(name, d, t.data.iter().map(|&b| b != 0).collect()),
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
    let dims = shape
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| NnError::runtime(format!("output '{name}': shape {shape:?} is too large")))?;
    let mut bytes = Vec::with_capacity(data.len() * N);
    for &v in data {
        bytes.extend_from_slice(&f(v));
    }
    Ok((dims, bytes))
}

/// A model output as a wasi-nn tensor; INT8 and BOOL travel as U8.
fn from_value(name: &str, value: &ort::value::ValueRef<'_>) -> Result<NnTensor, NnError> {
    use TensorElementType as E;
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(NnError::runtime(format!(
            "output '{name}' is a {}, which wasi-nn cannot return",
            value.dtype()
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
