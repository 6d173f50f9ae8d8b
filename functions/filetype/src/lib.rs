//! filetype: Google Magika's file-type detector (model `standard_v3_3` of
//! magika 1.0.3, `models/filetype/model.onnx`) as a Spin HTTP component. It
//! answers what the magika library answers (`Magika().identify_bytes`, default
//! prediction mode), see `models/filetype/SOURCE.md` and [`magika`].
//!
//! Routes (matched on the path's end, so any host prefix works):
//!
//! - `POST /models/filetype` with the file's raw bytes as the body (any content
//!   type; an empty body is a valid, empty file). Answers
//!   `{"label": "python", "group": "code", "score": 0.99, "mime": "text/x-python"}`:
//!   magika's output label, its group and MIME type, and the model's score
//!   (1.0 when the answer needs no model: `empty`, or `txt`/`unknown` for a few bytes).
//! - `/v2/models/filetype[/ready|/infer]`: the Open Inference Protocol v2
//!   (kit::oip) on the raw model: input `bytes` INT32 [1, 2048] (one file's
//!   features), output `target_label` FP32 [1, 214].
//!
//! The body size limit is the host's (413).

pub mod magika;

use std::sync::LazyLock;

use kit::KitError;
use kit::engine::{Engine, LazyEngine, TractEngine, TractOptions};
use kit::respond::{self, Reply};
use kit::tensor::Tensor;
use serde::Serialize;
use spin_sdk::http::Request;
use spin_sdk::http_service;

use crate::magika::{Identification, Magika, Route};

const MODEL_NAME: &str = "filetype";
/// The names magika 1.0.3 runs the session with.
const INPUT: &str = "bytes";
const OUTPUT: &str = "target_label";

/// One file per run. tract 0.23 cannot type this graph with a symbolic batch
/// size (jax2tf routes `Shape(bytes)` through Cast/Slice/Concat into the one-hot
/// `Expand`), so the batch is fixed at 1: the OIP endpoint takes `bytes` [1, 2048].
const INPUT_SHAPE: &[usize] = &[1, 2048];

static MODEL: LazyEngine<TractEngine> = LazyEngine::new(|| {
    TractEngine::from_onnx_with(
        include_bytes!("../../../models/filetype/model.onnx"),
        TractOptions {
            input_shapes: &[INPUT_SHAPE],
            ..TractOptions::default()
        },
    )
});

/// The model's configuration and the content types, parsed once (at
/// pre-initialization when the component is baked).
static MAGIKA: LazyLock<Result<Magika, KitError>> = LazyLock::new(|| {
    Magika::from_json(
        include_str!("../../../models/filetype/config.min.json"),
        include_str!("../../../models/filetype/content_types.json"),
    )
});

fn magika() -> Result<&'static Magika, KitError> {
    MAGIKA.as_ref().map_err(|e| e.clone())
}

kit::export_wizer_init!(|| {
    MODEL.init();
    if let Err(e) = magika() {
        panic!("{e}");
    }
});

#[http_service]
async fn filetype(req: Request) -> Reply {
    kit::oip::serve_model(req, MODEL_NAME, &MODEL, |_, body| {
        identify(body).map(|id| respond::ok(&FiletypeResponse::from(&id)))
    })
    .await
}

/// The answer's JSON. A typed struct, so the f32 score prints in its shortest form.
#[derive(Debug, Serialize)]
struct FiletypeResponse<'a> {
    label: &'a str,
    group: &'a str,
    score: f32,
    mime: &'a str,
}

impl<'a> From<&'a Identification> for FiletypeResponse<'a> {
    fn from(id: &'a Identification) -> Self {
        FiletypeResponse {
            label: &id.label,
            group: &id.content_type.group,
            score: id.score,
            mime: &id.content_type.mime_type,
        }
    }
}

/// magika's answer for `data`: the few-bytes rules, or the model and its
/// post-processing.
pub fn identify(data: &[u8]) -> Result<Identification, KitError> {
    let magika = magika()?;
    match magika.route(data)? {
        Route::Decided(id) => Ok(id),
        Route::Model(row) => magika.from_probabilities(&probabilities(row)?),
    }
}

/// Runs the model on one feature row: the probabilities over `target_labels_space`.
fn probabilities(row: Vec<i32>) -> Result<Vec<f32>, KitError> {
    let width = row.len();
    let outputs = MODEL
        .get()?
        .run(vec![Tensor::new(INPUT, vec![1, width], row)?])?;
    outputs
        .into_iter()
        .find(|t| t.name == OUTPUT)
        .ok_or_else(|| KitError::internal(format!("the model has no output '{OUTPUT}'")))?
        .data
        .as_f32()
        .map(<[f32]>::to_vec)
        .ok_or_else(|| KitError::internal(format!("'{OUTPUT}' is not FP32")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::BTreeSet;
    use std::path::Path;

    const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/filetype");

    fn json(name: &str) -> Value {
        let text = std::fs::read_to_string(Path::new(MODELS).join(name)).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn sample(file: &str) -> Vec<u8> {
        std::fs::read(Path::new(MODELS).join(file)).unwrap()
    }

    /// Every file in samples/ has a magika answer, and the pipeline gives it.
    #[test]
    fn every_sample_gets_magikas_answer() {
        let expected = json("magika_labels.json");
        let expected = expected.as_array().unwrap();
        let listed: BTreeSet<String> = expected
            .iter()
            .map(|e| e["file"].as_str().unwrap().to_owned())
            .collect();
        let on_disk: BTreeSet<String> = std::fs::read_dir(Path::new(MODELS).join("samples"))
            .unwrap()
            .map(|e| format!("samples/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        assert_eq!(listed, on_disk, "samples/ and magika_labels.json disagree");

        let mut agree = 0;
        let mut failures = Vec::new();
        for e in expected {
            let file = e["file"].as_str().unwrap();
            let id = identify(&sample(file)).unwrap();
            let want_score = e["score"].as_f64().unwrap();
            let got = (
                id.label.as_str(),
                id.content_type.group.as_str(),
                id.content_type.mime_type.as_str(),
                id.dl_label.as_str(),
            );
            let want = (
                e["label"].as_str().unwrap(),
                e["group"].as_str().unwrap(),
                e["mime_type"].as_str().unwrap(),
                e["dl_label"].as_str().unwrap(),
            );
            let route = match id.via {
                magika::Via::Empty => "empty",
                magika::Via::FewBytes => "few_bytes",
                magika::Via::Model => "model",
            };
            let reason = serde_json::to_value(id.overwrite_reason).unwrap();
            if got == want
                && (f64::from(id.score) - want_score).abs() <= 1e-3
                && route == e["route"]
                && reason == e["overwrite_reason"]
            {
                agree += 1;
            } else {
                failures.push(format!(
                    "{file}: got {got:?} {} via {route} ({reason}), magika {want:?} {want_score} via {} ({})",
                    id.score, e["route"], e["overwrite_reason"]
                ));
            }
        }
        eprintln!("{agree}/{} samples agree with magika 1.0.3", expected.len());
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// The feature rows equal magika's, and tract's probabilities ONNX Runtime's.
    #[test]
    fn features_and_probabilities_match_the_reference() {
        let magika = magika().unwrap();
        let cases = json("reference.json");
        let cases = cases.as_array().unwrap();
        assert_eq!(cases.len(), 22);
        let mut worst = 0f64;
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let data = sample(&format!("samples/{name}"));
            let input = &case["inputs"]["bytes"];
            assert_eq!(input["shape"], serde_json::json!([1, 2048]), "{name}");
            let want: Vec<i32> = input["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as i32)
                .collect();
            let row = match magika.route(&data).unwrap() {
                Route::Model(row) => row,
                Route::Decided(id) => panic!("{name}: decided without the model: {id:?}"),
            };
            assert_eq!(row, want, "{name}: features differ");
            assert_eq!(magika.features(&data), want, "{name}");

            let got = probabilities(row).unwrap();
            let want = case["outputs"]["target_label"]["data"].as_array().unwrap();
            assert_eq!(got.len(), want.len(), "{name}");
            for (g, w) in got.iter().zip(want) {
                let diff = (f64::from(*g) - w.as_f64().unwrap()).abs();
                worst = worst.max(diff);
                assert!(diff <= 1e-3, "{name}: {g} vs {w}");
            }
        }
        eprintln!("largest |tract - onnxruntime| probability difference: {worst:e}");
    }

    #[test]
    fn response_shape() {
        let id = identify(b"").unwrap();
        let body = serde_json::to_value(FiletypeResponse::from(&id)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"label": "empty", "group": "inode", "score": 1.0, "mime": "inode/x-empty"})
        );
        let id = identify(b"#!/usr/bin/env python3\nimport sys\n\ndef main():\n    print(sys.argv)\n\nif __name__ == '__main__':\n    main()\n").unwrap();
        assert_eq!(id.label, "python");
        let body = serde_json::to_string(&FiletypeResponse::from(&id)).unwrap();
        assert!(
            body.starts_with(r#"{"label":"python","group":"code","score":0."#),
            "{body}"
        );
        assert!(body.ends_with(r#","mime":"text/x-python"}"#), "{body}");
    }

    #[test]
    fn model_metadata() {
        let engine = MODEL.get().unwrap();
        let inputs = engine.inputs();
        assert_eq!(inputs.len(), 1);
        assert_eq!(inputs[0].name, INPUT);
        assert_eq!(inputs[0].oip_shape(), vec![1, 2048]);
        assert!(engine.outputs().iter().any(|o| o.name == OUTPUT));
    }
}
