"""Tests for predictor.tables: loading/validating HELP tables and HELP's outlier trimming."""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from predictor import tables
from predictor.errors import DataError, UnknownDeviceError
from predictor.tables import (
    FBNET_BLOCKS,
    POOLS,
    SPACE_SIZES,
    TEST_POOL,
    TRAIN_POOL,
    available_devices,
    fbnet_archs,
    legacy_argsort,
    load_latency_table,
    nb201_arch_index,
    reference_indices,
    trim_outliers,
    valid_mask,
)


def _fake_table(tmp_path: Path, space_dir: str, name: str, obj: object) -> Path:
    path = tmp_path / "help" / space_dir / "latency" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


# ----------------------------------------------------------------------------- real data


@pytest.mark.parametrize("space", ["nb201", "fbnet"])
def test_every_table_loads(space: str, shared_data_dir: Path) -> None:
    devices = available_devices(space, shared_data_dir)
    assert len(devices) == 27
    for device in devices:
        table = load_latency_table(space, device, shared_data_dir)
        assert table.dtype == np.float64 and table.shape == (SPACE_SIZES[space],)
        assert np.isfinite(table).all() and (table > 0).all()


def test_known_values(shared_data_dir: Path) -> None:
    nb = load_latency_table("nb201", "1080ti_1", shared_data_dir)
    assert nb[0] == pytest.approx(10.75437068939209)
    fb = load_latency_table("fbnet", "pixel2", shared_data_dir)
    assert fb[:5].tolist() == [28.0, 28.0, 26.0, 27.0, 26.0]


def test_near_zero_entries(shared_data_dir: Path) -> None:
    counts = {}
    for space in ("nb201", "fbnet"):
        for device in available_devices(space, shared_data_dir):
            mask = valid_mask(load_latency_table(space, device, shared_data_dir))
            if not mask.all():
                counts[(space, device)] = int((~mask).sum())
    assert counts == {("nb201", "pixel3"): 203, ("nb201", "raspi4"): 201}


def test_near_zero_archs_ignore_their_input(shared_data_dir: Path) -> None:
    """The near-zero NB201 entries are cells with no input->output path avoiding `none`."""
    index = nb201_arch_index(shared_data_dir)
    table = load_latency_table("nb201", "raspi4", shared_data_dir)
    for arch, i in index.items():
        if table[i] < 0.5:
            nodes = [
                [op.split("~") for op in node.split("|")] for node in arch.strip("|").split("|+|")
            ]
            reach = [True]
            for node in nodes:
                reach.append(any(reach[int(src)] and op != "none" for op, src in node))
            assert not reach[-1], arch


def test_arch_index(shared_data_dir: Path) -> None:
    index = nb201_arch_index(shared_data_dir)
    assert len(index) == 15625 and sorted(index.values()) == list(range(15625))
    first = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
    assert index[first] == 0


def test_fbnet_archs(shared_data_dir: Path) -> None:
    archs = fbnet_archs(shared_data_dir)
    assert len(archs) == 5000 and all(len(a) == 22 for a in archs)
    assert archs[0][:3] == ["k5_e6", "skip", "k3_e1_g2"]
    used = {b for a in archs for b in a}
    assert used == set(FBNET_BLOCKS)


def test_fbnet_archs_detects_disagreement(
    shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_load = tables._load

    def tampered(path: Path) -> object:
        obj = copy.deepcopy(real_load(path))
        if path.name == "metainfo.pt":
            names = obj["arch"][7]["arch_str"]
            names[0] = "k3_e3" if names[0] != "k3_e3" else "skip"
        return obj

    monkeypatch.setattr(tables, "_load", tampered)
    with pytest.raises(DataError, match=r"disagree on arch 7"):
        fbnet_archs(shared_data_dir)


def test_reference_indices(shared_data_dir: Path) -> None:
    assert reference_indices("nb201", shared_data_dir) == [
        11982, 431, 55, 9, 14451, 8636, 9881, 13479, 6196, 1462,
    ]  # fmt: skip
    assert reference_indices("fbnet", shared_data_dir) == [
        3328, 3790, 3313, 890, 3052, 2538, 1640, 2514, 457, 2100,
    ]  # fmt: skip


def test_cache(shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_latency_table("fbnet", "fpga", shared_data_dir)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    first = load_latency_table("fbnet", "fpga", shared_data_dir)
    first[:] = -1  # callers get copies
    second = load_latency_table("fbnet", "fpga", shared_data_dir)
    assert calls == [] and (second > 0).all()


def test_cache_refreshes_on_change(tmp_path: Path) -> None:
    path = _fake_table(tmp_path, "fbnet", "mydev", [1.0] * 5000)
    assert load_latency_table("fbnet", "mydev", tmp_path)[0] == 1.0
    torch.save([2.0] * 5000, path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_latency_table("fbnet", "mydev", tmp_path)[0] == 2.0


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1.0] * 100, r"shape \(100,\), expected \(15625,\)"),
        ([1.0] * 15624 + [float("nan")], r"1 non-finite entries \(first at index 15624\)"),
        (["a"] * 15625, r"non-numeric"),
        ({"latency": [1.0]}, r"holds a dict"),
        ([[1.0, 2.0]] * 15625, r"shape \(15625, 2\)"),
    ],
)
def test_bad_tables(tmp_path: Path, obj: object, message: str) -> None:
    path = _fake_table(tmp_path, "nasbench201", "mydev", obj)
    with pytest.raises(DataError, match=message) as err:
        load_latency_table("nb201", "mydev", tmp_path)
    assert str(path) in str(err.value)


def test_corrupt_and_truncated_files(tmp_path: Path, shared_data_dir: Path) -> None:
    folder = tmp_path / "help" / "fbnet" / "latency"
    folder.mkdir(parents=True)
    (folder / "garbage.pt").write_bytes(b"not a pickle at all")
    good = (shared_data_dir / "help" / "fbnet" / "latency" / "fpga.pt").read_bytes()
    (folder / "cut.pt").write_bytes(good[: len(good) // 2])
    (folder / "pickled.pt").write_bytes(pickle.dumps([1.0] * 3))
    for name in ("garbage", "cut", "pickled"):
        with pytest.raises(DataError, match=rf"{name}\.pt"):
            load_latency_table("fbnet", name, tmp_path)
    # a truncated file under a manifest name is caught by its size
    (folder / "fpga.pt").write_bytes(good[:-10])
    with pytest.raises(DataError, match=r"partial or altered download"):
        load_latency_table("fbnet", "fpga", tmp_path)


def test_missing_and_unknown(tmp_path: Path) -> None:
    (tmp_path / "help" / "nasbench201" / "latency").mkdir(parents=True)
    with pytest.raises(
        DataError, match=r"Missing HELP data file .*pixel2\.pt.*latpred data download"
    ):
        load_latency_table("nb201", "pixel2", tmp_path)
    with pytest.raises(
        UnknownDeviceError, match=r"Unknown device 'foo' for space 'nb201'; known: \["
    ):
        load_latency_table("nb201", "foo", tmp_path)
    with pytest.raises(UnknownDeviceError, match=r"titanx_64"):  # a FBNet-only batch size
        load_latency_table("nb201", "titanx_64", tmp_path)
    with pytest.raises(
        DataError, match=r"Unknown search space 'nasbench'; known: \['nb201', 'fbnet'\]"
    ):
        load_latency_table("nasbench", "pixel2", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"No latency folder"):
        available_devices("fbnet", tmp_path)


def test_valid_mask_synthetic() -> None:
    table = np.array([10.0, 11.0, 0.01, 12.0, np.nan, 9.0])
    assert valid_mask(table).tolist() == [True, True, False, True, False, True]
    assert valid_mask(table, rel_floor=0.0).tolist() == [True, True, True, True, False, True]


# ----------------------------------------------------------------------------- HELP's protocol


def test_pools() -> None:
    assert TRAIN_POOL == range(0, 900) and TEST_POOL == range(900, 1900)
    assert POOLS["nb201"] == (TRAIN_POOL, TEST_POOL)
    assert POOLS["fbnet"] == (range(0, 4000), range(4000, 5000))


def test_trim_matches_help_without_ties() -> None:
    rng = np.random.default_rng(0)
    table = rng.permutation(3000).astype(np.float64) + 0.5
    for pool in (TRAIN_POOL, TEST_POOL):
        idx = np.arange(pool.start, pool.stop)
        help_kept = idx[
            np.argsort(table[idx].astype(np.float32))[int(len(idx) * 0.1) : int(len(idx) * 0.9)]
        ]
        assert trim_outliers(pool, table) == help_kept.tolist()
    assert len(trim_outliers(TRAIN_POOL, table)) == 720
    assert len(trim_outliers(TEST_POOL, table)) == 800
    assert len(trim_outliers(range(19), table)) == 16  # int(1.9)=1 .. int(17.1)=17: truncated
    kept = trim_outliers(TEST_POOL, table)
    assert np.all(np.diff(table[kept]) > 0)  # ascending latency, as HELP keeps them


def test_trim_removes_near_zero(shared_data_dir: Path) -> None:
    for device in ("pixel3", "raspi4"):
        table = load_latency_table("nb201", device, shared_data_dir)
        mask = valid_mask(table)
        for pool in (TRAIN_POOL, TEST_POOL):
            assert mask[trim_outliers(pool, table)].all()


@pytest.mark.parametrize(
    ("space", "device", "pool", "expected"),
    [
        ("nb201", "pixel2", TRAIN_POOL, "49095664316b7851"),
        ("nb201", "pixel2", TEST_POOL, "e898462adb1e1a60"),
        ("nb201", "eyeriss", TEST_POOL, "caa109d3fa8385c6"),
        ("fbnet", "samsung_s7", range(4000, 5000), "6d6eb91da16b7786"),
    ],
)
def test_trim_tie_heavy_regression(
    space: str, device: str, pool: range, expected: str, shared_data_dir: Path
) -> None:
    """Kept lists of tie-heavy tables, checked against NumPy 1.24.4's argsort (HELP's era)."""
    kept = trim_outliers(pool, load_latency_table(space, device, shared_data_dir))
    assert hashlib.sha1(str(kept).encode()).hexdigest()[:16] == expected


def test_trim_errors() -> None:
    with pytest.raises(DataError, match=r"trim fraction 0.5"):
        trim_outliers(range(10), np.ones(10), frac=0.5)
    with pytest.raises(DataError, match=r"pool indices span 0..10 but the table has 10"):
        trim_outliers(range(11), np.ones(10))


def test_legacy_argsort_ties_match_numpy_1_24() -> None:
    """Outputs of `np.argsort(float32)` on NumPy 1.24.4 (no SIMD sort), hard-coded."""
    values = [
        3, 1, 2, 1, 3, 2, 1, 3, 2, 1, 2, 3, 1, 1, 2, 3, 2, 1, 3, 3, 2, 1, 1, 2, 3, 1, 2, 3, 2, 1, 1, 2, 3,
    ]  # fmt: skip
    assert legacy_argsort([float(v) for v in values]) == [
        1, 21, 3, 30, 6, 29, 25, 9, 22, 12, 13, 17, 16, 20, 26, 31, 28,
        14, 10, 8, 5, 2, 23, 27, 0, 19, 18, 15, 11, 7, 4, 24, 32,
    ]  # fmt: skip
    all_equal = [0, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 18, 19]
    assert legacy_argsort([5.0] * 20) == all_equal


@pytest.mark.parametrize("n", [0, 1, 2, 16, 17, 100, 1000])
def test_legacy_argsort_sorts(n: int) -> None:
    rng = np.random.default_rng(n)
    for high in (3, 10**6):
        values = rng.integers(0, high, n).astype(float).tolist()
        order = legacy_argsort(values)
        assert sorted(order) == list(range(n))
        assert [values[i] for i in order] == sorted(values)


# A median-of-3 "killer" input (McIlroy's adversary against this quicksort, values
# halved to create ties): it exhausts the depth budget, so the heapsort fallback runs.
KILLER = [
    0, 37, 1, 37, 2, 36, 3, 36, 4, 35, 5, 35, 6, 34, 7, 34, 8, 33, 9, 33, 10, 32, 11, 32, 12,
    13, 50, 48, 49, 48, 47, 47, 46, 46, 45, 45, 44, 44, 43, 43, 42, 42, 41, 41, 40, 40, 39, 39,
    38, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 31, 31, 30, 30, 29, 29, 28, 28, 27, 27, 26,
    26, 25, 25, 24, 24, 23, 23, 22, 22, 21, 21, 20, 20, 19, 19, 18, 18, 17, 17, 16, 16, 15,
    15, 14, 14, 38, 13,
]  # fmt: skip
KILLER_ORDER_NUMPY_1_24 = [
    0, 49, 2, 50, 4, 51, 6, 52, 8, 53, 10, 54, 12, 55, 14, 56, 16, 57, 18, 58, 20, 59, 22, 60,
    24, 61, 99, 25, 96, 97, 95, 94, 92, 93, 90, 91, 88, 89, 86, 87, 85, 84, 83, 82, 81, 80, 79,
    78, 77, 76, 75, 74, 72, 73, 71, 70, 69, 68, 67, 66, 65, 64, 63, 62, 23, 21, 19, 17, 13, 15,
    11, 9, 7, 5, 3, 1, 98, 48, 47, 46, 45, 44, 43, 42, 40, 41, 39, 38, 37, 36, 35, 34, 32, 33,
    31, 30, 29, 27, 28, 26,
]  # fmt: skip


def test_legacy_heapsort_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = tables._legacy_aheapsort
    monkeypatch.setattr(tables, "_legacy_aheapsort", lambda *a: calls.append(a[2:]) or real(*a))
    assert legacy_argsort([float(v) for v in KILLER]) == KILLER_ORDER_NUMPY_1_24
    assert len(calls) == 1
