"""`latpred fpga`: predicted hls4ml resources and cycles of a dense or conv ONNX model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_fpga(args: argparse.Namespace) -> int:
    from predictor.fpga_predict import predict_fpga
    from predictor.hls4ml import FpgaConfig
    from predictor.onnx_io import parse_shape

    config = FpgaConfig(args.precision, args.reuse_factor, args.strategy, args.clock_period)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    result = predict_fpga(args.model, config, args.checkpoint, input_shape=shape)
    if args.json:
        print(json.dumps({"model": str(args.model), **result.to_dict()}, indent=2))
        return 0
    print(f"{args.model}  (precision {config.precision} bits, reuse factor "
          f"{config.reuse_factor}, {config.strategy}, {config.clock_period_ns:g} ns)")
    for metric, value in result.metrics.items():
        lo_hi = result.training_ranges.get(metric)
        seen = f"  (training range {lo_hi[0]:g} .. {lo_hi[1]:g})" if lo_hi else ""
        print(f"  {metric:15s} {'n/a' if value is None else f'{value:g}':>12s}{seen}")
    print("  layers: " + ", ".join(f"{layer['name']} {layer['n_in']}x{layer['n_out']} "
                                   f"rf {layer['reuse_factor']}" for layer in result.layers))
    for note in result.notes:
        print(f"  note: {note}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fpga", help="predict LUT, FF, DSP, BRAM and cycles of an hls4ml "
                                    "synthesis of a dense or conv ONNX model")
    p.add_argument("model", type=Path, metavar="MODEL.onnx")
    p.add_argument("--precision", type=int, required=True,
                   help="weight bits X of ap_fixed<X, ...>")
    p.add_argument("--reuse-factor", type=int, required=True, help="hls4ml ReuseFactor")
    p.add_argument("--strategy", choices=("latency", "resource"), default="resource")
    p.add_argument("--clock-period", type=float, default=5.0, metavar="NS",
                   help="target clock period in ns (default 5)")
    p.add_argument("--input-shape", metavar="SHAPE",
                   help="fixed input shape for models with dynamic dims, e.g. 1,16")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="FPGA checkpoint (default: checkpoints/fpga.ckpt)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_fpga)
