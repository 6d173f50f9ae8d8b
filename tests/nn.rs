//! `wasi:nn` in the host: models declared in edgeinfer.toml, loaded once and
//! run natively for the generic `oip-nn` function, checked over HTTP against
//! ONNX Runtime's outputs, for the bundled models and three added ones.

mod common;

use common::{
    App, Framing, Host, artifacts, binary_infer_matches_reference, component, guest_error,
    infer_matches_reference, manifest, oip_inputs, pixels, read_json, repo,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// (model name, model dir under models/, input shapes to plan at load)
const MODELS: [(&str, &str, &str); 6] = [
    ("digits", "digits", ""),
    ("filetype", "filetype", ""),
    ("all-minilm-l6-v2", "embed", ""),
    ("squeezenet", "extra/squeezenet", ""),
    ("ppocr-cls", "extra/ppocr-cls", "x=1,3,48,192"),
    ("silero-vad", "extra/silero-vad", ""),
];

/// One `oip-nn` component per model, each model declared once in `[nn.models]`
/// with `settings` (TOML lines) added to its table.
fn app(models: &[(&str, &str, &str)], settings: &str) -> App {
    let mut spin = String::new();
    let mut config = String::new();
    for (name, dir, shapes) in models {
        let id = name.replace('-', "");
        spin.push_str(&format!(
            r#"
[[trigger.http]]
route = "/v2/models/{name}/..."
component = "{id}"

[component.{id}]
source = "{}"
environment = {{ EDGEINFER_MODEL_NAME = "{name}" }}
"#,
            artifacts::OIP_NN
        ));
        let path = repo().join("models").join(dir).join("model.onnx");
        config.push_str(&format!(
            "[nn.models.{name}]\npath = {:?}\n",
            path.canonicalize().unwrap().display().to_string()
        ));
        if !shapes.is_empty() {
            config.push_str(&format!("shapes = [{shapes:?}]\n"));
        }
        config.push_str(settings);
    }
    App::new(manifest(&spin)).runtime_config(config)
}

async fn metric(host: &Host, name: &str, labels: &str) -> f64 {
    let text = host.get("/metrics").await.text().await.unwrap();
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn wasi_nn_matches_onnx_runtime_for_every_model() {
    every_model_matches(&app(&MODELS, "").start().await, "tract").await;
}

/// The same models and checks on the ONNX Runtime backend.
#[cfg(feature = "onnxruntime")]
#[tokio::test]
async fn onnxruntime_backend_matches_onnx_runtime_for_every_model() {
    let host = app(&MODELS, "backend = \"onnxruntime\"\n").start().await;
    every_model_matches(&host, "onnxruntime").await;
}

async fn every_model_matches(host: &Host, backend: &str) {
    for (name, dir, _) in MODELS {
        let reference = read_json(&format!("models/{dir}/reference.json"));
        let cases = &reference.as_array().unwrap()[..3.min(reference.as_array().unwrap().len())];
        for case in cases {
            infer_matches_reference(host, name, case).await;
        }
        // And the same tensors as OIP binary data, both ways, with the body
        // sized up front and streamed in chunks.
        for framing in [Framing::Length, Framing::Chunked] {
            binary_infer_matches_reference(host, name, &cases[0], framing).await;
        }
        let meta: Value = host.get_json(&format!("/v2/models/{name}")).await;
        assert_eq!(meta["backend"]["name"], "wasi-nn", "{meta}");
        // Each model loaded once, at startup.
        assert_eq!(
            metric(
                host,
                "edgeinfer_nn_model_loads_total",
                &format!("model=\"{name}\"")
            )
            .await,
            1.0
        );
        assert!(
            metric(
                host,
                "edgeinfer_inference_duration_seconds_count",
                &format!("model=\"{name}\",backend=\"{backend}\"")
            )
            .await
                >= cases.len() as f64 + 1.0,
            "{name} ran on {backend}"
        );
        assert!(
            metric(
                host,
                "edgeinfer_nn_computes_total",
                &format!("model=\"{name}\",runs_on=\"core\"")
            )
            .await
                >= cases.len() as f64 + 1.0,
            "{name} ran on the calling instance's core"
        );
    }
    let computed: Vec<Value> = host
        .events()
        .into_iter()
        .filter(|e| e["nn_compute_us"].as_u64() > Some(0))
        .collect();
    assert!(computed.len() >= MODELS.len(), "{}", computed.len());
    for e in &computed {
        assert_eq!(e["nn_backend"], backend, "{e}");
    }
}

#[tokio::test]
async fn one_shared_model_serves_concurrent_instances() {
    let host = app(&MODELS[..1], "").start().await;
    let case = &read_json("models/digits/reference.json")[0];
    let calls = (0..24).map(|_| infer_matches_reference(&host, "digits", case));
    futures::future::join_all(calls).await;
    assert_eq!(
        metric(&host, "edgeinfer_nn_model_loads_total", "model=\"digits\"").await,
        1.0,
        "24 fresh instances, one model load"
    );
    assert!(
        metric(
            &host,
            "edgeinfer_inference_duration_seconds_count",
            "model=\"digits\",backend=\"tract\""
        )
        .await
            >= 24.0
    );
    assert!(
        metric(
            &host,
            "edgeinfer_nn_computes_total",
            "model=\"digits\",runs_on=\"core\""
        )
        .await
            >= 24.0,
        "every call ran inline on its instance's core"
    );
    assert_eq!(
        metric(
            &host,
            "edgeinfer_nn_computes_total",
            "model=\"digits\",runs_on=\"pool\""
        )
        .await,
        0.0,
        "no call went to the blocking pool"
    );
    // The meter has the host's compute time for every call.
    let events = host.events();
    assert_eq!(events.len(), 24);
    for e in &events {
        assert!(e["nn_compute_us"].as_u64().unwrap() > 0, "{e}");
        assert_eq!(e["nn_backend"], "tract");
    }
}

/// `oip-nn` components that load their model from the bytes of a file among
/// their own files (`EDGEINFER_MODEL_FILE`, wasi:nn `load`), as components
/// written for wasmtime's wasi-nn do: no `[nn.models]`. Each of `models`
/// (a name, a model file's bytes) sees its file as `/model/model.onnx`.
fn from_bytes_app(models: &[(&str, Vec<u8>)], nn_settings: &str) -> App {
    let mut spin = String::new();
    for (name, _) in models {
        let route = format!("/v2/models/{name}/...");
        spin.push_str(&component(name, &route, artifacts::OIP_NN));
        spin.push_str(&format!(
            "files = [{{ source = \"{name}\", destination = \"/model\" }}]\n\
             environment = {{ EDGEINFER_MODEL_NAME = \"{name}\", \
             EDGEINFER_MODEL_FILE = \"/model/model.onnx\" }}\n"
        ));
    }
    let mut app = App::new(manifest(&spin)).runtime_config(format!("[nn]\n{nn_settings}"));
    for (name, bytes) in models {
        app = app.file(&format!("{name}/model.onnx"), bytes.clone());
    }
    app
}

fn model_bytes(dir: &str) -> Vec<u8> {
    std::fs::read(repo().join("models").join(dir).join("model.onnx")).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// How many times the host parsed the model of these bytes.
async fn loads_from_bytes(host: &Host, bytes: &[u8]) -> f64 {
    let model = format!("model=\"sha256:{}\"", sha256_hex(bytes));
    metric(host, "edgeinfer_nn_model_loads_total", &model).await
}

/// Fresh instances that all load the same bytes at once share one parse,
/// and the host keeps at most `max_models_from_bytes` such models: one
/// dropped to make room is parsed again on its next load.
#[tokio::test]
async fn a_model_loaded_from_bytes_is_parsed_once_while_kept() {
    let (digits, ppocr) = (model_bytes("digits"), model_bytes("extra/ppocr-cls"));
    let host = from_bytes_app(
        &[("digits", digits.clone()), ("ppocr", ppocr.clone())],
        "max_models_from_bytes = 1\n",
    )
    .start()
    .await;
    let digits_cases = read_json("models/digits/reference.json");
    let calls = (0..16).map(|i| infer_matches_reference(&host, "digits", &digits_cases[i % 4]));
    futures::future::join_all(calls).await;
    assert_eq!(
        loads_from_bytes(&host, &digits).await,
        1.0,
        "16 instances loading the same bytes at once, one parse"
    );

    // ppocr-cls takes the one place, with its input shape left to tract.
    let ppocr_cases = read_json("models/extra/ppocr-cls/reference.json");
    infer_matches_reference(&host, "ppocr", &ppocr_cases[0]).await;
    binary_infer_matches_reference(&host, "ppocr", &ppocr_cases[1], Framing::Length).await;
    assert_eq!(loads_from_bytes(&host, &ppocr).await, 1.0);
    infer_matches_reference(&host, "digits", &digits_cases[0]).await;
    assert_eq!(
        loads_from_bytes(&host, &digits).await,
        2.0,
        "digits was dropped for ppocr-cls, and parsed again"
    );
    assert_eq!(loads_from_bytes(&host, &ppocr).await, 1.0);

    // Every call metered, with its model's digest and the host's compute.
    let events = host.events();
    assert_eq!(events.len(), 19);
    for e in &events {
        let want = if e["component"] == "digits" {
            sha256_hex(&digits)
        } else {
            sha256_hex(&ppocr)
        };
        assert_eq!(e["model_digest"], want, "{e}");
        assert!(e["nn_compute_us"].as_u64().unwrap() > 0, "{e}");
        assert_eq!(e["nn_backend"], "tract", "{e}");
    }
    let meta: Value = host.get_json("/v2/models/digits").await;
    assert_eq!(meta["backend"]["file"], "/model/model.onnx", "{meta}");
}

/// A model file that is not a model, or that is missing, is the function's
/// fault: a 500 that says which file and why. The host keeps serving the
/// others, and the ledger has every call.
#[tokio::test]
async fn a_model_file_that_does_not_load_is_a_clear_500() {
    let digits = model_bytes("digits");
    let [dangling, argmax] = common::malformed_digits();
    let mut app = from_bytes_app(
        &[
            ("truncated", digits[..digits.len() / 2].to_vec()),
            ("text", b"not an ONNX model\n".to_vec()),
            (dangling.0, dangling.1),
            (argmax.0, argmax.1),
            ("missing", digits.clone()),
            ("digits", digits),
        ],
        "",
    );
    app.manifest = app.manifest.replace(
        "\"missing\", EDGEINFER_MODEL_FILE = \"/model/model.onnx\"",
        "\"missing\", EDGEINFER_MODEL_FILE = \"/model/gone.onnx\"",
    );
    let host = app.start().await;
    let infer = |model| infer_error(&host, model, vec![pixels(64, "FP32")]);
    // Twice each: the second load of the same bad bytes answers the same.
    for _ in 0..2 {
        // tract would panic on the last two; the kit forestalls or catches it.
        let why = [
            ("truncated", "parsing the ONNX model"),
            ("text", "parsing the ONNX model"),
            (dangling.0, dangling.2),
            (argmax.0, argmax.2),
        ];
        for (model, why) in why {
            let (status, msg) = infer(model).await;
            assert_eq!(status, 500, "{model}: {msg}");
            assert!(
                msg.contains("model /model/model.onnx did not load")
                    && msg.contains("not a model tract can load")
                    && msg.contains(why),
                "{model}: {msg}"
            );
        }
        let (status, msg) = infer("missing").await;
        assert_eq!(status, 500, "{msg}");
        assert!(msg.contains("reading model /model/gone.onnx"), "{msg}");
    }
    // And the good one still serves, next to them.
    infer_matches_reference(
        &host,
        "digits",
        &read_json("models/digits/reference.json")[0],
    )
    .await;
    let events = host.events();
    assert_eq!(events.len(), 11, "every call has its record");
    for e in &events {
        let want = if e["component"] == "digits" { 200 } else { 500 };
        assert_eq!(e["status"], want, "{e}");
    }
}

/// A guest whose deadline passes while the host parses its model does not
/// take the parse with it: the parse runs to its end and the model is kept,
/// so the next guest to load those bytes finds it instead of parsing again.
/// (Before, each such guest began a parse and none lived to keep it, so a
/// model that parses for longer than the deadline never loaded.)
#[tokio::test]
async fn a_load_cut_off_by_its_deadline_still_keeps_its_model() {
    let ppocr = model_bytes("extra/ppocr-cls");
    let case = &read_json("models/extra/ppocr-cls/reference.json")[0];
    // Where the parse falls in a call depends on the machine, so the hasty
    // component's deadline grows, one fresh host each, until it passes
    // while the parse is under way: after the log's "parsing" line and
    // before its "parsed" one.
    let mut timeout_ms = 10;
    let host = loop {
        let settings = format!("[component.hasty]\ntimeout_ms = {timeout_ms}\n");
        let host = from_bytes_app(
            &[("hasty", ppocr.clone()), ("patient", ppocr.clone())],
            &settings,
        )
        .start()
        .await;
        let (status, msg) = infer_error(&host, "hasty", oip_inputs(case)).await;
        assert_eq!(status, 504, "{timeout_ms} ms: {msg}");
        assert!(msg.contains("deadline"), "{msg}");
        host.wait_log(
            "path=\"/v2/models/hasty/infer\"",
            1,
            Duration::from_secs(10),
        )
        .await;
        let log = host.log();
        let at = |what: &str| log.iter().position(|l| l.contains(what));
        let answered = at("path=\"/v2/models/hasty/infer\"").unwrap();
        match (
            at("parsing a model loaded from bytes"),
            at("parsed a model loaded from bytes"),
        ) {
            (Some(parsing), loaded)
                if parsing < answered && loaded.is_none_or(|l| l > answered) =>
            {
                break host;
            }
            (Some(_), _) => {
                panic!("at {timeout_ms} ms the parse ended before the deadline: {log:#?}")
            }
            (None, _) => {}
        }
        assert!(
            timeout_ms < 10_000,
            "no deadline up to 10 s reached the parse"
        );
        timeout_ms = timeout_ms * 3 / 2;
    };

    // The parse goes on without its guest, and is counted when it ends.
    let waited = Instant::now();
    while loads_from_bytes(&host, &ppocr).await < 1.0 {
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "the parse the hasty guest began was never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    infer_matches_reference(&host, "patient", case).await;
    assert_eq!(
        loads_from_bytes(&host, &ppocr).await,
        1.0,
        "the patient guest found the model the hasty one left"
    );
    let events = host.events();
    assert_eq!(events.len(), 2, "both calls have their record: {events:?}");
    for e in &events {
        let want = if e["component"] == "hasty" {
            (Some("timeout"), Some(504))
        } else {
            (Some("ok"), Some(200))
        };
        assert_eq!((e["outcome"].as_str(), e["status"].as_u64()), want, "{e}");
    }
}

/// Posts `inputs` to `model`'s OIP `infer` and reads the function's error.
async fn infer_error(host: &Host, model: &str, inputs: Vec<Value>) -> (u16, String) {
    let resp = host
        .client
        .post(host.url(&format!("/v2/models/{model}/infer")))
        .json(&json!({ "inputs": inputs }))
        .send()
        .await
        .unwrap();
    guest_error(resp).await
}

#[tokio::test]
async fn wrong_shape_type_or_model_is_a_clear_4xx() {
    wrong_input_is_a_clear_4xx("").await;
}

#[cfg(feature = "onnxruntime")]
#[tokio::test]
async fn wrong_shape_type_or_model_is_a_clear_4xx_on_onnxruntime() {
    wrong_input_is_a_clear_4xx("backend = \"onnxruntime\"\n").await;
}

async fn wrong_input_is_a_clear_4xx(settings: &str) {
    let models = [("digits", "digits", ""), ("nope", "digits", "")];
    // `nope` is a component whose graph the host does not have.
    let mut app = app(&models[..1], settings);
    app.manifest.push_str(&format!(
        r#"
[[trigger.http]]
route = "/v2/models/nope/..."
component = "nope"

[component.nope]
source = "{}"
environment = {{ EDGEINFER_MODEL_NAME = "nope" }}
"#,
        artifacts::OIP_NN
    ));
    let host = app.start().await;
    let (status, msg) = infer_error(&host, "digits", vec![pixels(63, "FP32")]).await;
    assert_eq!(status, 400, "{msg}");
    let (status, msg) = infer_error(&host, "digits", vec![pixels(64, "INT64")]).await;
    assert_eq!(status, 400, "{msg}");
    let (status, msg) = infer_error(&host, "nope", vec![pixels(64, "FP32")]).await;
    assert_eq!(status, 404, "{msg}");
    assert!(msg.contains("no model named `nope`"), "{msg}");
    // And the host still serves.
    infer_matches_reference(
        &host,
        "digits",
        &read_json("models/digits/reference.json")[0],
    )
    .await;
}

/// The wasi:nn function carries neither a model nor an engine. Built in one
/// `cargo build` with the tract functions, cargo would unify the kit's
/// features and link tract into it as well.
#[test]
fn the_wasi_nn_function_carries_no_engine() {
    let links_tract = |path: &str| {
        let bytes = std::fs::read(path).unwrap();
        bytes
            .windows(b"tract-core".len())
            .any(|w| w == b"tract-core")
    };
    assert!(
        !links_tract(artifacts::OIP_NN),
        "{} links tract",
        artifacts::OIP_NN
    );
    // The check can see tract where it is linked in.
    assert!(links_tract(artifacts::OIP));
}

#[test]
fn requests_this_build_cannot_meet_are_errors_not_fallbacks() {
    let digits = &MODELS[..1];
    let err = app(digits, "target = \"gpu\"\n").start_err();
    assert!(
        err.contains("[nn.models.digits]") && err.contains("tract runs on the CPU only"),
        "{err}"
    );
    let err = app(digits, "backend = \"onnxruntime\"\ntarget = \"gpu\"\n").start_err();
    assert!(err.contains("[nn.models.digits]"), "{err}");
    if cfg!(feature = "gpu") {
        // The CPU-only ONNX Runtime the tests run on has no CUDA provider.
        assert!(
            err.contains("the CUDA execution provider is not in"),
            "{err}"
        );
    } else if cfg!(feature = "onnxruntime") {
        assert!(err.contains("--features gpu"), "{err}");
    }
    if cfg!(not(feature = "onnxruntime")) {
        let err = app(digits, "backend = \"onnxruntime\"\n").start_err();
        assert!(err.contains("--features onnxruntime"), "{err}");
    }
    let err = app(digits, "max_batch_size = 0\n").start_err();
    assert!(err.contains("max_batch_size"), "{err}");
    let err = app(digits, "batching = \"sometimes\"\n").start_err();
    assert!(err.contains("batching") && err.contains("always"), "{err}");
    let err = app(digits, "")
        .runtime_config("[nn.models.x]\npath = \"missing.onnx\"\n")
        .start_err();
    assert!(err.contains("missing.onnx"), "{err}");
}

/// A declared model that tract panics on stops `up` like any other error in
/// edgeinfer.toml: naming the model's table, its file and why. ONNX Runtime
/// refuses the same files with reasons of its own.
#[test]
fn a_declared_model_tract_panics_on_is_a_startup_error() {
    for (name, bytes, why) in common::malformed_digits() {
        let file = format!("{name}.onnx");
        let mut backends = vec![("tract", why)];
        if cfg!(feature = "onnxruntime") {
            backends.push(("onnxruntime", "with ONNX Runtime"));
        }
        for (backend, why) in backends {
            let err = app(&MODELS[..1], "")
                .runtime_config(format!(
                    "[nn.models.bad]\npath = \"{file}\"\nbackend = \"{backend}\"\n"
                ))
                .file(&file, bytes.clone())
                .start_err();
            assert!(
                err.contains("[nn.models.bad]") && err.contains(&file) && err.contains(why),
                "{backend}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn batched_calls_each_get_their_own_answer() {
    let host = app(
        &MODELS[..1],
        // Always: every batch gathered is stacked, none run one by one for
        // the trial of whether batching pays.
        "max_batch_size = 8\nmax_queue_delay_us = 5000\nbatching = \"always\"\n",
    )
    .start()
    .await;
    let reference = read_json("models/digits/reference.json");
    let cases = reference.as_array().unwrap();
    // 32 calls at once, with different inputs, racing into the batcher.
    let calls = (0..32).map(|i| infer_matches_reference(&host, "digits", &cases[i % cases.len()]));
    futures::future::join_all(calls).await;
    let sum = metric(&host, "edgeinfer_batch_size_sum", "model=\"digits\"").await;
    let batches = metric(&host, "edgeinfer_batch_size_count", "model=\"digits\"").await;
    assert_eq!(sum, 32.0, "every call went through the batcher once");
    assert_eq!(
        metric(
            &host,
            "edgeinfer_nn_computes_total",
            "model=\"digits\",runs_on=\"batch\""
        )
        .await,
        32.0,
        "each caller's compute is counted once, as run by the batcher"
    );
    assert!(
        batches < 32.0,
        "some calls were batched together: {batches} batches"
    );
    assert_eq!(
        metric(&host, "edgeinfer_nn_batching", "model=\"digits\"").await,
        1.0,
        "batching is still on"
    );
    println!("32 concurrent calls ran in {batches} batches");
}

/// squeezenet's input is a fixed `[1,3,224,224]`: a stacked batch fails,
/// each call is run alone and still answered, and from then on the model's
/// calls bypass the batcher.
#[tokio::test]
async fn a_model_that_cannot_batch_is_run_unbatched() {
    let squeezenet = &MODELS[3..4];
    assert_eq!(squeezenet[0].0, "squeezenet");
    let host = app(
        squeezenet,
        "max_batch_size = 4\nmax_queue_delay_us = 500000\n",
    )
    .start()
    .await;
    let reference = read_json("models/extra/squeezenet/reference.json");
    let cases = reference.as_array().unwrap();
    let calls =
        (0..4).map(|i| infer_matches_reference(&host, "squeezenet", &cases[i % cases.len()]));
    futures::future::join_all(calls).await;
    let label = "model=\"squeezenet\"";
    assert_eq!(metric(&host, "edgeinfer_nn_batching", label).await, 0.0);
    // A racing call that reached the model after the stacked batch failed
    // already ran on its core: how many did is up to the scheduler.
    let runs_on = |at| format!("model=\"squeezenet\",runs_on=\"{at}\"");
    let count = async |at| metric(&host, "edgeinfer_nn_computes_total", &runs_on(at)).await;
    let (batched, on_core) = (count("batch").await, count("core").await);
    assert!(
        batched >= 2.0,
        "no batch was tried: {batched} on the batcher"
    );
    assert_eq!(batched + on_core, 4.0);
    infer_matches_reference(&host, "squeezenet", &cases[0]).await;
    assert_eq!(
        count("batch").await,
        batched,
        "the last call went to the batcher"
    );
    assert_eq!(
        count("core").await,
        on_core + 1.0,
        "the last call ran on its instance's core"
    );
}
