"""This machine as a new device: calibrate on ~10 measured models, predict CNNs and transformers.

    python scripts/benchmark_local_device.py --json results/local_device.json

The held-out "new device" is this machine's CPU under ONNX Runtime, 1 thread, full graph
optimisation; no checkpoint ever trains on it. Test models come from the generator's test
seed (CNNs and transformers at varied resolutions and sequence lengths), all measured here
(cached in a CSV with provenance; --remeasure to redo). Cases, each over --seeds draws:
  (a) calibrate on 10 CNNs, predict the other CNNs;
  (b) the same calibration, predict all transformers;
  (c) calibrate on 5 CNNs + 5 transformers, predict the rest.
Baselines in the same run: MACs rank, a per-device linear fit on MACs/params/memory/depth.
`--valid zoo2/epyc-torch-1t` runs the same cases on a meta-valid model-set device (for
choosing training settings without looking at the test device).
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np

from predictor.api import Predictor
from predictor.evaluation import (
    linear_fit_baseline,
    macs_baseline,
    metrics,
    predictor_fn,
    summarise,
)
from predictor.graph import extract_graph
from predictor.graph_store import GraphStore

TEST_SEED = 20_261_126  # never used for training data
CACHE = Path("datasets/cache/local_device")


# Runtimes the test models can be measured under. "ort-1t" is the held-out test device;
# "torch-cuda" (PyTorch eager on this machine's GPU, batch 1) is a second unseen device for
# checkpoints that never trained on GPU model-set measurements.
RUNTIMES = ("ort-1t", "torch-cuda")


def measured_models(n_cnn: int, n_transformer: int, remeasure: bool, max_seconds: float,
                    runtime: str = "ort-1t", measure_only: bool = False
                    ) -> tuple[list[dict], list[str]]:
    """(rows {model, kind, latency_ms, ...}, spec names) of the test models, measured here."""
    from predictor.generator import sample_specs, write_models
    from predictor.measure import SpeedProbe, measure_many, measure_onnx, speed_probe_for
    from predictor.measurements import provenance, read_measurements_csv, write_measurements_csv
    from predictor.model_sets import TRAINING_CONFIGS, measure_spec

    specs = (sample_specs(TEST_SEED, n_cnn, kinds=("cnn",))
             + sample_specs(TEST_SEED, n_transformer, kinds=("transformer",)))
    folder = CACHE / f"seed{TEST_SEED}"
    # rows name the ONNX files; a torch run times the modules and needs no export
    paths = (write_models(specs, folder) if runtime == "ort-1t" or not measure_only
             else [folder / f"{s.name}.onnx" for s in specs])
    prefix = "ort-1thread-all" if runtime == "ort-1t" else runtime
    csv = folder / f"{prefix}-{n_cnn}cnn-{n_transformer}tf.csv"
    if csv.exists() and not remeasure:
        rows, _ = read_measurements_csv(csv)
    elif runtime == "ort-1t":
        measured, probe_ms = measure_many(
            paths, partial(measure_onnx, threads=1, graph_optimization="all",
                           max_seconds=max_seconds),
            probe=SpeedProbe(threads=1), desc="measure (ORT, 1 thread)")
        write_measurements_csv(csv, measured, provenance("onnxruntime", "cpu", 1, None, "all",
                                                         speed_probe_ms=probe_ms))
        rows, _ = read_measurements_csv(csv)
    else:
        config = TRAINING_CONFIGS[runtime]
        measured, _ = measure_many(
            list(zip(specs, paths, strict=True)),
            lambda sp: measure_spec(sp[0], config, max_seconds=max_seconds, name=sp[1].name),
            probe=speed_probe_for(config.backend, config.device), desc="measure (torch, cuda)")
        write_measurements_csv(csv, measured, provenance("torch", "cuda", None, 1, "all",
                                                         runtime_config=runtime))
        rows, _ = read_measurements_csv(csv)
    kinds = {s.name: s.kind for s in specs}
    for row in rows:
        row["kind"] = kinds[Path(row["model"]).stem]
    return rows, [s.name for s in specs]


def valid_models(name: str) -> tuple[list[dict], GraphStore]:
    """(rows {model, kind, latency_ms}, graphs) of a model-set device, "SET/DEVICE"."""
    from predictor.model_sets import load_model_set_task, model_set_specs, model_set_store

    if "/" not in name:
        raise SystemExit(f"--valid takes SET/DEVICE, e.g. zoo2/epyc-torch-1t; got {name!r}")
    set_name, device = name.split("/", 1)
    specs = model_set_specs(set_name)
    task = load_model_set_task(set_name, device)
    if task.pool.size != len(specs):
        raise SystemExit(f"{name}: {len(specs) - task.pool.size} models were not measured")
    rows = [{"model": s.name, "kind": s.kind, "latency_ms": float(t)}
            for s, t in zip(specs, task.latency_ms, strict=True)]
    return rows, model_set_store(set_name)


def run(args: argparse.Namespace) -> dict:
    predictor = Predictor.load(args.checkpoint)
    if args.valid:
        rows, store = valid_models(args.valid)
    else:
        rows, _ = measured_models(args.cnns, args.transformers, args.remeasure, args.max_seconds,
                                  args.runtime)
        store = GraphStore.from_graphs([extract_graph(r["model"]) for r in rows])
    latency = np.array([r["latency_ms"] for r in rows])
    kind = np.array([r["kind"] for r in rows])
    cnn, tf = np.flatnonzero(kind == "cnn"), np.flatnonzero(kind == "transformer")
    known = predictor.known_devices()
    methods = {
        "latpred+auto": predictor_fn(predictor.model, "auto", known=known),
        "latpred": predictor_fn(predictor.model, "amortised"),
        "latpred+nearest": predictor_fn(predictor.model, "nearest", known=known),
        "latpred+ft20": predictor_fn(predictor.model, "finetune"),
        "macs": macs_baseline,
        "linear": linear_fit_baseline,
    }
    cases = {"a: 10 CNN -> CNN": [], "b: 10 CNN -> transformer": [],
             "c: 5+5 -> rest": []}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        sup_a = rng.choice(cnn, 10, replace=False)
        sup_c = np.concatenate([rng.choice(cnn, 5, replace=False), rng.choice(tf, 5, replace=False)])
        cases["a: 10 CNN -> CNN"].append((sup_a, np.setdiff1d(cnn, sup_a)))
        cases["b: 10 CNN -> transformer"].append((sup_a, tf))
        cases["c: 5+5 -> rest"].append((sup_c, np.setdiff1d(np.arange(len(rows)), sup_c)))
    results: dict = {c: {} for c in cases}
    raw: dict = {}
    for case, draws in cases.items():
        for name, fn in methods.items():
            runs = []
            for i, (support, test) in enumerate(draws):
                pred = fn(store, support, latency[support], test)
                runs.append(metrics(pred, latency[test]))
                if i == 0:
                    raw.setdefault(case, {})[name] = (pred, latency[test])
            results[case][name] = summarise(runs)
    return {"results": results, "raw": raw, "models": len(rows), "cnns": int(cnn.size),
            "transformers": int(tf.size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cnns", type=int, default=100)
    parser.add_argument("--transformers", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=2.0,
                        help="timing budget per model")
    parser.add_argument("--remeasure", action="store_true")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--valid", metavar="SET/DEVICE",
                        help="run the cases on a meta-valid model-set device instead (e.g. "
                             "zoo2/epyc-torch-1t): for model selection, never the test device")
    parser.add_argument("--runtime", choices=RUNTIMES, default="ort-1t",
                        help="the held-out device: this CPU under ONNX Runtime 1 thread "
                             "(default), or this machine's GPU under torch eager")
    parser.add_argument("--measure-only", action="store_true",
                        help="measure (and cache) the test models, then stop")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    start = time.time()
    if args.measure_only:
        measured_models(args.cnns, args.transformers, args.remeasure, args.max_seconds,
                        args.runtime, measure_only=True)
        print(f"measured in {time.time() - start:.1f} s")
        return
    out = run(args)
    methods = list(next(iter(out["results"].values())))
    where = (f"valid device {args.valid}" if args.valid else
             "This CPU, ONNX Runtime 1 thread" if args.runtime == "ort-1t" else
             "This GPU, torch eager, batch 1")
    print(f"\n## {where}: {out['cnns']} CNNs, {out['transformers']} "
          f"transformers, {args.seeds} seeds\n")
    for metric, fmt in (("spearman", ".3f"), ("mape", ".1f"), ("within10", ".1f")):
        print(f"\n{metric} (mean over seeds)\n")
        print("| case | " + " | ".join(methods) + " |")
        print("|---|" + "---|" * len(methods))
        for case, per in out["results"].items():
            print(f"| {case} | " + " | ".join(f"{per[m][metric]['mean']:{fmt}}" for m in methods)
                  + " |")
    print(f"\nseconds: {time.time() - start:.1f}")
    if args.json:
        report = {k: v for k, v in out.items() if k != "raw"}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        plot(out["raw"], "latpred+auto", args.json.with_suffix(".png"), where)
        print(f"wrote {args.json} and {args.json.with_suffix('.png')}")


def plot(raw: dict, method: str, path: Path, where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(raw), figsize=(4 * len(raw), 4), squeeze=False)
    for ax, (case, per) in zip(axes.flat, raw.items(), strict=True):
        pred, true = per[method]
        ax.loglog(true, pred, ".", ms=4, alpha=0.6)
        lo, hi = min(true.min(), pred.min()), max(true.max(), pred.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(case, fontsize=9)
        ax.set_xlabel("measured ms")
        ax.set_ylabel("predicted ms")
    fig.suptitle(f"{where}, {method}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
