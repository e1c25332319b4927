"""FPGA resource prediction: hls4ml rules, wa-hls4ml data, a tiny real training, the CLI."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from predictor.cli_fpga import register
from predictor.encoder import EncoderConfig
from predictor.errors import DataError, FpgaConfigError, PredictorError, UnsupportedOpError
from predictor.fpga import DEFAULT_FPGA_CHECKPOINT, FpgaCheckpoint, FpgaNetConfig
from predictor.fpga_data import (
    TARGETS,
    conv2d_onnx,
    dense_onnx,
    load_wa_hls4ml,
    read_table,
)
from predictor.fpga_predict import predict_fpga
from predictor.fpga_training import (
    FpgaTrainConfig,
    adapt_fpga,
    arch_layers,
    encode,
    predict_log1p,
    regression_metrics,
    train_fpga,
)
from predictor.graph import extract_graph
from predictor.hls4ml import (
    FpgaConfig,
    analytic_terms,
    closest_reuse_factor,
    hls_layers,
    valid_reuse_factors,
)
from predictor.onnx_io import export_torch

REPO = Path(__file__).resolve().parents[1]
HEADER = ("model_name,d_in,d_out,prec,model_file,model_string,rf,strategy,TargetClockPeriod_hls,"
          "EstimatedClockPeriod_hls,BestLatency_hls,WorstLatency_hls,IntervalMin_hls,"
          "IntervalMax_hls,BRAM_18K_hls,DSP_hls,FF_hls,LUT_hls,URAM_hls,rf_times_precision,"
          "hls_synth_success")


@pytest.fixture(scope="module")
def wa_data(tmp_path_factory):
    env = os.environ.get("LATPRED_DATA_DIR")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    if not (root / "wa-hls4ml").is_dir():
        pytest.skip("wa-hls4ml data not found (set LATPRED_DATA_DIR)")
    return load_wa_hls4ml(root, tmp_path_factory.mktemp("fpga-cache"))


@pytest.fixture(scope="module")
def tiny_run(wa_data):
    """A few seconds of real training on 300 dense networks; 100 others held out."""
    torch.set_num_threads(1)
    dense = wa_data.rows_of_kind("dense")
    archs = np.random.default_rng(0).permutation(np.unique(wa_data.arch[dense]))
    train = dense[np.isin(wa_data.arch[dense], archs[:300])]
    test = dense[np.isin(wa_data.arch[dense], archs[300:400])]
    encoded = encode(wa_data)
    config = FpgaTrainConfig(net=FpgaNetConfig(encoder=EncoderConfig(hidden=32, layers=2)),
                             epochs=12, batch_size=64, lr=5e-3, valid_fraction=0.1)
    return train_fpga(wa_data, train, config, encoded=encoded), encoded, train, test


def _dense_model(tmp_path: Path, tail: nn.Module | None = None) -> Path:
    layers = [nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)] + ([tail] if tail else [])
    path = tmp_path / "net.onnx"
    path.write_bytes(export_torch(nn.Sequential(*layers), torch.randn(1, 16)).SerializeToString())
    return path


# -- hls4ml rules ----------------------------------------------------------------------

def _hls4ml_rule(n_in: int, n_out: int) -> tuple[int, ...]:
    """hls4ml's `_validate_reuse_factor`, tried on every value as hls4ml does."""
    valid = []
    for rf in range(1, n_in * n_out + 1):
        limit = math.ceil(n_in * n_out / min(n_in, rf))
        ok = (limit % n_out == 0 or rf >= n_in) and (rf % n_in == 0 or rf < n_in)
        if ok and (n_in * n_out) % rf == 0:
            valid.append(rf)
    return tuple(valid)


@pytest.mark.parametrize("n_in, n_out", [(4, 4), (16, 8), (24, 40), (104, 48), (7, 12)])
def test_valid_reuse_factors_follow_hls4ml(n_in: int, n_out: int) -> None:
    assert valid_reuse_factors(n_in, n_out) == _hls4ml_rule(n_in, n_out)


def test_closest_reuse_factor() -> None:
    assert closest_reuse_factor(104, 48, 1024) == 832
    assert closest_reuse_factor(48, 104, 1024) == 1248
    assert closest_reuse_factor(16, 16, 4093) == 256  # above n_in*n_out: clamped
    assert closest_reuse_factor(16, 64, 1024) == 1024  # already valid


def test_latency_is_sum_of_used_reuse_factors(wa_data) -> None:
    """The rule explains the measured latency of every dense synthesis to 5 cycles."""
    rows = wa_data.rows_of_kind("dense")
    layers = arch_layers(wa_data)
    gap = [wa_data.targets[r, 4] - analytic_terms(layers[wa_data.arch[r]], FpgaConfig(
        int(wa_data.precision[r]), int(wa_data.reuse_factor[r]))).get("cycles") for r in rows]
    assert 3 <= min(gap) and max(gap) <= 5


def test_fpga_config_rejects_bad_values() -> None:
    for kwargs in ({"precision": 0, "reuse_factor": 4}, {"precision": 8, "reuse_factor": -2},
                   {"precision": 8, "reuse_factor": 4, "strategy": "fast"},
                   {"precision": 8, "reuse_factor": 4, "clock_period_ns": math.nan}):
        with pytest.raises(FpgaConfigError):
            FpgaConfig(**kwargs)


# -- data ------------------------------------------------------------------------------

def test_dense_onnx_matches_widths_and_macs() -> None:
    graph = extract_graph(dense_onnx((16, 64, 32, 8)))
    assert [n.op_type for n in graph.nodes] == ["Gemm", "Gemm", "Gemm"]
    assert [n.activation for n in graph.nodes] == ["Relu", "Relu", ""]
    assert graph.macs == 16 * 64 + 64 * 32 + 32 * 8
    assert [(layer.n_in, layer.n_out) for layer in hls_layers(graph)] == [(16, 64), (64, 32),
                                                                           (32, 8)]


def test_conv2d_onnx_keeps_channels_and_flattened_size() -> None:
    graph = extract_graph(conv2d_onnx((16, 64, 8064, 16, 8)))
    convs = [n for n in graph.nodes if n.op_type == "Conv"]
    assert [n.input_shape[1] for n in convs] == [16, 64]
    flatten = next(n for n in graph.nodes if n.op_type == "Flatten")
    assert flatten.output_shape == (1, 8064)
    assert [n.output_shape[1] for n in graph.nodes if n.op_type == "Gemm"] == [16, 8]


def test_dataset_counts_and_failures(wa_data) -> None:
    assert len(wa_data.rows_of_kind("dense")) == 8474
    assert len(wa_data.rows_of_kind("conv2d")) == 42
    assert wa_data.report["dense"]["failed"] == 0
    assert wa_data.report["dense"]["incomplete_sweeps"] > 0
    assert np.isfinite(wa_data.targets).all() and (wa_data.targets >= 0).all()


@pytest.mark.parametrize("cell, needle", [("nan", "LUT_hls"), ("-3", "LUT_hls"), ("", "empty")])
def test_bad_table_cell_is_one_clear_error(tmp_path: Path, cell: str, needle: str) -> None:
    good = "a,16,8,8,x.tar.gz,16-8-8-8,1024,resource,5.00,4.0,10,13,10,13,1,0,100,200,0,0,TRUE"
    bad = good.replace(",200,", f",{cell},")
    path = tmp_path / "t.csv"
    path.write_text("\n".join([HEADER, good, bad]) + "\n")
    with pytest.raises(DataError, match=needle):
        read_table(path)


def test_failed_syntheses_are_counted_not_used(tmp_path: Path) -> None:
    row = "a,16,8,8,x.tar.gz,16-8-8-8,{rf},resource,5.00,4.0,10,13,10,13,1,0,100,200,0,0,{ok}"
    path = tmp_path / "t.csv"
    path.write_text("\n".join([HEADER, row.format(rf=1024, ok="TRUE"),
                               row.format(rf=2047, ok="FALSE")]) + "\n")
    rows, report = read_table(path)
    assert len(rows) == 1 and report["failed"] == 1 and report["rows"] == 2


# -- training, adaptation, prediction -------------------------------------------------

def test_tiny_training_beats_the_mean(wa_data, tiny_run) -> None:
    checkpoint, encoded, train, test = tiny_run
    part = encoded.subset(test)
    pred = predict_log1p(checkpoint.nets, part.batch, part.cond)
    mean = encoded.subset(train).y.mean(0)
    model_err = (pred - part.y).abs().mean(0)
    mean_err = (mean - part.y).abs().mean(0)
    assert (model_err < mean_err).all(), (model_err, mean_err)
    easy = [TARGETS.index(t) for t in ("lut", "ff", "dsp", "latency_cycles")]
    assert (model_err[easy] < 0.25 * mean_err[easy]).all(), (model_err, mean_err)


def test_adaptation_moves_towards_support(wa_data, tiny_run) -> None:
    checkpoint, encoded, _, _ = tiny_run
    support = encoded.subset(wa_data.rows_of_kind("conv2d")[:10])
    before = (predict_log1p(checkpoint.nets, support.batch, support.cond) - support.y).abs().mean()
    adapted = adapt_fpga(checkpoint.nets, support, steps=30)
    after = (predict_log1p(adapted, support.batch, support.cond) - support.y).abs().mean()
    assert after < before


def test_checkpoint_roundtrip_and_prediction(tmp_path: Path, tiny_run) -> None:
    checkpoint = tiny_run[0]
    path = tmp_path / "fpga.ckpt"
    checkpoint.save(path)
    loaded = FpgaCheckpoint.load(path)
    assert loaded.metrics == TARGETS
    assert loaded.ranges["precision"] == [4, 16]
    result = predict_fpga(_dense_model(tmp_path), FpgaConfig(8, 1024), loaded)
    assert set(result.metrics) == {*TARGETS, "ii_cycles"} and result.metrics["ii_cycles"] is None
    assert all(result.metrics[t] >= 0 for t in TARGETS)
    assert [layer["reuse_factor"] for layer in result.layers] == [512, 256]


def test_regression_metrics_count_double_zero_as_exact() -> None:
    m = regression_metrics(np.array([0.0, 2.0]), np.array([0.0, 2.0]))
    assert m["smape"] == 0 and m["mae"] == 0 and m["r2"] == 1


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture
def saved_checkpoint(tmp_path: Path, tiny_run) -> Path:
    path = tmp_path / "fpga.ckpt"
    tiny_run[0].save(path)
    return path


def test_cli_json(tmp_path: Path, saved_checkpoint: Path, capsys) -> None:
    model = _dense_model(tmp_path)
    assert _cli(["fpga", str(model), "--precision", "16", "--reuse-factor", "64",
                 "--strategy", "resource", "--checkpoint", str(saved_checkpoint), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["metrics"]) == {*TARGETS, "ii_cycles"}
    assert report["training_ranges"]["lut"][0] > 0


@pytest.mark.parametrize("argv, error, needle", [
    (["--precision", "64", "--reuse-factor", "64"], FpgaConfigError, "[4, 16]"),
    (["--precision", "8", "--reuse-factor", "0"], FpgaConfigError, "positive integer"),
    (["--precision", "8", "--reuse-factor", "1"], FpgaConfigError, "--reuse-factor >="),
    (["--precision", "8", "--reuse-factor", "64", "--strategy", "latency"], FpgaConfigError,
     "'latency'"),
])
def test_cli_bad_configuration(tmp_path: Path, saved_checkpoint: Path, argv, error, needle
                               ) -> None:
    with pytest.raises(error, match=needle.replace("[", r"\[").replace("]", r"\]")):
        _cli(["fpga", str(_dense_model(tmp_path)), *argv, "--checkpoint", str(saved_checkpoint)])


def test_an_output_activation_is_left_out_with_a_note(tmp_path: Path,
                                                      saved_checkpoint: Path) -> None:
    """A classifier's output Softmax / Sigmoid (hls4ml's jet tagger) is predicted as the
    network without it, and the notes say so; inside the network it is still refused."""
    checkpoint, config = FpgaCheckpoint.load(saved_checkpoint), FpgaConfig(8, 64)
    plain = predict_fpga(_dense_model(tmp_path), config, checkpoint)
    assert not any("output activation" in n for n in plain.notes)
    for tail in (nn.Softmax(dim=-1), nn.Sequential(nn.Sigmoid(), nn.Tanh())):
        tailed = predict_fpga(_dense_model(tmp_path, tail), config, checkpoint)
        assert tailed.metrics == plain.metrics and tailed.layers == plain.layers
        note = next(n for n in tailed.notes if "output activation" in n)
        assert ("Softmax" in note) if isinstance(tail, nn.Softmax) else ("Sigmoid" in note
                                                                         and "Tanh" in note)
    inside = nn.Sequential(nn.Linear(16, 32), nn.Softmax(dim=-1), nn.Linear(32, 8))
    path = tmp_path / "inside.onnx"
    path.write_bytes(export_torch(inside, torch.randn(1, 16)).SerializeToString())
    with pytest.raises(UnsupportedOpError, match="Softmax"):
        _cli(["fpga", str(path), "--precision", "8", "--reuse-factor", "64",
              "--checkpoint", str(saved_checkpoint)])


def test_unsupported_ops_are_named(tmp_path: Path, saved_checkpoint: Path) -> None:

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(8, 16, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lstm(x)[0]

    path = tmp_path / "lstm.onnx"
    path.write_bytes(export_torch(Recurrent(), torch.randn(1, 4, 8)).SerializeToString())
    with pytest.raises(UnsupportedOpError, match="LSTM"):
        predict_fpga(path, FpgaConfig(8, 64), FpgaCheckpoint.load(saved_checkpoint))


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PredictorError, match="not found"):
        FpgaCheckpoint.load(tmp_path / "none.ckpt")


@pytest.mark.skipif(not DEFAULT_FPGA_CHECKPOINT.is_file(), reason="no shipped FPGA checkpoint")
def test_shipped_checkpoint_predicts_a_dense_net(tmp_path: Path) -> None:
    checkpoint = FpgaCheckpoint.load()
    assert checkpoint.metrics == TARGETS
    result = predict_fpga(dense_onnx((16, 64, 32, 16)), FpgaConfig(16, 1024), checkpoint)
    # DSP = multipliers at 16 bits: 1 + 2 + 1 (hls4ml's used reuse factors 1024/1024/512)
    assert result.metrics["dsp"] == 4
    assert abs(result.metrics["latency_cycles"] - (1024 + 1024 + 512 + 5)) < 0.05 * 2565
