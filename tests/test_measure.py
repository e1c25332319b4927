"""`predictor.measure` and `latpred measure`: real ONNX Runtime runs on tiny models."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from predictor.energy import EnergyMeter, RaplEnergyMeter, measure_energy, open_energy_meter
from predictor.errors import (
    DataError,
    DynamicShapeError,
    InvalidModelError,
    MeasurementError,
    ModelNotFoundError,
)
from predictor.measure import (
    Measurement,
    SpeedProbe,
    call_floor_ms,
    floor_model,
    make_inputs,
    measure_many,
    measure_onnx,
    measure_torch,
    median_ci_rel,
    probe_model,
    summarize,
    time_runs,
)
from predictor.measurements import (
    CSV_COLUMNS,
    provenance,
    read_measurements_csv,
    write_measurements_csv,
)

FAST = {"threads": 1, "max_seconds": 0.3, "max_runs": 300, "warmup": 2}


def _add_model(dims: list[int | str]) -> onnx.ModelProto:
    """y = x + x: almost no work."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "add", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _matmul_model(layers: int = 3, rows: int = 256, width: int = 512) -> onnx.ModelProto:
    """A chain of `layers` (rows x width) @ (width x width) MatMuls: ~200 M MACs by default."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((width, width)).astype("float32"),
                                       f"w{i}") for i in range(layers)]
    names = ["x"] + [f"h{i}" for i in range(layers - 1)] + ["y"]
    nodes = [helper.make_node("MatMul", [names[i], f"w{i}"], [names[i + 1]])
             for i in range(layers)]
    graph = helper.make_graph(
        nodes, "matmuls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def add_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "add.onnx"
    onnx.save(_add_model([1, 64]), path)
    return path


def test_median_positive_and_ordered(add_onnx: Path) -> None:
    m = measure_onnx(add_onnx, **FAST)
    assert m.model == str(add_onnx)
    assert m.latency_ms > 0 and m.runs >= 1
    assert m.p10_ms <= m.latency_ms <= m.p90_ms
    assert math.isfinite(m.mean_ms) and m.std_ms >= 0 and m.cv >= 0
    assert m.noisy == (m.noisy_reason is not None)
    assert m.energy_mj is None and m.energy_note is None  # energy only when asked


def test_more_work_measures_slower() -> None:
    small = measure_onnx(_add_model([1, 64]), **FAST)
    big = measure_onnx(_matmul_model(), **FAST)  # ~10^5 x the arithmetic
    assert big.latency_ms > 5 * small.latency_ms, (small, big)


@pytest.mark.parametrize(("threads", "level"), [(1, "all"), (2, "extended"), (1, "basic"),
                                                (None, "disabled")])
def test_threads_and_graph_optimization_accepted(add_onnx: Path, threads: int | None,
                                                 level: str) -> None:
    m = measure_onnx(add_onnx, threads=threads, graph_optimization=level, max_seconds=0.1,
                     max_runs=100)
    assert m.latency_ms > 0


@pytest.mark.parametrize("kwargs", [{"graph_optimization": "fast"}, {"threads": 0},
                                    {"device": "tpu"}, {"backend": "tvm"}, {"batch": -1}])
def test_bad_options_name_the_value(add_onnx: Path, kwargs: dict) -> None:
    with pytest.raises(MeasurementError, match=repr(next(iter(kwargs.values())))):
        measure_onnx(add_onnx, **kwargs)


def test_torch_backend_points_to_measure_torch(add_onnx: Path) -> None:
    with pytest.raises(MeasurementError, match="measure_torch"):
        measure_onnx(add_onnx, backend="torch")


def test_openvino_times_the_same_models() -> None:
    """OpenVINO (CPU, fp32) runs the ONNX files ONNX Runtime runs: more work is slower, a
    fixed batch reshapes a dynamic input, and the floor is below the probe network."""
    pytest.importorskip("openvino")
    ov = {**FAST, "backend": "openvino"}
    small, big = measure_onnx(_add_model([1, 64]), **ov), measure_onnx(_matmul_model(), **ov)
    assert 0 < small.latency_ms and big.latency_ms > 5 * small.latency_ms, (small, big)
    assert measure_onnx(_add_model(["batch", 64]), batch=4, **ov).latency_ms > 0
    probe = measure_onnx(probe_model(), **ov).latency_ms
    assert 0 < call_floor_ms("openvino", threads=1, max_seconds=0.3) < probe


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"graph_optimization": "basic"}, "always optimises"), ({"device": "cuda"}, "'cpu'")])
def test_openvino_options_it_lacks_are_clear(add_onnx: Path, kwargs: dict, message: str) -> None:
    pytest.importorskip("openvino")
    with pytest.raises(MeasurementError, match=message):
        measure_onnx(add_onnx, backend="openvino", **kwargs)


def test_openvino_missing_says_how_to_install(add_onnx: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(MeasurementError, match=r"pip install 'latpred\[openvino\]'"):
        measure_onnx(add_onnx, backend="openvino", **FAST)


def test_openvino_rejects_a_model_it_cannot_read(tmp_path: Path) -> None:
    """A valid ONNX file with an op OpenVINO lacks: one line naming the model."""
    pytest.importorskip("openvino")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")
    model = helper.make_model(helper.make_graph([node], "custom", [x], [y]), opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(MeasurementError, match="custom.onnx") as info:
        measure_onnx(path, backend="openvino", **FAST)
    assert "\n" not in str(info.value)


def test_cuda_without_provider_is_clear(add_onnx: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(MeasurementError, match="onnxruntime-gpu"):
        measure_onnx(add_onnx, device="cuda")
    assert call_floor_ms(device="cuda") is None  # the measurements it goes with are kept


def test_dynamic_input_needs_shape() -> None:
    with pytest.raises(DynamicShapeError, match="Input 'x'") as info:
        measure_onnx(_add_model(["batch", 64]), **FAST)
    assert "\n" not in str(info.value) and "--input-shape" in str(info.value)


def test_dynamic_input_with_shape_and_batch() -> None:
    model = _add_model(["batch", "features"])
    assert measure_onnx(model, input_shape=(2, 64), **FAST).latency_ms > 0
    assert make_inputs(model, input_shape=(2, 64), batch=4)["x"].shape == (4, 64)
    with pytest.raises(DynamicShapeError, match="features"):
        make_inputs(model, batch=4)


def test_fixed_dims_conflicts_are_clear() -> None:
    model = _add_model([1, 64])
    with pytest.raises(DynamicShapeError, match="--batch 4"):
        make_inputs(model, batch=4)
    with pytest.raises(DynamicShapeError, match="rank 2"):
        make_inputs(model, input_shape=(1, 3, 64))
    with pytest.raises(DynamicShapeError, match="fixed size 64"):
        make_inputs(model, input_shape=(1, 32))


def test_symbolic_dims_shared_across_inputs() -> None:
    a = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])
    b = helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "seq"])
    graph = helper.make_graph([helper.make_node("Identity", ["ids"], ["y"])], "g", [a, b],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    model = helper.make_model(graph)
    feeds = make_inputs(model, input_shape=(2, 7))
    assert feeds["ids"].shape == feeds["mask"].shape == (2, 7)
    assert feeds["ids"].dtype == np.int64 and feeds["mask"].dtype == np.bool_
    # a shape given by name fixes the inputs before it too
    assert make_inputs(model, input_shape={"mask": (3, 5)})["ids"].shape == (3, 5)
    with pytest.raises(DynamicShapeError, match="disagree on dim 'seq'"):
        make_inputs(model, input_shape={"ids": (1, 4), "mask": (1, 5)})


def test_initializer_listed_as_input_needs_no_feed() -> None:
    model = _matmul_model(layers=1, rows=4, width=8)
    model.graph.input.append(helper.make_tensor_value_info("w0", TensorProto.FLOAT, [8, 8]))
    assert list(make_inputs(model)) == ["x"]
    assert measure_onnx(model, **FAST).latency_ms > 0


def test_bad_onnx_sources(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        measure_onnx(tmp_path / "nope.onnx")
    with pytest.raises(InvalidModelError):
        measure_onnx(b"definitely not onnx")
    with pytest.raises(InvalidModelError, match="measure_torch"):
        measure_onnx(12)  # type: ignore[arg-type]


def test_time_runs_budget_and_ci() -> None:
    assert median_ci_rel([2.0] * 20) == 0.0
    assert median_ci_rel([1.0, 2.0, 3.0]) > 0.4
    assert len(time_runs(lambda: None, min_runs=3, max_runs=7, warmup=0)) <= 7
    import time

    times = time_runs(lambda: time.sleep(0.02), min_runs=50, max_seconds=0.05, warmup=0)
    assert 1 <= len(times) <= 4 and (times >= 15).all()
    m = summarize("slow", times, min_runs=50)
    assert m.noisy and "min_runs=50" in m.noisy_reason
    assert summarize("jitter", [1.0, 1.0, 3.0, 1.0]).noisy  # CV > 0.10


def test_a_few_stalls_do_not_flag_a_stable_measurement() -> None:
    rng = np.random.default_rng(0)
    steady = 1.0 + 0.01 * rng.standard_normal(200)
    stalled = np.concatenate([steady, [100.0, 80.0]])  # two preempted runs
    m = summarize("stalls", stalled)
    assert not m.noisy and m.cv < 0.02 and m.std_ms > 5  # std / mean would be ~0.9
    assert abs(m.latency_ms - 1.0) < 0.01
    normal = summarize("normal", 1.0 + 0.05 * rng.standard_normal(5000))
    assert abs(normal.cv - 0.05) < 0.005  # equals std / mean for normal run times
    assert summarize("spread", rng.uniform(0.5, 1.5, 200)).noisy


def test_energy_is_a_number_or_explained(add_onnx: Path) -> None:
    m = measure_onnx(add_onnx, energy=True, **FAST)
    assert (m.energy_mj is not None and m.energy_mj > 0) or (m.energy_mj is None and m.energy_note)


def test_rapl_meter_sums_packages_and_handles_wrap(tmp_path: Path) -> None:
    assert open_energy_meter("cpu", rapl_root=tmp_path / "missing")[1].startswith("RAPL not")
    for zone, energy in (("intel-rapl:0", 900), ("intel-rapl:1", 100), ("intel-rapl:0:0", 5)):
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "energy_uj").write_text(f"{energy}\n")
        (tmp_path / zone / "max_energy_range_uj").write_text("1000\n")
    meter, note = open_energy_meter("cpu", rapl_root=tmp_path)
    assert isinstance(meter, RaplEnergyMeter) and note is None
    start = meter.read()
    assert start == (900.0, 100.0)  # the core sub-zone is part of package 0
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("100\n")  # wrapped: +200 uJ
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("400\n")  # +300 uJ
    assert meter.delta_mj(start, meter.read()) == pytest.approx(0.5)


class _ClockMeter(EnergyMeter):
    """A counter that gains 50 mW at rest and 2 mJ per call of `run`."""

    name = "clock"

    def __init__(self) -> None:
        self.calls = 0

    def run(self) -> None:
        self.calls += 1
        time.sleep(0.002)

    def read(self) -> tuple[float, ...]:
        return (50.0 * time.perf_counter() + 2.0 * self.calls,)

    def delta_mj(self, start: tuple[float, ...], end: tuple[float, ...]) -> float:
        return end[0] - start[0]


def test_energy_subtracts_idle_power_over_the_given_windows() -> None:
    meter = _ClockMeter()
    start = time.perf_counter()
    energy_mj, note = measure_energy(meter, meter.run, seconds=0.1, settle=0.05)
    took = time.perf_counter() - start
    assert energy_mj == pytest.approx(2.0, rel=0.05)
    assert 0.3 <= took < 0.7 and note.startswith("clock: ")
    # the settling runs before the busy window are not counted as its runs
    runs = int(note.split(": ")[1].split(" runs")[0])
    assert meter.calls > runs * 1.2


def test_speed_probe_is_a_valid_model_and_times_it() -> None:
    model = onnx.load_from_string(probe_model())
    onnx.checker.check_model(model, full_check=True)
    assert probe_model() == probe_model()  # fixed weights: the same probe in every session
    assert SpeedProbe(threads=1).time_ms() > 0


def test_the_call_floor_is_the_least_a_runtime_takes() -> None:
    """A one-element Add, timed under ONNX Runtime and as a torch module: positive, and far
    below the 13 M MAC probe network under the same runtime."""
    onnx.checker.check_model(onnx.load_from_string(floor_model()), full_check=True)
    probe = measure_onnx(probe_model(), threads=1, max_seconds=0.3).latency_ms
    assert 0 < call_floor_ms(threads=1, max_seconds=0.3) < probe / 3
    assert 0 < call_floor_ms("torch", threads=1, max_seconds=0.3) < probe / 3


def test_torch_speed_probe_runs_the_same_network() -> None:
    """The GPU probe is `probe_model` as a torch module: same weights, same output."""
    import onnxruntime as ort
    import torch

    from predictor.measure import read_model_inputs, torch_probe_net

    model = probe_model()
    x = read_model_inputs(model)["x"]
    expected = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    net, example = torch_probe_net(model)
    with torch.no_grad():
        assert np.allclose(net(example).numpy(), expected, atol=1e-4)
    assert SpeedProbe(threads=1, backend="torch").time_ms() > 0
    # CPU runs keep the ONNX Runtime probe whatever they measure with
    from predictor.measure import speed_probe_for

    probe = speed_probe_for("torch", "cpu", threads=1)
    assert (probe.backend, probe.device) == ("onnxruntime", "cpu")


class _ScriptedProbe(SpeedProbe):
    """Probe times given in advance: the machine runs at half speed for the second model."""

    def __init__(self, times_ms: list[float]):
        self.times = iter(times_ms)

    def time_ms(self) -> float:
        return next(self.times)


def test_measure_many_divides_out_the_machine_speed(tmp_path: Path) -> None:
    def measure(latency: float) -> Measurement:
        return _row(f"m{latency}", latency)

    probe = _ScriptedProbe([1.0, 1.0, 2.0, 2.0, 1.0, 1.0])  # before/after each of 3 models
    rows, reference = measure_many([1.0, 4.0, 1.0], measure, probe=probe, progress=False)
    assert reference == 1.0
    # the second model ran while everything took twice as long: its time is halved
    assert [r.latency_ms for r in rows] == [1.0, 2.0, 1.0]
    assert [r.speed_factor for r in rows] == [1.0, 0.5, 1.0]
    assert rows[1].p10_ms == 1.25 * 0.5 and rows[1].p90_ms == 2.0 * 0.5
    unprobed, none = measure_many([1.0, 4.0], measure, progress=False)
    assert none is None and [r.latency_ms for r in unprobed] == [1.0, 4.0]


def test_measure_many_with_the_real_probe(tmp_path: Path) -> None:
    paths = []
    for layers in (1, 3):
        paths.append(tmp_path / f"mm{layers}.onnx")
        onnx.save(_matmul_model(layers, rows=64, width=256), paths[-1])
    rows, reference = measure_many(paths, lambda p: measure_onnx(p, **FAST),
                                   probe=SpeedProbe(threads=1), progress=False)
    assert reference > 0 and all(r.speed_factor > 0 for r in rows)
    assert all(r.p10_ms <= r.latency_ms <= r.p90_ms for r in rows)
    assert rows[1].latency_ms > rows[0].latency_ms  # 3 layers are still slower than 1
    out = tmp_path / "m.csv"
    write_measurements_csv(out, rows, provenance("onnxruntime", "cpu", 1, speed_probe_ms=reference))
    read, info = read_measurements_csv(out)
    assert float(info["speed_probe_ms"]) == pytest.approx(reference, rel=1e-5)
    assert [float(r["speed_factor"]) for r in read] == pytest.approx(
        [r.speed_factor for r in rows], rel=1e-3)


def _row(model: str, latency: float = 1.5, energy: float | None = None) -> Measurement:
    return Measurement(model=model, latency_ms=latency, p10_ms=1.25, p90_ms=2.0, mean_ms=1.6,
                       std_ms=0.1, runs=42, cv=0.0625, noisy=False, energy_mj=energy)


def test_csv_round_trip(tmp_path: Path) -> None:
    model = tmp_path / "models" / "m.onnx"
    model.parent.mkdir()
    onnx.save(_add_model([1, 4]), model)
    out = tmp_path / "results" / "measured.csv"
    info = provenance("onnxruntime", "cpu", 1, None, "all", max_seconds=0.3)
    assert {"cpu", "logical_cores", "os", "python", "onnxruntime", "torch", "latpred", "date",
            "threads", "batch", "backend", "graph_optimization"} <= set(info)
    write_measurements_csv(out, [_row(str(model)), _row("<bytes>", 3.0, energy=0.25)], info)
    lines = out.read_text().splitlines()
    assert lines[: len(info)] == [f"# {k}: {v}" for k, v in info.items()]
    assert lines[len(info)] == ",".join(CSV_COLUMNS)
    assert lines[len(info) + 1] == "../models/m.onnx,1.5,1.25,2,,42,0.0625,false,1.0000"
    assert not list(out.parent.glob(".*tmp"))  # atomic write left no temp file

    rows, read_info = read_measurements_csv(out)
    assert read_info == {k: str(v) for k, v in info.items()}
    assert Path(rows[0]["model"]) == model.resolve()
    assert rows[0]["latency_ms"] == 1.5 and rows[0]["energy_mj"] is None
    assert rows[0]["runs"] == 42 and rows[0]["noisy"] is False
    assert rows[1]["model"] == "<bytes>" and rows[1]["energy_mj"] == 0.25


@pytest.mark.parametrize("latency", ["nan", "-1", "0", "inf", "abc", ""])
def test_read_rejects_bad_latency(tmp_path: Path, latency: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(f"# cpu: x\nmodel,latency_ms\na.onnx,1.0\nb.onnx,{latency}\n")
    with pytest.raises(DataError, match=r"m\.csv:4"):
        read_measurements_csv(path)


def test_a_spreadsheets_csv_reads_as_written(tmp_path: Path) -> None:
    """A byte-order mark, CRLF line ends and a capitalised header (what a spreadsheet
    program saves) read as the plain file does."""
    plain, saved = tmp_path / "plain.csv", tmp_path / "saved.csv"
    plain.write_text("model,latency_ms,notes\na.onnx,1.5,x\nb.onnx,2.5,y\n")
    saved.write_bytes(b"\xef\xbb\xbfModel,Latency_ms,Notes\r\na.onnx,1.5,x\r\nb.onnx,2.5,y\r\n")
    assert read_measurements_csv(saved) == read_measurements_csv(plain)
    assert [r["latency_ms"] for r in read_measurements_csv(saved)[0]] == [1.5, 2.5]


def test_read_needs_latency_column(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("model,time_ms\na.onnx,1.0\n")
    with pytest.raises(DataError, match="model,latency_ms"):
        read_measurements_csv(path)
    with pytest.raises(DataError, match="not found"):
        read_measurements_csv(tmp_path / "none.csv")


def test_measure_torch_restores_threads(tiny_module: torch.nn.Module) -> None:
    seen: list[int] = []
    tiny_module.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    other = 2 if before != 2 else 1
    m = measure_torch(tiny_module, torch.randn(1, 3, 16, 16), threads=other, max_seconds=0.2,
                      warmup=1)
    assert m.latency_ms > 0 and m.p10_ms <= m.latency_ms <= m.p90_ms
    assert m.model == "<torch:TinyConvNet>"
    assert set(seen) == {other}
    assert torch.get_num_threads() == before
    with pytest.raises(InvalidModelError):
        measure_torch("model.onnx", None)  # type: ignore[arg-type]


def test_measure_torch_batch_repeats_the_batch_one_example(tiny_module: torch.nn.Module) -> None:
    shapes: set[tuple[int, ...]] = set()
    tiny_module.register_forward_hook(lambda _m, args, _o: shapes.add(tuple(args[0].shape)))
    m = measure_torch(tiny_module, torch.randn(1, 3, 16, 16), batch=4, max_seconds=0.1,
                      warmup=1)
    assert m.latency_ms > 0 and shapes == {(4, 3, 16, 16)}
    with pytest.raises(MeasurementError, match="batch-1 example"):
        measure_torch(tiny_module, torch.randn(2, 3, 16, 16), batch=4)
    with pytest.raises(MeasurementError, match="Bad batch"):
        measure_torch(tiny_module, torch.randn(1, 3, 16, 16), batch=0)


# ----------------------------------------------------------------------------- CLI
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "predictor.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_measure_writes_csv(tmp_path: Path, add_onnx: Path) -> None:
    out = tmp_path / "out" / "measured.csv"
    result = run_cli("measure", str(add_onnx), "--threads", "1", "--max-seconds", "0.2",
                     "--graph-optimization", "basic", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "median ms" in result.stdout and "add.onnx" in result.stdout
    rows, info = read_measurements_csv(out)
    assert Path(rows[0]["model"]) == add_onnx.resolve() and rows[0]["latency_ms"] > 0
    assert info["threads"] == "1" and info["graph_optimization"] == "basic"
    assert 0 < float(info["call_floor_ms"]) < rows[0]["latency_ms"] * 5
    with out.open() as handle:
        assert next(csv.reader(line for line in handle if not line.startswith("#")))[:2] == \
            ["model", "latency_ms"]


def test_cli_measure_with_openvino_records_its_version(tmp_path: Path, add_onnx: Path) -> None:
    pytest.importorskip("openvino")
    out = tmp_path / "ov.csv"
    result = run_cli("measure", str(add_onnx), "--backend", "openvino", "--threads", "1",
                     "--max-seconds", "0.2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows, info = read_measurements_csv(out)
    assert info["backend"] == "openvino" and info["openvino"][0].isdigit()
    assert rows[0]["latency_ms"] > 0 and float(info["call_floor_ms"]) > 0


@pytest.mark.parametrize("extra", [[], ["--backend", "torch"]])
def test_cli_measure_errors_in_one_line(tmp_path: Path, add_onnx: Path, extra: list[str]) -> None:
    model = str(tmp_path / "nope.onnx") if not extra else str(add_onnx)
    out = tmp_path / "m.csv"
    result = run_cli("measure", model, "--out", str(out), *extra)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("latpred: error:"), result.stderr
    assert ("not found" if not extra else "measure_torch") in lines[0]
    assert not out.exists()
