"""Shipped devices on models none of their embeddings saw: one dataset's embedding of a
board or runtime ("h200-torch-cuda@zoo4", 20 RNNs; "pixel3@nb201", 20 NB201 cells) against
its default device ("h200-torch-cuda", every model set's measurements of it; "pixel3", 100
archs of each HELP table; `predictor.shipped`).

    python scripts/benchmark_default_devices.py [--json results/default_devices.json]

Ground truth, models outside every set the checkpoint and its devices were built from:
- this CPU's training runtimes: zoo8 (400 generated CNNs and transformers, seed 8), and for
  ORT 2 threads / ORT unoptimised 1 thread the reference set and well-known networks
  (`scripts/benchmark_known_models.py`'s measurements);
- the H200, torch CUDA at batch 1 and 32: the local benchmark's 160 test models (seed
  20261126, three passes of stop 29) and the reference set and well-known networks;
- HELP's boards in both tables: archs 900..1899 of each (the test pool).
Prints a markdown table per metric; writes JSON and a PNG of each default device's
predicted vs measured latencies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from predictor.api import Predictor  # noqa: E402
from predictor.evaluation import metrics  # noqa: E402
from predictor.measurements import read_measurements_csv  # noqa: E402
from predictor.model_sets import load_model_set_task, model_set_store  # noqa: E402

KNOWN = Path("results/known_models_measurements")
H200 = Path("results/gpu/stop29_h200")
# default device -> {test set: how to load it}
TEST_SETS = {
    "epyc-ort-2t": {"zoo8": "set", "known": KNOWN / "ort-2t-ref2.csv"},
    "epyc-ort-noopt-1t": {"zoo8": "set", "known": KNOWN / "ort-noopt-1t-ref2.csv"},
    "epyc-ort-basic-2t": {"zoo8": "set"},
    "epyc-ort-noopt-2t": {"zoo8": "set"},
    "epyc-torch-2t": {"zoo8": "set"},
    "h200-torch-cuda": {"local": [H200 / f"torch-cuda-pass{i}.csv" for i in (1, 2, 3)],
                        "known": H200 / "torch-cuda-ref2.csv"},
    "h200-torch-cuda-b32": {"local": [H200 / f"torch-cuda-b32-pass{i}.csv" for i in (2, 3)],
                            "known": H200 / "torch-cuda-b32-ref2.csv"},
}
# HELP boards in both spaces' tables: each space's test pool (no checkpoint or device
# embedding touches it)
HELP_BOARDS = ("1080ti_1", "1080ti_32", "silver_4114", "silver_4210r", "samsung_a50",
               "pixel3", "essential_ph_1", "samsung_s7")
for _board in HELP_BOARDS:
    TEST_SETS[_board] = {"nb201": "help", "fbnet": "help"}


def test_set(predictor: Predictor, device: str, name: str, source) -> tuple[object, np.ndarray]:
    """(models as a GraphStore or ONNX paths, measured ms)."""
    if source == "help":
        from predictor.corpus import build_corpus
        from predictor.datasets import held_out_pools, load_device_task

        task = load_device_task(name, device, pool="all")
        pool = held_out_pools(name)[-1]  # 900..1899
        ids = task.pool[(task.pool >= pool.start) & (task.pool < pool.stop)]
        store = build_corpus(name, batch_sizes=(task.batch_size,), progress=False)
        return store[task.batch_size].subset(ids), task.latency_ms[ids]
    if source == "set":
        task = load_model_set_task(name, device)
        store = model_set_store(name, progress=False, batch=task.batch_size)
        return store.subset(task.pool), task.latency_ms[task.pool]
    if name == "known":
        import benchmark_known_models as known

        rows, _ = read_measurements_csv(source)
        latency = {Path(str(r["model"])).stem: float(r["latency_ms"]) for r in rows}
        files = [f for f in known.network_files(known.CACHE / "onnx") if f.stem in latency]
        return [str(f) for f in files], np.array([latency[f.stem] for f in files])
    import benchmark_local_device as local

    from predictor.generator import sample_specs, write_models

    specs = (sample_specs(local.TEST_SEED, 100, kinds=("cnn",))
             + sample_specs(local.TEST_SEED, 60, kinds=("transformer",)))
    paths = write_models(specs, local.CACHE / f"seed{local.TEST_SEED}", progress=False)
    rows = local.combined_passes(list(source), paths)
    return [str(r["model"]) for r in rows], np.array([r["latency_ms"] for r in rows])


def run(args: argparse.Namespace) -> dict:
    predictor = Predictor.load(args.checkpoint)
    devices = {d["name"]: d for d in _described()}
    out: dict = {}
    for device, sets in TEST_SETS.items():
        if device not in devices:
            print(f"skip {device}: no default device (export_default_devices)")
            continue
        family_files = sorted(n for n in devices if n.startswith(f"{device}@"))
        for name, source in sets.items():
            models, measured = test_set(predictor, device, name, source)
            cell = {}
            for label in [device, *family_files]:
                pred = predictor.predict(models, device=label)
                cell[label] = {**metrics(pred, measured),
                               "bias": float(np.exp(np.median(np.log(pred / measured))))}
                if label == device:
                    cell[label]["raw"] = (pred.tolist(), measured.tolist())
            out.setdefault(device, {})[name] = cell
    return out


def _described() -> list[dict]:
    from predictor.device_store import describe_devices

    return describe_devices()


def report(out: dict) -> None:
    for key, title in (("mape", "MAPE %"), ("spearman", "Spearman"),
                       ("within10", "within ±10 % (%)")):
        print(f"\n{title}: default device | each dataset's embedding (the worst in bold)\n")
        print("| device | test models | default | per dataset |")
        print("|---|---|---|---|")
        for device, cells in out.items():
            for name, cell in cells.items():
                per = {label.split("@")[1]: m[key] for label, m in cell.items() if "@" in label}
                worst = max(per.values()) if key == "mape" else min(per.values())
                shown = ", ".join(f"{z} **{v:.3g}**" if v == worst else f"{z} {v:.3g}"
                                  for z, v in per.items())
                print(f"| {device} | {name} ({len(cell[device]['raw'][1])}) | "
                      f"{cell[device][key]:.3g} | {shown} |")


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [(d, n, c[d]) for d, cs in out.items() for n, c in cs.items()]
    cols = 4
    rows = (len(cells) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax, (device, name, m) in zip(axes.flat, cells, strict=False):
        pred, true = (np.array(v) for v in m["raw"])
        ax.loglog(true, pred, ".", ms=3)
        lo, hi = min(true.min(), pred.min()), max(true.max(), pred.max())
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.5)
        ax.set_title(f"{device} / {name}\nMAPE {m['mape']:.1f} %, rho {m['spearman']:.3f}",
                     fontsize=8)
        ax.set_xlabel("measured ms")
        ax.set_ylabel("predicted ms")
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=Path("results/default_devices.json"))
    args = parser.parse_args()
    out = run(args)
    report(out)
    args.json.write_text(json.dumps(
        {d: {n: {label: {k: v for k, v in m.items() if k != "raw"} for label, m in c.items()}
             for n, c in cs.items()} for d, cs in out.items()}, indent=1))
    png = args.json.with_suffix(".png")
    plot(out, png)
    print(f"\nwrote {args.json} and {png}")


if __name__ == "__main__":
    main()
