//! Misbehaving guests are contained: each gets a clear 5xx, and the host
//! keeps serving everyone else.

mod common;

use std::time::{Duration, Instant};

use common::{App, Host, artifacts, component, error_body, guest_error, manifest};

const TIMEOUT_MS: u64 = 1500;

async fn host() -> Host {
    App::new(manifest(&format!(
        "{}{}{}",
        component("probe", "/probe/...", artifacts::PROBE),
        component("hello", "/hello", artifacts::HELLO),
        component("hello-p2", "/p2/...", artifacts::HELLO_P2),
    )))
    .runtime_config(format!(
        "[component.probe]\ntimeout_ms = {TIMEOUT_MS}\nmax_memory_mb = 64\nmax_body_kb = 64\n"
    ))
    .start()
    .await
}

async fn still_serving(host: &Host) {
    let r = host.get("/hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Hello from edgeinfer\n");
}

#[tokio::test]
async fn infinite_loop_is_stopped_at_the_deadline_with_504() {
    let host = host().await;
    let start = Instant::now();
    let (status, msg) = error_body(host.get("/probe/loop").await).await;
    let took = start.elapsed();
    assert_eq!(status, 504, "{msg}");
    assert!(msg.contains("deadline"), "{msg}");
    assert!(
        took >= Duration::from_millis(TIMEOUT_MS),
        "stopped early: {took:?}"
    );
    // Generous: the point is that it is stopped, not how precisely.
    assert!(
        took < Duration::from_millis(TIMEOUT_MS * 4),
        "stopped late: {took:?}"
    );
    still_serving(&host).await;
}

#[tokio::test]
async fn a_looping_guest_does_not_starve_others() {
    let host = host().await;
    let looping = host.get_in_background("/probe/loop");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Answered while the loop still runs.
    still_serving(&host).await;
    assert!(!looping.is_finished());
    let (status, body) = looping.await.unwrap();
    assert_eq!(status, 504, "{body}");
}

#[tokio::test]
async fn memory_hog_hits_its_cap() {
    let host = host().await;
    let (status, msg) = error_body(host.get("/probe/alloc").await).await;
    assert_eq!(status, 500);
    assert!(msg.contains("memory limit of 64 MiB"), "{msg}");
    still_serving(&host).await;
}

#[tokio::test]
async fn stack_overflow_panic_and_huge_response_are_5xx() {
    let host = host().await;
    for path in ["/probe/stack", "/probe/deep", "/probe/panic", "/probe/big"] {
        let (status, msg) = error_body(host.get(path).await).await;
        assert_eq!(status, 500, "{path}: {msg}");
        assert!(
            msg.contains("trapped") || msg.contains("memory"),
            "{path}: {msg}"
        );
        still_serving(&host).await;
    }
}

/// A Rust guest that panics aborts, and the trap says only `unreachable`:
/// the answer quotes the panic the guest wrote to stderr, and the next call,
/// in a fresh instance, starts with a clean stderr.
#[tokio::test]
async fn a_panic_is_answered_with_its_message() {
    let host = host().await;
    let (status, msg) = error_body(host.get("/probe/panic").await).await;
    assert_eq!(status, 500, "{msg}");
    assert!(msg.contains("the component trapped"), "{msg}");
    assert!(msg.contains("panicked at probe/src/lib.rs:"), "{msg}");
    assert!(msg.contains(": probe panic"), "{msg}");
    let (status, msg) = error_body(host.get("/probe/deep").await).await;
    assert_eq!(status, 500, "{msg}");
    assert!(!msg.contains("panicked"), "another call's stderr: {msg}");
    still_serving(&host).await;
}

/// `path` fails with a 500 that says each of `says`; the host serves on,
/// and the failed call has its record.
async fn fails_saying(path: &str, component: &str, says: &[&str]) {
    let host = host().await;
    let (status, msg) = error_body(host.get(path).await).await;
    assert_eq!(status, 500, "{msg}");
    for said in says {
        assert!(msg.contains(said), "{msg}");
    }
    still_serving(&host).await;
    let events = host.events();
    assert_eq!(events.len(), 2, "every call has its record: {events:?}");
    let failed = events.iter().find(|e| e["component"] == component);
    assert_eq!(failed.unwrap()["status"], 500, "{events:?}");
}

#[tokio::test]
async fn an_exit_is_answered_with_its_status_and_last_words() {
    let says = [
        "the component failed",
        // wasi:cli/exit@0.2 carries only failure, which wasmtime reports as 1.
        "it exited with status 1",
        "probe: giving up on purpose",
    ];
    fails_saying("/probe/exit", "probe", &says).await;
}

#[tokio::test]
async fn a_guest_that_never_answers_is_a_500_with_its_last_words() {
    let says = [
        "the component failed",
        "response-outparam::set",
        "hello-p2: no answer on purpose",
    ];
    fails_saying("/p2/silent", "hello-p2", &says).await;
}

/// Exit status 0 after a whole answer is a success, as it is for a command.
#[tokio::test]
async fn an_exit_0_after_the_answer_is_a_success() {
    let host = host().await;
    let r = host.get("/p2/exit").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Hello from edgeinfer\n");
    let events = host.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["status"], 200, "{}", events[0]);
    assert_eq!(events[0]["outcome"], "ok", "{}", events[0]);
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let host = host().await;
    let big = vec![b'x'; 65 * 1024];
    // Declared with Content-Length.
    let (status, msg) = error_body(
        host.client
            .post(host.url("/probe/echo"))
            .body(big.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413, "{msg}");
    // Chunked, so the size is only known while reading.
    let chunks = futures_stream(big);
    let (status, _) = error_body(
        host.client
            .post(host.url("/probe/echo"))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413);

    // Just under the limit passes through intact.
    let ok = vec![b'y'; 64 * 1024];
    let r = host
        .client
        .post(host.url("/probe/echo"))
        .body(ok.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), ok.as_slice());
    still_serving(&host).await;
}

/// Model files tract cannot read, in the sandbox (the `oip` function with
/// tract inside, unbaked): a 500 with the reason. Where tract panics, a wasm
/// guest cannot catch it and traps, and the host quotes the panic from its
/// stderr; the kit refuses the graphs it knows tract panics on before tract
/// reads them. The host serves on and meters every call.
#[tokio::test]
async fn a_model_tract_cannot_read_in_the_sandbox_is_a_500() {
    let [dangling, argmax] = common::malformed_digits();
    let models = [
        (
            "text",
            b"not an ONNX model\n".to_vec(),
            "parsing the ONNX model",
        ),
        dangling,
        (
            argmax.0,
            argmax.1,
            "Illegal combination of values for rank and axis: 2 and 99",
        ),
    ];
    let mut spin = component("hello", "/hello", artifacts::HELLO);
    let mut app = App::new(String::new());
    for (name, bytes, _) in &models {
        spin.push_str(&component(name, &format!("/{name}/..."), artifacts::OIP));
        spin.push_str(&format!(
            "files = [{{ source = \"{name}\", destination = \"/model\" }}]\n"
        ));
        app = app.file(&format!("{name}/model.onnx"), bytes.clone());
    }
    app.manifest = manifest(&spin);
    let host = app.start().await;
    for (name, _, why) in &models {
        let path = format!("/{name}/v2/models/model/infer");
        let pixels = serde_json::json!({"inputs": [common::pixels(64, "FP32")]});
        let resp = host.client.post(host.url(&path)).json(&pixels).send().await;
        let (status, msg) = guest_error(resp.unwrap()).await;
        assert_eq!(status, 500, "{name}: {msg}");
        assert!(msg.contains(why), "{name}: {msg}");
        still_serving(&host).await;
    }
    let events = host.events();
    assert_eq!(events.len(), 2 * models.len(), "every call has its record");
    for (name, _, _) in &models {
        let e = events.iter().find(|e| e["component"] == *name).unwrap();
        assert_eq!(e["status"], 500, "{e}");
    }
}

fn futures_stream(
    data: Vec<u8>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    tokio_stream::iter(chunks)
}
