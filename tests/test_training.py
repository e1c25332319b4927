"""Real meta-training of a tiny model on a small subset, then adaptation to a held-out device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from predictor.adaptation import (
    AUTO_CANDIDATES,
    AUTO_MIN_SHOTS,
    MIX_FREE_CANDIDATES,
    RESERVE_PREFIX,
    SPREAD_CANDIDATES,
    STRATEGIES,
    DeviceState,
    adapt,
    adapt_selected,
    cross_validated_errors,
    predict,
)
from predictor.checkpoint import Checkpoint
from predictor.config import load_config
from predictor.corpus import build_corpus
from predictor.datasets import load_device_task
from predictor.splits import get_split
from predictor.training import train

HELD_OUT = "gold_6240"  # a meta-valid device: never trained on


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shared_data_dir):
    root = tmp_path_factory.mktemp("tiny")
    config = load_config("configs/tiny.yaml")
    out = root / "tiny.ckpt"
    train(config, out, data_dir=shared_data_dir, cache_root=root / "cache", log_dir=root / "logs",
          progress=False)
    return Checkpoint.load(out), root, config, shared_data_dir


def test_checkpoint_records_training(tiny_run) -> None:
    checkpoint, root, config, _ = tiny_run
    assert checkpoint.devices == tuple(f"nb201/{d}" for d in get_split("nb201").train)
    assert HELD_OUT not in " ".join(checkpoint.devices)
    assert checkpoint.config == config
    assert checkpoint.info["epochs"] >= 1
    assert list((root / "logs").rglob("metrics.csv"))  # CSV logger by default
    # NB201's graphs: convolutions, pooling, residual adds, the classifier; no LSTM
    assert {"Conv", "AveragePool", "Add", "Gemm", "Relu"} <= set(checkpoint.info["op_types"])
    assert "LSTM" not in checkpoint.info["op_types"]


def test_adaptation_beats_unadapted_prediction(tiny_run) -> None:
    checkpoint, root, config, data_dir = tiny_run
    model = checkpoint.model
    task = load_device_task("nb201", HELD_OUT, data_dir)
    limit = config.data.limit_archs
    store = build_corpus("nb201", batch_sizes=(task.batch_size,), data_dir=data_dir,
                         root=root / "cache", limit=limit, progress=False)[task.batch_size]
    pool = task.pool[task.pool < limit]
    rng = np.random.default_rng(0)
    support = rng.choice(pool, 10, replace=False)
    query = np.setdiff1d(pool, support)
    y_support = torch.tensor(np.log(task.latency_ms[support]), dtype=torch.float32)
    y_query = torch.tensor(np.log(task.latency_ms[query]), dtype=torch.float32)

    adapted = predict(model, store.batch(query), adapt(model, store.batch(support), y_support))
    zero = DeviceState(torch.zeros(model.config.hardware.dim), torch.tensor(1.0),
                       torch.tensor(0.0))
    unadapted = predict(model, store.batch(query), zero)
    mse = lambda p: float(((p - y_query) ** 2).mean())  # noqa: E731
    assert mse(adapted) < mse(unadapted)
    assert mse(adapted) < float(y_query.var())  # better than predicting the mean
    mape = float((torch.exp(adapted) / torch.exp(y_query) - 1).abs().mean())
    assert mape < 0.5


def test_cross_validated_strategy_choice(tiny_run) -> None:
    checkpoint, root, config, data_dir = tiny_run
    model = checkpoint.model
    limit = config.data.limit_archs
    known = []
    for device in get_split("nb201").train[:3]:
        t = load_device_task("nb201", device, data_dir)
        store = build_corpus("nb201", batch_sizes=(t.batch_size,), data_dir=data_dir,
                             root=root / "cache", limit=limit, progress=False)[t.batch_size]
        ids = t.pool[t.pool < limit][:10]
        known.append(adapt(model, store.batch(ids),
                           torch.tensor(np.log(t.latency_ms[ids]), dtype=torch.float32)))
    task = load_device_task("nb201", HELD_OUT, data_dir)
    store = build_corpus("nb201", batch_sizes=(task.batch_size,), data_dir=data_dir,
                         root=root / "cache", limit=limit, progress=False)[task.batch_size]
    support = task.pool[task.pool < limit][:10]
    y = torch.tensor(np.log(task.latency_ms[support]), dtype=torch.float32)
    errors = cross_validated_errors(model, store.batch(support), y, finetune_steps=5,
                                    known=known)
    assert set(errors) == set(AUTO_CANDIDATES)
    assert all(np.isfinite(e) and e >= 0 for e in errors.values())
    state, choice = adapt_selected(model, store.batch(support), y, finetune_steps=5, known=known)
    # A blend of the candidates, weighted by their cross-validated errors: the least error
    # weighs most, weights fall with the error and sum to 1.
    weights = dict(zip(state.labels, state.weights.tolist(), strict=True))
    # the mix-free candidates are always there, at weight 0 where dropped (reserves)
    reserves = {n for n in weights if n.startswith(RESERVE_PREFIX)}
    assert all(weights.pop(n) == 0.0 for n in reserves)
    assert {n.removeprefix(RESERVE_PREFIX) for n in reserves} == \
        set(MIX_FREE_CANDIDATES) - set(weights)
    assert choice == min(errors, key=errors.__getitem__) == max(weights, key=weights.get)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert set(weights) <= set(AUTO_CANDIDATES)
    by_error = sorted(weights, key=errors.__getitem__)
    assert [weights[n] for n in by_error] == sorted(weights.values(), reverse=True)
    assert len(state.alternatives) == len(SPREAD_CANDIDATES)
    for name, member in zip(state.labels, state.members, strict=True):
        strategy = STRATEGIES[name.removeprefix(RESERVE_PREFIX)]
        parts = member.members or [member]  # an ensemble lists its own state first
        assert bool(parts[0].params) == strategy.tuned
        assert (parts[0].op_scale is not None) == strategy.op_scale
        assert (member.kernel_sum is not None) == strategy.kernel_sum
        if strategy.network and not strategy.kernel_sum:
            assert len(parts) == 1 + strategy.nearest + strategy.linear
        if not strategy.network:  # the linear fit alone, or a kernel sum
            assert (member.linear is not None) != strategy.kernel_sum
    blended = predict(model, store.batch(support), state)
    parts = torch.stack([predict(model, store.batch(support), m) for m in state.members])
    torch.testing.assert_close(blended, (state.weights[:, None] * parts).sum(0))
    # Too few samples to cross-validate: the nearest-device ensemble, without fine-tuning;
    # from AUTO_MIN_SHOTS on, the blend.
    _, few = adapt_selected(model, store.batch(support[:AUTO_MIN_SHOTS - 1]),
                            y[:AUTO_MIN_SHOTS - 1], finetune_steps=5, known=known)
    assert few == "nearest"
    enough, _ = adapt_selected(model, store.batch(support[:AUTO_MIN_SHOTS]),
                               y[:AUTO_MIN_SHOTS], finetune_steps=5, known=known)
    assert len(enough.alternatives) == len(SPREAD_CANDIDATES)


def test_absolute_weight_adds_the_unscaled_log_mse(tiny_run) -> None:
    from predictor.datasets import Episode
    from predictor.metalearner import episode_loss

    checkpoint, root, config, data_dir = tiny_run
    task = load_device_task("nb201", HELD_OUT, data_dir)
    store = build_corpus("nb201", batch_sizes=(task.batch_size,), data_dir=data_dir,
                         root=root / "cache", limit=config.data.limit_archs,
                         progress=False)[task.batch_size]
    support, query = torch.arange(0, 8), torch.arange(8, 40)
    log_ms = torch.tensor(np.log(task.latency_ms), dtype=torch.float32)
    episode = Episode("nb201", HELD_OUT, 0, store.batch(support.numpy()), log_ms[support],
                      store.batch(query.numpy()), log_ms[query], support, query)
    with torch.no_grad():
        plain, pred = episode_loss(checkpoint.model, episode, rank_weight=1.0)
        weighted, _ = episode_loss(checkpoint.model, episode, 1.0, absolute_weight=3.0)
    mse = float(((pred - log_ms[query]) ** 2).mean())
    assert mse > 0
    assert float(weighted - plain) == pytest.approx(3.0 * mse, rel=1e-4)


def test_head_ridge_episodes_score_the_refit_that_adaptation_makes(tiny_run, tmp_path) -> None:
    """With `head_ridge`, an episode scores the plain and the ridge-refitted predictions
    (the loss is their mean) and the refitted ones are what the "headridge" member predicts
    after adapting on the same support set; a short run trains with it."""
    import dataclasses

    from predictor.adaptation import fit_head_ridge, rank_loss
    from predictor.datasets import Episode
    from predictor.metalearner import episode_forward, episode_loss

    checkpoint, root, config, data_dir = tiny_run
    model = checkpoint.model
    task = load_device_task("nb201", HELD_OUT, data_dir)
    store = build_corpus("nb201", batch_sizes=(task.batch_size,), data_dir=data_dir,
                         root=root / "cache", limit=config.data.limit_archs,
                         progress=False)[task.batch_size]
    support, query = torch.arange(0, 10), torch.arange(10, 40)
    log_ms = torch.tensor(np.log(task.latency_ms), dtype=torch.float32)
    episode = Episode("nb201", HELD_OUT, 0, store.batch(support.numpy()), log_ms[support],
                      store.batch(query.numpy()), log_ms[query], support, query)
    with torch.no_grad():
        plain, refitted = episode_forward(model, episode, head_ridge=0.1)
        loss, pred = episode_loss(model, episode, 1.0, head_ridge=0.1)
        plain_loss, _ = episode_loss(model, episode, 1.0)
        y = log_ms[query]
        refit_loss = ((refitted - y) ** 2).mean() / y.var() + rank_loss(refitted, y)
    state = fit_head_ridge(model, episode.support, log_ms[support],
                           adapt(model, episode.support, log_ms[support]), ridge=0.1)
    torch.testing.assert_close(refitted, predict(model, episode.query, state),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(plain, predict(model, episode.query,
                                              adapt(model, episode.support, log_ms[support])))
    torch.testing.assert_close(pred, refitted)
    assert not torch.allclose(plain, refitted)
    assert float(loss) == pytest.approx((float(plain_loss) + float(refit_loss)) / 2, rel=1e-5)
    data = dataclasses.replace(config.data, episodes_per_epoch=8)
    out = train(dataclasses.replace(config, data=data, max_epochs=1, head_ridge=0.1,
                                    init_from=str(root / "tiny.ckpt")),
                tmp_path / "ridge.ckpt", data_dir=data_dir, cache_root=root / "cache",
                log_dir=tmp_path / "logs", progress=False)
    assert out.config.head_ridge == 0.1
    assert any(not torch.equal(a, b) for a, b in zip(out.model.state_dict().values(),
                                                     model.state_dict().values(), strict=True))


def test_warm_start_from_a_checkpoint(tiny_run, tmp_path) -> None:
    import dataclasses

    from predictor.errors import PredictorError

    checkpoint, root, config, data_dir = tiny_run
    data = dataclasses.replace(config.data, spaces=("fbnet",), episodes_per_epoch=8)
    warm = dataclasses.replace(config, data=data, max_epochs=1,
                               init_from=str(root / "tiny.ckpt"))
    out = train(warm, tmp_path / "warm.ckpt", data_dir=data_dir, cache_root=root / "cache",
                log_dir=tmp_path / "logs", progress=False)
    # the base's devices stay listed next to the new ones, and its standardisers are kept
    assert set(checkpoint.devices) < set(out.devices)
    assert any(d.startswith("fbnet/") for d in out.devices)
    assert torch.equal(out.model.node_norm.std, checkpoint.model.node_norm.std)
    assert out.info["init_from"] == str(root / "tiny.ckpt")
    assert set(checkpoint.info["op_types"]) <= set(out.info["op_types"])  # FBNet's join
    model = dataclasses.replace(config.model, graph_dim=config.model.graph_dim + 1)
    with pytest.raises(PredictorError, match="model config differs"):
        train(dataclasses.replace(warm, model=model), tmp_path / "bad.ckpt", data_dir=data_dir,
              cache_root=root / "cache", log_dir=tmp_path / "logs", progress=False)
    assert not (tmp_path / "bad.ckpt").exists()


def test_second_head_trains_only_the_named_parameters(tiny_run, tmp_path) -> None:
    """`trainable` freezes everything else (a second head on a frozen encoder), and
    `only_extra_tasks` trains on the given tasks alone."""
    import dataclasses

    from predictor.datasets import DeviceTask

    checkpoint, root, config, data_dir = tiny_run
    head = ("cost_in.", "cost_out.", "overhead.", "film_head.")
    data = dataclasses.replace(config.data, episodes_per_epoch=8)
    warm = dataclasses.replace(config, data=data, max_epochs=1, trainable=head,
                               init_from=str(root / "tiny.ckpt"))
    device = get_split("nb201").train[0]  # its latency x 3 stands in for an energy table
    task = load_device_task("nb201", device, data_dir)
    energy = DeviceTask("nb201", f"{device}:energy_mj", task.batch_size, task.latency_ms * 3.0,
                        task.pool[task.pool < config.data.limit_archs])
    out = train(warm, tmp_path / "head.ckpt", data_dir=data_dir, cache_root=root / "cache",
                log_dir=tmp_path / "logs", progress=False, extra_tasks=[energy],
                only_extra_tasks=True)
    before, after = checkpoint.model.state_dict(), out.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(head) for k in changed)
    assert f"nb201/{device}:energy_mj" in out.devices
    with pytest.raises(ValueError, match="matches no parameter"):
        train(dataclasses.replace(warm, trainable=("no_such_layer.",)), tmp_path / "x.ckpt",
              data_dir=data_dir, cache_root=root / "cache", log_dir=tmp_path / "logs",
              progress=False)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path, shared_data_dir) -> None:
    """`latpred train` with strategy ddp on 2 CPU processes (Lightning relaunches the CLI)."""
    import subprocess
    import sys

    import yaml

    raw = yaml.safe_load(open("configs/tiny.yaml"))
    raw.update(strategy="ddp", devices=2, max_epochs=1)
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "ddp.ckpt"
    result = subprocess.run(
        [sys.executable, "-m", "predictor.cli", "train", "--config", str(config), "--out",
         str(out), "--data-dir", str(shared_data_dir), "--cache-dir", str(tmp_path / "cache"),
         "--log-dir", str(tmp_path / "logs")], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout or "ddp" in result.stderr
    assert Checkpoint.load(out).config.strategy == "ddp"


def test_api_adapt_predict_and_stored_device(tiny_run, tmp_path, monkeypatch) -> None:
    from predictor.api import Predictor
    from predictor.corpus import SPACES
    from predictor.errors import PredictorError, UnknownDeviceError

    checkpoint, root, config, data_dir = tiny_run
    monkeypatch.setenv("LATPRED_DEVICE_DIR", str(tmp_path / "devices"))
    space = SPACES["nb201"]
    archs = space.archs(data_dir)[:8]
    paths = []
    for i, arch in enumerate(archs):
        path = tmp_path / f"arch{i}.onnx"
        path.write_bytes(space.build_onnx(arch).SerializeToString())
        paths.append(path)
    table = load_device_task("nb201", HELD_OUT, data_dir).latency_ms
    predictor = Predictor(checkpoint)
    predictor.adapt("board", paths[:6], table[:6], save=True, info={"note": "test"})
    from predictor.device_store import load_device

    stored = load_device("board")[1]
    assert stored["strategy"] in set(STRATEGIES)
    assert stored["strategy"] == max(stored["blend"], key=stored["blend"].get)
    assert sum(stored["blend"].values()) == pytest.approx(1.0, abs=1e-3)
    ms = predictor.predict(paths[6:], device="board")
    assert ms.shape == (2,) and np.all(ms > 0)
    # a new session finds the stored device and predicts the same
    again = Predictor(Checkpoint.load(root / "tiny.ckpt"))
    assert np.allclose(again.predict(paths[6:], device="board"), ms, rtol=1e-5)
    with pytest.raises(UnknownDeviceError, match="board"):
        again.predict(paths[6:], device="nosuchboard")
    with pytest.raises(PredictorError, match="Too few"):
        predictor.adapt("small", paths[:3], table[:3])
    with pytest.raises(PredictorError, match="positive"):
        predictor.adapt("neg", paths[:6], [1, 2, -3, 4, 5, 6])
    with pytest.raises(PredictorError, match="positive"):
        predictor.adapt("nan", paths[:6], [1, 2, float("nan"), 4, 5, 6])
    with pytest.raises(PredictorError, match="strategy"):
        predictor.adapt("odd", paths[:6], table[:6], strategy="magic")


def test_a_time_capped_run_anneals_its_learning_rate() -> None:
    """The cosine schedule follows whichever budget runs out first: half of max_minutes
    gone counts as half the run even after few of max_epochs' steps."""
    import dataclasses
    import time

    import lightning as L

    from predictor.metalearner import MetaLearner, lr_factor

    assert lr_factor(0.025) == pytest.approx(0.5)  # warm-up
    assert lr_factor(0.05) == pytest.approx(1.0)
    assert lr_factor(1.0) == pytest.approx(0.05) and lr_factor(0.525) == pytest.approx(0.525)
    config = load_config("configs/tiny.yaml")
    learner = MetaLearner(dataclasses.replace(config, max_minutes=2.0))
    learner.trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False)
    assert learner.run_fraction(99, 1000) == pytest.approx(0.1)  # not started: steps only
    learner._started = time.monotonic() - 60
    assert learner.run_fraction(99, 1000) == pytest.approx(0.5, abs=0.01)
    assert learner.run_fraction(899, 1000) == pytest.approx(0.9)
    learner._started = time.monotonic() - 600
    assert learner.run_fraction(0, 1000) == 1.0
