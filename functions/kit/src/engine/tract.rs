//! The tract engine: parses, optimizes and plans an ONNX model inside the
//! component. All tract types stay in this file.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tract_onnx::pb::GraphProto;
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoTValue, IntoTensor,
    TDim, TVec, Tensor as TractTensor, TypedFact, TypedModel, TypedRunnableModel, TypedSimplePlan,
};
use tract_onnx::tract_core::internal::{
    AxisOp, EvalContext, EvalOp, Op, StaticName, TValue, TractResult, TypedOp, as_op, bail,
    op_as_typed_op, op_out_of_plan,
};
use tract_onnx::tract_core::ops::unimpl::UnimplementedOp;
use tract_onnx::tract_hir::infer::{DimFact, Factoid, ShapeFactoid};

use super::{Engine, MAX_DYNAMIC_DIM, TensorSpec, check_inputs};
use crate::KitError;
use crate::tensor::{DataType, Tensor, TensorData};

/// An ONNX model run by tract, optimized and planned once.
///
/// Dynamic input dims (an ONNX `dim_param` such as `N`, or an unnamed dim) stay
/// symbolic in the optimized model, and tract resolves them from the input
/// shapes at each run: one plan serves every batch size. Some graphs cannot be
/// typed with a symbolic dim (a `Shape` of the input feeding a `Reshape`, say);
/// those are planned once per concrete input shape instead, on first use.
pub struct TractEngine {
    plans: Plans,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// Per input, per dim: the symbol name if the dim is a bare symbol, so the
    /// same symbol on two inputs (a shared batch size) can be checked for agreement.
    input_symbols: Vec<Vec<Option<String>>>,
}

enum Plans {
    /// One plan for every input shape.
    Symbolic(Arc<TypedRunnableModel>),
    /// The analysed model, planned per concrete input shape.
    PerShape {
        model: Box<InferenceModel>,
        plans: Mutex<HashMap<Vec<Vec<usize>>, Arc<TypedRunnableModel>>>,
    },
}

/// Options for loading an ONNX model.
#[derive(Debug, Clone, Copy, Default)]
pub struct TractOptions {
    /// Ignore the graph's `value_info` shape hints (some exporters write wrong ones).
    pub ignore_value_info: bool,
    /// Concrete shapes for the first inputs, in the model's input order (empty:
    /// keep the file's). For graphs tract cannot type with a symbolic dim (a
    /// batch size routed through Shape/Cast/Concat into Expand, say): the
    /// dynamic dims become these values, and the engine accepts only these shapes.
    pub input_shapes: &'static [&'static [usize]],
}

/// Reads an ONNX model as `onnx.model_for_read` does, refusing what tract
/// would panic on, and with the gathers over dequantised tables moved first
/// (see gather.rs).
fn read_model(onnx: &tract_onnx::Onnx, bytes: &[u8]) -> Result<InferenceModel, KitError> {
    let parsing = |e: tract_onnx::prelude::TractError| {
        KitError::internal(format!("parsing the ONNX model: {e:#}"))
    };
    let mut proto = onnx
        .proto_model_for_read(&mut std::io::Cursor::new(bytes))
        .map_err(parsing)?;
    if let Some(graph) = &proto.graph {
        check_outputs(graph).map_err(parsing)?;
    }
    super::gather::gather_weights_first(&mut proto);
    onnx.model_for_proto_model(&proto).map_err(parsing)
}

/// tract-onnx 0.23 looks each graph output up by name among the values its
/// graph defines, and panics on one it does not find.
fn check_outputs(graph: &GraphProto) -> TractResult<()> {
    let defined: HashSet<&str> = (graph.input.iter().map(|v| v.name.as_str()))
        .chain(graph.initializer.iter().map(|t| t.name.as_str()))
        .chain(
            graph
                .node
                .iter()
                .flat_map(|n| n.output.iter().map(String::as_str)),
        )
        .collect();
    if let Some(output) = graph
        .output
        .iter()
        .find(|o| !defined.contains(o.name.as_str()))
    {
        bail!(
            "graph `{}` has an output `{}` that is neither an input, an initializer nor any \
             node's output",
            graph.name,
            output.name
        );
    }
    // Subgraphs (the bodies of If, Loop, Scan) are read the same way.
    let subgraphs = graph.node.iter().flat_map(|n| &n.attribute);
    for graph in subgraphs.flat_map(|a| a.g.iter().chain(&a.graphs)) {
        check_outputs(graph)?;
    }
    Ok(())
}

impl TractEngine {
    /// Parses, optimizes and plans an ONNX model. The graph's `value_info`
    /// shape hints are ignored: tract infers shapes itself, and exporters'
    /// hints can contradict it (MiniLM's fail at run time with a symbolic
    /// sequence length).
    pub fn from_onnx(bytes: &[u8]) -> Result<Self, KitError> {
        Self::from_onnx_with(
            bytes,
            TractOptions {
                ignore_value_info: true,
                ..TractOptions::default()
            },
        )
    }

    pub fn from_onnx_with(bytes: &[u8], options: TractOptions) -> Result<Self, KitError> {
        // tract panics on some malformed files. Natively (the host's wasi:nn,
        // `models add`) that is one more reason a file does not load; a wasm
        // guest aborts on a panic, so the known causes are refused before
        // tract reads the graph (`read_model`).
        std::panic::catch_unwind(|| Self::load(bytes, options)).unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("no message");
            Err(KitError::internal(format!(
                "tract panicked on the model: {why}"
            )))
        })
    }

    fn load(bytes: &[u8], options: TractOptions) -> Result<Self, KitError> {
        let internal = |what: &str, e: tract_onnx::prelude::TractError| {
            KitError::internal(format!("{what}: {e:#}"))
        };
        let mut model = read_model(
            &tract_onnx::onnx().with_ignore_value_info(options.ignore_value_info),
            bytes,
        )?;

        if options.input_shapes.len() > model.inputs.len() {
            return Err(KitError::internal(format!(
                "{} input shapes given for a model with {} inputs",
                options.input_shapes.len(),
                model.inputs.len()
            )));
        }

        // An input dim the file leaves unnamed (no dim_value, no dim_param) gets a
        // symbol of its own, so that typing can proceed and it stays dynamic.
        for ix in 0..model.inputs.len() {
            let fact: InferenceFact = model
                .input_fact(ix)
                .map_err(|e| internal("reading the input facts", e))?
                .clone();
            if let Some(&shape) = options.input_shapes.get(ix) {
                // A given shape must agree with the file's rank and fixed dims.
                let fits = fact.shape.is_open()
                    || (fact.shape.rank().concretize() == Some(shape.len() as i64)
                        && fact.shape.dims().zip(shape).all(|(dim, &want)| {
                            match dim.concretize() {
                                Some(TDim::Val(v)) => v == want as i64,
                                _ => true,
                            }
                        }));
                if !fits {
                    return Err(KitError::internal(format!(
                        "input {ix}: shape {shape:?} does not fit the model's {:?}",
                        fact.shape
                    )));
                }
                let dims: TVec<DimFact> = shape
                    .iter()
                    .map(|&d| DimFact::from(TDim::Val(d as i64)))
                    .collect();
                model
                    .set_input_fact(ix, fact.with_shape(ShapeFactoid::closed(dims)))
                    .map_err(|e| internal("setting the input facts", e))?;
                continue;
            }
            if fact.shape.is_open() {
                continue; // unknown rank: leave it to tract's analysis
            }
            let mut changed = false;
            let dims: TVec<DimFact> = fact
                .shape
                .dims()
                .enumerate()
                .map(|(d, dim)| {
                    if dim.concretize().is_some() {
                        dim.clone()
                    } else {
                        changed = true;
                        DimFact::from(TDim::Sym(model.symbols.sym(&format!("in{ix}_d{d}"))))
                    }
                })
                .collect();
            if changed {
                model
                    .set_input_fact(ix, fact.with_shape(ShapeFactoid::closed(dims)))
                    .map_err(|e| internal("setting the input facts", e))?;
            }
        }

        bound_input_symbols(&model);
        check_operators(&model)?;
        let (signature, plans) = match optimize(model.clone()) {
            Ok(typed) => {
                let signature = typed_signature(&typed)?;
                let plan =
                    TypedSimplePlan::new(typed).map_err(|e| internal("planning the model", e))?;
                (signature, Plans::Symbolic(plan))
            }
            // Typing needs concrete dims: keep the analysed model, plan per shape.
            Err(symbolic) if has_dynamic_inputs(&model) => {
                // Analysis binds symbols into every fact; plans start afresh.
                let mut analysed = model.clone();
                analysed
                    .analyse(false)
                    .map_err(|_| internal("optimizing the model", symbolic))?;
                let signature = inferred_signature(&analysed)?;
                let plans = Plans::PerShape {
                    model: Box::new(model),
                    plans: Mutex::default(),
                };
                (signature, plans)
            }
            Err(e) => return Err(internal("optimizing the model", e)),
        };
        let (inputs, outputs, input_symbols) = signature;
        Ok(TractEngine {
            plans,
            inputs,
            outputs,
            input_symbols,
        })
    }

    /// Whether one plan serves every input shape (else one is made per shape).
    pub fn is_shape_polymorphic(&self) -> bool {
        matches!(self.plans, Plans::Symbolic(_))
    }

    /// The plan for these (already checked) input shapes.
    /// Plans ahead for these input shapes (in the model's input order), so
    /// that a pre-initialized instance serves them without planning. A no-op
    /// when one plan serves every shape.
    pub fn prepare(&self, shapes: Vec<Vec<usize>>) -> Result<(), KitError> {
        if shapes.len() != self.inputs.len() {
            return Err(KitError::internal(format!(
                "{} input shapes given for a model with {} inputs",
                shapes.len(),
                self.inputs.len()
            )));
        }
        self.plan(shapes).map(drop)
    }

    fn plan(&self, key: Vec<Vec<usize>>) -> Result<Arc<TypedRunnableModel>, KitError> {
        let (model, plans) = match &self.plans {
            Plans::Symbolic(plan) => return Ok(plan.clone()),
            Plans::PerShape { model, plans } => (model, plans),
        };
        let mut plans = plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(plan) = plans.get(&key) {
            return Ok(plan.clone());
        }
        let fail = |e: tract_onnx::prelude::TractError| {
            KitError::internal(format!(
                "planning the model for input shapes {key:?}: {e:#}"
            ))
        };
        let mut model = (**model).clone();
        for (ix, shape) in key.iter().enumerate() {
            let dt = model.input_fact(ix).map_err(fail)?.datum_type.concretize();
            let fact = match dt {
                Some(dt) => InferenceFact::dt_shape(dt, shape),
                None => InferenceFact::shape(shape),
            };
            model.set_input_fact(ix, fact).map_err(fail)?;
        }
        let plan = optimize(model)
            .and_then(TypedSimplePlan::new)
            .map_err(fail)?;
        plans.insert(key, plan.clone());
        Ok(plan)
    }

    /// Dims that are the same symbol on several inputs must agree.
    fn check_symbols(&self, inputs: &[Tensor]) -> Result<(), KitError> {
        let mut bound: HashMap<&str, (usize, &str, usize)> = HashMap::new();
        for (t, syms) in inputs.iter().zip(&self.input_symbols) {
            for (d, sym) in syms.iter().enumerate() {
                let Some(sym) = sym else { continue };
                let value = t.shape[d];
                match bound.get(sym.as_str()) {
                    Some(&(v, other, od)) if v != value => {
                        return Err(KitError::bad_request(format!(
                            "input '{}' dim {d} is {value} but input '{other}' dim {od} is {v}: they must be equal",
                            t.name
                        )));
                    }
                    Some(_) => {}
                    None => {
                        bound.insert(sym, (value, &t.name, d));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Engine for TractEngine {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// Names the matrix kernels in use, so a client (and the tests) can see
    /// that the component runs tract's wasm SIMD kernels, not the scalar ones.
    fn backend(&self) -> serde_json::Value {
        serde_json::json!({ "name": "tract", "linalg": linalg_tiers() })
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, KitError> {
        let inputs = check_inputs(&self.inputs, inputs)?;
        self.check_symbols(&inputs)?;
        let values = inputs
            .iter()
            .map(|t| to_tract(t).map(IntoTValue::into_tvalue))
            .collect::<Result<TVec<_>, _>>()?;
        let results = self
            .plan(inputs.iter().map(|t| t.shape.clone()).collect())?
            .run(values)
            .map_err(|e| KitError::internal(format!("running the model: {e:#}")))?;
        results
            .iter()
            .zip(&self.outputs)
            .map(|(value, spec)| from_tract(&spec.name, value))
            .collect()
    }
}

/// A node tract parsed but cannot run: refuse the model now, naming the
/// operator, rather than at its first request.
fn check_operators(model: &InferenceModel) -> Result<(), KitError> {
    let unknown: Vec<String> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<UnimplementedOp>())
        .map(|n| {
            let op = n.op.name();
            let op = op
                .strip_prefix("Unimplemented(")
                .and_then(|o| o.strip_suffix(')'))
                .unwrap_or(&op);
            format!("operator {op} (node '{}')", n.name)
        })
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(KitError::internal(format!(
        "tract does not support {}",
        unknown.join(", ")
    )))
}

/// Tells tract the range every input dim symbol lies in, which `check_inputs`
/// enforces (see [`MAX_DYNAMIC_DIM`]). Unbounded, a `batch * seq` product is
/// never provably large, and tract leaves every element-wise op on such
/// tensors as a generic broadcasting op. A symbol whose ONNX name does not
/// parse back as itself (`seq-len` would read as a subtraction) is left alone.
fn bound_input_symbols(model: &InferenceModel) {
    let mut seen = Vec::new();
    for ix in 0..model.inputs.len() {
        let Ok(fact) = model.input_fact(ix) else {
            continue;
        };
        for dim in fact.shape.dims() {
            let Some(TDim::Sym(sym)) = dim.concretize() else {
                continue;
            };
            if seen.contains(&sym) {
                continue;
            }
            let name = sym.to_string();
            if model.symbols.parse_tdim(&name).ok() == Some(TDim::Sym(sym.clone())) {
                // A plain identifier: both assertions parse.
                let _ = model.symbols.add_assertion(format!("{name}>=1"));
                let _ = model
                    .symbols
                    .add_assertion(format!("{name}<={MAX_DYNAMIC_DIM}"));
            }
            seen.push(sym);
        }
    }
}

/// tract's optimized model, with every axis op made to leave natural strides.
fn optimize(model: InferenceModel) -> TractResult<TypedModel> {
    let mut typed = model.into_optimized()?;
    for id in 0..typed.nodes().len() {
        if let Some(op) = typed.node(id).op_as::<AxisOp>() {
            let op = NaturalAxisOp(op.clone());
            typed.node_mut(id).op = Box::new(op);
        }
    }
    Ok(typed)
}

/// An `AxisOp` whose output has natural (C-order) strides. A reshape that
/// turns out at run time to add a unit axis (`batch` = 1) goes through
/// `Tensor::insert_axis`, which gives the new axis its neighbour's stride; the
/// data is laid out the same, but tract's fast element-wise kernels refuse
/// non-natural strides and fall back to a generic broadcasting loop for every
/// op downstream. With this and [`bound_input_symbols`], MiniLM's one plan for
/// every `[batch, seq]` runs a 17-token input as fast as a plan made for
/// `[1, 17]`; before, it was 1.4–1.6× slower.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct NaturalAxisOp(AxisOp);

impl Op for NaturalAxisOp {
    fn name(&self) -> StaticName {
        self.0.name()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        self.0.info()
    }

    op_as_typed_op!();
}

impl EvalOp for NaturalAxisOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.0
            .eval(ctx, inputs)?
            .into_iter()
            .map(|value| {
                if value.strides() == &*TractTensor::natural_strides(value.shape()) {
                    return Ok(value);
                }
                // Axis ops move no data, and tract tensors are dense, so the
                // natural strides describe the same layout.
                let mut tensor = value.into_tensor();
                let shape: TVec<usize> = tensor.shape().into();
                tensor.set_shape(&[tensor.len()])?;
                tensor.set_shape(&shape)?;
                Ok(tensor.into_tvalue())
            })
            .collect()
    }
}

impl TypedOp for NaturalAxisOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.0.output_facts(inputs)
    }

    as_op!();
}

fn has_dynamic_inputs(model: &InferenceModel) -> bool {
    (0..model.inputs.len()).any(|ix| {
        model.input_fact(ix).is_ok_and(|f| {
            f.shape.is_open()
                || f.shape
                    .dims()
                    .any(|d| !matches!(d.concretize(), Some(TDim::Val(_))))
        })
    })
}

type Signature = (Vec<TensorSpec>, Vec<TensorSpec>, Vec<Vec<Option<String>>>);

/// Inputs, outputs and input dim symbols of a typed model.
fn typed_signature(typed: &TypedModel) -> Result<Signature, KitError> {
    let internal = |what: &str, e: tract_onnx::prelude::TractError| {
        KitError::internal(format!("{what}: {e:#}"))
    };
    let mut inputs = Vec::new();
    let mut input_symbols = Vec::new();
    for (ix, outlet) in typed
        .input_outlets()
        .map_err(|e| internal("inputs", e))?
        .iter()
        .enumerate()
    {
        let name = typed.node(outlet.node).name.clone();
        let fact = typed.input_fact(ix).map_err(|e| internal("inputs", e))?;
        inputs.push(spec(name, fact)?);
        input_symbols.push(
            fact.shape
                .dims()
                .iter()
                .map(|d| match d {
                    TDim::Sym(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect(),
        );
    }
    let mut outputs = Vec::new();
    for outlet in typed.output_outlets().map_err(|e| internal("outputs", e))? {
        let name = typed
            .outlet_label(*outlet)
            .map(str::to_owned)
            .unwrap_or_else(|| typed.node(outlet.node).name.clone());
        let fact = typed
            .outlet_fact(*outlet)
            .map_err(|e| internal("outputs", e))?;
        outputs.push(spec(name, fact)?);
    }
    Ok((inputs, outputs, input_symbols))
}

/// The same, from an analysed model whose dynamic dims are not yet typed.
fn inferred_signature(model: &InferenceModel) -> Result<Signature, KitError> {
    let spec = |name: String, fact: &InferenceFact| -> Result<TensorSpec, KitError> {
        let dt = fact.datum_type.concretize().ok_or_else(|| {
            KitError::internal(format!(
                "cannot tell the datatype of '{name}' without running"
            ))
        })?;
        let datatype = datatype(dt).ok_or_else(|| {
            KitError::internal(format!(
                "'{name}' has datatype {dt:?}, which has no OIP equivalent"
            ))
        })?;
        let shape = fact
            .shape
            .dims()
            .map(|d| match d.concretize() {
                Some(TDim::Val(v)) => usize::try_from(v).ok(),
                _ => None,
            })
            .collect();
        Ok(TensorSpec {
            name,
            datatype,
            shape,
        })
    };
    let internal = |e: tract_onnx::prelude::TractError| KitError::internal(format!("{e:#}"));
    let mut inputs = Vec::new();
    let mut input_symbols = Vec::new();
    for (ix, outlet) in model.input_outlets().map_err(internal)?.iter().enumerate() {
        let fact = model.input_fact(ix).map_err(internal)?;
        inputs.push(spec(model.node(outlet.node).name.clone(), fact)?);
        input_symbols.push(
            fact.shape
                .dims()
                .map(|d| match d.concretize() {
                    Some(TDim::Sym(s)) => Some(s.to_string()),
                    _ => None,
                })
                .collect(),
        );
    }
    let mut outputs = Vec::new();
    for outlet in model.output_outlets().map_err(internal)? {
        let name = model
            .outlet_label(*outlet)
            .map(str::to_owned)
            .unwrap_or_else(|| model.node(outlet.node).name.clone());
        outputs.push(spec(name, model.outlet_fact(*outlet).map_err(internal)?)?);
    }
    Ok((inputs, outputs, input_symbols))
}

fn spec(name: String, fact: &TypedFact) -> Result<TensorSpec, KitError> {
    let datatype = datatype(fact.datum_type).ok_or_else(|| {
        KitError::internal(format!(
            "'{name}' has datatype {:?}, which has no OIP equivalent",
            fact.datum_type
        ))
    })?;
    let shape = fact
        .shape
        .dims()
        .iter()
        .map(|d| d.as_i64().and_then(|d| usize::try_from(d).ok()))
        .collect();
    Ok(TensorSpec {
        name,
        datatype,
        shape,
    })
}

/// The OIP datatype a tract datum type is served as. Narrow integer types
/// without an OIP name in the kit widen (I16/U16 to INT32, U32/U64/TDim to INT64).
fn datatype(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::F32 => DataType::Fp32,
        DatumType::F64 => DataType::Fp64,
        DatumType::F16 => DataType::Fp16,
        DatumType::I64 | DatumType::U32 | DatumType::U64 | DatumType::TDim => DataType::Int64,
        DatumType::I32 | DatumType::I16 | DatumType::U16 => DataType::Int32,
        DatumType::I8 => DataType::Int8,
        DatumType::U8 => DataType::Uint8,
        DatumType::Bool => DataType::Bool,
        _ => return None,
    })
}

fn to_tract(t: &Tensor) -> Result<TractTensor, KitError> {
    let shape = &t.shape;
    let r = match &t.data {
        TensorData::Fp32(v) => TractTensor::from_shape(shape, v),
        TensorData::Fp64(v) => TractTensor::from_shape(shape, v),
        TensorData::Fp16(v) => TractTensor::from_shape(shape, v),
        TensorData::Int64(v) => TractTensor::from_shape(shape, v),
        TensorData::Int32(v) => TractTensor::from_shape(shape, v),
        TensorData::Int8(v) => TractTensor::from_shape(shape, v),
        TensorData::Uint8(v) => TractTensor::from_shape(shape, v),
        TensorData::Bool(v) => TractTensor::from_shape(shape, v),
    };
    r.map_err(|e| KitError::bad_request(format!("input '{}': {e:#}", t.name)))
}

fn from_tract(name: &str, t: &TractTensor) -> Result<Tensor, KitError> {
    let internal = |e: tract_onnx::prelude::TractError| {
        KitError::internal(format!("reading output '{name}': {e:#}"))
    };
    let dt = datatype(t.datum_type()).ok_or_else(|| {
        KitError::internal(format!(
            "output '{name}' has datatype {:?}, which has no OIP equivalent",
            t.datum_type()
        ))
    })?;
    let wanted = match dt {
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
        DataType::Fp16 => DatumType::F16,
        DataType::Int64 => DatumType::I64,
        DataType::Int32 => DatumType::I32,
        DataType::Int8 => DatumType::I8,
        DataType::Uint8 => DatumType::U8,
        DataType::Bool => DatumType::Bool,
    };
    let t = t.cast_to_dt(wanted).map_err(internal)?;
    let view = t.try_as_plain_ram().map_err(internal)?;
    let data = match dt {
        DataType::Fp32 => TensorData::Fp32(view.as_slice().map_err(internal)?.to_vec()),
        DataType::Fp64 => TensorData::Fp64(view.as_slice().map_err(internal)?.to_vec()),
        DataType::Fp16 => TensorData::Fp16(view.as_slice().map_err(internal)?.to_vec()),
        DataType::Int64 => TensorData::Int64(view.as_slice().map_err(internal)?.to_vec()),
        DataType::Int32 => TensorData::Int32(view.as_slice().map_err(internal)?.to_vec()),
        DataType::Int8 => TensorData::Int8(view.as_slice().map_err(internal)?.to_vec()),
        DataType::Uint8 => TensorData::Uint8(view.as_slice().map_err(internal)?.to_vec()),
        DataType::Bool => TensorData::Bool(view.as_slice().map_err(internal)?.to_vec()),
    };
    Tensor::new(name, t.shape().to_vec(), data).map_err(|e| KitError::internal(e.message()))
}

/// The tract-linalg matrix-multiply dispatch tiers that apply in this build on
/// this machine, best first, e.g. `["wasm-simd128", "generic"]` in a component
/// built with `+simd128`. A diagnostic: it shows that the SIMD kernels were
/// compiled in and registered (their registration runs as a constructor).
pub fn linalg_tiers() -> Vec<&'static str> {
    use tract_onnx::tract_core::tract_linalg::{isa, mmm_tiers};
    mmm_tiers::for_isa(&isa::native())
        .iter()
        .map(|t| t.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::check_outputs;
    use tract_onnx::pb::{AttributeProto, GraphProto, NodeProto, ValueInfoProto};

    fn graph(name: &str, outputs: &[&str], node: NodeProto) -> GraphProto {
        let value = |name: &&str| ValueInfoProto {
            name: name.to_string(),
            ..Default::default()
        };
        GraphProto {
            name: name.into(),
            input: [value(&"x")].into(),
            node: vec![node],
            output: outputs.iter().map(value).collect(),
            ..Default::default()
        }
    }

    fn node(op: &str, output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: vec!["x".into()],
            output: vec![output.into()],
            attribute,
            ..Default::default()
        }
    }

    /// Graph outputs must name a value of their own graph, subgraphs too.
    #[test]
    fn an_output_no_value_defines_is_refused_in_any_graph() {
        let ok = graph("main", &["y", "x"], node("Relu", "y", vec![]));
        assert!(check_outputs(&ok).is_ok());
        let bad = graph("main", &["y", "z"], node("Relu", "y", vec![]));
        let err = check_outputs(&bad).unwrap_err();
        assert!(
            err.to_string().contains("graph `main` has an output `z`"),
            "{err:?}"
        );
        // An If's branch that names an outer value as its output.
        let branch = |outputs| AttributeProto {
            name: "then_branch".into(),
            g: Some(graph("then", outputs, node("Neg", "t", vec![]))),
            ..Default::default()
        };
        let main = |outputs| graph("main", &["y"], node("If", "y", vec![branch(outputs)]));
        assert!(check_outputs(&main(&["t"])).is_ok());
        let err = check_outputs(&main(&["y"])).unwrap_err();
        assert!(
            err.to_string().contains("graph `then` has an output `y`"),
            "{err:?}"
        );
    }
}
