"""How fast the predictor answers a NAS loop: predictions per second on this CPU.

    python scripts/benchmark_throughput.py --json results/throughput.json

Measures, for NAS-Bench-201 architectures on one device (default: the shipped
`pixel3@nb201`), at batch sizes 1, 64 and 1024:

(a) cached graphs: the operator graphs are already built (a `GraphStore`), only the
    network runs;
(b) from arch specs: arch strings in, milliseconds out, graph construction included
    (`Predictor.predict_batch`): each network's graph is assembled from cached templates of
    its segments. "warm" = the templates are cached (NB201's cell *is* its block: a cell's
    template is derived the first time the process sees that cell, FBNet's 198 blocks
    once); "cold" = a fresh process state that has never seen these cells, template
    derivation included;
(c) ONNX files from disk: load, shape-infer, extract, featurise, predict;

plus the latency of single predictions (one new arch per call: p50, p99), the same from
specs on a device calibrated from 10 measurements (`--calibrate-on`: 10 archs of the
training pool of a meta-valid NB201 table, adaptation "auto": a blend of several
adaptations, with the spread `latpred search` asks for), and the MACs
surrogate (MACs of arch specs from the same templates, no network) as the cheapest
possible baseline, in the same run. Prints a markdown table; `--json OUT` writes the
figures (`cached_archs_per_s`, `from_spec_archs_per_s` = warm at batch 1024,
`from_spec_cold_archs_per_s`, ...).
"""

from __future__ import annotations

import os

# MKL's own thread pool fights torch's intra-op threads on small matrices: with one MKL
# thread and torch's 2, inference is ~1.5x faster here (set before torch loads MKL).
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from predictor.adaptation import predict
from predictor.api import Predictor, split_parts
from predictor.space_templates import SpaceTemplates, space_templates
from predictor.spaces import nb201
from predictor.storage import atomic_write_text

BATCHES = (1, 64, 1024)
CHUNK = 256  # graphs per network call, as `Predictor.predict`


def random_archs(count: int, seed: int) -> list[str]:
    """`count` distinct NB201 architectures (the space has 15,625)."""
    rng = random.Random(seed)
    archs: dict[str, None] = {}
    while len(archs) < count:
        archs[nb201.arch_to_str([rng.choice(nb201.OPS) for _ in range(6)])] = None
    return list(archs)


def rate(fn, items: list, batch: int, min_seconds: float) -> float:
    """Items per second of `fn(chunk)` over `items` in chunks of `batch` (whole passes,
    repeated until `min_seconds`)."""
    done, start = 0, time.perf_counter()
    while True:
        for i in range(0, len(items), batch):
            fn(items[i:i + batch])
        done += len(items)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def fresh_templates(predictor: Predictor) -> None:
    """Forget every cached template, so the next calls build them from scratch."""
    from predictor import space_templates as module

    module._TEMPLATES.clear()
    predictor.__dict__.pop("_known", None)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    p = Predictor.load(args.checkpoint)
    device = args.device
    p.device(device)
    archs = random_archs(args.archs, args.seed)
    out: dict = {"device": device, "threads": args.threads, "archs": len(archs),
                 "cpu": platform.processor() or platform.machine(), "batches": {}}

    # (a) cached graphs
    store = p.space_graphs("nb201", archs)
    state = p.device(device)

    def from_cache(ids: list[int]) -> np.ndarray:  # in chunks, as `Predictor.predict`
        def run_chunk(part: list[int]) -> np.ndarray:
            with torch.inference_mode():
                return torch.exp(predict(p.model, store.batch(part, gather=False), state)).numpy()

        return np.concatenate([run_chunk(part) for part in split_parts(ids, CHUNK)])

    rate(from_cache, list(range(len(archs))), 256, args.seconds)  # warm up the machine
    cached = {b: rate(from_cache, list(range(len(archs))), b, args.seconds) for b in BATCHES}

    # (b) from specs: cold (fresh templates each pass) and warm
    def cold_pass(batch: int) -> float:
        rates = []
        for _ in range(args.cold_repeats):
            fresh_templates(p)
            space_templates("nb201")  # the fixed segments (stem, reductions, head): once
            start = time.perf_counter()
            for i in range(0, len(archs), batch):
                p.predict_batch("nb201", archs[i:i + batch], device)
            rates.append(len(archs) / (time.perf_counter() - start))
        return statistics.median(rates)

    from_spec_cold = {b: cold_pass(b) for b in BATCHES}
    p.predict_batch("nb201", archs, device)
    from_spec_warm = {b: rate(lambda a: p.predict_batch("nb201", a, device), archs, b,
                              args.seconds) for b in BATCHES}

    # MACs surrogate from specs (cold and warm), same templates
    def macs_cold(batch: int) -> float:
        fresh_templates(p)
        t = SpaceTemplates("nb201", (1, 3, 32, 32), 10)
        start = time.perf_counter()
        for i in range(0, len(archs), batch):
            t.totals(archs[i:i + batch])["macs"]
        return len(archs) / (time.perf_counter() - start)

    macs = {b: macs_cold(b) for b in BATCHES}

    # (c) ONNX files from disk
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, arch in enumerate(archs[:args.onnx_models]):
            path = Path(tmp) / f"arch{i}.onnx"
            path.write_bytes(nb201.build_onnx(arch).SerializeToString())
            paths.append(str(path))
        onnx_rates = {b: rate(lambda ps: p.predict(ps, device), paths, b, args.seconds)
                      for b in BATCHES}

    def single_ms(fn, seed: int) -> list[float]:
        """Milliseconds of `fn([arch])` for archs outside `archs`, cell templates fresh."""
        fresh_templates(p)
        fn(archs[:1])  # templates of the fixed segments
        times = []
        for arch in random_archs(args.single + len(archs), seed)[-args.single:]:
            start = time.perf_counter()
            fn([arch])
            times.append((time.perf_counter() - start) * 1e3)
        return times

    singles = single_ms(lambda a: p.predict_batch("nb201", a, device), args.seed + 1)

    # a device calibrated from 10 measurements, as a search on a new board uses it
    calibrated = calibrate_from_table(p, args.calibrate_on, args.seed)
    search_fn = lambda a: p.predict_batch("nb201", a, calibrated, with_spread=True)  # noqa: E731
    search_fn(archs)
    from_spec_calibrated = {b: rate(search_fn, archs, b, args.seconds) for b in BATCHES}
    calibrated_singles = single_ms(search_fn, args.seed + 2)

    for b in BATCHES:
        out["batches"][str(b)] = {"cached": cached[b], "from_spec_cold": from_spec_cold[b],
                                  "from_spec_warm": from_spec_warm[b], "onnx": onnx_rates[b],
                                  "from_spec_calibrated": from_spec_calibrated[b],
                                  "macs_baseline": macs[b]}
    out.update({
        "cached_archs_per_s": max(cached.values()),
        # arch specs in, ms out, graphs assembled from cached cell/block templates
        "from_spec_archs_per_s": from_spec_warm[1024],
        # the same when every cell is new to the process (its template derived first)
        "from_spec_cold_archs_per_s": from_spec_cold[1024],
        "onnx_archs_per_s": max(onnx_rates.values()),
        "single_p50_ms": float(np.percentile(singles, 50)),
        "single_p99_ms": float(np.percentile(singles, 99)),
        "macs_baseline_archs_per_s": macs[1024],
        # the calibrated device (a blend, with its spread), from specs, warm
        "calibrated_device": {"name": calibrated, "blend": p.device_info(calibrated).get("blend"),
                              "from_spec_archs_per_s": from_spec_calibrated[1024],
                              "single_p50_ms": float(np.percentile(calibrated_singles, 50)),
                              "single_p99_ms": float(np.percentile(calibrated_singles, 99))},
    })
    return out


def calibrate_from_table(p: Predictor, table_device: str, seed: int) -> str:
    """Calibrate a device from 10 archs of HELP's training pool measured on `table_device`
    (an NB201 table of the data directory); returns its name."""
    from predictor.corpus import get_space
    from predictor.tables import POOLS, load_latency_table, valid_mask

    table = load_latency_table("nb201", table_device)
    pool = [i for i in POOLS["nb201"][0] if valid_mask(table)[i]]
    ids = np.random.default_rng(seed).choice(pool, size=10, replace=False)
    space_archs = get_space("nb201").archs()
    name = f"{table_device}-k10"
    p.adapt(name, p.space_graphs("nb201", [space_archs[i] for i in ids]), table[ids],
            strategy="auto")
    return name


def table(r: dict) -> str:
    lines = [f"NB201 predictions per second on {r['device']}, {r['threads']} torch thread(s), "
             f"{r['archs']} distinct archs",
             "",
             "| batch | (a) cached graphs | (b) from specs, cold | (b) from specs, warm "
             "| (c) ONNX files | MACs surrogate (cold) |",
             "|---|---|---|---|---|---|"]
    for b, row in r["batches"].items():
        lines.append(f"| {b} | {row['cached']:,.0f} | {row['from_spec_cold']:,.0f} | "
                     f"{row['from_spec_warm']:,.0f} | {row['onnx']:,.0f} | "
                     f"{row['macs_baseline']:,.0f} |")
    lines += ["", f"single prediction of a new arch: p50 {r['single_p50_ms']:.2f} ms, "
                  f"p99 {r['single_p99_ms']:.2f} ms"]
    c = r["calibrated_device"]
    blend = ", ".join(f"{k} {w:.2f}" for k, w in (c["blend"] or {}).items())
    lines += ["", f"device calibrated from 10 measurements ({c['name']}; blend: {blend}), "
                  "from specs, warm, with the spread:",
              "", "| batch | archs/s |", "|---|---|"]
    lines += [f"| {b} | {row['from_spec_calibrated']:,.0f} |" for b, row in r["batches"].items()]
    lines += ["", f"single prediction of a new arch: p50 {c['single_p50_ms']:.2f} ms, "
                  f"p99 {c['single_p99_ms']:.2f} ms"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="pixel3@nb201")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--calibrate-on", default="titanx_1",
                        help="meta-valid NB201 table whose 10 measurements calibrate a device")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 cores here)")
    parser.add_argument("--archs", type=int, default=4096)
    parser.add_argument("--onnx-models", type=int, default=128)
    parser.add_argument("--single", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--cold-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args)
    text = table(result)
    print(text)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        atomic_write_text(args.json.with_suffix(".txt"), text + "\n")


if __name__ == "__main__":
    main()
