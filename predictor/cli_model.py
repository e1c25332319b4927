"""`latpred train` and `latpred predict` / `latpred devices`: thin handlers over the library."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from predictor.cli_measure import add_input_shapes_argument, add_plugin_argument, positive_int

_SPACE_BATCH_ERROR = "With --space, give the batch in --input-shape B,3,H,W, not --batch"


def cmd_train(args: argparse.Namespace) -> int:
    from predictor.config import load_config
    from predictor.shipped import export_training_devices
    from predictor.training import train

    config = load_config(args.config)
    if args.init_from is not None:
        config = replace(config, init_from=str(args.init_from))
    checkpoint = train(config, args.out, data_dir=args.data_dir, cache_root=args.cache_dir,
                       log_dir=args.log_dir, use_wandb=args.wandb)
    print(f"wrote {args.out} ({checkpoint.info})")
    if args.export_devices:
        paths = export_training_devices(checkpoint, args.export_devices, data_dir=args.data_dir,
                                        cache_root=args.cache_dir)
        print(f"wrote {len(paths)} device embeddings to {args.export_devices}")
    return 0


def _read_archs(path: Path) -> list[str]:
    """One architecture per line (blank lines and `#` comments skipped)."""
    from predictor.errors import DataError

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read archs file {path}: {exc}") from None
    archs = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not archs:
        raise DataError(f"Archs file {path} lists no architecture (one per line)")
    return archs


def _space_setting(args: argparse.Namespace) -> tuple[tuple[int, ...] | None, int | None]:
    from predictor.errors import PredictorError
    from predictor.onnx_io import parse_input_shapes

    if args.classes is not None and args.classes < 1:
        raise PredictorError(f"--classes must be >= 1, got {args.classes}")
    shape = parse_input_shapes(args.input_shape)
    if isinstance(shape, dict):
        raise PredictorError("With --space, give the network's input as one --input-shape "
                             "B,3,H,W (no input names)")
    return shape, args.classes


def _readable(value: float) -> str:
    """Three decimals, or three significant digits below 0.1 (a 4 µs model is not 0.000)."""
    return f"{value:.3f}" if value >= 0.1 else f"{value:.3g}"


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from predictor.api import METRICS, Predictor
    from predictor.errors import PredictorError
    from predictor.onnx_io import expand_model_paths, parse_input_shapes
    from predictor.search import (
        SPREAD_K,
        below_calibration,
        fastest_measured,
        uncertain,
        upper_estimate,
    )
    from predictor.spaces.custom import load_plugins
    from predictor.stand_ins import streams_weights

    load_plugins(args.plugin)
    args.models = expand_model_paths(args.models)

    if bool(args.models) == bool(args.space):
        raise PredictorError("Give either ONNX models, or --space with --archs FILE")
    if args.graph is not None and not args.space:
        raise PredictorError("--graph applies to --space architectures only")
    if args.space and args.batch is not None:
        raise PredictorError(_SPACE_BATCH_ERROR)
    predictor = Predictor.load(args.checkpoint)
    if args.space:
        if args.archs is None:
            raise PredictorError("--space needs --archs FILE (one architecture per line)")
        archs = _read_archs(args.archs)
        shape, classes = _space_setting(args)
        values, spread = predictor.predict_batch(args.space, archs, args.device,
                                                 input_shape=shape, num_classes=classes,
                                                 metric=args.metric, with_spread=True,
                                                 graph=args.graph)
        key, items = "arch", archs
        unfamiliar = [{}] * len(archs)
        streaming = [False] * len(archs)
    else:
        from predictor.api import calibration_batches, device_batch
        from predictor.device_store import list_device_files
        from predictor.graph import extract_graph

        shape = parse_input_shapes(args.input_shape)
        predictor.device(args.device)  # an unknown device fails before any extraction
        graphs = [extract_graph(m, input_shape=shape) for m in args.models]
        values, spread = predictor.predict_with_spread(graphs, device=args.device,
                                                       metric=args.metric, batch=args.batch)
        key, items = "model", [str(m) for m in args.models]
        unfamiliar = [predictor.unfamiliar_ops(g) for g in graphs]
        streaming = [streams_weights(g) for g in graphs]
        info = predictor.device_info(args.device)
        default_batch = device_batch(info)
        if args.batch is None and default_batch is not None:
            print(f"note: predicted at batch {default_batch}, the batch {args.device}'s "
                  "measurements ran at (--batch B for another)", file=sys.stderr)
        calibrated = calibration_batches(info)
        ran = [args.batch or default_batch or g.batch_size for g in graphs]
        for item, b in [(i, b) for i, b in zip(items, ran, strict=True) if b not in calibrated][:3]:
            print(f"note: {item} runs at batch {b}, and {args.device}'s measurements ran at "
                  f"batch {', '.join(map(str, calibrated))}: across batch sizes the "
                  "prediction extrapolates (calibrated at batch 1 on a 2-core CPU, ResNet-18 "
                  f"at batch 16 came out at half its time); calibrate at batch {b} "
                  "(latpred calibrate --measurements FILE.csv --batch B, or --measure "
                  "--backend torch --batch B)", file=sys.stderr)
        board = args.device.split("@")[0]
        if info.get("kind") == "training device" and board in list_device_files():
            print(f"note: {args.device} was embedded from one dataset's models only "
                  f"({device_summary(info)}); for models "
                  f"unlike them use the default device {board}", file=sys.stderr)
    upper = upper_estimate(predictor, args.device, values, spread)
    unsure = uncertain(spread)
    info = predictor.device_info(args.device)
    below = below_calibration(info, values)
    rows = [{key: item, "device": args.device, args.metric: float(v),
             f"{args.metric}_upper": float(u), **({"unfamiliar_ops": ops} if ops else {}),
             **({"uncertain": True} if flag else {}),
             **({"below_calibration": True} if low else {}),
             **({"streams_weights": True} if stream else {})}
            for item, v, u, ops, flag, low, stream in zip(items, values, upper, unfamiliar,
                                                          unsure, below, streaming, strict=True)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        unit = METRICS[args.metric]
        for row in rows:
            print(f"{_readable(row[args.metric]):>10s} {unit:<3s} "
                  f"(upper {_readable(row[f'{args.metric}_upper'])}) "
                  f"{row[key]}  ({args.device})")
    flagged = [(row[key], float(np.exp(SPREAD_K * s)))
               for row, s in zip(rows, spread, strict=True) if "uncertain" in row]
    for item, ratio in flagged[:5]:
        print(f"note: {item}: the calibration's candidate adaptations disagree by "
              f"{ratio:.1f}x, an uncertain prediction (see its upper estimate); calibrate "
              "with a model like it too (latpred calibrate --measure --include)",
              file=sys.stderr)
    if len(flagged) > 5:
        print(f"note: {len(flagged) - 5} more of the {len(rows)} predictions are uncertain "
              "(\"uncertain\": true in --json)", file=sys.stderr)
    if below.any():
        unit = METRICS[args.metric]
        print(f"note: {int(below.sum())} of the {len(rows)} predictions lie below the "
              f"smallest calibration measurement ({_readable(fastest_measured(info))} {unit}; "
              "\"below_calibration\": true in --json): extrapolated from larger models, "
              "often less accurate (upper estimate widened); calibrate with a model that "
              "small too", file=sys.stderr)
    for row in rows:
        if "streams_weights" in row:
            print(f"note: {row[key]} multiplies millions of weights by a few rows (a "
                  "generating step): memory-bound, unlike any training model, and such "
                  "steps came out at 0.3-0.5x their time (scripts/benchmark_workloads.py); "
                  "calibrate with models like it (latpred calibrate --measure --include)",
                  file=sys.stderr)
        if "unfamiliar_ops" in row:
            ops = ", ".join(f"{op} x{n}" for op, n in row["unfamiliar_ops"].items())
            print(f"note: {row[key]} has op types no training graph held ({ops}): its "
                  "prediction extrapolates (they run as similar trained ops, "
                  "predictor.stand_ins); calibrate on models that contain them",
                  file=sys.stderr)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from predictor.api import Predictor
    from predictor.calibration import calibrate, measure_reference_set
    from predictor.errors import PredictorError
    from predictor.measurements import read_measurements_csv
    from predictor.onnx_io import expand_model_paths, parse_input_shapes
    from predictor.spaces.custom import load_plugins

    load_plugins(args.plugin)
    if args.measure == (args.measurements is not None):
        raise PredictorError("Give exactly one of --measure (time the reference set here) "
                             "or --measurements FILE.csv")
    if args.graph is not None and not args.space:
        raise PredictorError("--graph applies to --space architectures only")
    if args.call_floor_ms is not None and args.measure:
        raise PredictorError("--call-floor-ms goes with --measurements; --measure times the "
                             "floor itself")
    if args.space:
        if args.call_floor_ms is not None:
            raise PredictorError("--call-floor-ms applies to ONNX models, not --space "
                                 "architectures")
        if args.measure:
            raise PredictorError("--space calibrates from --measurements FILE.csv "
                                 "(header arch,latency_ms), not --measure")
        if args.batch is not None:
            raise PredictorError(_SPACE_BATCH_ERROR)
        rows, info = read_measurements_csv(args.measurements, key="arch", value=args.metric)
        shape, classes = _space_setting(args)
        predictor = Predictor.load(args.checkpoint)
        stored = calibrate(predictor, args.name, rows, {**info, "source": str(args.measurements)},
                           strategy=args.strategy, input_shape=shape, space=args.space,
                           num_classes=classes, metric=args.metric,
                           graph=args.graph or "eager")
        return _report_calibration(args, stored, len(rows),
                                   f"latpred predict --space {args.space} --archs FILE "
                                   f"--device {args.name}")
    if args.measure and args.metric != "latency_ms":
        raise PredictorError(f"--measure times latency only; for {args.metric}, measure the "
                             "models (e.g. latpred measure --energy) and pass --measurements")
    if args.include and not args.measure:
        raise PredictorError("--include adds your ONNX files to --measure's reference set; "
                             "with --measurements, list them in the CSV")
    shape = parse_input_shapes(args.input_shape)
    if args.measure:
        rows, info = measure_reference_set(backend=args.backend, device=args.device_kind,
                                           threads=args.threads,
                                           graph_optimization=args.graph_optimization,
                                           batch=args.batch or 1, include=expand_model_paths(args.include),
                                           input_shape=shape)
    else:
        rows, info = read_measurements_csv(args.measurements, value=args.metric)
        info = {**info, "source": str(args.measurements)}
    predictor = Predictor.load(args.checkpoint)
    stored = calibrate(predictor, args.name, rows, info, strategy=args.strategy,
                       input_shape=shape, metric=args.metric, batch=args.batch,
                       call_floor_ms=args.call_floor_ms)
    return _report_calibration(args, stored, len(rows),
                               f"latpred predict MODEL.onnx --device {args.name}")


def _report_calibration(args: argparse.Namespace, stored: dict, count: int, hint: str) -> int:
    if args.json:
        print(json.dumps({"device": args.name, **stored}, indent=2, default=str))
    else:
        print(f"calibrated '{args.name}' from {count} measurements "
              f"({_calibration_summary(stored)}); predict with: {hint}")
    return 0


def _calibration_summary(stored: dict) -> str:
    """How the device was adapted and how far off it was on held-out calibration models:
    'auto: nearest 0.41, opscale 0.30, amortised 0.18, ...; out-of-fold error median 6 %'."""
    import numpy as np

    blend = stored.get("blend") or {}
    if len(blend) > 1:
        top = sorted(blend.items(), key=lambda kv: -kv[1])
        how = "auto: " + ", ".join(f"{name} {w:.2f}" for name, w in top[:3]) \
            + (", ..." if len(top) > 3 else "")
    else:
        how = f"strategy: {stored['strategy']}"
    residuals = np.asarray(stored.get("cv_log_residuals") or [], dtype=float)
    if residuals.size:
        how += f"; out-of-fold error median {100 * np.median(np.expm1(np.abs(residuals))):.0f} %"
    if stored.get("call_floor_ms"):
        how += f"; call floor {1e3 * stored['call_floor_ms']:.1f} us"
    return how


def cmd_pick(args: argparse.Namespace) -> int:
    from predictor.api import Predictor
    from predictor.errors import ModelNotFoundError
    from predictor.onnx_io import expand_model_paths, parse_input_shapes

    models = expand_model_paths(args.models)
    missing = [m for m in models if not Path(m).is_file()]
    if missing:
        raise ModelNotFoundError(f"Model file not found: {missing[0]}")
    picked = Predictor.load(args.checkpoint).pick_calibration(
        models, args.n, input_shape=parse_input_shapes(args.input_shape))
    if args.json:
        print(json.dumps([{"model": str(models[i])} for i in picked], indent=2))
        return 0
    for i in picked:
        print(models[i])
    print(f"# time these {len(picked)} (latpred measure ... --out m.csv), then: "
          "latpred calibrate NAME --measurements m.csv", file=sys.stderr)
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from predictor.device_store import describe_devices

    devices = describe_devices()
    if args.json:
        print(json.dumps(devices, indent=2))
    else:
        width = max((len(d["name"]) for d in devices), default=0) + 1
        for device in devices:
            print(f"{device['name']:{width}s} {device_summary(device):62s} {device['path']}")
    return 0


def device_summary(device: dict) -> str:
    """What a listed device was embedded from, in a few words (its JSON has the rest)."""
    if "error" in device:
        return "unreadable"
    from predictor.api import device_batch

    kind = device.get("kind", "device")
    batch = device_batch(device)
    at = f", batch {batch}" if batch is not None else ""
    if kind == "default device":
        return f"default: {device['models']} models of {'+'.join(device['sources'])}{at}"
    if kind == "training device":  # a reference that new devices are ensembled with
        space = device.get("space", "")
        label = f"{space[4:]} models" if space.startswith("set:") else \
            f"{ {'nb201': 'NB201', 'fbnet': 'FBNet'}.get(space, space)} archs"
        return f"reference: {len(device.get('support_indices', []))} {label}{at}"
    if kind == "calibrated device":
        date = str(device.get("date", ""))[:10]
        return (f"calibrated {date}, {len(device.get('measurements', []))} models"
                f"{', ' + device['metric'] if device.get('metric', 'latency_ms') != 'latency_ms' else ''}{at}")
    return kind


def _add_metric_argument(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--metric", default="latency_ms", choices=("latency_ms", "energy_mj"),
                   help=help)


def _add_space_arguments(p: argparse.ArgumentParser) -> None:
    add_input_shapes_argument(
        p, help="ONNX models with dynamic dims: SHAPE for the first input (e.g. 1,3,224,224) "
                "or NAME=SHAPE per input (e.g. input_ids=1,128; inputs sharing a dim name "
                "follow); with --space: the network's input, e.g. 1,3,16,16")
    p.add_argument("--space", metavar="SPACE", default=None,
                   help="search-space architectures instead of ONNX files: nb201 (arch "
                        "strings), fbnet (22 block names joined by '-') or a space a "
                        "--plugin registers")
    add_plugin_argument(p)
    p.add_argument("--classes", type=int, default=None,
                   help="with --space: classifier outputs (default: the space's benchmark)")
    p.add_argument("--graph", choices=("eager", "exported"), default=None,
                   help="with --space: how the device runs the networks: every op as "
                        "PyTorch does (eager, default) or the exported ONNX graph, whose "
                        "repeated ops the export merges, as ONNX Runtime, TorchScript or "
                        "LiteRT do (exported); a calibrated device keeps its own")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train a predictor checkpoint from a YAML config")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--out", type=Path, default=Path("checkpoints/latpred.ckpt"))
    p.add_argument("--export-devices", type=Path, default=None, metavar="DIR",
                   help="also write the training devices' embeddings to DIR")
    p.add_argument("--init-from", type=Path, default=None, metavar="CKPT",
                   help="start from this checkpoint's weights (overrides the config's "
                        "init_from; its model section must match)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--log-dir", default="runs")
    p.add_argument("--wandb", action="store_true", help="also log to wandb (offline)")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("predict", help="predict latency of ONNX models on a known device")
    p.add_argument("models", nargs="*", metavar="MODEL.onnx",
                   help="ONNX files; a folder stands for its .onnx files")
    p.add_argument("--device", required=True)
    _add_space_arguments(p)
    p.add_argument("--archs", type=Path, default=None, metavar="FILE",
                   help="with --space: one architecture per line")
    _add_metric_argument(p, "what to predict; the device must be calibrated on it "
                            "(default latency_ms)")
    p.add_argument("--batch", type=positive_int, default=None, metavar="B",
                   help="predict the models run at batch B (their graphs re-batched); "
                        "default: the batch the device was calibrated at, else the models' own")
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--json", action="store_true",
                   help="a JSON list: model (or arch), device, the metric and <metric>_upper, "
                        "the upper estimate latpred search constrains (see README)")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("calibrate", help="adapt the predictor to a new device from ~10 "
                                         "measured models, and store it")
    p.add_argument("name", help="device name to store, e.g. myboard")
    p.add_argument("--measure", action="store_true",
                   help="time the shipped reference set on this machine")
    p.add_argument("--measurements", type=Path, default=None, metavar="FILE.csv",
                   help="your own measurements: CSV with header model,latency_ms (model = "
                        "ONNX path, relative to the CSV's folder), or with --space "
                        "arch,latency_ms")
    p.add_argument("--include", type=Path, nargs="+", default=[], metavar="MODEL.onnx",
                   help="with --measure: also time these models of yours (as --backend) and "
                        "calibrate on them: models like those you will predict (a size or "
                        "kind the reference set lacks) make predictions interpolate")
    p.add_argument("--backend", choices=("onnxruntime", "openvino", "torch"),
                   default="onnxruntime",
                   help="how --measure runs the reference set: ONNX Runtime, OpenVINO (CPU), "
                        "or the same networks as torch modules (a GPU without ONNX Runtime's "
                        "CUDA provider)")
    p.add_argument("--device-kind", choices=("cpu", "cuda"), default="cpu",
                   help="where --measure runs the models")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--graph-optimization", choices=("all", "extended", "basic", "disabled"),
                   default="all")
    p.add_argument("--batch", type=positive_int, default=None, metavar="B",
                   help="the batch the models are timed at: --measure runs the reference set "
                        "at B (--backend torch); with --measurements, the batch your batch-1 "
                        "files were timed at. Predictions on the device then default to B")
    p.add_argument("--call-floor-ms", type=float, default=None, metavar="MS",
                   help="with --measurements: your runtime's time for a network with next to "
                        "no work (e.g. one Add), taken off the latencies and added to every "
                        "prediction, so that tiny models are not predicted below it "
                        "(default: what a `latpred measure` CSV records; 0: none)")
    p.add_argument("--strategy", default=None,
                   help="auto (a blend weighted by cross-validated error; the default, except "
                        "for --measure on a CPU: auto+kernelsum, its geometric mean with "
                        "kernelsum+net), amortised, nearest, finetune, finetune+nearest, "
                        "opscale (per-op-class cost scales), kernelsum (per-op-class kernel "
                        "counts and work), kernelsum+net")
    _add_space_arguments(p)
    _add_metric_argument(p, "the measured column of the CSV to calibrate on: latency_ms "
                            "(default) or energy_mj (an energy device)")
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_calibrate)

    p = sub.add_parser("pick", help="which of your models to time to calibrate a new device")
    p.add_argument("models", nargs="+", metavar="MODEL.onnx",
                   help="your candidate ONNX files; a folder stands for its .onnx files")
    p.add_argument("-n", type=positive_int, default=10,
                   help="how many to time (default 10, at least 5)")
    add_input_shapes_argument(p)
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--json", action="store_true", help="a JSON list of {model}")
    p.set_defaults(handler=cmd_pick)

    p = sub.add_parser("devices", help="list known devices (shipped and calibrated)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_devices)
