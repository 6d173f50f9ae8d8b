//! Request decoding and validation, run natively:
//! `cargo test -p edgeinfer-kit --target x86_64-unknown-linux-gnu`.

use half::f16;
use kit::KitError;
use kit::decode::{self, GrayImage};
use kit::tensor::{DataType, Tensor, TensorData};
use serde_json::json;

fn bad(r: Result<impl std::fmt::Debug, KitError>, needle: &str) {
    match r {
        Err(KitError::BadRequest(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected a BadRequest containing {needle:?}, got {other:?}"),
    }
}

fn infer(v: serde_json::Value) -> Result<decode::InferRequest, KitError> {
    decode::infer_request(v.to_string().as_bytes())
}

#[test]
fn json_into_a_type() {
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Req {
        text: String,
    }
    assert_eq!(decode::json::<Req>(br#"{"text":"hi"}"#).unwrap().text, "hi");
    bad(decode::json::<Req>(b""), "empty body");
    bad(decode::json::<Req>(b"  \n"), "empty body");
    bad(decode::json::<Req>(b"{\"text\":"), "malformed JSON");
    bad(
        decode::json::<Req>(b"{\"txt\":\"a\"}"),
        "missing field `text`",
    );
    bad(decode::json::<Req>(b"{\"text\":3}"), "invalid type");
}

#[test]
fn raw_bytes() {
    assert_eq!(decode::raw(b"abc").unwrap(), b"abc");
    bad(decode::raw(b""), "empty body");
}

#[test]
fn oip_flat_and_nested_data() {
    let flat = infer(
        json!({"id": "r1", "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32",
        "data": [1, 2, 3, 4, 5, 6.5]}]}),
    )
    .unwrap();
    let nested = infer(
        json!({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32",
        "data": [[1, 2, 3], [4, 5, 6.5]]}]}),
    )
    .unwrap();
    assert_eq!(flat.id.as_deref(), Some("r1"));
    assert_eq!(flat.inputs, nested.inputs);
    assert_eq!(
        flat.inputs[0],
        Tensor::new("x", vec![2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.5]).unwrap()
    );
    assert_eq!(flat.outputs, None);
}

#[test]
fn oip_every_datatype() {
    let cases = [
        ("FP32", json!([1.5, -2]), TensorData::Fp32(vec![1.5, -2.0])),
        (
            "FP64",
            json!([1e300, 2]),
            TensorData::Fp64(vec![1e300, 2.0]),
        ),
        (
            "FP16",
            json!([0.5, 65504]),
            TensorData::Fp16(vec![f16::from_f32(0.5), f16::MAX]),
        ),
        (
            "INT64",
            json!([i64::MIN, i64::MAX]),
            TensorData::Int64(vec![i64::MIN, i64::MAX]),
        ),
        (
            "INT32",
            json!([-2147483648i64, 3.0]),
            TensorData::Int32(vec![i32::MIN, 3]),
        ),
        (
            "INT8",
            json!([-128, 127]),
            TensorData::Int8(vec![-128, 127]),
        ),
        ("UINT8", json!([0, 255]), TensorData::Uint8(vec![0, 255])),
        (
            "BOOL",
            json!([true, 0]),
            TensorData::Bool(vec![true, false]),
        ),
    ];
    for (dt, data, want) in cases {
        let r =
            infer(json!({"inputs": [{"name": "t", "shape": [2], "datatype": dt, "data": data}]}))
                .unwrap_or_else(|e| panic!("{dt}: {e}"));
        assert_eq!(r.inputs[0].data, want, "{dt}");
        assert_eq!(r.inputs[0].datatype(), DataType::parse(dt).unwrap());
        assert_eq!(r.inputs[0].datatype().as_str(), dt);
    }
}

#[test]
fn oip_values_must_fit() {
    let one = |dt: &str, v: serde_json::Value| {
        infer(json!({"inputs": [{"name": "t", "shape": [1], "datatype": dt, "data": [v]}]}))
    };
    bad(one("UINT8", json!(256)), "does not fit UINT8");
    bad(one("UINT8", json!(-1)), "does not fit UINT8");
    bad(one("INT8", json!(128)), "does not fit INT8");
    bad(one("INT32", json!(2147483648u64)), "does not fit INT32");
    bad(one("INT64", json!(u64::MAX)), "does not fit INT64");
    bad(one("INT64", json!(1.5)), "not an integer");
    bad(one("FP32", json!(1e39)), "out of FP32 range");
    bad(one("FP16", json!(70000)), "out of FP16 range");
    bad(one("FP32", json!("1")), "expected a number");
    bad(one("FP32", json!(null)), "expected a number");
    bad(one("BOOL", json!(2)), "expected true or false");
    bad(one("INT32", json!({})), "expected an integer");
    // The message says which element and which input.
    bad(
        infer(
            json!({"inputs": [{"name": "img", "shape": [3], "datatype": "UINT8", "data": [1, 2, 300]}]}),
        ),
        "input 'img': data[2]",
    );
}

#[test]
fn oip_shape_and_count() {
    let t = |shape: serde_json::Value, data: serde_json::Value| {
        infer(json!({"inputs": [{"name": "t", "shape": shape, "datatype": "FP32", "data": data}]}))
    };
    bad(t(json!([2, 2]), json!([1, 2, 3])), "needs 4 values");
    bad(
        t(json!([2, 2]), json!([[1, 2], [3, 4], [5, 6]])),
        "needs 4 values",
    );
    bad(
        t(json!([-1]), json!([1])),
        "shape[0] must be a non-negative integer",
    );
    bad(t(json!("2"), json!([1, 2])), "\"shape\" must be an array");
    bad(t(json!([u64::MAX, u64::MAX]), json!([1])), "too large");
    // A scalar: shape [] holds one value, flat or bare.
    assert_eq!(
        t(json!([]), json!(7)).unwrap().inputs[0].data,
        TensorData::Fp32(vec![7.0])
    );
    assert_eq!(
        t(json!([]), json!([7])).unwrap().inputs[0].data,
        TensorData::Fp32(vec![7.0])
    );
    // Empty tensors are fine at this level (models decide).
    assert_eq!(t(json!([0, 3]), json!([])).unwrap().inputs[0].len(), 0);
}

#[test]
fn oip_request_structure() {
    bad(decode::infer_request(b""), "empty body");
    bad(decode::infer_request(b"{\"inputs\": ["), "malformed JSON");
    bad(infer(json!([1, 2])), "JSON object");
    bad(infer(json!({})), "missing \"inputs\"");
    bad(infer(json!({"inputs": []})), "\"inputs\" is empty");
    bad(infer(json!({"inputs": {}})), "\"inputs\" must be an array");
    bad(
        infer(json!({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]})),
        "missing \"name\"",
    );
    bad(
        infer(json!({"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]})),
        "input 'x': missing \"shape\"",
    );
    bad(
        infer(json!({"inputs": [{"name": "x", "shape": [1], "data": [1]}]})),
        "missing \"datatype\"",
    );
    bad(
        infer(json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]})),
        "missing \"data\"",
    );
    bad(
        infer(json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]})),
        "unsupported datatype \"BYTES\" (supported: FP32, FP64, FP16, INT64, INT32, INT8, UINT8, BOOL)",
    );
    bad(
        infer(json!({"inputs": [{"name": "x", "shape": [1], "datatype": "fp32", "data": [1]}]})),
        "unsupported datatype",
    );
    bad(
        infer(
            json!({"id": 5, "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
        ),
        "\"id\" must be a string",
    );
    bad(
        infer(
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "outputs": [{}]}),
        ),
        "outputs[0]",
    );

    let r = infer(
        json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
        "outputs": [{"name": "y"}], "parameters": {"a": 1}}),
    )
    .unwrap();
    assert_eq!(r.outputs, Some(vec!["y".to_string()]));
}

#[test]
fn tensor_json_round_trip() {
    let t = Tensor::new("p", vec![1, 2], vec![0.25f32, f32::NAN]).unwrap();
    assert_eq!(
        t.to_json(),
        json!({"name": "p", "shape": [1, 2], "datatype": "FP32", "data": [0.25, null]})
    );
    let h = Tensor::new("h", vec![1], vec![f16::from_f32(1.5)]).unwrap();
    assert_eq!(h.to_json()["data"], json!([1.5]));
    assert!(Tensor::new("bad", vec![2, 2], vec![1i64]).is_err());
}

fn encode_png(
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    if let Some(p) = palette {
        enc.set_palette(p.to_vec());
    }
    enc.write_header().unwrap().write_image_data(data).unwrap();
    out
}

#[test]
fn png_to_gray() {
    use png::{BitDepth, ColorType};
    // Grayscale 8-bit.
    let g = decode::png_gray(&encode_png(
        2,
        1,
        ColorType::Grayscale,
        BitDepth::Eight,
        &[0, 200],
        None,
    ))
    .unwrap();
    assert_eq!(
        g,
        GrayImage {
            width: 2,
            height: 1,
            pixels: vec![0, 200]
        }
    );
    // RGB: pure red, green, blue, white → Rec. 601 luma.
    let rgb = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];
    let g = decode::png_gray(&encode_png(
        4,
        1,
        ColorType::Rgb,
        BitDepth::Eight,
        &rgb,
        None,
    ))
    .unwrap();
    assert_eq!(g.pixels, vec![76, 150, 29, 255]);
    // RGBA: black ink fully opaque, fully transparent, half transparent (over white).
    let rgba = [0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 0, 128];
    let g = decode::png_gray(&encode_png(
        3,
        1,
        ColorType::Rgba,
        BitDepth::Eight,
        &rgba,
        None,
    ))
    .unwrap();
    assert_eq!(g.pixels, vec![0, 255, 127]);
    // Gray+alpha.
    let g = decode::png_gray(&encode_png(
        1,
        1,
        ColorType::GrayscaleAlpha,
        BitDepth::Eight,
        &[0, 0],
        None,
    ))
    .unwrap();
    assert_eq!(g.pixels, vec![255]);
    // 16-bit gray keeps the high byte.
    let g = decode::png_gray(&encode_png(
        2,
        1,
        ColorType::Grayscale,
        BitDepth::Sixteen,
        &[0x12, 0x34, 0xff, 0xff],
        None,
    ))
    .unwrap();
    assert_eq!(g.pixels, vec![0x12, 0xff]);
    // 1-bit gray expands to 0/255.
    let g = decode::png_gray(&encode_png(
        8,
        1,
        ColorType::Grayscale,
        BitDepth::One,
        &[0b1010_0000],
        None,
    ))
    .unwrap();
    assert_eq!(g.pixels, vec![255, 0, 255, 0, 0, 0, 0, 0]);
    // Palette.
    let g = decode::png_gray(&encode_png(
        2,
        1,
        ColorType::Indexed,
        BitDepth::Eight,
        &[1, 0],
        Some(&[0, 0, 0, 255, 255, 255]),
    ))
    .unwrap();
    assert_eq!(g.pixels, vec![255, 0]);
}

#[test]
fn png_errors_are_bad_requests() {
    let png = encode_png(
        4,
        4,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[7; 16],
        None,
    );
    assert!(decode::is_png(&png));
    assert!(!decode::is_png(b"{\"pixels\":[]}"));
    bad(decode::png_gray(b"not a png"), "invalid PNG");
    bad(decode::png_gray(&png[..8]), "invalid PNG");
    bad(decode::png_gray(&png[..png.len() - 20]), "invalid PNG");
    let mut corrupt = png.clone();
    let n = corrupt.len();
    corrupt[n - 20] ^= 0xff; // inside the IDAT data or its CRC
    bad(decode::png_gray(&corrupt), "invalid PNG");
}

#[test]
fn area_resize() {
    // 4×4 → 2×2: each output is the mean of a 2×2 block.
    let img = GrayImage {
        width: 4,
        height: 4,
        pixels: vec![
            0, 0, 100, 100, 0, 0, 100, 100, 200, 200, 40, 40, 200, 200, 40, 40,
        ],
    };
    assert_eq!(img.resize_area(2, 2), vec![0.0, 100.0, 200.0, 40.0]);
    // 3×1 → 2×1: cells cover 1.5 source pixels each.
    let img = GrayImage {
        width: 3,
        height: 1,
        pixels: vec![0, 90, 180],
    };
    let out = img.resize_area(2, 1);
    assert!(
        (out[0] - 30.0).abs() < 1e-4 && (out[1] - 150.0).abs() < 1e-4,
        "{out:?}"
    );
    // Identity and upscaling keep values.
    let img = GrayImage {
        width: 2,
        height: 1,
        pixels: vec![10, 20],
    };
    assert_eq!(img.resize_area(2, 1), vec![10.0, 20.0]);
    assert_eq!(img.resize_area(4, 1), vec![10.0, 10.0, 20.0, 20.0]);
}

/// The binary tensor extension: a JSON header, then each binary input's
/// little-endian bytes in input order; JSON and binary inputs can mix.
#[test]
fn oip_binary_tensors() {
    let a: Vec<u8> = [1.5f32, -2.0, 3.25]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let b: Vec<u8> = [7i64, -9].iter().flat_map(|x| x.to_le_bytes()).collect();
    let header = json!({
        "inputs": [
            {"name": "a", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}},
            {"name": "c", "shape": [1], "datatype": "INT32", "data": [4]},
            {"name": "b", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": 16}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": true}}, {"name": "z"}]})
    .to_string();
    let body = [header.as_bytes(), &a, &b].concat();
    let r = decode::infer_request_with(&body, Some(header.len())).unwrap();
    assert_eq!(r.inputs[0].data, TensorData::Fp32(vec![1.5, -2.0, 3.25]));
    assert_eq!(r.inputs[1].data, TensorData::Int32(vec![4]));
    assert_eq!(r.inputs[2].data, TensorData::Int64(vec![7, -9]));
    assert!(r.binary_outputs.contains("y") && !r.binary_outputs.contains("z"));

    // Sizes that do not add up are 400s that say so.
    bad(
        decode::infer_request_with(&body[..body.len() - 1], Some(header.len())),
        "runs past the end",
    );
    let extra = [&body[..], &[0u8; 3]].concat();
    bad(
        decode::infer_request_with(&extra, Some(header.len())),
        "3 bytes of binary data follow",
    );
    bad(
        decode::infer_request_with(&body, Some(body.len() + 1)),
        "has only",
    );
    let odd = header.replace("\"binary_data_size\":12", "\"binary_data_size\":8");
    let body = [odd.as_bytes(), &a[..8], &b].concat();
    bad(
        decode::infer_request_with(&body, Some(odd.len())),
        "needs 3 values, got 2",
    );
}
