//! Input checks, the OIP router and error mapping, with a fake engine; and the
//! tract engine on a real model (the digits MLP in models/, float32 [N, 64]).

use kit::KitError;
use kit::engine::{Engine, LazyEngine, TensorSpec, TractEngine, TractOptions, check_inputs};
use kit::oip::{self, Route};
use kit::respond;
use kit::tensor::{DataType, Tensor, TensorData};
use serde_json::{Value, json};
use spin_sdk::http::Method;

struct Echo {
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl Echo {
    fn new() -> Self {
        let spec = |name: &str, datatype, shape: Vec<Option<usize>>| TensorSpec {
            name: name.into(),
            datatype,
            shape,
        };
        Echo {
            inputs: vec![
                spec("a", DataType::Fp32, vec![None, Some(2)]),
                spec("b", DataType::Int64, vec![None]),
            ],
            outputs: vec![
                spec("a_out", DataType::Fp32, vec![None, Some(2)]),
                spec("b_out", DataType::Int64, vec![None]),
            ],
        }
    }
}

impl Engine for Echo {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, KitError> {
        let inputs = check_inputs(&self.inputs, inputs)?;
        Ok(inputs
            .into_iter()
            .map(|t| Tensor {
                name: format!("{}_out", t.name),
                ..t
            })
            .collect())
    }
}

fn a(shape: Vec<usize>) -> Tensor {
    let n = shape.iter().product();
    Tensor::new("a", shape, vec![1.0f32; n]).unwrap()
}

fn b(n: usize) -> Tensor {
    Tensor::new("b", vec![n], vec![7i64; n]).unwrap()
}

fn bad(r: Result<impl std::fmt::Debug, KitError>, needle: &str) {
    match r {
        Err(KitError::BadRequest(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected a BadRequest containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn inputs_are_checked_and_ordered() {
    let e = Echo::new();
    let out = check_inputs(e.inputs(), vec![b(3), a(vec![3, 2])]).unwrap();
    assert_eq!(out[0].name, "a");
    assert_eq!(out[1].name, "b");
    bad(
        check_inputs(e.inputs(), vec![a(vec![1, 2])]),
        "missing input 'b'",
    );
    bad(
        check_inputs(
            e.inputs(),
            vec![
                a(vec![1, 2]),
                b(1),
                Tensor::new("c", vec![1], vec![1u8]).unwrap(),
            ],
        ),
        "unknown input 'c'",
    );
    bad(
        check_inputs(e.inputs(), vec![a(vec![1, 2]), a(vec![1, 2]), b(1)]),
        "given twice",
    );
    bad(
        check_inputs(e.inputs(), vec![a(vec![1, 3]), b(1)]),
        "dim 1 is 3, the model expects 2",
    );
    bad(
        check_inputs(e.inputs(), vec![a(vec![2]), b(1)]),
        "rank 1, the model expects rank 2 [-1, 2]",
    );
    bad(
        check_inputs(e.inputs(), vec![a(vec![0, 2]), b(1)]),
        "dim 0 is empty",
    );
    let wrong_type = Tensor::new("b", vec![1], vec![1.0f64]).unwrap();
    bad(
        check_inputs(e.inputs(), vec![a(vec![1, 2]), wrong_type]),
        "input 'b': datatype FP64, the model expects INT64",
    );
}

fn body(reply: &respond::Reply) -> Value {
    let (_, _, body) = respond::into_parts(reply.clone());
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn oip_paths() {
    assert_eq!(oip::parse_path("/v2/models/m", "m"), Ok(Route::Metadata));
    assert_eq!(oip::parse_path("/v2/models/m/", "m"), Ok(Route::Metadata));
    assert_eq!(oip::parse_path("/v2/models/m/ready", "m"), Ok(Route::Ready));
    assert_eq!(oip::parse_path("/v2/models/m/infer", "m"), Ok(Route::Infer));
    assert_eq!(
        oip::parse_path("/v2/models/m/versions/1", "m"),
        Ok(Route::Metadata)
    );
    assert_eq!(
        oip::parse_path("/v2/models/m/versions/1/infer", "m"),
        Ok(Route::Infer)
    );
    assert_eq!(
        oip::parse_path("/prefix/v2/models/m/ready", "m"),
        Ok(Route::Ready)
    );
    for (path, needle) in [
        ("/v2/models/other", "unknown model 'other'"),
        ("/v2/models/other/infer", "unknown model 'other'"),
        ("/v2/models/m/versions/2/infer", "no version '2'"),
        ("/v2/models/m/explain", "no route"),
        ("/v2/models/", "unknown model ''"),
    ] {
        match oip::parse_path(path, "m") {
            Err(KitError::NotFound(m)) => assert!(m.contains(needle), "{path}: {m}"),
            other => panic!("{path}: {other:?}"),
        }
    }
    assert!(oip::is_oip_path("/v2/models/m/infer"));
    assert!(!oip::is_oip_path("/models/m"));
}

#[test]
fn oip_handle() {
    let e = Echo::new();
    let engine = || Ok(&e as &dyn Engine);

    let meta = oip::handle(Route::Metadata, &Method::GET, "m", engine, b"", None).unwrap();
    assert_eq!(meta.status(), 200);
    assert_eq!(
        body(&meta),
        json!({"name": "m", "versions": ["1"], "platform": "onnx", "backend": null,
            "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 2]}, {"name": "b", "datatype": "INT64", "shape": [-1]}],
            "outputs": [{"name": "a_out", "datatype": "FP32", "shape": [-1, 2]}, {"name": "b_out", "datatype": "INT64", "shape": [-1]}]})
    );

    let ready = oip::handle(Route::Ready, &Method::GET, "m", engine, b"", None).unwrap();
    assert_eq!(body(&ready), json!({"name": "m", "ready": true}));

    let req = json!({"id": "42", "inputs": [
        {"name": "b", "shape": [1], "datatype": "INT64", "data": [5]},
        {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [[0.5, 1.5]]}]});
    let resp = oip::handle(
        Route::Infer,
        &Method::POST,
        "m",
        engine,
        req.to_string().as_bytes(),
        None,
    )
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        body(&resp),
        json!({"model_name": "m", "model_version": "1", "id": "42", "outputs": [
            {"name": "a_out", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 1.5]},
            {"name": "b_out", "shape": [1], "datatype": "INT64", "data": [5]}]})
    );

    // Only the requested outputs.
    let mut req = req;
    req["outputs"] = json!([{"name": "b_out"}]);
    let resp = oip::handle(
        Route::Infer,
        &Method::POST,
        "m",
        engine,
        req.to_string().as_bytes(),
        None,
    )
    .unwrap();
    assert_eq!(body(&resp)["outputs"].as_array().unwrap().len(), 1);
    req["outputs"] = json!([{"name": "zzz"}]);
    bad(
        oip::handle(
            Route::Infer,
            &Method::POST,
            "m",
            engine,
            req.to_string().as_bytes(),
            None,
        ),
        "unknown output 'zzz'",
    );

    // Errors map to statuses.
    let err = oip::handle(Route::Infer, &Method::POST, "m", engine, b"{", None).unwrap_err();
    let reply = respond::error(&err);
    assert_eq!(reply.status(), 400);
    assert!(
        body(&reply)["error"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
    let err = oip::handle(Route::Infer, &Method::GET, "m", engine, b"", None).unwrap_err();
    assert_eq!(respond::error(&err).status(), 405);
    let err = oip::handle(Route::Metadata, &Method::POST, "m", engine, b"", None).unwrap_err();
    assert_eq!(err.status(), 405);
    let broken = || Err::<&dyn Engine, _>(KitError::internal("no model"));
    let reply = respond::result(oip::handle(
        Route::Ready,
        &Method::GET,
        "m",
        broken,
        b"",
        None,
    ));
    assert_eq!(reply.status(), 500);
    assert_eq!(body(&reply), json!({"error": "no model"}));
    assert_eq!(respond::error(&KitError::not_found("x")).status(), 404);
}

// ---- tract, on the digits model (float32 [N, 64] → label int64 [N], probabilities float32 [N, 10]).

const DIGITS: &[u8] = include_bytes!("../../../models/digits/model.onnx");
static DIGITS_ENGINE: LazyEngine<TractEngine> = LazyEngine::new(|| TractEngine::from_onnx(DIGITS));

fn reference() -> Vec<Value> {
    serde_json::from_str::<Value>(include_str!("../../../models/digits/reference.json"))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn tract_specs_have_a_dynamic_batch() {
    let e = DIGITS_ENGINE.get().unwrap();
    assert!(DIGITS_ENGINE.is_ready());
    assert_eq!(
        e.inputs(),
        &[TensorSpec {
            name: "input".into(),
            datatype: DataType::Fp32,
            shape: vec![None, Some(64)]
        }]
    );
    let outs: Vec<(&str, DataType, Vec<i64>)> = e
        .outputs()
        .iter()
        .map(|s| (s.name.as_str(), s.datatype, s.oip_shape()))
        .collect();
    assert_eq!(
        outs,
        vec![
            ("label", DataType::Int64, vec![-1]),
            ("probabilities", DataType::Fp32, vec![-1, 10])
        ]
    );
}

#[test]
fn tract_matches_the_reference_at_batch_1_and_20() {
    let e = DIGITS_ENGINE.get().unwrap();
    for case in reference() {
        let input = &case["inputs"]["input"];
        let shape: Vec<usize> = serde_json::from_value(input["shape"].clone()).unwrap();
        let data = kit::decode::tensor_data(DataType::Fp32, &input["data"], shape.iter().product())
            .unwrap();
        let out = e
            .run(vec![Tensor::new("input", shape.clone(), data).unwrap()])
            .unwrap();
        let label = out.iter().find(|t| t.name == "label").unwrap();
        let probs = out.iter().find(|t| t.name == "probabilities").unwrap();
        assert_eq!(label.shape, vec![shape[0]]);
        assert_eq!(probs.shape, vec![shape[0], 10]);
        let want_labels: Vec<i64> =
            serde_json::from_value(case["outputs"]["label"]["data"].clone()).unwrap();
        assert_eq!(
            label.data,
            TensorData::Int64(want_labels),
            "{}",
            case["name"]
        );
        let want: Vec<f32> =
            serde_json::from_value(case["outputs"]["probabilities"]["data"].clone()).unwrap();
        for (got, want) in probs.data.as_f32().unwrap().iter().zip(&want) {
            assert!(
                (got - want).abs() < 1e-4,
                "{}: {got} vs {want}",
                case["name"]
            );
        }
    }
}

#[test]
fn tract_rejects_bad_inputs_before_running() {
    let e = DIGITS_ENGINE.get().unwrap();
    bad(
        e.run(vec![
            Tensor::new("input", vec![1, 63], vec![0f32; 63]).unwrap(),
        ]),
        "dim 1 is 63, the model expects 64",
    );
    bad(
        e.run(vec![
            Tensor::new("input", vec![64], vec![0f32; 64]).unwrap(),
        ]),
        "rank 1",
    );
    bad(
        e.run(vec![
            Tensor::new("input", vec![1, 64], vec![0f64; 64]).unwrap(),
        ]),
        "datatype FP64, the model expects FP32",
    );
    bad(
        e.run(vec![
            Tensor::new("pixels", vec![1, 64], vec![0f32; 64]).unwrap(),
        ]),
        "unknown input 'pixels'",
    );
    bad(e.run(vec![]), "missing input 'input'");
    bad(
        e.run(vec![
            Tensor::new("input", vec![0, 64], Vec::<f32>::new()).unwrap(),
        ]),
        "empty",
    );
}

#[test]
fn tract_load_failure_is_internal() {
    match TractEngine::from_onnx(b"not an onnx file") {
        Err(KitError::Internal(m)) => assert!(m.contains("parsing"), "{m}"),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("garbage loaded"),
    }
    static BROKEN: LazyEngine<TractEngine> = LazyEngine::new(|| TractEngine::from_onnx(b""));
    assert!(matches!(BROKEN.get(), Err(KitError::Internal(_))));
    assert!(!BROKEN.is_ready());
}

#[test]
fn tract_input_shapes_fix_dynamic_dims() {
    let fixed = |shapes: &'static [&'static [usize]]| {
        TractEngine::from_onnx_with(
            DIGITS,
            TractOptions {
                input_shapes: shapes,
                ..TractOptions::default()
            },
        )
    };
    let e = fixed(&[&[3, 64]]).unwrap();
    assert_eq!(e.inputs()[0].shape, vec![Some(3), Some(64)]);
    let out = e
        .run(vec![
            Tensor::new("input", vec![3, 64], vec![0f32; 192]).unwrap(),
        ])
        .unwrap();
    assert_eq!(
        out.iter().find(|t| t.name == "label").unwrap().shape,
        vec![3]
    );
    bad(
        e.run(vec![
            Tensor::new("input", vec![1, 64], vec![0f32; 64]).unwrap(),
        ]),
        "dim 0 is 1",
    );
    // A fixed dim that differs, another rank, more shapes than inputs.
    const WRONG: [&[&[usize]]; 3] = [&[&[1, 63]], &[&[64]], &[&[1, 64], &[1]]];
    for wrong in WRONG {
        assert!(
            matches!(fixed(wrong), Err(KitError::Internal(_))),
            "{wrong:?}"
        );
    }
}

/// PP-OCR's classifier feeds `Shape(x)` into a `Reshape`, which tract cannot
/// type with a symbolic batch: it is planned per input shape instead.
#[test]
fn a_graph_needing_concrete_dims_is_planned_per_shape() {
    let bytes = std::fs::read("../../models/extra/ppocr-cls/model.onnx").unwrap();
    let e = TractEngine::from_onnx(&bytes).unwrap();
    assert!(!e.is_shape_polymorphic());
    // The file leaves height dynamic too.
    assert_eq!(e.inputs()[0].shape, vec![None, Some(3), None, None]);
    for (n, w) in [(1, 192), (2, 100)] {
        let x = Tensor::new("x", vec![n, 3, 48, w], vec![0.5f32; n * 3 * 48 * w]).unwrap();
        let out = e.run(vec![x]).unwrap();
        assert_eq!(out[0].shape, vec![n, 2]);
    }
    bad(
        e.run(vec![
            Tensor::new("x", vec![1, 2, 48, 10], vec![0f32; 2 * 48 * 10]).unwrap(),
        ]),
        "dim 1 is 2",
    );
}

/// Binary outputs: the JSON part says each one's byte size, and the bytes
/// follow in output order, after `inference-header-content-length` bytes.
#[test]
fn oip_binary_outputs() {
    let outputs = [
        Tensor::new("y", vec![2], TensorData::Fp32(vec![0.5, -1.0])).unwrap(),
        Tensor::new("z", vec![1], TensorData::Int64(vec![3])).unwrap(),
    ];
    let (body, header) = respond::infer_binary_body("m", Some("7"), &outputs, |n| n == "y");
    let head: serde_json::Value = serde_json::from_slice(&body[..header]).unwrap();
    assert_eq!(head["id"], "7");
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
    assert!(head["outputs"][0].get("data").is_none());
    assert_eq!(head["outputs"][1]["data"], json!([3]));
    let y: Vec<f32> = body[header..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(y, [0.5, -1.0]);
}
