//! Admission control (429/503 with Retry-After), scale to zero and back,
//! single-flight loading, `/metrics`, and hot reload.

mod common;

use std::time::{Duration, Instant};

use common::{App, Host, artifacts, component, error_body, manifest};

/// The value of the sample `name{labels}` in Prometheus text, if present.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().expect("a number"))
}

async fn metrics(host: &Host) -> String {
    let r = host.get("/metrics").await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

async fn metric(host: &Host, name: &str, labels: &str) -> f64 {
    sample(&metrics(host).await, name, labels).unwrap_or(0.0)
}

/// `edgeinfer_rejected_total` for the probe component and `reason`.
async fn probe_rejected(host: &Host, reason: &str) -> f64 {
    metric(
        host,
        "edgeinfer_rejected_total",
        &format!(r#"component="probe",reason="{reason}""#),
    )
    .await
}

/// Polls `/metrics` until `name{labels}` equals `want`.
async fn wait_metric(host: &Host, name: &str, labels: &str, want: f64, limit: Duration) {
    let start = Instant::now();
    loop {
        let got = metric(host, name, labels).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{name}{{{labels}}} is {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn probe_app(settings: &str) -> App {
    App::new(manifest(&component(
        "probe",
        "/probe/...",
        artifacts::PROBE,
    )))
    .runtime_config(format!("[component.probe]\n{settings}"))
}

#[tokio::test]
async fn a_flood_past_concurrency_and_queue_gets_exactly_the_excess_429() {
    let (concurrency, queue, flood) = (2, 3, 12);
    let host = probe_app(&format!(
        "max_concurrency = {concurrency}\nmax_queue = {queue}\nqueue_timeout_ms = 20000\n"
    ))
    .start()
    .await;
    let started = Instant::now();
    let calls: Vec<_> = (0..flood)
        .map(|_| {
            let client = host.client.clone();
            let url = host.url("/probe/sleep?ms=600");
            tokio::spawn(async move {
                let r = client.get(url).send().await.unwrap();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                let at = started.elapsed();
                let status = r.status().as_u16();
                if status == 200 {
                    assert_eq!(r.text().await.unwrap(), "slept");
                    (status, retry_after, at, String::new())
                } else {
                    let (_, msg) = error_body(r).await;
                    (status, retry_after, at, msg)
                }
            })
        })
        .collect();
    let mut ok = Vec::new();
    let mut rejected = 0;
    for c in calls {
        let (status, retry_after, at, msg) = c.await.unwrap();
        match status {
            200 => ok.push(at),
            429 => {
                rejected += 1;
                assert!(retry_after.is_some(), "429 without Retry-After");
                assert!(msg.contains("capacity"), "{msg}");
                // Turned away at once, not after waiting for a slot.
                assert!(at < Duration::from_millis(550), "429 after {at:?}");
            }
            other => panic!("unexpected status {other}: {msg}"),
        }
    }
    assert_eq!(ok.len(), concurrency + queue);
    assert_eq!(rejected, flood - concurrency - queue);
    // Never more than 2 at once: 5 calls of 600 ms take three rounds.
    let last = ok.iter().max().unwrap();
    assert!(*last >= Duration::from_millis(1700), "finished at {last:?}");

    let text = metrics(&host).await;
    let probe = r#"component="probe""#;
    assert_eq!(
        sample(
            &text,
            "edgeinfer_rejected_total",
            &format!(r#"{probe},reason="queue_full""#)
        ),
        Some((flood - concurrency - queue) as f64)
    );
    assert_eq!(
        sample(
            &text,
            "edgeinfer_requests_total",
            &format!(r#"{probe},status="200""#)
        ),
        Some((concurrency + queue) as f64)
    );
    assert_eq!(
        sample(
            &text,
            "edgeinfer_requests_total",
            &format!(r#"{probe},status="429""#)
        ),
        Some((flood - concurrency - queue) as f64)
    );
    assert_eq!(
        sample(&text, "edgeinfer_pending_requests", probe),
        Some(0.0)
    );
    assert_eq!(sample(&text, "edgeinfer_instances", probe), Some(0.0));
    // Some admitted calls waited a round or two.
    assert_eq!(
        sample(&text, "edgeinfer_queue_duration_seconds_count", probe),
        Some((concurrency + queue) as f64)
    );
}

#[tokio::test]
async fn waiting_past_the_queue_timeout_is_503_with_retry_after() {
    let host = probe_app("max_concurrency = 1\nmax_queue = 4\nqueue_timeout_ms = 200\n")
        .start()
        .await;
    let busy = host.get_in_background("/probe/sleep?ms=1500");
    let probe = r#"component="probe""#;
    wait_metric(
        &host,
        "edgeinfer_instances",
        probe,
        1.0,
        Duration::from_secs(5),
    )
    .await;
    let start = Instant::now();
    let r = host.get("/probe/counter").await;
    let waited = start.elapsed();
    assert!(r.headers().contains_key("retry-after"));
    let (status, msg) = error_body(r).await;
    assert_eq!(status, 503, "{msg}");
    assert!(msg.contains("200 ms"), "{msg}");
    assert!(
        waited >= Duration::from_millis(190),
        "gave up after {waited:?}"
    );
    assert_eq!(busy.await.unwrap().0, 200);
    assert_eq!(probe_rejected(&host, "queue_timeout").await, 1.0);
    // The slot is free again.
    assert_eq!(host.get("/probe/counter").await.status(), 200);
}

fn idle_hello(idle_unload_ms: u64) -> App {
    App::new(manifest(&component("hello", "/hello", artifacts::HELLO))).runtime_config(format!(
        "[component.hello]\nidle_unload_ms = {idle_unload_ms}\n"
    ))
}

/// Waits for `idle_hello`'s component to be unloaded; its cold starts so far.
async fn scaled_to_zero(host: &Host) -> f64 {
    let hello = r#"component="hello""#;
    wait_metric(
        host,
        "edgeinfer_component_loaded",
        hello,
        0.0,
        Duration::from_secs(10),
    )
    .await;
    metric(host, "edgeinfer_cold_starts_total", hello).await
}

#[tokio::test]
async fn idle_components_scale_to_zero_and_come_back_cold() {
    let host = idle_hello(300).start().await;
    let hello = r#"component="hello""#;
    assert_eq!(host.get("/hello").await.status(), 200);
    let cold = scaled_to_zero(&host).await;

    let r = host.get("/hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Hello from edgeinfer\n");
    let text = metrics(&host).await;
    assert_eq!(
        sample(&text, "edgeinfer_cold_starts_total", hello),
        Some(cold + 1.0)
    );
    assert!(sample(&text, "edgeinfer_cold_start_duration_seconds_count", hello).unwrap() >= 1.0);
    assert!(host.log().iter().any(|l| l.contains("cold start")));
    assert!(host.log().iter().any(|l| l.contains("scaled to zero")));
}

#[tokio::test]
async fn a_burst_on_an_unloaded_component_loads_it_once() {
    let host = idle_hello(400).start().await;
    let hello = r#"component="hello""#;
    let cold = scaled_to_zero(&host).await;
    let burst: Vec<_> = (0..32).map(|_| host.get_in_background("/hello")).collect();
    for call in burst {
        assert_eq!(call.await.unwrap().0, 200);
    }
    assert_eq!(
        metric(&host, "edgeinfer_cold_starts_total", hello).await,
        cold + 1.0
    );
}

#[tokio::test]
async fn metrics_lists_every_contract_name() {
    let host = App::new(manifest(&component("hello", "/hello", artifacts::HELLO)))
        .start()
        .await;
    assert_eq!(host.get("/hello").await.status(), 200);
    let r = host.get("/metrics").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for name in [
        "edgeinfer_requests_total",
        "edgeinfer_request_duration_seconds",
        "edgeinfer_queue_duration_seconds",
        "edgeinfer_inference_duration_seconds",
        "edgeinfer_pending_requests",
        "edgeinfer_instances",
        "edgeinfer_component_loaded",
        "edgeinfer_cold_starts_total",
        "edgeinfer_rejected_total",
        "edgeinfer_batch_size",
    ] {
        let base = name.trim_end_matches("_total");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {base} "))),
            "{name} missing from:\n{text}"
        );
    }
    let hello = r#"component="hello""#;
    assert_eq!(
        sample(
            &text,
            "edgeinfer_requests_total",
            &format!(r#"{hello},status="200""#)
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "edgeinfer_request_duration_seconds_count", hello),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "edgeinfer_component_loaded", hello),
        Some(1.0)
    );
    // One structured line per request, with its id, component and status.
    let id = host
        .get("/hello")
        .await
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    host.wait_log(&id, 1, Duration::from_secs(5)).await;
    let line = host.log().into_iter().find(|l| l.contains(&id)).unwrap();
    for field in ["component=hello", "status=200", "us="] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}

#[test]
fn concurrency_beyond_the_shared_pool_is_refused() {
    let two = format!(
        "{}{}",
        component("a", "/a", artifacts::HELLO),
        component("b", "/b", artifacts::HELLO)
    );
    let err = App::new(manifest(&two))
        .runtime_config(
            "[component.a]\nmax_concurrency = 600\n\n[component.b]\nmax_concurrency = 500\n",
        )
        .start_err();
    assert!(
        err.contains("component.b.max_concurrency") && err.contains("pool"),
        "{err}"
    );
    let err = App::new(manifest(&two))
        .runtime_config("[component.a]\nmax_concurrency = 1000\n")
        .start_err();
    assert!(
        err.contains("component.a.max_concurrency") && err.contains("leaving 0"),
        "{err}"
    );
    let err = App::new(manifest(&component("a", "/a", artifacts::HELLO)))
        .runtime_config("[component.a]\nqueue_timeout_ms = 0\n")
        .start_err();
    assert!(err.contains("component.a.queue_timeout_ms"), "{err}");
}

/// Keeps calling `path` from `workers` tasks until told to stop; returns
/// the statuses that were not 200.
fn hammer(
    host: &Host,
    path: &str,
    workers: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<(usize, Vec<String>)>> {
    (0..workers)
        .map(|_| {
            let client = host.client.clone();
            let url = host.url(path);
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut n, mut bad) = (0, Vec::new());
                while !*stop.borrow() {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {}
                        Ok(r) => bad.push(format!("{}: {:?}", r.status(), r.text().await)),
                        Err(e) => bad.push(e.to_string()),
                    }
                    n += 1;
                }
                (n, bad)
            })
        })
        .collect()
}

fn two_routes(extra: bool) -> String {
    let mut body = format!(
        "{}{}",
        component("hello", "/hello", artifacts::HELLO),
        component("probe", "/probe/...", artifacts::PROBE)
    );
    if extra {
        body.push_str("\n[[trigger.http]]\nroute = \"/greet\"\ncomponent = \"hello\"\n");
    }
    manifest(&body)
}

#[tokio::test]
async fn hot_reload_under_load_drops_no_call() {
    let host = App::new(two_routes(false)).start().await;
    assert_eq!(host.get("/greet").await.status(), 404);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let workers = hammer(&host, "/hello", 4, stop);
    // A call in flight across the swaps finishes on the app it started on.
    let slow = host.get_in_background("/probe/sleep?ms=1500");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 1. The manifest changes: picked up by the watcher.
    std::fs::write(host.dir.path().join("spin.toml"), two_routes(true)).unwrap();
    host.wait_log("app reloaded", 1, Duration::from_secs(20))
        .await;
    assert_eq!(host.get("/greet").await.status(), 200);
    // 2. edgeinfer.toml appears: the new limit applies.
    std::fs::write(
        host.dir.path().join("edgeinfer.toml"),
        "[component.probe]\ntimeout_ms = 100\n",
    )
    .unwrap();
    host.wait_log("app reloaded", 2, Duration::from_secs(20))
        .await;
    // 3. SIGHUP, with nothing changed.
    host.signal(libc::SIGHUP);
    host.wait_log("app reloaded", 3, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop_tx.send(true).unwrap();
    let mut total = 0;
    for w in workers {
        let (n, bad) = w.await.unwrap();
        assert!(bad.is_empty(), "failed calls during reload: {bad:?}");
        total += n;
    }
    assert!(total > 20, "only {total} calls made");
    assert_eq!(slow.await.unwrap(), (200, "slept".to_string()));
    // The new deadline holds for new calls.
    let (status, _) = error_body(host.get("/probe/sleep?ms=1000").await).await;
    assert_eq!(status, 504);
    assert_eq!(
        metric(&host, "edgeinfer_reloads_total", r#"result="ok""#).await,
        3.0
    );
}

#[tokio::test]
async fn a_failed_reload_keeps_the_old_app_serving() {
    let host = App::new(two_routes(false)).start().await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let workers = hammer(&host, "/hello", 2, stop);

    // A broken manifest: the watcher tries, fails, and says why.
    std::fs::write(
        host.dir.path().join("spin.toml"),
        "spin_manifest_version = 2\n[application\n",
    )
    .unwrap();
    host.wait_log("reload failed", 1, Duration::from_secs(20))
        .await;
    let line = host
        .log()
        .into_iter()
        .find(|l| l.contains("reload failed"))
        .unwrap();
    assert!(line.contains("spin.toml"), "{line}");
    // A manifest that parses but names a component file that is not wasm.
    std::fs::write(host.dir.path().join("junk.wasm"), "not wasm").unwrap();
    std::fs::write(
        host.dir.path().join("spin.toml"),
        manifest(&component("junk", "/hello", "junk.wasm")),
    )
    .unwrap();
    host.wait_log("reload failed", 2, Duration::from_secs(20))
        .await;
    // A SIGHUP retries, and fails the same way.
    host.signal(libc::SIGHUP);
    host.wait_log("reload failed", 3, Duration::from_secs(20))
        .await;
    let r = host.get("/hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Hello from edgeinfer\n");

    // Fixed: the next change reloads.
    std::fs::write(host.dir.path().join("spin.toml"), two_routes(true)).unwrap();
    host.wait_log("app reloaded", 1, Duration::from_secs(20))
        .await;
    assert_eq!(host.get("/greet").await.status(), 200);

    stop_tx.send(true).unwrap();
    for w in workers {
        let (_, bad) = w.await.unwrap();
        assert!(bad.is_empty(), "failed calls: {bad:?}");
    }
    let text = metrics(&host).await;
    assert_eq!(
        sample(&text, "edgeinfer_reloads_total", r#"result="failed""#),
        Some(3.0)
    );
}

#[tokio::test]
async fn an_exhausted_instance_pool_is_503_with_retry_after() {
    // A pool of two, both taken by calls on the old app while a reload with
    // a new queue setting brings a fresh gate: the engine, not admission,
    // runs out, and says so honestly.
    let host = probe_app("max_concurrency = 2\nmax_queue = 0\n")
        .env("EDGEINFER_POOL_INSTANCES", "2")
        .start()
        .await;
    let slow: Vec<_> = (0..2)
        .map(|_| host.get_in_background("/probe/sleep?ms=4000"))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(
        host.dir.path().join("edgeinfer.toml"),
        "[component.probe]\nmax_concurrency = 2\nmax_queue = 1\n",
    )
    .unwrap();
    host.wait_log("app reloaded", 1, Duration::from_secs(20))
        .await;
    let r = host.get("/probe/counter").await;
    assert!(r.headers().contains_key("retry-after"));
    let (status, msg) = error_body(r).await;
    assert_eq!(status, 503, "{msg}");
    assert!(msg.contains("instance slots"), "{msg}");
    for s in slow {
        assert_eq!(s.await.unwrap().0, 200);
    }
    assert_eq!(probe_rejected(&host, "pool_exhausted").await, 1.0);
    // Slots free again: served.
    assert_eq!(host.get("/probe/counter").await.status(), 200);
}
