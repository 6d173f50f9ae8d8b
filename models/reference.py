#!/usr/bin/env python3
"""Compute reference outputs for the bundled models with ONNX Runtime, the
reference runtime (onnxruntime==1.32.0, see models/requirements.txt).

Writes, from committed inputs only:
  models/digits/reference.json     20 held-out rows one at a time, plus one batch of the same 20
  models/filetype/reference.json   magika model inputs for each file in models/filetype/samples
  models/filetype/magika_labels.json  what the magika 1.0.3 library itself answers for each sample
  models/embed/reference.json      sentences tokenized with models/embed/tokenizer.json
  models/extra/*/reference.json    extra models (ppocr-cls, silero-vad, squeezenet) on
                                   deterministic synthetic inputs (fixed numpy seeds)

Each reference.json is a list of cases:
  {"name": str,
   "inputs":  {input_name:  {"shape": [...], "datatype": "FP32"|"INT64"|"INT32", "data": [flat]}},
   "outputs": {output_name: {"shape": [...], "datatype": ..., "data": [flat]}},
   ...extra, model-specific keys (see models/README.md)}
Floats are written with 7 significant digits.

Usage:  python models/reference.py [digits|filetype|embed|all|extra|extra/<name>]
        (`all` is the bundled models; `extra` is models/extra/*)
"""
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
DATATYPES = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64", np.dtype("int32"): "INT32"}


def rnd(v):
    """7 significant digits, written as the shortest float that rounds to it."""
    return float(f"{v:.7g}")


def tensor(arr):
    arr = np.asarray(arr)
    dt = DATATYPES[arr.dtype]
    flat = arr.ravel().tolist()
    data = [rnd(v) for v in flat] if dt.startswith("FP") else [int(v) for v in flat]
    return {"shape": list(arr.shape), "datatype": dt, "data": data}


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def write_cases(path, cases):
    # One case per line: compact, and diffs stay readable.
    with open(path, "w") as f:
        f.write("[\n")
        f.write(",\n".join(json.dumps(c, separators=(",", ":"), ensure_ascii=False) for c in cases))
        f.write("\n]\n")
    print(f"wrote {path.relative_to(HERE.parent)} ({len(cases)} cases, {path.stat().st_size} bytes)")


def run_case(sess, name, inputs, **extra):
    out_names = [o.name for o in sess.get_outputs()]
    outs = sess.run(out_names, inputs)
    case = {
        "name": name,
        "inputs": {k: tensor(v) for k, v in inputs.items()},
        "outputs": {k: tensor(v) for k, v in zip(out_names, outs)},
    }
    case.update(extra)
    return case, dict(zip(out_names, outs))


# --------------------------------------------------------------------- digits

def digits():
    d = HERE / "digits"
    heldout = json.loads((d / "heldout.json").read_text())[:20]
    sess = session(d / "model.onnx")
    cases = []
    correct = 0
    for i, row in enumerate(heldout):
        x = np.asarray([row["pixels"]], dtype=np.float32)
        case, outs = run_case(sess, f"heldout_{i:02d}", {"input": x}, expected_label=row["label"])
        correct += int(outs["label"][0] == row["label"])
        cases.append(case)
    x = np.asarray([r["pixels"] for r in heldout], dtype=np.float32)
    case, _ = run_case(sess, "heldout_00_19_batch", {"input": x},
                       expected_label=[r["label"] for r in heldout])
    cases.append(case)
    print(f"digits: {correct}/20 of the first 20 held-out rows correct")
    write_cases(d / "reference.json", cases)


# ------------------------------------------------------------------- filetype

# Where each sample was copied from (a Debian 12 machine with Python 3.11,
# Node.js 20 and a Rust toolchain), and its licence. Test data only.
SAMPLES = {
    "pyyaml-README.md": ("/usr/share/doc/python3-yaml/README.md (Debian python3-yaml 6.0-3+b2)", "MIT"),
    "TESTING.md": ("/usr/share/doc/zstd/TESTING.md (Debian zstd 1.5.4+dfsg2-5)", "BSD-3-Clause OR GPL-2.0"),
    "api.js": ("/usr/share/doc/nodejs/api/assets/api.js (nodejs 20.20.2)", "MIT"),
    "changelog.Debian.gz": ("/usr/share/doc/libelf1/changelog.Debian.gz (Debian libelf1 0.188-2.1)", "GPL-3.0-or-later"),
    "debian.csv": ("/usr/share/distro-info/debian.csv (Debian distro-info-data 0.58+deb12u6)", "ISC"),
    "debian_version": ("/etc/debian_version (Debian base-files, 12.11)", "GPL-2.0-or-later"),
    "decoder.py": ("lib/python3.11/json/decoder.py (CPython 3.11.7 standard library)", "PSF-2.0"),
    "deps.png": ("/usr/share/doc/python3-pip/html/topics/deps.png (Debian python3-pip 23.0.1)", "MIT"),
    "example.yaml": ("/usr/share/doc/python3-yaml/examples/pygments-lexer/example.yaml (Debian python3-yaml 6.0-3+b2)", "MIT"),
    "gai.conf": ("/etc/gai.conf (Debian libc-bin, glibc 2.36)", "LGPL-2.1-or-later"),
    "gunzip.sh": ("/usr/bin/gunzip (Debian gzip 1.12-1, a POSIX shell script)", "GPL-3.0-or-later"),
    "iso_3166-3.json": ("/usr/share/iso-codes/json/iso_3166-3.json (Debian iso-codes 4.15.0-1)", "LGPL-2.1-or-later"),
    "js-flavor-esm.svg": ("/usr/share/doc/nodejs/api/assets/js-flavor-esm.svg (nodejs 20.20.2)", "MIT"),
    "ld.so.cache": ("/etc/ld.so.cache (binary cache written by ldconfig on the build machine)", "n/a (generated data)"),
    "lib.rs": ("src/lib.rs of the aho-corasick 1.1.5 crate", "Unlicense OR MIT"),
    "my-test-package.zip": ("pkg_resources/tests/data/my-test-package-zip/my-test-package.zip (setuptools test data, bundled Python 3.12 of google-cloud-sdk)", "MIT"),
    "node.gif": ("/usr/share/doc/libxslt1-dev/html/node.gif (Debian libxslt1-dev 1.1.35)", "MIT"),
    "shared-mime-info-spec.pdf": ("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf (Debian shared-mime-info 2.2-1)", "GPL-2.0-or-later"),
    "true.elf": ("/usr/bin/true (Debian coreutils 9.1-1, x86-64 ELF)", "GPL-3.0-or-later"),
    "users-and-groups.html": ("/usr/share/doc/base-passwd/users-and-groups.html (Debian base-passwd 3.6.1)", "GPL-2.0"),
    "verify.jpeg": ("share/doc/rust/html/embedded-book/assets/verify.jpeg (Rust stable toolchain docs, The Embedded Rust Book)", "MIT OR Apache-2.0"),
    "wasi-cli.wasm": ("wasi-cli@0.2.0.wasm of the wit-bindgen 0.62.0 crate", "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT"),
    "zconf.h": ("/usr/include/zconf.h (Debian zlib1g-dev 1:1.2.13.dfsg-1)", "Zlib"),
}

# Python's bytes.strip() with no argument strips exactly these (ASCII whitespace).
WHITESPACE = b" \t\n\r\x0b\x0c"


def magika_features(data, cfg):
    """Re-implementation of magika 1.0.3 Magika._extract_features_from_seekable
    (checked against the library below). Returns beg + end: 2048 ints."""
    beg_size, end_size = cfg["beg_size"], cfg["end_size"]
    pad, block = cfg["padding_token"], cfg["block_size"]
    assert cfg["mid_size"] == 0 and not cfg["use_inputs_at_offsets"]
    n = len(data)
    k = min(block, n)
    beg = list(data[:k].lstrip(WHITESPACE)[:beg_size])
    beg = beg + [pad] * (beg_size - len(beg))
    end = data[n - k:].rstrip(WHITESPACE)
    end = list(end[max(0, len(end) - end_size):])
    end = [pad] * (end_size - len(end)) + end
    return beg + end


def magika_route(data, cfg):
    """What magika does before the model: 'empty', 'few_bytes' or 'model'."""
    if len(data) == 0:
        return "empty", None
    if len(data) < cfg["min_file_size_for_dl"]:
        return "few_bytes", None
    feats = magika_features(data, cfg)
    if feats[cfg["min_file_size_for_dl"] - 1] == cfg["padding_token"]:
        return "few_bytes", feats
    return "model", feats


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def filetype():
    from magika import Magika
    from magika.types.seekable import Seekable
    import io

    d = HERE / "filetype"
    cfg = json.loads((d / "config.min.json").read_text())
    kb = json.loads((d / "content_types.json").read_text())
    labels = cfg["target_labels_space"]
    sess = session(d / "model.onnx")
    m = Magika()
    on_disk = sorted(p.name for p in (d / "samples").iterdir())
    assert on_disk == sorted(SAMPLES), set(on_disk) ^ set(SAMPLES)

    cases, table = [], []
    for name in on_disk:
        data = (d / "samples" / name).read_bytes()
        assert len(data) < 200_000, name
        res = m.identify_bytes(data)
        assert res.ok, (name, res)
        res_path = m.identify_path(d / "samples" / name)
        assert (res_path.output.label, res_path.score) == (res.output.label, res.score)
        route, feats = magika_route(data, cfg)
        entry = {
            "file": f"samples/{name}",
            "size": len(data),
            "sha256": sha256(data),
            "origin": SAMPLES[name][0],
            "licence": SAMPLES[name][1],
            "route": route,
            "dl_label": str(res.dl.label),
            "label": str(res.output.label),
            "group": res.output.group,
            "mime_type": res.output.mime_type,
            "description": res.output.description,
            "is_text": res.output.is_text,
            "score": rnd(res.score),
            "overwrite_reason": str(res.prediction.overwrite_reason),
        }
        # The committed content_types.json gives the same group/mime_type.
        assert kb[entry["label"]]["group"] == entry["group"], name
        assert kb[entry["label"]]["mime_type"] == entry["mime_type"], name
        table.append(entry)
        if route != "model":
            continue
        lib = Magika._extract_features_from_seekable(
            Seekable(io.BytesIO(data)), cfg["beg_size"], cfg["mid_size"], cfg["end_size"],
            cfg["padding_token"], cfg["block_size"], cfg["use_inputs_at_offsets"])
        assert feats == lib.beg + lib.end, f"feature re-implementation differs for {name}"
        x = np.asarray([feats], dtype=np.int32)
        case, outs = run_case(sess, name, {"bytes": x})
        probs = outs["target_label"][0]
        idx = int(np.argmax(probs))
        assert labels[idx] == entry["dl_label"], (name, labels[idx], entry["dl_label"])
        assert abs(float(probs[idx]) - res.score) < 1e-6, (name, float(probs[idx]), res.score)
        cases.append(case)
        print(f"  {name:28} {route:9} dl={entry['dl_label']:10} -> {entry['label']:10} {entry['score']:.4f} {entry['overwrite_reason']}")
    for e in table:
        if e["route"] != "model":
            print(f"  {e['file'][8:]:28} {e['route']:9} -> {e['label']}")
    write_cases(d / "reference.json", cases)
    with open(d / "magika_labels.json", "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in table) + "\n]\n")
    print(f"wrote models/filetype/magika_labels.json ({len(table)} files)")


# ---------------------------------------------------------------------- embed

SENTENCES = [
    ("hello", "Hello, world!"),
    ("fox", "The quick brown fox jumps over the lazy dog."),
    ("edgeinfer", "edgeinfer serves ONNX models as WebAssembly HTTP functions."),
    ("guitar", "A man is playing a guitar."),
    ("accents", "Ein Mann spielt Gitarre. Café crème, naïve résumé!"),
    ("cjk", "東京は日本の首都です。"),
    ("whitespace", "   Leading and trailing whitespace,\ttabs\nand newlines   "),
    ("numbers", "Rust 1.95 compiles to wasm32-wasip2; tract ran the model in 4.0 ms."),
    ("empty", ""),
]
# Longer than the tokenizer's truncation (max_length 128 in tokenizer.json).
LONG = ("long_truncated", " ".join(
    f"Sentence number {i} talks about serverless inference at the edge." for i in range(1, 16)))
# Two sentences in one batch, right-padded with [PAD] (id 0, mask 0) to the longer.
BATCH = ("batch_padded", ["A man is playing a guitar.", "The quick brown fox jumps over the lazy dog."])


def mean_pool_normalize(hidden, mask):
    m = mask[..., None].astype(np.float32)
    s = (hidden * m).sum(axis=1)
    n = np.clip(m.sum(axis=1), 1e-9, None)
    e = s / n
    return (e / np.clip(np.linalg.norm(e, axis=1, keepdims=True), 1e-12, None)).astype(np.float32)


def embed():
    from tokenizers import Tokenizer

    d = HERE / "embed"
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.no_padding()  # tokenizer.json pads to 128 by default; we do not pad.
    assert tok.truncation["max_length"] == 128
    sess = session(d / "model.onnx")
    cases = []

    def one(name, texts):
        encs = tok.encode_batch(texts, add_special_tokens=True)
        seq = max(len(e.ids) for e in encs)
        ids = np.zeros((len(texts), seq), dtype=np.int64)
        mask = np.zeros((len(texts), seq), dtype=np.int64)
        types = np.zeros((len(texts), seq), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = e.attention_mask
            types[i, :len(e.ids)] = e.type_ids
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        out_names = [o.name for o in sess.get_outputs()]
        (hidden,) = sess.run(out_names, inputs)
        emb = mean_pool_normalize(hidden, mask)
        single = len(texts) == 1
        case = {
            "name": name,
            "text": texts[0] if single else texts,
            "tokens": encs[0].tokens if single else [e.tokens for e in encs],
            "token_count": len(encs[0].ids) if single else [len(e.ids) for e in encs],
            "inputs": {k: tensor(v) for k, v in inputs.items()},
            "outputs": {"last_hidden_state": tensor(hidden)},
            "embedding": tensor(emb),
        }
        cases.append(case)
        print(f"  {name:16} tokens={case['token_count']}")
        return emb

    embs = {}
    for name, text in SENTENCES:
        embs[name] = one(name, [text])
    one(*LONG[:1], [LONG[1]])
    b = one(BATCH[0], BATCH[1])
    # Padding must not change the pooled embedding.
    assert np.abs(b[0] - embs["guitar"][0]).max() < 1e-4
    assert np.abs(b[1] - embs["fox"][0]).max() < 1e-4
    sim = float(embs["guitar"][0] @ embs["accents"][0])
    print(f"  cos(guitar, accents) = {sim:.4f}; cos(guitar, fox) = {float(embs['guitar'][0] @ embs['fox'][0]):.4f}")
    write_cases(d / "reference.json", cases)


# ---------------------------------------------------------------------- extra
# Extra models for testing `edgeinfer models add`. Their inputs are synthetic
# and deterministic; every FP32 input is rounded to a few decimals first, so
# that the 7-significant-digit JSON gives back exactly the float32 values
# ONNX Runtime was fed (checked by exact_inputs).


def exact_inputs(inputs):
    """Assert that each FP32 input survives the JSON rounding bit for bit."""
    for name, arr in inputs.items():
        if arr.dtype == np.float32:
            back = np.asarray(tensor(arr)["data"], dtype=np.float32).reshape(arr.shape)
            assert np.array_equal(back, arr), f"input {name} does not round-trip through JSON"
    return inputs


def uniform(seed, shape, decimals):
    """numpy default_rng(seed).uniform(-1, 1, shape), rounded to `decimals`, float32."""
    x = np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape)
    return np.round(x, decimals).astype(np.float32)


def ppocr_cls():
    d = HERE / "extra" / "ppocr-cls"
    sess = session(d / "model.onnx")
    (inp,) = sess.get_inputs()
    cases = []
    # rapidocr's cls_image_shape is [3, 48, 192]; pixels are normalised to [-1, 1].
    for seed in range(3):
        x = uniform(seed, (1, 3, 48, 192), 4)
        case, outs = run_case(sess, f"uniform_seed{seed}", exact_inputs({inp.name: x}))
        cases.append(case)
        print(f"  uniform_seed{seed}  p(0), p(180) = {outs[sess.get_outputs()[0].name][0].tolist()}")
    write_cases(d / "reference.json", cases)


VAD_RATE, VAD_FRAME, VAD_CONTEXT = 16000, 512, 64


def vad_blocks(audio, frames_per_block):
    """Frames of 512 samples, each prefixed by the last 64 samples of the
    previous frame (zeros before the first): silero_vad 6.2.3
    sequence_vad.frame_blocks for 16 kHz. audio length must be a multiple of 512."""
    frames = audio.reshape(-1, VAD_FRAME)
    ctx = np.concatenate([np.zeros((1, VAD_CONTEXT), np.float32), frames[:-1, -VAD_CONTEXT:]])
    rows = np.concatenate([ctx, frames], axis=1)
    return [rows[i:i + frames_per_block] for i in range(0, len(rows), frames_per_block)]


def silero_vad():
    d = HERE / "extra" / "silero-vad"
    sess = session(d / "model.onnx")
    assert [i.name for i in sess.get_inputs()] == ["input", "h", "c"]
    n = np.arange(8 * VAD_FRAME)
    t = n / VAD_RATE
    rng = np.random.default_rng(0)
    # A voiced-like 16 kHz signal: 150 Hz with 7 harmonics (amplitude 0.3/k),
    # 4 Hz amplitude envelope, plus Gaussian noise (sd 0.02); then 0.01-sd noise alone.
    voiced = (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) * sum(
        0.3 / k * np.sin(2 * np.pi * 150 * k * t) for k in range(1, 8)) + 0.02 * rng.standard_normal(n.size)
    noise = 0.01 * rng.standard_normal(n.size)
    voiced = np.round(voiced, 4).astype(np.float32)
    noise = np.round(noise, 4).astype(np.float32)
    zero = np.zeros((1, 1, 128), np.float32)
    cases = []
    b0, b1 = vad_blocks(voiced, 4)
    case, outs = run_case(sess, "voiced_frames0_3", exact_inputs({"input": b0, "h": zero, "c": zero}))
    cases.append(case)
    print(f"  voiced_frames0_3  speech_probs = {np.round(outs['speech_probs'], 4).tolist()}")
    # The next block carries the LSTM state (hn, cn) of the previous call,
    # rounded to 6 significant digits (which float32 gives back exactly).
    h, c = (np.vectorize(lambda v: float(f"{v:.6g}"))(outs[k]).astype(np.float32) for k in ("hn", "cn"))
    case, outs = run_case(sess, "voiced_frames4_7", exact_inputs({"input": b1, "h": h, "c": c}))
    cases.append(case)
    print(f"  voiced_frames4_7  speech_probs = {np.round(outs['speech_probs'], 4).tolist()}")
    (b,) = vad_blocks(noise, 8)
    case, outs = run_case(sess, "noise_frames0_7", exact_inputs({"input": b, "h": zero, "c": zero}))
    cases.append(case)
    print(f"  noise_frames0_7   speech_probs = {np.round(outs['speech_probs'], 4).tolist()}")
    write_cases(d / "reference.json", cases)


def squeezenet():
    d = HERE / "extra" / "squeezenet"
    sess = session(d / "model.onnx")
    (inp,) = sess.get_inputs()
    shape = (1, 3, 224, 224)
    cases = []
    # Two decimals keep the 150528 input values short in JSON.
    x = uniform(0, shape, 2)
    case, _ = run_case(sess, "uniform_seed0", exact_inputs({inp.name: x}))
    cases.append(case)
    # A smooth colour gradient: channel c at (y, x) = sin(2*pi*((c+1)*x + (3-c)*y)/224), one decimal.
    c, yy, xx = np.meshgrid(np.arange(3), np.arange(224), np.arange(224), indexing="ij")
    g = np.round(np.sin(2 * np.pi * ((c + 1) * xx + (3 - c) * yy) / 224), 1).astype(np.float32)[None]
    case, _ = run_case(sess, "gradient", exact_inputs({inp.name: g}))
    cases.append(case)
    write_cases(d / "reference.json", cases)


EXTRA = (("extra/ppocr-cls", ppocr_cls), ("extra/silero-vad", silero_vad), ("extra/squeezenet", squeezenet))


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if ort.__version__ != "1.32.0":
        print(f"warning: onnxruntime {ort.__version__}, the reference runtime is 1.32.0", file=sys.stderr)
    known = {"all", "extra", "digits", "filetype", "embed", *(n for n, _ in EXTRA)}
    if which not in known:
        sys.exit(f"unknown model or group {which!r}; one of {sorted(known)}")
    for name, fn in (("digits", digits), ("filetype", filetype), ("embed", embed)):
        if which in (name, "all"):
            print(f"{name}:")
            fn()
    for name, fn in EXTRA:
        if which in (name, "extra"):
            print(f"{name}:")
            fn()

if __name__ == "__main__":
    main()
