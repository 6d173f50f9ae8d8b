//! `edgeinfer bench FILE.onnx`: one model, timed side by side in one run:
//!
//! - `native`: the kit's tract engine in this process (decode, run, encode);
//! - `wasm`: the same request to the generic `oip` function, baked with the
//!   model, in one warm instance (tract inside the sandbox);
//! - `cold`: the same request, each to a fresh instance (instantiation, first
//!   touch of the copy-on-write image, and inference), as `up` serves it;
//! - `wasi_nn`: the same request to the generic `oip-nn` function, one warm
//!   instance, with the model run by the host through `wasi:nn` (`--backend`:
//!   tract, or ONNX Runtime with `--threads` intra-op threads; loaded once);
//! - `compute`: within each `wasi_nn` call, the time the backend ran (on the
//!   instance's core, see [`crate::cores`]), as the meter counts it;
//!   `wasi_nn` less this is what the call costs around the model (the
//!   guest's decoding and encoding, and moving the tensors in and out);
//! - `wasi_nn_cold`: the same request to `oip-nn`, each to a fresh instance;
//! - `wasi_nn_bytes`: the same request to `oip-nn`, one warm instance, with
//!   the model loaded from its file's bytes on every call (wasi:nn `load`:
//!   the guest reads the file, and the host knows the bytes again and finds
//!   the model it parsed the first time, on tract whatever `--backend` says);
//! - `backend`: that backend called directly on the decoded tensors, no
//!   guest: the figure to hold against the same runtime in Python.
//!
//! With the tract backend, `native`, `wasi_nn` and `backend` run one loaded
//! model, so that where its memory fell is the same for all three.
//!
//! The kinds take turns, [`BLOCK`] calls at a time after one untimed call,
//! so drift in the machine's speed over the run falls on all of them alike
//! and none is timed on caches another kind just filled. `--ways` times only
//! some of them; the sandbox is then baked, and the wasi:nn function loaded,
//! only if a way that needs it is timed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use kit::engine::{Engine as _, TensorSpec, TractEngine};
use kit::tensor::{DataType, Tensor, TensorData};
use serde_json::{Value, json};

use crate::engine::{CompileCache, EpochClock, PoolSettings, new_engine};
use crate::invoke::{Request, Runnable, WarmInstance, full_body};
use crate::outbound::OutboundPolicy;
use crate::sandbox::{self, Capabilities};

/// The name the model is served under inside the benchmark.
const NAME: &str = "bench";

/// Calls of one kind in a row before the next kind's turn.
const BLOCK: usize = 10;

/// `edgeinfer bench`'s arguments.
#[derive(clap::Args)]
pub struct BenchOptions {
    /// The .onnx file.
    pub model: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// An OIP inference request body to send (default: synthetic inputs).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Sizes for an input's dynamic dims, e.g. `x=1,3,48,192` (others are 1).
    #[arg(long = "shape")]
    pub shapes: Vec<String>,
    #[arg(long, default_value_t = 200)]
    pub iterations: usize,
    /// Send tensors with the OIP binary tensor extension (raw bytes after a
    /// JSON header, outputs likewise) instead of JSON numbers.
    #[arg(long)]
    pub binary: bool,
    /// What runs the model for wasi:nn.
    #[arg(long, value_enum, default_value = "tract")]
    pub backend: crate::nn::BackendKind,
    /// Intra-op threads for `--backend onnxruntime` (tract runs on one).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Also measure wasi-nn throughput with this many calls in flight,
    /// with batching off and on (max_batch_size = N).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// The generic function, built by `cargo build --release -p oip` in
    /// functions/; its wasi:nn build `oip_nn.wasm` is looked for beside it.
    #[arg(long, default_value = "target/wasm/wasm32-wasip2/release/oip.wasm")]
    pub component: PathBuf,
    #[arg(long, default_value = ".edgeinfer")]
    pub state_dir: PathBuf,
    /// Time only these ways (comma-separated; default: all). The others are
    /// left out of the turns, so that, say, the backend alone is timed as
    /// Python times ONNX Runtime: call after call, nothing in between.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub ways: Vec<Way>,
}

/// The ways `bench` can time a model (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Way {
    Native,
    Wasm,
    Cold,
    WasiNn,
    WasiNnCold,
    WasiNnBytes,
    Backend,
}

impl BenchOptions {
    fn times(&self, way: Way) -> bool {
        self.ways.is_empty() || self.ways.contains(&way)
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Summary {
    pub p50: f64,
    pub p99: f64,
}

impl Summary {
    /// `None` for a way that was not timed (JSON `null`).
    fn of(samples: Vec<Duration>) -> Option<Summary> {
        Self::of_us(samples.iter().map(|d| d.as_secs_f64() * 1e6).collect())
    }

    fn of_us(mut us: Vec<f64>) -> Option<Summary> {
        if us.is_empty() {
            return None;
        }
        us.sort_by(f64::total_cmp);
        let at = |q: f64| us[((us.len() as f64 - 1.0) * q).round() as usize];
        Some(Summary {
            p50: at(0.50),
            p99: at(0.99),
        })
    }
}

/// Runs `edgeinfer bench`: a throughput run (`--concurrency` > 1) on
/// `runtime` and every core; a latency run with this thread as the one core
/// (see [`crate::cores::run_here`]).
pub fn bench(opts: &BenchOptions, runtime: &tokio::runtime::Runtime) -> Result<()> {
    if opts.concurrency > 1 {
        return runtime.block_on(run(opts));
    }
    crate::cores::run_here(run(opts))?
}

async fn run(opts: &BenchOptions) -> Result<()> {
    if opts.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let bytes =
        std::fs::read(&opts.model).with_context(|| format!("reading {}", opts.model.display()))?;
    // As the host loads a model for wasi:nn.
    let loaded = crate::model_heap::in_model_heap(|| TractEngine::from_onnx(&bytes))
        .map_err(|e| anyhow::anyhow!("{}: {}", opts.model.display(), e.message()))?;
    let body = match &opts.input {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => synthetic_request(loaded.inputs(), &opts.shapes)?,
    };
    let n = opts.iterations;
    // What is timed: the JSON request, or the same tensors as binary data.
    let (timed_body, header_length) = if opts.binary {
        let (b, h) = binary_request(&body)?;
        (b, Some(h))
    } else {
        (body.clone(), None)
    };

    // The input shapes, planned ahead by every engine here (as `models add
    // --shape` would have it).
    let inputs = kit::decode::infer_request(&body)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .inputs;
    let shapes = inputs
        .iter()
        .map(|t| format!("{}={}", t.name, join(&t.shape)))
        .collect::<Vec<_>>();
    // Native tract and the tract wasi:nn backend are one loaded model. Two
    // loads of the same file in one process ran up to 13% apart, by where
    // their memory fell, which would swamp the wasi:nn overhead measured here.
    let tract = Arc::new(crate::nn::TractBackend::with_engine(loaded, &shapes)?);
    let engine = tract.engine();

    // Native: what the function does per request, outside the sandbox.
    let native_once = |body: &[u8], header_length: Option<usize>| -> Result<Vec<u8>> {
        let request = kit::decode::infer_request_with(body, header_length)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let outputs = engine
            .run(request.inputs)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if request.binary_outputs != kit::decode::BinaryOutputs::None {
            let (body, _) = kit::respond::infer_binary_body(NAME, None, &outputs, |name| {
                request.binary_outputs.contains(name)
            });
            return Ok(body);
        }
        Ok(serde_json::to_vec(&kit::respond::infer_body(
            NAME, None, &outputs,
        ))?)
    };
    let reference: Value = serde_json::from_slice(&native_once(&body, None)?)?;

    // The sandbox: the generic function baked with this model.
    // `_work` holds the baked component and the mounted model: removed when
    // the run ends, however it ends.
    let sandbox = if opts.times(Way::Wasm) || opts.times(Way::Cold) {
        Some(sandboxed(opts, &bytes, &shapes.join(";")).await?)
    } else {
        None
    };
    let post = |body: &[u8], header_length: Option<usize>| {
        // With its length, as any HTTP client sends it.
        let mut req = http::Request::post(format!("http://localhost/v2/models/{NAME}/infer"))
            .header("content-length", body.len());
        req = match header_length {
            Some(h) => req
                .header("content-type", "application/octet-stream")
                .header(kit::decode::HEADER_LENGTH, h),
            None => req.header("content-type", "application/json"),
        };
        req.body(full_body(body.to_vec())).expect("a valid request")
    };
    let request = || post(&timed_body, header_length);
    // Each warm instance's first call is JSON, checked against native; the
    // timed ones are `timed_body`.
    let warm = match &sandbox {
        Some((runnable, _)) => {
            Some(checked_warm(runnable, post(&body, None), &reference, "in the sandbox").await?)
        }
        None => None,
    };
    // `settle`: after the timed part, wait for the instance to be torn down,
    // so that the next call does not queue behind that on the one instance
    // thread (with a core per CPU it would go to another core).
    let fresh_call = async |runnable: &Arc<Runnable>, settle: bool| -> Result<Duration> {
        let (usage, gone) = futures::channel::oneshot::channel();
        let started = Instant::now();
        let response = runnable
            .handle_with(request(), (), usage)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let status = response.status();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|e| anyhow::anyhow!("reading the response: {e:?}"))?
            .to_bytes();
        let elapsed = started.elapsed();
        if !status.is_success() {
            bail!(
                "the sandboxed model answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        if settle {
            let _ = gone.await;
        }
        Ok(elapsed)
    };

    // wasi:nn: the host runs the model; the function only converts tensors.
    let times_nn = opts.times(Way::WasiNn)
        || opts.times(Way::WasiNnCold)
        || opts.times(Way::WasiNnBytes)
        || opts.concurrency > 1;
    let nn_component = opts.component.with_file_name("oip_nn.wasm");
    if times_nn && !nn_component.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p oip-nn` in functions/",
            nn_component.display()
        );
    }
    let config = crate::nn::NnModelConfig {
        backend: opts.backend,
        shapes: shapes.clone(),
        threads: Some(opts.threads),
        ..crate::nn::NnModelConfig::default()
    };
    // The backend is loaded only if a way runs it (`--backend onnxruntime
    // --ways native` needs no ONNX Runtime); else tract's stands in, unused.
    let uses_backend = times_nn || opts.times(Way::Backend);
    let backend: Arc<dyn crate::nn::Backend> = match opts.backend {
        crate::nn::BackendKind::Onnxruntime if uses_backend => {
            config.backend(&bytes, Path::new("."))?
        }
        _ => tract.clone(),
    };
    // The backend alone, on the tensors the guest would hand it.
    let tensors: Vec<(String, crate::nn::NnTensor)> = inputs
        .into_iter()
        .map(|t| (t.name.clone(), crate::nn::from_kit(t)))
        .collect();
    let direct_once = || -> Result<Duration> {
        let started = Instant::now();
        backend
            .run(tensors.clone())
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", backend.name()))?;
        Ok(started.elapsed())
    };
    if uses_backend {
        direct_once()?;
    }
    // With `from_bytes`, the function loads the model from the bytes of its
    // file, mounted at `/model`, instead of by name.
    let nn_runnable = |max_batch: usize, from_bytes: bool| -> Result<Arc<Runnable>> {
        let config = crate::nn::NnModelConfig {
            max_batch_size: max_batch as u32,
            ..config.clone()
        };
        let model = config.with_backend(NAME, backend.clone())?;
        let mut environment = vec![("EDGEINFER_MODEL_NAME".into(), NAME.into())];
        let mut mounts = Vec::new();
        if from_bytes {
            let (dir, file) = (opts.model.parent(), opts.model.file_name());
            let (Some(dir), Some(file)) = (dir, file.and_then(|f| f.to_str())) else {
                bail!("{}: not a file's path", opts.model.display());
            };
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            mounts.push((dir.to_path_buf(), "/model".to_string()));
            environment.push(("EDGEINFER_MODEL_FILE".into(), format!("/model/{file}")));
        }
        let caps = Capabilities {
            environment,
            mounts,
            variables: Default::default(),
            outbound: OutboundPolicy::new(Vec::new()),
            max_memory_bytes: 4 << 30,
            nn: Arc::new(crate::nn::Registry::new(
                [(NAME.to_string(), Arc::new(model))].into(),
                1,
            )),
        };
        ready(opts, caps, &nn_component)
    };
    // The function with a fresh instance per call, and one warm instance.
    let nn = if times_nn {
        let fresh = nn_runnable(1, false)?;
        let warm = checked_warm(&fresh, post(&body, None), &reference, "through wasi:nn").await?;
        Some((fresh, warm))
    } else {
        None
    };
    let nn_bytes = if opts.times(Way::WasiNnBytes) {
        let runnable = nn_runnable(1, true)?;
        let what = "through wasi:nn, loaded from bytes";
        Some(checked_warm(&runnable, post(&body, None), &reference, what).await?)
    } else {
        None
    };

    // Every way in turn, a block of calls each, so that the machine's drift
    // over the run touches them all alike and their ratios hold. Within a
    // block each way runs as a model in steady use does: its first call is
    // not timed, so that none is timed on caches the other ways just filled.
    let (mut native, mut wasm, mut cold, mut wasi_nn, mut nn_fresh, mut nn_bytes_times) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut direct = Vec::new();
    let mut done = 0;
    while done < n {
        let block = BLOCK.min(n - done);
        done += block;
        if opts.times(Way::Native) {
            timed_block(block, &mut native, async || {
                let started = Instant::now();
                native_once(&timed_body, header_length)?;
                Ok(started.elapsed())
            })
            .await?;
        }
        if let Some(warm) = &warm
            && opts.times(Way::Wasm)
        {
            timed_block(block, &mut wasm, async || Ok(warm.call(request()).await?.0)).await?;
        }
        if let Some((runnable, _)) = &sandbox
            && opts.times(Way::Cold)
        {
            timed_block(block, &mut cold, async || fresh_call(runnable, true).await).await?;
        }
        if let Some((_, nn_warm)) = &nn
            && opts.times(Way::WasiNn)
        {
            timed_block(block, &mut wasi_nn, async || {
                let before = nn_warm.nn_compute();
                let took = nn_warm.call(request()).await?.0;
                Ok((took, nn_warm.nn_compute() - before))
            })
            .await?;
        }
        if let Some((nn_cold, _)) = &nn
            && opts.times(Way::WasiNnCold)
        {
            timed_block(block, &mut nn_fresh, async || {
                fresh_call(nn_cold, true).await
            })
            .await?;
        }
        if let Some(warm) = &nn_bytes {
            timed_block(block, &mut nn_bytes_times, async || {
                Ok(warm.call(request()).await?.0)
            })
            .await?;
        }
        if opts.times(Way::Backend) {
            timed_block(block, &mut direct, async || direct_once()).await?;
        }
    }
    let (wasi_nn, compute): (Vec<Duration>, Vec<Duration>) = wasi_nn.into_iter().unzip();

    // Throughput with `concurrency` calls in flight, each in a fresh instance.
    let mut throughput = Value::Null;
    if opts.concurrency > 1 {
        let mut rps = serde_json::Map::new();
        for (label, max_batch) in [("unbatched", 1), ("batched", opts.concurrency)] {
            let runnable = nn_runnable(max_batch, false)?;
            // `calls` calls, `concurrency` at a time.
            let drive = async |calls: usize| {
                let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let workers = (0..opts.concurrency).map(|_| {
                    let (runnable, next, fresh_call) =
                        (runnable.clone(), next.clone(), &fresh_call);
                    async move {
                        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < calls {
                            fresh_call(&runnable, false).await?;
                        }
                        anyhow::Ok(())
                    }
                });
                futures::future::try_join_all(workers).await.map(drop)
            };
            // Untimed first, as a model in steady use: the batcher has made
            // its trial of whether batching pays (see `nn::batch`).
            drive(n).await?;
            let started = Instant::now();
            drive(n).await?;
            rps.insert(
                label.into(),
                json!(n as f64 / started.elapsed().as_secs_f64()),
            );
        }
        throughput = json!({ "concurrency": opts.concurrency, "calls_per_s": rps });
    }

    // Cold less warm, call by call: the k-th cold call against the k-th warm
    // one of the same round, so that the machine's drift cancels out.
    let cold_over_warm = paired_difference(&cold, &wasm);
    let nn_cold_over_warm = paired_difference(&nn_fresh, &wasi_nn);
    let report = json!({
        "model": opts.model.display().to_string(),
        "iterations": n,
        "instance_threads": crate::cores::count(),
        // Whether the native ways were timed on the instance thread too.
        "timed_on_instance_thread": crate::cores::on_core(),
        "native_us": Summary::of(native),
        "wasm_us": Summary::of(wasm),
        "wasi_nn_us": Summary::of(wasi_nn),
        "wasi_nn_compute_us": Summary::of(compute),
        "wasi_nn_cold_us": Summary::of(nn_fresh),
        "wasi_nn_cold_over_warm_us": nn_cold_over_warm,
        "wasi_nn_bytes_us": Summary::of(nn_bytes_times),
        "backend": if uses_backend {
            json!({ "name": backend.name(), "threads": opts.threads })
        } else {
            Value::Null
        },
        "backend_us": Summary::of(direct),
        "cold_us": Summary::of(cold),
        "cold_over_warm_us": cold_over_warm,
        "wasi_nn_throughput": throughput,
    });
    if opts.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(())
}

/// p50 and p99 of `a[k] - b[k]` in µs (signed: cold can beat warm).
fn paired_difference(a: &[Duration], b: &[Duration]) -> Option<Summary> {
    Summary::of_us(
        a.iter()
            .zip(b)
            .map(|(a, b)| (a.as_secs_f64() - b.as_secs_f64()) * 1e6)
            .collect(),
    )
}

/// One way's turn: a call to warm it up, then `n` calls whose results are kept.
async fn timed_block<T>(
    n: usize,
    into: &mut Vec<T>,
    mut call: impl AsyncFnMut() -> Result<T>,
) -> Result<()> {
    call().await?;
    for _ in 0..n {
        into.push(call().await?);
    }
    Ok(())
}

fn print_table(report: &Value) {
    println!(
        "{} ({} iterations, instances on {} thread(s))",
        report["model"].as_str().unwrap_or_default(),
        report["iterations"],
        report["instance_threads"]
    );
    println!(
        "{:<10} {:>12} {:>12} {:>10}",
        "", "p50 µs", "p99 µs", "p50/native"
    );
    let native = report["native_us"]["p50"].as_f64().unwrap_or(f64::NAN);
    for (label, key) in [
        ("native", "native_us"),
        ("wasm", "wasm_us"),
        ("cold", "cold_us"),
        ("wasi-nn", "wasi_nn_us"),
        ("  compute", "wasi_nn_compute_us"),
        ("  cold", "wasi_nn_cold_us"),
        ("  bytes", "wasi_nn_bytes_us"),
        ("backend", "backend_us"),
    ] {
        let s = &report[key];
        if s.is_null() {
            println!("{label:<10} {:>12} {:>12} {:>10}", "n/a", "n/a", "");
            continue;
        }
        let p50 = s["p50"].as_f64().unwrap_or(f64::NAN);
        let p99 = s["p99"].as_f64().unwrap_or(f64::NAN);
        let ratio = if native.is_finite() {
            format!("{:>9.2}×", p50 / native)
        } else {
            String::new()
        };
        println!("{label:<10} {p50:>12.1} {p99:>12.1} {ratio}");
    }
    for (label, key, what) in [
        ("cold-wasm", "cold_over_warm_us", "cold less wasm"),
        (
            "nn cold-nn",
            "wasi_nn_cold_over_warm_us",
            "wasi-nn cold less warm",
        ),
    ] {
        let d = &report[key];
        if d.is_null() {
            println!("{label:<10} {:>12} {:>12}  ({what})", "n/a", "n/a");
            continue;
        }
        println!(
            "{label:<10} {:>12.1} {:>12.1}  ({what}, call by call)",
            d["p50"].as_f64().unwrap_or(f64::NAN),
            d["p99"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if !report["backend"].is_null() {
        println!(
            "(wasi-nn and backend: {}, {} thread(s); compute = the backend's share of each \
             wasi-nn call, run on the instance's core; backend = the host backend called directly)",
            report["backend"]["name"].as_str().unwrap_or_default(),
            report["backend"]["threads"]
        );
    }
    let t = &report["wasi_nn_throughput"];
    if !t.is_null() {
        let rps = |k: &str| t["calls_per_s"][k].as_f64().unwrap_or(f64::NAN);
        println!(
            "wasi-nn throughput at concurrency {}: unbatched {:.0}/s, batched {:.0}/s ({:.2}×)",
            t["concurrency"],
            rps("unbatched"),
            rps("batched"),
            rps("batched") / rps("unbatched")
        );
    }
}

/// Bakes the generic function with the model and readies it on a pooling
/// engine. The model stays mounted from the returned work dir, so it must
/// outlive every call.
async fn sandboxed(
    opts: &BenchOptions,
    model: &[u8],
    shapes: &str,
) -> Result<(Arc<Runnable>, tempfile::TempDir)> {
    if !opts.component.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p oip` in functions/",
            opts.component.display()
        );
    }
    let work = tempfile::Builder::new()
        .prefix("bench-")
        .tempdir_in(create(&opts.state_dir)?)?;
    let model_dir = work.path().join("model");
    std::fs::create_dir_all(&model_dir)?;
    std::fs::write(model_dir.join("model.onnx"), model)?;
    let caps = Capabilities {
        environment: vec![
            ("EDGEINFER_MODEL_NAME".into(), NAME.into()),
            ("EDGEINFER_INPUT_SHAPES".into(), shapes.into()),
        ],
        mounts: vec![(model_dir, "/model".into())],
        variables: Default::default(),
        outbound: OutboundPolicy::new(Vec::new()),
        max_memory_bytes: 4 << 30,
        nn: Arc::new(crate::nn::Registry::empty()),
    };
    let baked = work.path().join("baked.wasm");
    crate::bake::bake(
        &crate::bake::Baker::new(&opts.state_dir)?,
        &caps,
        &opts.component,
        &baked,
    )
    .await?;
    Ok((ready(opts, caps, &baked)?, work))
}

/// `component` compiled (or mapped from the cache) and pre-instantiated on a
/// pooling engine without fuel, as `edgeinfer up` serves unless fuel is priced.
fn ready(opts: &BenchOptions, caps: Capabilities, component: &Path) -> Result<Arc<Runnable>> {
    let engine = new_engine(&PoolSettings::default(), false)?;
    // Leaked on purpose: the clock must outlive every instance of this run.
    std::mem::forget(EpochClock::start(engine.clone()));
    let compiled = CompileCache::new(&engine, &opts.state_dir).load(&engine, component)?;
    let linker = sandbox::linker(&engine)?;
    let runnable = Runnable::new(&linker, &compiled.component, caps, Duration::from_secs(300))?;
    Ok(Arc::new(runnable))
}

fn join(dims: &[usize]) -> String {
    dims.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn create(dir: &Path) -> Result<&Path> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A warm instance of `runnable` whose first call, `first`, answered as
/// native tract did.
async fn checked_warm(
    runnable: &Runnable,
    first: Request,
    native: &Value,
    what: &str,
) -> Result<WarmInstance> {
    let warm = runnable.warm_instance().await?;
    check_same(native, &warm.call(first).await?.1, what)?;
    Ok(warm)
}

/// Both runs must agree, or the timing compares different work.
fn check_same(native: &Value, sandboxed: &[u8], what: &str) -> Result<()> {
    let got: Value = serde_json::from_slice(sandboxed).with_context(|| {
        format!(
            "the answer {what} is not JSON: {}",
            String::from_utf8_lossy(sandboxed)
        )
    })?;
    let (Some(a), Some(b)) = (native["outputs"].as_array(), got["outputs"].as_array()) else {
        bail!("the answer {what} has no outputs: {got}");
    };
    for (a, b) in a.iter().zip(b) {
        let (Some(x), Some(y)) = (a["data"].as_array(), b["data"].as_array()) else {
            continue;
        };
        let worst = x
            .iter()
            .zip(y)
            .filter_map(|(x, y)| Some((x.as_f64()? - y.as_f64()?).abs()))
            .fold(0.0, f64::max);
        if x.len() != y.len() || worst > 1e-3 {
            bail!(
                "output '{}' differs natively and {what} (max abs diff {worst})",
                a["name"]
            );
        }
    }
    Ok(())
}

/// `body`'s tensors as a binary-extension request that also asks for binary
/// outputs; returns the body and its JSON header's length.
fn binary_request(body: &[u8]) -> Result<(Vec<u8>, usize)> {
    let request = kit::decode::infer_request(body).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tail = Vec::new();
    let inputs: Vec<Value> = request
        .inputs
        .iter()
        .map(|t| kit::respond::binary_tensor(t, &mut tail))
        .collect();
    let head = json!({ "inputs": inputs, "parameters": { "binary_data_output": true } });
    Ok(kit::respond::binary_body(&head, &tail))
}

/// An OIP request with deterministic pseudo-random inputs: floats in [0, 1),
/// integers in [0, 100) (valid token ids and byte values alike).
fn synthetic_request(specs: &[TensorSpec], shapes: &[String]) -> Result<Vec<u8>> {
    let mut given: std::collections::HashMap<String, Vec<usize>> =
        kit::engine::parse_shapes(&shapes.join(";"))
            .map_err(|e| anyhow::anyhow!("--shape: {e}"))?
            .into_iter()
            .collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut inputs = Vec::new();
    for spec in specs {
        let shape: Vec<usize> = match given.remove(&spec.name) {
            Some(shape) => shape,
            None => spec.shape.iter().map(|d| d.unwrap_or(1)).collect(),
        };
        let n: usize = shape.iter().product();
        let mut float = || (next() >> 40) as f32 / (1u64 << 24) as f32;
        let data: TensorData = match spec.datatype {
            DataType::Fp32 => (0..n).map(|_| float()).collect::<Vec<f32>>().into(),
            DataType::Fp64 => (0..n).map(|_| float() as f64).collect::<Vec<f64>>().into(),
            DataType::Fp16 => (0..n)
                .map(|_| half::f16::from_f32(float()))
                .collect::<Vec<_>>()
                .into(),
            DataType::Int64 => (0..n)
                .map(|_| (next() % 100) as i64)
                .collect::<Vec<_>>()
                .into(),
            DataType::Int32 => (0..n)
                .map(|_| (next() % 100) as i32)
                .collect::<Vec<_>>()
                .into(),
            DataType::Int8 => (0..n)
                .map(|_| (next() % 100) as i8)
                .collect::<Vec<_>>()
                .into(),
            DataType::Uint8 => (0..n)
                .map(|_| (next() % 100) as u8)
                .collect::<Vec<_>>()
                .into(),
            DataType::Bool => (0..n).map(|_| next() % 2 == 0).collect::<Vec<_>>().into(),
        };
        inputs.push(Tensor::new(&spec.name, shape, data).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    if let Some(name) = given.keys().next() {
        bail!("--shape names `{name}`, which is not an input of the model");
    }
    Ok(serde_json::to_vec(&json!({ "inputs": inputs }))?)
}
