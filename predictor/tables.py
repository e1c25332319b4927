"""HELP's measured latency tables (NAS-Bench-201 and FBNet), loaded and validated.

Every table is a list of latencies in milliseconds, index-aligned with the
architectures of its search space (NB201: 15,625 cells in `str_arch2idx.pt`
order; FBNet: the 5,000 sampled networks of `metainfo.pt`). Loads are cached
per (path, mtime, size); the functions return fresh copies, so callers may
modify what they get.

HELP's evaluation protocol (read from its public `loader.py` and run scripts):
meta-training draws architectures from the first `num_meta_train_sample`
indices of each device (NB201: 900, FBNet: 4,000), a device is tested on the
next 1,000 indices, and in both pools the fastest and slowest 10% on that
device are dropped (`trim_outliers`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from predictor.datadir import help_file, help_manifest, resolve_data_dir
from predictor.errors import DataError, UnknownDeviceError

logger = logging.getLogger(__name__)

Space = Literal["nb201", "fbnet"]
SPACES: tuple[str, ...] = ("nb201", "fbnet")
SPACE_SIZES: dict[str, int] = {"nb201": 15625, "fbnet": 5000}
"""Number of architectures (= table length) per space."""
_SPACE_DIRS = {"nb201": "nasbench201", "fbnet": "fbnet"}

FBNET_BLOCKS: tuple[str, ...] = (
    "k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip",
)  # fmt: skip
"""FBNet block names in `op_idx_list` order (index 0..8), checked against `metainfo.pt`."""
FBNET_LAYERS = 22
NUM_REFERENCE_ARCHS = 10

# HELP's pools for NB201 (`--num_meta_train_sample 900`, `--num_query 1000`).
TRAIN_POOL = range(0, 900)
"""NB201 indices HELP meta-trains on and samples few-shot measurements from."""
TEST_POOL = range(900, 1900)
"""NB201 indices HELP scores a device on (before trimming: 800 remain)."""
POOLS: dict[str, tuple[range, range]] = {
    "nb201": (TRAIN_POOL, TEST_POOL),
    "fbnet": (range(0, 4000), range(4000, 5000)),  # HELP's FBNet scripts: 4000 train samples
}
"""(train pool, test pool) per space, as in HELP's published run scripts."""


def check_space(space: str) -> str:
    """Return `space` if it is a known search space.

    Raises:
        DataError: unknown space name (lists the known ones).
    """
    if space not in SPACE_SIZES:
        raise DataError(f"Unknown search space '{space}'; known: {list(SPACES)}")
    return space


# ----------------------------------------------------------------------------- loading

_cache: dict[Path, tuple[tuple[int, int], Any]] = {}


def _load(path: Path) -> Any:
    """`torch.load` a HELP file, cached per (path, mtime, size); errors become DataError."""
    stat = path.stat()
    key = (stat.st_mtime_ns, stat.st_size)
    hit = _cache.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        obj = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # corrupt pickle, truncated file, wrong format: all the same to us
        raise DataError(
            f"Cannot load HELP data file '{path}' ({type(exc).__name__}: {exc}); "
            "the file is corrupt or truncated: delete it and run 'latpred data download'"
        ) from exc
    _cache[path] = (key, obj)
    return obj


def clear_cache() -> None:
    """Forget every cached load (the cache also refreshes itself when a file changes)."""
    _cache.clear()


def _rel(space: str, name: str) -> str:
    return f"{_SPACE_DIRS[check_space(space)]}/{name}"


def _manifest_devices(space: str) -> list[str]:
    prefix = _rel(space, "latency/")
    return sorted(e.path[len(prefix) : -3] for e in help_manifest() if e.path.startswith(prefix))


def available_devices(space: Space, data_dir: str | Path | None = None) -> list[str]:
    """Device names that have a latency table for `space` in the data directory.

    Returns:
        Sorted file stems of `<data_dir>/help/<space dir>/latency/*.pt`.

    Raises:
        DataError: unknown space, or the latency folder is missing.
    """
    folder = resolve_data_dir(data_dir) / "help" / _rel(space, "latency")
    if not folder.is_dir():
        raise DataError(
            f"No latency folder '{folder}'; run 'latpred data download' "
            "or set LATPRED_DATA_DIR to a directory that holds 'help/'"
        )
    return sorted(p.stem for p in folder.glob("*.pt"))


def load_latency_table(space: Space, device: str, data_dir: str | Path | None = None) -> np.ndarray:
    """One device's measured latencies over the whole space.

    Near-zero entries (pixel3, raspi4 on NB201) are kept; see `valid_mask`.

    Args:
        space: `"nb201"` or `"fbnet"`.
        device: HELP device name, e.g. `"1080ti_1"`, `"pixel2"`.
        data_dir: data directory; `None` resolves it with `resolve_data_dir`.

    Returns:
        (15625,) for nb201 or (5000,) for fbnet float64 latencies in ms; entry
        `i` belongs to architecture index `i`.

    Raises:
        UnknownDeviceError: no such device in HELP's data for this space.
        DataError: the file is missing, does not load, is not a flat list of
            finite numbers, or has the wrong length.
    """
    rel = _rel(space, f"latency/{device}.pt")
    root = resolve_data_dir(data_dir)
    if not (root / "help" / rel).is_file() and device not in _manifest_devices(space):
        known = _manifest_devices(space)
        raise UnknownDeviceError(
            f"Unknown device '{device}' for space '{space}'; known: {known}; "
            "see predictor.devices.list_devices() for the registry"
        )
    path = help_file(rel, root)
    raw = _load(path)
    if isinstance(raw, torch.Tensor):
        raw = raw.tolist()
    if not isinstance(raw, (list, tuple, np.ndarray)):
        raise DataError(
            f"HELP latency table '{path}' holds a {type(raw).__name__}, expected a list of "
            "numbers (ms); delete it and run 'latpred data download'"
        )
    try:
        table = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"HELP latency table '{path}' has non-numeric entries ({exc}); "
            "delete it and run 'latpred data download'"
        ) from exc
    expected = SPACE_SIZES[space]
    if table.shape != (expected,):
        raise DataError(
            f"HELP latency table '{path}' has shape {table.shape}, expected ({expected},) "
            f"for space '{space}'; delete it and run 'latpred data download'"
        )
    bad = np.flatnonzero(~np.isfinite(table))
    if bad.size:
        raise DataError(
            f"HELP latency table '{path}' has {bad.size} non-finite entries "
            f"(first at index {int(bad[0])}); delete it and run 'latpred data download'"
        )
    return table.copy()


def valid_mask(table: np.ndarray, rel_floor: float = 0.01) -> np.ndarray:
    """Which entries are plausible measurements (finite and not near zero).

    On NB201, pixel3 (203 entries) and raspi4 (201) report 0.003-0.25 ms for
    architectures whose cell output does not depend on the input (every path
    from the cell input goes through `none`); their runtime folds such networks
    to a constant. Every other device shows normal latencies for them.

    Args:
        table: (N,) latencies in ms.
        rel_floor: entries at or below `rel_floor * median(table)` count as invalid.

    Returns:
        (N,) bool, True where the entry is finite and above the floor.
    """
    values = np.asarray(table, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return finite
    floor = rel_floor * float(np.median(values[finite]))
    return finite & (values > floor)


def nb201_arch_index(data_dir: str | Path | None = None) -> dict[str, int]:
    """NAS-Bench-201 architecture string -> table index, from `str_arch2idx.pt`.

    Returns:
        15,625 entries like `'|nor_conv_3x3~0|+|...|' -> 1`, indices 0..15624 each once.

    Raises:
        DataError: missing or corrupt file, wrong size, or indices not a permutation.
    """
    path = help_file(_rel("nb201", "str_arch2idx.pt"), data_dir)
    raw = _load(path)
    n = SPACE_SIZES["nb201"]
    if not isinstance(raw, dict) or len(raw) != n:
        size = len(raw) if isinstance(raw, dict) else type(raw).__name__
        raise DataError(
            f"HELP file '{path}' should map {n} arch strings to indices, got {size}; "
            "delete it and run 'latpred data download'"
        )
    values = list(raw.values())
    if not all(isinstance(k, str) for k in raw) or sorted(values) != list(range(n)):
        raise DataError(
            f"HELP file '{path}' does not map strings to the indices 0..{n - 1} exactly once; "
            "delete it and run 'latpred data download'"
        )
    return dict(raw)


def fbnet_archs(data_dir: str | Path | None = None) -> list[list[str]]:
    """The 5,000 FBNet architectures of HELP, as block names per layer.

    Read from `metainfo.pt` (`arch[i]['arch_str']`), checked against its own
    `op_idx_list` (via `FBNET_BLOCKS`) and against `arch.pt`.

    Returns:
        5,000 lists of 22 names from `FBNET_BLOCKS`; list `i` is table index `i`.

    Raises:
        DataError: missing or corrupt file, wrong counts, unknown block names,
            or the two files disagree.
    """
    meta_path = help_file(_rel("fbnet", "metainfo.pt"), data_dir)
    arch_path = help_file(_rel("fbnet", "arch.pt"), data_dir)
    meta, op_lists = _load(meta_path), _load(arch_path)
    n = SPACE_SIZES["fbnet"]
    hint = "delete it and run 'latpred data download'"
    entries = meta.get("arch") if isinstance(meta, dict) else None
    if not isinstance(entries, list) or len(entries) != n:
        raise DataError(f"HELP file '{meta_path}' should hold {n} entries under 'arch'; {hint}")
    if not isinstance(op_lists, list) or len(op_lists) != n:
        raise DataError(f"HELP file '{arch_path}' should hold {n} op index lists; {hint}")
    archs: list[list[str]] = []
    for i, (entry, ops) in enumerate(zip(entries, op_lists, strict=True)):
        names = entry.get("arch_str") if isinstance(entry, dict) else None
        idx = entry.get("op_idx_list") if isinstance(entry, dict) else None
        if (
            not isinstance(names, list)
            or len(names) != FBNET_LAYERS
            or any(b not in FBNET_BLOCKS for b in names)
        ):
            raise DataError(
                f"HELP file '{meta_path}': arch {i} is not {FBNET_LAYERS} names from "
                f"{list(FBNET_BLOCKS)}: {names!r}; {hint}"
            )
        if idx != [FBNET_BLOCKS.index(b) for b in names] or list(ops) != idx:
            raise DataError(
                f"HELP files '{meta_path}' and '{arch_path}' disagree on arch {i}: "
                f"arch_str {names}, op_idx_list {idx}, arch.pt {ops}; {hint}"
            )
        archs.append(list(names))
    return archs


def reference_indices(space: Space, data_dir: str | Path | None = None) -> list[int]:
    """HELP's 10 reference architectures whose latencies embed a device.

    Returns:
        10 distinct table indices, in file order (the order of the embedding vector).

    Raises:
        DataError: missing or corrupt `hardware_embedding_index.pt`, or bad indices.
    """
    path = help_file(_rel(space, "hardware_embedding_index.pt"), data_dir)
    raw = _load(path)
    if isinstance(raw, torch.Tensor):
        raw = raw.tolist()
    n = SPACE_SIZES[space]
    if (
        not isinstance(raw, (list, tuple))
        or len(raw) != NUM_REFERENCE_ARCHS
        or not all(isinstance(i, int) and 0 <= i < n for i in raw)
        or len(set(raw)) != len(raw)
    ):
        raise DataError(
            f"HELP file '{path}' should list {NUM_REFERENCE_ARCHS} distinct indices in "
            f"0..{n - 1}, got {raw!r}; delete it and run 'latpred data download'"
        )
    return list(raw)


# ----------------------------------------------------------------------------- trimming


def trim_outliers(
    indices: Sequence[int] | range, table: np.ndarray, frac: float = 0.1
) -> list[int]:
    """Drop the fastest and slowest `frac` of `indices` on one device, exactly as HELP does.

    HELP (`loader.py`, `remove_outlier`) keeps
    `idx[np.argsort(float32(lat[idx]))[int(n * 0.1):int(n * 0.9)]]`: the cut
    points are truncated with `int()`, the comparison uses float32 values, and
    ties are broken by NumPy's legacy introsort (`kind="quicksort"` on the
    NumPy of 2021). Newer NumPy versions use SIMD sorts on some CPUs that order
    ties differently, which changes the kept set for tables with many ties
    (integer-ms phones, eyeriss, fpga: up to 22 of the 800 kept test indices
    differ under NumPy 2.4 on AVX2). This
    function ports that legacy sort, so the result is the same on every
    machine and NumPy version.

    Args:
        indices: table indices of the pool, e.g. `TEST_POOL`.
        table: (N,) latencies in ms of one device.
        frac: fraction dropped at each end.

    Returns:
        The kept indices, `int(n * frac)` to `int(n * (1 - frac))` of the pool
        sorted by latency, in that ascending-latency order (HELP samples from
        this order, so keep it to reproduce its draws).

    Raises:
        DataError: `frac` outside [0, 0.5), or an index outside the table.
    """
    if not 0.0 <= frac < 0.5:
        raise DataError(f"trim fraction {frac} is outside [0, 0.5); use e.g. 0.1 (HELP)")
    idx = [int(i) for i in indices]
    values = np.asarray(table)
    if idx and (min(idx) < 0 or max(idx) >= len(values)):
        raise DataError(
            f"pool indices span {min(idx)}..{max(idx)} but the table has {len(values)} entries"
        )
    pool_values = values[idx].astype(np.float32).tolist()
    order = legacy_argsort(pool_values)
    n = len(idx)
    lo, hi = int(n * frac), int(n * (1 - frac))
    return [idx[j] for j in order[lo:hi]]


_SMALL_QUICKSORT = 15  # numpy's npysort threshold: partitions this small use insertion sort


def _lt(a: float, b: float) -> bool:
    """numpy's FLOAT_LT: NaNs sort last."""
    return a < b or (b != b and a == a)


def legacy_argsort(values: Sequence[float]) -> list[int]:
    """`np.argsort(values, kind="quicksort")` as NumPy computed it before SIMD sorts.

    A line-by-line port of NumPy's generic `aquicksort` (median-of-3 quicksort,
    insertion sort below 16 elements, heapsort fallback past depth
    2*floor(log2(n))), the algorithm of NumPy 1.x on CPUs without AVX-512.
    Pure Python: about 5 ms for 1,000 values.

    Args:
        values: the keys to sort (compared as given; HELP passes float32 values).

    Returns:
        A permutation of `range(len(values))` that sorts `values` ascending.
    """
    v = list(values)
    num = len(v)
    tosort = list(range(num))
    if num < 2:
        return tosort
    lt = _lt
    pl, pr = 0, num - 1
    stack: list[tuple[int, int, int]] = []
    cdepth = (num.bit_length() - 1) * 2
    while True:
        if cdepth < 0:
            _legacy_aheapsort(v, tosort, pl, pr - pl + 1)
        else:
            while pr - pl > _SMALL_QUICKSORT:
                pm = pl + ((pr - pl) >> 1)
                if lt(v[tosort[pm]], v[tosort[pl]]):
                    tosort[pm], tosort[pl] = tosort[pl], tosort[pm]
                if lt(v[tosort[pr]], v[tosort[pm]]):
                    tosort[pr], tosort[pm] = tosort[pm], tosort[pr]
                if lt(v[tosort[pm]], v[tosort[pl]]):
                    tosort[pm], tosort[pl] = tosort[pl], tosort[pm]
                vp = v[tosort[pm]]
                pi, pj = pl, pr - 1
                tosort[pm], tosort[pj] = tosort[pj], tosort[pm]
                while True:
                    pi += 1
                    while lt(v[tosort[pi]], vp):
                        pi += 1
                    pj -= 1
                    while lt(vp, v[tosort[pj]]):
                        pj -= 1
                    if pi >= pj:
                        break
                    tosort[pi], tosort[pj] = tosort[pj], tosort[pi]
                pk = pr - 1
                tosort[pi], tosort[pk] = tosort[pk], tosort[pi]
                # push the larger partition, continue with the smaller one
                cdepth -= 1
                if pi - pl < pr - pi:
                    stack.append((pi + 1, pr, cdepth))
                    pr = pi - 1
                else:
                    stack.append((pl, pi - 1, cdepth))
                    pl = pi + 1
            # insertion sort
            for pi in range(pl + 1, pr + 1):
                vi = tosort[pi]
                vp = v[vi]
                pj = pi
                while pj > pl and lt(vp, v[tosort[pj - 1]]):
                    tosort[pj] = tosort[pj - 1]
                    pj -= 1
                tosort[pj] = vi
        if not stack:
            return tosort
        pl, pr, cdepth = stack.pop()


def _legacy_aheapsort(v: list[float], tosort: list[int], start: int, n: int) -> None:
    """numpy's `aheapsort` on `tosort[start:start + n]` (1-based heap indexing)."""

    def a_get(k: int) -> int:
        return tosort[start + k - 1]

    def a_set(k: int, value: int) -> None:
        tosort[start + k - 1] = value

    lt = _lt
    for l_ in range(n >> 1, 0, -1):
        tmp = a_get(l_)
        i, j = l_, l_ << 1
        while j <= n:
            if j < n and lt(v[a_get(j)], v[a_get(j + 1)]):
                j += 1
            if lt(v[tmp], v[a_get(j)]):
                a_set(i, a_get(j))
                i = j
                j += j
            else:
                break
        a_set(i, tmp)
    while n > 1:
        tmp = a_get(n)
        a_set(n, a_get(1))
        n -= 1
        i, j = 1, 2
        while j <= n:
            if j < n and lt(v[a_get(j)], v[a_get(j + 1)]):
                j += 1
            if lt(v[tmp], v[a_get(j)]):
                a_set(i, a_get(j))
                i = j
                j += j
            else:
                break
        a_set(i, tmp)


__all__ = [
    "FBNET_BLOCKS",
    "POOLS",
    "SPACES",
    "SPACE_SIZES",
    "TEST_POOL",
    "TRAIN_POOL",
    "Space",
    "available_devices",
    "check_space",
    "clear_cache",
    "fbnet_archs",
    "legacy_argsort",
    "load_latency_table",
    "nb201_arch_index",
    "reference_indices",
    "trim_outliers",
    "valid_mask",
]
