"""Stored device embeddings: one JSON file per device, tied to the checkpoint that made it.

Shipped defaults live in the repository's `device_embeddings/`; user calibrations go to
`$LATPRED_DEVICE_DIR` (default: the same folder in a checkout, the user's data folder in
an installed wheel; `predictor.locations`). Files are written atomically and carry
a version and the fingerprint of their checkpoint: an embedding is meaningless for
another checkpoint, so a mismatch is a clear error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from predictor.adaptation import DeviceState
from predictor.errors import PredictorError, UnknownDeviceError, known_names
from predictor.locations import default_user_device_dir, shipped
from predictor.storage import atomic_write_json

DEVICE_FILE_VERSION = 1
SHIPPED_DIR = shipped("device_embeddings")
DEVICE_DIR_ENV = "LATPRED_DEVICE_DIR"


class DeviceFileError(PredictorError):
    """A corrupt, foreign or outdated stored device file."""


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's weights (identifies the checkpoint an embedding belongs to)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def device_dirs() -> list[Path]:
    """Folders searched for devices: the user's (`$LATPRED_DEVICE_DIR`, else
    `locations.default_user_device_dir()`), then the shipped one; new calibrations go to
    the first."""
    user = os.environ.get(DEVICE_DIR_ENV)
    first = Path(user) if user else default_user_device_dir()
    return [first] if first == SHIPPED_DIR else [first, SHIPPED_DIR]


def _tensor_to_json(t: torch.Tensor) -> dict[str, Any]:
    """Fine-tuned weights as base64 float32: exact, and a fraction of the size of a list
    of decimals (a calibrated device keeps several fine-tuned candidates)."""
    data = t.detach().cpu().to(torch.float32).contiguous().numpy().tobytes()
    return {"shape": list(t.shape), "float32": base64.b64encode(data).decode("ascii")}


def _tensor_from_json(d: dict[str, Any]) -> torch.Tensor:
    if "float32" in d:
        flat = np.frombuffer(base64.b64decode(d["float32"]), dtype=np.float32).copy()
    else:  # files written before base64: a list of decimals
        flat = np.asarray(d["values"], dtype=np.float32)
    return torch.from_numpy(flat).reshape(d["shape"])


def _state_to_json(state: DeviceState) -> dict[str, Any]:
    members = [_state_to_json(m) for m in state.members]
    return {"z": state.z.tolist(), "a": float(state.a), "b": float(state.b),
            "params": {k: _tensor_to_json(v) for k, v in state.params.items()},
            "members": members,
            "linear": None if state.linear is None else state.linear.tolist(),
            "op_scale": None if state.op_scale is None else state.op_scale.tolist(),
            # an alternative that is also a member (an "auto" blend's candidates are both)
            # is stored once, as the member's index
            "alternatives": [_alternative_to_json(_state_to_json(m), members)
                             for m in state.alternatives],
            "kernel_sum": None if state.kernel_sum is None else state.kernel_sum.tolist(),
            "kernel_base": None if state.kernel_base is None else _state_to_json(state.kernel_base),
            "kernel_reach": None if state.kernel_reach is None else state.kernel_reach.tolist(),
            "weights": None if state.weights is None else state.weights.tolist(),
            "labels": list(state.labels),
            "local_errors": None if state.local_errors is None else state.local_errors.tolist(),
            "local_x": None if state.local_x is None else state.local_x.tolist(),
            "local_mix": None if state.local_mix is None else state.local_mix.tolist(),
            **({"call_floor_ms": state.call_floor_ms} if state.call_floor_ms > 0 else {}),
            **({"min_ms": state.min_ms} if state.min_ms > 0 else {})}


def _alternative_to_json(state: dict[str, Any], members: list[dict[str, Any]]
                         ) -> dict[str, Any]:
    return {"member": members.index(state)} if state in members else state


def _state_from_json(d: dict[str, Any]) -> DeviceState:
    params = {k: _tensor_from_json(v) for k, v in d.get("params", {}).items()}
    members = [_state_from_json(m) for m in d.get("members", [])]
    return DeviceState(torch.tensor(d["z"], dtype=torch.float32), torch.tensor(float(d["a"])),
                       torch.tensor(float(d["b"])), params,
                       members,
                       None if d.get("linear") is None
                       else torch.tensor(d["linear"], dtype=torch.float32),
                       None if d.get("op_scale") is None
                       else torch.tensor(d["op_scale"], dtype=torch.float32),
                       [members[m["member"]] if "member" in m else _state_from_json(m)
                        for m in d.get("alternatives", [])],
                       None if d.get("kernel_sum") is None
                       else torch.tensor(d["kernel_sum"], dtype=torch.float64),
                       None if d.get("kernel_base") is None else _state_from_json(d["kernel_base"]),
                       None if d.get("kernel_reach") is None
                       else torch.tensor(d["kernel_reach"], dtype=torch.float64),
                       None if d.get("weights") is None
                       else torch.tensor(d["weights"], dtype=torch.float32),
                       list(d.get("labels", [])),
                       None if d.get("local_errors") is None
                       else torch.tensor(d["local_errors"], dtype=torch.float32),
                       None if d.get("local_x") is None
                       else torch.tensor(d["local_x"], dtype=torch.float64),
                       None if d.get("local_mix") is None
                       else torch.tensor(d["local_mix"], dtype=torch.float64),
                       float(d.get("call_floor_ms", 0.0)), float(d.get("min_ms", 0.0)))


def save_device(name: str, state: DeviceState, fingerprint: str, info: dict[str, Any],
                folder: Path | None = None) -> Path:
    """Write a device file atomically; returns its path."""
    folder = folder or device_dirs()[0]
    path = folder / f"{name}.json"
    atomic_write_json(path, {"version": DEVICE_FILE_VERSION, "name": name,
                             "checkpoint": fingerprint, "state": _state_to_json(state),
                             "info": info})
    return path


def list_device_files() -> dict[str, Path]:
    """Known device names -> their file (a user file shadows a shipped one)."""
    found: dict[str, Path] = {}
    for folder in reversed(device_dirs()):
        if folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                found[path.stem] = path
    return found


def describe_devices() -> list[dict[str, Any]]:
    """Every known device, for listings: name, file path, checkpoint fingerprint and the
    stored info (kind, space, strategy, date, ...). A file that cannot be read is listed
    with an `error` field instead of its info, so one bad file does not hide the rest."""
    out = []
    for name, path in list_device_files().items():
        try:
            obj = json.loads(path.read_text())
            entry = {"checkpoint": obj.get("checkpoint"), **obj.get("info", {})}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            entry = {"error": f"unreadable device file ({type(exc).__name__}: {exc})"}
        out.append({"name": name, "path": str(path), **entry})
    return out


def load_device(name: str, fingerprint: str | None = None) -> tuple[DeviceState, dict[str, Any]]:
    """Load a stored device; checks version and (if given) the checkpoint fingerprint."""
    files = list_device_files()
    if name not in files:
        raise UnknownDeviceError(
            f"Unknown device '{name}'; {known_names(name, files)} ('latpred devices' lists "
            "them); calibrate it first ('latpred calibrate NAME', "
            "Predictor.adapt(..., save=True))")
    return load_device_file(files[name], fingerprint)


def load_device_file(path: Path, fingerprint: str | None = None
                     ) -> tuple[DeviceState, dict[str, Any]]:
    """`load_device` of one file."""
    name = path.stem
    try:
        obj = json.loads(path.read_text())
        version = obj["version"]
        state = _state_from_json(obj["state"])
    except Exception as exc:
        raise DeviceFileError(f"{path}: corrupt device file ({type(exc).__name__}: {exc}); "
                              f"recalibrate with 'latpred calibrate {name}'") from None
    if version != DEVICE_FILE_VERSION:
        raise DeviceFileError(f"{path}: device file version {version}, expected "
                              f"{DEVICE_FILE_VERSION}; recalibrate")
    if fingerprint is not None and obj.get("checkpoint") != fingerprint:
        raise DeviceFileError(
            f"{path}: device '{name}' was calibrated for another checkpoint "
            f"({obj.get('checkpoint')} != {fingerprint}); recalibrate with "
            f"'latpred calibrate {name}'")
    return state, obj.get("info", {})
