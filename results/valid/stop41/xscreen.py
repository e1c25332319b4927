"""Stop 41's screen of cross-batch prediction on selection cells (valid runtimes or valid
model sets only): calibrate on 10 random models at one batch, predict the other models at
another batch of the same runtime; and the same-batch cell for reference. 20 draws.

    CKPT=... LATPRED_DEVICE_DIR=... STRATEGY=auto python results/valid/stop41/xscreen.py

XCELLS=zoo2 screens zoo2's torch 1 thread instead (stop 42).
PROBE=1 rescales the query cell's latencies to the support cell's host speed (ratio of the
CSVs' `speed_probe_ms`): the two were timed on different days, and this VM's speed drifts
(zoo1's batch-8 passes ran 1.28x faster by the probe than its batch-1 passes).
"""
import os
import sys

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../../scripts"))
from benchmark_local_device import valid_models  # noqa: E402

from predictor.adaptation import adapt_named, predict  # noqa: E402
from predictor.api import Predictor  # noqa: E402

p = Predictor.load(os.environ.get("CKPT"))
model, known = p.model, p.known_devices()
strategy = os.environ.get("STRATEGY", "auto")
CELLS = [  # (label, support cell, query cell)
    ("zoo1 torch 1t, 10 at batch 1 -> rest at 8", "zoo1/epyc-torch-1t", "zoo1/epyc-torch-1t-b8"),
    ("zoo1 torch 1t, 10 at batch 8 -> rest at 1", "zoo1/epyc-torch-1t-b8", "zoo1/epyc-torch-1t"),
    ("zoo2 H200, 10 at batch 1 -> rest at 32", "zoo2/h200-torch-cuda", "zoo2/h200-torch-cuda-b32"),
    ("zoo2 H200, 10 at batch 32 -> rest at 1", "zoo2/h200-torch-cuda-b32", "zoo2/h200-torch-cuda"),
    ("zoo1 torch 1t batch 8, 10 -> rest", "zoo1/epyc-torch-1t-b8", "zoo1/epyc-torch-1t-b8"),
]
if os.environ.get("XCELLS") == "zoo2":  # stop 42's extra cells (zoo2's torch 1 thread)
    CELLS = [
        ("zoo2 torch 1t, 10 at batch 1 -> rest at 8", "zoo2/epyc-torch-1t", "zoo2/epyc-torch-1t-b8"),
        ("zoo2 torch 1t, 10 at batch 8 -> rest at 1", "zoo2/epyc-torch-1t-b8", "zoo2/epyc-torch-1t"),
    ]


def probe_ms(cell: str) -> float:
    from predictor.model_sets import load_model_set_task

    return load_model_set_task(*cell.split("/")).speed_probe_ms


def cell(label: str, sup_cell: str, test_cell: str) -> None:
    sup_rows, sup_store = valid_models(sup_cell)
    test_rows, test_store = valid_models(test_cell)
    if os.environ.get("PROBE") and sup_cell != test_cell:
        scale = probe_ms(sup_cell) / probe_ms(test_cell)
        test_rows = [{**r, "latency_ms": r["latency_ms"] * scale} for r in test_rows]
        label += f" (x{scale:.2f})"
    n, out = len(test_rows), []
    for seed in range(20):
        sup = np.random.default_rng(seed).choice(n, 10, replace=False)
        test = np.setdiff1d(np.arange(n), sup)
        y = torch.tensor(np.log([sup_rows[i]["latency_ms"] for i in sup]), dtype=torch.float32)
        st, _ = adapt_named(model, sup_store.batch(sup), y, strategy, finetune_steps=20,
                            lr=0.01, known=known)
        pred = np.exp(predict(model, test_store.batch(test), st).numpy())
        true = np.array([test_rows[i]["latency_ms"] for i in test])
        out.append((100 * np.mean(np.abs(pred / true - 1)),
                    100 * np.mean(np.abs(pred / true - 1) <= 0.1),
                    spearmanr(pred, true).statistic, np.mean(np.log(pred / true))))
    mape, within, rho, bias = np.mean(out, axis=0)
    print(f"{label:52s} {strategy:9s} MAPE {mape:5.1f}  within10 {within:5.1f}  "
          f"Spearman {rho:.3f}  bias {bias:+.2f}", flush=True)


for label, s, t in CELLS:
    cell(label, s, t)
