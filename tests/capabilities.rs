//! What a component may see: variables, environment, mounted files, and
//! outbound HTTP (denied unless listed).

mod common;

use common::{App, artifacts, manifest};
use std::time::Duration;

fn app() -> App {
    App::new(manifest(&format!(
        r#"
[variables]
region = {{ default = "eu-west" }}
token = {{ required = true, secret = true }}
upstream_port = {{ default = "1" }}

[[trigger.http]]
route = "/..."
component = "probe"

[component.probe]
source = "{probe}"
files = ["static/**/*.txt", {{ source = "assets", destination = "/assets" }}]
exclude_files = ["static/secret.txt"]
environment = {{ MODE = "test" }}
allowed_outbound_hosts = ["http://127.0.0.1:{{{{ upstream_port }}}}"]
[component.probe.variables]
region = "{{{{ region }}}}"
greeting = "hello from {{{{ region }}}} with {{{{ token }}}}"

[[trigger.http]]
route = "/closed/..."
component = "closed"

[component.closed]
source = "{probe}"
"#,
        probe = artifacts::PROBE
    )))
    .file("static/a.txt", "file a")
    .file("static/nested/b.txt", "file b")
    .file("static/secret.txt", "excluded")
    .file("static/skip.bin", "not matched")
    .file("assets/logo.svg", "<svg/>")
    .env("SPIN_VARIABLE_TOKEN", "t0k3n")
}

#[tokio::test]
async fn variables_resolve_from_defaults_and_environment() {
    let host = app().start().await;
    let r = host.get("/probe/var/region").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "eu-west");
    let r = host.get("/probe/var/greeting").await;
    assert_eq!(r.text().await.unwrap(), "hello from eu-west with t0k3n");
    // Only variables the component declares are visible.
    assert_eq!(host.get("/probe/var/token").await.status(), 404);
    assert_eq!(host.get("/probe/var/Bad-Name").await.status(), 404);
}

#[tokio::test]
async fn a_required_variable_without_value_stops_startup() {
    let mut a = app();
    a.env.clear();
    let err = a.start_err();
    assert!(err.contains("SPIN_VARIABLE_TOKEN"), "{err}");
}

#[tokio::test]
async fn environment_is_passed() {
    let host = app().start().await;
    let r = host.get("/probe/env/MODE").await;
    assert_eq!(r.text().await.unwrap(), "test");
    assert_eq!(
        host.get("/probe/env/HOME").await.status(),
        404,
        "host env does not leak"
    );
}

/// probe, baked from its build into `probe-baked.wasm`, with `static/a.txt`
/// and `environment` (the inside of a TOML inline table).
fn baked_probe(environment: &str) -> App {
    App::new(manifest(&format!(
        r#"
[[trigger.http]]
route = "/..."
component = "probe"

[component.probe]
source = "probe-baked.wasm"
files = ["static/**/*.txt"]
environment = {{ {environment} }}
[component.probe.tool.edgeinfer]
bake = "{probe}"
"#,
        probe = artifacts::PROBE
    )))
    .file("static/a.txt", "file a")
}

/// An initializer that leaves a file open is refused when the function is
/// baked, with the file and the way out named: the snapshot would keep a
/// handle that names nothing in a fresh instance.
#[test]
fn baking_refuses_an_initializer_that_leaves_a_file_open() {
    // `build`, not `up --build`: were the file let through, `up` would serve.
    let dir = baked_probe(r#"PROBE_INIT_KEEP_OPEN = "/static/a.txt""#).write();
    let err = common::cli_err(dir.path(), &["build"]);
    assert!(!dir.path().join("probe-baked.wasm").exists());
    assert!(
        err.contains("left 1 file(s) open") && err.contains("probe"),
        "{err}"
    );
    // The same initializer, its open failing (no such file), bakes.
    let dir = baked_probe(r#"PROBE_INIT_KEEP_OPEN = "/static/none.txt""#).write();
    common::cli(dir.path(), &["build"]);
    assert!(dir.path().join("probe-baked.wasm").exists());
}

/// A baked function reads its environment and files, and prints, in a
/// request as its instance has them, whatever its initializer did at build
/// time: the snapshot keeps neither the build's environment nor its file and
/// stream handles (which name nothing in a fresh instance). And wasi-libc
/// frees what it gets from the host into the heap it came from: when it did
/// not, the call trapped.
#[tokio::test]
async fn a_baked_function_reads_environment_and_files_at_request_time() {
    let app = |mode: &str| baked_probe(&format!(r#"MODE = "{mode}""#));
    // Baked with one environment (its initializer reads it and the files),
    // then served, without baking again, with another.
    let dir = app("baked").write();
    common::cli(dir.path(), &["build"]);
    assert!(dir.path().join("probe-baked.wasm").exists());
    let served = app("served");
    std::fs::write(dir.path().join("spin.toml"), &served.manifest).unwrap();
    let host = served.start_in(dir).await;
    // Each call is a fresh instance of the image, so each reads them anew.
    for _ in 0..3 {
        let r = host.get("/probe/env/MODE").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "served");
        let r = host.get("/probe/file?path=/static/a.txt").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "file a");
    }
    // The initializer printed; a call prints too, to the host's stderr.
    let r = host.get("/probe/log?line=printed-in-a-request").await;
    assert_eq!(r.status(), 200);
    host.wait_log("printed-in-a-request", 1, Duration::from_secs(10))
        .await;
    assert!(
        host.log().iter().any(|l| l == "printed-in-a-request"),
        "{:?}",
        host.log()
    );
}

#[tokio::test]
async fn files_are_mounted_read_only() {
    let host = app().start().await;
    let read = |p: &'static str| {
        let host = &host;
        async move {
            let r = host.get(&format!("/probe/file?path={p}")).await;
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(read("/static/a.txt").await, (200, "file a".into()));
    assert_eq!(read("/static/nested/b.txt").await, (200, "file b".into()));
    assert_eq!(read("/assets/logo.svg").await, (200, "<svg/>".into()));
    assert_eq!(read("/static/secret.txt").await.0, 404, "exclude_files");
    assert_eq!(
        read("/static/skip.bin").await.0,
        404,
        "not matched by the glob"
    );

    let w = host
        .client
        .put(host.url("/probe/file?path=/static/a.txt"))
        .body("overwritten")
        .send()
        .await
        .unwrap();
    assert_eq!(w.status(), 403, "writes are refused");
    assert_eq!(read("/static/a.txt").await, (200, "file a".into()));
    // The source file is untouched too.
    let on_disk = std::fs::read_to_string(host.dir.path().join("static/a.txt")).unwrap();
    assert_eq!(on_disk, "file a");

    // A component with no `files` sees no filesystem.
    let r = host.get("/closed/probe/file?path=/static/a.txt").await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn outbound_http_is_denied_unless_allowed() {
    // Point the allowed host at a second edgeinfer, so the call is real.
    let upstream = App::new(manifest(&common::component(
        "hello",
        "/hello",
        artifacts::HELLO,
    )))
    .start()
    .await;
    let port = upstream.base.rsplit(':').next().unwrap().to_string();
    let host = app()
        .env("SPIN_VARIABLE_UPSTREAM_PORT", &port)
        .start()
        .await;

    let target = format!("http://127.0.0.1:{port}/hello");
    let r = host.get(&format!("/probe/outbound?url={target}")).await;
    assert_eq!(r.status(), 200, "allowed host");
    assert_eq!(r.text().await.unwrap(), "200");

    let r = host
        .get(&format!("/closed/probe/outbound?url={target}"))
        .await;
    assert_eq!(r.status(), 502, "a component with no allowed hosts");
    assert!(r.text().await.unwrap().contains("HttpRequestDenied"));

    let other = upstream.url("/v2/health/live").replace(&port, "1");
    let r = host.get(&format!("/probe/outbound?url={other}")).await;
    assert_eq!(r.status(), 502, "a port that is not listed");
}
