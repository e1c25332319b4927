"""Selection evidence for reading 1-D CNNs as 2-D ones of height 1 (`stand_ins.unfold_sequence`).

    python scripts/select_sequence_unfold.py --json results/valid/stop30/sequence_unfold.json

Ten 1-D CNNs (keyword spotting, ECG, temporal, a wav2vec-like front end, depthwise-separable;
none of them in `benchmark_unfamiliar_ops.py`) are timed on this CPU under two selection
runtimes, torch eager 1 thread and ONNX Runtime 2 threads (never the held-out ONNX Runtime
1 thread), and predicted by the shipped checkpoint calibrated on the reference set timed
under the same runtime (`results/known_models_measurements/<runtime>-ref2.csv`), with and
without the unfolding. Prints predicted / measured per model and the MAPE.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from predictor import stand_ins
from predictor.api import Predictor
from predictor.measure import measure_onnx, measure_torch

REFERENCE_CSV = "results/known_models_measurements/{}-ref2.csv"
RUNTIMES = ("torch-1t", "ort-2t")
FOLDER = Path("datasets/cache/sequence_unfold")


def _block(c_in: int, c_out: int, k: int, stride: int = 1, dilation: int = 1,
           norm: str | None = "bn", act: type[nn.Module] = nn.ReLU, groups: int = 1
           ) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv1d(c_in, c_out, k, stride, padding=(k // 2) * dilation,
                                         dilation=dilation, groups=groups)]
    if norm == "bn":
        layers.append(nn.BatchNorm1d(c_out))
    elif norm == "gn":
        layers.append(nn.GroupNorm(4, c_out))
    return [*layers, act()]


def _head(channels: int, classes: int = 10, pool: str = "avg") -> list[nn.Module]:
    return [nn.AdaptiveAvgPool1d(1) if pool == "avg" else nn.AdaptiveMaxPool1d(1),
            nn.Flatten(), nn.Linear(channels, classes)]


def models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """The ten selection networks and their (1, C, L) inputs."""
    torch.manual_seed(0)
    b = _block
    deep = [layer for i in range(8) for layer in b(16 if i == 0 else 48, 48, 3, 1 + i % 2)]
    nets = {
        "kws-40x100": ([*b(40, 64, 3), *b(64, 64, 3), *b(64, 64, 3), *b(64, 64, 3),
                        *_head(64, 12)], (1, 40, 100)),
        "kws-wide-40x200": ([*b(40, 128, 5), *b(128, 128, 5, 2), *b(128, 256, 3),
                             *_head(256, 12)], (1, 40, 200)),
        "ecg-1x5000": ([*b(1, 16, 7, 2), nn.MaxPool1d(2), *b(16, 32, 7, 2), nn.MaxPool1d(2),
                        *b(32, 64, 5, 2), *_head(64, 5)], (1, 1, 5000)),
        "ecg-12x2500": ([*b(12, 32, 15, 2), *b(32, 64, 9, 2), *b(64, 128, 5, 2),
                         *b(128, 128, 3, 2), *_head(128, 5, "max")], (1, 12, 2500)),
        "tcn-dil-8x1000": ([*b(8, 64, 3), *b(64, 64, 3, dilation=2), *b(64, 64, 3, dilation=4),
                            *b(64, 64, 3, dilation=8), *_head(64)], (1, 8, 1000)),
        "wav-front-1x32000": ([*b(1, 64, 10, 5, norm="gn", act=nn.GELU),
                               *[layer for _ in range(3)
                                 for layer in b(64, 64, 3, 2, norm=None, act=nn.GELU)],
                               *_head(64)], (1, 1, 32000)),
        "dwsep-64x400": ([*b(64, 64, 9, groups=64), *b(64, 128, 1), *b(128, 128, 9, 2, groups=128),
                          *b(128, 256, 1), *_head(256)], (1, 64, 400)),
        "deep-16x2000": ([*deep, *_head(48)], (1, 16, 2000)),
        "tiny-1x8000": ([*b(1, 8, 5, 4), *b(8, 16, 5, 4), *_head(16, 2, "max")], (1, 1, 8000)),
        "big-128x500": ([*b(128, 256, 5), *b(256, 256, 5), *b(256, 512, 3, 2), *_head(512)],
                        (1, 128, 500)),
    }
    return {name: (nn.Sequential(*layers).eval(), shape) for name, (layers, shape) in nets.items()}


def measure(max_seconds: float) -> tuple[list[str], list[Path], dict[str, list[float]]]:
    """(names, ONNX files, {runtime: latencies ms}) of the selection networks, timed here."""
    from tqdm import tqdm

    FOLDER.mkdir(parents=True, exist_ok=True)
    names, paths, times = [], [], {r: [] for r in RUNTIMES}
    for name, (module, shape) in tqdm(models().items(), desc="measure", unit="model"):
        x = torch.randn(*shape)
        path = FOLDER / f"{name}.onnx"
        torch.onnx.export(module, (x,), str(path), dynamo=False)
        times["torch-1t"].append(measure_torch(module, x, threads=1,
                                               max_seconds=max_seconds).latency_ms)
        times["ort-2t"].append(measure_onnx(path, threads=2, graph_optimization="all",
                                            max_seconds=max_seconds).latency_ms)
        names.append(name)
        paths.append(path)
    return names, paths, times


def run(max_seconds: float) -> dict:
    import benchmark_known_models as known

    names, paths, times = measure(max_seconds)
    predictor = Predictor.load()
    refs = known.network_files(known.CACHE / "onnx")[:len(known.reference_specs())]
    out: dict = {"models": names, "measured_ms": times, "predicted_ms": {}, "mape": {}}
    unfold = stand_ins.unfold_sequence
    for runtime in RUNTIMES:
        ref_ms, _ = known.measured(runtime, False, 3.0, [Path(REFERENCE_CSV.format(runtime))])
        predictor.adapt(runtime, predictor.graphs(refs, batch=1), [ref_ms[p.stem] for p in refs])
        y = np.array(times[runtime])
        for label, fn in (("as is", lambda g: g), ("unfolded", unfold)):
            stand_ins.unfold_sequence = fn  # the comparison: the same path without it
            try:
                pred = predictor.predict(paths, runtime)
            finally:
                stand_ins.unfold_sequence = unfold
            out["predicted_ms"][f"{runtime} {label}"] = pred.tolist()
            out["mape"][f"{runtime} {label}"] = float(100 * np.mean(np.abs(pred / y - 1)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    out = run(args.max_seconds)
    print("\n| model | " + " | ".join(f"{r} ms" for r in RUNTIMES) + " | "
          + " | ".join(f"{k} pred / meas" for k in out["predicted_ms"]) + " |")
    print("|---|" + "---|" * (len(RUNTIMES) + len(out["predicted_ms"])))
    for i, name in enumerate(out["models"]):
        meas = [out["measured_ms"][r][i] for r in RUNTIMES]
        ratios = [out["predicted_ms"][k][i] / out["measured_ms"][k.split()[0]][i]
                  for k in out["predicted_ms"]]
        print(f"| {name} | " + " | ".join(f"{m:.3f}" for m in meas) + " | "
              + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    print("| **MAPE %** | | | " + " | ".join(f"{v:.1f}" for v in out["mape"].values()) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
