//! oip-nn: the generic Open Inference Protocol function with the model run
//! by the host through `wasi:nn`. `EDGEINFER_MODEL_NAME` is both the OIP
//! model name and the graph's name in edgeinfer.toml's `[nn.models]`; with
//! `EDGEINFER_MODEL_FILE`, an ONNX file among the component's files, the
//! model is loaded from that file's bytes instead, as components written for
//! wasmtime's wasi-nn load theirs. The component carries no weights, so
//! there is nothing to bake. It needs `wasi:nn`, which Spin lacks, so it
//! takes the lighter `wasi:http@0.2` entry (`kit::p2`) instead of
//! spin-sdk's p3 one.

use kit::engine::{LazyEngine, NnEngine};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

fn model_name() -> String {
    std::env::var("EDGEINFER_MODEL_NAME").unwrap_or_else(|_| "model".to_string())
}

static MODEL: LazyEngine<NnEngine> = LazyEngine::new(|| {
    Ok(match std::env::var("EDGEINFER_MODEL_FILE") {
        Ok(path) => NnEngine::from_file(path),
        Err(_) => NnEngine::by_name(model_name()),
    })
});

struct Oip;

impl wasip2::exports::http::incoming_handler::Guest for Oip {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        kit::p2::serve_oip(request, out, &model_name(), &MODEL);
    }
}

wasip2::http::proxy::export!(Oip);
