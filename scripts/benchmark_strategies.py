"""Adaptation strategies compared on the selection devices (never a meta-test device).

    python scripts/benchmark_strategies.py --devices hw --strategies kernelsum,auto
    python scripts/benchmark_strategies.py --devices nb201-valid --seeds 3
    python scripts/benchmark_strategies.py --devices fbnet-valid
    python scripts/benchmark_strategies.py --devices fbnet-untouched --task F5 --shots 20 \
        --auto-candidates amortised,nearest,finetune,finetune+nearest,opscale,kernelsum,kernelsum+net

`hw`: HW-NAS-Bench-360's Raspberry Pi 5 latency tables (3 runtimes x 3 tasks; no
training device is like them); `nb201-valid` / `fbnet-valid`: HELP's meta-valid
devices; `fbnet-untouched --task F1..F5`: FBNet devices that are a test device of no
NASFLAT task and not a training device of the task, scored with the task's checkpoint
(`checkpoints/tasks/`): devices unlike anything that checkpoint trained on, as F4 and F5
ask for. K support archs from indices 0..899 (outliers trimmed), scored on 900..1899
(trimmed) as in `benchmark_fewshot.py`. Prints Spearman / MAPE % per device and the
means; this is where the candidates of "auto", its temperature and the kernel-sum ridge
were chosen.
"""

from __future__ import annotations

import argparse

import numpy as np

from predictor import adaptation
from predictor.checkpoint import Checkpoint
from predictor.corpus import build_corpus
from predictor.devices import get_device
from predictor.evaluation import FewShotCase, make_cases, metrics, predictor_fn
from predictor.hwnb360 import load_hwnb360, task_store
from predictor.shipped import embed_table_device
from predictor.splits import get_split
from predictor.tables import TEST_POOL, TRAIN_POOL, load_latency_table, trim_outliers, valid_mask

KEYS = ("spearman", "mape", "within10")


def hw_cases(shots: int, seeds: int):
    stores = {}
    for name, table in sorted(load_hwnb360().items()):
        values = table.values("latency_ms")
        idx = np.flatnonzero(valid_mask(values))
        train = np.array(trim_outliers([i for i in idx if i in TRAIN_POOL], values))
        test = np.array(sorted(trim_outliers([i for i in idx if i in TEST_POOL], values)))
        if table.task not in stores:
            stores[table.task] = task_store(table.task)
        cases = [FewShotCase(name, seed, np.random.default_rng([seed, shots]).choice(
            train, shots, replace=False), test) for seed in range(seeds)]
        yield name, values, stores[table.task], cases


def valid_cases(space: str, shots: int, seeds: int):
    for device in get_split(space, "help").valid:
        table = load_latency_table(space, device)
        batch = get_device(device).batch_size or 1
        store = build_corpus(space, batch_sizes=(batch,), progress=False)[batch]
        yield device, table, store, make_cases(space, device, table, shots, seeds)


def untouched_cases(task: str, shots: int, seeds: int):
    tasks = ("F0", "F1", "F2", "F3", "F4", "F5")
    tested = {d for t in tasks for d in get_split("fbnet", t).test}
    split = get_split("fbnet", task)
    for device in sorted(set(get_split("fbnet", "F0").devices) - tested - set(split.train)):
        table = load_latency_table("fbnet", device)
        batch = get_device(device).batch_size or 1
        store = build_corpus("fbnet", batch_sizes=(batch,), progress=False)[batch]
        yield device, table, store, make_cases("fbnet", device, table, shots, seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", choices=("hw", "nb201-valid", "fbnet-valid", "fbnet-untouched"),
                        default="hw")
    parser.add_argument("--task", default="F5", help="with fbnet-untouched: F1..F5")
    parser.add_argument("--auto-candidates", default=None,
                        help="comma-separated candidates of auto (default AUTO_CANDIDATES)")
    parser.add_argument("--strategies", default="amortised,opscale,finetune,kernelsum,auto")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()
    untouched = args.devices == "fbnet-untouched"
    if args.auto_candidates:
        adaptation.AUTO_CANDIDATES = tuple(args.auto_candidates.split(","))
    checkpoint = args.checkpoint or (f"checkpoints/tasks/fbnet_{args.task}.ckpt" if untouched
                                     else None)
    model = Checkpoint.load(checkpoint).model.eval()
    space = "fbnet" if args.devices.startswith("fbnet") else "nb201"
    train = get_split(space, args.task if untouched else "help").train
    known = [embed_table_device(model, space, d)[0] for d in train]
    strategies = args.strategies.split(",")
    fns = {s: predictor_fn(model, s, 20, 1e-2, known=known) for s in strategies}
    cases = (hw_cases(args.shots, args.seeds) if args.devices == "hw"
             else untouched_cases(args.task, args.shots, args.seeds) if untouched
             else valid_cases(space, args.shots, args.seeds))
    results: dict[str, dict[str, dict[str, float]]] = {s: {} for s in strategies}
    print("| device | " + " | ".join(strategies) + " |")
    print("|---|" + "---|" * len(strategies))
    for device, table, store, device_cases in cases:
        for name, fn in fns.items():
            runs = [metrics(fn(store, c.support, table[c.support], c.test), table[c.test])
                    for c in device_cases]
            results[name][device] = {k: float(np.mean([r[k] for r in runs])) for k in KEYS}
        print(f"| {device} | " + " | ".join(
            f"{results[s][device]['spearman']:.3f} / {results[s][device]['mape']:.1f}"
            for s in strategies) + " |", flush=True)
    for key in KEYS:
        print(f"| **mean {key}** | " + " | ".join(
            f"{np.mean([v[key] for v in results[s].values()]):.3f}" for s in strategies) + " |")


if __name__ == "__main__":
    main()
