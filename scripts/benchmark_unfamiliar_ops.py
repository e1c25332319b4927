"""Models with op types no training graph held (LSTM, GRU, Einsum, ConvTranspose, Conv1d,
GroupNorm, int8 quantisation, 3-D convolutions, ...): measured on this CPU, predicted after calibrating on the reference set,
with and without stand-ins (`predictor.stand_ins`).

    python scripts/benchmark_unfamiliar_ops.py --json results/unfamiliar_ops.json

Times the reference set and the models below in one pass under ONNX Runtime (`--threads`,
default 1), adapts the shipped predictor to the reference set (as `latpred calibrate --measure`
does on a CPU: `calibration.REFERENCE_SET_STRATEGY`, auto+kernelsum since stop 31, the
runtime's call floor taken off since stop 32), and prints
predicted / measured per model: "raw" featurises the graphs as extracted (untrained op
types feed untrained weights, volumes stay rank 5), "stand-ins" as `latpred predict` does. Writes a PNG next to
the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from predictor.api import Predictor
from predictor.calibration import REFERENCE_SET_STRATEGY, measure_reference_set
from predictor.graph import extract_graph
from predictor.graph_store import GraphStore

CACHE = Path("datasets/cache/unfamiliar_ops")


class _Sequence(nn.Module):
    """A recurrent classifier: `cell` layers over the sequence, a linear head on the last step."""

    def __init__(self, cell: type[nn.Module], layers: int, hidden: int,
                 bidirectional: bool = False) -> None:
        super().__init__()
        self.rnn = cell(64, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


class _EinsumAttention(nn.Module):
    def __init__(self, dim: int = 128, heads: int = 4) -> None:
        super().__init__()
        self.qkv, self.heads = nn.Linear(dim, 3 * dim), heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        att = torch.einsum("bqhd,bkhd->bhqk", q, k).softmax(-1)
        return torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, n, d)


def networks() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Name -> (module, example input): kinds of models no training set holds."""
    audio = nn.Sequential(nn.Conv1d(1, 32, 9, 4), nn.GroupNorm(4, 32), nn.GELU(),
                          nn.Conv1d(32, 64, 5, 2), nn.GroupNorm(8, 64), nn.LeakyReLU(),
                          nn.AdaptiveMaxPool1d(1))
    decoder = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.PReLU(),
                            nn.Upsample(scale_factor=2, mode="bilinear"),
                            nn.Conv2d(32, 3, 3, padding=1), nn.Tanh())
    def video(widths: tuple[int, ...]) -> nn.Module:
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers += [nn.Conv3d(c_in, c_out, 3, padding=1), nn.BatchNorm3d(c_out), nn.ReLU()]
            layers += [nn.MaxPool3d(2)] if i < len(widths) - 2 else []
        return nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                             nn.Linear(widths[-1], 10))

    return {
        "lstm-2x128-seq20": (_Sequence(nn.LSTM, 2, 128), torch.randn(1, 20, 64)),
        "lstm-1x256-seq100": (_Sequence(nn.LSTM, 1, 256), torch.randn(1, 100, 64)),
        "bilstm-1x128-seq50": (_Sequence(nn.LSTM, 1, 128, True), torch.randn(1, 50, 64)),
        "gru-1x128-seq20": (_Sequence(nn.GRU, 1, 128), torch.randn(1, 20, 64)),
        "gru-2x256-seq60": (_Sequence(nn.GRU, 2, 256), torch.randn(1, 60, 64)),
        "einsum-attention": (_EinsumAttention(), torch.randn(1, 64, 128)),
        "convtranspose-decoder": (decoder, torch.randn(1, 64, 16, 16)),
        "conv1d-audio": (audio, torch.randn(1, 1, 16000)),
        "conv3d-video-8x64x64": (video((3, 16, 32, 64)), torch.randn(1, 3, 8, 64, 64)),
        "conv3d-video-16x112x112": (video((3, 16, 16, 32, 32)), torch.randn(1, 3, 16, 112, 112)),
    }


def quantized_resnets(folder: Path) -> list[Path]:
    """ResNet-18 at 112 x 112 quantised to int8 by ONNX Runtime: dynamic (ConvInteger,
    MatMulInteger) and static in the QDQ format (QuantizeLinear / DequantizeLinear)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_dynamic,
        quantize_static,
    )

    from predictor import model_zoo

    class Calibration(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{name: rng.normal(size=(1, 3, 112, 112)).astype("float32")}
                                 for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    float_path = folder / "resnet18-112.onnx"
    paths = [folder / "resnet18-int8-dynamic.onnx", folder / "resnet18-int8-qdq.onnx"]
    if all(p.exists() for p in paths):
        return paths
    float_path.write_bytes(model_zoo.export("resnet18", (1, 3, 112, 112)))
    input_name = onnx.load(float_path).graph.input[0].name
    dynamic, qdq = (p.with_suffix(".tmp.onnx") for p in paths)
    quantize_dynamic(float_path, dynamic)
    quantize_static(float_path, qdq, Calibration(input_name), quant_format=QuantFormat.QDQ)
    for tmp, path in zip((dynamic, qdq), paths, strict=True):
        tmp.replace(path)
    return paths


def export_all(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (module, x) in networks().items():
        path = folder / f"{name}.onnx"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            torch.onnx.export(module.eval(), (x,), str(tmp), dynamo=False, opset_version=17)
            tmp.replace(path)
        paths.append(path)
    return paths + quantized_resnets(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    paths = export_all(CACHE)
    rows, info = measure_reference_set(threads=args.threads, include=paths)
    by_path = {Path(r["model"]).resolve(): r["latency_ms"] for r in rows}
    refs = [Path(r["model"]) for r in rows if Path(r["model"]).resolve() not in
            {p.resolve() for p in paths}]
    measured = np.array([by_path[p.resolve()] for p in paths])
    predictor = Predictor.load(args.checkpoint)
    predictor.adapt("this-cpu", refs, [by_path[p.resolve()] for p in refs],  # as `latpred
                    strategy=REFERENCE_SET_STRATEGY["cpu"],         # calibrate --measure`
                    call_floor_ms=info.get("call_floor_ms"))
    raw = predictor.predict(GraphStore.from_graphs([extract_graph(p) for p in paths]),
                            device="this-cpu")
    stand_in = predictor.predict(paths, device="this-cpu")
    print(f"\n## Unfamiliar ops, this CPU, ONNX Runtime {args.threads} thread(s), "
          f"calibrated on the reference set ({len(refs)} models)\n")
    print("| model | unfamiliar ops | measured ms | raw / measured | stand-ins / measured |")
    print("|---|---|---|---|---|")
    result = {}
    for p, m, r, s in zip(paths, measured, raw, stand_in, strict=True):
        ops = predictor.unfamiliar_ops(extract_graph(p))
        print(f"| {p.stem} | {', '.join(ops) or '-'} | {m:.3f} | {r / m:.2f} | {s / m:.2f} |")
        result[p.stem] = {"measured_ms": float(m), "raw_ms": float(r), "stand_in_ms": float(s),
                          "unfamiliar_ops": ops}
    for label, pred in (("raw", raw), ("stand-ins", stand_in)):
        err = np.abs(pred / measured - 1) * 100
        print(f"\n{label}: MAPE {err.mean():.1f} %, median |error| {np.median(err):.1f} %, "
              f"within 2x {np.mean((pred / measured < 2) & (measured / pred < 2)) * 100:.0f} %")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.json)
        _plot(measured, raw, stand_in, args.json.with_suffix(".png"))
        print(f"wrote {args.json} and {args.json.with_suffix('.png')}")


def _plot(measured, raw, stand_in, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.loglog(measured, raw, "x", label="raw graphs")
    ax.loglog(measured, stand_in, "o", label="stand-ins")
    lo, hi = min(measured.min(), raw.min(), stand_in.min()), max(measured.max(), stand_in.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("measured ms")
    ax.set_ylabel("predicted ms")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
