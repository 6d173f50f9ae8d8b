//! Start-up and shutdown: SIGTERM drains calls in flight and exits 0.

mod common;

use std::time::Duration;

use common::{App, artifacts, component, manifest};

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let mut host = App::new(manifest(&component("probe", "/...", artifacts::PROBE)))
        .start()
        .await;
    let slow = host.get_in_background("/probe/sleep?ms=1500");
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // New connections are refused once draining starts.
    let fresh = reqwest::Client::new();
    assert!(fresh.get(host.url("/probe/counter")).send().await.is_err());

    // The call in flight still completes.
    assert_eq!(slow.await.unwrap(), (200, "slept".to_string()));
    let status = host.wait(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    assert!(host.log().iter().any(|l| l.contains("stopped")));
}

#[tokio::test]
async fn second_start_uses_the_compile_cache() {
    let app = || App::new(manifest(&component("probe", "/...", artifacts::PROBE)));
    let first = app().start().await;
    drop(first);
    let second = app().start().await;
    assert!(
        second
            .log()
            .iter()
            .any(|l| l.contains("component ready") && l.contains("cached=true")),
        "{:?}",
        second.log()
    );
    assert_eq!(second.get("/probe/counter").await.status(), 200);
}

fn buildable(command: &str) -> App {
    App::new(manifest(&format!(
        r#"{}[component.hello.build]
command = "{command}"
workdir = "src"
"#,
        component("hello", "/hello", "out/hello.wasm")
    )))
    .file("src/.keep", "")
}

#[test]
fn build_runs_each_components_build_command() {
    let cmd = format!(
        "mkdir -p ../out && cp {} ../out/hello.wasm",
        artifacts::HELLO
    );
    let dir = buildable(&cmd).write();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
        .args(["build", "--from"])
        .arg(dir.path().join("spin.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("out/hello.wasm").exists());

    let dir = buildable("echo broken >&2; exit 3").write();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
        .args(["build", "--from"])
        .arg(dir.path().join("spin.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("component `hello`") && err.contains("exit 3"),
        "{err}"
    );
}

#[tokio::test]
async fn up_build_builds_before_serving() {
    let cmd = format!(
        "mkdir -p ../out && cp {} ../out/hello.wasm",
        artifacts::HELLO
    );
    let host = buildable(&cmd).arg("--build").start().await;
    let r = host.get("/hello").await;
    assert_eq!(r.status(), 200);
    assert!(host.dir.path().join("out/hello.wasm").exists());
}
