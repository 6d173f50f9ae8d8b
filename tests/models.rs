//! Bundled model functions over HTTP, against ONNX Runtime's outputs
//! (models/*/reference.json, made by models/reference.py).

mod common;

use std::path::{Path, PathBuf};

use common::{App, Host, artifacts, error_body, manifest};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_json(rel: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(rel)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Serves a bundled model function the way spin.toml does: baked by
/// `edgeinfer up --build`, at `/models/NAME` and `/v2/models/NAME/...`.
async fn bundled(name: &str, built: &str) -> Host {
    let baked = common::shared_state_dir().join(format!("baked/{name}.wasm"));
    App::new(manifest(&format!(
        r#"
[[trigger.http]]
route = "/models/{name}"
component = "{name}"

[[trigger.http]]
route = "/v2/models/{name}/..."
component = "{name}"

[component.{name}]
source = "{}"
[component.{name}.tool.edgeinfer]
bake = "{built}"
"#,
        baked.display(),
    )))
    .arg("--build")
    .start()
    .await
}

/// Sends one reference case's inputs to OIP `infer` and compares every output.
async fn infer_matches_reference(host: &Host, model: &str, case: &Value) {
    let inputs: Vec<Value> = case["inputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, t)| {
            json!({"name": name, "shape": t["shape"], "datatype": t["datatype"], "data": t["data"]})
        })
        .collect();
    let resp = host
        .client
        .post(host.url(&format!("/v2/models/{model}/infer")))
        .json(&json!({ "inputs": inputs }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", case["name"]);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["model_name"], model);
    for out in body["outputs"].as_array().unwrap() {
        let name = out["name"].as_str().unwrap();
        assert_close(
            &format!("{}/{name}", case["name"]),
            out,
            &case["outputs"][name],
        );
    }
}

async fn digits() -> Host {
    bundled("digits", artifacts::DIGITS).await
}

use common::assert_close;

#[tokio::test]
async fn digits_matches_onnx_runtime_and_scores_on_the_heldout_split() {
    let host = digits().await;

    // OIP v2 inference equals ONNX Runtime's outputs.
    let reference = read_json("models/digits/reference.json");
    for case in reference.as_array().unwrap() {
        infer_matches_reference(&host, "digits", case).await;
    }

    // The product route, over the whole held-out split.
    let heldout = read_json("models/digits/heldout.json");
    let samples = heldout.as_array().unwrap();
    let mut correct = 0;
    for s in samples {
        let resp = host
            .client
            .post(host.url("/models/digits"))
            .json(&json!({ "pixels": s["pixels"] }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        let probs = body["probabilities"].as_array().unwrap();
        assert_eq!(probs.len(), 10);
        let sum: f64 = probs.iter().map(|p| p.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-3, "probabilities sum to {sum}");
        correct += usize::from(body["label"] == s["label"]);
    }
    let accuracy = correct as f64 / samples.len() as f64;
    assert!(accuracy >= 0.95, "held-out accuracy {accuracy}");
}

#[tokio::test]
async fn digits_rejects_bad_input_with_a_reason() {
    let host = digits().await;
    let post = |path: &'static str, ctype: &'static str, body: Vec<u8>| {
        let req = host
            .client
            .post(host.url(path))
            .header("content-type", ctype)
            .body(body);
        async move { req.send().await.unwrap() }
    };
    let json_body = |v: Value| serde_json::to_vec(&v).unwrap();
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        (
            "/models/digits",
            "application/json",
            b"{\"pixels\": [1, 2".to_vec(),
            400,
        ),
        (
            "/models/digits",
            "application/json",
            json_body(json!({"pixels": vec![1.0; 63]})),
            400,
        ),
        (
            "/models/digits",
            "application/json",
            json_body(json!({"pixels": vec![99.0; 64]})),
            400,
        ),
        ("/models/digits", "application/json", Vec::new(), 400),
        (
            "/models/digits",
            "image/png",
            b"\x89PNG\r\n\x1a\nnot really".to_vec(),
            400,
        ),
        (
            "/v2/models/digits/infer",
            "application/json",
            json_body(
                json!({"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": vec![0.0; 63]}]}),
            ),
            400,
        ),
        (
            "/v2/models/digits/infer",
            "application/json",
            json_body(
                json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "INT64", "data": vec![0; 64]}]}),
            ),
            400,
        ),
        (
            "/v2/models/digits/infer",
            "application/json",
            json_body(
                json!({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": vec![0.0; 64]}]}),
            ),
            400,
        ),
        (
            "/v2/models/digits/infer",
            "application/json",
            b"not json".to_vec(),
            400,
        ),
    ];
    for (path, ctype, body, want) in cases {
        let resp = post(path, ctype, body).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, want, "{path}: {text}");
        let v: Value = serde_json::from_str(&text).expect("JSON error body");
        assert!(!v["error"].as_str().unwrap().is_empty(), "{text}");
    }

    // An unknown model name: the host has no route for it.
    let (status, _) = error_body(host.get("/v2/models/nosuch").await).await;
    assert_eq!(status, 404);

    // Still serving.
    let ok = host.get("/v2/models/digits/ready").await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn filetype_agrees_with_the_magika_tool_on_real_files() {
    let host = bundled("filetype", artifacts::FILETYPE).await;
    let expected = read_json("models/filetype/magika_labels.json");
    let samples = expected.as_array().unwrap();
    assert!(samples.len() >= 20, "a varied set of real files");
    for want in samples {
        let file = want["file"].as_str().unwrap();
        let bytes = std::fs::read(repo().join("models/filetype").join(file)).unwrap();
        let resp = host
            .client
            .post(host.url("/models/filetype"))
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{file}");
        let got: Value = resp.json().await.unwrap();
        assert_eq!(got["label"], want["label"], "{file}");
        assert_eq!(got["group"], want["group"], "{file}");
        assert_eq!(got["mime"], want["mime_type"], "{file}");
        let (g, w) = (
            got["score"].as_f64().unwrap(),
            want["score"].as_f64().unwrap(),
        );
        assert!((g - w).abs() <= 1e-3, "{file}: score {g} vs magika's {w}");
    }

    // OIP inference on magika's own feature vectors equals ONNX Runtime's.
    let reference = read_json("models/filetype/reference.json");
    for case in reference.as_array().unwrap().iter().take(4) {
        infer_matches_reference(&host, "filetype", case).await;
    }

    // An empty body is a file too: magika calls it `empty`.
    let r = host
        .client
        .post(host.url("/models/filetype"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["label"], "empty");
}
