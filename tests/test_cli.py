"""The `latpred` console command: real subprocess runs, one clear line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "predictor.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("latpred: error:")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_inspect_json_keys(tiny_onnx: Path) -> None:
    result = run_cli("inspect", str(tiny_onnx), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("macs", "params", "nodes", "op_counts", "unknown_ops", "memory_bytes", "depth"):
        assert key in report
    assert report["macs"] == 3 * 8 * 9 * 256 + 8 * 9 * 64 + 80
    assert report["op_counts"]["Conv"] == 2


def test_inspect_text(tiny_onnx: Path) -> None:
    result = run_cli("inspect", str(tiny_onnx))
    assert result.returncode == 0, result.stderr
    assert "MACs" in result.stdout and "op histogram" in result.stdout


def test_export_then_inspect(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    result = run_cli("export", "mobilenet_v2", str(out), "--input-shape", "1,3,96,96")
    assert result.returncode == 0, result.stderr
    report = json.loads(run_cli("inspect", str(out), "--json").stdout)
    assert report["input_shapes"] == {"input.1": [1, 3, 96, 96]}
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_export_a_well_known_network_at_its_published_size(tmp_path: Path) -> None:
    out = tmp_path / "vit.onnx"
    result = run_cli("export", "vit_tiny16", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(run_cli("inspect", str(out), "--json").stdout)
    assert list(report["input_shapes"].values()) == [[1, 3, 224, 224]]
    assert abs(report["macs"] / 1.25e9 - 1) < 0.05  # ViT-Ti/16: 1.25 G MACs
    _assert_one_line_error(run_cli("export", "vit_tiny16", str(out), "--input-shape", "1,3,32,32"),
                           "published input")
    _assert_one_line_error(run_cli("export", "resnet1000", str(tmp_path / "x.onnx")),
                           "Unknown network 'resnet1000'")
    assert not (tmp_path / "x.onnx").exists()
    unet = tmp_path / "unet.onnx"  # a zoo network exports at its own usual input
    assert run_cli("export", "unet", str(unet)).returncode == 0
    report = json.loads(run_cli("inspect", str(unet), "--json").stdout)
    assert list(report["input_shapes"].values()) == [[1, 3, 256, 256]]


def test_missing_file(tmp_path: Path) -> None:
    _assert_one_line_error(run_cli("inspect", str(tmp_path / "nope.onnx")), "not found")


def test_a_folder_stands_for_its_onnx_files(tmp_path: Path, tiny_onnx: Path) -> None:
    import shutil

    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("b.onnx", "a.onnx"):
        shutil.copy(tiny_onnx, folder / name)
    (folder / "notes.txt").write_text("not a model\n")
    result = run_cli("inspect", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    assert [r["model"] for r in json.loads(result.stdout)] == [
        str(folder / "a.onnx"), str(folder / "b.onnx")]
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_one_line_error(run_cli("inspect", str(empty)), "No .onnx files in folder")
    from predictor.errors import ModelNotFoundError
    from predictor.graph import extract_graph

    with pytest.raises(ModelNotFoundError, match="is a folder"):
        extract_graph(folder)  # the API takes files: a folder is a clear error


def test_not_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n")
    _assert_one_line_error(run_cli("inspect", str(bad)), "not a valid ONNX model")


def test_truncated_onnx(tmp_path: Path, tiny_onnx: Path) -> None:
    cut = tmp_path / "cut.onnx"
    data = tiny_onnx.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    _assert_one_line_error(run_cli("inspect", str(cut)), "cut.onnx")


@pytest.mark.parametrize("shape_arg", [None, "1,3,abc"])
def test_dynamic_shape_needs_input_shape(tmp_path: Path, shape_arg: str | None) -> None:
    import torch
    from torch import nn

    path = tmp_path / "dyn.onnx"
    torch.onnx.export(nn.Conv2d(3, 4, 3).eval(), (torch.randn(1, 3, 8, 8),), path, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    args = ["inspect", str(path)] + (["--input-shape", shape_arg] if shape_arg else [])
    # the hint keeps the model's own fixed dims
    _assert_one_line_error(run_cli(*args), "1,3,224,224" if shape_arg else "--input-shape 1,3,8,8")
    ok = run_cli("inspect", str(path), "--input-shape", "2,3,8,8", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["batch_size"] == 2


def test_input_shapes_by_name(two_input_onnx: Path) -> None:
    """A transformer's ids and mask: one named shape fixes both (dims shared by name);
    several shapes must each name their input."""
    path = two_input_onnx
    _assert_one_line_error(run_cli("inspect", str(path)), "ids=1,128")
    ok = run_cli("inspect", str(path), "--input-shape", "mask=1,32", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["input_shapes"] == {"ids": [1, 32], "mask": [1, 32]}
    _assert_one_line_error(run_cli("inspect", str(path), "--input-shape", "1,32",
                                   "--input-shape", "1,32"), "name each one's input")
    _assert_one_line_error(run_cli("inspect", str(path), "--input-shape", "1,32",
                                   "--input-shape", "mask=1,32"), "mix named and unnamed")


def test_empty_graph(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([], "empty", [value], [value]))
    path = tmp_path / "empty.onnx"
    path.write_bytes(model.SerializeToString())
    _assert_one_line_error(run_cli("inspect", str(path)), "no nodes")


def test_custom_op_reported(tmp_path: Path) -> None:
    import numpy as np
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Swoosh", ["c"], ["y"], domain="org.custom")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, [2, 2, 1, 1], np.zeros(4, "float32"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                     helper.make_opsetid("org.custom", 1)])
    path = tmp_path / "custom.onnx"
    path.write_bytes(model.SerializeToString())
    result = run_cli("inspect", str(path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["unknown_ops"] == {"org.custom::Swoosh": 1}
    assert report["nodes"] == 2
    text = run_cli("inspect", str(path)).stdout
    assert "org.custom::Swoosh 1" in text


def test_train_init_from_is_checked_before_any_data_is_built(tmp_path: Path) -> None:
    """`latpred train --init-from` overrides the config's base checkpoint: a missing or
    mismatched one is one clear line, and no checkpoint is written."""
    import yaml

    out = tmp_path / "out.ckpt"
    args = ("train", "--config", "configs/tiny.yaml", "--out", str(out),
            "--log-dir", str(tmp_path / "logs"), "--cache-dir", str(tmp_path / "cache"))
    result = run_cli(*args, "--init-from", str(tmp_path / "missing.ckpt"))
    _assert_one_line_error(result, "not found", "missing.ckpt")
    raw = yaml.safe_load(open("configs/tiny.yaml"))  # the shipped checkpoint is larger
    raw["init_from"] = str(tmp_path / "missing.ckpt")
    config = tmp_path / "tiny_warm.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = run_cli(*args[:2], str(config), *args[3:], "--init-from", "checkpoints/latpred.ckpt")
    _assert_one_line_error(result, "model config differs")
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_the_calibration_report_names_the_blend_and_its_held_out_error() -> None:
    from predictor.cli_model import _calibration_summary

    stored = {"strategy": "nearest", "cv_log_residuals": [0.1, -0.2, 0.05],
              "blend": {"amortised": 0.3, "nearest": 0.5, "opscale": 0.15, "linear": 0.05}}
    assert _calibration_summary(stored) == (
        "auto: nearest 0.50, amortised 0.30, opscale 0.15, ...; out-of-fold error median 11 %")
    assert _calibration_summary({"strategy": "finetune"}) == "strategy: finetune"
    assert _calibration_summary({"strategy": "auto", "call_floor_ms": 0.0036}) == \
        "strategy: auto; call floor 3.6 us"


def test_a_reader_that_leaves_early_gets_no_traceback(tiny_onnx: Path) -> None:
    """`latpred inspect ... | head -1`: the closed pipe ends the command quietly (exit 141).
    The output (300 summaries) is larger than a pipe's buffer, so the writer meets it."""
    proc = subprocess.Popen([sys.executable, "-m", "predictor.cli", "inspect",
                             *[str(tiny_onnx)] * 300],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in stderr, stderr


def test_devices_says_what_each_was_embedded_from(tiny_onnx: Path) -> None:
    result = run_cli("devices")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "default:" in lines["h200-torch-cuda"] and "zoo1+zoo3+zoo4" in lines["h200-torch-cuda"]
    assert "batch 32" in lines["h200-torch-cuda-b32"]
    assert "reference: 20 zoo4 models" in lines["h200-torch-cuda@zoo4"]
    assert "reference: 20 NB201 archs, batch 256" in lines["1080ti_256@nb201"]
    # predicting with a one-dataset reference points to the board's default device
    result = run_cli("predict", str(tiny_onnx), "--device", "h200-torch-cuda@zoo4")
    assert result.returncode == 0, result.stderr
    assert "use the default device h200-torch-cuda" in result.stderr
    result = run_cli("predict", str(tiny_onnx), "--device", "h200-torch-cuda")
    assert result.returncode == 0 and "default device" not in result.stderr
