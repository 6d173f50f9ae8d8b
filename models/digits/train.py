#!/usr/bin/env python3
"""Train the bundled `digits` model and export it to ONNX.

Reproduces models/digits/model.onnx and models/digits/heldout.json:

  * data: sklearn.datasets.load_digits() (bundled with scikit-learn, no
    download): 1797 8x8 images, pixel values 0..16, labels 0..9;
  * split: 75/25, stratified, random_state=0;
  * model: MLPClassifier(hidden_layer_sizes=(32,), random_state=0,
    max_iter=1000) on the raw pixel values (no scaler);
  * export: skl2onnx, input `input` float32 [N,64], options zipmap=False so the
    graph has no ZipMap; outputs `label` int64 [N] and `probabilities`
    float32 [N,10];
  * post-processing: skl2onnx maps ArgMax to the class label with
    ai.onnx.ml ArrayFeatureExtractor(classes, argmax), which tract does not
    implement; it is replaced by the equivalent standard
    Gather(classes, argmax, axis=0) and the ai.onnx.ml opset import is dropped,
    so the graph uses only the default ONNX domain.

Prints the held-out accuracy and fails if it is below 95 %.

Training is deterministic for a fixed set of library versions
(models/requirements.txt) but not necessarily bit-identical across versions,
so the sha256 recorded in SOURCE.md is that of the committed file; running this
script with other versions gives an equivalent, not identical, model.

Usage:  python models/digits/train.py [--out-dir models/digits] [--check]
  --check  also compare the sha256 of the written files with SOURCE.md's.
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0
HIDDEN = (32,)
TARGET_OPSET = 17
MIN_ACCURACY = 0.95


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def recorded_hashes():
    """sha256s listed in SOURCE.md lines of the form `| file | `hex` |`."""
    out = {}
    with open(os.path.join(HERE, "SOURCE.md")) as f:
        for line in f:
            cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            if len(cells) >= 2 and len(cells[1]) == 64:
                out[cells[0]] = cells[1]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=HERE)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    digits = load_digits()
    X = digits.data.astype(np.float32)  # [1797, 64], values 0..16
    y = digits.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=SEED
    )

    clf = MLPClassifier(hidden_layer_sizes=HIDDEN, max_iter=1000, random_state=SEED)
    clf.fit(X_train, y_train)
    sk_acc = float((clf.predict(X_test) == y_test).mean())

    onx = convert_sklearn(
        clf,
        name="digits_mlp",
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": TARGET_OPSET, "ai.onnx.ml": 3},
    )
    # ArrayFeatureExtractor(X=classes[10], Y=argmax[N,1]) -> classes[argmax],
    # shape [N,1]: exactly Gather(classes, argmax, axis=0).
    for node in onx.graph.node:
        if node.op_type == "ArrayFeatureExtractor" and node.domain == "ai.onnx.ml":
            node.op_type = "Gather"
            node.domain = ""
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("axis", 0))
    assert all(n.domain == "" for n in onx.graph.node)
    keep = [o for o in onx.opset_import if o.domain not in ("ai.onnx.ml",)]
    del onx.opset_import[:]
    onx.opset_import.extend(keep)
    onnx.checker.check_model(onx, full_check=True)
    # Fixed metadata so the bytes do not depend on the machine or time.
    onx.producer_name = "skl2onnx"
    onx.doc_string = ""
    names = {n.op_type for n in onx.graph.node}
    assert "ZipMap" not in names, names
    model_path = os.path.join(args.out_dir, "model.onnx")
    onnx.save_model(onx, model_path)

    # Check with ONNX Runtime (the reference runtime).
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    assert out_names == ["label", "probabilities"], out_names
    label, proba = sess.run(None, {"input": X_test})
    assert proba.shape == (len(X_test), 10)
    acc = float((label == y_test).mean())
    assert abs(acc - sk_acc) < 1e-9, (acc, sk_acc)

    heldout = [
        {"pixels": [float(v) for v in row], "label": int(lab)}
        for row, lab in zip(X_test, y_test)
    ]
    heldout_path = os.path.join(args.out_dir, "heldout.json")
    with open(heldout_path, "w") as f:
        f.write("[\n")
        f.write(",\n".join(json.dumps(r, separators=(",", ":")) for r in heldout))
        f.write("\n]\n")

    print(f"ops: {sorted(names)}")
    print(f"train {len(X_train)}  held-out {len(X_test)}")
    print(f"held-out accuracy (onnxruntime {ort.__version__}): {acc:.4f} ({int(round(acc * len(X_test)))}/{len(X_test)})")
    for p in (model_path, heldout_path):
        print(f"{os.path.getsize(p):>9}  {sha256(p)}  {os.path.relpath(p)}")

    if acc < MIN_ACCURACY:
        sys.exit(f"held-out accuracy {acc:.4f} < {MIN_ACCURACY}")

    if args.check:
        want = recorded_hashes()
        bad = False
        for p in (model_path, heldout_path):
            name = os.path.basename(p)
            got = sha256(p)
            if want.get(name) != got:
                bad = True
                print(f"sha256 differs from SOURCE.md for {name}: {got} (recorded {want.get(name)})")
            else:
                print(f"sha256 OK: {name}")
        if bad:
            sys.exit(1)


if __name__ == "__main__":
    main()
