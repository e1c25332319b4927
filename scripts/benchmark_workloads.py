"""Workloads unlike any training model, predicted from the shipped reference set: where the
predictor holds up and where it does not, as a deployment engineer would meet them.

    python scripts/benchmark_workloads.py --json results/workloads.json
    python scripts/benchmark_workloads.py --runtime ort-2t     # a training runtime

This machine under a runtime is the device (default: the held-out ONNX Runtime, 1 thread,
never trained on). The reference set and the workloads below are timed in one pass (as
`latpred calibrate NAME --measure --include` does, drift-corrected); the predictor is
calibrated on the reference set alone, as `latpred calibrate --measure` does on a CPU
(strategy and call floor), and predicts each workload as `latpred predict` does (stand-ins
for untrained ops, flags). Each workload probes one thing no training set holds:

- 2-D MLPs of 32 and 512 rows (exported as Gemm; training Gemms are one-row classifiers);
- ResNet-18 at batch 4 and 16 (every CPU training model runs at batch 1);
- GPT-2 small at 512 tokens (training transformers stop at 256);
- one decoding step of a 6-layer decoder with a KV cache of 128 and 1024 tokens (matrix-
  vector products: memory-bound), and its 128-token prefill;
- PyTorch's own `nn.TransformerEncoder` (its attention exports differently);
- an int8 MLP (ONNX Runtime's dynamic quantisation), a GRU and a 3-D CNN (op types no
  training graph holds: flagged).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from predictor.api import Predictor, calibration_batches
from predictor.calibration import CALL_FLOOR_DEVICES, REFERENCE_SET_STRATEGY, measure_reference_set
from predictor.graph import extract_graph
from predictor.model_sets import BENCHMARK_CONFIGS, HELD_OUT_CONFIG
from predictor.search import uncertain
from predictor.storage import atomic_write_bytes

CACHE = Path("datasets/cache/workloads")
RUNTIMES = {name: c for name, c in BENCHMARK_CONFIGS.items() if c.backend != "torch"}


class Decoder(nn.Module):
    """A pre-norm decoder of `layers` blocks over inputs (B, T, dim) with a KV cache of
    `past` tokens per layer given as two inputs (layers, B, heads, past, dim / heads)."""

    def __init__(self, dim: int = 512, heads: int = 8, layers: int = 6):
        super().__init__()
        self.heads = heads
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(layers))
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.fc = nn.ModuleList(nn.Linear(dim, 4 * dim) for _ in range(layers))
        self.out = nn.ModuleList(nn.Linear(4 * dim, dim) for _ in range(layers))
        self.ln1 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.ln2 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))

    def forward(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor
                ) -> torch.Tensor:
        b, t, d = x.shape
        for i in range(len(self.qkv)):
            q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2)
                       for z in self.qkv[i](self.ln1[i](x)).split(d, -1))
            k, v = torch.cat([past_k[i], k], 2), torch.cat([past_v[i], v], 2)
            att = F.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, -1) @ v
            x = x + self.proj[i](att.transpose(1, 2).reshape(b, t, d))
            x = x + self.out[i](F.gelu(self.fc[i](self.ln2[i](x))))
        return x


def _decoder(tokens: int, past: int) -> tuple[nn.Module, tuple]:
    cache = torch.randn(6, 1, 8, past, 64)
    return Decoder(), (torch.randn(1, tokens, 512), cache, cache.clone())


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256))


def _video_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv3d(3, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv3d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(64, 10))


class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(64, 128, num_layers=2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


def _zoo(name: str, shape: tuple[int, ...]) -> Callable[[], tuple[nn.Module, tuple]]:
    def build() -> tuple[nn.Module, tuple]:
        from predictor import model_zoo

        return model_zoo.build(name), (model_zoo.example_input(name, shape),)
    return build


# name -> (what it probes, builder of (module, example inputs))
WORKLOADS: dict[str, tuple[str, Callable[[], tuple[nn.Module, tuple]]]] = {
    "mlp2d_rows32": ("2-D MLP, 32 rows (Gemm)", lambda: (_mlp(), (torch.randn(32, 256),))),
    "mlp2d_rows512": ("2-D MLP, 512 rows (Gemm)", lambda: (_mlp(), (torch.randn(512, 256),))),
    "resnet18_b4": ("batch 4", _zoo("resnet18", (4, 3, 224, 224))),
    "resnet18_b16": ("batch 16", _zoo("resnet18", (16, 3, 224, 224))),
    "gpt2_t512": ("512 tokens", _zoo("gpt2_small", (1, 512))),
    "decode_past128": ("decode step, KV cache 128", lambda: _decoder(1, 128)),
    "decode_past1024": ("decode step, KV cache 1024", lambda: _decoder(1, 1024)),
    "prefill_t128": ("prefill, 128 tokens", lambda: _decoder(128, 1)),
    "torch_encoder": ("nn.TransformerEncoder", lambda: (nn.TransformerEncoder(
        nn.TransformerEncoderLayer(384, 6, 1536, batch_first=True, activation="gelu"), 6,
        enable_nested_tensor=False), (torch.randn(1, 197, 384),))),
    "gru": ("GRU, 2 layers, 50 steps", lambda: (_Recurrent(), (torch.randn(1, 50, 64),))),
    "conv3d": ("3-D CNN, 8 frames", lambda: (_video_cnn(), (torch.randn(1, 3, 8, 64, 64),))),
    "mlp_int8": ("int8 MLP, 512 tokens", lambda: (_mlp(), (torch.randn(1, 512, 256),))),
}
QUANTIZED = ("mlp_int8",)


def workload_files(folder: Path = CACHE) -> list[Path]:
    """The workloads' ONNX files (exported once, deterministically)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (_, build) in WORKLOADS.items():
        path = folder / f"{name}.onnx"
        if not path.exists():
            torch.manual_seed(0)
            module, inputs = build()
            tmp = folder / f"{name}.tmp.onnx"
            torch.onnx.export(module.eval(), inputs, str(tmp), dynamo=False)
            if name in QUANTIZED:
                from onnxruntime.quantization import quantize_dynamic

                quantize_dynamic(tmp, path.with_suffix(".q.onnx"))
                tmp.unlink()
                tmp = path.with_suffix(".q.onnx")
            atomic_write_bytes(path, tmp.read_bytes())
            tmp.unlink()
        paths.append(path)
    return paths


def run(args: argparse.Namespace) -> dict:
    config = RUNTIMES[args.runtime]
    paths = workload_files()
    rows, info = measure_reference_set(
        backend=config.backend, device=config.device, threads=config.threads,
        graph_optimization=config.graph_optimization, max_seconds=args.max_seconds,
        include=paths)
    latency = {str(r["model"]): float(r["latency_ms"]) for r in rows}
    included = set(paths)
    refs = [r["model"] for r in rows if Path(str(r["model"])) not in included]
    floor = info.get("call_floor_ms") if config.device in CALL_FLOOR_DEVICES else None
    predictor = Predictor.load(args.checkpoint)
    predictor.adapt("bench", refs, [latency[r] for r in refs],
                    strategy=REFERENCE_SET_STRATEGY[config.device], call_floor_ms=floor)
    opgraphs = [extract_graph(p) for p in paths]
    values, spread = predictor.predict_with_spread(opgraphs, device="bench")
    calibrated = calibration_batches(predictor.device_info("bench"))
    out = {"runtime": args.runtime, "references": len(refs), "call_floor_ms": floor,
           "workloads": []}
    for name, path, g, v, flag in zip(WORKLOADS, paths, opgraphs, values, uncertain(spread),
                                      strict=True):
        measured_ms = latency[str(path)]
        flags = [*(f"unfamiliar {op}" for op in predictor.unfamiliar_ops(g)),
                 *(["uncertain"] if flag else []),
                 *([f"batch {g.batch_size}"] if g.batch_size not in calibrated else [])]
        out["workloads"].append({"name": name, "probes": WORKLOADS[name][0],
                                 "measured_ms": measured_ms, "predicted_ms": float(v),
                                 "ratio": float(v) / measured_ms, "flags": flags})
    return out


def report(out: dict) -> None:
    print(f"\n## Workloads beyond the training sets ({out['runtime']}), calibrated on the "
          f"{out['references']} reference models\n")
    print("| workload | probes | measured ms | predicted ms | predicted / measured | flags |")
    print("|---|---|---|---|---|---|")
    for w in out["workloads"]:
        print(f"| {w['name']} | {w['probes']} | {w['measured_ms']:.3f} | "
              f"{w['predicted_ms']:.3f} | {w['ratio']:.2f} | {', '.join(w['flags'])} |")
    ratios = np.array([w["ratio"] for w in out["workloads"]])
    print(f"\nwithin 1.25x: {int(np.sum(np.abs(np.log(ratios)) <= np.log(1.25)))} of "
          f"{len(ratios)}; within 2x: {int(np.sum(np.abs(np.log(ratios)) <= np.log(2)))}")


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true = np.array([w["measured_ms"] for w in out["workloads"]])
    pred = np.array([w["predicted_ms"] for w in out["workloads"]])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.loglog(true, pred, "o")
    for w in out["workloads"]:
        ax.annotate(w["name"], (w["measured_ms"], w["predicted_ms"]), fontsize=6)
    lo, hi = min(true.min(), pred.min()), max(true.max(), pred.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("measured ms")
    ax.set_ylabel("predicted ms")
    ax.set_title(f"workloads beyond the training sets, {out['runtime']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=list(RUNTIMES), default=HELD_OUT_CONFIG.name,
                        help="how this machine runs the models (default: the held-out "
                             "ONNX Runtime 1 thread)")
    parser.add_argument("--max-seconds", type=float, default=3.0,
                        help="timing budget per model")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    start = time.time()
    out = run(args)
    report(out)
    print(f"\nseconds: {time.time() - start:.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        plot(out, args.json.with_suffix(".png"))
        print(f"wrote {args.json} and {args.json.with_suffix('.png')}")


if __name__ == "__main__":
    main()
