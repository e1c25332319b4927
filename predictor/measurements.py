"""Measurement files: CSV rows `model,latency_ms,...` with their provenance (machine,
runtime, versions, settings) as leading `# key: value` comment lines."""

from __future__ import annotations

import csv
import io
import math
import os
import platform
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from predictor.errors import DataError
from predictor.errors import first_line as _first_line
from predictor.measure import Measurement
from predictor.storage import atomic_write_text

CSV_COLUMNS = ("model", "latency_ms", "p10_ms", "p90_ms", "energy_mj", "runs", "cv", "noisy",
               "speed_factor")


# ----------------------------------------------------------------------------- provenance
def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _gpu_name() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            pynvml.nvmlShutdown()
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # no pynvml or no driver: ask torch
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return "unknown"


def provenance(backend: str, device: str, threads: int | None = None, batch: int | None = None,
               graph_optimization: str = "all", **extra: Any) -> dict[str, Any]:
    """Where and how a measurement was taken: hardware, software versions, settings, date.

    `extra` settings (e.g. `max_seconds`, `input_shape`) are appended as given.
    """
    from predictor import __version__

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
    }
    if device == "cuda":
        info["gpu"] = _gpu_name()
    info.update({
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
        "torch": _version("torch"),
        **({"openvino": _version("openvino")} if backend == "openvino" else {}),
        "latpred": __version__,
        "backend": backend,
        "device": device,
        "threads": threads if threads is not None else "default",
        "batch": batch if batch is not None else "as in model",
        "graph_optimization": graph_optimization,
    })
    info.update(extra)
    return info


# ----------------------------------------------------------------------------- CSV files
def _fmt(value: float | None, spec: str = ".6g") -> str:
    return "" if value is None else format(value, spec)


def _stored_model(model: str, folder: Path) -> str:
    """A model file as a path relative to the CSV's folder, so both can move together."""
    path = Path(model)
    if model.startswith("<") or not path.is_file():
        return model
    try:
        return Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return str(path.resolve())


def write_measurements_csv(path: Path | str, rows: Sequence[Measurement],
                           provenance: Mapping[str, Any]) -> None:
    """Write `# key: value` provenance lines, then `CSV_COLUMNS` rows, atomically.

    Model files are stored relative to the CSV's folder; unknown energy is left empty.
    """
    path = Path(path)
    out = io.StringIO()
    for key, value in provenance.items():
        clean = " ".join(str(value).split())  # one line per key
        out.write(f"# {str(key).replace(':', '_')}: {clean}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for m in rows:
        writer.writerow([_stored_model(m.model, path.parent), _fmt(m.latency_ms),
                         _fmt(m.p10_ms), _fmt(m.p90_ms), _fmt(m.energy_mj), m.runs,
                         _fmt(m.cv, ".4f"), "true" if m.noisy else "false",
                         _fmt(m.speed_factor, ".4f")])
    atomic_write_text(path, out.getvalue())


def _parse_float(raw: str, column: str, where: str) -> float | None:
    if raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise DataError(f"{where}: {column} {raw!r} is not a number") from None


def _parse_row(raw: dict[str, str], folder: Path, where: str, key: str = "model",
               value: str = "latency_ms") -> dict[str, Any]:
    row: dict[str, Any] = dict(raw)
    item = raw[key]
    if not item:
        raise DataError(f"{where}: empty {key}")
    if key == "model" and not item.startswith("<") and not Path(item).is_absolute():
        item = str((folder / item).resolve())
    row[key] = item
    measured = _parse_float(raw[value], value, where)
    if measured is None or not math.isfinite(measured) or measured <= 0:
        raise DataError(f"{where}: {value} {raw[value]!r} of {key} {raw[key]!r} "
                        "must be a finite number > 0")
    row[value] = measured
    for column in ("latency_ms", "p10_ms", "p90_ms", "energy_mj", "cv"):
        if column in raw and column != value:
            row[column] = _parse_float(raw[column], column, where)
    if raw.get("runs"):
        runs = _parse_float(raw["runs"], "runs", where)
        row["runs"] = int(runs) if runs is not None and math.isfinite(runs) else None
    if "noisy" in raw:
        row["noisy"] = raw["noisy"].lower() in ("true", "1", "yes")
    return row


def recorded_speed_probe(info: dict) -> float | None:
    """The host's speed probe in ms a measurements CSV records (`speed_probe_ms`), or None
    where it records none ("off", missing, not a positive number)."""
    try:
        probe = float(info.get("speed_probe_ms") or "nan")
    except ValueError:  # "off"
        return None
    return probe if probe > 0 else None  # nan > 0 is False


def read_measurements_csv(path: Path | str, key: str = "model", value: str = "latency_ms"
                          ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Read a measurements CSV: (rows, provenance).

    Rows are dicts keyed by the header (which must contain `model,latency_ms`, or
    `arch,latency_ms` with `key="arch"` for search-space architectures; `value` names the
    measured column, e.g. "energy_mj", that every row must have), numbers parsed,
    relative model paths resolved against the CSV's folder; provenance values are the
    strings of the `# key: value` comment lines. Header names are case-insensitive (rows
    are keyed by their lower case); a leading byte-order mark is ignored.

    Raises:
        DataError: a missing file, a bad header, or a row whose latency is not finite > 0.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Measurements file not found: {path}")
    try:
        # utf-8-sig: spreadsheet programs start a CSV they save with a byte-order mark
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read measurements ({_first_line(exc)})") from None
    info: dict[str, str] = {}
    header: list[str] | None = None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            field, sep, text = line.lstrip()[1:].partition(":")
            if sep and field.strip():
                info[field.strip()] = text.strip()
            continue
        try:
            fields = [f.strip() for f in next(csv.reader([line]))]
        except csv.Error as exc:
            raise DataError(f"{path}:{lineno}: bad CSV line ({exc})") from None
        if header is None:
            header = [f.lower() for f in fields]  # "Model,Latency_ms" is the same header
            if key not in header or value not in header:
                raise DataError(f"{path}: the header must contain columns `{key},{value}`; "
                                f"found {header}")
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}:{lineno}: {len(fields)} fields, the header has "
                            f"{len(header)}")
        rows.append(_parse_row(dict(zip(header, fields, strict=True)), path.parent,
                               f"{path}:{lineno}", key, value))
    if header is None:
        raise DataError(f"{path}: no header line; expected columns `{key},{value}`")
    return rows, info
