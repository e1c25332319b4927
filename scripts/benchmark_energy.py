"""Few-shot energy prediction on HW-NAS-Bench-360's Raspberry Pi 5, one runtime held out.

    python scripts/benchmark_energy.py --shots 10 --seeds 5 --json results/energy_k10.json

Folds: each Pi 5 runtime (litert, onnx, torchmobile) is held out in turn; its three tasks
(cifar100, ninapro, darcy: different graphs of the same NB201 cells) are the test devices.
K (--shots) energy measurements, with their latencies, come from HELP's NB201 training pool
(indices 0..899, measured representatives only, outliers trimmed as `make_cases` does);
scores are on the measured archs of the test pool 900..1899 (fastest/slowest 10 % by energy
dropped, HELP's protocol). The other two runtimes are the fold's training devices.

Methods, all in one run (log space, K samples of the test device unless said otherwise):
  latpred-transfer            shipped checkpoint adapted on energy directly ("auto" strategy,
                              HELP devices as nearest-device candidates); no energy training.
  latpred-transfer+runtimes   the same, with the other two runtimes' energy (all tasks)
                              embedded from their training-pool archs as extra candidates.
  latpred+latency             adapted on latency, energy = a x predicted latency, a fitted on K.
  oracle-latency (baseline)   energy = a x *measured* latency of each test arch: needs every
                              test arch measured on the device, so it is an upper reference.
  linear (baseline)           ridge fit of log energy on log MACs/params/memory/depth.
  transfer-runtimes (baseline) the training runtime's table (energy or latency, any task)
                              that rank-correlates best with the K samples, log-linear map.
  latpred-trained             (--train-minutes M > 0) a joint model: the shipped checkpoint
                              warm-started for M minutes on HELP's NB201 devices plus the
                              training runtimes' energy and latency (6 + 6 tasks), then
                              adapted like latpred-transfer+runtimes.
  latpred-head                (--train-minutes M > 0) a second head instead: encoder, hardware
                              embedding and encoder conditioning frozen, only the cost head
                              (`SECOND_HEAD`) trained for M minutes on the training runtimes'
                              energy alone, then adapted the same way.
Prints a markdown table per method, writes JSON in the issue's shape and a
predicted-vs-measured PNG (seed 0) next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from predictor.adaptation import DeviceState, adapt, adapt_named, predict
from predictor.api import Predictor
from predictor.checkpoint import Checkpoint
from predictor.evaluation import (
    linear_fit_baseline,
    make_cases,
    metrics,
    summarise,
    transfer_baseline,
)
from predictor.graph_store import GraphStore
from predictor.hwnb360 import RUNTIMES, TASKS, device_name, load_hwnb360, task_store
from predictor.tables import TEST_POOL, valid_mask

KEYS = ("spearman", "kendall", "mape", "within10")
EMBED_SHOTS = 200  # training-pool archs per training-runtime embedding
SECOND_HEAD = ("cost_in.", "cost_out.", "overhead.", "film_head.")


def _predict(model, store: GraphStore, test: np.ndarray, state: DeviceState,
             chunk: int = 1024) -> np.ndarray:
    out = [predict(model, store.batch(test[i:i + chunk]), state) for i in range(0, test.size, chunk)]
    return torch.exp(torch.cat(out)).numpy().astype(np.float64)


def _adapt(model, store: GraphStore, support: np.ndarray, y: np.ndarray, known, steps: int,
           lr: float) -> tuple[DeviceState, str]:
    return adapt_named(model, store.batch(support), torch.tensor(np.log(y), dtype=torch.float32),
                       "auto", finetune_steps=steps, lr=lr, known=known)


def _training_pool(table: np.ndarray) -> np.ndarray:
    idx = np.flatnonzero(valid_mask(table))
    return idx[(idx < TEST_POOL.start) | (idx >= TEST_POOL.stop)]


def embed_runtimes(model, tables, stores, runtimes, metric: str, seed: int = 0
                   ) -> list[DeviceState]:
    """Amortised embeddings of training runtimes' `metric` (every task), from
    `EMBED_SHOTS` measured archs outside the test pool."""
    states = []
    for runtime in runtimes:
        for task in TASKS:
            values = tables[device_name("pi5", runtime, task)].values(metric)
            pool = _training_pool(values)
            rng = np.random.default_rng([seed, len(states)])
            support = np.sort(rng.choice(pool, size=min(EMBED_SHOTS, pool.size), replace=False))
            y = torch.tensor(np.log(values[support]), dtype=torch.float32)
            states.append(adapt(model, stores[task].batch(support), y))
    return states


def train_fold(args: argparse.Namespace, others: list[str], held: str, head: bool = False):
    """Warm-start the checkpoint on HELP's NB201 devices plus the training runtimes'
    energy and latency tasks, for `args.train_minutes`; returns the trained model. With
    `head`, train only the cost head (`SECOND_HEAD`) on the training runtimes' energy."""
    import dataclasses

    from predictor.config import load_config
    from predictor.hwnb360 import device_tasks
    from predictor.training import train

    config = load_config(args.train_config)
    data = dataclasses.replace(config.data, spaces=("nb201",), model_sets={},
                               model_set_share=None, episodes_per_epoch=400, val_episodes=100)
    config = dataclasses.replace(config, data=data, max_minutes=args.train_minutes,
                                 max_epochs=100,
                                 init_from=str(args.checkpoint or "checkpoints/latpred.ckpt"),
                                 trainable=SECOND_HEAD if head else ())
    tasks, stores = device_tasks(others, "energy_mj", data_dir=args.data_dir)
    lat_tasks, _ = device_tasks(others, "latency_ms", data_dir=args.data_dir)
    kind = "head" if head else "joint"
    out = Path("runs") / f"energy_{held}_out_{kind}.ckpt"
    checkpoint = train(config, out, data_dir=args.data_dir, log_dir=Path("runs") / "energy",
                       progress=False, extra_tasks=tasks if head else tasks + lat_tasks,
                       extra_stores=stores, only_extra_tasks=head)
    print(f"  trained {held}-out ({kind}): {checkpoint.info}", file=sys.stderr, flush=True)
    return checkpoint.model.eval()


def run(args: argparse.Namespace) -> dict:
    checkpoint = Checkpoint.load(args.checkpoint)
    model = checkpoint.model.eval()
    steps = args.finetune_steps or checkpoint.config.finetune_steps or 20
    lr = checkpoint.config.finetune_lr
    known_help = Predictor(checkpoint).known_devices()
    tables = load_hwnb360(args.data_dir)
    stores = {task: task_store(task, data_dir=args.data_dir) for task in TASKS}
    results: dict[str, dict] = {}
    raw: dict[str, tuple] = {}
    chosen: dict[str, dict[str, int]] = {}
    for held in args.folds:
        others = [r for r in RUNTIMES if r != held]
        known_e = known_help + embed_runtimes(model, tables, stores, others, "energy_mj")
        trained = {}
        if args.train_minutes > 0:
            for name, head in (("latpred-trained", False), ("latpred-head", True)):
                net = train_fold(args, others, held, head=head)
                trained[name] = (net, embed_runtimes(net, tables, stores, others, "energy_mj"))
        train_tables = {f"{d}:{m}": tables[d].values(m)
                        for r in others for t in TASKS for d in [device_name("pi5", r, t)]
                        for m in ("energy_mj", "latency_ms")}
        for task in args.tasks:
            device = device_name("pi5", held, task)
            energy, latency = tables[device].energy_mj, tables[device].latency_ms
            store = stores[task]
            per: dict[str, list] = {}
            for case in make_cases("nb201", device, energy, args.shots, args.seeds):
                sup, test = case.support, case.test
                e_s, l_s = energy[sup], latency[sup]
                scale = float(np.exp(np.mean(np.log(e_s) - np.log(l_s))))  # E = a x L
                preds: dict[str, np.ndarray] = {}
                for name, known in (("latpred-transfer", known_help),
                                    ("latpred-transfer+runtimes", known_e)):
                    state, strategy = _adapt(model, store, sup, e_s, known, steps, lr)
                    preds[name] = _predict(model, store, test, state)
                    chosen.setdefault(name, {}).setdefault(strategy, 0)
                    chosen[name][strategy] += 1
                for name, known in (("latpred+latency", known_help),):
                    state, strategy = _adapt(model, store, sup, l_s, known, steps, lr)
                    preds[name] = scale * _predict(model, store, test, state)
                    chosen.setdefault(name, {}).setdefault(strategy, 0)
                    chosen[name][strategy] += 1
                for name, (net, known_t) in trained.items():
                    state, strategy = _adapt(net, store, sup, e_s, known_t, steps, lr)
                    preds[name] = _predict(net, store, test, state)
                    chosen.setdefault(name, {}).setdefault(strategy, 0)
                    chosen[name][strategy] += 1
                preds["oracle-latency"] = scale * latency[test]
                preds["linear"] = linear_fit_baseline(store, sup, e_s, test)
                preds["transfer-runtimes"], _ = transfer_baseline(train_tables, sup, e_s, test)
                for name, pred in preds.items():
                    per.setdefault(name, []).append(metrics(pred, energy[test]))
                    if case.seed == 0:
                        raw.setdefault(name, {})[device] = (pred, energy[test])
                print(f"  {device} seed {case.seed}: " + ", ".join(
                    f"{n} {per[n][-1]['spearman']:.3f}" for n in preds), file=sys.stderr,
                    flush=True)
            for name, runs in per.items():
                results.setdefault(name, {}).setdefault(held, {})[task] = summarise(runs)
    return {"results": results, "raw": raw, "strategies": chosen}


def _mean(folds: dict, runtimes=None) -> dict[str, dict[str, float]] | None:
    cells = [c for r, tasks in folds.items() if runtimes is None or r in runtimes
             for c in tasks.values()]
    if not cells:
        return None
    return {k: {"mean": float(np.mean([c[k]["mean"] for c in cells]))} for k in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--folds", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--finetune-steps", type=int, default=None)
    parser.add_argument("--train-minutes", type=float, default=0.0,
                        help="per fold and variant (joint model, second head): warm-start "
                             "training with the training runtimes' energy (0: skip)")
    parser.add_argument("--train-config", type=Path, default=Path("configs/meta_sets.yaml"))
    parser.add_argument("--variant", default="latpred-transfer+runtimes",
                        help="headline method of the JSON's folds/mean")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="combine JSON reports of runs on disjoint folds into --json")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    start = time.time()
    if args.merge:
        out = merge(args.merge)
        args.folds = [r for r in RUNTIMES if r in next(iter(out["results"].values()))]
        args.shots, args.seeds = out["shots"], out["seeds"]
    else:
        out = run(args)
    seconds = out.get("seconds", time.time() - start)
    results = out["results"]
    methods = list(results)
    print(f"\n## Pi 5 energy, one runtime held out, K={args.shots} seeds={args.seeds}\n")
    for metric, fmt in (("spearman", "{:.3f}"), ("mape", "{:.1f}"), ("within10", "{:.1f}")):
        print(f"\n{metric} (mean over seeds)\n")
        print("| fold / task | " + " | ".join(methods) + " |")
        print("|---|" + "---|" * len(methods))
        for held in args.folds:
            for task in args.tasks:
                cells = [fmt.format(results[m][held][task][metric]["mean"]) for m in methods]
                print(f"| {held} / {task} | " + " | ".join(cells) + " |")
        for label, sel in (("all folds", None), ("litert+onnx", ("litert", "onnx")),
                           ("torchmobile", ("torchmobile",))):
            if sel is not None and not set(sel) & set(args.folds):
                continue
            cells = [fmt.format(_mean(results[m], sel)[metric]["mean"]) for m in methods]
            print(f"| **mean {label}** | " + " | ".join(cells) + " |")
    print(f"\nstrategies chosen by auto: {json.dumps(out['strategies'])}")
    print(f"seconds: {seconds:.1f}")

    def block(name: str) -> dict:
        folds = results[name]
        return {"folds": folds, "mean": _mean(folds),
                "mean_without_torchmobile": _mean(folds, ("litert", "onnx")),
                "torchmobile": _mean(folds, ("torchmobile",))}

    report = {
        "metric": "energy_mj", "shots": args.shots, "seeds": args.seeds,
        "variant": args.variant, **block(args.variant),
        "methods": {m: block(m) for m in methods},
        "strategies": out["strategies"],
        "protocol": "leave one Pi 5 runtime out; K support archs from NB201 0..899, test "
                    "900..1899, measured representatives only, 10% energy outliers trimmed",
        "command": " ".join(sys.argv),
        "seconds": round(seconds, 1),
        "checkpoint": str(args.checkpoint or "shipped"),
    }
    if args.merge:
        report["merged_from"] = [str(p) for p in args.merge]
        report["command"] = out["commands"]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        if args.merge:
            return
        plot(out["raw"][args.variant], args.json.with_suffix(".png"),
             f"Pi 5 energy K={args.shots} ({args.variant})")
        print(f"wrote {args.json} and {args.json.with_suffix('.png')}")


def merge(paths: list[Path]) -> dict:
    """Results of reports on disjoint folds, as one run's (same K and seeds required)."""
    reports = [json.loads(p.read_text()) for p in paths]
    if len({(r["shots"], r["seeds"]) for r in reports}) != 1:
        raise SystemExit("--merge: reports differ in --shots or --seeds")
    results: dict[str, dict] = {}
    for r in reports:
        for name, block in r["methods"].items():
            results.setdefault(name, {}).update(block["folds"])
    strategies: dict[str, dict[str, int]] = {}
    for r in reports:
        for name, counts in r["strategies"].items():
            for k, v in counts.items():
                strategies.setdefault(name, {}).setdefault(k, 0)
                strategies[name][k] += v
    return {"results": results, "strategies": strategies, "shots": reports[0]["shots"],
            "seeds": reports[0]["seeds"], "seconds": sum(r["seconds"] for r in reports),
            "commands": [r["command"] for r in reports]}


def plot(raw: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = list(raw)
    cols = min(3, len(devices))
    rows = (len(devices) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax, device in zip(axes.flat, devices, strict=False):
        pred, true = raw[device]
        ax.scatter(true, pred, s=4, alpha=0.5)
        lo, hi = min(true.min(), pred.min()), max(true.max(), pred.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(device)
        ax.set_xlabel("measured mJ")
        ax.set_ylabel("predicted mJ")
    for ax in list(axes.flat)[len(devices):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
