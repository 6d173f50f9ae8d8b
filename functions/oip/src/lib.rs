//! oip: any ONNX model over the Open Inference Protocol v2, with no
//! model-specific code. The model is read from `/model/model.onnx` (mounted
//! with `files`) and named by `EDGEINFER_MODEL_NAME`; `edgeinfer models add`
//! writes both into spin.toml. Baked by `edgeinfer build`, the snapshot holds
//! the planned model, so the file is read only when running unbaked.
//!
//! `EDGEINFER_INPUT_SHAPES` (`x=1,3,48,192;y=...`, from `models add --shape`)
//! names input shapes to plan at initialization, for models tract plans per
//! shape: a baked instance then serves those shapes with no planning.

use kit::KitError;
use kit::engine::{LazyEngine, TractEngine};
use kit::respond::Reply;
use spin_sdk::http::Request;
use spin_sdk::http_service;

const MODEL_PATH: &str = "/model/model.onnx";

static MODEL: LazyEngine<TractEngine> = LazyEngine::new(|| {
    let bytes = std::fs::read(MODEL_PATH)
        .map_err(|e| KitError::internal(format!("reading {MODEL_PATH}: {e}")))?;
    let engine = TractEngine::from_onnx(&bytes)?;
    if let Ok(spec) = std::env::var("EDGEINFER_INPUT_SHAPES") {
        use kit::engine::Engine as _;
        engine.prepare(kit::engine::parse_input_shapes(engine.inputs(), &spec)?)?;
    }
    Ok(engine)
});

kit::export_wizer_init!(|| MODEL.init());

#[http_service]
async fn oip(req: Request) -> Reply {
    let name = std::env::var("EDGEINFER_MODEL_NAME").unwrap_or_else(|_| "model".to_string());
    kit::oip::serve(req, &name, &MODEL).await
}
