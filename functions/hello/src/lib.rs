//! Minimal spin-sdk 7 component: exports `wasi:http/handler@0.3.0`.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_service;

#[http_service]
async fn hello(_req: Request) -> impl IntoResponse {
    Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body("Hello from edgeinfer\n".to_string())
}
