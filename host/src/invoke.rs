//! Instance lifecycle: one fresh instance per request, from a component's
//! `InstancePre`, run under its deadline and memory cap, and torn down when
//! its response body is done.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use http_body_util::BodyExt;
use wasmtime::component::{Accessor, Component, Linker};
use wasmtime::{AsContextMut, Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::WasiBody;
use wasmtime_wasi_http::handler::{ExpirationError, Prepared, Proxy, ProxyPre};

use crate::guest_stderr::GuestStderr;
use crate::sandbox::{Capabilities, InstanceState, MemoryStats};

pub type Request = http::Request<WasiBody>;
pub type Response = http::Response<WasiBody>;

/// A compiled component, ready to be instantiated cheaply and often.
pub struct Runnable {
    pre: ProxyPre<InstanceState>,
    caps: Capabilities,
    timeout: Duration,
}

/// A call for a [`WarmInstance`], and where its timing and body go.
type WarmCall = (
    Request,
    oneshot::Sender<anyhow::Result<(Duration, bytes::Bytes)>>,
);

/// An instance serving calls in turn; see [`Runnable::warm_instance`].
pub struct WarmInstance {
    calls: tokio::sync::mpsc::Sender<WarmCall>,
    nn_usage: Arc<crate::nn::NnUsage>,
}

impl WarmInstance {
    /// `req` answered by the instance: the time to its whole body, and the body.
    pub async fn call(&self, req: Request) -> anyhow::Result<(Duration, bytes::Bytes)> {
        let (reply, answer) = oneshot::channel();
        self.calls
            .send((req, reply))
            .await
            .map_err(|_| anyhow::anyhow!("the warm instance has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the warm instance has stopped"))?
    }

    /// The instance's `wasi:nn` compute time so far, as the meter counts it.
    pub fn nn_compute(&self) -> Duration {
        Duration::from_micros(
            self.nn_usage
                .compute_us
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

/// Why a guest produced no response.
#[derive(Debug, thiserror::Error)]
pub enum GuestFailure {
    #[error("the component ran past its {0:?} deadline")]
    Timeout(Duration),
    #[error("the component exceeded its memory limit of {} MiB", .0 >> 20)]
    OutOfMemory(u64),
    #[error("the component trapped: {0}")]
    Trap(String),
    #[error("the component failed: {0}")]
    Failed(String),
    /// The engine's instance pool, shared by all components, had no free slot.
    #[error("the host is out of instance slots: {0}")]
    PoolExhausted(String),
}

/// What an instance used, sent when it is gone (for the meter).
#[derive(Debug, Default)]
pub struct Usage {
    /// Fuel consumed; 0 when the engine does not count fuel.
    pub fuel: u64,
    /// Peak linear memory, from the `ResourceLimiter`.
    pub max_memory_bytes: u64,
    /// Time spent in `wasi:nn` compute, the backend that spent it, and
    /// whether on a GPU.
    pub nn_compute_us: u64,
    pub nn_backend: Option<&'static str>,
    pub nn_gpu: bool,
    /// A failure after the response head was sent (the body was cut short).
    pub failure: Option<GuestFailure>,
}

/// Fuel given to every store when the engine counts it; never runs out in
/// practice (the deadline stops a runaway guest), so consumption is exact.
const FUEL: u64 = i64::MAX as u64;

/// Raised from the epoch callback once a request's deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
struct DeadlineExceeded;

impl Runnable {
    pub fn new(
        linker: &Linker<InstanceState>,
        component: &Component,
        caps: Capabilities,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let pre = linker.instantiate_pre(component)?;
        // Prefer the p3 `wasi:http/handler` export; fall back to p2's.
        let pre = match wasmtime_wasi_http::p3::bindings::ServicePre::new(pre.clone()) {
            Ok(p3) => ProxyPre::P3(p3),
            Err(p3_err) => ProxyPre::P2(
                wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre).map_err(|p2_err| {
                    anyhow::anyhow!(
                        "the component exports neither wasi:http/handler@0.3 ({p3_err}) \
                         nor wasi:http/incoming-handler@0.2 ({p2_err})"
                    )
                })?,
            ),
        };
        Ok(Self { pre, caps, timeout })
    }

    /// Runs `req` in a fresh instance. The instance lives on in a task of its
    /// own until the guest has finished writing the response body.
    pub async fn handle(self: &Arc<Self>, req: Request) -> Result<Response, GuestFailure> {
        self.handle_with(req, (), oneshot::channel().0).await
    }

    /// [`Self::handle`], holding `guard` (e.g. an admission permit) for as long
    /// as the instance lives: until its response body is done, it failed, or
    /// its deadline passed. What the instance used goes to `usage` once it is gone.
    pub async fn handle_with<G: Send + 'static>(
        self: &Arc<Self>,
        req: Request,
        guard: G,
        usage: oneshot::Sender<Usage>,
    ) -> Result<Response, GuestFailure> {
        let deadline = Instant::now() + self.timeout;
        let memory = Arc::new(MemoryStats::default());
        let nn_usage = Arc::new(crate::nn::NnUsage::default());
        let stderr = GuestStderr::default();
        let mut store = self
            .new_store(memory.clone(), nn_usage.clone(), stderr.clone())
            .map_err(|e| GuestFailure::Failed(format!("preparing the instance: {e:#}")))?;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                // Let other requests run on this thread between ticks.
                Ok(UpdateDeadline::Yield(1))
            }
        });

        let (tx, rx) = oneshot::channel();
        let this = self.clone();
        let run = crate::cores::spawn(async move {
            let _guard = guard;
            let instance = async {
                let proxy = this.pre.instantiate_async(&mut store).await?;
                store
                    .run_concurrent(async |accessor| {
                        let prepared = prepare(accessor, &proxy, req, tx)?;
                        // The deadline is enforced around the whole instance
                        // below (and by epochs inside guest code).
                        prepared.run(accessor, std::future::pending()).await?;
                        // The response may still be streaming from a guest task.
                        poll_fn(|cx| accessor.poll_no_interesting_tasks(cx)).await;
                        wasmtime::Result::<()>::Ok(())
                    })
                    .await?
            };
            let result = match tokio::time::timeout_at(deadline.into(), instance).await {
                Ok(result) => result,
                Err(_) => Err(wasmtime::Error::new(DeadlineExceeded)),
            };
            let fuel = store.get_fuel().map_or(0, |left| FUEL - left);
            (result, fuel)
        });
        let report = move |fuel: u64, failure: Option<GuestFailure>, memory: &MemoryStats| {
            let _ = usage.send(Usage {
                fuel,
                max_memory_bytes: memory.peak.load(Ordering::Relaxed),
                nn_compute_us: nn_usage.compute_us.load(Ordering::Relaxed),
                nn_backend: nn_usage.backend.get().copied(),
                nn_gpu: nn_usage.gpu.load(Ordering::Relaxed),
                failure,
            });
        };

        let failure = match rx.await {
            Ok(Ok(response)) => {
                let this = self.clone();
                // Errors after the head is sent can only cut the body short.
                tokio::spawn(async move {
                    let (fuel, failure) = match run.await {
                        // Exit status 0 is a command's way to say it is done.
                        Ok((Err(e), fuel)) if exit_status(&e) != Some(0) => {
                            let failure = this.classify(&e, &memory, &stderr);
                            tracing::warn!(error = %failure, "component failed while streaming its response");
                            (fuel, Some(failure))
                        }
                        Ok((_, fuel)) => (fuel, None),
                        Err(join) => (
                            0,
                            Some(GuestFailure::Failed(format!(
                                "the instance task failed: {join}"
                            ))),
                        ),
                    };
                    report(fuel, failure, &memory);
                });
                return Ok(response);
            }
            Ok(Err(e)) => {
                // The instance is still finishing; its fuel is counted when it is gone.
                let (ran, fuel) = run.await.unwrap_or((Ok(()), 0));
                report(fuel, None, &memory);
                // A deadline that passed while the guest waited on the host
                // drops the instance, and its unset response with it, which
                // answers `e` ("never invoked `response-outparam::set`"). Why
                // the instance ended is the better reason.
                ran.err().unwrap_or(e)
            }
            // The sender was dropped: the instance failed before answering.
            Err(_) => {
                let (e, fuel) = match run.await {
                    Ok((Err(e), fuel)) => (e, fuel),
                    Ok((Ok(()), fuel)) => (
                        wasmtime::format_err!("the component returned without a response"),
                        fuel,
                    ),
                    Err(join) => (wasmtime::format_err!("the instance task failed: {join}"), 0),
                };
                report(fuel, None, &memory);
                e
            }
        };
        Err(self.classify(&failure, &memory, &stderr))
    }

    /// A store for one instance: memory cap, and fuel if the engine counts it.
    fn new_store(
        &self,
        memory: Arc<MemoryStats>,
        nn_usage: Arc<crate::nn::NnUsage>,
        stderr: GuestStderr,
    ) -> anyhow::Result<Store<InstanceState>> {
        let state = InstanceState::new(&self.caps, memory, nn_usage, stderr)?;
        let mut store = Store::new(self.pre_engine(), state);
        store.limiter(|s| s.limiter());
        // Fails only when the engine does not count fuel (`[metering] fuel = false`).
        let _ = store.set_fuel(FUEL);
        Ok(store)
    }

    /// One instance kept alive to serve calls one after another: how
    /// `edgeinfer bench` times warm calls between cold ones. Not a serving
    /// path: the calls share the instance's state.
    pub async fn warm_instance(&self) -> anyhow::Result<WarmInstance> {
        let nn_usage = Arc::new(crate::nn::NnUsage::default());
        let mut store = self.new_store(
            Arc::new(MemoryStats::default()),
            nn_usage.clone(),
            GuestStderr::default(),
        )?;
        // No deadline: the epoch clock just yields.
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        let proxy = self.pre.instantiate_async(&mut store).await?;
        let (calls, mut queue) = tokio::sync::mpsc::channel::<WarmCall>(1);
        crate::cores::spawn(async move {
            let served = store
                .run_concurrent(async move |accessor| {
                    while let Some((req, reply)) = queue.recv().await {
                        let started = Instant::now();
                        let (tx, rx) = oneshot::channel();
                        let prepared = prepare(accessor, &proxy, req, tx)?;
                        let (ran, body) =
                            futures::join!(prepared.run(accessor, std::future::pending()), async {
                                let response = rx.await??;
                                let body = response.into_body().collect().await?.to_bytes();
                                wasmtime::Result::<_>::Ok(body)
                            });
                        let timed = ran.and(body).map(|body| (started.elapsed(), body));
                        let failed = timed.is_err();
                        let _ = reply.send(timed.map_err(anyhow::Error::from));
                        if failed {
                            break;
                        }
                    }
                    wasmtime::Result::<()>::Ok(())
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = format!("{e:#}"), "the warm instance failed");
            }
        });
        Ok(WarmInstance { calls, nn_usage })
    }

    fn pre_engine(&self) -> &wasmtime::Engine {
        match &self.pre {
            ProxyPre::P2(p) => p.instance_pre().engine(),
            ProxyPre::P3(p) => p.instance_pre().engine(),
        }
    }
}

impl Runnable {
    fn classify(
        &self,
        e: &wasmtime::Error,
        memory: &MemoryStats,
        stderr: &GuestStderr,
    ) -> GuestFailure {
        if let Some(full) = e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
            return GuestFailure::PoolExhausted(full.to_string());
        }
        if e.downcast_ref::<DeadlineExceeded>().is_some()
            || e.downcast_ref::<ExpirationError>().is_some()
        {
            return GuestFailure::Timeout(self.timeout);
        }
        // A failed grow makes the guest abort, so the trap itself says little.
        if memory.exceeded.load(Ordering::Relaxed) {
            return GuestFailure::OutOfMemory(self.caps.max_memory_bytes);
        }
        // What the guest last wrote to stderr is often the only reason given.
        let quoted = |what: String| match stderr.last_words() {
            Some(said) => format!("{what}, after it wrote to stderr: {said}"),
            None => what,
        };
        if let Some(trap) = e.downcast_ref::<Trap>() {
            return GuestFailure::Trap(quoted(trap.to_string()));
        }
        if let Some(status) = exit_status(e) {
            return GuestFailure::Failed(quoted(format!("it exited with status {status}")));
        }
        GuestFailure::Failed(quoted(format!("{e:#}")))
    }
}

/// The status `e` carries if it is the guest calling `wasi:cli/exit`.
fn exit_status(e: &wasmtime::Error) -> Option<i32> {
    e.downcast_ref::<wasmtime_wasi::I32Exit>()
        .map(|exit| exit.0)
}

/// `req` as a call ready to run in the instance behind `accessor`.
fn prepare<'a>(
    accessor: &Accessor<InstanceState>,
    proxy: &'a Proxy,
    req: Request,
    tx: oneshot::Sender<wasmtime::Result<Response>>,
) -> wasmtime::Result<Prepared<'a, InstanceState>> {
    accessor.with(|mut s| {
        Prepared::new(
            s.as_context_mut(),
            proxy,
            req,
            <InstanceState as wasmtime_wasi_http::WasiHttpView>::http,
            tx,
        )
    })
}

/// A body from bytes already in memory.
pub fn full_body(bytes: impl Into<bytes::Bytes>) -> WasiBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
