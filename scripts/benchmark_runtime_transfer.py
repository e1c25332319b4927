"""How predictable is a new runtime from 10 measurements? The predictor against an oracle
that knows every model's latency under the five training runtimes of the same CPU.

    python scripts/benchmark_runtime_transfer.py [--draws 10] [--json results/runtime_transfer.json]

For each model set of generated CNNs and transformers (zoo1, zoo2, zoo8) and each runtime
no shipped checkpoint trained on (torch 1 thread, OpenVINO 1 / 2 threads), each draw
times 10 random models and predicts the rest:
- latpred+auto: the shipped predictor adapted on the 10 (what a user gets);
- oracle ridge: a ridge fit (lambda 0.1, on centred logs) of the runtime's log-latency on
  the same model's measured log-latencies under ORT 2 threads / ORT unoptimised 1 and 2
  threads / ORT basic 2 threads / torch 2 threads, fitted on the 10;
- oracle nearest: the single training runtime whose log-linear fit on the 10 is best.
The oracles use measurements of every predicted model under five other runtimes, which no
user has: they bound how much of a model's cost on a new runtime its costs elsewhere
explain. The held-out test runtime (ORT 1 thread) is not used: no set was timed under it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from predictor.api import Predictor
from predictor.evaluation import metrics, predictor_fn, summarise
from predictor.model_sets import load_model_set_task, model_set_store

SETS = ("zoo1", "zoo2", "zoo8")
TARGETS = ("epyc-torch-1t", "epyc-ov-1t", "epyc-ov-2t")
SOURCES = ("epyc-ort-2t", "epyc-ort-noopt-1t", "epyc-ort-noopt-2t", "epyc-ort-basic-2t",
           "epyc-torch-2t")
RIDGE = 0.1
SHOTS = 10


def oracle_ridge(sources: np.ndarray, target: np.ndarray, support: np.ndarray,
                 query: np.ndarray) -> np.ndarray:
    """Predicted ms of `query` from a ridge fit of log target on log sources (n, r)."""
    x, y = np.log(sources), np.log(target)
    mean_x, mean_y = x[support].mean(0), y[support].mean()
    xc = x[support] - mean_x
    w = np.linalg.solve(xc.T @ xc + RIDGE * np.eye(x.shape[1]), xc.T @ (y[support] - mean_y))
    return np.exp(mean_y + (x[query] - mean_x) @ w)


def oracle_nearest(sources: np.ndarray, target: np.ndarray, support: np.ndarray,
                   query: np.ndarray) -> np.ndarray:
    """The best single source runtime's log-linear fit on the support."""
    x, y = np.log(sources), np.log(target)
    best = None
    for j in range(x.shape[1]):
        design = np.c_[np.ones(support.size), x[support, j]]
        w, *_ = np.linalg.lstsq(design, y[support], rcond=None)
        err = float(np.mean((design @ w - y[support]) ** 2))
        if best is None or err < best[0]:
            best = (err, j, w)
    _, j, w = best
    return np.exp(w[0] + w[1] * x[query, j])


def run(args: argparse.Namespace) -> dict:
    predictor = Predictor.load(args.checkpoint)
    auto = predictor_fn(predictor.model, "auto", known=predictor.known_devices())
    out: dict = {}
    for name in SETS:
        store = model_set_store(name, progress=False)
        sources = np.stack([load_model_set_task(name, s).latency_ms for s in SOURCES], axis=1)
        for target in TARGETS:
            latency = load_model_set_task(name, target).latency_ms
            runs: dict[str, list] = {"latpred+auto": [], "oracle ridge": [],
                                     "oracle nearest": []}
            for draw in range(args.draws):
                order = np.random.default_rng(draw).permutation(latency.size)
                support, query = np.sort(order[:SHOTS]), np.sort(order[SHOTS:])
                runs["latpred+auto"].append(metrics(
                    auto(store, support, latency[support], query), latency[query]))
                runs["oracle ridge"].append(metrics(
                    oracle_ridge(sources, latency, support, query), latency[query]))
                runs["oracle nearest"].append(metrics(
                    oracle_nearest(sources, latency, support, query), latency[query]))
            out[f"{name}/{target}"] = {m: summarise(r) for m, r in runs.items()}
            print(f"{name}/{target}: done", flush=True)
    return out


def report(out: dict) -> None:
    methods = list(next(iter(out.values())))
    for key, title in (("mape", "MAPE %"), ("within10", "within ±10 % (%)"),
                       ("spearman", "Spearman")):
        print(f"\n{title}, mean over draws of {SHOTS} random models\n")
        print("| set / runtime | " + " | ".join(methods) + " |")
        print("|---" * (len(methods) + 1) + "|")
        for cell, results in out.items():
            print(f"| {cell} | " + " | ".join(f"{results[m][key]['mean']:.3g}"
                                             for m in methods) + " |")
        means = [np.mean([r[m][key]["mean"] for r in out.values()]) for m in methods]
        print("| mean | " + " | ".join(f"{v:.3g}" for v in means) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=Path("results/runtime_transfer.json"))
    args = parser.parse_args()
    start = time.time()
    out = run(args)
    report(out)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"\nseconds: {time.time() - start:.0f}; wrote {args.json}")


if __name__ == "__main__":
    main()
