//! embed: sentence embeddings from all-MiniLM-L6-v2 (int8,
//! `models/embed/model.onnx`, with its WordPiece `tokenizer.json`) as a Spin
//! HTTP component, answering the OpenAI embeddings API.
//!
//! Routes (matched on the path's end, so any host prefix works):
//!
//! - `POST /v1/embeddings` with `{"model": "all-minilm-l6-v2", "input": "text" | ["text", ...]}`
//!   answers `{"object": "list", "data": [{"object": "embedding", "index": i,
//!   "embedding": [384 floats]}], "model": "all-minilm-l6-v2", "usage":
//!   {"prompt_tokens": n, "total_tokens": n}}`. Each embedding is what
//!   sentence-transformers gives: the model's `last_hidden_state` mean-pooled
//!   over the real tokens, then L2-normalised. `prompt_tokens` counts the real
//!   tokens of every input, `[CLS]` and `[SEP]` included (no padding).
//!   Optional OpenAI fields: `encoding_format` (only `"float"`), `dimensions`
//!   (only 384), `user` (ignored).
//! - `/v2/models/all-minilm-l6-v2[/ready|/infer]`: the Open Inference Protocol
//!   v2 (kit::oip) on the raw model: `input_ids`, `attention_mask`,
//!   `token_type_ids` INT64 [b, s] → `last_hidden_state` FP32 [b, s, 384].
//!
//! Texts are cut to [`MAX_TOKENS`] tokens, sentence-transformers'
//! `max_seq_length` for this model (the shipped tokenizer.json cuts at 128,
//! the model's position table allows 512). Several inputs run as batches of up
//! to [`BATCH`], each padded to its longest input with `attention_mask` 0.
//!
//! Bad requests (malformed JSON, a missing or empty `input`, values of the
//! wrong type, another `model`) are a 400 with the reason.

use std::sync::LazyLock;

use kit::KitError;
use kit::decode::kind;
use kit::engine::{Engine, LazyEngine, TractEngine, TractOptions};
use kit::respond::{self, Reply};
use kit::tensor::Tensor;
use serde::Serialize;
use serde_json::Value;
use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use tokenizers::Tokenizer;

/// The model's name in requests, responses and OIP paths.
pub const MODEL_NAME: &str = "all-minilm-l6-v2";
/// The embedding width.
pub const DIM: usize = 384;
/// Longest input in tokens, `[CLS]` and `[SEP]` included: sentence-transformers'
/// `max_seq_length` for all-MiniLM-L6-v2 (it was trained on 128, is used up to
/// 256; longer texts are cut, as sentence-transformers cuts them).
pub const MAX_TOKENS: usize = 256;
/// Inputs run through the model together, at most (bounds the memory of a
/// request: attention is `BATCH × 12 × s × s` floats).
pub const BATCH: usize = 16;
/// Inputs per request, at most (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

const OUTPUT: &str = "last_hidden_state";

static MODEL: LazyEngine<TractEngine> = LazyEngine::new(|| {
    TractEngine::from_onnx_with(
        include_bytes!("../../../models/embed/model.onnx"),
        // The exporter's value_info shapes are wrong for tract.
        TractOptions {
            ignore_value_info: true,
            ..TractOptions::default()
        },
    )
});

/// The WordPiece tokenizer, loaded once (at pre-initialization when baked).
static TOKENIZER: LazyLock<Result<Tokenizer, KitError>> = LazyLock::new(|| {
    let fail = |e: tokenizers::Error| KitError::internal(format!("loading tokenizer.json: {e}"));
    let mut tokenizer =
        Tokenizer::from_bytes(include_bytes!("../../../models/embed/tokenizer.json"))
            .map_err(fail)?;
    // As shipped it pads every text to 128 and cuts at 128: no padding (a
    // batch is padded here, to its longest), and cut at MAX_TOKENS instead.
    let mut truncation = tokenizer.get_truncation().cloned().unwrap_or_default();
    truncation.max_length = MAX_TOKENS;
    tokenizer.with_padding(None);
    tokenizer.with_truncation(Some(truncation)).map_err(fail)?;
    Ok(tokenizer)
});

fn tokenizer() -> Result<&'static Tokenizer, KitError> {
    TOKENIZER.as_ref().map_err(Clone::clone)
}

// Both the tract plan and the tokenizer are in a baked component's snapshot.
kit::export_wizer_init!(|| {
    MODEL.init();
    if let Err(e) = tokenizer() {
        panic!("{e}");
    }
});

#[http_service]
async fn embed(req: Request) -> Reply {
    let path = req.uri().path().to_owned();
    if kit::oip::is_oip_path(&path) {
        return kit::oip::serve(req, MODEL_NAME, &MODEL).await;
    }
    if !path.trim_end_matches('/').ends_with("/v1/embeddings") {
        return respond::error(&KitError::not_found(format!("no route for {path}")));
    }
    if req.method() != Method::POST {
        return respond::error(&KitError::MethodNotAllowed(format!(
            "{} is not allowed here (allowed: POST)",
            req.method()
        )));
    }
    match kit::body::read_all(req).await {
        Ok(body) => respond::result(embeddings(&body).map(|r| respond::ok(&r))),
        Err(e) => respond::error(&e),
    }
}

/// The OpenAI response body. Typed, so the f32s print in their shortest form.
#[derive(Debug, Serialize)]
pub struct EmbeddingsResponse {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: &'static str,
    pub usage: Usage,
}

#[derive(Debug, Serialize)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: Vec<f32>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// Answers a `/v1/embeddings` request body.
pub fn embeddings(body: &[u8]) -> Result<EmbeddingsResponse, KitError> {
    let texts = parse_request(body)?;
    let tokenizer = tokenizer()?;
    let encoded = texts
        .iter()
        .map(|text| encode(tokenizer, text))
        .collect::<Result<Vec<_>, _>>()?;
    let prompt_tokens = encoded.iter().map(Vec::len).sum();
    let mut data = Vec::with_capacity(encoded.len());
    for chunk in encoded.chunks(BATCH) {
        for embedding in embed_batch(chunk)? {
            data.push(Embedding {
                object: "embedding",
                index: data.len(),
                embedding,
            });
        }
    }
    Ok(EmbeddingsResponse {
        object: "list",
        data,
        model: MODEL_NAME,
        usage: Usage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    })
}

/// Validates the request and returns its texts.
fn parse_request(body: &[u8]) -> Result<Vec<String>, KitError> {
    let value: Value = kit::decode::json(body)?;
    let Value::Object(mut obj) = value else {
        return Err(KitError::bad_request(format!(
            "the request must be a JSON object with \"model\" and \"input\", got {}",
            kind(&value)
        )));
    };
    match obj.get("model") {
        Some(Value::String(m)) if is_this_model(m) => {}
        Some(Value::String(m)) => {
            return Err(KitError::bad_request(format!(
                "unknown model \"{m}\" (this endpoint serves \"{MODEL_NAME}\")"
            )));
        }
        Some(other) => {
            return Err(KitError::bad_request(format!(
                "\"model\" must be a string, got {}",
                kind(other)
            )));
        }
        None => {
            return Err(KitError::bad_request(format!(
                "missing \"model\" (this endpoint serves \"{MODEL_NAME}\")"
            )));
        }
    }
    match obj.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "float" => {}
        Some(other) => {
            return Err(KitError::bad_request(format!(
                "\"encoding_format\" {other} is not supported (only \"float\")"
            )));
        }
    }
    match obj.get("dimensions") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(DIM as u64) => {}
        Some(other) => {
            return Err(KitError::bad_request(format!(
                "\"dimensions\" {other} is not supported (the model gives {DIM})"
            )));
        }
    }
    let texts = match obj.remove("input") {
        None | Some(Value::Null) => return Err(KitError::bad_request("missing \"input\"")),
        Some(Value::String(text)) => {
            if text.is_empty() {
                return Err(KitError::bad_request("\"input\" is an empty string"));
            }
            vec![text]
        }
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(KitError::bad_request("\"input\" is an empty array"));
            }
            if items.len() > MAX_INPUTS {
                return Err(KitError::bad_request(format!(
                    "\"input\" has {} items, at most {MAX_INPUTS} are allowed",
                    items.len()
                )));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(ix, item)| match item {
                    Value::String(text) if text.is_empty() => Err(KitError::bad_request(format!(
                        "input[{ix}] is an empty string"
                    ))),
                    Value::String(text) => Ok(text),
                    Value::Array(_) | Value::Number(_) => Err(KitError::bad_request(format!(
                        "input[{ix}] must be a string (token arrays are not supported), got {}",
                        kind(&item)
                    ))),
                    other => Err(KitError::bad_request(format!(
                        "input[{ix}] must be a string, got {}",
                        kind(&other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(other) => {
            return Err(KitError::bad_request(format!(
                "\"input\" must be a string or an array of strings, got {}",
                kind(&other)
            )));
        }
    };
    Ok(texts)
}

/// `all-minilm-l6-v2`, in any case, optionally as `sentence-transformers/…`.
fn is_this_model(name: &str) -> bool {
    let name = name.strip_prefix("sentence-transformers/").unwrap_or(name);
    name.eq_ignore_ascii_case(MODEL_NAME)
}

/// The token ids of one text: `[CLS] … [SEP]`, at most [`MAX_TOKENS`].
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<i64>, KitError> {
    let encoding = tokenizer
        .encode_fast(text, true)
        .map_err(|e| KitError::internal(format!("tokenizing: {e}")))?;
    Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
}

/// Embeds token-id sequences in one run: padded to the longest with id 0 and
/// mask 0, then each mean-pooled over its own tokens and L2-normalised.
pub fn embed_batch(batch: &[Vec<i64>]) -> Result<Vec<Vec<f32>>, KitError> {
    let b = batch.len();
    let s = batch.iter().map(Vec::len).max().unwrap_or(0);
    if b == 0 || s == 0 {
        return Ok(Vec::new());
    }
    let mut ids = vec![0i64; b * s];
    let mut mask = vec![0i64; b * s];
    for (row, seq) in batch.iter().enumerate() {
        ids[row * s..][..seq.len()].copy_from_slice(seq);
        mask[row * s..][..seq.len()].fill(1);
    }
    let shape = vec![b, s];
    let outputs = MODEL.get()?.run(vec![
        Tensor::new("input_ids", shape.clone(), ids)?,
        Tensor::new("attention_mask", shape.clone(), mask)?,
        Tensor::new("token_type_ids", shape, vec![0i64; b * s])?,
    ])?;
    let hidden = outputs
        .iter()
        .find(|t| t.name == OUTPUT)
        .ok_or_else(|| KitError::internal(format!("the model has no output '{OUTPUT}'")))?;
    let data = hidden
        .data
        .as_f32()
        .filter(|d| hidden.shape == [b, s, DIM] && d.len() == b * s * DIM)
        .ok_or_else(|| {
            KitError::internal(format!(
                "'{OUTPUT}' is not FP32 [{b}, {s}, {DIM}] (got shape {:?})",
                hidden.shape
            ))
        })?;
    Ok(batch
        .iter()
        .enumerate()
        .map(|(row, seq)| pool(&data[row * s * DIM..][..seq.len() * DIM]))
        .collect())
}

/// Mean over the token rows of `states` (`tokens × DIM`), then L2-normalised:
/// sentence-transformers' `Pooling(mean)` + `Normalize`.
pub fn pool(states: &[f32]) -> Vec<f32> {
    let tokens = states.len() / DIM;
    let mut sum = vec![0f64; DIM];
    for row in states.chunks_exact(DIM) {
        for (acc, &x) in sum.iter_mut().zip(row) {
            *acc += f64::from(x);
        }
    }
    let count = (tokens as f64).max(1e-9);
    let mean: Vec<f64> = sum.iter().map(|x| x / count).collect();
    let norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    mean.iter().map(|x| (x / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Vec<Value> {
        let text = include_str!("../../../models/embed/reference.json");
        serde_json::from_str::<Value>(text)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn ints(v: &Value) -> Vec<i64> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    }

    fn floats(v: &Value) -> Vec<f32> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        dot / (n(a) * n(b))
    }

    /// Single-text cases: the tokenizer gives ORT's ids (the reference cuts at
    /// 128, this function at MAX_TOKENS), the embedding ORT's vector.
    #[test]
    fn tokens_and_embeddings_match_the_reference() {
        let tokenizer = tokenizer().unwrap();
        let mut worst = 1f64;
        for case in reference() {
            let name = case["name"].as_str().unwrap();
            let Some(text) = case["text"].as_str() else {
                continue; // the batch case
            };
            let want_ids = ints(&case["inputs"]["input_ids"]);
            let ids = encode(tokenizer, text).unwrap();
            if name == "long_truncated" {
                assert_eq!(want_ids.len(), 128);
                assert!(ids.len() > 128 && ids.len() <= MAX_TOKENS, "{}", ids.len());
                assert_eq!(ids[..127], want_ids[..127], "{name}");
                assert_eq!(*ids.last().unwrap(), 102);
                // Cut as the reference does, for the embedding.
                let mut cut = ids[..127].to_vec();
                cut.push(102);
                let got = embed_batch(&[cut]).unwrap().remove(0);
                let c = cosine(&got, &floats(&case["embedding"]));
                worst = worst.min(c);
                continue;
            }
            assert_eq!(ids, want_ids, "{name}: token ids");
            assert_eq!(ids.len() as u64, case["token_count"].as_u64().unwrap());
            let got = embed_batch(&[ids]).unwrap().remove(0);
            assert_eq!(got.len(), DIM);
            let c = cosine(&got, &floats(&case["embedding"]));
            assert!(c >= 0.9999, "{name}: cosine {c}");
            worst = worst.min(c);
        }
        eprintln!("lowest cosine to ONNX Runtime's embedding: {worst}");
        assert!(worst >= 0.9999);
    }

    /// The padded batch gives each text's own embedding.
    #[test]
    fn a_padded_batch_matches_the_reference() {
        let case = reference()
            .into_iter()
            .find(|c| c["name"] == "batch_padded")
            .unwrap();
        let texts: Vec<&str> = case["text"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let tokenizer = tokenizer().unwrap();
        let batch: Vec<Vec<i64>> = texts
            .iter()
            .map(|t| encode(tokenizer, t).unwrap())
            .collect();
        let want = floats(&case["embedding"]);
        let got = embed_batch(&batch).unwrap();
        assert_eq!(got.len(), 2);
        for (row, emb) in got.iter().enumerate() {
            let c = cosine(emb, &want[row * DIM..][..DIM]);
            assert!(c >= 0.9999, "row {row}: cosine {c}");
        }
    }

    #[test]
    fn the_openai_shape_and_usage() {
        let body = serde_json::json!({"model": MODEL_NAME, "input": ["A man is playing a guitar.", "Hello, world!"]});
        let resp = embeddings(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            resp.usage,
            Usage {
                prompt_tokens: 9 + 6,
                total_tokens: 15
            }
        );
        let v = serde_json::to_value(&resp).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], MODEL_NAME);
        assert_eq!(v["data"][1]["object"], "embedding");
        assert_eq!(v["data"][1]["index"], 1);
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), DIM);
        let one =
            embeddings(br#"{"model": "all-MiniLM-L6-v2", "input": "Hello, world!"}"#).unwrap();
        assert_eq!(one.data.len(), 1);
        assert_eq!(one.usage.prompt_tokens, 6);
        let c = cosine(&one.data[0].embedding, &resp.data[1].embedding);
        assert!(c > 0.99999, "{c}");
    }

    #[test]
    fn more_inputs_than_a_batch() {
        let inputs: Vec<String> = (0..BATCH + 3).map(|i| format!("sentence {i}")).collect();
        let body = serde_json::json!({"model": MODEL_NAME, "input": inputs});
        let resp = embeddings(body.to_string().as_bytes()).unwrap();
        assert_eq!(resp.data.len(), BATCH + 3);
        assert!(resp.data.iter().enumerate().all(|(i, d)| d.index == i));
        let alone =
            embeddings(br#"{"model": "all-minilm-l6-v2", "input": "sentence 18"}"#).unwrap();
        let c = cosine(&alone.data[0].embedding, &resp.data[18].embedding);
        assert!(c > 0.99999, "{c}");
    }

    #[test]
    fn bad_requests_are_400s_with_a_reason() {
        for (body, says) in [
            (&b""[..], "empty body"),
            (b"{\"model\": ", "malformed JSON"),
            (b"[]", "JSON object"),
            (br#"{"input": "x"}"#, "missing \"model\""),
            (br#"{"model": "gpt", "input": "x"}"#, "unknown model"),
            (br#"{"model": 3, "input": "x"}"#, "must be a string"),
            (br#"{"model": "all-minilm-l6-v2"}"#, "missing \"input\""),
            (
                br#"{"model": "all-minilm-l6-v2", "input": ""}"#,
                "empty string",
            ),
            (
                br#"{"model": "all-minilm-l6-v2", "input": []}"#,
                "empty array",
            ),
            (
                br#"{"model": "all-minilm-l6-v2", "input": ["a", 3]}"#,
                "input[1]",
            ),
            (
                br#"{"model": "all-minilm-l6-v2", "input": [[101, 102]]}"#,
                "token arrays",
            ),
            (
                br#"{"model": "all-minilm-l6-v2", "input": {"a": 1}}"#,
                "string or an array",
            ),
            (
                br#"{"model": "all-minilm-l6-v2", "input": "x", "encoding_format": "base64"}"#,
                "encoding_format",
            ),
            (
                br#"{"model": "all-minilm-l6-v2", "input": "x", "dimensions": 128}"#,
                "dimensions",
            ),
        ] {
            match embeddings(body) {
                Err(KitError::BadRequest(m)) => {
                    assert!(m.contains(says), "{m:?} should say {says:?}")
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }

    #[test]
    fn long_texts_are_cut_at_max_tokens() {
        let text = "word ".repeat(1000);
        let ids = encode(tokenizer().unwrap(), &text).unwrap();
        assert_eq!(ids.len(), MAX_TOKENS);
        assert_eq!((ids[0], ids[MAX_TOKENS - 1]), (101, 102));
        let body = serde_json::json!({"model": MODEL_NAME, "input": text});
        let resp = embeddings(body.to_string().as_bytes()).unwrap();
        assert_eq!(resp.usage.prompt_tokens, MAX_TOKENS);
    }
}
