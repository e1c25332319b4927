"""Calibrating a new device from a CSV of measured ONNX models, end to end through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from predictor.calibration import CalibrationLockedError, device_lock
from predictor.corpus import SPACES
from predictor.datasets import load_device_task
from predictor.errors import PredictorError

DEVICE = "gold_6240"  # a meta-valid device: the shipped checkpoint never trained on it


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "predictor.cli", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env})


@pytest.fixture(scope="module")
def measured(tmp_path_factory, shared_data_dir) -> tuple[Path, np.ndarray, list[Path]]:
    """12 NB201 models as ONNX files in models/, a CSV of 10 of them with real latencies."""
    root = tmp_path_factory.mktemp("calib")
    task = load_device_task("nb201", DEVICE, shared_data_dir)
    ids = np.random.default_rng(0).choice(task.pool, 12, replace=False)
    archs = SPACES["nb201"].archs(shared_data_dir)
    (root / "models").mkdir()
    paths = []
    for i in ids:
        path = root / "models" / f"arch{i}.onnx"
        path.write_bytes(SPACES["nb201"].build_onnx(archs[i]).SerializeToString())
        paths.append(path)
    lines = ["model,latency_ms"] + [f"models/{p.name},{task.latency_ms[i]}"
                                    for p, i in zip(paths[:10], ids[:10], strict=True)]
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return root, task.latency_ms[ids], paths


def test_calibrate_from_csv_then_predict(measured, tmp_path) -> None:
    root, latency, paths = measured
    env = {"LATPRED_DEVICE_DIR": str(tmp_path / "devices")}
    result = _cli("calibrate", "myboard", "--measurements", str(root / "m.csv"), "--json",
                  env=env)
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout)
    assert stored["kind"] == "calibrated device" and stored["strategy"]
    assert len(stored["measurements"]) == 10
    assert (tmp_path / "devices" / "myboard.json").is_file()
    listed = {d["name"]: d for d in json.loads(_cli("devices", "--json", env=env).stdout)}
    assert listed["myboard"]["kind"] == "calibrated device"
    assert listed["silver_4114@nb201"]["kind"] == "training device"  # shipped defaults too
    pred = _cli("predict", *map(str, paths[10:]), "--device", "myboard", "--json", env=env)
    assert pred.returncode == 0, pred.stderr
    ms = np.array([row["latency_ms"] for row in json.loads(pred.stdout)])
    # Unseen models of the calibrated device: within 25% of the measured latency.
    assert np.all(np.abs(ms / latency[10:] - 1) < 0.25), (ms, latency[10:])
    # your own measurements default to auto; the reference set's strategy is one flag away
    assert "auto" not in stored["blend"]  # the plain blend of candidates
    mixed = _cli("calibrate", "mixed", "--measurements", str(root / "m.csv"), "--strategy",
                 "auto+kernelsum", "--json", env=env)
    assert mixed.returncode == 0, mixed.stderr
    assert json.loads(mixed.stdout)["blend"] == {"auto": 0.5, "kernelsum+net": 0.5}
    # a floor the user timed in their own harness; none for architectures or --measure
    floored = _cli("calibrate", "floored", "--measurements", str(root / "m.csv"),
                   "--call-floor-ms", "0.01", "--json", env=env)
    assert floored.returncode == 0, floored.stderr
    assert json.loads(floored.stdout)["call_floor_ms"] == 0.01
    assert "call_floor_ms" not in stored
    for extra in (["--measure"], ["--space", "nb201", "--measurements", str(root / "m.csv")]):
        bad = _cli("calibrate", "x", *extra, "--call-floor-ms", "0.01", env=env)
        assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
        assert "--call-floor-ms" in bad.stderr


@pytest.mark.parametrize("rows, message", [
    (3, "Too few calibration samples"),
    (-1, "must be a finite number > 0"),
])
def test_calibrate_rejects_bad_measurements(measured, tmp_path, rows, message) -> None:
    root, _, _ = measured
    lines = (root / "m.csv").read_text().splitlines()
    if rows > 0:
        lines = lines[: rows + 1]
    else:
        lines[3] = lines[3].split(",")[0] + ",-2.0"
    csv = root / f"bad{rows}.csv"
    csv.write_text("\n".join(lines) + "\n")
    env = {"LATPRED_DEVICE_DIR": str(tmp_path / "devices")}
    result = _cli("calibrate", "bad", "--measurements", str(csv), env=env)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "devices" / "bad.json").exists()  # nothing written half-way


def test_calibrate_needs_one_source(tmp_path) -> None:
    env = {"LATPRED_DEVICE_DIR": str(tmp_path)}
    result = _cli("calibrate", "x", env=env)
    assert result.returncode == 2 and "exactly one of --measure" in result.stderr


def test_device_lock_excludes_a_second_calibration(tmp_path) -> None:
    with device_lock("board", tmp_path):
        with pytest.raises(CalibrationLockedError, match="being calibrated"):
            with device_lock("board", tmp_path):
                pass
    with device_lock("board", tmp_path):  # released afterwards
        pass


def test_calibrate_by_arch_then_predict_by_arch(tmp_path, shared_data_dir) -> None:
    """No ONNX files: a CSV of NB201 arch strings, then predictions for an archs file, at a
    non-default input shape and class count that the device remembers."""
    task = load_device_task("nb201", DEVICE, shared_data_dir)
    archs = SPACES["nb201"].archs(shared_data_dir)
    ids = np.random.default_rng(1).choice(task.pool, 16, replace=False)
    lines = ["# measured: HELP table of " + DEVICE, "arch,latency_ms"]
    lines += [f"{archs[i]},{task.latency_ms[i]}" for i in ids[:10]]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "archs.txt").write_text("\n".join(archs[i] for i in ids[10:]) + "\n")
    env = {"LATPRED_DEVICE_DIR": str(tmp_path / "devices")}
    result = _cli("calibrate", "archboard", "--space", "nb201", "--measurements",
                  str(tmp_path / "m.csv"), "--json", env=env)
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout)
    assert stored["space"] == "nb201" and stored["input_shape"] == [1, 3, 32, 32]
    assert stored["provenance"]["measured"] == "HELP table of " + DEVICE
    pred = _cli("predict", "--space", "nb201", "--archs", str(tmp_path / "archs.txt"),
                "--device", "archboard", "--json", env=env)
    assert pred.returncode == 0, pred.stderr
    rows = json.loads(pred.stdout)
    assert [r["arch"] for r in rows] == [archs[i] for i in ids[10:]]  # input order
    ms = np.array([r["latency_ms"] for r in rows])
    assert np.all(np.abs(ms / task.latency_ms[ids[10:]] - 1) < 0.25), ms
    # The upper estimate (spread of the candidate adaptations and calibration error)
    # lies above the prediction, covers far more measured latencies than the prediction
    # does (about half), and stays a usable bound.
    unseen = np.setdiff1d(task.pool, ids)[::50]
    (tmp_path / "more.txt").write_text("\n".join(archs[i] for i in unseen) + "\n")
    more = json.loads(_cli("predict", "--space", "nb201", "--archs", str(tmp_path / "more.txt"),
                           "--device", "archboard", "--json", env=env).stdout)
    ms = np.array([r["latency_ms"] for r in more])
    upper = np.array([r["latency_ms_upper"] for r in more])
    assert np.all(upper > ms) and np.median(upper / ms) < 1.3, upper / ms
    covered = np.mean(task.latency_ms[unseen] <= upper)
    point = np.mean(task.latency_ms[unseen] <= ms)
    assert covered >= 0.7 and covered > point + 0.15, (covered, point)

    # A 16x16, 120-class calibration is a different network; predictions follow it.
    small = _cli("calibrate", "small", "--space", "nb201", "--input-shape", "1,3,16,16",
                 "--classes", "120", "--measurements", str(tmp_path / "m.csv"), "--json",
                 env=env)
    assert small.returncode == 0, small.stderr
    assert json.loads(small.stdout)["input_shape"] == [1, 3, 16, 16]

    # A device that ran the exported graphs (repeated ops merged) keeps that; its graphs
    # have fewer nodes wherever a cell node feeds several pools or convs.
    assert stored["graph"] == "eager"
    compiled = _cli("calibrate", "compiled", "--space", "nb201", "--graph", "exported",
                    "--measurements", str(tmp_path / "m.csv"), "--json", env=env)
    assert compiled.returncode == 0, compiled.stderr
    assert json.loads(compiled.stdout)["graph"] == "exported"
    other = json.loads(_cli("predict", "--space", "nb201", "--archs", str(tmp_path / "more.txt"),
                            "--device", "compiled", "--json", env=env).stdout)
    assert not np.allclose([r["latency_ms"] for r in other], ms, rtol=0.01)
    result = _cli("predict", str(tmp_path / "m.csv"), "--graph", "exported", "--device",
                  "compiled", env=env)
    assert result.returncode == 2 and "--graph" in result.stderr

    bad = tmp_path / "bad.txt"
    bad.write_text("|nor_conv_3x3~0|+|none~0|avg_pool_9x9~1|+|none~0|none~1|none~2|\n")
    result = _cli("predict", "--space", "nb201", "--archs", str(bad), "--device", "archboard",
                  env=env)
    assert result.returncode == 2 and "avg_pool_9x9" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    bad.write_text("-".join(["k3_e1"] * 21) + "\n")
    result = _cli("predict", "--space", "fbnet", "--archs", str(bad), "--device", "archboard",
                  env=env)
    assert result.returncode == 2 and "21 layers" in result.stderr
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("model,latency_ms\na.onnx,1.0\n")
    result = _cli("calibrate", "x", "--space", "nb201", "--measurements", str(wrong), env=env)
    assert result.returncode == 2 and "arch,latency_ms" in result.stderr


def test_energy_device_from_measurements_and_metric_errors(tmp_path, shared_data_dir) -> None:
    """A device calibrated on `energy_mj` predicts energy; asking it for latency, or the
    latency network for an FPGA metric, is a clear error."""
    task = load_device_task("nb201", DEVICE, shared_data_dir)
    archs = SPACES["nb201"].archs(shared_data_dir)
    ids = np.random.default_rng(2).choice(task.pool, 12, replace=False)
    energy = task.latency_ms[ids] * 3.5  # an energy-like positive cost per inference
    lines = ["arch,latency_ms,energy_mj"]
    lines += [f"{archs[i]},{task.latency_ms[i]},{e}" for i, e in zip(ids[:10], energy[:10],
                                                                     strict=True)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "archs.txt").write_text("\n".join(archs[i] for i in ids[10:]) + "\n")
    env = {"LATPRED_DEVICE_DIR": str(tmp_path / "devices")}
    result = _cli("calibrate", "joules", "--space", "nb201", "--metric", "energy_mj",
                  "--measurements", str(tmp_path / "m.csv"), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["metric"] == "energy_mj"
    pred = _cli("predict", "--space", "nb201", "--archs", str(tmp_path / "archs.txt"),
                "--device", "joules", "--metric", "energy_mj", "--json", env=env)
    assert pred.returncode == 0, pred.stderr
    mj = np.array([r["energy_mj"] for r in json.loads(pred.stdout)])
    assert np.all(np.abs(mj / energy[10:] - 1) < 0.3), (mj, energy[10:])
    wrong = _cli("predict", "--space", "nb201", "--archs", str(tmp_path / "archs.txt"),
                 "--device", "joules", env=env)
    assert wrong.returncode == 2 and "calibrated on energy_mj" in wrong.stderr


def test_metric_validation_in_the_api() -> None:
    from predictor.api import check_metric
    from predictor.errors import PredictorError

    assert check_metric("energy_mj") == "energy_mj"
    with pytest.raises(PredictorError, match="latpred fpga"):
        check_metric("lut")
    with pytest.raises(PredictorError, match="Unknown metric 'watts'"):
        check_metric("watts")


def test_reference_set_measured_as_torch_modules(tmp_path, monkeypatch) -> None:
    """`--measure --backend torch` times the reference networks as torch modules and names
    each row by the ONNX file the predictor reads."""
    from predictor import calibration, generator

    small = generator.sample_specs(5, 2, kinds=("cnn",), small=True)
    monkeypatch.setattr(generator, "reference_specs", lambda: small)
    monkeypatch.setattr(calibration, "REFERENCE_CACHE", tmp_path)
    rows, info = calibration.measure_reference_set(backend="torch", max_seconds=0.1,
                                                   progress=False)
    assert [Path(r["model"]).name for r in rows] == [f"{s.name}.onnx" for s in small]
    assert all(Path(r["model"]).is_file() and r["latency_ms"] > 0 for r in rows)
    assert info["backend"] == "torch" and info["speed_probe_ms"] > 0
    _, at_two = calibration.measure_reference_set(backend="torch", max_seconds=0.1,
                                                  progress=False, batch=2)
    assert info["batch"] == "as in model" and at_two["batch"] == 2
    with pytest.raises(PredictorError, match="'openvino' and 'torch', not 'tvm'"):
        calibration.measure_reference_set(backend="tvm", progress=False)


def test_reference_set_measured_with_openvino(tmp_path, monkeypatch) -> None:
    """`--measure --backend openvino` times the reference ONNX files with OpenVINO and
    records its version and its own call floor."""
    pytest.importorskip("openvino")
    from predictor import calibration, generator

    small = generator.sample_specs(7, 3, kinds=("cnn",), small=True)
    monkeypatch.setattr(generator, "reference_specs", lambda: small)
    monkeypatch.setattr(calibration, "REFERENCE_CACHE", tmp_path)
    rows, info = calibration.measure_reference_set(backend="openvino", threads=1,
                                                   max_seconds=0.1, progress=False)
    assert [Path(r["model"]).name for r in rows] == [f"{s.name}.onnx" for s in small]
    assert all(r["latency_ms"] > 0 for r in rows)
    assert info["backend"] == "openvino" and info["openvino"][0].isdigit()
    assert 0 < info["call_floor_ms"] < max(r["latency_ms"] for r in rows)


def test_reference_set_plus_included_models(tmp_path, monkeypatch) -> None:
    """`--measure --include MODEL.onnx` times the user's model after the reference set, with
    the same settings (its dynamic dims fixed by --input-shape), and the device calibrates
    on all of them; bad uses are one-line errors."""
    import torch
    from torch import nn

    from predictor import calibration, generator
    from predictor.api import Predictor
    from predictor.calibration import calibrate

    small = (generator.sample_specs(6, 4, kinds=("cnn",), small=True)
             + generator.sample_specs(6, 1, kinds=("transformer",), small=True))
    monkeypatch.setattr(generator, "reference_specs", lambda: small)
    monkeypatch.setattr(calibration, "REFERENCE_CACHE", tmp_path / "ref")
    monkeypatch.setenv("LATPRED_DEVICE_DIR", str(tmp_path / "devices"))
    own = tmp_path / "own.onnx"
    torch.onnx.export(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval(),
                      (torch.randn(1, 3, 16, 16),), own, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {2: "h", 3: "w"}})
    rows, info = calibration.measure_reference_set(max_seconds=0.1, progress=False,
                                                   include=[own], input_shape=(1, 3, 24, 24))
    assert [Path(r["model"]).name for r in rows] == [f"{s.name}.onnx" for s in small] + [own.name]
    assert all(r["latency_ms"] > 0 for r in rows) and info["included"] == [str(own)]
    stored = calibrate(Predictor.load(), "with-own", rows, info, input_shape=(1, 3, 24, 24))
    assert len(stored["measurements"]) == 6 and stored["provenance"]["included"] == [str(own)]
    # the runtime's floor, timed with the set, comes off the latencies (see Predictor.adapt)
    smallest = min(r["latency_ms"] for r in rows)
    assert stored["call_floor_ms"] == min(info["call_floor_ms"], smallest / 2) > 0
    # the shape fixes the included model's dynamic dims; the reference models keep theirs
    graphs = calibration.measured_graphs([r["model"] for r in rows], (1, 3, 24, 24))
    assert [g.primary_input_shape for g in graphs] == \
        [tuple(s.input_shape) for s in small] + [(1, 3, 24, 24)]
    with pytest.raises(PredictorError, match="no such file"):
        calibration.measure_reference_set(include=[tmp_path / "nope.onnx"], progress=False)
    with pytest.raises(PredictorError, match="with --backend torch"):
        calibration.measure_reference_set(include=[own], backend="torch", progress=False)
    result = _cli("calibrate", "x", "--measurements", str(tmp_path / "m.csv"), "--include",
                  str(own), env={"LATPRED_DEVICE_DIR": str(tmp_path / "devices")})
    assert result.returncode != 0 and "--include adds your ONNX files" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_device_timed_at_batch_32_predicts_at_batch_32(tmp_path, monkeypatch,
                                                         shared_data_dir) -> None:
    """HELP's titanx_32 (meta-valid) timed NB201 networks at batch 32. Calibrated from
    batch-1 ONNX files with batch=32, the device records the batch, predicts other networks
    at batch 32 by default (as with batch=32 given), and within 25 % of the measured
    times; the same files read at batch 1 predict something else."""
    from predictor.api import Predictor
    from predictor.calibration import calibrate

    monkeypatch.setenv("LATPRED_DEVICE_DIR", str(tmp_path / "devices"))
    task = load_device_task("nb201", "titanx_32", shared_data_dir)
    ids = np.random.default_rng(1).choice(task.pool, 14, replace=False)
    archs = SPACES["nb201"].archs(shared_data_dir)
    paths = []
    for i in ids:
        paths.append(tmp_path / f"arch{i}.onnx")
        paths[-1].write_bytes(SPACES["nb201"].build_onnx(archs[i]).SerializeToString())
    rows = [{"model": str(p), "latency_ms": float(task.latency_ms[i])}
            for p, i in zip(paths[:10], ids[:10], strict=True)]
    predictor = Predictor.load()
    stored = calibrate(predictor, "titan-b32", rows, {"source": "HELP"}, batch=32)
    assert stored["batch"] == 32
    fresh = Predictor.load()  # reads the stored device
    ms = fresh.predict(paths[10:], "titan-b32")
    np.testing.assert_allclose(ms, fresh.predict(paths[10:], "titan-b32", batch=32))
    assert np.all(np.abs(ms / task.latency_ms[ids[10:]] - 1) < 0.25), (ms, task.latency_ms[ids[10:]])
    assert not np.allclose(ms, fresh.predict(paths[10:], "titan-b32", batch=1), rtol=0.02)
    # search-space architectures run at the device's batch too
    np.testing.assert_allclose(fresh.predict_batch("nb201", [archs[i] for i in ids[10:]],
                                                   "titan-b32"), ms, rtol=1e-5)
    with pytest.raises(PredictorError, match="not to a GraphStore"):
        fresh.predict(fresh.graphs(paths[10:]), "titan-b32", batch=32)
    with pytest.raises(PredictorError, match="Bad batch 0"):
        fresh.predict(paths[10:], "titan-b32", batch=0)


def test_batch_needs_the_torch_backend_or_a_model_path(tmp_path) -> None:
    from predictor import calibration

    with pytest.raises(PredictorError, match="Batch 4 needs --backend torch"):
        calibration.measure_reference_set(batch=4, progress=False)
    env = {"LATPRED_DEVICE_DIR": str(tmp_path / "devices")}
    result = _cli("calibrate", "b", "--measure", "--batch", "4", env=env)
    assert result.returncode != 0 and "needs --backend torch" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = _cli("predict", "--space", "nb201", "--archs", "x", "--device", "d", "--batch", "2",
                  env=env)
    assert result.returncode != 0 and "--input-shape" in result.stderr
    assert not (tmp_path / "devices" / "b.json").exists()


def test_reference_set_calibrations_default_to_their_strategy() -> None:
    """A CPU's reference-set measurements adapt with REFERENCE_SET_STRATEGY (chosen on
    selection runtimes), a GPU's and anyone's own measurements with auto."""
    from predictor.calibration import REFERENCE_SET_STRATEGY, default_strategy
    from predictor.measurements import provenance

    cpu = provenance("onnxruntime", "cpu", 1, None, "all", reference_set_version=2)
    assert default_strategy(cpu) == REFERENCE_SET_STRATEGY["cpu"] == "auto+kernelsum"
    assert default_strategy({**cpu, "device": "cuda"}) == "auto"
    assert default_strategy(provenance("onnxruntime", "cpu", 1, None, "all")) == "auto"
    assert default_strategy(cpu, space="nb201") == "auto"


def test_the_call_floor_of_a_provenance_applies_to_a_cpus_latency() -> None:
    """The floor `latpred measure` and `--measure` record (a string in a CSV) is used for
    a CPU's latency; not on a GPU (no evidence yet), for energy or for architectures."""
    from predictor.calibration import provenance_call_floor

    cpu = {"device": "cpu", "call_floor_ms": "0.0036"}
    assert provenance_call_floor(cpu) == 0.0036
    assert provenance_call_floor({**cpu, "device": "cuda"}) is None
    assert provenance_call_floor(cpu, metric="energy_mj") is None
    assert provenance_call_floor(cpu, space="nb201") is None
    assert provenance_call_floor({"device": "cpu"}) is None
    with pytest.raises(PredictorError, match="call_floor_ms 'fast' is not a number"):
        provenance_call_floor({**cpu, "call_floor_ms": "fast"})


def test_picking_takes_one_model_per_cluster() -> None:
    """k-means picks: one model from each of n well-separated groups, the same every time."""
    from predictor.calibration import pick_calibration_models

    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [5.0, 20.0]])
    features = np.concatenate([c + 0.1 * rng.standard_normal((6, 2)) for c in centres])
    picked = pick_calibration_models(features, 5)
    assert sorted(i // 6 for i in picked) == [0, 1, 2, 3, 4]
    assert pick_calibration_models(features, 5) == picked
    shuffled = rng.permutation(len(features))  # the same models in any input order
    assert sorted(shuffled[pick_calibration_models(features[shuffled], 5)]) == sorted(picked)
    with pytest.raises(PredictorError, match="Cannot pick 31"):
        pick_calibration_models(features, 31)


def test_pick_chooses_models_of_both_kinds_from_files(tmp_path) -> None:
    """`latpred pick`: from a folder of CNNs and transformers it names models of both kinds
    (their latency signatures across the known devices differ), distinct files, in JSON
    too; too few to pick from, too small an n and a missing file are one-line errors."""
    from predictor import generator
    from predictor.api import Predictor

    specs = (generator.sample_specs(11, 8, kinds=("cnn",), small=True)
             + generator.sample_specs(11, 6, kinds=("transformer",), small=True))
    paths = generator.write_models(specs, tmp_path / "pool", progress=False)
    picked = Predictor.load().pick_calibration(paths, 5)
    assert len(set(picked)) == 5
    assert {specs[i].kind for i in picked} == {"cnn", "transformer"}
    result = _cli("pick", str(tmp_path / "pool"), "-n", "5", "--json", env={})
    assert result.returncode == 0, result.stderr
    names = [Path(r["model"]).name for r in json.loads(result.stdout)]
    assert sorted(names) == sorted(paths[i].name for i in picked)
    for args, message in ((["-n", "4"], "at least 5"), (["-n", "20"], "from 14"),
                          ([str(tmp_path / "nope.onnx")], "not found")):
        bad = _cli("pick", str(tmp_path / "pool"), *args, env={})
        assert bad.returncode != 0 and message in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
