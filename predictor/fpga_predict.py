"""Predict an hls4ml design's LUT, FF, DSP, BRAM and cycles from any dense or conv ONNX model.

The configuration is checked against what the checkpoint was trained on before anything
is predicted: a strategy or clock period never synthesised, a precision outside the
trained range, or a reuse factor so small that a layer would get more parallel
multipliers than any trained layer, is an `FpgaConfigError` that names the allowed
values. Ops hls4ml (as modelled here) does not handle are an `UnsupportedOpError`; an
output activation (a classifier's Softmax) is left out of the prediction, with a note.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from predictor.errors import FpgaConfigError
from predictor.fpga import FpgaCheckpoint, design_batch
from predictor.fpga_data import TARGETS
from predictor.fpga_training import predict_log1p, to_counts
from predictor.graph import extract_graph
from predictor.hls4ml import FpgaConfig, HlsLayer, hls_layers, without_output_activations
from predictor.onnx_io import InputShapes, ModelSource

logger = logging.getLogger(__name__)
METRICS: tuple[str, ...] = (*TARGETS, "ii_cycles")
"""Metrics of `latpred fpga`; `ii_cycles` is reported as null (see `II_NOTE`)."""
II_NOTE = ("ii_cycles is not predicted: the wa-hls4ml syntheses record no initiation "
           "interval (their interval columns copy the latency)")


@dataclass
class FpgaPrediction:
    """Predicted resources and cycles of one design, with the training ranges.

    Attributes:
        metrics: {metric: value}; counts for lut/ff/dsp/bram_18k (BRAM in halves),
            clock cycles for latency_cycles; ii_cycles is None.
        layers: per multiply-accumulate layer: name, op, n_in, n_out, positions, the
            reuse factor hls4ml uses for it and its multipliers.
        training_ranges: {metric: [min, max]} over the training syntheses.
    """

    metrics: dict[str, float | None]
    config: FpgaConfig
    layers: list[dict[str, Any]]
    training_ranges: dict[str, list[float]]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "config": asdict(self.config),
                "layers": self.layers, "training_ranges": self.training_ranges,
                "notes": self.notes}


def _smallest_reuse_factor(layers: list[HlsLayer], limit: int) -> int | None:
    """Smallest model-level reuse factor giving every layer <= `limit` multipliers."""
    rf = max(math.ceil(layer.weights / limit) for layer in layers)
    top = max(layer.weights for layer in layers)
    while rf <= top:
        if all(layer.multipliers(rf) <= limit for layer in layers):
            return rf
        rf += 1
    return None


def check_config(config: FpgaConfig, layers: list[HlsLayer], ranges: dict[str, Any]) -> None:
    """Raise `FpgaConfigError` unless `config` on these layers lies in the trained domain."""
    if config.strategy not in ranges["strategies"]:
        raise FpgaConfigError(
            f"Strategy {config.strategy!r} is not in this checkpoint's training data "
            f"(strategies: {ranges['strategies']}); use --strategy "
            f"{ranges['strategies'][0]}, or adapt the model on syntheses at that strategy "
            "(`predictor.fpga_training.adapt_fpga`)")
    lo, hi = ranges["precision"]
    if not lo <= config.precision <= hi:
        raise FpgaConfigError(f"Precision {config.precision} bits is outside the range seen in "
                              f"training [{lo}, {hi}]; use --precision between {lo} and {hi}")
    lo_c, hi_c = ranges["clock_period_ns"]
    if not lo_c - 1e-9 <= config.clock_period_ns <= hi_c + 1e-9:
        raise FpgaConfigError(f"Clock period {config.clock_period_ns} ns is outside the range "
                              f"seen in training [{lo_c}, {hi_c}] ns; use --clock-period {hi_c}")
    limit = ranges["max_multipliers"]
    for layer in layers:
        mults = layer.multipliers(config.reuse_factor)
        if mults > limit:
            fix = _smallest_reuse_factor(layers, limit)
            raise FpgaConfigError(
                f"Reuse factor {config.reuse_factor} is too small for layer '{layer.name}' "
                f"({layer.op_type} {layer.n_in}x{layer.n_out}): hls4ml would use "
                f"ReuseFactor={layer.reuse(config.reuse_factor)} and {mults} multipliers, more "
                f"than the {limit} per layer seen in training; use --reuse-factor >= {fix}")


def predict_fpga(model: ModelSource, config: FpgaConfig,
                 checkpoint: FpgaCheckpoint | str | Path | None = None,
                 input_shape: InputShapes = None) -> FpgaPrediction:
    """Predict the hls4ml synthesis of one model at one configuration.

    Args:
        model: ONNX path, bytes or `onnx.ModelProto` (or torch module) of a dense/conv net.
        config: precision, reuse factor, strategy, clock period.
        checkpoint: an `FpgaCheckpoint`, its path, or None for `checkpoints/fpga.ckpt`.
        input_shape: fixed input shape for models with dynamic dims.

    Raises:
        UnsupportedOpError, FpgaConfigError, and the model-loading errors of `extract_graph`.
    """
    if not isinstance(checkpoint, FpgaCheckpoint):
        checkpoint = FpgaCheckpoint.load(checkpoint)
    graph, left_out = without_output_activations(extract_graph(model, input_shape=input_shape))
    layers = hls_layers(graph)
    ranges = checkpoint.ranges
    check_config(config, layers, ranges)
    batch, cond = design_batch([graph], [layers], [config])
    values = to_counts(predict_log1p(checkpoint.nets, batch, cond), checkpoint.metrics)[0]
    metrics: dict[str, float | None] = dict(zip(checkpoint.metrics, map(float, values), strict=True))
    metrics["ii_cycles"] = None
    notes = [II_NOTE]
    if left_out:
        notes.append(f"the output activation {', '.join(left_out)} is not included: hls4ml "
                     "builds it from lookup tables, which no training synthesis records")
    adjusted = [layer for layer in layers if layer.reuse(config.reuse_factor) != config.reuse_factor]
    if adjusted:
        notes.append(f"hls4ml replaces ReuseFactor={config.reuse_factor} by the closest valid "
                     f"value in {len(adjusted)} layer(s) (see layers)")
    if any(layer.op_type == "Conv" for layer in layers):
        notes.append("conv layers: trained on few conv2d syntheses with approximate graphs; "
                     "expect errors of tens of percent")
    for metric in checkpoint.metrics:
        lo, hi = ranges["targets"][metric]
        if metrics[metric] is not None and not lo <= metrics[metric] <= hi:
            notes.append(f"{metric} = {metrics[metric]:g} is outside the training range "
                         f"[{lo:g}, {hi:g}] (extrapolation)")
    return FpgaPrediction(
        metrics=metrics, config=config,
        layers=[{"name": layer.name, "op": layer.op_type, "n_in": layer.n_in,
                 "n_out": layer.n_out, "positions": layer.positions,
                 "reuse_factor": layer.reuse(config.reuse_factor),
                 "multipliers": layer.multipliers(config.reuse_factor)} for layer in layers],
        training_ranges=ranges["targets"], notes=notes)
