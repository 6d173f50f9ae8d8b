//! Bundled model functions over HTTP, against ONNX Runtime's outputs
//! (models/*/reference.json, made by models/reference.py).

mod common;

use common::{
    App, Host, artifacts, error_body, infer_matches_reference, manifest, read_json, repo,
};
use serde_json::{Value, json};

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

async fn digits() -> Host {
    bundled("digits", artifacts::DIGITS).await
}

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

    // Pre-initialization ended by setting the kit's request heap aside above
    // the image, so it is in every instance's memory (digits' image alone is
    // about 2 MiB).
    let events = host.events();
    assert!(events.len() > samples.len(), "{} records", events.len());
    for e in &events {
        let memory = e["max_memory_bytes"].as_u64().unwrap_or_default();
        assert!(memory >= kit::REQUEST_HEAP_RESERVE as u64, "{e}");
    }
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

    // A body cut short: the client declares more than it sends and leaves.
    // What arrived is a whole, valid request, so only the declared length
    // tells it is not the body. The host reads bodies whole, so it answers
    // before the function runs (tests/portable.sh checks the function's own
    // refusal, on a host that streams the body to it).
    let (status, text) = cut_short(
        &host,
        "/models/digits",
        &json_body(json!({"pixels": vec![0.0; 64]})),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("reading the request body"), "{text}");

    // An unknown model name: the host has no route for it.
    let (status, _) = error_body(host.get("/v2/models/nosuch").await).await;
    assert_eq!(status, 404);

    // Still serving.
    let ok = host.get("/v2/models/digits/ready").await;
    assert_eq!(ok.status(), 200);
}

/// POSTs `body` to `path` over a raw connection, declaring 64 bytes more
/// than it sends, then closes its side; the answer's status and body.
async fn cut_short(host: &Host, path: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = host.base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len() + 64
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        conn.read_to_end(&mut answer),
    )
    .await
    .expect("an answer within 30 s")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3)?.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    (status, answer)
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

/// The embed function as spin.toml serves it: baked, at `/v1/embeddings` and
/// `/v2/models/all-minilm-l6-v2/...`.
async fn embed() -> Host {
    let baked = common::shared_state_dir().join("baked/embed.wasm");
    App::new(manifest(&format!(
        r#"
[[trigger.http]]
route = "/v1/embeddings"
component = "embed"

[[trigger.http]]
route = "/v2/models/{EMBED_MODEL}/..."
component = "embed"

[component.embed]
source = "{}"
[component.embed.tool.edgeinfer]
bake = "{}"
"#,
        baked.display(),
        artifacts::EMBED,
    )))
    .arg("--build")
    .start()
    .await
}

const EMBED_MODEL: &str = "all-minilm-l6-v2";

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

async fn embeddings(host: &Host, input: Value) -> Value {
    let resp = host
        .client
        .post(host.url("/v1/embeddings"))
        .json(&json!({ "model": EMBED_MODEL, "input": input }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], EMBED_MODEL);
    for (i, d) in body["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        let e = floats(&d["embedding"]);
        assert_eq!(e.len(), 384);
        let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "L2-normalised: {norm}");
    }
    assert_eq!(
        body["usage"]["prompt_tokens"],
        body["usage"]["total_tokens"]
    );
    body
}

#[tokio::test]
async fn embed_matches_onnx_runtime_over_http() {
    let host = embed().await;
    let reference = read_json("models/embed/reference.json");
    let cases = reference.as_array().unwrap();

    // One text per request, and all of them in one request: ONNX Runtime's
    // embedding (cosine >= 0.99) and the real token count. The reference cuts
    // at 128 tokens, the function at 256 (sentence-transformers' max_seq_length),
    // so the long case is checked apart; the empty string is a 400 on this
    // route (as in OpenAI's API), so it is checked through OIP only.
    let singles: Vec<&Value> = cases
        .iter()
        .filter(|c| c["text"].is_string() && c["name"] != "long_truncated" && c["name"] != "empty")
        .collect();
    assert!(singles.len() >= 7);
    let mut lowest = 1f64;
    for case in &singles {
        let body = embeddings(&host, case["text"].clone()).await;
        assert_eq!(body["data"].as_array().unwrap().len(), 1);
        assert_eq!(
            body["usage"]["prompt_tokens"], case["token_count"],
            "{}",
            case["name"]
        );
        let c = cosine(
            &floats(&body["data"][0]["embedding"]),
            &floats(&case["embedding"]["data"]),
        );
        assert!(c >= 0.99, "{}: cosine {c}", case["name"]);
        lowest = lowest.min(c);
    }
    let texts: Vec<Value> = singles.iter().map(|c| c["text"].clone()).collect();
    let body = embeddings(&host, Value::Array(texts)).await;
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), singles.len());
    let total: u64 = singles
        .iter()
        .map(|c| c["token_count"].as_u64().unwrap())
        .sum();
    assert_eq!(body["usage"]["prompt_tokens"], total);
    for (d, case) in data.iter().zip(&singles) {
        let c = cosine(
            &floats(&d["embedding"]),
            &floats(&case["embedding"]["data"]),
        );
        assert!(c >= 0.99, "batched {}: cosine {c}", case["name"]);
        lowest = lowest.min(c);
    }

    // The reference's padded batch, sent as a list.
    let batch = cases.iter().find(|c| c["name"] == "batch_padded").unwrap();
    let body = embeddings(&host, batch["text"].clone()).await;
    let want = floats(&batch["embedding"]["data"]);
    assert_eq!(body["usage"]["prompt_tokens"], 9 + 12);
    for (row, d) in body["data"].as_array().unwrap().iter().enumerate() {
        let c = cosine(&floats(&d["embedding"]), &want[row * 384..][..384]);
        assert!(c >= 0.99, "batch_padded row {row}: cosine {c}");
        lowest = lowest.min(c);
    }
    eprintln!("lowest cosine to ONNX Runtime over HTTP: {lowest}");

    // A text longer than 128 tokens is cut at 256, not 128.
    let long = cases
        .iter()
        .find(|c| c["name"] == "long_truncated")
        .unwrap();
    let body = embeddings(&host, long["text"].clone()).await;
    let n = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(n > 128 && n <= 256, "{n} tokens");

    // The raw model over OIP v2 equals ONNX Runtime's last_hidden_state,
    // including the empty string, the padded batch and the 128-token case.
    for case in cases {
        infer_matches_reference(&host, EMBED_MODEL, case).await;
    }
    let meta: Value = host.get_json(&format!("/v2/models/{EMBED_MODEL}")).await;
    assert_eq!(meta["name"], EMBED_MODEL);
    let inputs = meta["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 3);
    for input in inputs {
        assert_eq!(input["datatype"], "INT64");
        assert_eq!(input["shape"], json!([-1, -1]));
    }
    assert_eq!(meta["outputs"][0]["name"], "last_hidden_state");
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, -1, 384]));
}

#[tokio::test]
async fn embed_rejects_bad_input_with_a_reason() {
    let host = embed().await;
    let post = |body: Vec<u8>| {
        let req = host
            .client
            .post(host.url("/v1/embeddings"))
            .header("content-type", "application/json")
            .body(body);
        async move { req.send().await.unwrap() }
    };
    let json_body = |v: Value| serde_json::to_vec(&v).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"{\"model\": \"all-minilm-l6-v2\", \"input\": ".to_vec(),
            "malformed JSON",
        ),
        (Vec::new(), "empty body"),
        (
            json_body(json!({"model": EMBED_MODEL})),
            "missing \"input\"",
        ),
        (
            json_body(json!({"model": EMBED_MODEL, "input": ""})),
            "empty string",
        ),
        (
            json_body(json!({"model": EMBED_MODEL, "input": []})),
            "empty array",
        ),
        (
            json_body(json!({"model": EMBED_MODEL, "input": 42})),
            "string or an array",
        ),
        (
            json_body(json!({"model": EMBED_MODEL, "input": ["ok", null]})),
            "input[1]",
        ),
        (
            json_body(json!({"model": EMBED_MODEL, "input": [[101, 102]]})),
            "token arrays",
        ),
        (
            json_body(json!({"model": "text-embedding-3-small", "input": "hi"})),
            "unknown model",
        ),
        (json_body(json!({"input": "hi"})), "missing \"model\""),
        (
            json_body(json!({"model": ["x"], "input": "hi"})),
            "\"model\" must be a string",
        ),
    ];
    for (body, says) in cases {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let resp = post(body).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 400, "{shown}: {text}");
        let v: Value = serde_json::from_str(&text).expect("JSON error body");
        let reason = v["error"].as_str().unwrap();
        assert!(
            reason.contains(says),
            "{shown}: {reason:?} should say {says:?}"
        );
    }

    // Wrong method, OIP errors.
    let resp = host.get("/v1/embeddings").await;
    assert_eq!(resp.status(), 405);
    let resp = host
        .client
        .post(host.url(&format!("/v2/models/{EMBED_MODEL}/infer")))
        .json(&json!({"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // A dynamic dim past the kit's bound (tract plans with dims in
    // 1..=2^24); a zero-sized second dim keeps the body empty.
    let huge = |name: &str| json!({"name": name, "shape": [(1 << 24) + 1, 0], "datatype": "INT64", "data": []});
    let resp = host
        .client
        .post(host.url(&format!("/v2/models/{EMBED_MODEL}/infer")))
        .json(
            &json!({"inputs": [huge("input_ids"), huge("attention_mask"), huge("token_type_ids")]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(text.contains("over the limit of 16777216"), "{text}");
    let resp = host.get(&format!("/v2/models/{EMBED_MODEL}/nosuch")).await;
    assert_eq!(resp.status(), 404);

    // Still serving.
    let body = embeddings(&host, json!("still here")).await;
    assert_eq!(body["usage"]["prompt_tokens"], 4);
}
