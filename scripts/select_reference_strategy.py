"""Selection evidence: which adaptation strategy a reference-set calibration should use.

    python scripts/select_reference_strategy.py --json results/valid/stop31/reference_strategy/out.json

`latpred calibrate NAME --measure` times the 13-model reference set and adapts the shipped
checkpoint to it. This compares strategies ("auto", "kernelsum+net", ...) for that support
on selection runtimes of this CPU only (torch eager 1 thread, ONNX Runtime 2 threads, ONNX
Runtime unoptimised 1 thread; never the held-out ONNX Runtime 1 thread), predicting:

* the well-known networks of `benchmark_known_models.py`, from the `--reference-csv` files
  (reference set and networks timed in one pass per runtime);
* the 200 generated models of model set zoo1, timed here now under torch 1 thread and ONNX
  Runtime 2 threads (cached in datasets/cache/reference_strategy/), with the reference set
  timed in the same session (`--reference-csv`);
* the ten 1-D CNNs of `select_sequence_unfold.py`, timed here now.

Prints MAPE / Spearman / share within +-10 % per strategy and set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from predictor.api import Predictor
from predictor.evaluation import metrics

REFERENCE_CSV = "results/valid/stop31/reference_unet/measurements_{}.csv"
CACHE = Path("datasets/cache/reference_strategy")
SET_RUNTIMES = ("torch-1t", "ort-2t")


def zoo_models(runtime: str) -> tuple[list, np.ndarray]:
    """(OpGraphs, latencies ms) of model set zoo1 timed under `runtime` here (cached)."""
    import shutil

    from predictor.generator import export_spec
    from predictor.graph import extract_graph
    from predictor.model_sets import (
        TRAINING_CONFIGS,
        load_model_set_task,
        measure_device,
        model_set_specs,
        set_dir,
    )

    root = CACHE / "sets"
    (root / "zoo1").mkdir(parents=True, exist_ok=True)
    shutil.copy(set_dir("zoo1") / "specs.json", root / "zoo1" / "specs.json")
    device = f"here-{runtime}"
    if not (root / "zoo1" / f"{device}.csv").exists():
        measure_device("zoo1", device, TRAINING_CONFIGS[runtime], root=root)
    task = load_model_set_task("zoo1", device, root=root)
    specs = model_set_specs("zoo1", root)
    graphs = [extract_graph(export_spec(specs[i])) for i in task.pool]
    return graphs, np.asarray(task.latency_ms, dtype=float)


def evaluate(predictor: Predictor, ref_graphs: list, ref_ms: list[float], graphs: list,
             measured: np.ndarray, strategies: list[str]) -> dict:
    out = {}
    for strategy in strategies:
        predictor.adapt("candidate", ref_graphs, ref_ms, strategy=strategy)
        pred = predictor.predict(graphs, "candidate")
        out[strategy] = metrics(pred, measured)
    return out


def run(args: argparse.Namespace) -> dict:
    import benchmark_known_models as known
    import select_sequence_unfold as seq

    predictor = Predictor.load()
    files = known.network_files(known.CACHE / "onnx")
    n_refs = len(known.reference_specs())
    ref_files, net_files = files[:n_refs], files[n_refs:]
    ref_graphs = predictor.graphs(ref_files, batch=1)
    net_graphs = predictor.graphs(net_files, batch=1)
    results: dict = {}
    seq_names, seq_paths, seq_times = seq.measure(args.max_seconds)
    seq_graphs = predictor.graphs(seq_paths, batch=1)
    for runtime in ("torch-1t", "ort-2t", "ort-noopt-1t"):
        ms, _ = known.measured(runtime, False, 3.0, [Path(args.reference_csv.format(runtime))])
        ref_ms = [ms[p.stem] for p in ref_files]
        net_ms = np.array([ms[p.stem] for p in net_files])
        results[f"known networks, {runtime}"] = evaluate(
            predictor, ref_graphs, ref_ms, net_graphs, net_ms, args.strategies)
        if runtime in SET_RUNTIMES:
            graphs, measured = zoo_models(runtime)
            results[f"zoo1, {runtime}"] = evaluate(predictor, ref_graphs, ref_ms, graphs,
                                                   measured, args.strategies)
            results[f"1-D CNNs, {runtime}"] = evaluate(
                predictor, ref_graphs, ref_ms, seq_graphs, np.array(seq_times[runtime]),
                args.strategies)
    return results


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="auto,kernelsum+net")
    parser.add_argument("--reference-csv", default=REFERENCE_CSV,
                        help="per-runtime CSV ({} = runtime) of the reference set and networks")
    parser.add_argument("--max-seconds", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.strategies = args.strategies.split(",")
    results = run(args)
    for key in ("mape", "spearman", "within10"):
        print(f"\n{key}\n\n| set | " + " | ".join(args.strategies) + " |")
        print("|---|" + "---|" * len(args.strategies))
        for name, per in results.items():
            print(f"| {name} | " + " | ".join(f"{per[s][key]:.3f}" if key == "spearman"
                                             else f"{per[s][key]:.1f}"
                                             for s in args.strategies) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
