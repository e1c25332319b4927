"""Stop 40's screen of a candidate on its new selection cells (valid runtimes only):
zoo10 (GPT-like decoders on 1-8 tokens) under torch 1 thread, 10 random -> the rest; zoo1
under torch 1 thread at batch 8, calibrated at batch 8 (10 -> rest) and calibrated at
batch 1 on 10 models then predicting the others at batch 8. "auto", 20 draws.

    CKPT=... LATPRED_DEVICE_DIR=... python results/valid/stop40/T/screen.py
"""
import os
import sys

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../../../scripts"))
from benchmark_local_device import valid_models  # noqa: E402

from predictor.adaptation import adapt_named, predict  # noqa: E402
from predictor.api import Predictor  # noqa: E402

p = Predictor.load(os.environ.get("CKPT"))
model, known = p.model, p.known_devices()


def score(sup_rows, sup_store, test_rows, test_store, sup, test):
    y = torch.tensor(np.log([sup_rows[i]["latency_ms"] for i in sup]), dtype=torch.float32)
    st, _ = adapt_named(model, sup_store.batch(sup), y, "auto", finetune_steps=20, lr=0.01,
                        known=known)
    pred = np.exp(predict(model, test_store.batch(test), st).numpy())
    true = np.array([test_rows[i]["latency_ms"] for i in test])
    return 100 * np.mean(np.abs(pred / true - 1)), spearmanr(pred, true).statistic


def cell(label, sup_cell, test_cell):
    sup_rows, sup_store = valid_models(sup_cell)
    test_rows, test_store = valid_models(test_cell)
    n = len(test_rows)
    out = []
    for seed in range(20):
        sup = np.random.default_rng(seed).choice(n, 10, replace=False)
        out.append(score(sup_rows, sup_store, test_rows, test_store, sup,
                         np.setdiff1d(np.arange(n), sup)))
    mape, rho = np.mean(out, axis=0)
    print(f"{label:44s} MAPE {mape:5.1f}  Spearman {rho:.3f}", flush=True)


cell("zoo10 torch 1t, 10 -> rest", "zoo10/epyc-torch-1t", "zoo10/epyc-torch-1t")
cell("zoo1 torch 1t batch 8, 10 -> rest", "zoo1/epyc-torch-1t-b8", "zoo1/epyc-torch-1t-b8")
cell("zoo1 torch 1t, 10 at batch 1 -> rest at 8", "zoo1/epyc-torch-1t", "zoo1/epyc-torch-1t-b8")
