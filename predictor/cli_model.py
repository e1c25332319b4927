"""`latpred train` and `latpred predict` / `latpred devices`: thin handlers over the library."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_train(args: argparse.Namespace) -> int:
    from predictor.config import load_config
    from predictor.shipped import export_training_devices
    from predictor.training import train

    config = load_config(args.config)
    checkpoint = train(config, args.out, data_dir=args.data_dir, cache_root=args.cache_dir,
                       log_dir=args.log_dir, use_wandb=args.wandb)
    print(f"wrote {args.out} ({checkpoint.info})")
    if args.export_devices:
        paths = export_training_devices(checkpoint, args.export_devices, data_dir=args.data_dir,
                                        cache_root=args.cache_dir)
        print(f"wrote {len(paths)} device embeddings to {args.export_devices}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from predictor.api import Predictor
    from predictor.onnx_io import parse_shape

    predictor = Predictor.load(args.checkpoint)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    latencies = predictor.predict(args.models, device=args.device, input_shape=shape)
    rows = [{"model": str(m), "device": args.device, "latency_ms": float(v)}
            for m, v in zip(args.models, latencies, strict=True)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['latency_ms']:10.3f} ms  {row['model']}  ({args.device})")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from predictor.device_store import list_device_files

    files = list_device_files()
    if args.json:
        out = []
        for name, path in files.items():
            info = json.loads(path.read_text()).get("info", {})
            out.append({"name": name, "path": str(path), **info})
        print(json.dumps(out, indent=2))
    else:
        for name, path in files.items():
            print(f"{name:24s} {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train a predictor checkpoint from a YAML config")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--out", type=Path, default=Path("checkpoints/latpred.ckpt"))
    p.add_argument("--export-devices", type=Path, default=None, metavar="DIR",
                   help="also write the training devices' embeddings to DIR")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--log-dir", default="runs")
    p.add_argument("--wandb", action="store_true", help="also log to wandb (offline)")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("predict", help="predict latency of ONNX models on a known device")
    p.add_argument("models", nargs="+", metavar="MODEL.onnx")
    p.add_argument("--device", required=True)
    p.add_argument("--input-shape", metavar="SHAPE")
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("devices", help="list known devices (shipped and calibrated)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_devices)
