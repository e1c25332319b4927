"""HW-NAS-Bench-360 loader on the real data (skipped without it), plus its validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from predictor import hwnb360
from predictor.devices import get_device, list_devices
from predictor.errors import DataError, PredictorError, UnknownDeviceError
from predictor.tables import load_latency_table


@pytest.fixture
def hw_data(shared_data_dir: Path) -> Path:
    if not (shared_data_dir / hwnb360.SUBDIR / hwnb360.FILE).is_file():
        pytest.skip("hwnb360/dataset.parquet not in the shared data directory")
    return shared_data_dir


def test_devices_match_registry(hw_data: Path) -> None:
    tables = hwnb360.load_hwnb360(hw_data)
    assert set(tables) == {d.name for d in list_devices(source="hwnb360")}
    assert len(tables) == 12
    for name, table in tables.items():
        device = get_device(name)
        assert (device.runtime, device.task) == (table.runtime, table.task)
        assert device.metrics == table.metrics
    assert get_device("pi5_onnx_darcy").metrics == ("latency_ms", "energy_mj")
    assert get_device("pixel_litert_ninapro").metrics == ("latency_ms",)


def test_only_measured_rows(hw_data: Path) -> None:
    t = hwnb360.load_hwnb360_table("pi5_torchmobile_cifar100", hw_data)
    assert t.measured.sum() == 6466 and t.latency_ms.shape == (15625,)
    assert np.isnan(t.energy_mj[~t.measured]).all()
    assert (t.energy_mj[t.measured] > 0).all() and (t.latency_ms[t.measured] > 0).all()
    # README statistics: torchmobile cifar100 energy median 10.8 mJ, latency median 9.46 ms.
    assert np.median(t.energy_mj[t.measured]) == pytest.approx(10.8, rel=0.01)
    assert np.median(t.latency_ms[t.measured]) == pytest.approx(9.46, rel=0.01)
    pixel = hwnb360.load_hwnb360_table("pixel_litert_darcy", hw_data)
    assert np.isnan(pixel.energy_mj).all() and pixel.metrics == ("latency_ms",)


def test_index_order_matches_help(hw_data: Path) -> None:
    """The README's check: Pi 5 litert vs HELP raspi4 over the reps, Spearman 0.967."""
    t = hwnb360.load_hwnb360_table("pi5_litert_cifar100", hw_data)
    raspi4 = load_latency_table("nb201", "raspi4", hw_data)
    rho = spearmanr(t.latency_ms[t.measured], raspi4[t.measured]).statistic
    assert rho == pytest.approx(0.967, abs=0.002)


def test_task_store_shapes(hw_data: Path) -> None:
    strings = hwnb360.nb201_arch_strings(hw_data)
    assert len(strings) == 15625
    stores = {task: hwnb360.task_store(task, [0, 1, 2], hw_data) for task in hwnb360.TASKS}
    assert all(len(s) == 3 for s in stores.values())
    # Different inputs give different graphs of the same archs (darcy 88x88 has more MACs).
    macs = {t: s.graph_attr[:, 0] for t, s in stores.items()}
    assert not np.allclose(macs["darcy"].numpy(), macs["cifar100"].numpy())


def test_task_store_holds_the_exported_graphs(hw_data: Path) -> None:
    """The Pi 5 runtimes compile the exported graph: a cell node feeding three pools is one
    pool there (eager PyTorch would run three)."""
    from predictor.space_templates import space_templates

    strings = hwnb360.nb201_arch_strings(hw_data)
    pools = next(i for i, a in enumerate(strings) if a.count("avg_pool_3x3~0") == 3)
    setting = hwnb360.TASKS["cifar100"]
    store = hwnb360.task_store("cifar100", [pools], hw_data)
    eager = space_templates("nb201", setting.input_shape, setting.num_classes).store(
        [strings[pools]])
    exported = space_templates("nb201", setting.input_shape, setting.num_classes,
                               graph="exported").store([strings[pools]])
    assert int(store.num_nodes[0]) == int(exported.num_nodes[0]) < int(eager.num_nodes[0])


def test_unknown_device_and_task(hw_data: Path) -> None:
    with pytest.raises(UnknownDeviceError, match="pi5_litert_cifar100"):
        hwnb360.load_hwnb360_table("pi5_tvm_cifar100", hw_data)
    with pytest.raises(DataError, match="known"):
        hwnb360.task_store("imagenet")


def test_missing_and_altered_file(tmp_path: Path, hw_data: Path) -> None:
    with pytest.raises(DataError, match="Missing HW-NAS-Bench-360 file"):
        hwnb360.load_hwnb360(tmp_path)
    (tmp_path / "hwnb360").mkdir()
    (tmp_path / "hwnb360" / hwnb360.FILE).write_bytes(b"x" * 10)
    with pytest.raises(DataError, match="expected 3119939"):
        hwnb360.load_hwnb360(tmp_path)


def test_corrupt_values_are_rejected(tmp_path: Path, hw_data: Path) -> None:
    import pandas as pd

    df = pd.read_parquet(hw_data / "hwnb360" / hwnb360.FILE)
    df.loc[(df.arch_idx == 0) & (df.framework == "onnx"), "energy_mj"] = -1.0
    path = tmp_path / "bad.parquet"
    df.to_parquet(path)
    with pytest.raises(DataError, match="pi5_onnx_.*energy_mj.*negative"):
        hwnb360._load(path)


@pytest.mark.parametrize("values", [[1.0, float("nan")], [1.0, -2.0], [0.0, 1.0], ["a", 1]])
def test_check_values_rejects_bad_input(values: list) -> None:
    with pytest.raises(PredictorError) as info:
        hwnb360.check_values(values, "energy_mj")
    assert "\n" not in str(info.value)


def test_check_values() -> None:
    assert hwnb360.check_values([1.5, 2.0], "energy_mj", count=2).tolist() == [1.5, 2.0]
    with pytest.raises(DataError, match="one per model"):
        hwnb360.check_values([1.0], "latency_ms", count=2)
    with pytest.raises(DataError, match="Unknown metric"):
        hwnb360.check_values([1.0], "power_w")


def test_device_tasks_train_on_measured_archs_outside_the_test_pool(hw_data: Path) -> None:
    tasks, stores = hwnb360.device_tasks(["onnx"], "energy_mj", ["ninapro"], data_dir=hw_data)
    (task,) = tasks
    assert task.store_key == ("hwnb360:ninapro", 1) and set(stores) == {task.store_key}
    assert len(stores[task.store_key]) == 15625
    pool = task.pool
    assert not ((pool >= 900) & (pool < 1900)).any()
    assert np.isfinite(task.latency_ms[pool]).all() and (task.latency_ms[pool] > 0).all()
    table = hwnb360.load_hwnb360_table("pi5_onnx_ninapro", hw_data)
    assert table.measured[pool].all()


def test_nb201_accuracy_is_nas_bench_201s(hw_data: Path) -> None:
    """CIFAR-100 test accuracy per NB201 index: the NB201 paper's optimum 73.51 %, chance
    (1 %) for the cell of only `none` edges, and the same value on every board."""
    import pandas as pd

    from predictor.tables import nb201_arch_index

    acc = hwnb360.nb201_accuracy("cifar100", hw_data)
    assert acc.shape == (15625,) and np.isfinite(acc).all()
    assert acc.max() == pytest.approx(73.51, abs=0.01)
    empty = nb201_arch_index(hw_data)["|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"]
    assert acc[empty] == pytest.approx(1.0, abs=1e-6)
    df = pd.read_parquet(hw_data / "hwnb360" / hwnb360.FILE)
    pixel = df[(df.device == "pixel") & (df.task == "cifar100")].sort_values("arch_idx")
    np.testing.assert_allclose(pixel["accuracy"].to_numpy(), acc)
    with pytest.raises(DataError, match="known"):
        hwnb360.nb201_accuracy("imagenet", hw_data)


def test_nb201_accuracy_rejects_a_missing_value(tmp_path: Path, hw_data: Path) -> None:
    import pandas as pd

    df = pd.read_parquet(hw_data / "hwnb360" / hwnb360.FILE)
    df.loc[(df.arch_idx == 5) & (df.framework == "onnx"), "accuracy"] = np.nan
    path = tmp_path / "bad.parquet"
    df.to_parquet(path)
    with pytest.raises(DataError, match="one finite accuracy per NB201 index"):
        hwnb360._accuracy(path, "cifar100")
