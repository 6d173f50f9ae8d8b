//! The `wasi:nn` engine: the host owns and runs the model (loaded once,
//! shared by every instance, natively); the function only converts tensors.
//! The graph is found by name (`load-by-name`), as edgeinfer.toml's
//! `[nn.models.NAME]` declares it, or loaded from an ONNX file among the
//! function's files (`load`, as components written for wasmtime's wasi-nn
//! do; the host keeps what it parsed, by sha256, for the next instance).
//! wasi:nn has no way to ask a graph for its inputs and outputs, so this
//! engine declares none and the host checks every call against the model;
//! its errors come back as 400s.

use super::{Engine, TensorSpec};
use crate::KitError;
use crate::tensor::{DataType, Tensor, TensorData};

mod bindings {
    spin_sdk::wit_bindgen::generate!({
        path: "../../wit/wasi-nn.wit",
        world: "ml",
        runtime_path: "spin_sdk::wit_bindgen::rt",
    });
}

use bindings::wasi::nn::errors::{Error as NnError, ErrorCode};
use bindings::wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
use bindings::wasi::nn::tensor::{Tensor as NnTensor, TensorType};

/// A model the host runs.
pub struct NnEngine {
    graph: Graph,
}

enum Graph {
    /// Its name in the host's config.
    Named(String),
    /// An ONNX file the function can read.
    File(String),
}

impl NnEngine {
    pub fn by_name(graph: impl Into<String>) -> Self {
        Self {
            graph: Graph::Named(graph.into()),
        }
    }

    /// The model in the ONNX file at `path`, loaded from its bytes on every
    /// call (the host parses the same bytes only once).
    pub fn from_file(path: impl Into<String>) -> Self {
        Self {
            graph: Graph::File(path.into()),
        }
    }

    fn load(&self) -> Result<graph::Graph, KitError> {
        match &self.graph {
            Graph::Named(name) => {
                graph::load_by_name(name).map_err(|e| kit_error(&format!("model '{name}'"), e))
            }
            // The file is the function's own, not the caller's: whatever is
            // wrong with it is a 500.
            Graph::File(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| KitError::internal(format!("reading model {path}: {e}")))?;
                graph::load(&[bytes], GraphEncoding::Onnx, ExecutionTarget::Cpu).map_err(|e| {
                    KitError::internal(format!("model {path} did not load: {}", e.data()))
                })
            }
        }
    }

    fn label(&self) -> &str {
        match &self.graph {
            Graph::Named(name) | Graph::File(name) => name,
        }
    }
}

fn kit_error(what: &str, e: NnError) -> KitError {
    let message = format!("{what}: {}", e.data());
    match e.code() {
        ErrorCode::InvalidArgument | ErrorCode::InvalidEncoding => KitError::bad_request(message),
        ErrorCode::NotFound => KitError::not_found(message),
        _ => KitError::internal(message),
    }
}

/// wasi:nn's element type for a kit datatype; INT8 and BOOL have none.
fn nn_type(t: &Tensor) -> Result<TensorType, KitError> {
    Ok(match t.data.datatype() {
        DataType::Fp32 => TensorType::Fp32,
        DataType::Fp64 => TensorType::Fp64,
        DataType::Fp16 => TensorType::Fp16,
        DataType::Int64 => TensorType::I64,
        DataType::Int32 => TensorType::I32,
        DataType::Uint8 => TensorType::U8,
        other @ (DataType::Int8 | DataType::Bool) => {
            return Err(KitError::bad_request(format!(
                "input '{}': {other} has no wasi:nn tensor type",
                t.name
            )));
        }
    })
}

fn to_nn(t: &Tensor) -> Result<NnTensor, KitError> {
    let ty = nn_type(t)?;
    let dims = t
        .shape
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| KitError::bad_request(format!("input '{}': a dim is too large", t.name)))?;
    Ok(NnTensor::new(&dims, ty, &t.data.le_bytes()))
}

fn from_nn(name: String, t: &NnTensor) -> Result<Tensor, KitError> {
    let raw = t.data();
    let data = match t.ty() {
        TensorType::Fp32 => TensorData::from_le_bytes(DataType::Fp32, &raw)?,
        TensorType::Fp64 => TensorData::from_le_bytes(DataType::Fp64, &raw)?,
        TensorType::Fp16 => TensorData::from_le_bytes(DataType::Fp16, &raw)?,
        // No kit type: widened to FP32, exactly.
        TensorType::Bf16 => TensorData::Fp32(
            raw.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        TensorType::U8 => TensorData::Uint8(raw),
        TensorType::I32 => TensorData::from_le_bytes(DataType::Int32, &raw)?,
        TensorType::I64 => TensorData::from_le_bytes(DataType::Int64, &raw)?,
    };
    let shape = t.dimensions().into_iter().map(|d| d as usize).collect();
    Tensor::new(name, shape, data)
}

impl Engine for NnEngine {
    fn inputs(&self) -> &[TensorSpec] {
        &[]
    }

    fn outputs(&self) -> &[TensorSpec] {
        &[]
    }

    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, KitError> {
        let graph = self.load()?;
        let context = graph
            .init_execution_context()
            .map_err(|e| kit_error("init-execution-context", e))?;
        let named = inputs
            .iter()
            .map(|t| Ok((t.name.clone(), to_nn(t)?)))
            .collect::<Result<Vec<_>, KitError>>()?;
        let outputs = context
            .compute(named)
            .map_err(|e| kit_error(&format!("model '{}'", self.label()), e))?;
        outputs
            .into_iter()
            .map(|(name, t)| from_nn(name, &t))
            .collect()
    }

    fn backend(&self) -> serde_json::Value {
        match &self.graph {
            Graph::Named(name) => serde_json::json!({ "name": "wasi-nn", "graph": name }),
            Graph::File(path) => serde_json::json!({ "name": "wasi-nn", "file": path }),
        }
    }
}
