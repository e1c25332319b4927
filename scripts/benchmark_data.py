"""Graph-corpus build speed, graph sizes, cache size, and the table-alignment evidence.

Builds the whole corpus (NB201: 15,625 archs, FBNet: 5,000, each at its devices' batch
sizes) from a COLD cache (a fresh folder), then again WARM (loaded from that cache).
Target (issue: real latency datasets): cold build <= 15 min on a 2-core machine.

It also measures, over the full corpus, the Spearman rank correlation between each
graph's MACs (graph feature `log_macs`) and every device's latency: on batch-256 GPUs
latency should rank like MACs (> 0.9), which only happens if tables and graphs are
aligned by index.

    python scripts/benchmark_data.py [--json OUT.json] [--workers N] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from scipy.stats import spearmanr

from predictor import corpus, tables
from predictor.datadir import help_dir, resolve_data_dir
from predictor.devices import list_devices
from predictor.features import FEATURE_SCHEMA
from predictor.graph_store import GraphStore

BUDGET_SECONDS = 15 * 60
MACS_COLUMN = FEATURE_SCHEMA.graph_features.index("log_macs")


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def build_all(root: Path, data_dir: Path, workers: int | None, progress: bool,
              limit: int | None = None
              ) -> tuple[dict[str, dict[int, GraphStore]], dict[str, float]]:
    stores, seconds = {}, {}
    for space in corpus.SPACES:
        tables.clear_cache()  # count reading the arch files too
        start = time.perf_counter()
        stores[space] = corpus.build_corpus(space, data_dir=data_dir, root=root,
                                            workers=workers, progress=progress, limit=limit)
        seconds[space] = time.perf_counter() - start
    return stores, seconds


def macs_spearman(space: str, stores: dict[int, GraphStore], data_dir: Path) -> list[dict]:
    """Spearman(log MACs, latency) per registry device, over its valid entries."""
    rows = []
    for device in list_devices(space=space, source="help"):
        batch = device.batch_size or 1
        store = stores.get(batch) or stores[min(stores)]  # MAC ranks do not depend on batch
        macs = store.graph_attr[:, MACS_COLUMN].numpy()
        table = tables.load_latency_table(space, device.name, data_dir)[: len(macs)]
        valid = tables.valid_mask(table)
        rho = float(spearmanr(macs[valid], table[valid]).statistic)
        rows.append({"device": device.name, "family": device.family,
                     "batch_size": device.batch_size, "archs": int(valid.sum()), "spearman": rho})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--workers", type=int, help="worker processes (default: CPU count)")
    parser.add_argument("--cache-dir", type=Path,
                        help="build here (must be empty or absent: the cold build needs a fresh "
                             "cache) and keep it; default: a temporary folder, removed after")
    parser.add_argument("--data-dir", type=Path, help="folder that holds help/")
    parser.add_argument("--limit", type=int,
                        help="only the first N archs per space (a quick look, not the benchmark)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    data_dir = resolve_data_dir(args.data_dir)
    help_dir(data_dir)
    if args.cache_dir is not None and args.cache_dir.exists() and any(args.cache_dir.iterdir()):
        sys.exit(f"--cache-dir {args.cache_dir} is not empty; a cold build needs a fresh folder")
    root = args.cache_dir or Path(tempfile.mkdtemp(prefix="latpred-bench-cache-"))
    try:
        stores, cold = build_all(root, data_dir, args.workers, not args.no_progress, args.limit)
        _, warm = build_all(root, data_dir, args.workers, False, args.limit)
        cache_mb = folder_mb(root)
        spearman = {space: macs_spearman(space, stores[space], data_dir) for space in stores}
    finally:
        if args.cache_dir is None:
            shutil.rmtree(root, ignore_errors=True)

    sizes = {space: next(iter(by_batch.values())).summary() for space, by_batch in stores.items()}
    result = {
        "build_seconds": sum(cold.values()),
        "warm_seconds": sum(warm.values()),
        "build_seconds_per_space": cold,
        "warm_seconds_per_space": warm,
        "budget_seconds": BUDGET_SECONDS,
        "graphs": {s: int(v["graphs"]) for s, v in sizes.items()},
        "batch_sizes": {s: sorted(v) for s, v in stores.items()},
        "mean_nodes": {s: float(v["mean_nodes"]) for s, v in sizes.items()},
        "max_nodes": {s: int(v["max_nodes"]) for s, v in sizes.items()},
        "mean_edges": {s: float(v["mean_edges"]) for s, v in sizes.items()},
        "unique_nodes": {s: {b: int(st.node_rows.shape[0]) for b, st in by_batch.items()}
                         for s, by_batch in stores.items()},
        "cache_mb": cache_mb,
        "spearman_log_macs_latency": spearman,
        "workers": args.workers or os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "limit": args.limit,
    }

    print(f"\nCorpus build, {result['workers']} worker(s) on {os.cpu_count()} CPU(s); "
          f"budget {BUDGET_SECONDS / 60:.0f} min cold")
    print("| space | graphs | batch sizes | cold s | warm s | mean nodes | max nodes "
          "| unique nodes per batch |")
    print("|---|---|---|---|---|---|---|---|")
    for s in stores:
        print(f"| {s} | {result['graphs'][s]} | {result['batch_sizes'][s]} | {cold[s]:.1f} "
              f"| {warm[s]:.2f} | {result['mean_nodes'][s]:.1f} | {result['max_nodes'][s]} "
              f"| {result['unique_nodes'][s]} |")
    verdict = "within" if result["build_seconds"] <= BUDGET_SECONDS else "OVER"
    print(f"| total | {sum(result['graphs'].values())} | | {result['build_seconds']:.1f} "
          f"| {result['warm_seconds']:.2f} | | | |")
    print(f"\ncold build {result['build_seconds'] / 60:.1f} min ({verdict} the budget); "
          f"cache {cache_mb:.1f} MB")

    for space, rows in spearman.items():
        scope = f"first {args.limit}" if args.limit else "all"
        print(f"\nSpearman(log MACs, latency) over {scope} {space} archs (valid entries)")
        print("| device | family | batch | archs | Spearman |")
        print("|---|---|---|---|---|")
        for r in rows:
            batch = "-" if r["batch_size"] is None else r["batch_size"]
            print(f"| {r['device']} | {r['family']} | {batch} | {r['archs']} "
                  f"| {r['spearman']:.3f} |")

    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
