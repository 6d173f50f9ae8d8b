//! Per-call metering: who called which component, for how long, with how
//! much fuel and memory, and how it ended. The record is written to the
//! ledger when the response body ends, and the response's last byte is held
//! back until the record is durable: a client that received a whole
//! response can count on its record existing, whatever happens to the host
//! afterwards.
//!
//! Holding the end back must not cost a second write to the socket: a
//! response that ends soon and small is gathered and sent whole once its
//! record is durable. Only a long or slow (streaming) body goes out as it is
//! made, with its last frame held.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;
use futures::channel::oneshot;
use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use rust_decimal::Decimal;
use uuid::Uuid;
use wasmtime_wasi_http::Error as ErrorCode;

use crate::billing::{self, Rates};
use crate::invoke::{GuestFailure, Response, Usage};
use crate::ledger::{Ledger, MeterRecord, Outcome};
use crate::tenants::{Caller, KeyRing};

/// Process-wide: where records go, and the keys calls are checked against.
pub struct Meter {
    pub node: String,
    /// `None` when metering is off (`[metering] enabled = false`).
    pub ledger: Option<Arc<dyn Ledger>>,
    pub keys: Arc<KeyRing>,
}

/// What is known about a call while it runs, to become its [`MeterRecord`].
pub struct Call {
    pub id: Uuid,
    started: Instant,
    started_us: i64,
    pub component: String,
    pub component_digest: String,
    pub model: Option<String>,
    pub model_digest: Option<String>,
    pub route: String,
    pub caller: Option<Caller>,
    pub queue_us: u64,
    pub cold_start: bool,
    pub bytes_in: u64,
    /// Fuel and memory, sent when the instance is gone.
    pub usage: Option<oneshot::Receiver<Usage>>,
    /// Set when the host decided how the call ended (a rejection, or a
    /// guest failure before any response).
    pub outcome: Option<Outcome>,
    pub rates: Rates,
}

impl Call {
    pub fn new(id: Uuid, started: Instant, component: String, route: String) -> Self {
        let started_us =
            jiff::Timestamp::now().as_microsecond() - started.elapsed().as_micros() as i64;
        Self {
            id,
            started,
            started_us,
            component,
            component_digest: String::new(),
            model: None,
            model_digest: None,
            route,
            caller: None,
            queue_us: 0,
            cold_start: false,
            bytes_in: 0,
            usage: None,
            outcome: None,
            rates: Rates::default(),
        }
    }

    /// The outcome of a guest failure that produced no response.
    pub fn failed(&mut self, failure: &GuestFailure) {
        self.outcome = Some(outcome_of(failure));
    }

    fn record(self, node: &str, status: u16, bytes_out: u64, usage: Option<Usage>) -> MeterRecord {
        let wall_us = self.started.elapsed().as_micros() as u64;
        let usage = usage.unwrap_or_default();
        let outcome = self
            .outcome
            .or(usage.failure.as_ref().map(outcome_of))
            .unwrap_or(match status {
                400..=499 => Outcome::ClientError,
                500..=599 => Outcome::Trap,
                _ => Outcome::Ok,
            });
        let billed_ms = if outcome.billable() {
            billing::billed_ms(wall_us)
        } else {
            0
        };
        let mut r = MeterRecord {
            id: self.id.to_string(),
            node: node.to_string(),
            tenant: self.caller.as_ref().map(|c| c.tenant.clone()),
            key_id: self.caller.as_ref().map(|c| c.key_id.clone()),
            component: self.component,
            component_digest: self.component_digest,
            model: self.model,
            model_digest: self.model_digest,
            route: self.route,
            started_at: crate::ledger::rfc3339(self.started_us),
            ended_at: crate::ledger::rfc3339(self.started_us + wall_us as i64),
            wall_us,
            queue_us: self.queue_us,
            billed_ms,
            fuel: usage.fuel,
            nn_compute_us: usage.nn_compute_us,
            nn_backend: usage.nn_backend.map(str::to_string),
            max_memory_bytes: usage.max_memory_bytes,
            bytes_in: self.bytes_in,
            bytes_out,
            cold_start: self.cold_start,
            status,
            outcome,
            amount: Decimal::ZERO,
            currency: self.rates.currency.clone(),
        };
        r.amount = billing::amount(&self.rates, &r, usage.nn_gpu);
        r
    }
}

fn outcome_of(failure: &GuestFailure) -> Outcome {
    match failure {
        GuestFailure::Timeout(_) => Outcome::Timeout,
        GuestFailure::OutOfMemory(_) => Outcome::Oom,
        GuestFailure::Trap(_) | GuestFailure::Failed(_) => Outcome::Trap,
        GuestFailure::PoolExhausted(_) => Outcome::Rejected,
    }
}

/// A body that ends within this many bytes…
const WHOLE_BYTES: u64 = 64 << 10;
/// …and this long after its head is sent whole, after its record is durable.
const WHOLE_WAIT: Duration = Duration::from_millis(20);

impl Meter {
    /// `resp` with its body metered: the record is written when the body
    /// ends (or is dropped), before the last byte is released. If the body
    /// fails before anything was sent, the call is recorded and `Err` says
    /// why, for the caller to answer with an error instead.
    pub async fn wrap(self: &Arc<Self>, call: Call, resp: Response) -> Result<Response, String> {
        let (mut parts, mut body) = resp.into_parts();
        let status = parts.status.as_u16();
        let exact = body.size_hint().exact();
        // Recorded even if this future is dropped (the client went away).
        let mut guard = CommitOnDrop(Some(Box::new(Unfinished {
            call,
            status,
            meter: self.clone(),
        })));
        let mut prefix = VecDeque::new();
        if self.ledger.is_some() {
            let mut bytes_out = 0;
            let wait = tokio::time::sleep(WHOLE_WAIT);
            tokio::pin!(wait);
            let ended = loop {
                tokio::select! {
                    biased;
                    frame = body.frame() => match frame {
                        None => break true,
                        Some(Ok(frame)) => {
                            let data = frame.data_ref().map(|d| d.len() as u64);
                            bytes_out += data.unwrap_or(0);
                            prefix.push_back(frame);
                            if data.is_none() || bytes_out > WHOLE_BYTES {
                                break false;
                            }
                        }
                        Some(Err(e)) => {
                            let mut unfinished = guard.take();
                            unfinished.status = 500;
                            if let Err(m) = finish(unfinished.commit(bytes_out)).await {
                                tracing::error!(error = format!("{m:#}"), "metering a failed call");
                            }
                            return Err(format!("the function's response failed: {e}"));
                        }
                    },
                    () = &mut wait => break false,
                }
            };
            if ended {
                finish(guard.take().commit(bytes_out))
                    .await
                    .map_err(|e| format!("the call could not be metered: {e:#}"))?;
                let mut whole = bytes::BytesMut::with_capacity(bytes_out as usize);
                for frame in prefix {
                    if let Ok(data) = frame.into_data() {
                        whole.extend_from_slice(&data);
                    }
                }
                parts.headers.remove(http::header::TRANSFER_ENCODING);
                // A length the function set stays (a HEAD answer's is the
                // GET's); 1xx, 204 and 304 never carry one.
                let bodiless = matches!(status, 100..=199 | 204 | 304);
                if !bodiless && !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
                    parts.headers.insert(
                        http::header::CONTENT_LENGTH,
                        http::HeaderValue::from(bytes_out),
                    );
                }
                return Ok(http::Response::from_parts(
                    parts,
                    crate::invoke::full_body(whole.freeze()),
                ));
            }
        }
        // A `content-length: 0` head would complete the response before the
        // record is durable; without it the body ends with its last chunk.
        if parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0")
        {
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        let hold_last = exact.is_some_and(|n| n > 0);
        let body = MeteredBody {
            inner: body,
            prefix,
            hold_last,
            held: None,
            bytes_out: 0,
            state: State::Streaming(Some(guard.take())),
        };
        Ok(http::Response::from_parts(parts, body.boxed_unsync()))
    }
}

struct CommitOnDrop(Option<Box<Unfinished>>);

impl CommitOnDrop {
    fn take(&mut self) -> Box<Unfinished> {
        self.0.take().expect("taken once")
    }
}

impl Drop for CommitOnDrop {
    fn drop(&mut self) {
        if let Some(u) = self.0.take() {
            spawn_commit(u.commit(0));
        }
    }
}

struct Unfinished {
    call: Call,
    status: u16,
    meter: Arc<Meter>,
}

impl Unfinished {
    /// Writes the record; resolves once it is durable.
    fn commit(self, bytes_out: u64) -> BoxFuture<'static, anyhow::Result<()>> {
        let Unfinished {
            mut call,
            status,
            meter,
        } = self;
        let usage = call.usage.take();
        async move {
            let usage = match usage {
                Some(rx) => rx.await.ok(),
                None => None,
            };
            let record = call.record(&meter.node, status, bytes_out, usage);
            let tenant = record.tenant.clone();
            let amount = record.amount;
            if let Some(ledger) = &meter.ledger {
                ledger.append(record).await?;
            }
            if let Some(t) = tenant {
                meter.keys.spend(&t, amount);
            }
            Ok(())
        }
        .boxed()
    }
}

enum State {
    Streaming(Option<Box<Unfinished>>),
    Committing(BoxFuture<'static, anyhow::Result<()>>),
    Done,
}

struct MeteredBody {
    inner: wasmtime_wasi_http::WasiBody,
    /// Frames read from `inner` before streaming began, sent first.
    prefix: VecDeque<Frame<Bytes>>,
    /// With a known length the last data byte completes the response, so the
    /// last frame waits for the record; with chunked encoding the closing
    /// chunk does, and frames pass straight through.
    hold_last: bool,
    held: Option<Frame<Bytes>>,
    bytes_out: u64,
    state: State,
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = ErrorCode;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ErrorCode>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Streaming(unfinished) => {
                    let next = match this.prefix.pop_front() {
                        Some(frame) => Some(Ok(frame)),
                        None => ready!(Pin::new(&mut this.inner).poll_frame(cx)),
                    };
                    match next {
                        Some(Ok(frame)) => {
                            if let Some(d) = frame.data_ref() {
                                this.bytes_out += d.len() as u64;
                            }
                            if !this.hold_last {
                                return Poll::Ready(Some(Ok(frame)));
                            }
                            if let Some(previous) = this.held.replace(frame) {
                                return Poll::Ready(Some(Ok(previous)));
                            }
                        }
                        Some(Err(e)) => {
                            // Cut short: the client gets no complete response,
                            // but the guest ran, so the call is still recorded.
                            if let Some(u) = unfinished.take() {
                                spawn_commit(u.commit(this.bytes_out));
                            }
                            this.state = State::Done;
                            this.held = None;
                            return Poll::Ready(Some(Err(e)));
                        }
                        None => {
                            let u = unfinished.take().expect("streaming until committed");
                            this.state = State::Committing(u.commit(this.bytes_out));
                        }
                    }
                }
                State::Committing(fut) => {
                    let result = ready!(fut.as_mut().poll(cx));
                    this.state = State::Done;
                    if let Err(e) = result {
                        // Never hand out a response whose record was lost.
                        tracing::error!(
                            error = format!("{e:#}"),
                            "metering failed; failing the response"
                        );
                        this.held = None;
                        return Poll::Ready(Some(Err(ErrorCode::InternalError(Some(
                            "the call could not be metered".into(),
                        )))));
                    }
                }
                State::Done => return Poll::Ready(this.held.take().map(Ok)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done) && self.held.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(
                self.held
                    .as_ref()
                    .and_then(|f| f.data_ref())
                    .map_or(0, |d| d.len() as u64),
            ),
            _ => {
                // Frames already taken from `inner` but not yet sent count too.
                let pending: u64 = self
                    .prefix
                    .iter()
                    .chain(&self.held)
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                let inner = self.inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + pending);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + pending);
                }
                if hint.exact() == Some(0) {
                    SizeHint::default()
                } else {
                    hint
                }
            }
        }
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // The client went away mid-response: the call still happened.
        if let State::Streaming(Some(_)) = &self.state
            && let State::Streaming(unfinished) = std::mem::replace(&mut self.state, State::Done)
            && let Some(u) = unfinished
        {
            spawn_commit(u.commit(self.bytes_out));
        }
    }
}

/// Runs a commit to its end even if the caller is dropped while waiting.
async fn finish(commit: BoxFuture<'static, anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::spawn(commit)
        .await
        .map_err(|e| anyhow::anyhow!("metering task: {e}"))?
}

fn spawn_commit(fut: BoxFuture<'static, anyhow::Result<()>>) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                if let Err(e) = fut.await {
                    tracing::error!(error = format!("{e:#}"), "metering a cut-short call failed");
                }
            });
        }
        Err(_) => tracing::error!("no runtime to meter a cut-short call on"),
    }
}
