//! `edgeinfer bench`: one model timed natively, in the sandbox (warm and
//! cold) and through wasi:nn. The command itself checks that every way gives
//! native tract's answer before it times anything; here we check that it
//! succeeds, reports every column, and leaves nothing behind in the state dir.

mod common;

use common::{artifacts, repo, shared_state_dir};
use serde_json::Value;

/// The work dirs `bench` bakes the model into, left in `state_dir`.
fn leftovers(state_dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(state_dir)
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with("bench-"))
                .collect()
        })
        .unwrap_or_default()
}

/// `edgeinfer bench` on digits, three calls a way, with `args` added: its
/// JSON report.
fn bench(state_dir: &std::path::Path, args: &[&str]) -> Value {
    bench_with_env(state_dir, args, &[])
}

/// [`bench`] with `env` added to the command's environment.
fn bench_with_env(state_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Value {
    let state = state_dir.to_str().expect("a UTF-8 path");
    let mut all = vec![
        "bench",
        "models/digits/model.onnx",
        "--json",
        "--iterations",
        "3",
        "--state-dir",
        state,
    ];
    all.extend_from_slice(args);
    serde_json::from_str(&common::cli_with_env(&repo(), &all, env)).expect("one JSON object")
}

#[test]
fn bench_reports_every_way_and_cleans_up() {
    let state_dir = shared_state_dir();
    let report = bench(&state_dir, &["--binary", "--component", artifacts::OIP]);
    assert_eq!(report["iterations"], 3);
    // Every way timed on one thread: warm and cold instances, native tract.
    assert_eq!(report["instance_threads"], 1);
    assert_eq!(report["timed_on_instance_thread"], true);
    for way in [
        "native_us",
        "wasm_us",
        "cold_us",
        "wasi_nn_us",
        "wasi_nn_compute_us",
        "wasi_nn_cold_us",
        "wasi_nn_bytes_us",
        "backend_us",
    ] {
        let p50 = report[way]["p50"].as_f64().unwrap_or(f64::NAN);
        let p99 = report[way]["p99"].as_f64().unwrap_or(f64::NAN);
        assert!(p50 > 0.0 && p99 >= p50, "{way}: {}", report[way]);
    }
    assert_eq!(report["backend"]["name"], "tract");
    // Signed: a cold call may beat its warm pair.
    assert!(report["cold_over_warm_us"]["p50"].is_f64());
    assert!(report["wasi_nn_cold_over_warm_us"]["p50"].is_f64());
    assert!(
        leftovers(&state_dir).is_empty(),
        "bench left {:?} in {}",
        leftovers(&state_dir),
        state_dir.display()
    );
}

#[test]
fn bench_times_only_the_ways_asked_for() {
    let state_dir = shared_state_dir();
    let report = bench(
        &state_dir,
        &["--ways", "backend,wasi-nn", "--component", artifacts::OIP],
    );
    for way in ["backend_us", "wasi_nn_us", "wasi_nn_compute_us"] {
        let p50 = report[way]["p50"].as_f64().unwrap_or(f64::NAN);
        assert!(p50 > 0.0, "{way}: {}", report[way]);
    }
    for way in [
        "native_us",
        "wasm_us",
        "cold_us",
        "wasi_nn_cold_us",
        "wasi_nn_bytes_us",
        "cold_over_warm_us",
        "wasi_nn_cold_over_warm_us",
    ] {
        assert!(report[way].is_null(), "{way} was timed: {}", report[way]);
    }

    // Native alone needs neither function: none is loaded, so none need exist.
    let report = bench(
        &state_dir,
        &["--ways", "native", "--component", "no/such/dir/oip.wasm"],
    );
    assert!(report["native_us"]["p50"].as_f64().unwrap_or(f64::NAN) > 0.0);
    assert!(report["wasi_nn_us"].is_null() && report["wasm_us"].is_null());

    // Nor a backend no way runs: ONNX Runtime is not loaded, so a library
    // that is not there does not matter.
    let report = bench_with_env(
        &state_dir,
        &["--ways", "native", "--backend", "onnxruntime"],
        &[("ORT_DYLIB_PATH", "/no/such/libonnxruntime.so")],
    );
    assert!(report["native_us"]["p50"].as_f64().unwrap_or(f64::NAN) > 0.0);
    assert!(report["backend"].is_null(), "{}", report["backend"]);
}

#[test]
fn bench_measures_throughput_on_every_core() {
    let state_dir = shared_state_dir();
    let report = bench(
        &state_dir,
        &[
            "--ways",
            "wasi-nn",
            "--concurrency",
            "4",
            "--component",
            artifacts::OIP,
        ],
    );
    // Latency runs on one instance thread; throughput on all of them.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(report["instance_threads"], cores);
    assert_eq!(report["timed_on_instance_thread"], false);
    let throughput = &report["wasi_nn_throughput"];
    assert_eq!(throughput["concurrency"], 4);
    for label in ["unbatched", "batched"] {
        let rate = throughput["calls_per_s"][label]
            .as_f64()
            .unwrap_or(f64::NAN);
        assert!(rate > 0.0, "{label}: {throughput}");
    }
}
