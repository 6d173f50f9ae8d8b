//! digits: the scikit-learn 8×8 digits classifier (`models/digits/model.onnx`,
//! an MLP trained by `models/digits/train.py`) as a Spin HTTP component.
//!
//! Routes (matched on the path's end, so any host prefix works):
//!
//! - `POST /models/digits` with `{"pixels": [64 numbers]}`: the 8×8 image row by
//!   row in sklearn's scale, 0 = background … 16 = ink. Answers
//!   `{"label": 0-9, "probabilities": [10 floats]}`.
//! - `POST /models/digits` with a PNG (`content-type: image/png`, or any body
//!   starting with the PNG signature): decoded to grayscale (alpha composited
//!   over white), downscaled to 8×8 by area averaging, then mapped to sklearn's
//!   scale assuming dark ink on a light background: `value = (255 - gray) / 255 * 16`,
//!   so white paper is 0 and black ink is 16. The digit should fill the frame,
//!   as in the sklearn data (no cropping or centring is done).
//! - `/v2/models/digits[/ready|/infer]`: the Open Inference Protocol v2 (kit::oip).
//!
//! Bad input (malformed JSON, wrong pixel count, values outside 0..16, an empty
//! body, a corrupt PNG) is a 400 with the reason.

use kit::engine::{Engine, LazyEngine, TractEngine};
use kit::respond::{self, Reply};
use kit::tensor::Tensor;
use kit::{KitError, decode};
use serde::{Deserialize, Serialize};
use spin_sdk::http::Request;
use spin_sdk::http_service;

const MODEL_NAME: &str = "digits";
/// sklearn's digits are 8×8.
const SIDE: usize = 8;
const PIXELS: usize = SIDE * SIDE;
/// sklearn's pixel scale: 0 (background) to 16 (ink).
const MAX_VALUE: f32 = 16.0;

static MODEL: LazyEngine<TractEngine> =
    LazyEngine::new(|| TractEngine::from_onnx(include_bytes!("../../../models/digits/model.onnx")));

kit::export_wizer_init!(|| MODEL.init());

#[http_service]
async fn digits(req: Request) -> Reply {
    kit::oip::serve_model(req, MODEL_NAME, &MODEL, |headers, body| {
        let png_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim().to_ascii_lowercase().starts_with("image/png"));
        classify(body, png_type)
    })
    .await
}

fn classify(body: &[u8], png_type: bool) -> Result<Reply, KitError> {
    let pixels = if png_type || decode::is_png(body) {
        pixels_from_png(body)?
    } else {
        pixels_from_json(body)?
    };
    let (label, probabilities) = predict(pixels)?;
    // A typed struct, not a `json!` value, so the f32s print in their shortest form.
    Ok(respond::ok(&DigitsResponse {
        label,
        probabilities,
    }))
}

#[derive(Serialize)]
struct DigitsResponse {
    label: i64,
    probabilities: Vec<f32>,
}

#[derive(Deserialize)]
struct DigitsRequest {
    pixels: Vec<f64>,
}

/// `{"pixels": [64 numbers in 0..=16]}`.
fn pixels_from_json(body: &[u8]) -> Result<Vec<f32>, KitError> {
    let req: DigitsRequest = decode::json(body)?;
    if req.pixels.len() != PIXELS {
        return Err(KitError::bad_request(format!(
            "\"pixels\" must hold {PIXELS} values (8×8, row by row), got {}",
            req.pixels.len()
        )));
    }
    req.pixels
        .iter()
        .enumerate()
        .map(|(ix, &v)| {
            if (0.0..=f64::from(MAX_VALUE)).contains(&v) {
                Ok(v as f32)
            } else {
                Err(KitError::bad_request(format!(
                    "pixels[{ix}] is {v}, outside 0..16 (0 is background, 16 is ink)"
                )))
            }
        })
        .collect()
}

/// A PNG, to sklearn's 8×8 scale: area-averaged to 8×8, then
/// `(255 - gray) / 255 * 16` (dark ink on light paper).
fn pixels_from_png(body: &[u8]) -> Result<Vec<f32>, KitError> {
    let image = decode::png_gray(body)?;
    Ok(image
        .resize_area(SIDE, SIDE)
        .into_iter()
        .map(|gray| ((255.0 - gray) / 255.0 * MAX_VALUE).clamp(0.0, MAX_VALUE))
        .collect())
}

/// Runs the model on one image: the label and the ten probabilities.
fn predict(pixels: Vec<f32>) -> Result<(i64, Vec<f32>), KitError> {
    let engine = MODEL.get()?;
    let input = engine
        .inputs()
        .first()
        .ok_or_else(|| KitError::internal("the model has no input"))?;
    let outputs = engine.run(vec![Tensor::new(
        input.name.clone(),
        vec![1, PIXELS],
        pixels,
    )?])?;
    let output = |name: &str| {
        outputs
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| KitError::internal(format!("the model has no output '{name}'")))
    };
    let probabilities = output("probabilities")?
        .data
        .as_f32()
        .filter(|p| p.len() == 10)
        .ok_or_else(|| KitError::internal("'probabilities' is not 10 FP32 values"))?
        .to_vec();
    let label = output("label")?
        .data
        .as_i64()
        .and_then(|l| l.first().copied())
        .ok_or_else(|| KitError::internal("'label' is not an INT64"))?;
    Ok((label, probabilities))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_pixels_are_checked() {
        let ok = serde_json::json!({ "pixels": vec![3.0; 64] }).to_string();
        assert_eq!(pixels_from_json(ok.as_bytes()).unwrap(), vec![3.0f32; 64]);

        let short = serde_json::json!({ "pixels": vec![3.0; 63] }).to_string();
        let e = pixels_from_json(short.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, KitError::BadRequest(m) if m.contains("64") && m.contains("63")),
            "{e:?}"
        );

        let mut px = vec![0.0; 64];
        px[5] = 17.0;
        let high = serde_json::json!({ "pixels": px }).to_string();
        let e = pixels_from_json(high.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, KitError::BadRequest(m) if m.contains("pixels[5]")),
            "{e:?}"
        );

        for bad in [
            &b""[..],
            b"{",
            b"{\"pixels\": \"x\"}",
            b"[]",
            b"{\"pixel\": []}",
        ] {
            assert!(
                matches!(pixels_from_json(bad), Err(KitError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn model_classifies_a_heldout_digit() {
        // heldout_01 in models/digits/reference.json is a clear case.
        let heldout: serde_json::Value =
            serde_json::from_str(include_str!("../../../models/digits/heldout.json")).unwrap();
        let mut correct = 0;
        for row in heldout.as_array().unwrap().iter().take(50) {
            let pixels: Vec<f32> = row["pixels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let (label, probs) = predict(pixels).unwrap();
            assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-4);
            if label == row["label"].as_i64().unwrap() {
                correct += 1;
            }
        }
        assert!(correct >= 47, "{correct}/50");
    }

    #[test]
    fn png_is_scaled_to_sklearn_range() {
        // A 16×16 white image with a black 8×8 square in the top-left quadrant.
        let mut raw = vec![255u8; 16 * 16];
        for y in 0..8 {
            for x in 0..8 {
                raw[y * 16 + x] = 0;
            }
        }
        let mut png = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut png, 16, 16);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            enc.write_header().unwrap().write_image_data(&raw).unwrap();
        }
        let px = pixels_from_png(&png).unwrap();
        assert_eq!(px.len(), 64);
        assert_eq!(px[0], 16.0); // ink
        assert_eq!(px[3], 16.0);
        assert_eq!(px[4], 0.0); // paper
        assert_eq!(px[63], 0.0);
        assert!(matches!(
            pixels_from_png(&png[..20]),
            Err(KitError::BadRequest(_))
        ));
    }
}
