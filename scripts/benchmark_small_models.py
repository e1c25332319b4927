"""Small networks (4-100 us: MLPs, small CNNs, 1-D CNNs, one attention block) predicted
after calibrating on the reference set, with and without the runtime's call floor.

    python scripts/benchmark_small_models.py --json results/small_models.json
    python scripts/benchmark_small_models.py --threads 2 --json OUT.json      # selection
    python scripts/benchmark_small_models.py --graph-optimization disabled --json OUT.json
    python scripts/benchmark_small_models.py --default-device epyc-ort-2t --threads 2 \
        --json results/small_models_default_ort-2t.json   # a shipped default device

The reference set's smallest model takes ~30 us on this VM; a 3-layer MLP takes 4 us, most
of it the runtime's per-inference floor (the call, binding inputs, copying outputs), which
no prediction of the work extrapolates to. `latpred calibrate --measure` times the floor
with the set (`predictor.measure.call_floor_ms`) and adapts on latencies less it
(`Predictor.adapt(call_floor_ms=...)`). This script times the reference set, the floor and
the networks below in one pass under ONNX Runtime, adapts the shipped predictor as
`latpred calibrate --measure` does, and prints predicted / measured with the floor and
without it, per family. Writes JSON and a PNG of predicted vs measured.

`--default-device NAME` times the networks alone and predicts them with a shipped default
device instead (time them under its runtime: `--threads`, `--graph-optimization`); "with
floor" is the device as shipped, "no floor" the same without its recorded floor added
back and without its lower bound (the least floor its tables record, stop 43).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from predictor.api import Predictor
from predictor.calibration import REFERENCE_SET_STRATEGY, measure_reference_set
from predictor.evaluation import metrics

CACHE = Path("datasets/cache/small_models")
SEED = 123


class _AttentionBlock(nn.Module):
    """A pre-norm transformer encoder block (one head) written out, so it exports anywhere."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.scale = dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, -1)
        x = x + self.out(torch.softmax(q @ k.transpose(1, 2) * self.scale, -1) @ v)
        return x + self.mlp(self.norm2(x))


def networks(per_family: int = 10) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Name -> (module, example input), drawn deterministically from SEED."""
    rng = np.random.default_rng(SEED)
    out: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    for i in range(per_family):
        depth, width, inp = int(rng.integers(1, 7)), int(2 ** rng.integers(3, 10)), int(2 ** rng.integers(2, 9))
        layers: list[nn.Module] = []
        c = inp
        for _ in range(depth):
            layers += [nn.Linear(c, width), nn.ReLU()]
            c = width
        out[f"mlp{i:02d}-d{depth}-w{width}-i{inp}"] = (
            nn.Sequential(*layers, nn.Linear(c, 10)), torch.randn(1, inp))
    for i in range(per_family):
        n, ch = int(rng.integers(1, 5)), int(2 ** rng.integers(2, 6))
        res, c_in = int(2 ** rng.integers(3, 6)), int(rng.choice([1, 3]))
        layers, c = [], c_in
        for j in range(n):
            layers += [nn.Conv2d(c, ch, 3, padding=1, stride=2 if j % 2 else 1),
                       nn.BatchNorm2d(ch), nn.ReLU()]
            c = ch
        out[f"cnn{i:02d}-n{n}-c{ch}-r{res}"] = (
            nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)),
            torch.randn(1, c_in, res, res))
    for i in range(per_family):
        ch, length = int(2 ** rng.integers(2, 6)), int(2 ** rng.integers(4, 9))
        out[f"conv1d{i:02d}-c{ch}-l{length}"] = (
            nn.Sequential(nn.Conv1d(1, ch, 5, padding=2), nn.ReLU(),
                          nn.Conv1d(ch, ch, 5, padding=2), nn.ReLU(),
                          nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(ch, 4)),
            torch.randn(1, 1, length))
    for i in range(per_family):
        dim, seq = int(rng.choice([16, 32, 64])), int(rng.choice([4, 8, 16, 32]))
        out[f"attention{i:02d}-d{dim}-s{seq}"] = (_AttentionBlock(dim), torch.randn(1, seq, dim))
    return out


def export_all(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    paths = []
    for name, (module, x) in networks().items():
        path = folder / f"{name}.onnx"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            torch.onnx.export(module.eval(), (x,), str(tmp), dynamo=False, opset_version=17)
            tmp.replace(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--graph-optimization", default="all",
                        choices=("all", "extended", "basic", "disabled"))
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--default-device", default=None, metavar="NAME",
                        help="predict with this shipped default device instead of "
                             "calibrating on the reference set")
    args = parser.parse_args()
    paths = export_all(CACHE)
    predictor = Predictor.load(args.checkpoint)
    predictions = {}
    if args.default_device:
        measured, floor = _measure_alone(paths, args.threads, args.graph_optimization)
        state = predictor.device(args.default_device)
        recorded, bound = state.call_floor_ms, state.min_ms
        predictions["with floor"] = predictor.predict(paths, device=args.default_device)
        state.call_floor_ms = state.min_ms = 0.0
        predictions["no floor"] = predictor.predict(paths, device=args.default_device)
        state.call_floor_ms, state.min_ms = recorded, bound
        source = (f"default device {args.default_device} (recorded floor {recorded * 1e3:.1f} "
                  f"us, lower bound {bound * 1e3:.1f} us)")
    else:
        rows, info = measure_reference_set(threads=args.threads, include=paths,
                                           graph_optimization=args.graph_optimization)
        own = {p.resolve() for p in paths}
        by_path = {Path(r["model"]).resolve(): r["latency_ms"] for r in rows}
        refs = [Path(r["model"]) for r in rows if Path(r["model"]).resolve() not in own]
        ref_ms = [by_path[p.resolve()] for p in refs]
        measured = np.array([by_path[p.resolve()] for p in paths])
        floor = float(info["call_floor_ms"])
        strategy = REFERENCE_SET_STRATEGY["cpu"]  # as `latpred calibrate --measure` on a CPU
        for label, call_floor in (("with floor", floor), ("no floor", None)):
            predictor.adapt(label, refs, ref_ms, strategy=strategy, call_floor_ms=call_floor)
            predictions[label] = predictor.predict(paths, device=label)
        source = f"reference set {min(ref_ms) * 1e3:.0f} us .. {max(ref_ms):.1f} ms"
    family_of = np.array([p.stem.split("-")[0].rstrip("0123456789") for p in paths])
    families = sorted(set(family_of))
    print(f"\n## Small networks, this CPU, ONNX Runtime {args.threads} thread(s), graph "
          f"optimization {args.graph_optimization}; call floor {floor * 1e3:.1f} us; "
          f"{source}\n")
    print("| networks | n | measured us (median) | MAPE with floor | no floor | within ±10 % "
          "with / without | within 2x with / without |")
    print("|---|---|---|---|---|---|---|")
    summary: dict = {}
    for family in [*families, "all"]:
        mask = np.ones(len(paths), bool) if family == "all" else family_of == family
        m = {label: metrics(p[mask], measured[mask]) for label, p in predictions.items()}
        within2 = {label: float(np.mean(np.abs(np.log(p[mask] / measured[mask])) < np.log(2)) * 100)
                   for label, p in predictions.items()}
        summary[family] = {label: {**m[label], "within2x": within2[label]} for label in m}
        print(f"| {family} | {int(mask.sum())} | {np.median(measured[mask]) * 1e3:.1f} | "
              f"{m['with floor']['mape']:.1f} | {m['no floor']['mape']:.1f} | "
              f"{m['with floor']['within10']:.0f} / {m['no floor']['within10']:.0f} | "
              f"{within2['with floor']:.0f} / {within2['no floor']:.0f} |")
    for label, pred in predictions.items():
        log_error = np.abs(np.log(pred / measured))
        summary["all"][label]["mean_abs_log_error"] = float(log_error.mean())
        print(f"\n{label}: mean |log(predicted / measured)| {log_error.mean():.3f} "
              f"(MAPE punishes over-prediction more than under-prediction)")
    print("\n| network | measured us | with floor / measured | no floor / measured |")
    print("|---|---|---|---|")
    for p, y, a, b in zip(paths, measured, predictions["with floor"], predictions["no floor"],
                          strict=True):
        print(f"| {p.stem} | {y * 1e3:.1f} | {a / y:.2f} | {b / y:.2f} |")
    if args.json:
        result = {"threads": args.threads, "graph_optimization": args.graph_optimization,
                  "default_device": args.default_device,
                  "call_floor_ms": floor, "summary": summary,
                  "models": {p.stem: {"measured_ms": float(y), "with_floor_ms": float(a),
                                      "no_floor_ms": float(b)}
                             for p, y, a, b in zip(paths, measured, predictions["with floor"],
                                                   predictions["no floor"], strict=True)}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.json)
        _plot(measured, predictions, floor, args.json.with_suffix(".png"))
        print(f"\nwrote {args.json} and {args.json.with_suffix('.png')}")


def _measure_alone(paths: list[Path], threads: int, graph_optimization: str
                   ) -> tuple[np.ndarray, float]:
    """(latency ms of each ONNX file, the runtime's call floor ms) under ONNX Runtime,
    drift-corrected as every measurement here."""
    from functools import partial

    from predictor.measure import call_floor_ms, measure_many, measure_onnx, speed_probe_for

    measure = partial(measure_onnx, backend="onnxruntime", device="cpu", threads=threads,
                      graph_optimization=graph_optimization)
    rows, _ = measure_many([str(p) for p in paths], measure,
                           probe=speed_probe_for("onnxruntime", "cpu", threads),
                           desc="small networks")
    floor = call_floor_ms("onnxruntime", "cpu", threads, graph_optimization)
    return np.array([r.latency_ms for r in rows]), float(floor or 0.0)


def _plot(measured: np.ndarray, predictions: dict, floor: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for (label, pred), marker in zip(predictions.items(), "ox", strict=True):
        ax.loglog(measured * 1e3, pred * 1e3, marker, label=label, alpha=0.7)
    values = np.concatenate([measured, *predictions.values()]) * 1e3
    ax.plot([values.min(), values.max()], [values.min(), values.max()], "k--", lw=0.8)
    ax.axhline(floor * 1e3, color="grey", lw=0.6, ls=":", label="call floor")
    ax.set_xlabel("measured us")
    ax.set_ylabel("predicted us")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
