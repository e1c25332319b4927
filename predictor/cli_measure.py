"""`latpred measure`: time ONNX models on this machine and write a CSV with provenance.

A thin handler over `predictor.measure`:

    latpred measure a.onnx b.onnx --threads 1 --out measured.csv
    latpred measure dyn.onnx --input-shape 1,3,224,224 --batch 8 --energy --out m.csv --json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

_TORCH_BACKEND_HELP = (
    "onnxruntime (default) times ONNX files; openvino too (CPU, fp32; pip install "
    "'latpred[openvino]'). torch times a Python torch.nn.Module, which a "
    "file is not: from the command line it is an error; in Python call "
    "predictor.measure.measure_torch(module, example_input)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


INPUT_SHAPE_HELP = ("fixed input shape for models with dynamic dims: SHAPE for the first "
                    "input (e.g. 1,3,224,224), or NAME=SHAPE, repeated, per input (e.g. "
                    "input_ids=1,128); other inputs take the sizes of dims they share by "
                    "name (batch, sequence)")


def add_input_shapes_argument(p: argparse.ArgumentParser, help: str = INPUT_SHAPE_HELP) -> None:
    """`--input-shape`, repeatable, for commands that read ONNX models
    (`onnx_io.parse_input_shapes` parses the list)."""
    p.add_argument("--input-shape", metavar="SHAPE", action="append", default=None, help=help)


def add_plugin_argument(p: argparse.ArgumentParser) -> None:
    """`--plugin`, repeatable: Python files or modules to import first, e.g. ones that
    register search spaces (`predictor.spaces.custom.register_space`)."""
    p.add_argument("--plugin", metavar="FILE.py|MODULE", action="append", default=None,
                   help="import this first (repeatable), e.g. a file that registers a "
                        "search space with predictor.spaces.custom.register_space")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _print_table(rows: list[Any], energy: bool) -> None:
    width = max(len("model"), *(len(m.model) for m in rows))
    head = f"{'model':<{width}}  {'median ms':>10}  {'p10 ms':>10}  {'p90 ms':>10}  {'CV':>6}"
    print(head + ("  energy mJ" if energy else "") + "  noisy")
    for m in rows:
        line = (f"{m.model:<{width}}  {m.latency_ms:10.4f}  {m.p10_ms:10.4f}  "
                f"{m.p90_ms:10.4f}  {m.cv:6.3f}")
        if energy:
            line += f"  {m.energy_mj:9.3f}" if m.energy_mj is not None else f"  {'-':>9}"
        print(line + ("  NOISY" if m.noisy else "  -"))
    for m in rows:
        if m.noisy_reason:
            print(f"note: {m.model}: {m.noisy_reason}")
        if energy and m.energy_note:
            print(f"energy: {m.model}: {m.energy_note}")


def cmd_measure(args: argparse.Namespace) -> int:
    from functools import partial

    from predictor.errors import MeasurementError, ModelNotFoundError
    from predictor.measure import SpeedProbe, call_floor_ms, measure_many, measure_onnx
    from predictor.measurements import provenance, write_measurements_csv
    from predictor.onnx_io import expand_model_paths, parse_input_shapes

    if args.backend == "torch":
        raise MeasurementError("--backend torch times a Python torch.nn.Module, not an ONNX "
                               "file; use --backend onnxruntime, or in Python "
                               "predictor.measure.measure_torch(module, example_input)")
    args.models = expand_model_paths(args.models)
    missing = [m for m in args.models if not Path(m).is_file()]
    if missing:  # fail before spending minutes on the models that exist
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelNotFoundError(f"Model file not found: {missing[0]}{more}")
    shape = parse_input_shapes(args.input_shape)
    info = provenance(args.backend, args.device, args.threads, args.batch,
                      args.graph_optimization,
                      input_shape=" ".join(args.input_shape or ["as in model"]),
                      max_seconds=args.max_seconds, energy=args.energy)
    # Drift correction needs several models: it rescales each to the session's typical speed.
    probe = (SpeedProbe(threads=args.threads, device=args.device)
             if args.drift_correction and len(args.models) > 1 else None)
    rows, probe_ms = measure_many(
        args.models,
        partial(measure_onnx, backend=args.backend, device=args.device, threads=args.threads,
                batch=args.batch, input_shape=shape, graph_optimization=args.graph_optimization,
                max_seconds=args.max_seconds, energy=args.energy),
        probe=probe, progress=sys.stderr.isatty())
    info["speed_probe_ms"] = probe_ms if probe_ms is not None else "off"
    # What a network with next to no work takes here; `latpred calibrate --measurements`
    # of this file adds it to predictions of tiny models (see `Predictor.adapt`).
    floor = call_floor_ms(args.backend, args.device, args.threads, args.graph_optimization)
    if floor is not None:
        info["call_floor_ms"] = floor
    write_measurements_csv(args.out, rows, info)
    if args.json:
        print(json.dumps({"provenance": info, "measurements": [asdict(m) for m in rows],
                          "out": str(args.out)}, indent=2))
        return 0
    _print_table(rows, args.energy)
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    print(f"on {info['cpu']} ({info['logical_cores']} logical cores{gpu}), {info['os']}, "
          f"Python {info['python']}")
    print(f"{args.backend} {info.get(args.backend, info['onnxruntime'])} on {args.device}, threads {info['threads']}, "
          f"batch {info['batch']}, graph optimization {args.graph_optimization}, "
          f"{info['date']}")
    print(f"wrote {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "measure", help="time ONNX models on this machine (median, p10/p90, CV) into a CSV",
        description="Time ONNX models with warm-up and repeated runs until the median is "
                    "stable; write a CSV whose comment lines record the hardware, versions "
                    "and settings.")
    p.add_argument("models", nargs="+", metavar="MODEL.onnx",
                   help="ONNX files; a folder stands for its .onnx files")
    p.add_argument("--backend", choices=("onnxruntime", "openvino", "torch"),
                   default="onnxruntime", help=_TORCH_BACKEND_HELP)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="intra-op threads (inter-op 1); default: the runtime's choice")
    p.add_argument("--batch", type=positive_int, default=None, metavar="B",
                   help="batch size: overrides dim 0 of every input (must be dynamic)")
    add_input_shapes_argument(p)
    p.add_argument("--graph-optimization", choices=("all", "extended", "basic", "disabled"),
                   default="all", help="ONNX Runtime graph optimization level (default: all)")
    p.add_argument("--energy", action="store_true",
                   help="also measure energy per inference (RAPL on cpu, NVML on cuda; "
                        "about 2 s more per model)")
    p.add_argument("--max-seconds", type=positive_float, default=5.0, metavar="S",
                   help="time budget of the timed runs per model (default: 5)")
    p.add_argument("--no-drift-correction", dest="drift_correction", action="store_false",
                   help="with several models, do not rescale each by a speed probe timed "
                        "around it (see predictor.measure.SpeedProbe)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.csv")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.set_defaults(handler=cmd_measure)
