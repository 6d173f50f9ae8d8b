//! magika 1.0.3's pre- and post-processing around its ONNX model, driven by the
//! model's own `config.min.json` and the content-type table `content_types.json`
//! (see `models/filetype/SOURCE.md`). No tract here: [`Magika::route`] decides
//! a file without the model or gives the model's input row, and
//! [`Magika::from_probabilities`] turns the model's output into the answer.
//!
//! What each function re-implements, from `magika/magika.py` of magika 1.0.3:
//!
//! - [`Magika::features`] is `_extract_features_from_seekable` with
//!   `_get_beg_ints_with_padding`, `_get_end_ints_with_padding`, and the row
//!   layout of `_get_raw_predictions` (beg then end, int32).
//! - [`Magika::route`] is `_get_result_or_features_from_seekable` (the empty and
//!   few-bytes cases) and `_get_label_from_few_bytes`.
//! - [`Magika::from_probabilities`] is `_get_model_outputs_from_features`
//!   (argmax, max) and `_get_output_label_from_dl_label_and_score` in the
//!   default `PredictionMode.HIGH_CONFIDENCE`.

use std::collections::HashMap;

use kit::KitError;
use serde::{Deserialize, Serialize};

/// Labels the library answers without the model.
pub const EMPTY: &str = "empty";
pub const TXT: &str = "txt";
pub const UNKNOWN: &str = "unknown";
/// The `dl` label of an answer the model did not give.
pub const UNDEFINED: &str = "undefined";

/// `config.min.json`, the fields magika 1.0.3 reads (`Magika._load_model_config`).
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    pub beg_size: usize,
    pub mid_size: usize,
    pub end_size: usize,
    pub use_inputs_at_offsets: bool,
    /// The threshold of a label without its own entry in `thresholds`.
    pub medium_confidence_threshold: f64,
    pub min_file_size_for_dl: usize,
    pub padding_token: i32,
    pub block_size: usize,
    /// Output index i of the model is label i.
    pub target_labels_space: Vec<String>,
    /// Per-label high-confidence thresholds, keyed by the model's label.
    pub thresholds: HashMap<String, f64>,
    /// Model labels answered as another label (`randombytes` → `unknown`, ...).
    pub overwrite_map: HashMap<String, String>,
}

/// One entry of `content_types.json` (nulls already resolved as magika does).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ContentType {
    pub group: String,
    pub mime_type: String,
    pub description: String,
    pub is_text: bool,
}

/// Why the answer differs from the model's label (`OverwriteReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverwriteReason {
    None,
    OverwriteMap,
    LowConfidence,
}

/// How an answer was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// No bytes at all.
    Empty,
    /// Too few (non-whitespace) bytes for the model.
    FewBytes,
    /// The model.
    Model,
}

/// magika's answer for one input (a `MagikaPrediction`, flattened).
#[derive(Debug, Clone, PartialEq)]
pub struct Identification {
    /// The answer (`output.label`).
    pub label: String,
    /// The model's own label (`dl.label`), `undefined` if the model did not run.
    pub dl_label: String,
    /// The model's probability for `dl_label`, or 1.0 without the model.
    pub score: f32,
    pub overwrite_reason: OverwriteReason,
    pub via: Via,
    /// `label`'s group, MIME type, description and text-ness.
    pub content_type: ContentType,
}

/// What [`Magika::route`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Answered without the model.
    Decided(Identification),
    /// The model must run on this row: `[beg_size + end_size]` tokens.
    Model(Vec<i32>),
}

/// The configuration and content types, parsed and checked once.
#[derive(Debug, Clone)]
pub struct Magika {
    pub config: ModelConfig,
    pub content_types: HashMap<String, ContentType>,
}

/// Python's `bytes.strip()` set: ASCII whitespace including VT (0x0B), which
/// `u8::is_ascii_whitespace` leaves out.
fn is_py_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn lstrip(data: &[u8]) -> &[u8] {
    let start = data
        .iter()
        .position(|&b| !is_py_whitespace(b))
        .unwrap_or(data.len());
    &data[start..]
}

fn rstrip(data: &[u8]) -> &[u8] {
    let end = data
        .iter()
        .rposition(|&b| !is_py_whitespace(b))
        .map_or(0, |i| i + 1);
    &data[..end]
}

impl Magika {
    /// Parses `config.min.json` and `content_types.json`, and checks that the
    /// configuration is one this implementation (like magika 1.0.3's) handles and
    /// that every label it can answer has a content type.
    pub fn from_json(config: &str, content_types: &str) -> Result<Self, KitError> {
        let config: ModelConfig = serde_json::from_str(config)
            .map_err(|e| KitError::internal(format!("config.min.json: {e}")))?;
        let content_types: HashMap<String, ContentType> = serde_json::from_str(content_types)
            .map_err(|e| KitError::internal(format!("content_types.json: {e}")))?;
        let c = &config;
        let unsupported = |what: &str| {
            Err(KitError::internal(format!(
                "config.min.json: unsupported configuration: {what}"
            )))
        };
        // The asserts of `_extract_features_from_seekable`.
        if c.mid_size != 0 || c.use_inputs_at_offsets {
            return unsupported("mid features or inputs at offsets");
        }
        if c.beg_size >= c.block_size || c.end_size >= c.block_size {
            return unsupported("beg_size and end_size must be below block_size");
        }
        // `beg[min_file_size_for_dl - 1]` must exist.
        if c.min_file_size_for_dl == 0 || c.min_file_size_for_dl > c.beg_size {
            return unsupported("min_file_size_for_dl must be in 1..=beg_size");
        }
        if c.target_labels_space.is_empty() {
            return unsupported("an empty target_labels_space");
        }
        let answerable = c
            .target_labels_space
            .iter()
            .chain(c.overwrite_map.values())
            .map(String::as_str)
            .chain([EMPTY, TXT, UNKNOWN, UNDEFINED]);
        for label in answerable {
            if !content_types.contains_key(label) {
                return Err(KitError::internal(format!(
                    "content_types.json has no entry for '{label}'"
                )));
            }
        }
        Ok(Magika {
            config,
            content_types,
        })
    }

    fn content_type(&self, label: &str) -> Result<&ContentType, KitError> {
        self.content_types
            .get(label)
            .ok_or_else(|| KitError::internal(format!("no content type for label '{label}'")))
    }

    /// The model's input row for `data`: `beg_size` tokens from the (left-stripped)
    /// start, padded at the end, then `end_size` tokens from the (right-stripped)
    /// end, padded at the start. Both halves come from at most `block_size` bytes.
    pub fn features(&self, data: &[u8]) -> Vec<i32> {
        let c = &self.config;
        let n = data.len();
        let k = c.block_size.min(n);
        let pad = c.padding_token;
        let mut row = Vec::with_capacity(c.beg_size + c.end_size);

        let beg = lstrip(&data[..k]);
        let beg = &beg[..beg.len().min(c.beg_size)];
        row.extend(beg.iter().map(|&b| i32::from(b)));
        row.resize(c.beg_size, pad);

        let end = rstrip(&data[n - k..]);
        let end = &end[end.len() - end.len().min(c.end_size)..];
        row.resize(c.beg_size + c.end_size - end.len(), pad);
        row.extend(end.iter().map(|&b| i32::from(b)));
        row
    }

    /// An answer given without the model, with score 1.0.
    fn decided(&self, label: &str, via: Via) -> Result<Identification, KitError> {
        Ok(Identification {
            label: label.to_owned(),
            dl_label: UNDEFINED.to_owned(),
            score: 1.0,
            overwrite_reason: OverwriteReason::None,
            via,
            content_type: self.content_type(label)?.clone(),
        })
    }

    /// `_get_label_from_few_bytes`: `txt` if the bytes are UTF-8 (Python's strict
    /// decoder and Rust's agree: no surrogates, no overlongs), else `unknown`.
    fn few_bytes(&self, content: &[u8]) -> Result<Identification, KitError> {
        let label = if std::str::from_utf8(content).is_ok() {
            TXT
        } else {
            UNKNOWN
        };
        self.decided(label, Via::FewBytes)
    }

    /// `_get_result_or_features_from_seekable`: the answer without the model,
    /// or the model's input row.
    pub fn route(&self, data: &[u8]) -> Result<Route, KitError> {
        let c = &self.config;
        let n = data.len();
        if n == 0 {
            return self.decided(EMPTY, Via::Empty).map(Route::Decided);
        }
        if n < c.min_file_size_for_dl {
            return self.few_bytes(data).map(Route::Decided);
        }
        let row = self.features(data);
        if row[c.min_file_size_for_dl - 1] == c.padding_token {
            // Fewer than min_file_size_for_dl bytes left after stripping: the
            // few-bytes rule on the first block, unstripped.
            return self
                .few_bytes(&data[..n.min(c.block_size)])
                .map(Route::Decided);
        }
        Ok(Route::Model(row))
    }

    /// The answer from the model's probabilities over `target_labels_space`:
    /// the first highest one (numpy's argmax) and its probability.
    pub fn from_probabilities(&self, probabilities: &[f32]) -> Result<Identification, KitError> {
        let labels = &self.config.target_labels_space;
        if probabilities.len() != labels.len() {
            return Err(KitError::internal(format!(
                "the model gave {} probabilities for {} labels",
                probabilities.len(),
                labels.len()
            )));
        }
        let (best, score) = probabilities.iter().copied().enumerate().fold(
            (0, probabilities[0]),
            |(bi, bv), (i, v)| {
                if v > bv { (i, v) } else { (bi, bv) }
            },
        );
        self.from_label_and_score(&labels[best], score)
    }

    /// `_get_output_label_from_dl_label_and_score` (HIGH_CONFIDENCE): the
    /// overwrite map first, then the model label's threshold (the
    /// `medium_confidence_threshold` if it has none); below it, `txt` if the
    /// (overwritten) label is a text type, else `unknown`.
    pub fn from_label_and_score(
        &self,
        dl_label: &str,
        score: f32,
    ) -> Result<Identification, KitError> {
        let c = &self.config;
        let mut label = c
            .overwrite_map
            .get(dl_label)
            .map_or(dl_label, String::as_str);
        let mut reason = if label != dl_label {
            OverwriteReason::OverwriteMap
        } else {
            OverwriteReason::None
        };
        // Python compares `float(np.float32)` with the config's float.
        let threshold = c
            .thresholds
            .get(dl_label)
            .copied()
            .unwrap_or(c.medium_confidence_threshold);
        if f64::from(score) < threshold {
            label = if self.content_type(label)?.is_text {
                TXT
            } else {
                UNKNOWN
            };
            reason = if label == dl_label {
                OverwriteReason::None
            } else {
                OverwriteReason::LowConfidence
            };
        }
        Ok(Identification {
            label: label.to_owned(),
            dl_label: dl_label.to_owned(),
            score,
            overwrite_reason: reason,
            via: Via::Model,
            content_type: self.content_type(label)?.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn magika() -> Magika {
        Magika::from_json(
            include_str!("../../../models/filetype/config.min.json"),
            include_str!("../../../models/filetype/content_types.json"),
        )
        .unwrap()
    }

    fn decided(m: &Magika, data: &[u8]) -> Identification {
        match m.route(data).unwrap() {
            Route::Decided(id) => id,
            Route::Model(_) => panic!("{data:?} reached the model"),
        }
    }

    #[test]
    fn config_is_the_one_of_source_md() {
        let c = magika().config;
        assert_eq!(
            (c.beg_size, c.mid_size, c.end_size, c.block_size),
            (1024, 0, 1024, 4096)
        );
        assert_eq!((c.padding_token, c.min_file_size_for_dl), (256, 8));
        assert_eq!(c.target_labels_space.len(), 214);
        assert_eq!(c.medium_confidence_threshold, 0.5);
        assert_eq!(c.thresholds["markdown"], 0.75);
        assert_eq!(c.thresholds["pascal"], 0.95);
        assert_eq!(c.overwrite_map["randombytes"], UNKNOWN);
        assert_eq!(c.overwrite_map["randomtxt"], TXT);
    }

    #[test]
    fn whitespace_is_pythons() {
        // Python's bytes.strip() set includes VT (0x0b) and FF (0x0c). beg is
        // only left-stripped and end only right-stripped.
        let m = magika();
        let data = b"\x0b\x0c \t\r\nabcdefgh\n\x0b\x0c \t\r";
        let row = m.features(data);
        assert_eq!(row.len(), 2048);
        assert_eq!(&row[..14], b"abcdefgh\n\x0b\x0c \t\r".map(i32::from));
        assert!(row[14..1024].iter().all(|&t| t == 256));
        assert_eq!(&row[2034..], b"\x0b\x0c \t\r\nabcdefgh".map(i32::from));
        assert!(row[1024..2034].iter().all(|&t| t == 256));
        // NUL and 0x1c..0x1f (whitespace for str, not for bytes) are kept.
        let row = m.features(b"\0\x1c\x1d\x1e\x1f\x85\xa0z");
        assert_eq!(
            &row[..8],
            [0, 0x1c, 0x1d, 0x1e, 0x1f, 0x85, 0xa0, b'z' as i32]
        );
    }

    #[test]
    fn features_of_a_long_file() {
        let m = magika();
        // 10000 bytes: beg from the first 4096, end from the last 4096.
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut padded = vec![b' '; 3000];
        padded.extend_from_slice(&data);
        padded.extend(vec![b'\n'; 3000]);
        let row = m.features(&padded);
        let want: Vec<i32> = data[..1024]
            .iter()
            .chain(&data[data.len() - 1024..])
            .map(|&b| i32::from(b))
            .collect();
        assert_eq!(row, want);
        // Whitespace past the first block is not stripped: only the first 4096
        // bytes are read, so 4000 spaces then data leave 96 bytes for beg.
        let mut late = vec![b' '; 4000];
        late.extend_from_slice(&data);
        let row = m.features(&late);
        assert_eq!(row[95], i32::from(data[95]));
        assert_eq!(row[96], 256);
    }

    #[test]
    fn empty_and_few_bytes() {
        let m = magika();
        let id = decided(&m, b"");
        assert_eq!(
            (id.label.as_str(), id.via, id.score),
            (EMPTY, Via::Empty, 1.0)
        );
        assert_eq!(id.content_type.group, "inode");
        assert_eq!(id.dl_label, UNDEFINED);

        let id = decided(&m, b"12.11\n");
        assert_eq!(
            (id.label.as_str(), id.via, id.score),
            (TXT, Via::FewBytes, 1.0)
        );
        assert_eq!(id.content_type.mime_type, "text/plain");
        assert_eq!(decided(&m, b"\xff\xfe\x00").label, UNKNOWN);
        // A lone surrogate is invalid for Python's strict decoder too.
        assert_eq!(decided(&m, b"\xed\xa0\x80").label, UNKNOWN);
        assert_eq!(decided(&m, "héé".as_bytes()).label, TXT);

        // 8 bytes or more, but fewer than 8 left after stripping: the rule is
        // applied to the unstripped first block.
        assert_eq!(decided(&m, b"\n\n     abc").label, TXT);
        assert_eq!(decided(&m, &[b' '; 5000]).label, TXT);
        assert_eq!(decided(&m, b"\n\n    \xff\xfe").label, UNKNOWN);
        // Trailing whitespace is not stripped from beg, so this goes to the model.
        assert!(matches!(m.route(b"abc     \n\n").unwrap(), Route::Model(_)));
        // Only beg decides, and only the first block is decoded: the invalid
        // UTF-8 at the end of this file is in `end` but not looked at.
        let mut data = vec![b' '; 5000];
        data.extend_from_slice(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff");
        assert_eq!(decided(&m, &data).label, TXT);
        // 8 meaningful bytes go to the model.
        assert!(matches!(m.route(b"  abcdefgh  ").unwrap(), Route::Model(_)));
        assert!(matches!(m.route(b" abcdefg").unwrap(), Route::Decided(_)));
        // beg is only left-stripped, so trailing whitespace counts towards the 8.
        assert!(matches!(m.route(b"abcdefg ").unwrap(), Route::Model(_)));
    }

    #[test]
    fn overwrite_map_and_thresholds() {
        let m = magika();
        let id = m.from_label_and_score("python", 0.99).unwrap();
        assert_eq!(
            (id.label.as_str(), id.overwrite_reason),
            ("python", OverwriteReason::None)
        );
        assert_eq!(id.content_type.group, "code");
        assert_eq!(id.content_type.mime_type, "text/x-python");

        // The default threshold, 0.5: at it kept, below it generalized.
        assert_eq!(
            m.from_label_and_score("python", 0.5).unwrap().label,
            "python"
        );
        let id = m.from_label_and_score("python", 0.49).unwrap();
        assert_eq!(
            (id.label.as_str(), id.overwrite_reason, id.score),
            (TXT, OverwriteReason::LowConfidence, 0.49)
        );
        assert_eq!(
            m.from_label_and_score("elf", 0.3102).unwrap().label,
            UNKNOWN
        );

        // Per-label thresholds.
        assert_eq!(m.from_label_and_score("pascal", 0.7549).unwrap().label, TXT);
        assert_eq!(
            m.from_label_and_score("pascal", 0.96).unwrap().label,
            "pascal"
        );
        assert_eq!(m.from_label_and_score("markdown", 0.74).unwrap().label, TXT);
        assert_eq!(
            m.from_label_and_score("markdown", 0.75).unwrap().label,
            "markdown"
        );

        // The overwrite map, then the threshold of the model's label.
        let id = m.from_label_and_score("randombytes", 0.9).unwrap();
        assert_eq!(
            (id.label.as_str(), id.overwrite_reason),
            (UNKNOWN, OverwriteReason::OverwriteMap)
        );
        let id = m.from_label_and_score("randomtxt", 0.9).unwrap();
        assert_eq!(
            (id.label.as_str(), id.overwrite_reason),
            (TXT, OverwriteReason::OverwriteMap)
        );
        let id = m.from_label_and_score("randomtxt", 0.2).unwrap();
        assert_eq!(
            (id.label.as_str(), id.overwrite_reason),
            (TXT, OverwriteReason::LowConfidence)
        );
        // A low-confidence txt stays txt with no overwrite reason.
        let id = m.from_label_and_score(TXT, 0.2).unwrap();
        assert_eq!(
            (id.label.as_str(), id.overwrite_reason),
            (TXT, OverwriteReason::None)
        );
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        let m = magika();
        let mut p = vec![0.0f32; 214];
        p[3] = 0.4;
        p[7] = 0.4;
        let id = m.from_probabilities(&p).unwrap();
        assert_eq!(id.dl_label, m.config.target_labels_space[3]);
        assert!(m.from_probabilities(&p[..10]).is_err());
    }
}
