//! The Open Inference Protocol v2 routes of one model:
//!
//! - `GET  /v2/models/NAME` (also `/v2/models/NAME/versions/1`): metadata
//! - `GET  /v2/models/NAME/ready`: `{"name","ready":true}`
//! - `POST /v2/models/NAME/infer`: inference
//!
//! and a 404 JSON for any other model name or sub-path under `/v2/models/`.
//! The path may carry a prefix before `/v2/models/` (whatever the host routed).

use spin_sdk::http::{HeaderMap, Method, Request};

use crate::KitError;
use crate::decode;
use crate::engine::{Engine, LazyEngine};
use crate::respond::{self, Reply};

const PREFIX: &str = "/v2/models/";

/// What an OIP path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metadata,
    Ready,
    Infer,
}

/// Whether `path` is under `/v2/models/` (so [`serve`] should answer it).
pub fn is_oip_path(path: &str) -> bool {
    path.contains(PREFIX) || path.ends_with("/v2/models")
}

/// Parses the part of `path` after `/v2/models/` for model `name`. Unknown model
/// names, versions other than `1` and unknown sub-paths are `NotFound`.
pub fn parse_path(path: &str, name: &str) -> Result<Route, KitError> {
    let rest = match path.find(PREFIX) {
        Some(at) => &path[at + PREFIX.len()..],
        None => return Err(KitError::not_found(format!("no route for {path}"))),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut parts = rest.split('/');
    let model = parts.next().unwrap_or_default();
    if model != name {
        return Err(KitError::not_found(format!(
            "unknown model '{model}' (this function serves '{name}')"
        )));
    }
    let mut parts: Vec<&str> = parts.collect();
    if let ["versions", version, ..] = parts[..] {
        if version != "1" {
            return Err(KitError::not_found(format!(
                "model '{name}' has no version '{version}' (versions: 1)"
            )));
        }
        parts.drain(..2);
    }
    match parts[..] {
        [] => Ok(Route::Metadata),
        ["ready"] => Ok(Route::Ready),
        ["infer"] => Ok(Route::Infer),
        _ => Err(KitError::not_found(format!("no route for {path}"))),
    }
}

/// An OIP request's head, checked before its body is read: the route, and
/// the binary extension's header length. Shared by the p3 entry ([`serve`])
/// and the p2 one (`p2::serve_oip`).
pub struct Head<'n> {
    route: Route,
    method: Method,
    name: &'n str,
    header_length: Option<usize>,
}

impl<'n> Head<'n> {
    /// Checks `path` and the header-length header against model `name`.
    pub fn parse(
        path: &str,
        method: Method,
        headers: &HeaderMap,
        name: &'n str,
    ) -> Result<Self, KitError> {
        let route = parse_path(path, name)?;
        let header_length = match headers.get(decode::HEADER_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| {
                        KitError::bad_request(format!(
                            "{} must be a byte count",
                            decode::HEADER_LENGTH
                        ))
                    })?,
            ),
        };
        Ok(Self {
            route,
            method,
            name,
            header_length,
        })
    }

    /// Whether [`Head::answer`] needs the body: only inference reads it.
    pub fn reads_body(&self) -> bool {
        self.route == Route::Infer && self.method == Method::POST
    }

    /// The reply, given the body (empty unless [`Head::reads_body`]).
    pub fn answer<E: Engine>(&self, engine: &LazyEngine<E>, body: &[u8]) -> Reply {
        respond::result(handle(
            self.route,
            &self.method,
            self.name,
            || engine.get().map(|e| e as &dyn Engine),
            body,
            self.header_length,
        ))
    }
}

/// Serves an OIP request for model `name` (reads the body only for `infer`).
pub async fn serve<E: Engine>(req: Request, name: &str, engine: &LazyEngine<E>) -> Reply {
    let head = match Head::parse(req.uri().path(), req.method().clone(), req.headers(), name) {
        Ok(head) => head,
        Err(e) => return respond::error(&e),
    };
    let body = if head.reads_body() {
        match crate::body::read_all(req).await {
            Ok(b) => b,
            Err(e) => return respond::error(&e),
        }
    } else {
        Default::default()
    };
    head.answer(engine, &body)
}

/// Serves a model function: OIP v2 under `/v2/models/NAME`, and its own
/// product route `POST .../models/NAME`, whose body and headers go to `handle`.
/// Every model crate answers the same way to other paths and methods.
pub async fn serve_model<E: Engine>(
    req: Request,
    name: &str,
    engine: &LazyEngine<E>,
    handle: impl FnOnce(&spin_sdk::http::HeaderMap, &[u8]) -> Result<Reply, KitError>,
) -> Reply {
    let path = req.uri().path().to_owned();
    if is_oip_path(&path) {
        return serve(req, name, engine).await;
    }
    if !path
        .trim_end_matches('/')
        .ends_with(&format!("/models/{name}"))
    {
        return respond::error(&KitError::not_found(format!("no route for {path}")));
    }
    if req.method() != Method::POST {
        return respond::error(&KitError::MethodNotAllowed(format!(
            "{} is not allowed here (allowed: POST)",
            req.method()
        )));
    }
    let headers = req.headers().clone();
    match crate::body::read_all(req).await {
        Ok(body) => respond::result(handle(&headers, &body)),
        Err(e) => respond::error(&e),
    }
}

/// The synchronous core of [`serve`], for a route already parsed and a body already read.
pub fn handle<'e>(
    route: Route,
    method: &Method,
    name: &str,
    engine: impl FnOnce() -> Result<&'e dyn Engine, KitError>,
    body: &[u8],
    header_length: Option<usize>,
) -> Result<Reply, KitError> {
    let allow = |allowed: &str| {
        KitError::MethodNotAllowed(format!("{method} is not allowed here (allowed: {allowed})"))
    };
    match route {
        Route::Metadata | Route::Ready if *method != Method::GET && *method != Method::HEAD => {
            Err(allow("GET, HEAD"))
        }
        Route::Infer if *method != Method::POST => Err(allow("POST")),
        Route::Metadata => Ok(respond::ok(&respond::metadata_body(name, engine()?))),
        Route::Ready => {
            engine()?;
            Ok(respond::ok(
                &serde_json::json!({ "name": name, "ready": true }),
            ))
        }
        Route::Infer => {
            let request = decode::infer_request_with(body, header_length)?;
            let engine = engine()?;
            let unknown = request
                .outputs
                .iter()
                .flatten()
                .find(|w| !engine.outputs().iter().any(|o| &o.name == *w));
            if let Some(unknown) = unknown {
                let names: Vec<&str> = engine.outputs().iter().map(|o| o.name.as_str()).collect();
                return Err(KitError::bad_request(format!(
                    "unknown output '{unknown}' (the model has {})",
                    names.join(", ")
                )));
            }
            let mut outputs = engine.run(request.inputs)?;
            if let Some(wanted) = &request.outputs {
                outputs.retain(|o| wanted.contains(&o.name));
            }
            if request.binary_outputs == decode::BinaryOutputs::None {
                return Ok(respond::ok(&respond::infer_body(
                    name,
                    request.id.as_deref(),
                    &outputs,
                )));
            }
            let (body, header_length) =
                respond::infer_binary_body(name, request.id.as_deref(), &outputs, |n| {
                    request.binary_outputs.contains(n)
                });
            let mut reply = respond::bytes(200, "application/octet-stream", body);
            reply
                .headers_mut()
                .insert(decode::HEADER_LENGTH, header_length.into());
            Ok(reply)
        }
    }
}
