//! Per-call metering: who called which component, for how long, with how
//! much fuel and memory, and how it ended. The record is written to the
//! ledger when the response body ends, and the response's last byte is held
//! back until the record is durable: a client that received a whole
//! response can count on its record existing, whatever happens to the host
//! afterwards.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

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
            nn_backend: (usage.nn_compute_us > 0).then(|| "tract".to_string()),
            max_memory_bytes: usage.max_memory_bytes,
            bytes_in: self.bytes_in,
            bytes_out,
            cold_start: self.cold_start,
            status,
            outcome,
            amount: Decimal::ZERO,
            currency: self.rates.currency.clone(),
        };
        r.amount = billing::amount(&self.rates, &r, false);
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

impl Meter {
    /// `resp` with its body metered: the record is written when the body
    /// ends (or is dropped), before the last byte is released.
    pub fn wrap(self: &Arc<Self>, call: Call, resp: Response) -> Response {
        let (mut parts, body) = resp.into_parts();
        let status = parts.status.as_u16();
        // A `content-length: 0` head would complete the response before the
        // record is durable; without it the body ends with its last chunk.
        if parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0")
        {
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        let hold_last = body.size_hint().exact().is_some_and(|n| n > 0);
        let body = MeteredBody {
            inner: body,
            hold_last,
            held: None,
            bytes_out: 0,
            state: State::Streaming(Some(Box::new(Unfinished {
                call,
                status,
                meter: self.clone(),
            }))),
        };
        http::Response::from_parts(parts, body.boxed_unsync())
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
                    match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
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
                let hint = self.inner.size_hint();
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
