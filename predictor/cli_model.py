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


def cmd_calibrate(args: argparse.Namespace) -> int:
    from predictor.api import Predictor
    from predictor.calibration import calibrate, measure_reference_set
    from predictor.errors import PredictorError
    from predictor.measurements import read_measurements_csv
    from predictor.onnx_io import parse_shape

    if args.measure == (args.measurements is not None):
        raise PredictorError("Give exactly one of --measure (time the reference set here) "
                             "or --measurements FILE.csv")
    if args.measure:
        rows, info = measure_reference_set(backend=args.backend, device=args.device_kind,
                                           threads=args.threads,
                                           graph_optimization=args.graph_optimization)
    else:
        rows, info = read_measurements_csv(args.measurements)
        info = {**info, "source": str(args.measurements)}
    predictor = Predictor.load(args.checkpoint)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    stored = calibrate(predictor, args.name, rows, info, strategy=args.strategy,
                       input_shape=shape)
    if args.json:
        print(json.dumps({"device": args.name, **stored}, indent=2, default=str))
    else:
        print(f"calibrated '{args.name}' from {len(rows)} measurements "
              f"(strategy: {stored['strategy']}); predict with: "
              f"latpred predict MODEL.onnx --device {args.name}")
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

    p = sub.add_parser("calibrate", help="adapt the predictor to a new device from ~10 "
                                         "measured models, and store it")
    p.add_argument("name", help="device name to store, e.g. myboard")
    p.add_argument("--measure", action="store_true",
                   help="time the shipped reference set on this machine")
    p.add_argument("--measurements", type=Path, default=None, metavar="FILE.csv",
                   help="your own measurements: CSV with header model,latency_ms (model = "
                        "ONNX path, relative to the CSV's folder)")
    p.add_argument("--backend", choices=("onnxruntime",), default="onnxruntime")
    p.add_argument("--device-kind", choices=("cpu", "cuda"), default="cpu",
                   help="where --measure runs the models")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--graph-optimization", choices=("all", "extended", "basic", "disabled"),
                   default="all")
    p.add_argument("--strategy", default="auto",
                   help="auto (cross-validated), amortised, nearest, finetune, finetune+nearest")
    p.add_argument("--input-shape", metavar="SHAPE")
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_calibrate)

    p = sub.add_parser("devices", help="list known devices (shipped and calibrated)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_devices)
