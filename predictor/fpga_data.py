"""The wa-hls4ml synthesis table: hls4ml designs, their configuration, LUT/FF/DSP/BRAM/cycles.

Raw files (`<data_dir>/wa-hls4ml/`, listed with size and sha256 in
`resources/wa_hls4ml_manifest.json`; see the README next to them):

    concatenated_3layer_json_to_csv.csv   8,474 rows, 1,980 fully connected 3-layer nets
    concatenated_conv2d_json_to_csv.csv      42 rows, 13 small Conv2D + Dense nets

`process` reads and validates them (no missing, NaN or negative value; a bad cell is a
`DataError` naming file, line and column), keeps the successful syntheses as labels and
reports the others, and builds each network's operator graph through ONNX:

- dense: `model_string` `w0-w1-...-wk` is a chain of Gemm layers `w_i -> w_{i+1}` on a
  (1, w0) input, each followed by ReLU except the last (hls4ml's Dense + Activation;
  the CSV does not record the activation, ReLU is an assumption).
- conv2d: the entries are the input channels of every Conv2D, then the flattened Dense
  inputs, then the output size. The largest entry is the flattened size F; the CSV gives
  neither kernels, image size, pooling nor the last conv's filters, so the graph is an
  approximation: 3x3 kernels, stride 1, 'same' padding, no pooling, ReLU after each
  layer, the last conv keeps its input channels where they divide F, and an H x W
  image (H <= W, H the largest divisor of F / channels not above its square root).

Processed graphs are cached (pickled `OpGraph`s) under `datasets/cache/wa-hls4ml/`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import pickle
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from predictor.datadir import resolve_data_dir
from predictor.errors import DataError
from predictor.graph import OpGraph, extract_graph
from predictor.storage import atomic_write_bytes

logger = logging.getLogger(__name__)

SUBDIR = "wa-hls4ml"
MANIFEST_PATH = Path(__file__).resolve().parent / "resources" / "wa_hls4ml_manifest.json"
BUILDER_VERSION = 1  # bump when the ONNX construction changes (invalidates the cache)
TARGETS: tuple[str, ...] = ("lut", "ff", "dsp", "bram_18k", "latency_cycles")
"""Predicted metrics, in the column order of `FpgaDataset.targets` (counts; cycles)."""
TARGET_COLUMNS = {"lut": "LUT_hls", "ff": "FF_hls", "dsp": "DSP_hls",
                  "bram_18k": "BRAM_18K_hls", "latency_cycles": "BestLatency_hls"}
_REQUIRED = ("model_string", "prec", "rf", "strategy", "TargetClockPeriod_hls",
             "hls_synth_success", *TARGET_COLUMNS.values())


@dataclass
class FpgaDataset:
    """Syntheses (rows) of networks (archs), with one operator graph per network.

    Shapes:
        arch, precision, reuse_factor: (R,) int64; clock_ns: (R,) float64
        targets: (R, len(TARGETS)) float64, in `TARGETS` order
    """

    archs: list[str]  # model_string of each network
    kinds: list[str]  # "dense" or "conv2d", per network
    graphs: list[OpGraph]
    arch: np.ndarray
    precision: np.ndarray
    reuse_factor: np.ndarray
    strategy: list[str]
    clock_ns: np.ndarray
    targets: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.arch)

    def rows_of_kind(self, kind: str) -> np.ndarray:
        """Row indices of the syntheses of `kind` networks."""
        kinds = np.array(self.kinds)
        return np.flatnonzero(kinds[self.arch] == kind)


@lru_cache(maxsize=1)
def manifest() -> tuple[dict[str, Any], ...]:
    """The wa-hls4ml files with their kind, size and sha256."""
    try:
        return tuple(json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"Cannot read '{MANIFEST_PATH}': {exc}; reinstall the package") from None


def data_file(kind: str, data_dir: str | Path | None = None) -> Path:
    """Path of the CSV of `kind` ("dense" or "conv2d"), checked to exist with its size."""
    entry = next((e for e in manifest() if e["kind"] == kind), None)
    if entry is None:
        raise DataError(f"Unknown wa-hls4ml kind {kind!r}; known: "
                        f"{[e['kind'] for e in manifest()]}")
    root = resolve_data_dir(data_dir)
    path = root / SUBDIR / entry["path"]
    if not path.is_file():
        raise DataError(f"Missing wa-hls4ml file '{path}'; copy the CSVs listed in "
                        f"'{MANIFEST_PATH.name}' to '{root / SUBDIR}' or set LATPRED_DATA_DIR")
    if path.stat().st_size != entry["size"]:
        raise DataError(f"wa-hls4ml file '{path}' has {path.stat().st_size} bytes, expected "
                        f"{entry['size']} (partial or altered copy); copy it again")
    return path


def parse_model_string(text: str) -> tuple[int, ...]:
    """`"16-64-32-8"` -> (16, 64, 32, 8); raises `DataError` unless >= 2 positive ints."""
    try:
        widths = tuple(int(p) for p in str(text).split("-"))
    except ValueError:
        raise DataError(f"Bad model_string {text!r}: expected sizes joined by '-'") from None
    if len(widths) < 2 or min(widths) < 1:
        raise DataError(f"Bad model_string {text!r}: expected >= 2 positive sizes")
    return widths


def _number(value: str, where: str, column: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise DataError(f"{where}: column `{column}` is {value!r}, not a number") from None
    if not math.isfinite(x) or x < 0:
        raise DataError(f"{where}: column `{column}` is {value!r}; expected a finite value >= 0")
    return x


def read_table(path: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Validated rows of one CSV, and a report (rows, failed syntheses, incomplete sweeps).

    Rows with `hls_synth_success` false are failures: counted, not returned.
    """
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing columns {missing}")
        rows, failed, keys = [], 0, Counter()
        for line, raw in enumerate(reader, start=2):
            where = f"{path.name} line {line}"
            empty = [c for c in _REQUIRED if raw.get(c) in (None, "")]
            if empty:
                raise DataError(f"{where}: empty value in column(s) {empty}")
            if raw["hls_synth_success"].strip().upper() not in ("TRUE", "1"):
                failed += 1
                continue
            row = {
                "model_string": raw["model_string"].strip(),
                "widths": parse_model_string(raw["model_string"]),
                "precision": _number(raw["prec"], where, "prec"),
                "reuse_factor": _number(raw["rf"], where, "rf"),
                "strategy": raw["strategy"].strip().lower(),
                "clock_ns": _number(raw["TargetClockPeriod_hls"], where, "TargetClockPeriod_hls"),
                "targets": [_number(raw[c], where, c) for c in TARGET_COLUMNS.values()],
            }
            if min(row["precision"], row["reuse_factor"]) < 1 or row["clock_ns"] <= 0 or not (
                    row["precision"].is_integer() and row["reuse_factor"].is_integer()):
                raise DataError(f"{where}: `prec` and `rf` must be integers >= 1 and the clock "
                                "period > 0")
            key = (row["model_string"], row["precision"], row["reuse_factor"], row["strategy"])
            if keys[key]:
                raise DataError(f"{where}: duplicate synthesis {key}")
            keys[key] += 1
            rows.append(row)
    groups = Counter((r["model_string"], r["precision"]) for r in rows)
    sweep = len({r["reuse_factor"] for r in rows})
    incomplete = sum(1 for n in groups.values() if n < sweep)
    return rows, {"rows": len(rows) + failed, "successful": len(rows), "failed": failed,
                  "incomplete_sweeps": incomplete,
                  "missing_from_sweeps": sum(sweep - n for n in groups.values())}


def _const(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)


def dense_onnx(widths: tuple[int, ...]) -> onnx.ModelProto:
    """A chain of Gemm (+ ReLU but the last) layers `widths[i] -> widths[i+1]`, input (1, w0)."""
    nodes, inits, x = [], [], "input"
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        inits += [_const(f"W{i}", (n_out, n_in)), _const(f"b{i}", (n_out,))]
        y = f"dense{i}"
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [y], name=y, transB=1))
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [y], [f"relu{i}"], name=f"relu{i}"))
            y = f"relu{i}"
        x = y
    return _model(nodes, inits, (1, widths[0]), x, (1, widths[-1]), "dense")


def conv2d_onnx(widths: tuple[int, ...]) -> onnx.ModelProto:
    """The approximate Conv2D + Dense network of a conv2d `model_string` (module docstring)."""
    flat = int(np.argmax(widths[:-1]))
    if flat < 1:
        raise DataError(f"conv2d model_string {'-'.join(map(str, widths))} has no conv layer "
                        "before the flattened size")
    channels, size = list(widths[:flat]), widths[flat]
    last = channels[-1]
    filters = last if size % last == 0 else max(d for d in range(1, last + 1) if size % d == 0)
    pixels = size // filters
    height = max(d for d in range(1, math.isqrt(pixels) + 1) if pixels % d == 0)
    width = pixels // height
    channels.append(filters)
    nodes, inits, x = [], [], "input"
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        inits += [_const(f"K{i}", (c_out, c_in, 3, 3)), _const(f"kb{i}", (c_out,))]
        nodes += [helper.make_node("Conv", [x, f"K{i}", f"kb{i}"], [f"conv{i}"], name=f"conv{i}",
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"conv{i}"], [f"crelu{i}"], name=f"crelu{i}")]
        x = f"crelu{i}"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    dense = dense_onnx(widths[flat:])
    for node in dense.graph.node:
        node.input[:] = ["flat" if i == "input" else i for i in node.input]
    nodes += list(dense.graph.node)
    inits += list(dense.graph.initializer)
    return _model(nodes, inits, (1, widths[0], height, width), dense.graph.output[0].name,
                  (1, widths[-1]), "conv2d")


def _model(nodes, inits, in_shape, out_name, out_shape, name) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def network_onnx(kind: str, model_string: str) -> onnx.ModelProto:
    """The ONNX model of one wa-hls4ml network."""
    widths = parse_model_string(model_string)
    return dense_onnx(widths) if kind == "dense" else conv2d_onnx(widths)


def _cache_path(cache_root: str | Path | None) -> Path:
    from predictor.corpus import cache_dir

    return cache_dir(cache_root) / SUBDIR / f"graphs-b{BUILDER_VERSION}.pkl"


def network_graphs(networks: list[tuple[str, str]], cache_root: str | Path | None = None
                   ) -> list[OpGraph]:
    """Operator graphs of (kind, model_string) networks, through ONNX, cached on disk."""
    path = _cache_path(cache_root)
    cached: dict[tuple[str, str], OpGraph] = {}
    if path.is_file():
        try:
            cached = pickle.loads(path.read_bytes())
        except Exception as exc:  # a corrupt cache is rebuilt, never trusted
            logger.warning("Ignoring unreadable graph cache '%s' (%s)", path, exc)
    todo = [n for n in dict.fromkeys(networks) if n not in cached]
    for kind, model_string in todo:
        cached[(kind, model_string)] = extract_graph(network_onnx(kind, model_string))
    if todo:
        atomic_write_bytes(path, pickle.dumps(cached))
        logger.info("Built %d wa-hls4ml graphs into '%s'", len(todo), path)
    return [cached[n] for n in networks]


def load_wa_hls4ml(data_dir: str | Path | None = None, cache_root: str | Path | None = None,
                   kinds: tuple[str, ...] = ("dense", "conv2d")) -> FpgaDataset:
    """Read, validate and graph the wa-hls4ml syntheses of `kinds`.

    Returns:
        The dataset; `report[kind]` counts rows, failed syntheses (excluded) and
        incomplete reuse-factor sweeps (runs absent from the file, possibly failed).
    """
    rows, report, networks = [], {}, {}
    for kind in kinds:
        kind_rows, report[kind] = read_table(data_file(kind, data_dir))
        for row in kind_rows:
            row["arch"] = networks.setdefault((kind, row["model_string"]), len(networks))
        rows += kind_rows
        logger.info("wa-hls4ml %s: %s", kind, report[kind])
    keys = list(networks)
    return FpgaDataset(
        archs=[m for _, m in keys], kinds=[k for k, _ in keys],
        graphs=network_graphs(keys, cache_root),
        arch=np.array([r["arch"] for r in rows], dtype=np.int64),
        precision=np.array([r["precision"] for r in rows], dtype=np.int64),
        reuse_factor=np.array([r["reuse_factor"] for r in rows], dtype=np.int64),
        strategy=[r["strategy"] for r in rows],
        clock_ns=np.array([r["clock_ns"] for r in rows], dtype=np.float64),
        targets=np.array([r["targets"] for r in rows], dtype=np.float64).reshape(-1, len(TARGETS)),
        report=report,
    )
