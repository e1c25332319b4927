"""Repeatability of latency (and energy) measurements on this machine, CPU or GPU.

    python scripts/benchmark_measurement.py --device cuda --backend torch --models 20 \\
        --repeats 3 --energy --json results/gpu_measurement.json

Measures N generated models (half CNNs, half transformers, generator seed --seed) in
--repeats full passes, one after another, with `latpred measure`'s timing and energy
(NVML's total-energy counter on a GPU, with idle power measured just before each model
subtracted; RAPL on a CPU). Prints per model the median over passes and the spread between
passes (coefficient of variation, %), and the rank agreement between passes. Writes the
JSON, one measurement CSV per pass (with provenance) and a PNG of pass 1 vs the others
next to it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr


def measure_passes(args: argparse.Namespace) -> tuple[list, list[list], dict]:
    """(specs, passes[r][i] Measurement, provenance)."""
    from predictor.generator import sample_specs
    from predictor.measure import measure_many, speed_probe_for
    from predictor.measurements import provenance
    from predictor.model_sets import RuntimeConfig, measure_spec

    half = args.models // 2
    specs = (sample_specs(args.seed, args.models - half, kinds=("cnn",))
             + sample_specs(args.seed, half, kinds=("transformer",)))
    config = RuntimeConfig(f"{args.backend}-{args.device}", args.backend, args.threads,
                           device=args.device)
    probe = (speed_probe_for(args.backend, args.device, args.threads)
             if args.drift_correction else None)
    passes = []
    for r in range(args.repeats):
        measured, _ = measure_many(
            specs, lambda spec: measure_spec(spec, config, max_seconds=args.max_seconds,
                                             energy=args.energy),
            probe=probe, desc=f"pass {r + 1}/{args.repeats}")
        passes.append(measured)
    info = provenance(args.backend, args.device, args.threads, 1, "all",
                      generator_seed=args.seed, repeats=args.repeats)
    return specs, passes, info


def cv_percent(values: np.ndarray) -> np.ndarray:
    """Coefficient of variation over axis 0 (passes), in percent."""
    return 100 * values.std(axis=0, ddof=1) / values.mean(axis=0)


def summarise(specs: list, passes: list[list]) -> dict:
    latency = np.array([[m.latency_ms for m in p] for p in passes])
    energy = np.array([[np.nan if m.energy_mj is None else m.energy_mj for m in p]
                       for p in passes])
    models = []
    for i, spec in enumerate(specs):
        row = {"model": spec.name, "kind": spec.kind,
               "latency_ms": float(np.median(latency[:, i])),
               "latency_cv_pct": float(cv_percent(latency[:, i:i + 1])[0]),
               "within_pass_cv_pct": float(np.median([100 * p[i].cv for p in passes]))}
        if np.isfinite(energy[:, i]).all():
            row["energy_mj"] = float(np.median(energy[:, i]))
            row["energy_cv_pct"] = float(cv_percent(energy[:, i:i + 1])[0])
        models.append(row)
    out: dict = {"models": models, "repeats": len(passes)}

    def spread(key: str) -> dict:
        vals = np.array([m[key] for m in models if key in m])
        return {"mean": float(vals.mean()), "median": float(np.median(vals)),
                "max": float(vals.max()), "count": int(vals.size)} if vals.size else {}

    def rank_agreement(table: np.ndarray) -> float | None:
        pairs = [spearmanr(table[a], table[b])[0] for a in range(len(table))
                 for b in range(a + 1, len(table))]
        return float(min(pairs)) if pairs else None

    out["latency_cv_pct"] = spread("latency_cv_pct")
    out["latency_pass_spearman_min"] = rank_agreement(latency)
    ok = np.isfinite(energy).all(axis=0)
    if ok.any():
        out["energy_cv_pct"] = spread("energy_cv_pct")
        out["energy_pass_spearman_min"] = rank_agreement(energy[:, ok])
        out["energy_measured"] = int(ok.sum())
    notes = {m.energy_note for p in passes for m in p if m.energy_mj is None and m.energy_note}
    if notes:
        out["energy_notes"] = sorted(notes)[:5]
    out["latency"] = latency.tolist()
    out["energy"] = [[None if np.isnan(v) else float(v) for v in row] for row in energy]
    return out


def plot(result: dict, path: Path, where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("latency", "latency ms")] + ([("energy", "energy mJ")]
                                            if "energy_cv_pct" in result else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels, strict=True):
        table = np.array(result[key], dtype=float)
        for r in range(1, len(table)):
            ax.loglog(table[0], table[r], "o", ms=4, alpha=0.7, label=f"pass {r + 1}")
        finite = table[np.isfinite(table)]
        lo, hi = finite.min(), finite.max()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"pass 1, {label}")
        ax.set_ylabel(f"other passes, {label}")
        ax.legend(fontsize=8)
    fig.suptitle(where, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=31, help="generator seed of the models")
    parser.add_argument("--energy", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=1.0, help="timing budget per model")
    parser.add_argument("--no-drift-correction", dest="drift_correction", action="store_false")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.models < 2 or args.repeats < 2:
        parser.error("--models and --repeats must be at least 2")

    from predictor.measurements import write_measurements_csv

    start = time.time()
    specs, passes, info = measure_passes(args)
    result = summarise(specs, passes)
    result["provenance"] = info
    where = f"{info.get('gpu') or info['cpu']}, {args.backend}, {args.device}"
    energy = "energy_cv_pct" in result
    print(f"\n## Measurement repeatability: {where}, {len(specs)} models, {args.repeats} passes\n")
    print("| model | latency ms | between-pass CV % | within-pass CV %"
          + (" | energy mJ | energy CV % |" if energy else " |"))
    print("|---|---|---|---" + ("|---|---|" if energy else "|"))
    for m in result["models"]:
        line = (f"| {m['model']} | {m['latency_ms']:.3f} | {m['latency_cv_pct']:.1f} | "
                f"{m['within_pass_cv_pct']:.1f}")
        if energy:
            line += (f" | {m['energy_mj']:.2f} | {m['energy_cv_pct']:.1f}" if "energy_mj" in m
                     else " | - | -")
        print(line + " |")
    lat = result["latency_cv_pct"]
    print(f"\nlatency between-pass CV %: mean {lat['mean']:.2f}, median {lat['median']:.2f}, "
          f"max {lat['max']:.2f}; min pass-to-pass Spearman "
          f"{result['latency_pass_spearman_min']:.4f}")
    if energy:
        en = result["energy_cv_pct"]
        print(f"energy between-pass CV % ({result['energy_measured']} models): mean "
              f"{en['mean']:.2f}, median {en['median']:.2f}, max {en['max']:.2f}; min "
              f"pass-to-pass Spearman {result['energy_pass_spearman_min']:.4f}")
    for note in result.get("energy_notes", []):
        print(f"energy note: {note}")
    print(f"seconds: {time.time() - start:.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
        for r, measured in enumerate(passes):
            write_measurements_csv(args.json.with_suffix(f".pass{r + 1}.csv"), measured, info)
        plot(result, args.json.with_suffix(".png"), where)
        print(f"wrote {args.json}, its per-pass CSVs and {args.json.with_suffix('.png')}")


if __name__ == "__main__":
    main()
