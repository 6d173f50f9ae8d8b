//! The gather-before-dequantise rewrite on the real int8 MiniLM
//! (models/embed/model.onnx): the engine gives tract's own answer, bit for
//! bit, without dequantising the whole word-embedding table on every run.
//!
//! Latency, plain tract against the kit's engine (release, one thread):
//!   cargo test -p edgeinfer-kit --target x86_64-unknown-linux-gnu --release \
//!     --test gather -- --ignored --nocapture

use std::io::Cursor;
use std::time::Instant;

use kit::engine::{Engine, TractEngine, TractOptions};
use kit::tensor::Tensor as KitTensor;
use tract_onnx::prelude::*;

const MODEL: &[u8] = include_bytes!("../../../models/embed/model.onnx");
const OPTIONS: TractOptions = TractOptions {
    ignore_value_info: true,
    input_shapes: &[],
};

/// `[CLS] w w ... [SEP]`, `len` tokens.
fn ids(len: usize) -> Vec<i64> {
    (0..len)
        .map(|i| match i {
            0 => 101,
            i if i == len - 1 => 102,
            i => 1000 + (i as i64 * 7919) % 29000,
        })
        .collect()
}

fn kit_inputs(ids: &[i64]) -> Vec<KitTensor> {
    let shape = vec![1, ids.len()];
    vec![
        KitTensor::new("input_ids", shape.clone(), ids.to_vec()).unwrap(),
        KitTensor::new("attention_mask", shape.clone(), vec![1i64; ids.len()]).unwrap(),
        KitTensor::new("token_type_ids", shape, vec![0i64; ids.len()]).unwrap(),
    ]
}

/// The model as tract optimises it by itself, without the rewrite.
fn plain_tract() -> std::sync::Arc<TypedRunnableModel> {
    tract_onnx::onnx()
        .with_ignore_value_info(true)
        .model_for_read(&mut Cursor::new(MODEL))
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap()
}

fn run_plain(plan: &std::sync::Arc<TypedRunnableModel>, ids: &[i64]) -> Vec<f32> {
    let t = |v: Vec<i64>| Tensor::from_shape(&[1, v.len()], &v).unwrap().into_tvalue();
    let out = plan
        .run(tvec![
            t(ids.to_vec()),
            t(vec![1; ids.len()]),
            t(vec![0; ids.len()])
        ])
        .unwrap();
    let out = out[0].try_as_plain_ram().unwrap();
    out.as_slice::<f32>().unwrap().to_vec()
}

fn run_engine(engine: &TractEngine, ids: &[i64]) -> Vec<f32> {
    let out = engine.run(kit_inputs(ids)).unwrap();
    out[0].data.as_f32().unwrap().to_vec()
}

#[test]
fn minilm_with_the_rewrite_equals_plain_tract_bit_for_bit() {
    let plain = plain_tract();
    let engine = TractEngine::from_onnx_with(MODEL, OPTIONS).unwrap();
    for len in [2, 9, 57] {
        let ids = ids(len);
        let (want, got) = (run_plain(&plain, &ids), run_engine(&engine, &ids));
        assert_eq!(got.len(), len * 384);
        assert!(
            got.iter()
                .zip(&want)
                .all(|(g, w)| g.to_bits() == w.to_bits()),
            "{len} tokens: the rewrite changed the output"
        );
    }
}

fn median_ms(mut f: impl FnMut(), runs: usize) -> f64 {
    for _ in 0..5 {
        f();
    }
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

#[test]
#[ignore = "a benchmark: run with --release -- --ignored --nocapture"]
fn minilm_latency() {
    let plain = plain_tract();
    let engine = TractEngine::from_onnx_with(MODEL, OPTIONS).unwrap();
    for len in [10, 17, 100] {
        let ids = ids(len);
        let before = median_ms(|| drop(run_plain(&plain, &ids)), 50);
        let after = median_ms(|| drop(run_engine(&engine, &ids)), 50);
        println!(
            "MiniLM-L6 int8, batch 1, {len} tokens: plain tract {before:.2} ms, kit engine (gather first) {after:.2} ms"
        );
    }
}
