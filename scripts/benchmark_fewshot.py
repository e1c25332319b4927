"""Few-shot latency prediction on unseen devices, HELP's protocol, with baselines in the same run.

    python scripts/benchmark_fewshot.py --space nb201 --shots 10 --seeds 5 --json OUT.json
    python scripts/benchmark_fewshot.py --space fbnet --task F3 --shots 20 --seeds 5

K (--shots) counts every measurement taken on the target device. Support architectures
come from the space's training pool, scores from its test pool (outliers trimmed), as in
HELP. Prints a markdown table, writes predicted-vs-measured PNGs next to the JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from predictor.checkpoint import Checkpoint
from predictor.corpus import build_corpus
from predictor.devices import get_device
from predictor.evaluation import (
    linear_fit_baseline,
    macs_baseline,
    make_cases,
    metrics,
    predictor_fn,
    scratch_gnn_fn,
    summarise,
    transfer_baseline,
)
from predictor.shipped import embed_table_device
from predictor.splits import get_split
from predictor.tables import load_latency_table

# Published Spearman figures (reference columns, not rerun): HELP (NeurIPS 2021) with 20
# measurements, per device; NASFLAT (MLSys 2024) means.
PUBLISHED = {
    ("nb201", "help"): {
        "HELP@20": {"titan_rtx_256": 0.987, "gold_6226": 0.989, "fpga": 0.985, "pixel2": 0.802,
                    "raspi4": 0.890, "eyeriss": 0.940, "mean": 0.932},
        "NASFLAT": {"mean@5": 0.902, "mean@10": 0.947, "mean@20": 0.959},
    },
    ("fbnet", "help"): {
        "HELP@20": {"raspi4": 0.887, "eyeriss": 0.943, "fpga": 0.892, "mean": 0.910},
        "NASFLAT": {"mean@20": 0.961},
    },
    **{("fbnet", t): {"NASFLAT": {"mean@20": v}} for t, v in
       {"F1": 0.809, "F2": 0.871, "F3": 0.814, "F4": 0.734, "F5": 0.577}.items()},
}


def run(args: argparse.Namespace) -> dict:
    split = get_split(args.space, args.task)
    devices = split.valid if args.valid else split.test
    checkpoint = Checkpoint.load(args.checkpoint)
    model = checkpoint.model
    train_tables = {d: load_latency_table(args.space, d, args.data_dir) for d in split.train}
    known = [embed_table_device(model, args.space, d, data_dir=args.data_dir,
                                cache_root=args.cache_dir)[0] for d in split.train]
    ft = f"ft{args.finetune_steps}"
    methods = {
        name: predictor_fn(model, strategy, args.finetune_steps, args.finetune_lr, known=known)
        for name, strategy in (("latpred", "amortised"), ("latpred+nearest", "nearest"),
                               (f"latpred+{ft}", "finetune"),
                               (f"latpred+{ft}+nearest", "finetune+nearest"),
                               ("latpred+kernelsum", "kernelsum"),
                               ("latpred+auto", "auto"))
    }
    methods.update({
        "macs": lambda s, sup, y, t: macs_baseline(s, sup, y, t),
        "linear": lambda s, sup, y, t: linear_fit_baseline(s, sup, y, t),
    })
    if not args.no_scratch:
        methods["gnn_scratch"] = scratch_gnn_fn()
    results: dict[str, dict] = {m: {} for m in methods}
    results["transfer"] = {}
    raw: dict[str, dict] = {}
    call_seconds: dict[str, list[float]] = {m: [] for m in methods}
    for device in devices:
        table = load_latency_table(args.space, device, args.data_dir)
        batch = get_device(device).batch_size or 1
        store = build_corpus(args.space, batch_sizes=(batch,), data_dir=args.data_dir,
                             root=args.cache_dir, progress=False)[batch]
        cases = make_cases(args.space, device, table, args.shots, args.seeds)
        per_method: dict[str, list] = {m: [] for m in results}
        for case in cases:
            y = table[case.support]
            for name, fn in methods.items():
                start = time.perf_counter()
                pred = fn(store, case.support, y, case.test)
                call_seconds[name].append(time.perf_counter() - start)
                per_method[name].append(metrics(pred, table[case.test]))
                if case.seed == 0:
                    raw.setdefault(device, {})[name] = (pred, table[case.test])
            pred, _ = transfer_baseline(train_tables, case.support, y, case.test)
            per_method["transfer"].append(metrics(pred, table[case.test]))
        for name, runs in per_method.items():
            results[name][device] = summarise(runs)
    means = {name: {k: float(np.mean([d[k]["mean"] for d in per_dev.values()]))
                    for k in ("spearman", "kendall", "mape", "within10")}
             for name, per_dev in results.items()}
    return {"results": results, "means": means, "raw": raw, "devices": list(devices),
            "call_seconds": {m: {"median": float(np.median(v)), "max": float(np.max(v))}
                             for m, v in call_seconds.items()},
            "checkpoint": str(args.checkpoint or "shipped"), "split": split}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", choices=("nb201", "fbnet"), required=True)
    parser.add_argument("--task", default="help", help="split: help (N0/F0) or F1..F5")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--finetune-steps", type=int, default=20)
    parser.add_argument("--finetune-lr", type=float, default=1e-2)
    parser.add_argument("--valid", action="store_true",
                        help="score the meta-valid devices instead (for model selection)")
    parser.add_argument("--variant", default="latpred+auto",
                        help="headline predictor variant (the product's default adaptation, "
                             "chosen on meta-valid devices and HW-NAS-Bench-360's boards)")
    parser.add_argument("--no-scratch", action="store_true", help="skip the from-scratch GNN")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    start = time.time()
    out = run(args)
    seconds = time.time() - start
    split = out["split"]
    methods = list(out["results"])
    print(f"\n## {args.space} {split.name} K={args.shots} seeds={args.seeds} "
          f"({'meta-valid' if args.valid else 'meta-test'} devices)\n")
    print("Spearman (mean over seeds) per device; last rows: MAPE % and within +-10 % (means)\n")
    print("| device | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    for device in out["devices"]:
        cells = [f"{out['results'][m][device]['spearman']['mean']:.3f}" for m in methods]
        print(f"| {device} | " + " | ".join(cells) + " |")
    for metric in ("spearman", "kendall", "mape", "within10"):
        cells = [f"{out['means'][m][metric]:.3f}" if metric in ("spearman", "kendall")
                 else f"{out['means'][m][metric]:.1f}" for m in methods]
        print(f"| **mean {metric}** | " + " | ".join(cells) + " |")
    published = PUBLISHED.get((args.space, split.name), {})
    if published:
        print(f"\nPublished reference (not rerun): {json.dumps(published)}")
    timing = out["call_seconds"][args.variant]
    print(f"\n{args.variant}: adaptation to a device from K={args.shots} samples plus "
          f"prediction of its test pool took {timing['median']:.2f} s per draw at the median "
          f"({timing['max']:.2f} s at most)")
    print(f"seconds: {seconds:.1f}")

    variants = [m for m in out["means"] if m.startswith("latpred")]
    best = args.variant
    report = {
        "space": args.space, "task": split.name, "shots": args.shots, "seeds": args.seeds,
        "variant": best,
        "devices": out["results"][best],
        "mean": {k: {"mean": v} for k, v in out["means"][best].items()},
        "variants": {m: {"devices": out["results"][m], "mean": out["means"][m]}
                     for m in variants},
        "baselines": {m: {"devices": out["results"][m], "mean": out["means"][m]}
                      for m in methods if not m.startswith("latpred")},
        "published": published,
        "seconds": round(seconds, 1),
        "adapt_and_predict_seconds": out["call_seconds"],
        "checkpoint": out["checkpoint"],
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        plot(out["raw"], best, args.json.with_suffix(".png"),
             f"{args.space} {split.name} K={args.shots} ({best})")
        print(f"wrote {args.json} and {args.json.with_suffix('.png')}")


def plot(raw: dict, method: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = list(raw)
    cols = min(3, len(devices))
    rows = (len(devices) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax, device in zip(axes.flat, devices, strict=False):
        pred, true = raw[device][method]
        ax.scatter(true, pred, s=4, alpha=0.5)
        lo, hi = min(true.min(), pred.min()), max(true.max(), pred.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(device)
        ax.set_xlabel("measured ms")
        ax.set_ylabel("predicted ms")
    for ax in list(axes.flat)[len(devices):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
