from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from predictor import locations
from predictor.checkpoint import DEFAULT_CHECKPOINT
from predictor.device_store import SHIPPED_DIR, device_dirs

ROOT = locations.SOURCE_ROOT


def test_a_checkout_reads_and_writes_beside_the_package(monkeypatch) -> None:
    monkeypatch.delenv("LATPRED_DEVICE_DIR", raising=False)
    assert locations.in_checkout()
    assert DEFAULT_CHECKPOINT == ROOT / "checkpoints" / "latpred.ckpt"
    assert DEFAULT_CHECKPOINT.is_file()
    assert SHIPPED_DIR == ROOT / "device_embeddings"
    assert device_dirs() == [SHIPPED_DIR]  # calibrations land beside the shipped devices
    assert locations.default_cache_dir() == ROOT / "datasets" / "cache"


def test_an_installed_wheel_writes_to_the_users_folders(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(locations, "in_checkout", lambda: False)
    assert locations.shipped("checkpoints") == locations.PACKAGE_DIR / "_shipped" / "checkpoints"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert locations.default_cache_dir() == tmp_path / "cache" / "latpred"
    assert locations.default_user_device_dir() == tmp_path / "data" / "latpred" / "devices"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert locations.default_user_device_dir() == tmp_path / ".local/share/latpred/devices"
    with pytest.raises(ValueError, match="not a shipped folder"):
        locations.shipped("datasets")


def test_the_wheel_bundles_the_shipped_checkpoints_and_devices(tmp_path) -> None:
    """Built from a copy of the checkout (no build/ left in it), without build isolation
    (no network): the wheel holds the checkpoint and every shipped device file."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.lock", ".*")
    for name in ("predictor", *locations.SHIPPED_FOLDERS):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(out)], check=True)
    (wheel,) = out.glob("latpred-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "predictor/_shipped/checkpoints/latpred.ckpt" in names
    devices = {Path(n).name for n in names if n.startswith("predictor/_shipped/device_embeddings/")}
    assert {p.name for p in SHIPPED_DIR.glob("*.json")} <= devices
    assert not any(n.endswith(".lock") for n in names)
