"""HW-NAS-Bench-360: NB201 networks on a Raspberry Pi 5 and a Pixel, latency and energy.

The measurements live in `<data_dir>/hwnb360/dataset.parquet` (see that folder's README;
the file has no licence grant, so it is read, never shipped). Each (board, runtime, task)
is one device of the registry, named `<board>_<runtime>_<task>` (e.g. `pi5_onnx_darcy`),
with `latency_ms` and, on the Pi 5, `energy_mj` per inference (core rail, idle subtracted).

Only architectures with `arch_idx == rep_arch_idx` were measured; the other 9,159 NB201
indices carry their representative's numbers and are NaN here. The three tasks build a
different network from the same cell (input shape and classifier width differ; a 1-channel
input changes the stem), so each task has its own graphs (`task_store`).

Stats (6,466 measured archs per device): Pi 5 latency 0.003-138 ms, energy 0.0002-193 mJ;
LiteRT folds 283 input-independent archs to constants (near-zero values, dropped by
`tables.valid_mask`).

Example:
    >>> t = load_hwnb360()["pi5_onnx_cifar100"]
    >>> t.values("energy_mj")[t.measured].min() > 0
    True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from predictor.datadir import resolve_data_dir, sha256_file
from predictor.errors import DataError, UnknownDeviceError
from predictor.graph_store import GraphStore

if TYPE_CHECKING:
    from predictor.datasets import DeviceTask
from predictor.tables import SPACE_SIZES

logger = logging.getLogger(__name__)

SUBDIR = "hwnb360"
FILE = "dataset.parquet"
SHA256 = "d3ce4198e31564486b7194ba28507bea3867cb16a2587d68d82e3b62cfff4cce"
SIZE = 3_119_939
"""The upstream file (HW-NAS-Bench-360 commit a9b243e, `results/dataset.parquet`)."""

METRICS: tuple[str, ...] = ("latency_ms", "energy_mj")
RUNTIMES: tuple[str, ...] = ("litert", "onnx", "torchmobile")
BOARDS: tuple[str, ...] = ("pi5", "pixel")


@dataclass(frozen=True)
class TaskSetting:
    """The network variant a task builds: NB201 TinyNetwork at this input and width.

    Attributes:
        input_shape: (1, C, H, W) batch-1 input.
        num_classes: classifier outputs.
    """

    input_shape: tuple[int, int, int, int]
    num_classes: int


TASKS: dict[str, TaskSetting] = {
    "cifar100": TaskSetting((1, 3, 32, 32), 100),
    "ninapro": TaskSetting((1, 1, 52, 16), 18),
    "darcy": TaskSetting((1, 1, 88, 88), 1),  # native 85x85 zero-padded to 88
}
_COLUMNS = {"arch_idx", "rep_arch_idx", "device", "framework", "task", "lat_ms_median",
            "energy_mj"}


def device_name(board: str, runtime: str, task: str) -> str:
    """Registry name of one (board, runtime, task), e.g. `pi5_onnx_darcy`."""
    return f"{board}_{runtime}_{task}"


@dataclass(frozen=True)
class HwTable:
    """One device's measurements over NB201, index-aligned with NB201's arch order.

    Attributes:
        device: registry name, e.g. `pi5_litert_cifar100`.
        latency_ms: (15625,) float64, NaN where not measured (an isomorphic copy).
        energy_mj: (15625,) float64 energy per inference, NaN where not measured or
            not recorded (every Pixel row).
        measured: (15625,) bool, `arch_idx == rep_arch_idx`.
    """

    device: str
    board: str
    runtime: str
    task: str
    latency_ms: np.ndarray = field(repr=False)
    energy_mj: np.ndarray = field(repr=False)
    measured: np.ndarray = field(repr=False)

    @property
    def setting(self) -> TaskSetting:
        return TASKS[self.task]

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(m for m in METRICS if np.isfinite(self.values(m)).any())

    def values(self, metric: str) -> np.ndarray:
        """(15625,) copy of `metric` ("latency_ms" or "energy_mj"), NaN where missing."""
        if metric not in METRICS:
            raise DataError(f"Unknown metric '{metric}'; known: {list(METRICS)}")
        return np.array(getattr(self, metric))


def data_file(data_dir: str | Path | None = None, *, verify_checksum: bool = False) -> Path:
    """`<data_dir>/hwnb360/dataset.parquet`, checked to exist and have the upstream size.

    Raises:
        DataError: missing file, wrong size or (with `verify_checksum`) wrong sha256.
    """
    root = resolve_data_dir(data_dir)
    path = root / SUBDIR / FILE
    hint = (f"copy HW-NAS-Bench-360's results/{FILE} (commit a9b243e) to '{path}' or set "
            "LATPRED_DATA_DIR to a directory that holds 'hwnb360/'")
    if not path.is_file():
        raise DataError(f"Missing HW-NAS-Bench-360 file '{path}'; {hint}")
    if path.stat().st_size != SIZE:
        raise DataError(f"HW-NAS-Bench-360 file '{path}' has {path.stat().st_size} bytes, "
                        f"expected {SIZE}; {hint}")
    if verify_checksum and sha256_file(path) != SHA256:
        raise DataError(f"HW-NAS-Bench-360 file '{path}' has the wrong sha256 "
                        f"(expected {SHA256}); {hint}")
    return path


def load_hwnb360(data_dir: str | Path | None = None) -> dict[str, HwTable]:
    """Every device of the benchmark, measured rows only, validated.

    Returns:
        Tables by registry name (9 Pi 5 devices with energy, 3 Pixel latency-only).

    Raises:
        DataError: missing/altered file, missing columns, a device without exactly one
            row per NB201 index, or a measured value that is NaN, zero or negative.
    """
    return dict(_load(data_file(data_dir, verify_checksum=True)))


@lru_cache(maxsize=2)
def _load(path: Path) -> tuple[tuple[str, HwTable], ...]:
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow errors of any kind: the file is unusable
        raise DataError(f"Cannot read '{path}' ({type(exc).__name__}: {exc})") from exc
    missing = sorted(_COLUMNS - set(df.columns))
    if missing:
        raise DataError(f"'{path}' lacks column(s) {missing}; expected {sorted(_COLUMNS)}")
    n = SPACE_SIZES["nb201"]
    out = []
    for (board, runtime, task), group in df.groupby(["device", "framework", "task"], sort=True):
        name = device_name(board, runtime, task)
        if task not in TASKS:
            raise DataError(f"'{path}': device '{name}' has unknown task '{task}'; "
                            f"known: {list(TASKS)}")
        idx = group["arch_idx"].to_numpy()
        if len(group) != n or not np.array_equal(np.sort(idx), np.arange(n)):
            raise DataError(f"'{path}': device '{name}' must have one row per NB201 index "
                            f"0..{n - 1}, has {len(group)} rows")
        group = group.sort_values("arch_idx")
        measured = (group["arch_idx"] == group["rep_arch_idx"]).to_numpy()
        tables = {}
        for metric, column in (("latency_ms", "lat_ms_median"), ("energy_mj", "energy_mj")):
            values = group[column].to_numpy(dtype=np.float64)
            recorded = board == "pi5" or metric == "latency_ms"
            if recorded:
                _check_measured(values[measured], f"'{path}': device '{name}' {metric}")
            tables[metric] = np.where(measured & recorded, values, np.nan)
        out.append((name, HwTable(name, board, runtime, task, tables["latency_ms"],
                                  tables["energy_mj"], measured)))
    logger.debug("HW-NAS-Bench-360: %d devices from '%s'", len(out), path)
    return tuple(out)


def _check_measured(values: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(~np.isfinite(values) | (values <= 0))
    if bad.size:
        raise DataError(f"{what}: {bad.size} measured value(s) NaN, zero or negative "
                        f"(first: {values[bad[0]]!r}); the file is corrupt")


def check_values(values: Sequence[float], metric: str, count: int | None = None) -> np.ndarray:
    """Validate user-given measurements of `metric`: finite, positive, one per model.

    Returns:
        (n,) float64.

    Raises:
        DataError: a NaN, infinite, zero or negative value, or the wrong count (one line,
            naming the rows and the unit).
    """
    if metric not in METRICS:
        raise DataError(f"Unknown metric '{metric}'; known: {list(METRICS)}")
    try:
        y = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{metric} values must be numbers: {exc}") from exc
    if count is not None and y.size != count:
        raise DataError(f"Got {y.size} {metric} values for {count} models; give one per model")
    bad = np.flatnonzero(~np.isfinite(y) | (y <= 0))
    if bad.size:
        raise DataError(f"{metric} values must be finite and positive; bad at rows "
                        f"{bad[:10].tolist()}: {y[bad[:10]].tolist()}")
    return y


def nb201_accuracy(task: str = "cifar100", data_dir: str | Path | None = None) -> np.ndarray:
    """(15625,) NB201 test accuracy per arch index on `task` (the file's `accuracy` column,
    copied there from NAS-Bench-201 / NAS-Bench-360; cifar100: % at 200 epochs): a real
    objective for latency-constrained search benchmarks. Read for evaluation, never shipped.

    Raises:
        DataError: unknown task, missing file or column, or not one finite value per index.
    """
    if task not in TASKS:
        raise DataError(f"Unknown HW-NAS-Bench-360 task '{task}'; known: {list(TASKS)}")
    return _accuracy(data_file(data_dir, verify_checksum=True), task).copy()


@lru_cache(maxsize=3)
def _accuracy(path: Path, task: str) -> np.ndarray:
    import pandas as pd

    try:
        df = pd.read_parquet(path, columns=["arch_idx", "device", "framework", "task",
                                            "accuracy"])
    except Exception as exc:  # pyarrow errors of any kind, a missing column included
        raise DataError(f"Cannot read accuracy from '{path}' ({type(exc).__name__}: {exc})"
                        ) from exc
    # Accuracy is a property of the arch and task, repeated on every board and runtime.
    rows = df[(df["task"] == task) & (df["device"] == "pi5") & (df["framework"] == "onnx")]
    rows = rows.sort_values("arch_idx")
    n = SPACE_SIZES["nb201"]
    values = rows["accuracy"].to_numpy(dtype=np.float64)
    if not np.array_equal(rows["arch_idx"].to_numpy(), np.arange(n)) \
            or not np.isfinite(values).all():
        raise DataError(f"'{path}': task '{task}' needs one finite accuracy per NB201 index "
                        f"0..{n - 1}")
    return values


def load_hwnb360_table(device: str, data_dir: str | Path | None = None) -> HwTable:
    """One device's table, e.g. `load_hwnb360_table("pi5_torchmobile_ninapro")`.

    Raises:
        UnknownDeviceError: not a HW-NAS-Bench-360 device (lists the known names).
    """
    tables = load_hwnb360(data_dir)
    if device not in tables:
        raise UnknownDeviceError(f"Unknown HW-NAS-Bench-360 device '{device}'; known: "
                                 f"{sorted(tables)}")
    return tables[device]


@lru_cache(maxsize=1)
def _arch_strings(data_dir: str | None) -> tuple[str, ...]:
    from predictor.tables import nb201_arch_index

    index = nb201_arch_index(data_dir)
    return tuple(sorted(index, key=index.__getitem__))


def nb201_arch_strings(data_dir: str | Path | None = None) -> list[str]:
    """NB201 arch strings in index order (HELP's `str_arch2idx.pt` = NB201 = this data's)."""
    return list(_arch_strings(None if data_dir is None else str(data_dir)))


def task_store(task: str, indices: Sequence[int] | np.ndarray | None = None,
               data_dir: str | Path | None = None) -> GraphStore:
    """Operator graphs of NB201 archs (default: all 15,625, row i = index i) built for `task`.

    Raises:
        DataError: unknown task.
    """
    from predictor.space_templates import space_templates

    if task not in TASKS:
        raise DataError(f"Unknown HW-NAS-Bench-360 task '{task}'; known: {list(TASKS)}")
    archs = nb201_arch_strings(data_dir)
    chosen = archs if indices is None else [archs[int(i)] for i in indices]
    setting = TASKS[task]
    # Every runtime here compiles the exported graph (`predictor.corpus.GRAPH_MODES`).
    return space_templates("nb201", setting.input_shape, setting.num_classes,
                           graph="exported").store(chosen)


def device_tasks(runtimes: Sequence[str], metric: str, tasks: Sequence[str] = tuple(TASKS), *,
                 data_dir: str | Path | None = None
                 ) -> tuple[list[DeviceTask], dict[tuple[str, int], GraphStore]]:
    """Pi 5 devices as meta-training tasks of `metric` (log-space targets like latency).

    Each (runtime, task) becomes a `DeviceTask` over the measured, valid archs outside the
    test pools (`datasets.training_pool`); its graphs are the task's own store, keyed
    ("hwnb360:<task>", 1).

    Returns:
        (tasks, stores by `DeviceTask.store_key`).
    """
    from predictor.datasets import DeviceTask, training_pool

    tables = load_hwnb360(data_dir)
    out, stores = [], {}
    for runtime in runtimes:
        for task in tasks:
            values = tables[device_name("pi5", runtime, task)].values(metric)
            space = f"{SUBDIR}:{task}"
            stores.setdefault((space, 1), task_store(task, data_dir=data_dir))
            out.append(DeviceTask(space, f"pi5_{runtime}_{task}:{metric}", 1, values,
                                  training_pool("nb201", values)))
    return out, stores
