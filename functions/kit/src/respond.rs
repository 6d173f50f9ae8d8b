//! Response encoding: JSON bodies, OIP v2 inference responses and model metadata,
//! and errors as `{"error": "..."}` with the status of their [`KitError`] variant.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use spin_sdk::http::{FullBody, Response, StatusCode};

use crate::KitError;
use crate::engine::{Engine, TensorSpec};
use crate::tensor::Tensor;

/// The response type every kit helper returns.
pub type Reply = Response<FullBody<Bytes>>;

/// `value` as a JSON body with `status`.
pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => bytes(status, "application/json", body),
        Err(e) => error(&KitError::internal(format!("encoding the response: {e}"))),
    }
}

/// 200 with `value` as JSON.
pub fn ok<T: Serialize + ?Sized>(value: &T) -> Reply {
    json(200, value)
}

/// A body with an explicit content type.
pub fn bytes(status: u16, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(FullBody::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(ct) = content_type.parse() {
        resp.headers_mut().insert("content-type", ct);
    }
    resp
}

/// `{"error": "..."}` with the error's status (400, 404, 405, 500).
pub fn error(err: &KitError) -> Reply {
    json(err.status(), &json!({ "error": err.message() }))
}

/// `Ok` as it is, `Err` as [`error`].
pub fn result(r: Result<Reply, KitError>) -> Reply {
    r.unwrap_or_else(|e| error(&e))
}

/// A reply taken apart: its status, headers and whole body. A [`Reply`]'s
/// body is one ready frame, so this needs no executor.
pub fn into_parts(reply: Reply) -> (StatusCode, spin_sdk::http::HeaderMap, Bytes) {
    use http_body::Body as _;
    let (parts, mut body) = reply.into_parts();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let data = match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
        std::task::Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    };
    (parts.status, parts.headers, data)
}

impl From<KitError> for Reply {
    fn from(e: KitError) -> Self {
        error(&e)
    }
}

/// The OIP v2 inference response body:
/// `{"model_name","model_version","id"?,"outputs":[{"name","shape","datatype","data"}]}`.
#[derive(Debug, Serialize)]
pub struct InferResponse<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    pub outputs: &'a [Tensor],
}

pub fn infer_body<'a>(
    model_name: &'a str,
    id: Option<&'a str>,
    outputs: &'a [Tensor],
) -> InferResponse<'a> {
    InferResponse {
        model_name,
        model_version: "1",
        id,
        outputs,
    }
}

/// An OIP v2 inference response whose `binary` outputs (the binary tensor
/// extension) carry `parameters.binary_data_size` instead of `"data"`, their
/// little-endian bytes following the JSON in output order. Returns the body
/// and the JSON part's length, for `Inference-Header-Content-Length`.
pub fn infer_binary_body(
    model_name: &str,
    id: Option<&str>,
    outputs: &[Tensor],
    binary: impl Fn(&str) -> bool,
) -> (Vec<u8>, usize) {
    let mut tail = Vec::new();
    let described: Vec<Value> = outputs
        .iter()
        .map(|t| {
            if binary(&t.name) {
                binary_tensor(t, &mut tail)
            } else {
                json!(t)
            }
        })
        .collect();
    let mut head = json!({ "model_name": model_name, "model_version": "1", "outputs": described });
    if let Some(id) = id {
        head["id"] = json!(id);
    }
    binary_body(&head, &tail)
}

/// A tensor's binary-extension description, `{"name","shape","datatype",
/// "parameters":{"binary_data_size"}}`, its bytes appended to `tail`.
pub fn binary_tensor(t: &Tensor, tail: &mut Vec<u8>) -> Value {
    let bytes = t.data.le_bytes();
    let described = json!({
        "name": t.name,
        "shape": t.shape,
        "datatype": t.datatype().as_str(),
        "parameters": { "binary_data_size": bytes.len() },
    });
    tail.extend_from_slice(&bytes);
    described
}

/// `head` as JSON followed by `tail`; returns the body and the JSON's length
/// (the `Inference-Header-Content-Length`).
pub fn binary_body(head: &Value, tail: &[u8]) -> (Vec<u8>, usize) {
    let mut body = serde_json::to_vec(head).expect("JSON values serialize");
    let header_length = body.len();
    body.extend_from_slice(tail);
    (body, header_length)
}

/// The OIP v2 model metadata body for `GET /v2/models/NAME`: dynamic dims as -1.
pub fn metadata_body(model_name: &str, engine: &dyn Engine) -> Value {
    fn specs(specs: &[TensorSpec]) -> Vec<Value> {
        specs
            .iter()
            .map(|s| json!({ "name": s.name, "datatype": s.datatype.as_str(), "shape": s.oip_shape() }))
            .collect()
    }
    json!({
        "name": model_name,
        "versions": ["1"],
        "platform": "onnx",
        "backend": engine.backend(),
        "inputs": specs(engine.inputs()),
        "outputs": specs(engine.outputs()),
    })
}
