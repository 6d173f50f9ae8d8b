//! Request decoding: JSON into the caller's type, OIP v2 inference requests into
//! validated [`Tensor`]s, raw bytes, and PNG images into grayscale pixels.
//! Every failure is a [`KitError::BadRequest`] that says what was wrong.

use half::f16;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::KitError;
use crate::tensor::{DataType, Tensor, TensorData, element_count};

/// Decodes a JSON body into `T`. Empty bodies, malformed JSON and JSON of the
/// wrong shape (missing field, wrong type) are 400s with serde's reason and position.
pub fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, KitError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(KitError::bad_request(
            "empty body: expected a JSON document",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => KitError::bad_request(format!("invalid request: {e}")),
            Category::Syntax | Category::Eof | Category::Io => {
                KitError::bad_request(format!("malformed JSON: {e}"))
            }
        }
    })
}

/// The body as raw bytes; an empty body is a 400.
pub fn raw(body: &[u8]) -> Result<&[u8], KitError> {
    if body.is_empty() {
        Err(KitError::bad_request(
            "empty body: expected the raw bytes to classify",
        ))
    } else {
        Ok(body)
    }
}

/// A decoded OIP v2 inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// The request `id`, echoed in the response.
    pub id: Option<String>,
    /// The input tensors, in request order, each validated against its own
    /// `shape` and `datatype` (not yet against a model: see `engine::check_inputs`).
    pub inputs: Vec<Tensor>,
    /// The names in `outputs: [{"name": ...}]`, if the client asked for a subset.
    pub outputs: Option<Vec<String>>,
    /// Outputs to answer as raw bytes (the binary tensor extension): all of
    /// them (`parameters.binary_data_output`), or those whose entry in
    /// `outputs` has `parameters.binary_data`.
    pub binary_outputs: BinaryOutputs,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum BinaryOutputs {
    #[default]
    None,
    All,
    Named(Vec<String>),
}

impl BinaryOutputs {
    pub fn contains(&self, name: &str) -> bool {
        match self {
            BinaryOutputs::None => false,
            BinaryOutputs::All => true,
            BinaryOutputs::Named(names) => names.iter().any(|n| n == name),
        }
    }
}

/// The header that splits a binary-extension body: the JSON part's length.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A bool in an object's `parameters`; absent is `false`.
fn flag(obj: &Map<String, Value>, key: &str) -> Result<bool, KitError> {
    match obj.get("parameters").and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(KitError::bad_request(format!(
            "parameters.{key} must be a boolean, got {}",
            kind(other)
        ))),
    }
}

/// Decodes `{"id"?, "inputs": [{"name","shape","datatype","data"}], "outputs"?: [{"name"}]}`.
/// `data` may be flat or nested arrays (row-major); its element count must equal
/// the product of `shape`, and every value must fit `datatype`.
pub fn infer_request(body: &[u8]) -> Result<InferRequest, KitError> {
    infer_request_with(body, None)
}

/// [`infer_request`] with the binary tensor extension (Triton's, KServe's):
/// when `header_length` (the `Inference-Header-Content-Length` header) is
/// given, the body is that many bytes of JSON followed by the little-endian,
/// row-major data of every input whose `parameters.binary_data_size` is set,
/// in input order, instead of its `"data"`. No JSON numbers to parse: large
/// tensors cost a copy.
pub fn infer_request_with(
    body: &[u8],
    header_length: Option<usize>,
) -> Result<InferRequest, KitError> {
    let (header, mut binary) = match header_length {
        None => (body, &[][..]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(KitError::bad_request(format!(
                "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                body.len()
            )));
        }
    };
    let value: Value = json(header)?;
    let obj = value.as_object().ok_or_else(|| {
        KitError::bad_request("the request must be a JSON object with \"inputs\"")
    })?;

    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(KitError::bad_request(format!(
                "\"id\" must be a string, got {}",
                kind(other)
            )));
        }
    };

    let inputs = match obj.get("inputs") {
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(KitError::bad_request(format!(
                "\"inputs\" must be an array, got {}",
                kind(other)
            )));
        }
        None => return Err(KitError::bad_request("missing \"inputs\"")),
    };
    if inputs.is_empty() {
        return Err(KitError::bad_request("\"inputs\" is empty"));
    }
    let inputs = inputs
        .iter()
        .enumerate()
        .map(|(ix, item)| {
            oip_tensor_from(item, &mut binary).map_err(|e| e.context(format!("inputs[{ix}]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !binary.is_empty() {
        return Err(KitError::bad_request(format!(
            "{} bytes of binary data follow the last input's",
            binary.len()
        )));
    }
    let mut binary_outputs = if flag(obj, "binary_data_output")? {
        BinaryOutputs::All
    } else {
        BinaryOutputs::None
    };

    let outputs = match obj.get("outputs") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .enumerate()
                .map(|(ix, item)| match (item.get("name"), item.as_object()) {
                    (Some(Value::String(s)), Some(obj)) => {
                        if flag(obj, "binary_data")? {
                            match &mut binary_outputs {
                                BinaryOutputs::Named(names) => names.push(s.clone()),
                                b @ BinaryOutputs::None => {
                                    *b = BinaryOutputs::Named(vec![s.clone()])
                                }
                                BinaryOutputs::All => {}
                            }
                        }
                        Ok(s.clone())
                    }
                    _ => Err(KitError::bad_request(format!(
                        "outputs[{ix}] must be an object with a string \"name\""
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(other) => {
            return Err(KitError::bad_request(format!(
                "\"outputs\" must be an array, got {}",
                kind(other)
            )));
        }
    };

    Ok(InferRequest {
        id,
        inputs,
        outputs,
        binary_outputs,
    })
}

/// Decodes one OIP tensor object `{"name","shape","datatype","data"}`.
pub fn oip_tensor(value: &Value) -> Result<Tensor, KitError> {
    oip_tensor_from(value, &mut &[][..])
}

/// [`oip_tensor`], taking the data from the front of `binary` when the
/// object's `parameters.binary_data_size` says so.
fn oip_tensor_from(value: &Value, binary: &mut &[u8]) -> Result<Tensor, KitError> {
    let obj = value.as_object().ok_or_else(|| {
        KitError::bad_request(format!("expected a tensor object, got {}", kind(value)))
    })?;

    let name = match field(obj, "name")? {
        Value::String(s) if !s.is_empty() => s.clone(),
        other => {
            return Err(KitError::bad_request(format!(
                "\"name\" must be a non-empty string, got {}",
                kind(other)
            )));
        }
    };
    let ctx = |e: KitError| e.context(format!("input '{name}'"));

    let shape = shape(field(obj, "shape").map_err(ctx)?).map_err(ctx)?;
    let datatype = match field(obj, "datatype").map_err(ctx)? {
        Value::String(s) => DataType::parse(s).ok_or_else(|| {
            ctx(KitError::bad_request(format!(
                "unsupported datatype \"{s}\" (supported: {})",
                DataType::supported_list()
            )))
        })?,
        other => {
            return Err(ctx(KitError::bad_request(format!(
                "\"datatype\" must be a string, got {}",
                kind(other)
            ))));
        }
    };
    let expected = element_count(&shape).ok_or_else(|| {
        ctx(KitError::bad_request(format!(
            "shape {shape:?} is too large"
        )))
    })?;
    let size = match obj
        .get("parameters")
        .and_then(|p| p.get("binary_data_size"))
    {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ctx(KitError::bad_request(format!(
                "parameters.binary_data_size must be a byte count, got {}",
                kind(v)
            )))
        })? as usize),
    };
    let data = match size {
        Some(size) => {
            if size > binary.len() {
                return Err(ctx(KitError::bad_request(format!(
                    "binary_data_size {size} runs past the end of the body ({} bytes left)",
                    binary.len()
                ))));
            }
            let (bytes, rest) = binary.split_at(size);
            *binary = rest;
            TensorData::from_le_bytes(datatype, bytes).map_err(ctx)?
        }
        None => tensor_data(datatype, field(obj, "data").map_err(ctx)?, expected).map_err(ctx)?,
    };
    Tensor::new(name, shape, data)
}

/// Converts JSON `data` (flat, nested or a lone scalar) into `datatype` values,
/// checking that there are exactly `expected` of them and that each fits.
pub fn tensor_data(
    datatype: DataType,
    data: &Value,
    expected: usize,
) -> Result<TensorData, KitError> {
    let found = count_leaves(data);
    if found != expected {
        return Err(KitError::bad_request(format!(
            "shape needs {expected} values, \"data\" has {found}"
        )));
    }
    Ok(match datatype {
        DataType::Fp32 => TensorData::Fp32(collect(data, expected, |v| {
            let x = float(v)?;
            if x.abs() > f64::from(f32::MAX) {
                return Err(format!("{x} is out of FP32 range"));
            }
            Ok(x as f32)
        })?),
        DataType::Fp64 => TensorData::Fp64(collect(data, expected, float)?),
        DataType::Fp16 => TensorData::Fp16(collect(data, expected, |v| {
            let x = float(v)?;
            if x.abs() > f64::from(f16::MAX) {
                return Err(format!("{x} is out of FP16 range"));
            }
            Ok(f16::from_f64(x))
        })?),
        DataType::Int64 => TensorData::Int64(collect(data, expected, |v| int(v, DataType::Int64))?),
        DataType::Int32 => TensorData::Int32(collect(data, expected, |v| int(v, DataType::Int32))?),
        DataType::Int8 => TensorData::Int8(collect(data, expected, |v| int(v, DataType::Int8))?),
        DataType::Uint8 => TensorData::Uint8(collect(data, expected, |v| int(v, DataType::Uint8))?),
        DataType::Bool => TensorData::Bool(collect(data, expected, |v| match v {
            Value::Bool(b) => Ok(*b),
            Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
            Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
            other => Err(format!("expected true or false, got {}", kind(other))),
        })?),
    })
}

fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a Value, KitError> {
    obj.get(key)
        .ok_or_else(|| KitError::bad_request(format!("missing \"{key}\"")))
}

fn shape(value: &Value) -> Result<Vec<usize>, KitError> {
    let dims = value.as_array().ok_or_else(|| {
        KitError::bad_request(format!(
            "\"shape\" must be an array of integers, got {}",
            kind(value)
        ))
    })?;
    dims.iter()
        .enumerate()
        .map(|(ix, d)| {
            d.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(|| {
                    KitError::bad_request(format!(
                        "shape[{ix}] must be a non-negative integer, got {d}"
                    ))
                })
        })
        .collect()
}

fn count_leaves(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.iter().map(count_leaves).sum(),
        _ => 1,
    }
}

/// Walks `data` depth-first (row-major) and converts each leaf.
fn collect<T>(
    data: &Value,
    expected: usize,
    convert: impl Fn(&Value) -> Result<T, String>,
) -> Result<Vec<T>, KitError> {
    fn walk<T>(
        v: &Value,
        out: &mut Vec<T>,
        convert: &dyn Fn(&Value) -> Result<T, String>,
    ) -> Result<(), KitError> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|item| walk(item, out, convert)),
            leaf => {
                let ix = out.len();
                let x = convert(leaf)
                    .map_err(|why| KitError::bad_request(format!("data[{ix}]: {why}")))?;
                out.push(x);
                Ok(())
            }
        }
    }
    let mut out = Vec::with_capacity(expected);
    walk(data, &mut out, &convert)?;
    Ok(out)
}

fn float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
        other => Err(format!("expected a number, got {}", kind(other))),
    }
}

/// An integer that fits `dt`. Integral floats (`3.0`) are accepted, fractions are not.
fn int<T>(v: &Value, dt: DataType) -> Result<T, String>
where
    T: TryFrom<i64>,
{
    let Value::Number(n) = v else {
        return Err(format!("expected an integer, got {}", kind(v)));
    };
    let i = if let Some(i) = n.as_i64() {
        i
    } else if n.as_u64().is_some() {
        return Err(format!("{n} does not fit {dt}"));
    } else {
        let x = n.as_f64().unwrap_or(f64::NAN);
        if x.fract() != 0.0 || !x.is_finite() {
            return Err(format!("{n} is not an integer ({dt} expected)"));
        }
        if x < i64::MIN as f64 || x >= i64::MAX as f64 {
            return Err(format!("{n} does not fit {dt}"));
        }
        x as i64
    };
    T::try_from(i).map_err(|_| format!("{n} does not fit {dt}"))
}

/// What a JSON value is, for error messages: "a string", "an array", ...
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The 8-byte PNG signature.
pub const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Whether `bytes` start with the PNG signature.
pub fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(&PNG_MAGIC)
}

/// An 8-bit grayscale image, row-major: 0 is black, 255 is white.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// How much memory a PNG decode may allocate.
const PNG_DECODE_LIMIT: usize = 32 << 20;

/// Decodes a PNG (any colour type and bit depth) to 8-bit grayscale.
///
/// Colour is reduced to luma with the Rec. 601 weights (0.299 R + 0.587 G + 0.114 B);
/// 16-bit samples keep their high byte; alpha is composited over a white
/// background, so transparent pixels read as white (paper). Animated PNGs give
/// their first frame. A corrupt or truncated file is a 400.
pub fn png_gray(bytes: &[u8]) -> Result<GrayImage, KitError> {
    use png::{ColorType, Transformations};
    let bad = |e: &dyn std::fmt::Display| KitError::bad_request(format!("invalid PNG: {e}"));
    if !is_png(bytes) {
        return Err(KitError::bad_request(
            "invalid PNG: missing the PNG signature",
        ));
    }
    let mut decoder = png::Decoder::new_with_limits(
        std::io::Cursor::new(bytes),
        png::Limits {
            bytes: PNG_DECODE_LIMIT,
        },
    );
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| bad(&e))?;
    let size = reader
        .output_buffer_size()
        .filter(|&n| n <= PNG_DECODE_LIMIT)
        .ok_or_else(|| KitError::bad_request("PNG too large to decode"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| bad(&e))?;
    let (width, height) = (info.width, info.height);
    let channels = match info.color_type {
        ColorType::Grayscale => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
        ColorType::Indexed => return Err(KitError::bad_request("invalid PNG: unexpanded palette")),
    };
    if info.bit_depth != png::BitDepth::Eight {
        return Err(KitError::bad_request("invalid PNG: unsupported bit depth"));
    }
    let row_bytes = width as usize * channels;
    let mut pixels = Vec::with_capacity(width as usize * height as usize);
    for row in buf.chunks(info.line_size).take(height as usize) {
        for px in row[..row_bytes].chunks_exact(channels) {
            let (gray, alpha) = match px {
                [g] => (u32::from(*g), 255),
                [g, a] => (u32::from(*g), u32::from(*a)),
                [r, g, b] => (luma(*r, *g, *b), 255),
                [r, g, b, a] => (luma(*r, *g, *b), u32::from(*a)),
                _ => unreachable!("chunks_exact of 1..=4"),
            };
            // Over white: gray * a + 255 * (1 - a), rounded.
            let over_white = (gray * alpha + 255 * (255 - alpha) + 127) / 255;
            pixels.push(over_white as u8);
        }
    }
    Ok(GrayImage {
        width,
        height,
        pixels,
    })
}

fn luma(r: u8, g: u8, b: u8) -> u32 {
    (299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b) + 500) / 1000
}

impl GrayImage {
    /// Resamples to `out_w` × `out_h` by area averaging: each output pixel is the
    /// mean of the source area it covers, partial source pixels weighted by the
    /// fraction covered. Values stay in 0.0..=255.0. Row-major.
    pub fn resize_area(&self, out_w: usize, out_h: usize) -> Vec<f32> {
        let (w, h) = (self.width as usize, self.height as usize);
        if w == 0 || h == 0 || out_w == 0 || out_h == 0 {
            return vec![255.0; out_w * out_h];
        }
        let xs = area_weights(w, out_w);
        let ys = area_weights(h, out_h);
        let mut out = Vec::with_capacity(out_w * out_h);
        for wy in &ys {
            for wx in &xs {
                let mut sum = 0.0f64;
                let mut total = 0.0f64;
                for &(y, fy) in wy {
                    let row = &self.pixels[y * w..(y + 1) * w];
                    for &(x, fx) in wx {
                        let f = fx * fy;
                        sum += f * f64::from(row[x]);
                        total += f;
                    }
                }
                out.push((sum / total) as f32);
            }
        }
        out
    }
}

/// For each of `n_out` cells spanning `n_in` source pixels: the source pixels it
/// overlaps and the overlap length of each (in source pixels).
fn area_weights(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f64)>> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let (start, end) = (o as f64 * scale, (o + 1) as f64 * scale);
            let first = start.floor() as usize;
            let last = (end.ceil() as usize).min(n_in);
            (first..last)
                .filter_map(|i| {
                    let overlap = end.min(i as f64 + 1.0) - start.max(i as f64);
                    (overlap > 1e-12).then_some((i, overlap))
                })
                .collect()
        })
        .collect()
}
