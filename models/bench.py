#!/usr/bin/env python3
"""Median latency of each bundled model on ONNX Runtime, single-threaded
(intra_op_num_threads=1, inter_op_num_threads=1), batch 1, inputs taken from
the committed reference.json files.

Usage:  nice -n 10 python models/bench.py [--runs 300]
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
NP = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32}


def inputs_of(case):
    return {k: np.asarray(v["data"], dtype=NP[v["datatype"]]).reshape(v["shape"]) for k, v in case["inputs"].items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    picks = {"digits": "heldout_00", "filetype": "decoder.py", "embed": "edgeinfer"}
    for name, case_name in picks.items():
        cases = json.loads((HERE / name / "reference.json").read_text())
        case = next(c for c in cases if c["name"] == case_name)
        feed = inputs_of(case)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(HERE / name / "model.onnx"), so, providers=["CPUExecutionProvider"])
        for _ in range(20):
            sess.run(None, feed)
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - t) * 1000)
        shapes = {k: list(v.shape) for k, v in feed.items()}
        print(f"{name:9} ort {ort.__version__} 1 thread, batch 1 {shapes}: median {statistics.median(times):.3f} ms "
              f"(p10 {np.percentile(times, 10):.3f}, p90 {np.percentile(times, 90):.3f}, {args.runs} runs)")


if __name__ == "__main__":
    main()
