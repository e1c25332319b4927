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
choosing training settings without looking at the test device); on a set of one kind
(`zoo3` U-Nets, `zoo4` recurrent models) a single case: calibrate on 10, predict the rest.
`--blocks` takes single layers and blocks from the test seed instead (conv / transposed
conv / resize / pooling blocks as "CNNs", linear / attention / encoder blocks as
"transformers"): what per-layer latency tables hold (`zoo5` trains on other seeds).
`--picked` calibrates on the models `latpred pick` chooses (`Predictor.pick_calibration`)
from a random half of the CNNs (and of the transformers, case c) in each draw: what a
hardware team that lets latpred choose which of its models to time gets.
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
from predictor.model_sets import BENCHMARK_CONFIGS

TEST_SEED = 20_261_126  # never used for training data
CACHE = Path("datasets/cache/local_device")


# Runtimes the test models can be measured under (`model_sets.BENCHMARK_CONFIGS`):
# "ort-1t" is the held-out test device; the others are further devices for these test
# models (their training data are other models), batch 32 on a GPU in no training set.
RUNTIMES = BENCHMARK_CONFIGS
# `--blocks`: single layers and blocks on feature maps and token sequences (the generator's
# opt-in block families) as the "CNNs" and "transformers" of the cases.
BLOCK_FAMILIES = (["cnn_block"], ["seq_block"])


def measured_models(n_cnn: int, n_transformer: int, remeasure: bool, max_seconds: float,
                    runtime: str = "ort-1t", measure_only: bool = False,
                    energy_seconds: float | None = None,
                    measurements: list[Path] | None = None,
                    blocks: bool = False) -> tuple[list[dict], list[str]]:
    """(rows {model, kind, latency_ms, energy_mj, ...}, spec names) of the test models,
    measured here; with `energy_seconds`, energy too (idle and busy windows that long);
    with `measurements`, read from those CSVs instead (see `combined_passes`); with
    `blocks`, single layers and blocks (`BLOCK_FAMILIES`) instead of whole networks."""
    from predictor.energy import ENERGY_SECONDS
    from predictor.generator import sample_specs, write_models
    from predictor.measure import SpeedProbe, measure_many, measure_onnx, speed_probe_for
    from predictor.measurements import provenance, read_measurements_csv, write_measurements_csv
    from predictor.model_sets import measure_spec

    cnn_families, transformer_families = BLOCK_FAMILIES if blocks else (None, None)
    specs = (sample_specs(TEST_SEED, n_cnn, kinds=("cnn",), families=cnn_families)
             + sample_specs(TEST_SEED, n_transformer, kinds=("transformer",),
                            families=transformer_families))
    folder = CACHE / f"seed{TEST_SEED}"
    # rows name the ONNX files; a torch run times the modules and needs no export
    paths = (write_models(specs, folder) if runtime == "ort-1t" or not measure_only
             else [folder / f"{s.name}.onnx" for s in specs])
    prefix = ("ort-1thread-all" if runtime == "ort-1t" else runtime) + ("-blocks" if blocks else "")
    csv = folder / f"{prefix}-{n_cnn}cnn-{n_transformer}tf.csv"
    energy = energy_seconds is not None
    if measurements:
        rows = combined_passes(measurements, paths)
    elif csv.exists() and not remeasure:
        rows, _ = read_measurements_csv(csv)
    elif runtime == "ort-1t":
        measured, probe_ms = measure_many(
            paths, partial(measure_onnx, threads=1, graph_optimization="all",
                           max_seconds=max_seconds, energy=energy,
                           energy_seconds=energy_seconds or ENERGY_SECONDS),
            probe=SpeedProbe(threads=1), desc="measure (ORT, 1 thread)")
        write_measurements_csv(csv, measured, provenance("onnxruntime", "cpu", 1, None, "all",
                                                         speed_probe_ms=probe_ms))
        rows, _ = read_measurements_csv(csv)
    else:
        config = RUNTIMES[runtime]
        measured, _ = measure_many(
            list(zip(specs, paths, strict=True)),
            lambda sp: measure_spec(sp[0], config, max_seconds=max_seconds, energy=energy,
                                    energy_seconds=energy_seconds, name=sp[1].name),
            probe=speed_probe_for(config.backend, config.device, config.threads),
            desc=f"measure ({config.backend}, {config.device}, batch {config.batch})")
        write_measurements_csv(csv, measured, provenance(
            config.backend, config.device, config.threads, config.batch, config.graph_optimization,
            runtime_config=runtime,
            max_seconds=max_seconds, energy_seconds=energy_seconds))
        rows, _ = read_measurements_csv(csv)
    kinds = {s.name: s.kind for s in specs}
    for row in rows:
        row["kind"] = kinds[Path(row["model"]).stem]
    return rows, [s.name for s in specs]


def combined_passes(files: list[Path], paths: list[Path]) -> list[dict]:
    """Rows {model, latency_ms, energy_mj} of the test models (`paths`) from measurement
    CSVs of them, e.g. passes taken on another machine: the geometric mean over the files,
    None where a file lacks the value. Rows name the models by file name."""
    from predictor.measurements import read_measurements_csv

    by_name = {p.name: p for p in paths}
    values: dict[str, dict[str, list]] = {name: {"latency_ms": [], "energy_mj": []}
                                          for name in by_name}
    for file in files:
        rows, _ = read_measurements_csv(file)
        names = {Path(r["model"]).name for r in rows}
        if names != set(by_name):
            raise SystemExit(f"{file}: holds {len(names & set(by_name))} of the "
                             f"{len(by_name)} test models and {len(names - set(by_name))} others")
        for r in rows:
            for column, seen in values[Path(r["model"]).name].items():
                seen.append(r.get(column))

    def mean(seen: list) -> float | None:
        return None if None in seen else float(np.exp(np.mean(np.log(seen))))

    return [{"model": by_name[name], **{c: mean(v) for c, v in columns.items()}}
            for name, columns in values.items()]


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
    return rows, model_set_store(set_name, batch=task.batch_size)


def run(args: argparse.Namespace) -> dict:
    predictor = Predictor.load(args.checkpoint)
    if args.valid:
        rows, store = valid_models(args.valid)
    else:
        rows, _ = measured_models(args.cnns, args.transformers, args.remeasure, args.max_seconds,
                                  args.runtime, measurements=args.measurements,
                                  blocks=args.blocks)
        missing = [r["model"] for r in rows if r.get(args.metric) is None]
        if len(missing) == len(rows):
            raise SystemExit(f"No test model has {args.metric}: measure with --energy-seconds "
                             "on a machine with an energy counter (NVML, RAPL)")
        if missing:  # energy too close to idle to measure
            print(f"{len(missing)} of {len(rows)} models have no {args.metric}; left out")
            rows = [r for r in rows if r.get(args.metric) is not None]
        batch = RUNTIMES[args.runtime].batch
        store = GraphStore.from_graphs([extract_graph(r["model"]).with_batch(batch)
                                        for r in rows])
    latency = np.array([r[args.metric] for r in rows])
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
    one_kind = cnn.size <= 10 or tf.size <= 5  # e.g. zoo3's U-Nets, zoo4's RNNs
    cases = ({"10 -> rest": []} if one_kind else
             {"a: 10 CNN -> CNN": [], "b: 10 CNN -> transformer": [], "c: 5+5 -> rest": []})
    if args.picked:  # the models `latpred pick` chooses, from a random half of each kind
        from predictor.calibration import latency_signatures, pick_calibration_models

        signatures = latency_signatures(predictor, store)

        def choose(rng: np.random.Generator, kind: np.ndarray, n: int) -> np.ndarray:
            pool = rng.choice(kind, kind.size // 2, replace=False)
            return pool[pick_calibration_models(signatures[pool], n)]
    else:
        def choose(rng: np.random.Generator, kind: np.ndarray, n: int) -> np.ndarray:
            return rng.choice(kind, n, replace=False)
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        if one_kind:
            sup = rng.choice(len(rows), 10, replace=False)
            cases["10 -> rest"].append((sup, np.setdiff1d(np.arange(len(rows)), sup)))
            continue
        sup_a = choose(rng, cnn, 10)
        sup_c = np.concatenate([choose(rng, cnn, 5), choose(rng, tf, 5)])
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
    parser.add_argument("--runtime", choices=list(RUNTIMES), default="ort-1t",
                        help="the held-out device: this CPU under ONNX Runtime 1 thread "
                             "(default), or another configuration of this machine, e.g. its "
                             "GPU under torch eager at batch 1 or 32 (torch-cuda, "
                             "torch-cuda-b32)")
    parser.add_argument("--metric", choices=("latency_ms", "energy_mj"), default="latency_ms",
                        help="what to calibrate and predict (energy needs --energy-seconds "
                             "measurements)")
    parser.add_argument("--energy-seconds", type=float, default=None,
                        help="when measuring, also measure energy per inference with idle "
                             "and busy windows this long (NVML on a GPU, RAPL on a CPU)")
    parser.add_argument("--measurements", type=Path, nargs="+", default=None, metavar="CSV",
                        help="the test models' measurements under --runtime, taken earlier "
                             "(e.g. on a GPU machine); several passes are averaged "
                             "(geometric mean)")
    parser.add_argument("--measure-only", action="store_true",
                        help="measure (and cache) the test models, then stop")
    parser.add_argument("--blocks", action="store_true",
                        help="single layers and blocks (conv, transposed conv, resize, "
                             "norms; linear, attention, encoder blocks) from the test seed "
                             "instead of whole networks")
    parser.add_argument("--picked", action="store_true",
                        help="calibrate on the models `latpred pick` chooses from a random "
                             "half of the CNNs (and of the transformers in case c) instead "
                             "of random ones")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    start = time.time()
    if args.measure_only:
        measured_models(args.cnns, args.transformers, args.remeasure, args.max_seconds,
                        args.runtime, measure_only=True, energy_seconds=args.energy_seconds,
                        blocks=args.blocks)
        print(f"measured in {time.time() - start:.1f} s")
        return
    out = run(args)
    methods = list(next(iter(out["results"].values())))
    config = RUNTIMES[args.runtime]
    where = (f"valid device {args.valid}" if args.valid else
             "This CPU, ONNX Runtime 1 thread" if args.runtime == "ort-1t" else
             f"This machine, {config.backend} on {config.device} ({args.runtime}), "
             f"batch {config.batch}")
    if args.metric != "latency_ms":
        where += f", {args.metric}"
    if args.picked:
        where += ", calibration models picked by latpred pick"
    kinds = ("conv blocks", "sequence blocks") if args.blocks else ("CNNs", "transformers")
    print(f"\n## {where}: {out['cnns']} {kinds[0]}, {out['transformers']} "
          f"{kinds[1]}, {args.seeds} seeds\n")
    for metric, fmt in (("spearman", ".3f"), ("mape", ".1f"), ("within10", ".1f")):
        print(f"\n{metric} (mean over seeds)\n")
        print("| case | " + " | ".join(methods) + " |")
        print("|---|" + "---|" * len(methods))
        for case, per in out["results"].items():
            print(f"| {case} | " + " | ".join(f"{per[m][metric]['mean']:{fmt}}" for m in methods)
                  + " |")
    print("\nlatpred+auto MAPE per seed (%)\n")
    for case, per in out["results"].items():
        print(f"- {case}: " + ", ".join(f"{v:.1f}" for v in per["latpred+auto"]["mape"]["per_seed"]))
    print(f"\nseconds: {time.time() - start:.1f}")
    if args.json:
        report = {k: v for k, v in out.items() if k != "raw"}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        unit = "mJ" if args.metric == "energy_mj" else "ms"
        plot(out["raw"], "latpred+auto", args.json.with_suffix(".png"), where, unit)
        print(f"wrote {args.json} and {args.json.with_suffix('.png')}")


def plot(raw: dict, method: str, path: Path, where: str, unit: str = "ms") -> None:
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
        ax.set_xlabel(f"measured {unit}")
        ax.set_ylabel(f"predicted {unit}")
    fig.suptitle(f"{where}, {method}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
