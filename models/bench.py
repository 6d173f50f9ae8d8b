#!/usr/bin/env python3
"""ONNX Runtime latency of a model, single-threaded by default
(intra_op_num_threads=--threads, inter_op_num_threads=1), on one case of its
committed reference.json.

  nice -n 10 python models/bench.py                 # the bundled models, a table
  python models/bench.py extra/ppocr-cls --json     # one JSON object per model
  python models/bench.py digits --emit-request r.json   # that case as an OIP request

`--emit-request` writes the same inputs as an Open Inference Protocol request
body, which `edgeinfer bench MODEL --input r.json` sends, so that ONNX Runtime,
native tract and tract in the sandbox time the same work (tests/bench/models.sh).
"""
import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The case timed per model: a typical input (default: the first case).
PICKS = {"digits": "heldout_00", "filetype": "decoder.py", "embed": "edgeinfer"}


def case_of(name):
    cases = json.loads((HERE / name / "reference.json").read_text())
    pick = PICKS.get(name)
    return next((c for c in cases if c["name"] == pick), cases[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=["digits", "filetype", "embed"])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--emit-request", metavar="FILE")
    args = ap.parse_args()
    if args.emit_request:
        (case,) = [case_of(m) for m in args.models]
        inputs = [{"name": k, **v} for k, v in case["inputs"].items()]
        Path(args.emit_request).write_text(json.dumps({"inputs": inputs}))
        return

    import numpy as np
    import onnxruntime as ort

    NP = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "UINT8": np.uint8, "BOOL": np.bool_}

    for name in args.models:
        case = case_of(name)
        feed = {k: np.asarray(v["data"], dtype=NP[v["datatype"]]).reshape(v["shape"]) for k, v in case["inputs"].items()}
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(HERE / name / "model.onnx"), so, providers=["CPUExecutionProvider"])
        for _ in range(20):
            sess.run(None, feed)
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - t) * 1e6)
        p50, p99 = float(np.percentile(times, 50)), float(np.percentile(times, 99))
        shapes = {k: list(v.shape) for k, v in feed.items()}
        if args.json:
            print(json.dumps({"model": name, "case": case["name"], "ort": ort.__version__, "threads": args.threads, "ort_us": {"p50": p50, "p99": p99}}))
        else:
            print(f"{name:18} ort {ort.__version__} {args.threads} thread(s) {shapes}: p50 {p50:.0f} µs, p99 {p99:.0f} µs ({args.runs} runs)")


if __name__ == "__main__":
    main()
