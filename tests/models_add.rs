//! `edgeinfer models add`: real ONNX models served over OIP with no code,
//! checked against ONNX Runtime; models tract cannot run are refused at add
//! time, naming the operator.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{App, artifacts, component, manifest};
use serde_json::Value;

/// Added by models/fetch.py's `extra` group, with references from models/reference.py.
const EXTRA: [&str; 3] = ["ppocr-cls", "silero-vad", "squeezenet"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn add(app_dir: &Path, name: &str, file: &Path, engine: &str) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeinfer"));
    cmd.args(["models", "add", name, "--engine", engine])
        .arg(file);
    // PP-OCR's classifier is planned per input shape: plan the one the
    // references use at build time.
    if name.starts_with("ppocr-cls") {
        cmd.args(["--shape", "x=1,3,48,192"]);
    }
    cmd.arg("--from")
        .arg(app_dir.join("spin.toml"))
        .output()
        .unwrap()
}

/// An app laid out like this repository: `models add` writes build commands
/// for `functions/` and bakes from `target/wasm/`, so link both in.
fn app_like_repo() -> App {
    App::new(manifest(&component("hello", "/hello", artifacts::HELLO)))
}

/// The baked files go to the app's own `target/baked/`, so every run bakes.
fn link_repo(dir: &Path) {
    std::os::unix::fs::symlink(repo().join("functions"), dir.join("functions")).unwrap();
    std::fs::create_dir(dir.join("target")).unwrap();
    std::os::unix::fs::symlink(repo().join("target/wasm"), dir.join("target/wasm")).unwrap();
}

#[tokio::test]
async fn added_models_match_onnx_runtime_over_oip() {
    let app = app_like_repo().arg("--build");
    let dir = app.write();
    link_repo(dir.path());
    // Each model twice: tract in the sandbox, and run by the host (wasi:nn).
    for name in EXTRA {
        for (served, engine) in [
            (name.to_string(), "tract"),
            (format!("{name}-nn"), "wasi-nn"),
        ] {
            let out = add(
                dir.path(),
                &served,
                &repo().join(format!("models/extra/{name}/model.onnx")),
                engine,
            );
            assert!(
                out.status.success(),
                "{served}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                dir.path()
                    .join(format!("models/{served}/model.onnx"))
                    .exists()
            );
        }
    }
    let config = std::fs::read_to_string(dir.path().join("edgeinfer.toml")).unwrap();
    for name in EXTRA {
        assert!(config.contains(&format!("[component.{name}-nn]\nengine = \"wasi-nn\"")));
    }
    // spin.toml stays a plain Spin manifest that names the new components.
    let text = std::fs::read_to_string(dir.path().join("spin.toml")).unwrap();
    for name in EXTRA {
        assert!(text.contains(&format!("[component.{name}]")));
        assert!(text.contains(&format!("route = \"/v2/models/{name}/...\"")));
    }

    let host = app.start_in(dir).await;
    // One function baked with three models: compiled at most once, since
    // baking compiles through wasmtime's code cache.
    let baked: Vec<String> = host
        .log()
        .into_iter()
        .filter(|l| l.contains("Baked component"))
        .collect();
    assert_eq!(baked.len(), EXTRA.len(), "{baked:?}");
    assert!(
        baked[1..]
            .iter()
            .all(|l| l.ends_with("(its code from the cache)")),
        "{baked:?}"
    );
    for name in EXTRA {
        let meta: Value = host.get_json(&format!("/v2/models/{name}")).await;
        assert_eq!(meta["name"], name);
        // Built with +simd128, the component runs tract's wasm SIMD kernels.
        assert_eq!(meta["backend"]["linalg"][0], "wasm-simd128", "{meta}");
        assert_eq!(
            host.get(&format!("/v2/models/{name}/ready")).await.status(),
            200
        );

        // The wasi:nn twin says so, and the host ran its model.
        let nn = format!("{name}-nn");
        let meta: Value = host.get_json(&format!("/v2/models/{nn}")).await;
        assert_eq!(meta["backend"]["name"], "wasi-nn", "{meta}");

        let reference = common::read_json(&format!("models/extra/{name}/reference.json"));
        for case in reference.as_array().unwrap() {
            common::infer_matches_reference(&host, name, case).await;
            common::infer_matches_reference(&host, &nn, case).await;
        }
        // Tract in the sandbox takes OIP binary tensors too, streamed in chunks.
        common::binary_infer_matches_reference(
            &host,
            name,
            &reference[0],
            common::Framing::Chunked,
        )
        .await;
    }
}

/// A one-node ONNX graph using an operator no runtime implements.
fn unsupported_model(path: &Path) {
    use prost::Message;
    use tract_onnx::pb;
    let value = |name: &str| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1, // FLOAT
                shape: Some(pb::TensorShapeProto {
                    dim: vec![pb::tensor_shape_proto::Dimension {
                        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(4)),
                        ..Default::default()
                    }],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: vec![pb::NodeProto {
                name: "mystery".into(),
                op_type: "FrobnicateTensor".into(),
                input: vec!["x".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            input: vec![value("x")],
            output: vec![value("y")],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

#[test]
fn a_model_tract_cannot_run_is_refused_at_add_time() {
    let dir = app_like_repo().write();
    let before = std::fs::read_to_string(dir.path().join("spin.toml")).unwrap();

    let bad = dir.path().join("mystery.onnx");
    unsupported_model(&bad);
    let out = add(dir.path(), "mystery", &bad, "tract");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FrobnicateTensor"),
        "names the operator: {err}"
    );

    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"definitely not protobuf").unwrap();
    let out = add(dir.path(), "corrupt", &corrupt, "tract");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt.onnx"));

    // Files tract panics on: refused with the file and why, not a crash.
    for (name, bytes, why) in common::malformed_digits() {
        let file = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&file, bytes).unwrap();
        let out = add(dir.path(), name, &file, "tract");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        common::assert_not_a_panic(&out.status, &err);
        assert!(
            err.contains(&format!("{name}.onnx")) && err.contains(why),
            "{err}"
        );
    }

    let out = add(dir.path(), "Bad_Name", &bad, "wasi-nn");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid model name"));

    // Nothing was half-added.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("spin.toml")).unwrap(),
        before
    );
    assert!(!dir.path().join("models").exists());
}
