"""The shipped checkpoint and shipped devices work out of the box."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from predictor.api import Predictor
from predictor.corpus import SPACES
from predictor.device_store import list_device_files, load_device
from predictor.errors import UnknownDeviceError


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    return Predictor.load()


def test_every_shipped_device_belongs_to_the_shipped_checkpoint(shipped) -> None:
    files = list_device_files()
    # "nb201/pixel3" -> "pixel3@nb201"; a model set's "set:zoo1/epyc-ort-2t" -> "epyc-ort-2t@zoo1"
    trained = {f"{e.split('/')[1]}@{e.split('/')[0].split(':')[-1]}"
               for e in shipped.checkpoint.devices}
    assert trained <= set(files)
    for name in trained:
        state, info = load_device(name, shipped.fingerprint)
        assert state.z.shape == (shipped.model.config.hardware.dim,)
        assert info["kind"] == "training device"


def test_shipped_checkpoint_never_saw_test_devices(shipped) -> None:
    from predictor.splits import get_split

    for space in ("nb201", "fbnet"):
        split = get_split(space)
        names = {e.split("/")[1] for e in shipped.checkpoint.devices if e.startswith(space)}
        assert names == set(split.train)
        assert not names & (set(split.test) | set(split.valid))
    # Model-set devices: never the local benchmark's held-out runtime configuration.
    from predictor.model_sets import HELD_OUT_CONFIG, SPACE_PREFIX

    sets = [e for e in shipped.checkpoint.devices if e.startswith(SPACE_PREFIX)]
    assert not [e for e in sets if e.endswith(f"-{HELD_OUT_CONFIG.name}")]


def test_predict_search_space_graphs(shipped, tmp_path) -> None:
    space = SPACES["nb201"]
    light = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
    heavy = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    paths = []
    for name, arch in (("light", light), ("heavy", heavy)):
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(space.build_onnx(arch).SerializeToString())
        paths.append(path)
    ms = shipped.predict(paths, device="silver_4114@nb201")
    assert np.all(np.isfinite(ms)) and np.all(ms > 0)
    assert ms[1] > ms[0]  # nine 3x3 convs per cell cost more than skips on a CPU
    with pytest.raises(UnknownDeviceError, match="silver_4114"):
        shipped.predict(paths, device="silver_411")  # a typo: the closest names suggested


def test_one_model_given_alone_is_one_model(shipped, tmp_path) -> None:
    """A path, its string, its bytes, a ModelProto or a (module, example input) pair given
    alone is predicted as a list of one (not walked as characters or halves); a module
    without its example input is a clear error."""
    import onnx

    from predictor.errors import PredictorError

    module, x = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()), torch.randn(1, 3, 32, 32)
    path = tmp_path / "conv.onnx"
    torch.onnx.export(module, (x,), str(path), dynamo=False)
    device = "silver_4114@nb201"
    expected = shipped.predict([path], device=device)
    assert expected.shape == (1,)
    for alone in (path, str(path), path.read_bytes(), onnx.load(str(path)), (module, x)):
        np.testing.assert_allclose(shipped.predict(alone, device=device), expected, rtol=1e-5)
    with pytest.raises(PredictorError, match="example input"):
        shipped.predict(module, device=device)


def test_chunks_and_concurrent_callers_give_the_one_call_predictions(shipped, monkeypatch
                                                                     ) -> None:
    """Large calls run in chunks, and callers may predict from several threads at once
    (the service does): the same predictions (up to float summation order), in the
    callers' order, with and without the spread."""
    from concurrent.futures import ThreadPoolExecutor

    from predictor import api
    from predictor.spaces import nb201

    rng = np.random.default_rng(3)
    archs = list(dict.fromkeys(nb201.arch_to_str(list(rng.choice(nb201.OPS, 6)))
                               for _ in range(400)))
    assert [len(p) for p in api.split_parts(list(range(300)), 256)] == [256, 44]
    store = shipped.space_graphs("nb201", archs)
    one = shipped.predict_batch("nb201", archs, "pixel3@nb201")
    point, spread = shipped.predict_with_spread(store, "pixel3@nb201", chunk=100)
    np.testing.assert_allclose(point, one, rtol=1e-5)
    assert spread.shape == one.shape and not spread.any()  # a shipped device: no spread
    monkeypatch.setattr(api, "SPACE_CHUNK", 64)
    np.testing.assert_allclose(shipped.predict_batch("nb201", archs, "pixel3@nb201"), one,
                               rtol=1e-5)
    # A calibrated device whose blend holds fine-tuned heads: predicting with them on one
    # thread must not disturb another's (it did when they were swapped in place).
    y = one[:12] * np.exp(0.3 * np.sin(np.arange(12)))
    shipped.adapt("tuned-k12", shipped.space_graphs("nb201", archs[:12]), y, strategy="auto")
    assert any(m.params for m in shipped.device("tuned-k12").alternatives)
    # its blend judges graphs beyond the archs' sizes (a ResNet-50) on the largest archs,
    # and a device file keeps that
    import torch

    from predictor import model_zoo
    from predictor.adaptation import predict
    from predictor.device_store import _state_from_json, _state_to_json

    state = shipped.device("tuned-k12")
    assert state.local_errors.shape == (len(state.members), 12)
    big = shipped.graphs([model_zoo.export("resnet50", (1, 3, 64, 64))])
    again = _state_from_json(json.loads(json.dumps(_state_to_json(state))))
    torch.testing.assert_close(predict(shipped.model, big.batch([0]), again),
                               predict(shipped.model, big.batch([0]), state))
    tuned = shipped.predict_batch("nb201", archs, "tuned-k12", with_spread=True)
    with ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(shipped.predict_batch, "nb201", archs, device, with_spread=True)
                 for _ in range(3) for device in ("tuned-k12", "pixel3@nb201")]
        results = [c.result() for c in calls]
    for (got, got_spread), want in zip(results, [tuned, (one, spread)] * 3, strict=True):
        np.testing.assert_allclose(got, want[0], rtol=1e-4)
        np.testing.assert_allclose(got_spread, want[1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(shipped.predict_batch("nb201", archs, "pixel3@nb201"), one,
                               rtol=1e-5)  # the shared model was not left changed
    # order kept: each arch alone gives its own value
    for i in (0, len(archs) // 2, len(archs) - 1):
        np.testing.assert_allclose(shipped.predict_batch("nb201", [archs[i]], "pixel3@nb201"),
                                   one[i:i + 1], rtol=1e-5)


def test_models_with_op_types_no_training_graph_held_are_flagged(shipped, tmp_path) -> None:
    """An LSTM and a softplus are named (API, CLI note and JSON); a model built from
    the training graphs' ops is not, nor are data-movement ops."""
    import torch
    from torch import nn

    from predictor.graph import extract_graph

    class Unusual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(16, 16, batch_first=True)
            self.act = nn.Softplus()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.lstm(x)[0])  # (1, 8, 16)

    path = tmp_path / "unusual.onnx"
    torch.onnx.export(Unusual().eval(), (torch.randn(1, 8, 16),), str(path), dynamo=False)
    assert shipped.unfamiliar_ops(extract_graph(path)) == {"LSTM": 1, "Softplus": 1}
    nb201 = SPACES["nb201"].build_onnx(
        "|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|nor_conv_1x1~1|skip_connect~2|")
    assert shipped.unfamiliar_ops(extract_graph(nb201)) == {}
    out = subprocess.run([sys.executable, "-m", "predictor.cli", "predict", str(path),
                          "--device", "pixel3@nb201", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["unfamiliar_ops"] == {"LSTM": 1, "Softplus": 1}
    assert "LSTM x1" in out.stderr and "extrapolates" in out.stderr


def test_unfamiliar_ops_doing_next_to_no_work_are_not_reported(shipped) -> None:
    """A BERT's attention mask goes through Equal and Where, which no training graph held:
    a thousandth of its work, so its prediction does not extrapolate."""
    import torch
    from torch import nn

    from predictor.graph import extract_graph

    class MaskedEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.layer(x, src_key_padding_mask=mask == 0)

    graph = extract_graph(MaskedEncoder().eval(), example_input=(
        torch.randn(1, 32, 64), torch.ones(1, 32, dtype=torch.long)))
    ops = {n.op_type for n in graph.nodes}
    assert {"Equal", "Where"} & ops and not set(shipped.checkpoint.info["op_types"]) >= ops
    assert shipped.unfamiliar_ops(graph) == {}


def test_quantization_ops_are_reported_however_little_work_they_do(shipped, tmp_path) -> None:
    """A dynamically quantized MLP: DynamicQuantizeLinear does a sliver of the work, but
    it means the matmuls run in int8, which no training graph did."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from torch import nn

    from predictor.graph import extract_graph

    mlp = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256)).eval()
    fp32, int8 = tmp_path / "mlp.onnx", tmp_path / "mlp_int8.onnx"
    torch.onnx.export(mlp, (torch.randn(1, 256),), str(fp32), dynamo=False)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    flagged = shipped.unfamiliar_ops(extract_graph(int8))
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= set(flagged), flagged
    assert shipped.unfamiliar_ops(extract_graph(fp32)) == {}


def test_cli_predict_json(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(SPACES["fbnet"].build_onnx("-".join(["k3_e3"] * 22)).SerializeToString())
    result = subprocess.run([sys.executable, "-m", "predictor.cli", "predict", str(path),
                             "--device", "pixel3@fbnet", "--json"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows[0]["model"] == str(path) and rows[0]["latency_ms"] > 0
    bad = subprocess.run([sys.executable, "-m", "predictor.cli", "predict", str(path),
                          "--device", "nosuch"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Unknown device 'nosuch'" in bad.stderr


def test_models_run_at_the_batch_a_shipped_device_was_measured_at(shipped, tmp_path) -> None:
    """HELP's `1080ti_256` timed batches of 256: a batch-1 ONNX predicted there runs at 256
    (as predict_batch does), said on stderr; a batch-1 device keeps the model's batch."""
    model = SPACES["nb201"].build_onnx(SPACES["nb201"].archs()[7])
    device = "1080ti_256@nb201"
    default = shipped.predict([model], device=device)
    assert default == pytest.approx(shipped.predict([model], device=device, batch=256))
    assert default > 2 * shipped.predict([model], device=device, batch=1)
    arch = SPACES["nb201"].archs()[7]
    assert default == pytest.approx(shipped.predict_batch("nb201", [arch], device), rel=0.02)
    assert shipped.predict([model], device="1080ti_1@nb201") == pytest.approx(
        shipped.predict([model], device="1080ti_1@nb201", batch=1))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    result = subprocess.run([sys.executable, "-m", "predictor.cli", "predict", str(path),
                             "--device", device, "--json"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["latency_ms"] == pytest.approx(float(default[0]),
                                                                       rel=1e-4)
    assert "predicted at batch 256" in result.stderr
    assert "default device" not in result.stderr  # HELP's batch-256 table is NB201's only


def test_predicting_at_a_batch_the_device_never_ran_is_flagged(shipped, tmp_path,
                                                                 monkeypatch) -> None:
    """A device records the batches it was calibrated at; the CLI says when a model runs
    at another (batch scaling extrapolates: on CPUs the network learned it from GPUs)."""
    monkeypatch.setenv("LATPRED_DEVICE_DIR", str(tmp_path))
    space = SPACES["nb201"]
    archs = space.archs()[:: 1500][:8]
    ms = shipped.predict_batch("nb201", archs, "pixel3@nb201")
    graphs = shipped.space_graphs("nb201", archs)
    shipped.adapt("b1", graphs, ms, strategy="amortised", save=True)
    assert shipped.device_info("b1")["calibration_batches"] == [1]
    onnx_graphs = [space.build_onnx(a) for a in archs]
    shipped.adapt("b8", onnx_graphs, ms * 8, strategy="amortised", batch=8)
    assert shipped.device_info("b8")["calibration_batches"] == [8]
    paths = []
    for batch in (1, 4):
        path = tmp_path / f"b{batch}.onnx"
        path.write_bytes(space.build_onnx(archs[0], input_shape=(batch, 3, 32, 32))
                         .SerializeToString())
        paths.append(path)
    result = subprocess.run([sys.executable, "-m", "predictor.cli", "predict", *map(str, paths),
                             "--device", "b1"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "LATPRED_DEVICE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert f"{paths[1]} runs at batch 4" in result.stderr
    assert f"{paths[0]} runs at batch" not in result.stderr


def test_unseen_shapes_and_ops_give_sane_predictions(shipped) -> None:
    """Resolutions and op types that never occur in training (NB201 at 16x16 and 64x64,
    transformers) must not blow up: features constant in training keep unit scale."""
    from predictor.generator import export_spec, sample_specs

    archs = SPACES["nb201"].archs()[:4]
    device = "silver_4114@nb201"
    small = shipped.predict_batch("nb201", archs, device, input_shape=(1, 3, 16, 16),
                                  num_classes=120)
    base = shipped.predict_batch("nb201", archs, device)
    large = shipped.predict_batch("nb201", archs, device, input_shape=(1, 3, 64, 64))
    assert np.all(small < base) and np.all(base < large)
    specs = sample_specs(0, 4, kinds=("transformer",), small=True)
    ms = shipped.predict([export_spec(s) for s in specs], device=device)
    assert np.all(np.isfinite(ms)) and np.all((ms > 1e-3) & (ms < 1e4)), ms


def test_fine_tuned_device_file_round_trips_and_old_format_loads(shipped, tmp_path,
                                                                 monkeypatch) -> None:
    """Fine-tuned weights are stored as base64 float32 (exact, compact); a file written
    with decimal lists, as before, loads to the same predictions."""
    monkeypatch.setenv("LATPRED_DEVICE_DIR", str(tmp_path))
    rng = np.random.default_rng(3)
    archs = SPACES["nb201"].archs()[:: 1500][:10]
    ms = shipped.predict_batch("nb201", archs, "pixel3@nb201") * rng.uniform(0.7, 1.4, 10)
    shipped.adapt("tuned", shipped.space_graphs("nb201", archs), ms, strategy="finetune",
                  save=True)
    expected = shipped.predict_batch("nb201", archs, "tuned")
    path = tmp_path / "tuned.json"
    obj = json.loads(path.read_text())
    params = obj["state"]["params"]
    assert params and all(set(v) == {"shape", "float32"} for v in params.values())
    assert path.stat().st_size < 150_000
    np.testing.assert_array_equal(Predictor.load().predict_batch("nb201", archs, "tuned"),
                                  expected)
    state, _ = load_device("tuned")
    for name, v in params.items():  # the previous format: decimals
        params[name] = {"shape": v["shape"], "values": state.params[name].flatten().tolist()}
    path.write_text(json.dumps(obj))
    np.testing.assert_allclose(Predictor.load().predict_batch("nb201", archs, "tuned"),
                               expected, rtol=1e-6)


def test_an_auto_device_stores_each_candidate_once(shipped, tmp_path, monkeypatch) -> None:
    """An "auto" blend's candidates are both its members and the alternatives its spread
    comes from: stored once (those alternatives as member indices), loaded to the same
    predictions and spread; a file with the alternatives written out, as before, too."""
    monkeypatch.setenv("LATPRED_DEVICE_DIR", str(tmp_path))
    rng = np.random.default_rng(4)
    archs = SPACES["nb201"].archs()[:: 1200][:12]
    ms = shipped.predict_batch("nb201", archs, "pixel3@nb201") * rng.uniform(0.7, 1.4, 12)
    shipped.adapt("blend", shipped.space_graphs("nb201", archs), ms, save=True)
    expected = shipped.predict_batch("nb201", archs, "blend", with_spread=True)
    assert np.all(expected[1] > 0)
    obj = json.loads((tmp_path / "blend.json").read_text())
    alternatives = obj["state"]["alternatives"]
    assert any(set(a) == {"member"} for a in alternatives)
    loaded = Predictor.load().predict_batch("nb201", archs, "blend", with_spread=True)
    for got, want in zip(loaded, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    members = obj["state"]["members"]  # the previous format: every alternative in full
    obj["state"]["alternatives"] = [members[a["member"]] if "member" in a else a
                                    for a in alternatives]
    (tmp_path / "blend.json").write_text(json.dumps(obj))
    for got, want in zip(Predictor.load().predict_batch("nb201", archs, "blend",
                                                        with_spread=True), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_call_floor_comes_off_the_measurements_and_onto_every_prediction(
        shipped, tmp_path, monkeypatch) -> None:
    """With the runtime's per-inference floor, `adapt` fits the latencies less the floor
    and each prediction adds it back: a network with next to no work costs more than the
    floor, however far below the calibration models it lies; stored and loaded with the
    device; capped at half the smallest latency; bad floors are clear errors."""
    from predictor.errors import PredictorError
    from predictor.measure import floor_model

    monkeypatch.setenv("LATPRED_DEVICE_DIR", str(tmp_path))
    archs = SPACES["nb201"].archs()[:: 1500][:10]
    graphs = shipped.space_graphs("nb201", archs)
    ms = shipped.predict_batch("nb201", archs, "pixel3@nb201")
    floor = 0.3 * float(ms.min())
    shipped.adapt("plain", graphs, ms, strategy="amortised")
    state = shipped.adapt("floored", graphs, ms, strategy="amortised", call_floor_ms=floor,
                          save=True)
    assert state.call_floor_ms == floor and shipped.device_info("floored")["call_floor_ms"] == floor
    tiny = shipped.graphs([floor_model()])
    plain, floored = shipped.predict(tiny, "plain")[0], shipped.predict(tiny, "floored")[0]
    assert plain < floor < floored
    # the calibration's own models stay where they were measured
    np.testing.assert_allclose(shipped.predict(graphs, "floored"), ms, rtol=0.3)
    assert Predictor.load().predict(tiny, "floored")[0] == pytest.approx(floored, rel=1e-6)
    # the benchmarks' adaptation (`evaluation.predictor_fn`) takes it off the same way
    from predictor.evaluation import predictor_fn
    from predictor.graph import extract_graph
    from predictor.graph_store import GraphStore

    ops = [extract_graph(SPACES["nb201"].build_onnx(a)) for a in archs]
    last = extract_graph(floor_model())
    shipped.adapt("fn-check", GraphStore.from_graphs(ops), ms, strategy="amortised",
                  call_floor_ms=floor)
    expected = shipped.predict(GraphStore.from_graphs([last]), "fn-check")
    fn = predictor_fn(shipped.model, "amortised", call_floor_ms=floor)
    np.testing.assert_allclose(fn(GraphStore.from_graphs([*ops, last]), np.arange(10), ms,
                                  np.array([10])), expected, rtol=1e-5)
    assert expected[0] > floor
    capped = shipped.adapt("capped", graphs, ms, strategy="amortised", call_floor_ms=1e3)
    assert capped.call_floor_ms == pytest.approx(0.5 * ms.min())
    with pytest.raises(PredictorError, match="call_floor_ms must be a finite time"):
        shipped.adapt("bad", graphs, ms, call_floor_ms=-1.0)
    with pytest.raises(PredictorError, match="A call floor is a latency"):
        shipped.adapt("bad", graphs, ms, call_floor_ms=floor, metric="energy_mj")


def _predict_and_threads(predictor, archs: list[str]) -> tuple[np.ndarray, int]:
    import torch

    return predictor.predict_batch("nb201", archs, "pixel3@nb201"), torch.get_num_threads()


def test_predictions_work_in_a_forked_child(shipped) -> None:
    """A process forked after the parent predicted on several OpenMP threads (e.g.
    multiprocessing workers) predicts on one thread instead of waiting forever for the
    parent's OpenMP workers."""
    import multiprocessing

    import torch

    from predictor.spaces import nb201

    rng = np.random.default_rng(5)
    archs = [nb201.arch_to_str(list(rng.choice(nb201.OPS, 6))) for _ in range(300)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the parent's OpenMP team has a worker, even on one core
    try:
        expected = shipped.predict_batch("nb201", archs, "pixel3@nb201")
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got, child_threads = pool.apply_async(_predict_and_threads,
                                                  (shipped, archs)).get(timeout=120)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert child_threads == 1
