"""Tests for predictor.splits: shipped task splits, their integrity, and the loader's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from predictor.devices import get_device, list_devices
from predictor.errors import DataError
from predictor.splits import ROLES, Split, get_split, list_splits, load_splits

ALL = [(space, s.name) for space in ("nb201", "fbnet") for s in list_splits(space)]


@pytest.mark.parametrize(("space", "name"), ALL)
def test_split_integrity(space: str, name: str) -> None:
    split = get_split(space, name)
    devices = split.devices
    assert len(devices) == len(set(devices)), "a device plays two roles"
    for device in devices:
        assert space in get_device(device).spaces, f"{device} has no {space} table"
    assert split.train and split.test


def test_listed_splits() -> None:
    assert [s.name for s in list_splits("nb201")] == ["help"]
    assert [s.name for s in list_splits("fbnet")] == ["help", "F1", "F2", "F3", "F4", "F5"]
    assert get_split("nb201", "N0") is get_split("nb201") is get_split("nb201", "help")
    assert get_split("fbnet", "F0") is get_split("fbnet", "help")


def test_help_splits_match_helps_scripts() -> None:
    nb = get_split("nb201")
    assert nb.train == (
        "1080ti_1", "1080ti_32", "1080ti_256", "silver_4114", "silver_4210r",
        "samsung_a50", "pixel3", "essential_ph_1", "samsung_s7",
    )  # fmt: skip
    assert nb.valid == ("titanx_1", "titanx_32", "titanx_256", "gold_6240")
    assert nb.test == ("titan_rtx_256", "gold_6226", "fpga", "pixel2", "raspi4", "eyeriss")
    fb = get_split("fbnet")
    assert fb.train == tuple(d.replace("_256", "_64") for d in nb.train)
    assert fb.valid == ("titanx_1", "titanx_32", "titanx_64", "gold_6240")
    assert fb.test == ("fpga", "raspi4", "eyeriss")


def test_nasflat_tasks() -> None:
    help_valid = set(get_split("fbnet").valid)
    for name in ("F1", "F2", "F3", "F4", "F5"):
        split = get_split("fbnet", name)
        # Selection devices: HELP's valid devices that the task neither trains nor tests on.
        assert set(split.valid) == help_valid - set(split.train) - set(split.test)
    assert get_split("fbnet", "F1").test == (
        "eyeriss",
        "fpga",
        "raspi4",
        "samsung_a50",
        "samsung_s7",
    )
    assert get_split("fbnet", "F4").test == ("1080ti_1", "pixel2", "essential_ph_1")
    f5 = get_split("fbnet", "F5")
    gpus = {d.name for d in list_devices(space="fbnet", family="desktop_gpu")}
    assert len(f5.train) == 15 and set(f5.train) == gpus
    assert f5.test == ("gold_6226", "essential_ph_1", "samsung_s7", "pixel2")


def test_unknown_split() -> None:
    with pytest.raises(
        DataError, match=r"Unknown split 'F1' for space 'nb201'; known: \['help', 'N0'\]"
    ):
        get_split("nb201", "F1")
    with pytest.raises(DataError, match=r"Unknown search space 'ofa'"):
        list_splits("ofa")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "splits.yaml"
    path.write_text(text)
    return path


def test_loader(tmp_path: Path) -> None:
    path = _write(tmp_path, "nb201:\n  mine: {aliases: [M], train: [a, b], test: [c]}\n")
    assert load_splits(path) == {
        "nb201": {"mine": Split("nb201", "mine", ("a", "b"), (), ("c",), ("M",))}
    }
    assert ROLES == ("train", "valid", "test")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "nb201:\n  x: {train: [a], valid: [a], test: [b]}\n",
            r"'a' is in both 'train' and 'valid'",
        ),
        ("nb201:\n  x: {train: [a], test: []}\n", r"needs non-empty train and test"),
        ("nb201:\n  x: {train: [a], test: [b], extra: [c]}\n", r"unknown key\(s\) \['extra'\]"),
        ("ofa:\n  x: {train: [a], test: [b]}\n", r"unknown space 'ofa'"),
        (
            "nb201:\n  x: {train: [a], test: [b]}\n  y: {aliases: [x], train: [a], test: [b]}\n",
            r"'x' used twice",
        ),
    ],
)
def test_loader_validation(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_splits(_write(tmp_path, text))
