"""Stop 43: how far one runtime's per-model latencies move between days on this VM, and
what that allows issue 6's cases. zoo8 (240 CNNs, 160 transformers) under torch 1 thread
(a selection runtime): the committed table (timed 2026-11-28) against two passes timed
today back to back (`model_sets.measure_device` into a scratch root; drift-corrected as
every table is). The "yesterday oracle" knows every model's latency in the committed
table and fits log(today) = log(table) + c on the 10 calibration models of issue 6's
cases (20 draws), then predicts the rest.

    python results/valid/stop43/retest_oracle.py datasets/model_sets/zoo8/epyc-torch-1t.csv \
        results/valid/stop43/zoo8_torch-1t_pass1.csv results/valid/stop43/zoo8_torch-1t_pass2.csv
"""
import sys

import numpy as np

from predictor.measurements import read_measurements_csv
from predictor.model_sets import model_set_specs


def load(path: str) -> dict[str, float]:
    rows, _ = read_measurements_csv(path)
    return {str(r["model"]).split("/")[-1].removesuffix(".onnx"): r["latency_ms"] for r in rows}


def spread(x: dict, y: dict, keys: list[str], label: str) -> None:
    d = np.log([y[k] for k in keys]) - np.log([x[k] for k in keys])
    r = d - np.median(d)
    print(f"{label:44s} median ratio {np.exp(np.median(d)):.3f}  per-model MAPE "
          f"{100 * np.mean(np.abs(np.exp(r) - 1)):4.1f} %  within ±10 % "
          f"{100 * np.mean(np.abs(np.exp(r) - 1) <= 0.1):3.0f} %")


def oracle(known: dict, today: dict, keys: list[str], kind: np.ndarray, label: str) -> None:
    x = np.log([known[k] for k in keys])
    y = np.log([today[k] for k in keys])
    cnn, tf = np.flatnonzero(kind == "cnn"), np.flatnonzero(kind == "transformer")
    out = {"a": [], "b": [], "c": []}
    for seed in range(20):  # the draws of results/valid/stop38/R/exp_auto.py
        rng = np.random.default_rng(seed)
        sa = rng.choice(cnn, 10, replace=False)
        sc = np.concatenate([rng.choice(cnn, 5, replace=False), rng.choice(tf, 5, replace=False)])
        for case, sup, test in (("a", sa, np.setdiff1d(cnn, sa)), ("b", sa, tf),
                                ("c", sc, np.setdiff1d(np.arange(len(keys)), sc))):
            pred = x[test] + np.mean(y[sup] - x[sup])
            err = np.exp(pred - y[test]) - 1
            out[case].append((100 * np.mean(np.abs(err)), 100 * np.mean(np.abs(err) <= 0.1)))
    print(f"{label:44s} " + "  ".join(
        f"{c}: MAPE {np.mean(v, axis=0)[0]:4.1f} % within ±10 % {np.mean(v, axis=0)[1]:3.0f} %"
        for c, v in out.items()))


table, pass1, pass2 = (load(p) for p in sys.argv[1:4])
keys = sorted(table)
kinds = {s.name: s.kind for s in model_set_specs("zoo8")}
kind = np.array([kinds[k] for k in keys])
spread(pass1, pass2, keys, "today, pass 1 -> pass 2")
spread(table, pass1, keys, "table (2026-11-28) -> today, pass 1")
spread(table, pass2, keys, "table (2026-11-28) -> today, pass 2")
oracle(pass1, pass2, keys, kind, "oracle knowing pass 1, predicting pass 2")
oracle(table, pass1, keys, kind, "oracle knowing the table, predicting pass 1")
oracle(table, pass2, keys, kind, "oracle knowing the table, predicting pass 2")
