"""Model sets: generated models measured here become device tasks for meta-training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from predictor import model_sets
from predictor.datamodule import DataConfig, EpisodeDataModule
from predictor.errors import DataError
from predictor.graph_store import GraphStore
from predictor.measurements import read_measurements_csv


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    model_sets.create_model_set("tiny", seed=3, cnns=4, transformers=3, root=root, small=True)
    config = model_sets.TRAINING_CONFIGS["ort-2t"]
    model_sets.measure_device("tiny", "here-ort-2t", config, max_seconds=0.2, root=root,
                              progress=False)
    return root


def test_high_resolution_set_records_its_sizes(tmp_path) -> None:
    model_sets.create_model_set("hires", seed=9, cnns=2, transformers=0, root=tmp_path,
                                families=["resnet", "unet"], resolutions=[384, 512],
                                macs_range=(2e8, 4e9))
    specs = model_sets.model_set_specs("hires", tmp_path)
    assert [s.family for s in specs] == ["resnet", "unet"]
    assert all(s.input_shape[2] in (384, 512) for s in specs)
    saved = json.loads((tmp_path / "hires" / "specs.json").read_text())
    assert saved["resolutions"] == [384, 512] and saved["macs_range"] == [2e8, 4e9]


def test_measured_set_is_a_device_task(small_set, tmp_path) -> None:
    specs = model_sets.model_set_specs("tiny", small_set)
    assert [s.kind for s in specs] == ["cnn"] * 4 + ["transformer"] * 3
    assert model_sets.model_set_devices("tiny", small_set) == ["here-ort-2t"]
    task = model_sets.load_model_set_task("tiny", "here-ort-2t", small_set)
    assert task.space == "set:tiny" and task.batch_size == 1
    assert task.latency_ms.shape == (7,) and np.all(task.latency_ms > 0)
    assert task.pool.tolist() == list(range(7))
    store = model_sets.model_set_store("tiny", small_set, cache_root=tmp_path, progress=False)
    assert len(store) == 7
    # cached: the second call reads the same graphs back
    again = model_sets.model_set_store("tiny", small_set, cache_root=tmp_path, progress=False)
    assert (again.graph_attr == store.graph_attr).all()


def test_a_set_of_chosen_families_holds_only_them(tmp_path) -> None:
    model_sets.create_model_set("unets", seed=4, cnns=3, transformers=0, root=tmp_path,
                                small=True, families=["unet"])
    specs = model_sets.model_set_specs("unets", tmp_path)
    assert [s.family for s in specs] == ["unet"] * 3
    model_sets.create_model_set("rnns", seed=4, cnns=0, transformers=0, rnns=2, root=tmp_path,
                                small=True)
    assert [s.kind for s in model_sets.model_set_specs("rnns", tmp_path)] == ["rnn"] * 2
    with pytest.raises(DataError, match="No transformer family"):
        model_sets.create_model_set("bad", seed=4, cnns=1, transformers=1, root=tmp_path,
                                    small=True, families=["unet"])


def test_held_out_config_and_unknown_names_are_refused(small_set) -> None:
    with pytest.raises(DataError, match="held-out"):
        model_sets.measure_device("tiny", "x", model_sets.HELD_OUT_CONFIG, root=small_set)
    with pytest.raises(DataError, match="no device 'nosuch'"):
        model_sets.load_model_set_task("tiny", "nosuch", small_set)
    with pytest.raises(DataError, match="Unknown model set"):
        model_sets.model_set_specs("nosuch", small_set)


def test_model_set_devices_join_meta_training(small_set, tmp_path, monkeypatch,
                                              shared_data_dir) -> None:
    monkeypatch.setattr(model_sets, "MODEL_SETS_DIR", small_set)
    config = DataConfig(spaces=("nb201",), shots=3, queries=3, episodes_per_epoch=8,
                        val_episodes=2, limit_archs=50,
                        model_sets={"tiny": {"train": ["here-ort-2t"]}}, model_set_share=0.5)
    dm = EpisodeDataModule(config, data_dir=shared_data_dir, cache_root=tmp_path,
                           progress=False)
    dm.setup()
    assert ("set:tiny", 1) in dm.stores
    assert any(t.space == "set:tiny" for t in dm.train_tasks)
    episodes = [ep for batch in dm.train_dataloader() for ep in batch]
    assert len(episodes) == 8 and all(ep.support_y.isfinite().all() for ep in episodes)
    # one model-set device against 9 NB201 devices, yet half the episodes
    weights = dm._task_weights()
    in_set = [t.space == "set:tiny" for t in dm.train_tasks]
    assert abs(sum(w for w, s in zip(weights, in_set, strict=True) if s) - 0.5) < 1e-9


def test_torch_config_measures_modules_and_records_the_runtime(small_set) -> None:
    """A torch runtime config times the modules themselves; energy without a meter is
    an empty column, not a failure."""
    config = model_sets.RuntimeConfig("torch-here", "torch", 1)
    path = model_sets.measure_device("tiny", "here-torch", config, max_seconds=0.1,
                                     energy=True, root=small_set, progress=False)
    rows, info = read_measurements_csv(path)
    assert info["backend"] == "torch" and info["runtime_config"] == "torch-here"
    assert [Path(r["model"]).name for r in rows] == [s.name for s in model_sets.model_set_specs(
        "tiny", small_set)]
    assert all(r["latency_ms"] > 0 for r in rows)
    task = model_sets.load_model_set_task("tiny", "here-torch", small_set)
    assert np.isfinite(task.latency_ms).all()


def test_openvino_config_times_the_exports(small_set) -> None:
    """The OpenVINO training configs time every model of a set (CNNs and transformers)."""
    pytest.importorskip("openvino")
    config = model_sets.TRAINING_CONFIGS["ov-1t"]
    path = model_sets.measure_device("tiny", "here-ov-1t", config, max_seconds=0.1,
                                     root=small_set, progress=False)
    rows, info = read_measurements_csv(path)
    assert info["backend"] == "openvino" and info["threads"] == "1"
    assert info["openvino"][0].isdigit() and all(r["latency_ms"] > 0 for r in rows)
    task = model_sets.load_model_set_task("tiny", "here-ov-1t", small_set)
    assert np.isfinite(task.latency_ms).all() and task.pool.size == 7


def test_a_batch_config_times_the_model_at_that_batch(small_set) -> None:
    from predictor.generator import export_spec
    from predictor.graph import extract_graph

    spec = model_sets.model_set_specs("tiny", small_set)[0]
    for backend in ("torch", "onnxruntime"):
        one = model_sets.measure_spec(spec, model_sets.RuntimeConfig("b1", backend, 1),
                                      max_seconds=0.2)
        many = model_sets.measure_spec(spec, model_sets.RuntimeConfig("b64", backend, 1,
                                                                      batch=64),
                                       max_seconds=0.2)
        assert many.latency_ms > 2 * one.latency_ms, backend
    # the ONNX runtimes time an export at that batch: the batch-1 graph's work times 64
    g1, g64 = extract_graph(export_spec(spec)), extract_graph(export_spec(spec, 64))
    assert sum(n.macs for n in g64.nodes) == 64 * sum(n.macs for n in g1.nodes) > 0


def test_a_batch_measured_device_trains_on_graphs_at_that_batch(small_set, tmp_path) -> None:
    config = model_sets.RuntimeConfig("torch-b4", "torch", 1, batch=4)
    path = model_sets.measure_device("tiny", "here-torch-b4", config, max_seconds=0.1,
                                     root=small_set, progress=False)
    assert read_measurements_csv(path)[1]["batch"] == "4"
    task = model_sets.load_model_set_task("tiny", "here-torch-b4", small_set)
    assert task.batch_size == 4 and task.store_key == ("set:tiny", 4)
    one = model_sets.model_set_store("tiny", small_set, cache_root=tmp_path, progress=False)
    four = model_sets.model_set_store("tiny", small_set, cache_root=tmp_path, progress=False,
                                      batch=4)
    assert len(four) == len(one)
    # the same models, each graph's work four times as large: a separate cached store
    assert not torch.allclose(four.graph_attr, one.graph_attr)
    assert len(list((tmp_path / "model_sets").glob("tiny-*.store"))) == 2


def test_recurrent_models_train_unrolled(tmp_path) -> None:
    from predictor.graph import RECURRENT_GATES

    model_sets.create_model_set("rnns", seed=4, cnns=0, transformers=0, rnns=2, root=tmp_path,
                                small=True)
    store = model_sets.model_set_store("rnns", tmp_path, cache_root=tmp_path, progress=False)
    specs = model_sets.model_set_specs("rnns", tmp_path)
    from predictor.generator import export_spec
    from predictor.graph import extract_graph

    raw = [extract_graph(export_spec(s)) for s in specs]
    assert all(any(n.op_type in RECURRENT_GATES for n in g.nodes) for g in raw)
    # one node per recurrent op became a chain of per-step nodes
    assert all(int(n) > len(g.nodes) for n, g in zip(store.num_nodes, raw, strict=True))


def test_gpu_config_and_tags(monkeypatch) -> None:
    gpu = model_sets.TRAINING_CONFIGS["torch-cuda"]
    assert (gpu.backend, gpu.device) == ("torch", "cuda")
    assert gpu != model_sets.HELD_OUT_CONFIG
    assert model_sets.TRAINING_CONFIGS["torch-cuda-b32"].batch == 32
    assert model_sets.HELD_OUT_CONFIG.name not in model_sets.TRAINING_CONFIGS
    import predictor.measurements as measurements

    for name, tag in (("NVIDIA H200", "h200"), ("NVIDIA H100 80GB HBM3", "h100"),
                      ("NVIDIA GeForce RTX 4090", "rtx-4090")):
        monkeypatch.setattr(measurements, "_gpu_name", lambda name=name: name)
        assert model_sets.machine_tag("cuda") == tag


def test_default_device_pools_every_set_of_a_runtime(small_set, monkeypatch) -> None:
    """A runtime's default device adapts on all its sets' models at once; it is not a
    reference for new devices (only training devices are)."""
    from predictor.api import Predictor
    from predictor.device_store import load_device_file, model_fingerprint, save_device
    from predictor.shipped import embed_default_device

    model_sets.create_model_set("tiny2", seed=5, cnns=3, transformers=2, root=small_set,
                                small=True)
    model_sets.measure_device("tiny2", "here-ort-2t", model_sets.TRAINING_CONFIGS["ort-2t"],
                              max_seconds=0.2, root=small_set, progress=False)
    monkeypatch.setattr(model_sets, "MODEL_SETS_DIR", small_set)
    predictor = Predictor.load()
    state, info = embed_default_device(predictor.checkpoint, "here-ort-2t",
                                       ["set:tiny", "set:tiny2"],
                                       known=predictor.known_devices())
    assert info["kind"] == "default device" and info["models"] == 12
    assert info["sources"] == ["tiny", "tiny2"] and info["batch_size"] == 1
    assert set(info["families"]) == {s.family for n in ("tiny", "tiny2")
                                     for s in model_sets.model_set_specs(n)}
    path = save_device("here-ort-2t", state, model_fingerprint(predictor.model), info,
                       small_set)
    loaded, loaded_info = load_device_file(path, predictor.fingerprint)
    assert loaded_info == info
    tasks = [model_sets.load_model_set_task(n, "here-ort-2t") for n in ("tiny", "tiny2")]
    stores = [model_sets.model_set_store(n, progress=False) for n in ("tiny", "tiny2")]
    measured = np.concatenate([t.latency_ms for t in tasks])
    predicted = np.concatenate([_predict_state(predictor, s, loaded) for s in stores])
    # adapted on exactly these: within a factor 1.5 on each
    assert np.all(np.abs(np.log(predicted / measured)) < np.log(1.5)), predicted / measured
    # the least call floor the sets record bounds every prediction below, and only that
    from dataclasses import replace

    from predictor.measure import floor_model

    floors = [float(read_measurements_csv(model_sets.set_dir(n) / "here-ort-2t.csv")[1]
                    ["call_floor_ms"]) for n in ("tiny", "tiny2")]
    assert state.min_ms == loaded.min_ms == info["min_ms"] == min(floors) > 0
    probe = GraphStore.concat([*stores, predictor.graphs([floor_model()])])
    unbounded = _predict_state(predictor, probe, replace(loaded, min_ms=0.0))
    np.testing.assert_allclose(_predict_state(predictor, probe, loaded),
                               np.maximum(unbounded, state.min_ms), rtol=1e-5)


def _predict_state(predictor, store, state) -> np.ndarray:
    from predictor.adaptation import predict

    with torch.no_grad():
        return predict(predictor.model, store.batch(range(len(store))), state).exp().numpy()


def test_shipped_default_devices_cover_each_model_set_runtime_and_two_table_board() -> None:
    """One default device per model-set runtime of the shipped checkpoint, from the sets
    timed on the newest host (not this project's first, 3x slower CPU sessions: zoo1/2),
    and per HELP board in both spaces' tables."""
    from predictor.api import Predictor
    from predictor.device_store import load_device
    from predictor.shipped import default_device_sources

    predictor = Predictor.load()
    sources = default_device_sources(predictor.checkpoint)
    assert sources["h200-torch-cuda"] == ["set:zoo1", "set:zoo3", "set:zoo4"]
    assert sources["epyc-ort-2t"] == ["set:zoo3", "set:zoo4", "set:zoo5", "set:zoo6", "set:zoo9"]
    assert sorted(sources["pixel3"]) == ["fbnet", "nb201"]
    assert "1080ti_256" not in sources  # in NB201's table only
    for device, spaces in sources.items():
        _, info = load_device(device, predictor.fingerprint)
        assert info["kind"] == "default device"
        assert info["sources"] == [s.removeprefix("set:") for s in spaces]
    assert load_device("h200-torch-cuda-b32")[1]["batch_size"] == 32
    known = predictor.known_devices()
    assert len(known) == len(predictor.checkpoint.devices)  # no default device among them


def test_measured_cpu_sets_record_the_call_floor_and_older_ones_get_it_added(small_set,
                                                                              tmp_path) -> None:
    """New CPU measurements record the runtime's per-inference floor; a CSV measured before
    gets it added on a host of its speed (rows untouched), once."""
    from predictor.shipped import SAME_HOST_FACTOR

    def recorded(root: Path) -> float | None:
        _, info = read_measurements_csv(root / "tiny" / "here-ort-2t.csv")
        return float(info["call_floor_ms"]) if "call_floor_ms" in info else None

    config = model_sets.TRAINING_CONFIGS["ort-2t"]
    path = small_set / "tiny" / "here-ort-2t.csv"
    _, info = read_measurements_csv(path)
    assert 0 < float(info["call_floor_ms"]) < 0.1  # next to no work: microseconds
    # an older CSV: the same rows without the floor lines
    old = tmp_path / "tiny"
    old.mkdir()
    (old / "specs.json").write_text((small_set / "tiny" / "specs.json").read_text())
    lines = [line for line in path.read_text().splitlines(keepends=True)
             if not line.startswith("# call_floor")]
    (old / "here-ort-2t.csv").write_text("".join(lines))
    assert recorded(tmp_path) is None
    before = (old / "here-ort-2t.csv").read_text()
    written, floor = model_sets.record_call_floor("tiny", "here-ort-2t", config, root=tmp_path)
    after = written.read_text()
    assert [line for line in after.splitlines() if not line.startswith("# call_floor")] == \
        before.splitlines()  # the measurements and their provenance stay as they were
    assert recorded(tmp_path) == pytest.approx(floor, rel=1e-5)
    with pytest.raises(DataError, match="records a call floor already"):
        model_sets.record_call_floor("tiny", "here-ort-2t", config, root=tmp_path)
    with pytest.raises(DataError, match="measured under 'ort-2t', not 'torch-2t'"):
        model_sets.record_call_floor("tiny", "here-ort-2t", model_sets.TRAINING_CONFIGS[
            "torch-2t"], root=tmp_path)
    # another host: a speed probe far from the measurements' is refused
    slow = before.replace(f"# speed_probe_ms: {info['speed_probe_ms']}",
                          f"# speed_probe_ms: {float(info['speed_probe_ms']) * 3 * SAME_HOST_FACTOR}")
    assert slow != before
    (old / "here-ort-2t.csv").write_text(slow)
    with pytest.raises(DataError, match="not within"):
        model_sets.record_call_floor("tiny", "here-ort-2t", config, root=tmp_path)
