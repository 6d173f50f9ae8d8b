//! oip-nn: the generic Open Inference Protocol function with the model run
//! by the host through `wasi:nn`. `EDGEINFER_MODEL_NAME` is both the OIP
//! model name and the graph's name in edgeinfer.toml's `[nn.models]`. The
//! component carries no weights, so there is nothing to bake.

use kit::engine::{LazyEngine, NnEngine};
use kit::respond::Reply;
use spin_sdk::http::Request;
use spin_sdk::http_service;

fn model_name() -> String {
    std::env::var("EDGEINFER_MODEL_NAME").unwrap_or_else(|_| "model".to_string())
}

static MODEL: LazyEngine<NnEngine> = LazyEngine::new(|| Ok(NnEngine::by_name(model_name())));

#[http_service]
async fn oip(req: Request) -> Reply {
    kit::oip::serve(req, &model_name(), &MODEL).await
}
