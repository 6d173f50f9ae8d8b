//! Spin route matching and the request headers a guest sees.

mod common;

use common::{App, artifacts, component, error_body, manifest};
use serde_json::Value;

fn app() -> App {
    let probe = artifacts::PROBE;
    App::new(manifest(&format!(
        r#"
[application.trigger.http]
base = "/"
{}
{}
[[trigger.http]]
route = "/users/:id/..."
component = "probe-params"

[component.probe-params]
source = "{probe}"

{}
[[trigger.http]]
route = "/static"
static_response = {{ status_code = 201, headers = {{ x-kind = "static" }}, body = "fixed" }}
"#,
        component("probe-any", "/...", probe),
        component("probe-exact", "/exact/probe/request", probe),
        component("hello-p2", "/p2", artifacts::HELLO_P2),
    )))
}

async fn seen(host: &common::Host, path: &str) -> Value {
    let resp = host.get(path).await;
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn longest_match_wins_and_spin_headers_are_set() {
    let host = app().start().await;

    // The exact route beats the catch-all.
    let exact = seen(&host, "/exact/probe/request?x=1").await;
    let h = &exact["headers"];
    assert_eq!(h["spin-matched-route"], "/exact/probe/request");
    assert_eq!(h["spin-raw-component-route"], "/exact/probe/request");
    assert_eq!(h["spin-component-route"], "/exact/probe/request");
    assert_eq!(h["spin-path-info"], "");
    assert_eq!(h["spin-full-url"], host.url("/exact/probe/request?x=1"));
    assert!(
        exact["uri"]
            .as_str()
            .unwrap()
            .ends_with("/exact/probe/request?x=1")
    );
    let client = h["spin-client-addr"].as_str().unwrap();
    assert!(client.starts_with("127.0.0.1:"), "{client}");

    // Everything else falls to the wildcard, with the rest as path-info.
    let any = seen(&host, "/other/probe/request").await;
    assert_eq!(any["headers"]["spin-matched-route"], "/...");
    assert_eq!(any["headers"]["spin-component-route"], "");
    assert_eq!(any["headers"]["spin-path-info"], "/other/probe/request");
    assert!(any["headers"]["x-request-id"].is_string());

    // `:name` segments come through as spin-path-match-<name>.
    let p = seen(&host, "/users/42/probe/request").await;
    assert_eq!(p["headers"]["spin-matched-route"], "/users/:id/...");
    assert_eq!(p["headers"]["spin-path-match-id"], "42");
    assert_eq!(p["headers"]["spin-path-info"], "/probe/request");
}

#[tokio::test]
async fn clients_cannot_forge_spin_headers() {
    let host = app().start().await;
    let resp = host
        .client
        .get(host.url("/x/probe/request"))
        .header("spin-client-addr", "6.6.6.6:1")
        .header("spin-path-match-id", "forged")
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["headers"]["spin-client-addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(v["headers"].get("spin-path-match-id").is_none());
}

#[tokio::test]
async fn static_responses_p2_components_and_health() {
    let host = app().start().await;

    let r = host.get("/static").await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-kind"], "static");
    assert_eq!(r.text().await.unwrap(), "fixed");

    // A wasi:http/incoming-handler@0.2 component runs beside p3 ones.
    let r = host.get("/p2").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.text().await.unwrap(), "Hello from edgeinfer\n");

    let live: Value = host.get("/v2/health/live").await.json().await.unwrap();
    assert_eq!(live["live"], true);
    let ready: Value = host.get("/v2/health/ready").await.json().await.unwrap();
    assert_eq!(ready["ready"], true);
}

#[tokio::test]
async fn unknown_route_is_404_with_json_error() {
    let only_exact = App::new(manifest(&component("hello", "/hello", artifacts::HELLO)));
    let host = only_exact.start().await;
    let (status, msg) = error_body(host.get("/nope").await).await;
    assert_eq!(status, 404);
    assert!(msg.contains("/nope"), "{msg}");
    // The host keeps serving.
    assert_eq!(host.get("/hello").await.status(), 200);
}

#[tokio::test]
async fn every_request_gets_a_fresh_instance() {
    let host = App::new(manifest(&component("probe", "/...", artifacts::PROBE)))
        .start()
        .await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let r = host.get("/probe/counter").await;
        ids.insert(r.headers()["x-request-id"].to_str().unwrap().to_string());
        // Guest statics start from zero every time: no state leaks between calls.
        assert_eq!(r.text().await.unwrap(), "1");
    }
    assert_eq!(ids.len(), 20, "request ids are unique");
}
