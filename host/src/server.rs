//! The HTTP front: health, routing, request ids, body limits, Spin's request
//! headers, and mapping guest failures to JSON errors. Instances and
//! capabilities live elsewhere (`invoke`, `sandbox`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::admission::Rejected;
use crate::app::{App, Target};
use crate::invoke::{GuestFailure, Response, full_body};
use crate::ledger::Outcome;
use crate::metering::{Call, Meter};
use crate::metrics::{self, RejectReason};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What `Retry-After` says on 429 and 503 for capacity, in seconds.
const RETRY_AFTER_SECS: u64 = 1;

/// Serving state; the app appears once its components are compiled.
pub struct Server {
    app: RwLock<Option<Arc<App>>>,
    local_addr: SocketAddr,
    meter: Arc<Meter>,
}

impl Server {
    pub fn new(local_addr: SocketAddr, meter: Arc<Meter>) -> Arc<Self> {
        Arc::new(Self {
            app: RwLock::new(None),
            local_addr,
            meter,
        })
    }

    /// Marks the app ready; requests before this get 503. A later call swaps
    /// in a new app atomically (hot reload): requests already dispatched
    /// finish on the app they started with, which is dropped after the last
    /// of them. Returns the app replaced.
    pub fn set_app(&self, app: App) -> Option<Arc<App>> {
        let app = Arc::new(app);
        let previous = self.app.write().expect("app lock").replace(app.clone());
        app.publish(previous.as_deref());
        previous
    }

    /// The app serving now.
    pub fn app(&self) -> Option<Arc<App>> {
        self.app.read().expect("app lock").clone()
    }

    /// Accepts connections until `shutdown` resolves, then stops accepting and
    /// waits (up to `drain`) for requests in flight to finish.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) {
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // E.g. out of file descriptors: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req, peer).await) }
            });
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        tracing::info!("shutting down: draining requests in flight");
        tokio::select! {
            _ = graceful.shutdown() => tracing::info!("drained"),
            _ = tokio::time::sleep(drain) => tracing::warn!("drain timed out; exiting with requests in flight"),
        }
    }

    async fn handle(&self, req: http::Request<Incoming>, peer: SocketAddr) -> Response {
        let id = Uuid::now_v7();
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let mut call = None;
        let mut resp = self.dispatch(req, peer, &id, started, &mut call).await;
        let took = started.elapsed();
        let component = call.as_ref().map(|c: &Call| c.component.clone());
        let status = resp.status().as_u16();
        if let Some(c) = &component {
            let m = metrics::global();
            m.requests
                .get_or_create(&metrics::StatusLabels {
                    component: c.clone(),
                    status,
                })
                .inc();
            m.request_duration
                .get_or_create(&metrics::component(c))
                .observe(took.as_secs_f64());
        }
        // One line per request (the duration is to the response head).
        tracing::info!(
            request_id = %id,
            %method,
            path,
            component = %component.as_deref().unwrap_or("-"),
            status,
            us = took.as_micros() as u64,
            "request"
        );
        let request_id = HeaderValue::from_str(&id.to_string()).expect("uuid is a valid header");
        resp.headers_mut().insert(REQUEST_ID, request_id.clone());
        let Some(call) = call else { return resp };
        match self.meter.wrap(call, resp).await {
            Ok(resp) => resp,
            Err(reason) => {
                tracing::error!(request_id = %id, reason, "answering 500 instead");
                let mut resp = error(StatusCode::INTERNAL_SERVER_ERROR, &reason, &id);
                resp.headers_mut().insert(REQUEST_ID, request_id);
                resp
            }
        }
    }

    async fn dispatch(
        &self,
        req: http::Request<Incoming>,
        peer: SocketAddr,
        id: &Uuid,
        started: Instant,
        call_out: &mut Option<Call>,
    ) -> Response {
        let path = req.uri().path();
        if path == "/v1/usage" {
            return self.usage(&req, id).await;
        }
        if req.method() == Method::GET {
            match path {
                "/v2/health/live" => return json(StatusCode::OK, r#"{"live":true}"#),
                "/v2/health/ready" => {
                    return match self.app() {
                        Some(_) => json(StatusCode::OK, r#"{"ready":true}"#),
                        None => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"ready":false}"#),
                    };
                }
                "/metrics" => {
                    let mut r = http::Response::new(full_body(metrics::global().encode()));
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static(metrics::CONTENT_TYPE),
                    );
                    return r;
                }
                _ => {}
            }
        }
        let Some(app) = self.app() else {
            return retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "the app is still loading",
                id,
            );
        };
        let Some(matched) = app.router.route(path) else {
            return error(StatusCode::NOT_FOUND, &format!("no route for {path}"), id);
        };
        let component = match matched.target {
            Target::Static(s) => return static_response(s),
            Target::Component(c) => app.components[c].clone(),
        };
        let call = call_out.insert(Call::new(
            *id,
            started,
            component.id.clone(),
            matched.matched_route.to_string(),
        ));
        call.component_digest = component.digest.clone();
        call.model = Some(component.model.clone());
        call.model_digest = component.model_digest.clone();
        call.rates = component.rates.clone();
        // Host-side refusals cost the caller nothing; the guest never ran.
        call.outcome = Some(Outcome::Rejected);

        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self
            .meter
            .keys
            .authorize(authorization, &component.id)
            .and_then(|caller| {
                if let Some(c) = &caller {
                    self.meter.keys.admit(&c.tenant)?;
                }
                Ok(caller)
            }) {
            Ok(caller) => call.caller = caller,
            Err(denied) => {
                let reason = match denied.status() {
                    401 => RejectReason::Unauthorized,
                    403 => RejectReason::Forbidden,
                    _ => RejectReason::Quota,
                };
                metrics::global().reject(&component.id, reason);
                let status = StatusCode::from_u16(denied.status()).expect("valid status");
                let mut r = error(status, &denied.to_string(), id);
                if let Some(secs) = denied.retry_after_secs() {
                    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
                }
                if status == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer"),
                    );
                }
                return r;
            }
        }

        let (mut parts, body) = req.into_parts();
        let limit = component.limits.max_body_bytes;
        let too_large = || {
            let mut r = error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body is over the {limit}-byte limit"),
                id,
            );
            // The rest of the body is unread, so this connection cannot be reused.
            r.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            r
        };
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return too_large();
        }
        // Inference bodies are small; reading them whole lets an oversized
        // chunked body get a clean 413 before any guest code runs.
        let body = match read_body(body, limit).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => return too_large(),
            Err(BodyError::Read(e)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the request body: {e}"),
                    id,
                );
            }
        };

        // Clients must not be able to forge the headers the host vouches for.
        let forged: Vec<HeaderName> = parts
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("spin-"))
            .cloned()
            .collect();
        for k in forged {
            parts.headers.remove(k);
        }
        let host = parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| self.local_addr.to_string());
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let full_url = format!("http://{host}{path_and_query}");
        let mut set = |name: &str, value: &str| {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) {
                parts.headers.insert(n, v);
            }
        };
        set("spin-full-url", &full_url);
        set("spin-path-info", &matched.path_info);
        set("spin-matched-route", matched.matched_route);
        set("spin-component-route", matched.component_route);
        set("spin-raw-component-route", matched.raw_component_route);
        set("spin-base-path", app.router.base());
        set("spin-client-addr", &peer.to_string());
        for (name, value) in &matched.params {
            set(
                &format!("spin-path-match-{}", name.to_ascii_lowercase()),
                value,
            );
        }
        set("x-request-id", &id.to_string());
        match full_url.parse() {
            Ok(uri) => parts.uri = uri,
            Err(_) => return error(StatusCode::BAD_REQUEST, "bad Host header", id),
        }

        call.bytes_in = body.len() as u64;
        let req = http::Request::from_parts(parts, full_body(body));

        // Admission: a slot among `max_concurrency`, after a bounded FIFO wait.
        let m = metrics::global();
        let queued = Instant::now();
        let permit = match component
            .admission
            .admit(component.scaling.queue_timeout)
            .await
        {
            Ok(p) => p,
            Err(Rejected::QueueFull) => {
                m.reject(&component.id, RejectReason::QueueFull);
                return retry_later(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!(
                        "component `{}` is at capacity: {} running and {} waiting",
                        component.id,
                        component.scaling.max_concurrency,
                        component.scaling.max_queue
                    ),
                    id,
                );
            }
            Err(Rejected::QueueTimeout(waited)) => {
                m.reject(&component.id, RejectReason::QueueTimeout);
                return retry_later(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "component `{}` is overloaded: no instance came free within {} ms",
                        component.id,
                        waited.as_millis()
                    ),
                    id,
                );
            }
        };
        let waited = queued.elapsed();
        m.queue_duration
            .get_or_create(&metrics::component(&component.id))
            .observe(waited.as_secs_f64());
        call.queue_us = waited.as_micros() as u64;
        // From here on the call runs, and is billed.
        call.outcome = None;

        let runnable = match component.runnable().await {
            Ok((r, cold)) => {
                call.cold_start = cold;
                r
            }
            Err(e) => {
                call.outcome = Some(Outcome::Trap);
                tracing::error!(request_id = %id, component = %component.id, error = format!("{e:#}"), "loading the component failed");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("loading component `{}` failed: {e:#}", component.id),
                    id,
                );
            }
        };
        // The instance holds the permit, and the app it came from, until it is gone.
        let (usage_tx, usage_rx) = futures::channel::oneshot::channel();
        call.usage = Some(usage_rx);
        let result = runnable
            .handle_with(req, (permit, app.clone()), usage_tx)
            .await;
        if let Err(failure) = &result {
            call.failed(failure);
        }
        match result {
            Ok(resp) => resp,
            Err(GuestFailure::PoolExhausted(why)) => {
                m.reject(&component.id, RejectReason::PoolExhausted);
                tracing::warn!(request_id = %id, component = %component.id, error = %why, "instance pool exhausted");
                retry_later(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the host is out of instance slots ({why})"),
                    id,
                )
            }
            Err(failure) => {
                tracing::warn!(request_id = %id, component = %component.id, error = %failure, "guest failed");
                let status = match failure {
                    GuestFailure::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                error(status, &failure.to_string(), id)
            }
        }
    }
}

impl Server {
    /// `GET /v1/usage?from=&to=`: the caller's own meter records and their
    /// total, for the tenant that owns the key. Dates as in `billing report`.
    async fn usage(&self, req: &http::Request<Incoming>, id: &Uuid) -> Response {
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let caller = match self.meter.keys.identify(authorization) {
            Ok(Some(c)) => c,
            Ok(None) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "usage is per tenant: create an API key first",
                    id,
                );
            }
            Err(denied) => return error(StatusCode::UNAUTHORIZED, &denied.to_string(), id),
        };
        let Some(ledger) = self.meter.ledger.clone() else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "metering is off on this host ([metering] enabled = false)",
                id,
            );
        };
        let mut query = crate::ledger::Query {
            tenant: Some(caller.tenant.clone()),
            ..Default::default()
        };
        let mut bounds = (String::new(), String::new());
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            let slot = match k.as_ref() {
                "from" => (&mut query.from_us, &mut bounds.0),
                "to" => (&mut query.to_us, &mut bounds.1),
                _ => continue,
            };
            match crate::billing::parse_when(&v) {
                Ok(us) => {
                    *slot.0 = Some(us);
                    *slot.1 = v.into_owned();
                }
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("{k}: {e}"), id),
            }
        }
        let records = match tokio::task::spawn_blocking(move || ledger.records(&query)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("reading the ledger: {e:#}"),
                    id,
                );
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), id),
        };
        let report = crate::billing::report(&records, bounds.0, bounds.1);
        let body = serde_json::json!({
            "tenant": caller.tenant,
            "from": report.from,
            "to": report.to,
            "currency": report.currency,
            "total": report.total,
            "line_items": report.line_items,
            "records": records,
        });
        json(StatusCode::OK, body.to_string())
    }
}

/// An error the client may retry: 429 or 503 with `Retry-After`.
fn retry_later(status: StatusCode, message: &str, id: &Uuid) -> Response {
    let mut r = error(status, message, id);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    r
}

enum BodyError {
    TooLarge,
    Read(hyper::Error),
}

/// Reads at most `limit` bytes. Past the limit it keeps reading (and
/// discarding) a little longer, so the client is not reset mid-upload and
/// gets to read the 413.
async fn read_body(mut body: Incoming, limit: u64) -> Result<Bytes, BodyError> {
    const DRAIN_BYTES: u64 = 1 << 20;
    const DRAIN_TIME: Duration = Duration::from_secs(1);
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() as u64 + data.len() as u64 > limit {
            let mut drained = 0u64;
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                while drained < DRAIN_BYTES {
                    match body.frame().await {
                        Some(Ok(f)) => drained += f.data_ref().map_or(0, |d| d.len() as u64),
                        _ => break,
                    }
                }
            })
            .await;
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut r = http::Response::new(full_body(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `{"error": ..., "request_id": ...}` with the given status.
pub fn error(status: StatusCode, message: &str, id: &Uuid) -> Response {
    let body = serde_json::json!({ "error": message, "request_id": id.to_string() });
    json(status, body.to_string())
}

fn static_response(s: &crate::manifest::StaticResponse) -> Response {
    let mut r = http::Response::new(full_body(s.body.clone().unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(s.status_code.unwrap_or(200)).unwrap_or(StatusCode::OK);
    for (k, v) in &s.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}
