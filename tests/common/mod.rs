//! Test harness: writes an app into a temp dir, starts the real `edgeinfer up`
//! on an ephemeral port, and talks HTTP to it.
#![allow(dead_code)] // each test binary uses a different part of it

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub use edgeinfer_test_artifacts as artifacts;

/// A running `edgeinfer up`, stopped (SIGKILL) when dropped.
pub struct Host {
    child: Child,
    pub base: String,
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
    pub client: reqwest::Client,
}

/// One app to serve: spin.toml text, optional edgeinfer.toml, extra files.
pub struct App {
    pub manifest: String,
    pub runtime_config: Option<String>,
    pub files: Vec<(String, Vec<u8>)>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl App {
    pub fn new(manifest: impl Into<String>) -> Self {
        Self {
            manifest: manifest.into(),
            runtime_config: None,
            files: Vec::new(),
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Extra arguments for `edgeinfer up`.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn runtime_config(mut self, text: impl Into<String>) -> Self {
        self.runtime_config = Some(text.into());
        self
    }

    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((path.to_string(), contents.into()));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn write(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spin.toml"), &self.manifest).unwrap();
        if let Some(rc) = &self.runtime_config {
            std::fs::write(dir.path().join("edgeinfer.toml"), rc).unwrap();
        }
        for (path, contents) in &self.files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, contents).unwrap();
        }
        dir
    }

    fn command(&self, dir: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeinfer"));
        cmd.current_dir(dir)
            .args(["up", "--listen", "127.0.0.1:0", "--state-dir"])
            // Shared by all tests, so each component is compiled only once.
            .arg(shared_state_dir())
            .args(&self.args)
            // Each app its own ledger and keys (the compile cache is shared).
            .env("EDGEINFER_DB", dir.join("edgeinfer.db"))
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts the host and waits until it reports ready.
    pub async fn start(self) -> Host {
        let dir = self.write();
        self.start_in(dir).await
    }

    /// Starts the host on an app already written to `dir` (and maybe changed since).
    pub async fn start_in(self, dir: tempfile::TempDir) -> Host {
        let mut child = self
            .command(dir.path())
            .spawn()
            .expect("starting edgeinfer");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("[edgeinfer] {line}");
                    if let Some(addr) = line.strip_prefix("edgeinfer: serving ") {
                        let _ = tx.send(addr.to_string());
                    }
                    log.lock().unwrap().push(line);
                }
            }
        });
        let base = rx
            // Generous: `up --build` bakes before it listens, on a busy 2-core machine.
            .recv_timeout(Duration::from_secs(600))
            .unwrap_or_else(|_| panic!("edgeinfer did not start: {:?}", log.lock().unwrap()));
        let host = Host {
            child,
            base,
            dir,
            log,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        host.wait_ready().await;
        host
    }

    /// Runs `edgeinfer up` expecting it to fail; returns its stderr.
    pub fn start_err(self) -> String {
        let dir = self.write();
        let out = self
            .command(dir.path())
            .stderr(Stdio::piped())
            .output()
            .expect("running edgeinfer");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "edgeinfer up should have failed");
        assert_not_a_panic(&out.status, &stderr);
        stderr
    }
}

/// A command that fails must say why, not crash: a panic exits with 101.
pub fn assert_not_a_panic(status: &ExitStatus, stderr: &str) {
    assert_ne!(status.code(), Some(101), "edgeinfer panicked: {stderr}");
}

/// Runs the `edgeinfer` CLI in `dir`, on the database of the app there;
/// returns stdout and fails the test if the command fails.
pub fn cli(dir: &Path, args: &[&str]) -> String {
    cli_with_env(dir, args, &[])
}

/// [`cli`] with `env` added to the command's environment.
pub fn cli_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = cli_command(dir, args)
        .envs(env.iter().copied())
        .output()
        .expect("running edgeinfer");
    assert!(
        out.status.success(),
        "edgeinfer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the `edgeinfer` CLI in `dir` expecting it to fail; returns its stderr.
pub fn cli_err(dir: &Path, args: &[&str]) -> String {
    let out = cli_command(dir, args).output().expect("running edgeinfer");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "edgeinfer {args:?} should have failed"
    );
    assert_not_a_panic(&out.status, &stderr);
    stderr
}

/// The `edgeinfer` CLI with `args`, run in `dir` on the database of the app there.
fn cli_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeinfer"));
    cmd.current_dir(dir)
        .args(args)
        .env("EDGEINFER_DB", dir.join("edgeinfer.db"));
    cmd
}

/// Every meter record in the ledger of the app in `dir`, as JSON.
pub fn events(dir: &Path) -> Vec<serde_json::Value> {
    cli(dir, &["billing", "events", "--format", "jsonl"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect()
}

pub fn shared_state_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("edgeinfer-state")
}

impl Host {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// `GET path` on its own task, so that the test can act while it is in
    /// flight: its status and body.
    pub fn get_in_background(&self, path: &str) -> tokio::task::JoinHandle<(u16, String)> {
        let request = self.client.get(self.url(path));
        tokio::spawn(async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    }

    /// `GET path`, its body as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path).await.json().await.unwrap()
    }

    async fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            if let Ok(r) = self.client.get(self.url("/v2/health/ready")).send().await
                && r.status() == 200
            {
                return;
            }
            // Generous: compiling several baked models takes minutes on a
            // busy 2-core machine.
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "edgeinfer never became ready: {:?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `pattern` has appeared in at least `count` log lines. The
    /// host's output is read on another thread, so a line printed during a
    /// call may arrive after its response.
    pub async fn wait_log(&self, pattern: &str, count: usize, limit: Duration) {
        let start = Instant::now();
        while self.log().iter().filter(|l| l.contains(pattern)).count() < count {
            assert!(
                start.elapsed() < limit,
                "waited for {count}× `{pattern}` in the log: {:#?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Runs the `edgeinfer` CLI on this host's database; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.dir.path(), args)
    }

    /// Every meter record in this host's ledger (`billing events`), as JSON.
    pub fn events(&self) -> Vec<serde_json::Value> {
        events(self.dir.path())
    }

    /// SIGKILLs the host (no drain, no cleanup) and hands back its app dir.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "edgeinfer did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `[component.NAME]` table serving `source` at `route`.
pub fn component(name: &str, route: &str, source: &str) -> String {
    format!(
        r#"
[[trigger.http]]
route = "{route}"
component = "{name}"

[component.{name}]
source = "{source}"
"#
    )
}

pub fn manifest(body: &str) -> String {
    format!(
        r#"spin_manifest_version = 2

[application]
name = "test-app"
{body}"#
    )
}

/// A function's JSON error, or the host's: (status, message).
pub async fn guest_error(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("errors are JSON");
    let error = body["error"].as_str().expect("an error message");
    (status, error.to_string())
}

/// The JSON `error` and `request_id` of an error response, checked for shape.
pub async fn error_body(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let header_id = resp
        .headers()
        .get("x-request-id")
        .expect("x-request-id on every response")
        .to_str()
        .unwrap()
        .to_string();
    let body: serde_json::Value = resp.json().await.expect("error bodies are JSON");
    assert_eq!(
        body["request_id"], header_id,
        "request_id matches x-request-id"
    );
    (
        status,
        body["error"].as_str().expect("error message").to_string(),
    )
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A JSON file of the repository, e.g. `models/digits/reference.json`.
pub fn read_json(rel: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join(rel)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Two malformed copies of the digits model, each with one change to its
/// graph that tract panics on: a graph output that names no value
/// (tract-onnx reading the graph), and an ArgMax over axis 99 of a 2-D
/// tensor (tract typing it). With what the host must say of each.
pub fn malformed_digits() -> [(&'static str, Vec<u8>, &'static str); 2] {
    use prost::Message as _;
    let digits_with = |change: &dyn Fn(&mut tract_onnx::pb::GraphProto)| {
        let bytes = std::fs::read(repo().join("models/digits/model.onnx")).unwrap();
        let mut model = tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap();
        change(model.graph.as_mut().unwrap());
        model.encode_to_vec()
    };
    let dangling = digits_with(&|g| g.output[0].name = "nowhere".into());
    let argmax = digits_with(&|g| {
        let node = g.node.iter_mut().find(|n| n.op_type == "ArgMax").unwrap();
        node.attribute
            .iter_mut()
            .find(|a| a.name == "axis")
            .unwrap()
            .i = 99;
    });
    [
        (
            "dangling",
            dangling,
            "has an output `nowhere` that is neither",
        ),
        ("argmax99", argmax, "tract panicked on the model"),
    ]
}

/// digits' input as an OIP JSON tensor, `n` ones of `datatype`.
pub fn pixels(n: usize, datatype: &str) -> serde_json::Value {
    serde_json::json!({"name": "pixels", "shape": [1, n], "datatype": datatype, "data": vec![1; n]})
}

/// A reference case's inputs as OIP JSON input tensors.
pub fn oip_inputs(case: &serde_json::Value) -> Vec<serde_json::Value> {
    case["inputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, t)| {
            serde_json::json!({"name": name, "shape": t["shape"], "datatype": t["datatype"], "data": t["data"]})
        })
        .collect()
}

/// Sends one reference case's inputs (models/*/reference.json, made with
/// ONNX Runtime by models/reference.py) to OIP `infer` and compares every output.
pub async fn infer_matches_reference(host: &Host, model: &str, case: &serde_json::Value) {
    let inputs = oip_inputs(case);
    let resp = host
        .client
        .post(host.url(&format!("/v2/models/{model}/infer")))
        .json(&serde_json::json!({ "inputs": inputs }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", case["name"]);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["model_name"], model);
    for out in body["outputs"].as_array().unwrap() {
        let name = out["name"].as_str().unwrap();
        assert_close(
            &format!("{model}/{}/{name}", case["name"]),
            out,
            &case["outputs"][name],
        );
    }
}

/// atol 1e-4 / rtol 1e-3, element by element, between OIP output tensors.
pub fn assert_close(name: &str, got: &serde_json::Value, want: &serde_json::Value) {
    assert_eq!(got["shape"], want["shape"], "{name}: shape");
    assert_eq!(got["datatype"], want["datatype"], "{name}: datatype");
    let (g, w) = (
        got["data"].as_array().unwrap(),
        want["data"].as_array().unwrap(),
    );
    assert_eq!(g.len(), w.len(), "{name}: length");
    for (i, (g, w)) in g.iter().zip(w).enumerate() {
        let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
        assert!(
            (g - w).abs() <= 1e-4 + 1e-3 * w.abs(),
            "{name}[{i}]: got {g}, ONNX Runtime gave {w}"
        );
    }
}

/// How a request body travels.
#[derive(Debug, Clone, Copy)]
pub enum Framing {
    /// With `Content-Length`, in one piece.
    Length,
    /// `Transfer-Encoding: chunked` in 4 KiB chunks: the length is known only
    /// at the end.
    Chunked,
}

/// `infer_matches_reference`, with the tensors both ways as OIP binary data
/// (`Inference-Header-Content-Length`, `binary_data_size`).
pub async fn binary_infer_matches_reference(
    host: &Host,
    model: &str,
    case: &serde_json::Value,
    framing: Framing,
) {
    use serde_json::{Value, json};
    fn le_bytes(datatype: &str, data: &[Value]) -> Vec<u8> {
        data.iter()
            .flat_map(|v| match datatype {
                "FP32" => (v.as_f64().unwrap() as f32).to_le_bytes().to_vec(),
                "FP64" => v.as_f64().unwrap().to_le_bytes().to_vec(),
                "INT64" => v.as_i64().unwrap().to_le_bytes().to_vec(),
                "INT32" => (v.as_i64().unwrap() as i32).to_le_bytes().to_vec(),
                "UINT8" | "BOOL" => {
                    vec![v.as_u64().unwrap_or(u64::from(v.as_bool() == Some(true))) as u8]
                }
                other => panic!("no test encoding for {other}"),
            })
            .collect()
    }
    fn values(datatype: &str, bytes: &[u8]) -> Vec<Value> {
        let n = |w: usize| bytes.chunks_exact(w);
        match datatype {
            "FP32" => n(4)
                .map(|c| json!(f32::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            "FP64" => n(8)
                .map(|c| json!(f64::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            "INT64" => n(8)
                .map(|c| json!(i64::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            "INT32" => n(4)
                .map(|c| json!(i32::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            "UINT8" | "BOOL" => bytes.iter().map(|&b| json!(b)).collect(),
            other => panic!("no test decoding for {other}"),
        }
    }
    let mut tail = Vec::new();
    let inputs: Vec<Value> = case["inputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, t)| {
            let datatype = t["datatype"].as_str().unwrap();
            let bytes = le_bytes(datatype, t["data"].as_array().unwrap());
            let input = json!({"name": name, "shape": t["shape"], "datatype": datatype,
                "parameters": {"binary_data_size": bytes.len()}});
            tail.extend_from_slice(&bytes);
            input
        })
        .collect();
    let header = json!({"inputs": inputs, "parameters": {"binary_data_output": true}}).to_string();
    let resp = host
        .client
        .post(host.url(&format!("/v2/models/{model}/infer")))
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", header.len())
        .body(framed([header.as_bytes(), &tail].concat(), framing))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", case["name"]);
    let split: usize = resp.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = resp.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&body[..split]).unwrap();
    assert_eq!(head["model_name"], model);
    let mut at = split;
    for out in head["outputs"].as_array().unwrap() {
        let name = out["name"].as_str().unwrap();
        let size = out["parameters"]["binary_data_size"]
            .as_u64()
            .expect("a binary output") as usize;
        assert!(out.get("data").is_none(), "{out}");
        let datatype = out["datatype"].as_str().unwrap();
        let got = json!({"shape": out["shape"], "datatype": datatype,
            "data": values(datatype, &body[at..at + size])});
        at += size;
        assert_close(
            &format!("{model}/{}/{name} (binary)", case["name"]),
            &got,
            &case["outputs"][name],
        );
    }
    assert_eq!(at, body.len(), "no bytes after the last output");
}

fn framed(body: Vec<u8>, framing: Framing) -> reqwest::Body {
    match framing {
        Framing::Length => body.into(),
        Framing::Chunked => {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                body.chunks(4096).map(|c| Ok(c.to_vec())).collect();
            reqwest::Body::wrap_stream(tokio_stream::iter(chunks))
        }
    }
}
