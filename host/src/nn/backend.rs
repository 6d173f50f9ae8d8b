//! What runs a model for `wasi:nn`, and the conversion between wasi-nn's
//! tensors (dimensions, element type, little-endian bytes) and the kit's.

use kit::engine::{Engine as _, TractEngine};
use kit::tensor::{DataType, Tensor, TensorData};

use super::NnError;
use super::bindings::wasi::nn::tensor::TensorType;

/// A wasi-nn tensor as the guest made it.
#[derive(Debug, Clone)]
pub struct NnTensor {
    pub dimensions: Vec<u32>,
    pub ty: TensorType,
    pub data: Vec<u8>,
}

/// Runs one model. `run` is blocking; the host calls it off the async runtime.
pub trait Backend: Send + Sync {
    /// For metrics and the meter: `tract` or `onnxruntime`.
    fn name(&self) -> &'static str;
    fn run(&self, inputs: Vec<(String, NnTensor)>) -> Result<Vec<(String, NnTensor)>, NnError>;
}

/// tract, natively: the same engine the functions run inside the sandbox
/// (`edgeinfer-kit`), planned once per model.
pub struct TractBackend {
    engine: TractEngine,
}

impl TractBackend {
    /// Parses, optimises and plans the model; `shapes` (one per input, from
    /// the config) are planned now, so the first call does no planning.
    /// Both in the models' heap (see `crate::model_heap`).
    pub fn from_onnx(bytes: &[u8], shapes: &[String]) -> anyhow::Result<Self> {
        let engine = crate::model_heap::in_model_heap(|| TractEngine::from_onnx(bytes))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Self::with_engine(engine, shapes)
    }

    /// Around a model already loaded, planned ahead for `shapes` as above.
    pub fn with_engine(engine: TractEngine, shapes: &[String]) -> anyhow::Result<Self> {
        if !shapes.is_empty() {
            let spec = shapes.join(";");
            let shapes = kit::engine::parse_input_shapes(engine.inputs(), &spec)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            crate::model_heap::in_model_heap(|| engine.prepare(shapes))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(Self { engine })
    }

    pub fn engine(&self) -> &TractEngine {
        &self.engine
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&self, inputs: Vec<(String, NnTensor)>) -> Result<Vec<(String, NnTensor)>, NnError> {
        let inputs = inputs
            .into_iter()
            .map(|(name, t)| to_kit(name, t))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = self.engine.run(inputs).map_err(|e| match e {
            kit::KitError::BadRequest(m) => NnError::invalid(m),
            other => NnError::runtime(other.message().to_string()),
        })?;
        Ok(outputs
            .into_iter()
            .map(|t| (t.name.clone(), from_kit(t)))
            .collect())
    }
}

/// A wasi-nn tensor as a kit tensor. BF16 has no kit type and is widened to
/// FP32 exactly; every other type maps one to one.
pub fn to_kit(name: String, t: NnTensor) -> Result<Tensor, NnError> {
    check_bytes(&name, &t)?;
    let datatype = match t.ty {
        TensorType::Fp16 => DataType::Fp16,
        TensorType::Bf16 | TensorType::Fp32 => DataType::Fp32,
        TensorType::I32 => DataType::Int32,
        TensorType::Fp64 => DataType::Fp64,
        TensorType::I64 => DataType::Int64,
        TensorType::U8 => DataType::Uint8,
    };
    let shape: Vec<usize> = t.dimensions.iter().map(|&d| d as usize).collect();
    let data = match t.ty {
        TensorType::Bf16 => TensorData::Fp32(
            t.data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        _ => TensorData::from_le_bytes(datatype, &t.data)
            .map_err(|e| NnError::invalid(e.message().to_string()))?,
    };
    Tensor::new(name, shape, data).map_err(|e| NnError::invalid(e.message().to_string()))
}

/// Whether `t`'s bytes are exactly its dimensions' worth of its type; every
/// backend checks this before reading them.
pub fn check_bytes(name: &str, t: &NnTensor) -> Result<(), NnError> {
    let width: usize = match t.ty {
        TensorType::U8 => 1,
        TensorType::Fp16 | TensorType::Bf16 => 2,
        TensorType::Fp32 | TensorType::I32 => 4,
        TensorType::Fp64 | TensorType::I64 => 8,
    };
    let needed = t
        .dimensions
        .iter()
        .try_fold(width, |n, &d| n.checked_mul(d as usize))
        .ok_or_else(|| NnError::invalid(format!("input '{name}': dimensions overflow")))?;
    if t.data.len() != needed {
        return Err(NnError::invalid(format!(
            "input '{name}': {:?} {:?} needs {needed} bytes, got {}",
            t.ty,
            t.dimensions,
            t.data.len()
        )));
    }
    Ok(())
}

/// A kit tensor as a wasi-nn tensor. INT8 and BOOL have no wasi-nn type and
/// travel as U8 (BOOL as 0/1; INT8 as its two's-complement byte).
pub fn from_kit(t: Tensor) -> NnTensor {
    let ty = match t.data.datatype() {
        DataType::Fp32 => TensorType::Fp32,
        DataType::Fp64 => TensorType::Fp64,
        DataType::Fp16 => TensorType::Fp16,
        DataType::Int64 => TensorType::I64,
        DataType::Int32 => TensorType::I32,
        DataType::Int8 | DataType::Uint8 | DataType::Bool => TensorType::U8,
    };
    NnTensor {
        dimensions: t.shape.iter().map(|&d| d as u32).collect(),
        ty,
        data: t.data.le_bytes().into_owned(),
    }
}
