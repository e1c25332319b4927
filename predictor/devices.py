"""The device registry: which hardware targets exist, as data (`resources/devices.yaml`).

Every device with measured data has one entry: its family, hardware model,
batch size, the search spaces it has tables for, and where the numbers come
from. The format leaves room for other sources (HW-NAS-Bench-360's Pi 5
runtimes with energy, devices measured locally) through the optional
`runtime`, `task` and `notes` fields and the open `metrics` list.

Example:
    >>> get_device("pixel2").family
    'mobile_phone'
    >>> [d.name for d in list_devices(space="fbnet", family="asic")]
    ['eyeriss']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from predictor.errors import DataError, UnknownDeviceError, known_names
from predictor.tables import SPACES, check_space

logger = logging.getLogger(__name__)

REGISTRY_PATH = Path(__file__).resolve().parent / "resources" / "devices.yaml"
FAMILIES: tuple[str, ...] = (
    "desktop_gpu",
    "desktop_cpu",
    "mobile_phone",
    "embedded_board",
    "asic",
    "fpga",
)


@dataclass(frozen=True)
class Device:
    """One hardware target.

    Attributes:
        name: unique id; for HELP devices also the table file stem.
        family: one of `FAMILIES`.
        hardware: hardware model, e.g. "NVIDIA GeForce GTX 1080 Ti".
        batch_size: inference batch size, or None where the source does not state it.
        spaces: search spaces with measured data, e.g. ("nb201", "fbnet").
        unit: unit of the latency metric ("ms").
        metrics: measured quantities, e.g. ("latency_ms",) or ("latency_ms", "energy_mj").
        source: origin of the numbers, e.g. "help".
        runtime: inference runtime, if the source records one.
        task: input domain / dataset the networks were built for, if recorded.
        notes: free text (data quirks, provenance).
    """

    name: str
    family: str
    hardware: str
    batch_size: int | None
    spaces: tuple[str, ...]
    unit: str = "ms"
    metrics: tuple[str, ...] = ("latency_ms",)
    source: str = "help"
    runtime: str | None = None
    task: str | None = None
    notes: str = ""


_FIELDS = tuple(f.name for f in fields(Device))


def _parse_entry(raw: Any, defaults: dict[str, Any], path: Path) -> Device:
    if not isinstance(raw, dict) or "name" not in raw:
        raise DataError(f"Device registry '{path}': entry {raw!r} is not a mapping with a 'name'")
    merged = {**defaults, **raw}
    name = merged["name"]
    unknown = sorted(set(merged) - set(_FIELDS))
    if unknown:
        raise DataError(
            f"Device registry '{path}': device '{name}' has unknown field(s) {unknown}; "
            f"allowed: {list(_FIELDS)}"
        )
    missing = [f for f in ("family", "hardware", "batch_size", "spaces") if f not in merged]
    if missing:
        raise DataError(f"Device registry '{path}': device '{name}' lacks {missing}")
    if merged["family"] not in FAMILIES:
        raise DataError(
            f"Device registry '{path}': device '{name}' has family '{merged['family']}'; "
            f"allowed: {list(FAMILIES)}"
        )
    bad_spaces = [s for s in merged["spaces"] if s not in SPACES]
    if bad_spaces:
        raise DataError(
            f"Device registry '{path}': device '{name}' lists unknown space(s) {bad_spaces}; "
            f"allowed: {list(SPACES)}"
        )
    batch = merged["batch_size"]
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise DataError(
            f"Device registry '{path}': device '{name}' has batch_size {batch!r}; "
            "use a positive integer or null"
        )
    merged["name"] = str(name)
    merged["spaces"] = tuple(merged["spaces"])
    merged["metrics"] = tuple(merged["metrics"])
    return Device(**merged)


def load_registry(path: str | Path = REGISTRY_PATH) -> dict[str, Device]:
    """Read and validate a device registry YAML file.

    Args:
        path: the YAML file (default: the registry shipped with the package).

    Returns:
        Devices by name, in file order.

    Raises:
        DataError: unreadable file, malformed entry, unknown field, family or
            space, or a duplicate name.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"Cannot read the device registry '{path}': {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), list):
        raise DataError(f"Device registry '{path}' must be a mapping with a 'devices' list")
    defaults = doc.get("defaults") or {}
    registry: dict[str, Device] = {}
    for raw in doc["devices"]:
        device = _parse_entry(raw, defaults, path)
        if device.name in registry:
            raise DataError(f"Device registry '{path}': device '{device.name}' is listed twice")
        registry[device.name] = device
    return registry


@lru_cache(maxsize=1)
def _registry() -> dict[str, Device]:
    return load_registry()


def get_device(name: str) -> Device:
    """The registry entry of `name`.

    Raises:
        UnknownDeviceError: `name` is not in the registry (lists the known names).
    """
    registry = _registry()
    try:
        return registry[name]
    except KeyError:
        raise UnknownDeviceError(
            f"Unknown device '{name}'; {known_names(name, registry)}; "
            "add it to predictor/resources/devices.yaml or calibrate it first"
        ) from None


def list_devices(space: str | None = None, family: str | None = None,
                 source: str | None = None) -> list[Device]:
    """Registry entries, optionally filtered.

    Args:
        space: keep devices with data for this space ("nb201" or "fbnet").
        family: keep devices of this family (one of `FAMILIES`).
        source: keep devices whose numbers come from this source ("help" for HELP's
            tables, "hwnb360" for HW-NAS-Bench-360's Pi 5 / Pixel runtimes x tasks).

    Returns:
        Matching devices in registry order.

    Raises:
        DataError: unknown space or family (lists the allowed values).
    """
    if space is not None:
        check_space(space)
    if family is not None and family not in FAMILIES:
        raise DataError(f"Unknown device family '{family}'; known: {list(FAMILIES)}")
    return [
        d
        for d in _registry().values()
        if (space is None or space in d.spaces) and (family is None or d.family == family)
        and (source is None or d.source == source)
    ]
