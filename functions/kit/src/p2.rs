//! The `wasi:http@0.2` (p2) entry: a request's head and whole body in, a
//! [`Reply`] out, with no async runtime. Functions that only run on hosts
//! with `wasi:nn` (never on Spin) use it. A p2 call is plain host calls,
//! where spin-sdk's p3 entry also waits on the host for the task, the body's
//! stream and the response's; on a first-generation Zen that was 53 µs of a
//! warm digits call and ~90 µs of a ppocr-cls one (tests/bench/RESULTS.md).

use spin_sdk::http::{HeaderMap, HeaderName, HeaderValue, Method};
use wasip2::http::types::{
    Fields, IncomingRequest, Method as P2Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::{OutputStream, StreamError};

use crate::KitError;
use crate::engine::{Engine, LazyEngine};
use crate::oip::Head;
use crate::respond::{self, Reply};

/// A p2 request's head, as the kit's routers take it.
pub struct RequestHead {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
}

/// Answers `request` on `out` with what `answer` makes of its head and a
/// reader of its whole body.
pub fn serve(
    request: IncomingRequest,
    out: ResponseOutparam,
    answer: impl FnOnce(&RequestHead, &mut dyn FnMut() -> Result<Vec<u8>, KitError>) -> Reply,
) {
    let head = RequestHead {
        method: method(request.method()),
        path: request
            .path_with_query()
            .map(|p| p.split('?').next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| "/".to_owned()),
        headers: headers(&request.headers()),
    };
    let declared = crate::body::declared_length(&head.headers);
    let reply = answer(&head, &mut || read_all(&request, declared));
    drop(request);
    send(out, reply);
}

/// [`crate::oip::serve`] over p2: OIP v2 for model `name`, the body read only
/// for inference.
pub fn serve_oip<E: Engine>(
    request: IncomingRequest,
    out: ResponseOutparam,
    name: &str,
    engine: &LazyEngine<E>,
) {
    serve(request, out, |req, read_body| {
        let head = match Head::parse(&req.path, req.method.clone(), &req.headers, name) {
            Ok(head) => head,
            Err(e) => return respond::error(&e),
        };
        let body = if head.reads_body() {
            match read_body() {
                Ok(b) => b,
                Err(e) => return respond::error(&e),
            }
        } else {
            Vec::new()
        };
        head.answer(engine, &body)
    });
}

fn method(m: P2Method) -> Method {
    match m {
        P2Method::Get => Method::GET,
        P2Method::Head => Method::HEAD,
        P2Method::Post => Method::POST,
        P2Method::Put => Method::PUT,
        P2Method::Delete => Method::DELETE,
        P2Method::Connect => Method::CONNECT,
        P2Method::Options => Method::OPTIONS,
        P2Method::Trace => Method::TRACE,
        P2Method::Patch => Method::PATCH,
        // Hosts pass only methods that parsed; else one that no route allows.
        P2Method::Other(m) => Method::from_bytes(m.as_bytes()).unwrap_or(Method::TRACE),
    }
}

fn headers(fields: &Fields) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in fields.entries() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The least a read asks for when the length is unknown or exceeded.
const MIN_READ: u64 = 64 << 10;
/// The most a `Content-Length` may ask for in one read.
const MAX_READ: u64 = 64 << 20;

/// Reads the body whole: its declared length, or else to the stream's end.
/// A host that streams the body fails the read if the client leaves early;
/// a body that still ends short of its `Content-Length` is refused here too,
/// so that no host's framing can pass a cut tensor to the model.
fn read_all(request: &IncomingRequest, declared: Option<usize>) -> Result<Vec<u8>, KitError> {
    let failed = |e: String| KitError::bad_request(format!("reading the body: {e}"));
    let body = request
        .consume()
        .map_err(|()| KitError::internal("the request body was already read"))?;
    let stream = body
        .stream()
        .map_err(|()| KitError::internal("the request body's stream was already taken"))?;
    let mut whole = Vec::new();
    // A body of its declared length is whole: no read to find the end.
    while declared != Some(whole.len()) {
        // One byte over what is left of the declared length, so that a body
        // longer than it declares shows (and fails the check below) rather
        // than being cut to its length.
        let left = declared.map_or(0, |n| n.saturating_sub(whole.len())) as u64;
        match stream.blocking_read((left + 1).clamp(MIN_READ, MAX_READ)) {
            // Usually the whole body in one chunk: take it without a copy.
            Ok(chunk) if whole.is_empty() => whole = chunk,
            Ok(chunk) => whole.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => return Err(failed(e.to_debug_string())),
        }
    }
    drop(stream);
    // Its trailers (none for the kit's requests) are not waited for.
    drop(body);
    match declared {
        Some(n) if n != whole.len() => Err(KitError::bad_request(format!(
            "the body has {} bytes, not the {n} its Content-Length declares",
            whole.len()
        ))),
        _ => Ok(whole),
    }
}

fn send(out: ResponseOutparam, reply: Reply) {
    let (status, headers, body) = respond::into_parts(reply);
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    // The kit's headers are all valid; a host that refuses one gets none.
    let fields = Fields::from_list(&entries).unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(status.as_u16());
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    // If the client has gone, there is no one to tell.
    if let Ok(stream) = outgoing.write() {
        let _ = write_all(&stream, &body);
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// The most `blocking-write-and-flush` takes, per wasi:io.
const ONE_CALL: usize = 4096;

/// Writes `body` in as few host calls as wasi:io allows: one for a small
/// body (every kit answer but a large tensor's), else writes of what
/// `check-write` grants and a flush.
fn write_all(stream: &OutputStream, mut body: &[u8]) -> Result<(), StreamError> {
    if body.len() <= ONE_CALL {
        return stream.blocking_write_and_flush(body);
    }
    while !body.is_empty() {
        let granted = stream.check_write()?;
        if granted == 0 {
            stream.subscribe().block();
            continue;
        }
        let n = usize::try_from(granted).map_or(body.len(), |g| g.min(body.len()));
        stream.write(&body[..n])?;
        body = &body[n..];
    }
    stream.blocking_flush()
}
