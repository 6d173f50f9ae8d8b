//! The `wasi:nn` engine: the host owns and runs the model (loaded once,
//! shared by every instance, natively); the function only converts tensors.
//! The graph is found by name (`load-by-name`), as edgeinfer.toml's
//! `[nn.models.NAME]` declares it. wasi:nn has no way to ask a graph for its
//! inputs and outputs, so this engine declares none and the host checks
//! every call against the model; its errors come back as 400s.

use super::{Engine, TensorSpec};
use crate::KitError;
use crate::tensor::{Tensor, TensorData};

mod bindings {
    spin_sdk::wit_bindgen::generate!({
        path: "../../wit/wasi-nn.wit",
        world: "ml",
        runtime_path: "spin_sdk::wit_bindgen::rt",
    });
}

use bindings::wasi::nn::errors::{Error as NnError, ErrorCode};
use bindings::wasi::nn::graph;
use bindings::wasi::nn::tensor::{Tensor as NnTensor, TensorType};

/// A model the host runs, by its name in the host's config.
pub struct NnEngine {
    graph: String,
}

impl NnEngine {
    pub fn by_name(graph: impl Into<String>) -> Self {
        Self {
            graph: graph.into(),
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

fn bytes<T, const N: usize>(v: &[T], f: fn(&T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(f).collect()
}

fn to_nn(t: &Tensor) -> Result<NnTensor, KitError> {
    let (ty, data) = match &t.data {
        TensorData::Fp32(v) => (TensorType::Fp32, bytes(v, |x| x.to_le_bytes())),
        TensorData::Fp64(v) => (TensorType::Fp64, bytes(v, |x| x.to_le_bytes())),
        TensorData::Fp16(v) => (TensorType::Fp16, bytes(v, |x| x.to_le_bytes())),
        TensorData::Int64(v) => (TensorType::I64, bytes(v, |x| x.to_le_bytes())),
        TensorData::Int32(v) => (TensorType::I32, bytes(v, |x| x.to_le_bytes())),
        TensorData::Uint8(v) => (TensorType::U8, v.clone()),
        TensorData::Int8(_) | TensorData::Bool(_) => {
            return Err(KitError::bad_request(format!(
                "input '{}': {} has no wasi:nn tensor type",
                t.name,
                t.data.datatype()
            )));
        }
    };
    let dims = t
        .shape
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| KitError::bad_request(format!("input '{}': a dim is too large", t.name)))?;
    Ok(NnTensor::new(&dims, ty, &data))
}

fn le<const N: usize, T>(data: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact")))
        .collect()
}

fn from_nn(name: String, t: &NnTensor) -> Result<Tensor, KitError> {
    let raw = t.data();
    let data = match t.ty() {
        TensorType::Fp32 => TensorData::Fp32(le(&raw, f32::from_le_bytes)),
        TensorType::Fp64 => TensorData::Fp64(le(&raw, f64::from_le_bytes)),
        TensorType::Fp16 => TensorData::Fp16(le(&raw, half::f16::from_le_bytes)),
        TensorType::Bf16 => TensorData::Fp32(le(&raw, |b| half::bf16::from_le_bytes(b).to_f32())),
        TensorType::U8 => TensorData::Uint8(raw),
        TensorType::I32 => TensorData::Int32(le(&raw, i32::from_le_bytes)),
        TensorType::I64 => TensorData::Int64(le(&raw, i64::from_le_bytes)),
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
        let graph = graph::load_by_name(&self.graph)
            .map_err(|e| kit_error(&format!("model '{}'", self.graph), e))?;
        let context = graph
            .init_execution_context()
            .map_err(|e| kit_error("init-execution-context", e))?;
        let named = inputs
            .iter()
            .map(|t| Ok((t.name.clone(), to_nn(t)?)))
            .collect::<Result<Vec<_>, KitError>>()?;
        let outputs = context
            .compute(named)
            .map_err(|e| kit_error(&format!("model '{}'", self.graph), e))?;
        outputs
            .into_iter()
            .map(|(name, t)| from_nn(name, &t))
            .collect()
    }

    fn backend(&self) -> serde_json::Value {
        serde_json::json!({ "name": "wasi-nn", "graph": self.graph })
    }
}
