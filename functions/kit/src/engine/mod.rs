//! Inference engines behind one trait, so a model function does not care whether
//! tract runs inside the component or the host runs the model (a later `wasi:nn` engine).

use std::collections::HashSet;
use std::sync::OnceLock;

use crate::KitError;
use crate::tensor::{DataType, Tensor};

#[cfg(feature = "tract")]
mod gather;
#[cfg(feature = "tract")]
mod tract;
#[cfg(feature = "tract")]
pub use self::tract::{TractEngine, TractOptions, linalg_tiers};
#[cfg(feature = "wasi-nn")]
mod nn;
#[cfg(feature = "wasi-nn")]
pub use self::nn::NnEngine;

/// A model input or output as the model declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    /// `None` is a dynamic dim (a batch size N, a sequence length...).
    pub shape: Vec<Option<usize>>,
}

impl TensorSpec {
    /// The shape in OIP metadata form: dynamic dims as -1.
    pub fn oip_shape(&self) -> Vec<i64> {
        self.shape
            .iter()
            .map(|d| d.map_or(-1, |d| d as i64))
            .collect()
    }
}

/// The largest size a dynamic dim may take. tract plans a model with symbolic
/// dims only as well as it can bound them: with each dim known to lie in
/// `1..=MAX_DYNAMIC_DIM` it can prove that a `[batch, seq, 384]` tensor is big
/// enough for its vectorized element-wise kernels and matmul fusions, and
/// without an upper bound it cannot bound a product of two dims at all.
/// 2^24 keeps `batch * seq * width` inside i64 for widths up to 2^14.
pub const MAX_DYNAMIC_DIM: usize = 1 << 24;

/// Runs a model on kit tensors.
pub trait Engine {
    fn inputs(&self) -> &[TensorSpec];
    fn outputs(&self) -> &[TensorSpec];
    /// Runs the model. Inputs may come in any order; they are matched by name.
    /// A mismatch with the model (name, datatype, rank, fixed dims) is a
    /// `KitError::BadRequest`, found before anything runs.
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, KitError>;
    /// What runs the model, for the OIP metadata's `backend` field.
    fn backend(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Checks `inputs` against `specs` (names, datatypes, ranks, fixed dims; dynamic
/// dims must be in `1..=MAX_DYNAMIC_DIM`) and returns them in the order of `specs`. Every engine
/// calls this before running, so a bad request never reaches the model.
pub fn check_inputs(specs: &[TensorSpec], inputs: Vec<Tensor>) -> Result<Vec<Tensor>, KitError> {
    let expected = || {
        specs
            .iter()
            .map(|s| format!("'{}' {} {:?}", s.name, s.datatype, s.oip_shape()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut seen = HashSet::new();
    for t in &inputs {
        if !seen.insert(t.name.as_str()) {
            return Err(KitError::bad_request(format!(
                "input '{}' is given twice",
                t.name
            )));
        }
        if !specs.iter().any(|s| s.name == t.name) {
            return Err(KitError::bad_request(format!(
                "unknown input '{}' (the model takes {})",
                t.name,
                expected()
            )));
        }
    }
    let mut by_name: Vec<Option<Tensor>> = inputs.into_iter().map(Some).collect();
    specs
        .iter()
        .map(|spec| {
            let tensor = by_name
                .iter_mut()
                .find(|t| t.as_ref().is_some_and(|t| t.name == spec.name))
                .and_then(Option::take)
                .ok_or_else(|| {
                    KitError::bad_request(format!(
                        "missing input '{}' (the model takes {})",
                        spec.name,
                        expected()
                    ))
                })?;
            check_input(spec, &tensor)?;
            Ok(tensor)
        })
        .collect()
}

/// Checks one tensor against its spec.
pub fn check_input(spec: &TensorSpec, t: &Tensor) -> Result<(), KitError> {
    let fail = |why: String| {
        Err(KitError::bad_request(format!(
            "input '{}': {why}",
            spec.name
        )))
    };
    if t.datatype() != spec.datatype {
        return fail(format!(
            "datatype {}, the model expects {}",
            t.datatype(),
            spec.datatype
        ));
    }
    if t.shape.len() != spec.shape.len() {
        return fail(format!(
            "shape {:?} has rank {}, the model expects rank {} {:?}",
            t.shape,
            t.shape.len(),
            spec.shape.len(),
            spec.oip_shape()
        ));
    }
    for (ix, (&got, want)) in t.shape.iter().zip(&spec.shape).enumerate() {
        match *want {
            Some(want) if got != want => {
                return fail(format!(
                    "shape {:?}: dim {ix} is {got}, the model expects {want} (shape {:?})",
                    t.shape,
                    spec.oip_shape()
                ));
            }
            None if got == 0 => {
                return fail(format!("shape {:?}: dim {ix} is empty", t.shape));
            }
            None if got > MAX_DYNAMIC_DIM => {
                return fail(format!(
                    "shape {:?}: dim {ix} is {got}, over the limit of {MAX_DYNAMIC_DIM} for a dynamic dim",
                    t.shape
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parses `name=d,d,...;name=...` (as `models add --shape` and the generic
/// function's `EDGEINFER_INPUT_SHAPES` give them) into one shape per input,
/// in the order of `inputs`.
pub fn parse_input_shapes(inputs: &[TensorSpec], spec: &str) -> Result<Vec<Vec<usize>>, KitError> {
    let bad = |why: String| KitError::internal(format!("input shapes `{spec}`: {why}"));
    let mut given: std::collections::HashMap<String, Vec<usize>> =
        parse_shapes(spec)?.into_iter().collect();
    let shapes = inputs
        .iter()
        .map(|input| {
            given
                .remove(&input.name)
                .ok_or_else(|| bad(format!("no shape for input `{}`", input.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    match given.keys().next() {
        Some(name) => Err(bad(format!("the model has no input `{name}`"))),
        None => Ok(shapes),
    }
}

/// Parses `name=d,d,...;name=...` into (name, shape) pairs, in the order given.
pub fn parse_shapes(spec: &str) -> Result<Vec<(String, Vec<usize>)>, KitError> {
    let bad = |why: String| KitError::internal(format!("input shapes `{spec}`: {why}"));
    spec.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (name, dims) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("`{part}` is not NAME=D,D,...")))?;
            let dims = dims
                .split(',')
                .map(|d| d.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("`{part}`: {e}")))?;
            Ok((name.trim().to_string(), dims))
        })
        .collect()
}

/// An engine built on first use and kept for the life of the instance, in a
/// `static`. Pre-initialization (see [`export_wizer_init!`](crate::export_wizer_init))
/// builds it ahead of time so a fresh instance finds it ready; without it the
/// first request builds it.
pub struct LazyEngine<E> {
    cell: OnceLock<Result<E, KitError>>,
    build: fn() -> Result<E, KitError>,
}

impl<E> LazyEngine<E> {
    /// `build` parses/optimizes/plans the model; it runs at most once.
    pub const fn new(build: fn() -> Result<E, KitError>) -> Self {
        LazyEngine {
            cell: OnceLock::new(),
            build,
        }
    }

    /// The engine, built now if it was not yet. A build failure is remembered and
    /// returned as a `KitError::Internal` to every caller.
    pub fn get(&self) -> Result<&E, KitError> {
        match self.cell.get_or_init(|| (self.build)()) {
            Ok(engine) => Ok(engine),
            Err(e) => Err(KitError::internal(format!(
                "loading the model failed: {}",
                e.message()
            ))),
        }
    }

    /// Whether the engine has been built successfully.
    pub fn is_ready(&self) -> bool {
        matches!(self.cell.get(), Some(Ok(_)))
    }

    /// Builds the engine now, panicking if that fails: for pre-initialization,
    /// where a failure must abort the build rather than be baked in.
    pub fn init(&self) {
        if let Err(e) = self.get() {
            panic!("{e}");
        }
    }
}
