"""Tests for predictor.devices: the registry as data, and its agreement with the tables."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from predictor.datadir import help_manifest
from predictor.devices import FAMILIES, Device, get_device, list_devices, load_registry
from predictor.errors import DataError, UnknownDeviceError
from predictor.tables import available_devices

SPACE_DIRS = {"nb201": "nasbench201", "fbnet": "fbnet"}
GPU_BATCHES = {"nb201": {1, 32, 256}, "fbnet": {1, 32, 64}}


def _names(space: str) -> set[str]:
    return {d.name for d in list_devices(space=space, source="help")}


@pytest.mark.parametrize("space", ["nb201", "fbnet"])
def test_registry_matches_data_files(space: str, shared_data_dir: Path) -> None:
    """Every table file has an entry with that space, and every entry's space has a file."""
    assert set(available_devices(space, shared_data_dir)) == _names(space)


@pytest.mark.parametrize("space", ["nb201", "fbnet"])
def test_registry_matches_manifest(space: str) -> None:
    prefix = f"{SPACE_DIRS[space]}/latency/"
    in_manifest = {e.path[len(prefix) : -3] for e in help_manifest() if e.path.startswith(prefix)}
    assert in_manifest == _names(space)


def test_help_devices() -> None:
    devices = list_devices(source="help")
    assert len(devices) == 32 and len({d.name for d in devices}) == 32
    assert all(d.family in FAMILIES for d in devices)
    assert all(
        d.source == "help" and d.unit == "ms" and d.metrics == ("latency_ms",) for d in devices
    )
    assert [d.name for d in list_devices(family="asic")] == ["eyeriss"]
    assert [d.name for d in list_devices(family="fpga")] == ["fpga"]
    assert [d.name for d in list_devices(family="embedded_board", source="help")] == ["raspi4"]
    assert len(list_devices(family="desktop_cpu")) == 4
    assert len(list_devices(family="mobile_phone", source="help")) == 5


@pytest.mark.parametrize("space", ["nb201", "fbnet"])
def test_gpu_batch_sizes(space: str) -> None:
    gpus = list_devices(space=space, family="desktop_gpu")
    assert len(gpus) == 15
    for gpu in gpus:
        assert gpu.name.endswith(f"_{gpu.batch_size}")
    assert {g.batch_size for g in gpus} == GPU_BATCHES[space]
    assert {g.hardware for g in gpus} == {
        "NVIDIA GeForce GTX 1080 Ti",
        "NVIDIA GeForce RTX 2080 Ti",
        "NVIDIA TITAN RTX",
        "NVIDIA TITAN X",
        "NVIDIA TITAN Xp",
    }


def test_get_device() -> None:
    d = get_device("1080ti_64")
    assert d.family == "desktop_gpu" and d.batch_size == 64 and d.spaces == ("fbnet",)
    assert get_device("pixel3").spaces == ("nb201", "fbnet")
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.name = "x"  # type: ignore[misc]


def test_unknown_device() -> None:
    """One readable line: the closest names and the count, not all of them."""
    with pytest.raises(
        UnknownDeviceError, match=re.escape("Unknown device 'pixel'; closest known: [")
    ) as err:
        get_device("pixel")
    assert "'pixel2'" in str(err.value) and "'pixel3'" in str(err.value)
    assert "in all)" in str(err.value) and "'gold_6226'" not in str(err.value)
    with pytest.raises(UnknownDeviceError, match=r"Unknown device 'foo'; \d+ known, e\.g\. \["):
        get_device("foo")
    assert isinstance(err.value, KeyError)


def test_bad_filters() -> None:
    with pytest.raises(DataError, match=r"Unknown device family 'gpu'; known: \["):
        list_devices(family="gpu")
    with pytest.raises(DataError, match=r"Unknown search space 'ofa'"):
        list_devices(space="ofa")


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "devices.yaml"
    path.write_text("defaults: {unit: ms, metrics: [latency_ms], source: help}\ndevices:\n" + body)
    return path


def test_registry_format_is_open(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "  - {name: pi5_litert_cifar100, family: embedded_board, hardware: Raspberry Pi 5,\n"
        "     batch_size: 1, spaces: [nb201], metrics: [latency_ms, energy_mj],\n"
        "     source: hwnb360, runtime: litert, task: cifar100}\n",
    )
    device = load_registry(path)["pi5_litert_cifar100"]
    assert device == Device(
        name="pi5_litert_cifar100",
        family="embedded_board",
        hardware="Raspberry Pi 5",
        batch_size=1,
        spaces=("nb201",),
        metrics=("latency_ms", "energy_mj"),
        source="hwnb360",
        runtime="litert",
        task="cifar100",
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "  - {name: a, family: gpu, hardware: x, batch_size: 1, spaces: [nb201]}\n",
            r"family 'gpu'; allowed",
        ),
        (
            "  - {name: a, family: asic, hardware: x, batch_size: 1, spaces: [ofa]}\n",
            r"unknown space\(s\) \['ofa'\]",
        ),
        (
            "  - {name: a, family: asic, hardware: x, batch_size: 0, spaces: [nb201]}\n",
            r"batch_size 0",
        ),
        (
            "  - {name: a, family: asic, hardware: x, batch_size: 1, spaces: [nb201], colour: red}\n",
            r"unknown field\(s\) \['colour'\]",
        ),
        ("  - {name: a, family: asic, batch_size: 1, spaces: [nb201]}\n", r"lacks \['hardware'\]"),
        (
            "  - {name: a, family: asic, hardware: x, batch_size: 1, spaces: [nb201]}\n" * 2,
            r"'a' is listed twice",
        ),
    ],
)
def test_registry_validation(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_registry(_write(tmp_path, body))
