"""Where latpred's files live: in a source checkout, or in an installed wheel.

A checkout (`pip install -e .`, the README's command) keeps everything beside the package:
the shipped checkpoints in `checkpoints/`, device embeddings in `device_embeddings/`
(calibrated devices are stored there too), generated caches in `datasets/cache/`.

An installed wheel (`pip install .`, `pip install git+...`) carries copies of the shipped
checkpoints and embeddings inside the package (`predictor/_shipped/`, put there by
`setup.py`), and writes what it makes to the user's folders instead of site-packages:
caches to `$XDG_CACHE_HOME/latpred` (default `~/.cache/latpred`), calibrated devices to
`$XDG_DATA_HOME/latpred/devices` (default `~/.local/share/latpred/devices`).
`$LATPRED_CACHE_DIR` and `$LATPRED_DEVICE_DIR` override both in either case.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent
# What the wheel bundles from the checkout (folders at SOURCE_ROOT, copies under _shipped/).
SHIPPED_FOLDERS = ("checkpoints", "device_embeddings")


def in_checkout() -> bool:
    """True when the package runs from a source checkout (editable install or PYTHONPATH)."""
    return (SOURCE_ROOT / "pyproject.toml").is_file() and (SOURCE_ROOT / "checkpoints").is_dir()


def shipped(folder: str) -> Path:
    """A shipped folder ("checkpoints" or "device_embeddings"): the checkout's, else the
    wheel's bundled copy."""
    if folder not in SHIPPED_FOLDERS:
        raise ValueError(f"not a shipped folder: {folder!r}; one of {SHIPPED_FOLDERS}")
    return SOURCE_ROOT / folder if in_checkout() else PACKAGE_DIR / "_shipped" / folder


def _user_folder(env: str, default: str) -> Path:
    base = os.environ.get(env)
    return (Path(base) if base else Path.home() / default) / "latpred"


def default_cache_dir() -> Path:
    """Generated caches (ONNX files, graph tensors, the reference set) when
    `$LATPRED_CACHE_DIR` is not set."""
    if in_checkout():
        return SOURCE_ROOT / "datasets" / "cache"
    return _user_folder("XDG_CACHE_HOME", ".cache")


def default_user_device_dir() -> Path:
    """Where calibrated devices are stored when `$LATPRED_DEVICE_DIR` is not set: beside
    the shipped embeddings in a checkout, the user's data folder otherwise."""
    if in_checkout():
        return shipped("device_embeddings")
    return _user_folder("XDG_DATA_HOME", ".local/share") / "devices"
