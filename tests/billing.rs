//! Tenants, API keys, quotas, the per-call ledger and billing reports,
//! through the real host and the real CLI.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{App, Host, artifacts, component, error_body, manifest};
use rust_decimal::Decimal;
use serde_json::Value;

const PRICING: &str = r#"
[billing]
currency = "USD"
per_call = 0.0000002
per_gb_second = 0.0000166667
per_million_fuel = 0.013
per_nn_compute_ms = { cpu = 0.0000001, gpu = 0.000002 }

[billing.component.probe]
per_call = "0.000003"
"#;

fn two_components() -> String {
    manifest(&format!(
        "{}{}",
        component("hello", "/hello", artifacts::HELLO),
        component("probe", "/probe/...", artifacts::PROBE)
    ))
}

async fn start(runtime_config: &str) -> Host {
    App::new(two_components())
        .runtime_config(runtime_config)
        .start()
        .await
}

/// `keys create` prints the key as its last line. Returns once the host
/// knows the key (it re-reads keys every 200 ms): `/v1/usage`, which bills
/// nothing, stops answering 401 to it.
async fn new_key(host: &Host, tenant: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["keys", "create", "--tenant", tenant];
    args.extend_from_slice(extra);
    let out = host.cli(&args);
    let key = out.lines().last().unwrap().trim().to_string();
    let id = key
        .strip_prefix("ei_")
        .and_then(|k| k.split_once('_'))
        .map(|(id, _)| id.to_string())
        .expect("a key looks like ei_<id>_<secret>");
    let start = Instant::now();
    while call(host, "/v1/usage?from=2000-01-01&to=2100-01-01", Some(&key))
        .await
        .status()
        == 401
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the host never learned key {id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (id, key)
}

async fn call(host: &Host, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = host.client.get(host.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

/// Waits (the host re-reads keys every 200 ms) until `path` answers `status`.
async fn wait_status(host: &Host, path: &str, key: Option<&str>, status: u16) {
    let start = Instant::now();
    loop {
        let got = call(host, path, key).await.status().as_u16();
        if got == status {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{path} still answers {got}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn keys_gate_app_routes_once_one_exists() {
    let host = start("").await;
    // No keys yet: the app is open.
    assert_eq!(call(&host, "/hello", None).await.status(), 200);

    host.cli(&["tenants", "create", "acme"]);
    let (id, key) = new_key(&host, "acme", &[]).await;
    wait_status(&host, "/hello", None, 401).await;

    let missing = call(&host, "/hello", None).await;
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    let (status, msg) = error_body(missing).await;
    assert_eq!(status, 401);
    assert!(msg.contains("Authorization: Bearer"), "{msg}");
    // Flip the last hex digit, so the key is always wrong by one character.
    let last = if key.ends_with('0') { '1' } else { '0' };
    let bad = format!("{}{last}", &key[..key.len() - 1]);
    let (status, msg) = error_body(call(&host, "/hello", Some(&bad)).await).await;
    assert_eq!((status, msg.as_str()), (401, "the API key is not valid"));
    let (status, _) = error_body(call(&host, "/hello", Some("not-a-key")).await).await;
    assert_eq!(status, 401);

    let ok = call(&host, "/hello", Some(&key)).await;
    assert_eq!(ok.status(), 200);
    // Health and metrics stay open.
    assert_eq!(host.get("/v2/health/ready").await.status(), 200);
    assert_eq!(host.get("/metrics").await.status(), 200);

    let listed = host.cli(&["keys", "list", "--json"]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["tenant"], "acme");
    assert!(
        !listed.to_string().contains(&key),
        "keys list shows no secret"
    );

    host.cli(&["keys", "revoke", &id]);
    wait_status(&host, "/hello", Some(&key), 401).await;
    let (_, msg) = error_body(call(&host, "/hello", Some(&key)).await).await;
    assert!(msg.contains("revoked"), "{msg}");

    // Every refusal is in the ledger, as rejected and free.
    let events = host.events();
    let rejected: Vec<&Value> = events.iter().filter(|e| e["status"] == 401).collect();
    assert!(rejected.len() >= 4, "{events:#?}");
    for e in rejected {
        assert_eq!(e["outcome"], "rejected");
        assert_eq!(e["amount"], "0");
        assert_eq!(e["billed_ms"], 0);
    }
}

#[tokio::test]
async fn a_key_scoped_to_one_component_gets_403_elsewhere() {
    let host = start("").await;
    host.cli(&["tenants", "create", "acme"]);
    let (id, key) = new_key(&host, "acme", &["--component", "hello"]).await;
    wait_status(&host, "/hello", None, 401).await;
    assert_eq!(call(&host, "/hello", Some(&key)).await.status(), 200);
    let (status, msg) = error_body(call(&host, "/probe/request", Some(&key)).await).await;
    assert_eq!(status, 403);
    assert!(msg.contains(&id) && msg.contains("`probe`"), "{msg}");
}

/// Starts a burst only when it cannot straddle a minute boundary.
async fn early_in_a_minute() {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if secs % 60 > 50 {
        tokio::time::sleep(Duration::from_secs(61 - secs % 60)).await;
    }
}

#[tokio::test]
async fn quotas_answer_429_with_retry_after() {
    let host = start("[billing]\nper_call = 0.0000005\n").await;
    host.cli(&["tenants", "create", "slow", "--requests-per-minute", "3"]);
    host.cli(&["tenants", "create", "thrifty", "--monthly-cap", "0.000001"]);
    let (_, slow) = new_key(&host, "slow", &[]).await;
    let (_, thrifty) = new_key(&host, "thrifty", &[]).await;
    wait_status(&host, "/hello", None, 401).await;

    early_in_a_minute().await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = call(&host, "/hello", Some(&slow)).await;
        if r.status() == 429 {
            let secs: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&secs), "Retry-After {secs}");
            let (_, msg) = error_body(r).await;
            assert!(msg.contains("3 requests per minute"), "{msg}");
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);

    // 0.0000005 per call against a cap of 0.000001: two calls, then 429.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = call(&host, "/hello", Some(&thrifty)).await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            let (_, msg) = error_body(r).await;
            assert!(msg.contains("monthly spend cap"), "{msg}");
        } else {
            // The spend is counted once the record is durable, which is
            // before the response's last byte.
            r.bytes().await.unwrap();
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
}

/// The amount of one record, worked out here from the pricing table
/// independently of the host: per call + GB-seconds + fuel, rounded to 12
/// places, half to even.
fn expected_amount(e: &Value, per_call: Decimal) -> Decimal {
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    let bytes = Decimal::from(e["max_memory_bytes"].as_u64().unwrap());
    let ms = Decimal::from(e["billed_ms"].as_u64().unwrap());
    let gb_s = (bytes * ms / Decimal::from(1u64 << 30) / Decimal::from(1000))
        .round_dp_with_strategy(12, rust_decimal::RoundingStrategy::MidpointNearestEven);
    let fuel = Decimal::from(e["fuel"].as_u64().unwrap());
    (per_call + d("0.0000166667") * gb_s + d("0.013") * fuel / Decimal::from(1_000_000))
        .round_dp_with_strategy(12, rust_decimal::RoundingStrategy::MidpointNearestEven)
        .normalize()
}

#[tokio::test]
async fn every_call_is_recorded_and_priced_exactly() {
    let host = start(PRICING).await;
    let mut sent = BTreeMap::new();
    for i in 0..7 {
        let r = call(&host, "/hello", None).await;
        assert_eq!(r.status(), 200);
        let id = request_id(&r);
        let body = r.bytes().await.unwrap();
        sent.insert(id, ("hello", 0usize, body.len(), 200u16, i));
    }
    for i in 0..4 {
        let payload = vec![b'x'; 1000 * (i + 1)];
        let r = host
            .client
            .post(host.url("/probe/echo"))
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let id = request_id(&r);
        let body = r.bytes().await.unwrap();
        sent.insert(id, ("probe", payload.len(), body.len(), 200, i));
    }
    // A trap is billed, with its outcome.
    let r = call(&host, "/probe/panic", None).await;
    assert_eq!(r.status(), 500);
    let trap_id = request_id(&r);
    let trap_len = r.bytes().await.unwrap().len();
    sent.insert(trap_id.clone(), ("probe", 0, trap_len, 500, 0));

    let events = host.events();
    assert_eq!(events.len(), sent.len(), "one record per call: {events:#?}");
    let mut total = Decimal::ZERO;
    for e in &events {
        let id = e["id"].as_str().unwrap();
        let (component, bytes_in, bytes_out, status, _) = sent
            .get(id)
            .unwrap_or_else(|| panic!("record {id} matches no call"));
        assert_eq!(e["component"], *component);
        assert_eq!(e["status"], *status);
        assert_eq!(e["bytes_in"], *bytes_in as u64, "{e}");
        assert_eq!(e["bytes_out"], *bytes_out as u64, "{e}");
        assert!(e["fuel"].as_u64().unwrap() > 0, "fuel is counted: {e}");
        assert!(e["max_memory_bytes"].as_u64().unwrap() > 0, "{e}");
        assert!(!e["component_digest"].as_str().unwrap().is_empty());
        let wall = e["wall_us"].as_u64().unwrap();
        assert_eq!(e["billed_ms"].as_u64().unwrap(), wall.div_ceil(1000));
        let per_call = if *component == "probe" {
            "0.000003"
        } else {
            "0.0000002"
        };
        let amount: Decimal = e["amount"].as_str().unwrap().parse().unwrap();
        assert_eq!(amount, expected_amount(e, per_call.parse().unwrap()), "{e}");
        total += amount;
        let outcome = if id == trap_id { "trap" } else { "ok" };
        assert_eq!(e["outcome"], outcome, "{e}");
    }

    // The report: one line per component, totals equal to the calls made.
    let from = "2000-01-01";
    let to = "2100-01-01";
    let csv = host.cli(&["billing", "report", "--from", from, "--to", to]);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    for col in [
        "tenant",
        "component",
        "model",
        "calls",
        "wall_ms",
        "billed_ms",
        "gb_seconds",
        "fuel",
        "nn_compute_ms",
        "bytes_in",
        "bytes_out",
        "amount",
    ] {
        assert!(header.contains(&col), "CSV header lacks {col}: {header:?}");
    }
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let row = |component: &str| {
        rows.iter()
            .find(|r| r[col("component")] == component)
            .unwrap_or_else(|| panic!("no line for {component}: {csv}"))
    };
    assert_eq!(row("hello")[col("calls")], "7");
    assert_eq!(row("probe")[col("calls")], "5");
    let total_row = rows.iter().find(|r| r[col("tenant")] == "TOTAL").unwrap();
    assert_eq!(total_row[col("calls")], "12");
    assert_eq!(total_row[col("amount")].parse::<Decimal>().unwrap(), total);
    let fuel: u64 = events.iter().map(|e| e["fuel"].as_u64().unwrap()).sum();
    assert_eq!(total_row[col("fuel")], fuel.to_string());

    let json = host.cli(&[
        "billing", "report", "--from", from, "--to", to, "--format", "json",
    ]);
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["total"]["calls"], 12);
    assert_eq!(
        report["total"]["amount"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap(),
        total
    );
    // A window that ends before the calls holds none of them.
    let empty = host.cli(&[
        "billing",
        "report",
        "--from",
        "2000-01-01",
        "--to",
        "2000-01-02",
    ]);
    assert_eq!(empty.lines().count(), 2, "header and a zero total: {empty}");

    // CloudEvents: one per record, same ids.
    let ce = host.cli(&["billing", "events", "--format", "cloudevents"]);
    let ce: Vec<Value> = ce
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ce.len(), events.len());
    assert!(ce.iter().all(|e| e["specversion"] == "1.0"
        && e["type"] == "edgeinfer.call"
        && sent.contains_key(e["id"].as_str().unwrap())));
}

#[tokio::test]
async fn a_tenant_reads_only_its_own_usage() {
    let host = start(PRICING).await;
    for t in ["a", "b"] {
        host.cli(&["tenants", "create", t]);
    }
    let (_, a) = new_key(&host, "a", &[]).await;
    let (_, b) = new_key(&host, "b", &[]).await;
    wait_status(&host, "/hello", None, 401).await;
    let mut ids_a = Vec::new();
    for _ in 0..3 {
        let r = call(&host, "/hello", Some(&a)).await;
        assert_eq!(r.status(), 200);
        ids_a.push(request_id(&r));
        r.bytes().await.unwrap();
    }
    for _ in 0..2 {
        assert_eq!(call(&host, "/probe/request", Some(&b)).await.status(), 200);
    }
    let usage = |key: Option<String>| {
        let host = &host;
        async move {
            let mut req = host
                .client
                .get(host.url("/v1/usage?from=2000-01-01&to=2100-01-01"));
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            req.send().await.unwrap()
        }
    };
    let mine: Value = usage(Some(a.clone())).await.json().await.unwrap();
    assert_eq!(mine["tenant"], "a");
    let records = mine["records"].as_array().unwrap();
    let got: Vec<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(got, ids_a, "exactly a's calls");
    assert_eq!(mine["total"]["calls"], 3);
    let theirs: Value = usage(Some(b)).await.json().await.unwrap();
    assert_eq!(theirs["total"]["calls"], 2);
    assert!(
        theirs["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant"] == "b")
    );
    let (status, _) = error_body(usage(None).await).await;
    assert_eq!(status, 401);
    let (status, _) = error_body(usage(Some(format!("{a}x"))).await).await;
    assert_eq!(status, 401);
    let bad_date = host
        .client
        .get(host.url("/v1/usage?from=yesterday"))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_date.status(), 400);
}

#[tokio::test]
async fn timeouts_and_host_refusals_are_recorded_with_their_outcome() {
    let host =
        start("[metering]\nfuel = true\n[component.probe]\ntimeout_ms = 300\nmax_body_kb = 1\n")
            .await;
    let r = call(&host, "/probe/loop", None).await;
    assert_eq!(r.status(), 504);
    let timeout_id = request_id(&r);
    let r = host
        .client
        .post(host.url("/probe/echo"))
        .body(vec![0u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let too_big_id = request_id(&r);
    let events = host.events();
    let find = |id: &str| events.iter().find(|e| e["id"] == id).unwrap().clone();
    let t = find(&timeout_id);
    assert_eq!(
        (t["outcome"].as_str(), t["status"].as_u64()),
        (Some("timeout"), Some(504))
    );
    assert!(t["wall_us"].as_u64().unwrap() >= 300_000);
    assert!(t["fuel"].as_u64().unwrap() > 0, "the loop burned fuel: {t}");
    let b = find(&too_big_id);
    assert_eq!(
        (b["outcome"].as_str(), b["status"].as_u64()),
        (Some("rejected"), Some(413))
    );
}

/// A small body is sent whole once its record is durable, with its length;
/// a 204 gets none, and both are recorded.
#[tokio::test]
async fn whole_responses_keep_correct_framing() {
    let host = start("").await;
    let r = call(&host, "/probe/counter", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "1");
    assert!(r.headers().get("transfer-encoding").is_none());
    let counter_id = request_id(&r);
    assert_eq!(r.text().await.unwrap(), "1");
    let r = call(&host, "/probe/empty", None).await;
    assert_eq!(r.status(), 204);
    assert!(
        r.headers().get("content-length").is_none(),
        "{:?}",
        r.headers()
    );
    let empty_id = request_id(&r);
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    let events = host.events();
    for (id, status, bytes_out) in [(counter_id, 200, 1), (empty_id, 204, 0)] {
        let e = events
            .iter()
            .find(|e| e["id"] == id.as_str())
            .expect("a record");
        assert_eq!(
            (e["status"].as_u64(), e["bytes_out"].as_u64()),
            (Some(status), Some(bytes_out)),
            "{e}"
        );
        // Nothing prices fuel here, so it is not counted (it costs guest speed).
        assert_eq!(e["fuel"], 0, "{e}");
    }
}

#[tokio::test]
async fn metering_can_be_turned_off() {
    let host = start("[metering]\nenabled = false\nfuel = false\n").await;
    assert_eq!(call(&host, "/hello", None).await.status(), 200);
    assert!(host.events().is_empty());
}
