"""The latency network, adaptation functions and checkpoints, on real graphs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from predictor import model_zoo
from predictor.adaptation import adapt, predict, rank_loss
from predictor.checkpoint import Checkpoint, CheckpointError
from predictor.config import TrainConfig
from predictor.errors import SchemaMismatchError
from predictor.graph import extract_graph
from predictor.graph_store import GraphStore
from predictor.model import LatencyModel, ModelConfig, affine_calibration


@pytest.fixture(scope="module")
def store() -> GraphStore:
    graphs = [extract_graph(model_zoo.export(name, (1, 3, s, s)))
              for name in ("mobilenet_v2", "resnet18") for s in (32, 64, 96)]
    return GraphStore.from_graphs(graphs)


def _model(store: GraphStore) -> LatencyModel:
    torch.manual_seed(0)
    model = LatencyModel(ModelConfig())
    model.node_norm.fit(store.node_rows)
    model.graph_norm.fit(store.graph_attr)
    return model


def test_affine_calibration_is_ridge_least_squares() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=12)
    y = 2.0 * raw + 0.5 + rng.normal(scale=0.01, size=12)
    a, b = affine_calibration(torch.tensor(raw), torch.tensor(y), ridge=0.0)
    ref = np.polyfit(raw, y, 1)
    assert float(a) == pytest.approx(ref[0]) and float(b) == pytest.approx(ref[1])
    a1, _ = affine_calibration(torch.tensor(raw), torch.tensor(y), ridge=1e6)
    assert float(a1) == pytest.approx(1.0, abs=1e-3)  # strong ridge keeps the slope at 1


def test_forward_shapes_and_film_starts_as_identity(store) -> None:
    model = _model(store)
    batch = store.batch(range(len(store)))
    h, g = model.encode(batch)
    assert h.shape == (batch.x.shape[0], model.config.encoder.hidden)
    assert g.shape == (len(store), model.config.graph_dim)
    z = model.embed_device(g, torch.randn(len(store)))
    assert z.shape == (model.config.hardware.dim,)
    raw = model.raw_log_latency(batch, h, z)
    assert raw.shape == (len(store),) and torch.isfinite(raw).all()
    # zero-initialised FiLM: the device embedding only acts once trained
    raw0 = model.raw_log_latency(batch, h, torch.zeros_like(z))
    assert torch.allclose(raw - model.overhead(torch.cat([model.graph_norm(batch.graph_attr),
                          z.expand(len(store), -1)], 1)).squeeze(1),
                          raw0 - model.overhead(torch.cat([model.graph_norm(batch.graph_attr),
                          torch.zeros(len(store), z.numel())], 1)).squeeze(1), atol=1e-5)


@pytest.mark.parametrize("node_cost", ["softplus", "exp"])
def test_node_costs_sum_to_the_prediction_and_survive_a_checkpoint(store, tmp_path,
                                                                   node_cost) -> None:
    """Either node-cost map gives positive per-class costs whose sum is the prediction,
    and a checkpoint restores the map it was trained with."""
    from dataclasses import replace

    torch.manual_seed(0)
    model = LatencyModel(replace(ModelConfig(), node_cost=node_cost)).eval()
    model.node_norm.fit(store.node_rows)
    model.graph_norm.fit(store.graph_attr)
    batch = store.batch(range(len(store)))
    z = torch.randn(model.config.hardware.dim)
    with torch.no_grad():
        h, _ = model.encode(batch)
        raw = model.raw_log_latency(batch, h, z)
        costs, overhead = model.raw_log_latency(batch, h, z, by_class=True)
    assert (costs >= 0).all() and costs.sum() > 0
    torch.testing.assert_close(raw, torch.log(costs.sum(1) + 1e-6) + overhead)
    path = tmp_path / "m.ckpt"
    Checkpoint(model, TrainConfig(model=model.config), devices=("nb201/a",)).save(path)
    loaded = Checkpoint.load(path).model
    assert loaded.config.node_cost == node_cost
    with torch.no_grad():
        torch.testing.assert_close(loaded.raw_log_latency(batch, loaded.encode(batch)[0], z), raw)


def test_unknown_node_cost_is_a_clear_error() -> None:
    from predictor.errors import PredictorError

    with pytest.raises(PredictorError, match="node_cost"):
        ModelConfig(node_cost="relu")


def test_rank_loss_prefers_correct_order() -> None:
    y = torch.tensor([1.0, 2.0, 3.0])
    assert rank_loss(y, y) < rank_loss(-y, y)


def test_finetuning_reduces_support_error(store) -> None:
    model = _model(store)
    support = store.batch(range(len(store)))
    macs = store.graph_attr[:, 0]
    y = 0.8 * macs - 10 + 0.3 * torch.sin(3 * macs)  # a made-up device: log ms
    base = adapt(model, support, y)
    tuned = adapt(model, support, y, finetune_steps=30, lr=1e-2)
    err = lambda s: float(((predict(model, support, s) - y) ** 2).mean())  # noqa: E731
    assert tuned.params and err(tuned) < err(base)
    assert all(p.grad is None for p in model.parameters())  # the shared model is untouched


def test_checkpoint_roundtrip_and_errors(store, tmp_path) -> None:
    model = _model(store)
    ckpt = Checkpoint(model, TrainConfig(), devices=("nb201/a",))
    path = tmp_path / "m.ckpt"
    ckpt.save(path)
    loaded = Checkpoint.load(path)
    batch = store.batch([0, 1])
    z = torch.zeros(model.config.hardware.dim)
    with torch.no_grad():
        h, _ = model.encode(batch)
        h2, _ = loaded.model.encode(batch)
        assert torch.allclose(model.raw_log_latency(batch, h, z),
                              loaded.model.raw_log_latency(batch, h2, z))
    assert loaded.devices == ("nb201/a",)
    # another feature schema: clear error
    obj = torch.load(path, weights_only=False)
    obj["schema"]["version"] += 1
    torch.save(obj, tmp_path / "old.ckpt")
    with pytest.raises(SchemaMismatchError):
        Checkpoint.load(tmp_path / "old.ckpt")
    (tmp_path / "bad.ckpt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        Checkpoint.load(tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        Checkpoint.load(tmp_path / "missing.ckpt")


@pytest.mark.parametrize("layers", [1, 3])
def test_distinct_node_plan_gives_the_per_node_numbers(store, layers) -> None:
    """Inference computes each distinct node once (`UniquePlan`): same predictions as the
    per-node forward, with and without known row ids, for every adaptation kind."""
    from dataclasses import replace

    from predictor.adaptation import DeviceState, _call_raw
    from predictor.encoder import EncoderConfig

    torch.manual_seed(1)
    model = LatencyModel(replace(ModelConfig(), encoder=EncoderConfig(layers=layers))).eval()
    model.node_norm.fit(store.node_rows)
    model.graph_norm.fit(store.graph_attr)
    torch.nn.init.normal_(model.film_encoder.weight, std=0.3)  # conditioning matters
    ids = [0, 1, 2, 3, 4, 5, 0, 3]  # repeated graphs in one batch
    batch = store.batch(ids)
    support = store.batch([0, 2, 4, 5])
    y = torch.log(torch.tensor([2.0, 5.0, 9.0, 30.0]))
    tuned = adapt(model, support, y, finetune_steps=3)
    state = DeviceState(tuned.z, tuned.a, tuned.b, members=[tuned, adapt(model, support, y)])
    with torch.no_grad():
        h = model.encode(batch)[0]
        reference = torch.stack([m.a * _call_raw(model, m.params, batch, h, m.z) + m.b
                                 for m in state.members]).mean(0)
    plan = model.plan(batch)
    assert plan.levels[-1].own.numel() < batch.x.shape[0]  # something was shared
    for b in (batch, batch._replace(row_ids=None)):
        torch.testing.assert_close(predict(model, b, state), reference, rtol=1e-5, atol=1e-5)
    # graph embeddings through the plan equal the per-node ones too
    torch.testing.assert_close(model.encode(batch, plan)[1], model.encode(batch)[1],
                               rtol=1e-5, atol=1e-5)


def test_batches_without_gathered_features_predict_the_same(store) -> None:
    """`GraphStore.batch(gather=False)` carries unique rows + ids instead of x."""
    model = _model(store).eval()
    support = store.batch([0, 2, 4])
    state = adapt(model, support, torch.log(torch.tensor([2.0, 5.0, 9.0])))
    for ids in ([1], [1, 3, 5, 1]):
        lazy = store.batch(ids, gather=False)
        assert lazy.x is None
        torch.testing.assert_close(lazy.features(), store.batch(ids).x)
        torch.testing.assert_close(predict(model, lazy, state), predict(model, store.batch(ids),
                                                                        state))


def test_op_classes_of_real_models(store) -> None:
    """MobileNetV2 has depthwise and pointwise convolutions, ResNet-18 dense kxk ones;
    the classifier is a Gemm / MatMul ("matmul"); BN-free adds and pooling are "other"."""
    from predictor.model import OP_CLASSES, op_classes

    def counts(i: int) -> dict[str, int]:
        classes = op_classes(store.batch([i]).x)
        return {name: int((classes == k).sum()) for k, name in enumerate(OP_CLASSES)}

    mobilenet, resnet = counts(0), counts(3)
    assert mobilenet["depthwise"] == 17 and mobilenet["pointwise"] >= 34
    assert mobilenet["conv"] == 1  # the stem
    assert resnet["depthwise"] == 0 and resnet["conv"] >= 16 and resnet["pointwise"] == 3
    assert mobilenet["matmul"] == resnet["matmul"] == 1
    assert resnet["other"] > 0
    assert resnet["pool"] == 1 and mobilenet["pool"] == 0


def test_op_scale_fits_a_device_with_cheap_depthwise_kernels(store) -> None:
    """A device on which depthwise convolutions cost 4x less than the network predicts:
    fitting per-op-class scales on the support set finds a negative depthwise scale and
    cuts the error; it predicts the same through the distinct-node plan and survives the
    device-file round trip."""
    from predictor.adaptation import DeviceState, adapt_named, fit_op_scale
    from predictor.device_store import _state_from_json, _state_to_json
    from predictor.model import OP_CLASSES

    model = _model(store).eval()
    support = store.batch(range(len(store)))
    z = torch.zeros(model.config.hardware.dim)
    with torch.no_grad():
        h, _ = model.encode(support)
        costs, overhead = model.raw_log_latency(support, h, z, by_class=True)
        truth = torch.tensor([0.25 if c == "depthwise" else 1.0 for c in OP_CLASSES])
        y = torch.log(costs @ truth) + overhead + 1.5
        base = DeviceState(z, *model.calibrate(model.raw_log_latency(support, h, z), y))
    scaled = fit_op_scale(model, support, y, base, ridge=1e-4)
    err = lambda s: float(((predict(model, support, s) - y) ** 2).mean())  # noqa: E731
    assert err(scaled) < 0.1 * err(base)
    # only MobileNets have depthwise (and most pointwise) kernels: their scales go down,
    # the classes both families share barely move
    cls = {name: float(scaled.op_scale[k]) for k, name in enumerate(OP_CLASSES)}
    assert cls["depthwise"] < -0.1 and cls["pointwise"] < -0.1
    assert abs(cls["matmul"]) < abs(cls["depthwise"])
    torch.testing.assert_close(predict(model, store.batch([0, 1, 0]), scaled),
                               predict(model, store.batch([0, 1, 0], gather=False), scaled))
    again = _state_from_json(_state_to_json(scaled))
    torch.testing.assert_close(predict(model, support, again), predict(model, support, scaled))
    state, used = adapt_named(model, support, y, "opscale", finetune_steps=0)
    assert used == "opscale" and state.op_scale is not None


# Node costs per op class, log overheads and measured log-latencies of a real support set
# (5 CNNs + 5 transformers, 8 kept, timed at batch 32 on an H200) on which the strong-Wolfe
# line search tried log scales in the hundreds: exp() overflowed and adaptation crashed.
_DIVERGING_COSTS = [
    [22.61, 0.0, 0.0, 1.046, 4.051, 6.149], [38.503, 0.0, 0.0, 1.862, 4.93, 0.0],
    [64.042, 5.529, 0.0, 1.124, 32.816, 0.0], [2.292, 90.543, 70.745, 1.932, 11.593, 0.0],
    [3.71, 0.0, 0.0, 48.474, 39.729, 0.0], [2.697, 0.0, 0.0, 42.49, 40.415, 0.0],
    [2.343, 0.0, 0.0, 20.393, 33.836, 0.0], [0.0, 0.0, 0.0, 83.593, 60.246, 0.0]]
_DIVERGING_OVERHEAD = [2.2833, 3.1002, 1.9788, 0.1465, 0.9192, 0.6075, 2.3079, 0.5749]
_DIVERGING_Y = [-0.7322, 0.188, 1.7361, 1.9289, 0.765, 0.628, -0.4467, 1.199]


def test_op_scales_stay_finite_where_the_line_search_overshoots() -> None:
    from predictor.adaptation import fit_log_scales, log_scaled_cost

    costs, overhead = torch.tensor(_DIVERGING_COSTS), torch.tensor(_DIVERGING_OVERHEAD)
    y = torch.tensor(_DIVERGING_Y)
    scale = fit_log_scales(costs, overhead, y, calibration_ridge=1.0, ridge=0.03)
    assert scale is not None and torch.isfinite(scale).all()

    def loss(s: torch.Tensor) -> float:
        raw = log_scaled_cost(costs, s) + overhead
        a, b = affine_calibration(raw, y, 1.0)
        return float(((a * raw + b - y) ** 2).mean() + 0.03 * (s ** 2).sum())

    assert loss(scale) < loss(torch.zeros(6))
    # the stable form equals the direct one where that does not overflow ...
    s = torch.tensor([0.3, -1.0, 0.7, 0.0, 2.0, -0.5])
    torch.testing.assert_close(log_scaled_cost(costs, s), torch.log(costs @ torch.exp(s) + 1e-6))
    torch.testing.assert_close(log_scaled_cost(costs, None), torch.log(costs.sum(1) + 1e-6))
    # ... and stays finite where it does
    huge = log_scaled_cost(costs, torch.tensor([300.0, 0, 0, 0, 0, -300.0]))
    assert torch.isfinite(huge).all()
    assert float(huge[0]) == pytest.approx(300 + np.log(22.61), abs=1e-3)


def test_a_blend_shares_one_network_pass_between_plain_and_op_scaled_members(store) -> None:
    """A blend of the amortised member and an op-scaled one computes the node costs once
    per embedding and scales them per class: its prediction equals the weighted sum of the
    members' own direct network passes."""
    from predictor.adaptation import DeviceState
    from predictor.model import OP_CLASSES

    model = _model(store).eval()
    batch = store.batch(range(len(store)))
    z = torch.linspace(-1, 1, model.config.hardware.dim)
    scale = torch.linspace(-0.5, 0.5, len(OP_CLASSES))
    plain = DeviceState(z, torch.tensor(0.9), torch.tensor(0.2))
    scaled = DeviceState(z, torch.tensor(1.1), torch.tensor(-0.1), op_scale=scale)
    blend = DeviceState(z, plain.a, plain.b, members=[plain, scaled],
                        weights=torch.tensor([0.25, 0.75]), labels=["amortised", "opscale"])
    with torch.no_grad():
        h, _ = model.encode(batch)
        direct = [m.a * model.raw_log_latency(batch, h, z, op_scale=m.op_scale) + m.b
                  for m in (plain, scaled)]
    assert not torch.allclose(direct[0], direct[1], atol=1e-2)
    torch.testing.assert_close(predict(model, batch, blend), 0.25 * direct[0] + 0.75 * direct[1])
    torch.testing.assert_close(predict(model, batch, scaled), direct[1])


@pytest.fixture(scope="module")
def sized_store() -> GraphStore:
    """MobileNetV2 and ResNet-18 at six input sizes each: graphs whose kernel counts match
    within a family and whose work grows with the input."""
    graphs = [extract_graph(model_zoo.export(name, (1, 3, s, s)))
              for name in ("mobilenet_v2", "resnet18") for s in (32, 48, 64, 80, 96, 112)]
    return GraphStore.from_graphs(graphs)


def _kernel_device(batch) -> torch.Tensor:
    """Log-latency of a device that spends 20 us per kernel and runs each op class at its
    own speed (pooling as slow per flop as convolutions, depthwise 3x slower)."""
    from predictor.adaptation import kernel_sum_features
    from predictor.model import OP_CLASSES

    x = kernel_sum_features(batch)
    per_flop = {"depthwise": 3e-9, "pool": 1e-9}
    rate = torch.tensor([per_flop.get(c, 1e-9) for c in OP_CLASSES], dtype=torch.float64)
    n = len(OP_CLASSES)
    return torch.log(0.02 * x[:, :n].sum(1) + x[:, n:] @ rate + 0.3).float()


def test_kernel_sum_fits_a_device_that_sums_kernel_costs(sized_store) -> None:
    """On a device whose latency is a sum of per-kernel and per-flop costs by op class, the
    kernel sum fitted on 8 graphs predicts the other 4 within 5 %, far closer than the
    network's amortised adaptation; it survives the device-file round trip."""
    from predictor.adaptation import adapt_named, fit_kernel_sum
    from predictor.device_store import _state_from_json, _state_to_json

    model = _model(sized_store).eval()
    everything = sized_store.batch(range(len(sized_store)))
    y = _kernel_device(everything)
    support, held = [0, 2, 3, 5, 6, 8, 9, 11], [1, 4, 7, 10]
    kernel = fit_kernel_sum(model, sized_store.batch(support), y[support])
    network = adapt(model, sized_store.batch(support), y[support])
    rel = lambda s: float((predict(model, sized_store.batch(held), s) - y[held])  # noqa: E731
                          .exp().sub(1).abs().max())
    assert rel(kernel) < 0.05
    assert rel(kernel) < 0.2 * rel(network)
    again = _state_from_json(_state_to_json(kernel))
    torch.testing.assert_close(predict(model, everything, again), predict(model, everything, kernel))
    hybrid, used = adapt_named(model, sized_store.batch(support), y[support], "kernelsum+net",
                               finetune_steps=0)
    assert used == "kernelsum+net" and hybrid.kernel_base is not None
    assert rel(hybrid) < 0.05


def test_kernel_sum_leaves_graphs_beyond_its_measurements_to_the_network(sized_store) -> None:
    """Fitted on small ResNet-18s only, the kernel sum has never seen a depthwise
    convolution, nor as many kernels as a ResNet-50's: in a blend, their predictions come
    from the network member alone. A ResNet-18 at 112 px, 3x the work of the largest
    measured in the same kernels, is within its reach: the kernel sum extrapolates the work
    (within 5 % on a device that sums kernel costs) and the blend uses both members."""
    from predictor.adaptation import DeviceState, fit_kernel_sum

    model = _model(sized_store).eval()
    small, large, mobilenets = [6, 7, 8], [11], list(range(6))
    y = _kernel_device(sized_store.batch(small))
    kernel = fit_kernel_sum(model, sized_store.batch(small), y)
    network = adapt(model, sized_store.batch(small), y)
    blend = DeviceState(network.z, network.a, network.b, members=[kernel, network],
                        weights=torch.tensor([0.7, 0.3]), labels=["kernelsum", "amortised"])
    deeper = GraphStore.from_graphs([extract_graph(model_zoo.export("resnet50", (1, 3, 32, 32)))])
    for beyond in (sized_store.batch(mobilenets), deeper.batch([0])):
        torch.testing.assert_close(predict(model, beyond, blend), predict(model, beyond, network))
    big = sized_store.batch(large)
    assert float((predict(model, big, kernel) - _kernel_device(big)).abs().max()) < 0.05
    res = sized_store.batch(small + large)
    torch.testing.assert_close(predict(model, res, blend),
                               0.7 * predict(model, res, kernel) + 0.3 * predict(model, res, network))
    # A blend of kernel sums alone keeps a zero-weight network member (as `auto` does):
    # it predicts what no kernel sum reaches, and nothing else.
    only = DeviceState(network.z, network.a, network.b, members=[kernel, kernel, network],
                       weights=torch.tensor([0.6, 0.4, 0.0]),
                       labels=["kernelsum", "kernelsum+net", "amortised"])
    for beyond in (sized_store.batch(mobilenets), deeper.batch([0])):
        torch.testing.assert_close(predict(model, beyond, only), predict(model, beyond, network))
    torch.testing.assert_close(predict(model, res, only), predict(model, res, kernel))


def test_kernel_sum_leaves_far_more_work_per_class_to_the_network(sized_store) -> None:
    """Fitted on one ResNet-18 at 32 px, the kernel sum reaches the same kernels with 12x
    the work (112 px) but not with 49x (224 px): a cost per unit of work fitted where
    launches dominate is not extrapolated that far, nor to a graph with under a quarter of
    the support's least work. A class whose kernels did no work in the support set is
    unbounded in work (its weight per unit of work is 0)."""
    from predictor.adaptation import (
        KERNEL_SUM_LOW_WORK_REACH,
        KERNEL_SUM_WORK_REACH,
        DeviceState,
        fit_kernel_sum,
        kernel_sum_features,
    )
    from predictor.measure import floor_model
    from predictor.model import OP_CLASSES

    model = _model(sized_store).eval()
    support = sized_store.batch([6])
    y = _kernel_device(support)
    kernel = fit_kernel_sum(model, support, y)
    network = adapt(model, support, y)
    blend = DeviceState(network.z, network.a, network.b, members=[kernel, network],
                        weights=torch.tensor([0.7, 0.3]), labels=["kernelsum", "amortised"])
    work = kernel_sum_features(support)[0, len(OP_CLASSES):]
    reach = kernel.kernel_reach[len(OP_CLASSES):-1]
    torch.testing.assert_close(reach[work > 0], KERNEL_SUM_WORK_REACH * work[work > 0])
    assert bool((reach[work == 0] > 1e300).all())
    within = sized_store.batch([11])
    torch.testing.assert_close(predict(model, within, blend),
                               0.7 * predict(model, within, kernel)
                               + 0.3 * predict(model, within, network))
    huge = GraphStore.from_graphs([extract_graph(model_zoo.export("resnet18", (1, 3, 224, 224)))])
    torch.testing.assert_close(predict(model, huge.batch([0]), blend),
                               predict(model, huge.batch([0]), network))
    # far less work than any support graph: the kernel sum's constant would dominate
    tiny = GraphStore.from_graphs([extract_graph(floor_model())])
    assert float(kernel_sum_features(tiny.batch([0]))[0, len(OP_CLASSES):].sum()) < \
        float(work.sum()) / KERNEL_SUM_LOW_WORK_REACH
    torch.testing.assert_close(predict(model, tiny.batch([0]), blend),
                               predict(model, tiny.batch([0]), network))


def test_auto_blend_drops_fine_tuned_members_beyond_the_supports_mix_of_ops(sized_store) -> None:
    """Calibrated on CNNs, a blend predicts a transformer (nearly all its work in matmuls,
    far beyond the CNNs' share) from its untuned members alone; CNNs like the support
    keep the blend. The support's mix survives the device-file round trip."""
    from predictor.adaptation import DeviceState, graph_log_macs, graph_matmul_share
    from predictor.device_store import _state_from_json, _state_to_json
    from predictor.generator import export_spec, sample_specs

    model = _model(sized_store).eval()
    ids = [0, 2, 6, 8]
    support = sized_store.batch(ids)
    y = _kernel_device(support)
    plain = adapt(model, support, y)
    tuned = adapt(model, support, y, finetune_steps=5)
    blend = DeviceState(plain.z, plain.a, plain.b, members=[tuned, plain],
                        weights=torch.tensor([0.5, 0.5]), labels=["finetune", "amortised"],
                        local_errors=torch.ones(2, len(ids)), local_x=graph_log_macs(support),
                        local_mix=graph_matmul_share(support))
    spec = sample_specs(0, 1, kinds=("transformer",), small=True)[0]
    transformer = GraphStore.from_graphs([extract_graph(export_spec(spec))]).batch([0])
    assert float(graph_matmul_share(transformer)[0]) > 0.5 > float(blend.local_mix.max())
    assert not torch.allclose(predict(model, transformer, tuned),
                              predict(model, transformer, plain), atol=1e-3)
    torch.testing.assert_close(predict(model, transformer, blend),
                               predict(model, transformer, plain), atol=1e-3, rtol=0)
    cnns = sized_store.batch([1, 7])
    torch.testing.assert_close(predict(model, cnns, blend),
                               0.5 * predict(model, cnns, tuned) + 0.5 * predict(model, cnns, plain))
    again = _state_from_json(_state_to_json(blend))
    torch.testing.assert_close(predict(model, transformer, again),
                               predict(model, transformer, blend))


def test_auto_blend_moves_to_mix_free_members_beyond_the_supports_mix_of_ops(sized_store
                                                                              ) -> None:
    """Beyond the support's mix of ops the weight goes to the mix-free members, a reserve
    member (weight 0 within the mix) included, not to a linear fit of the CNNs' features;
    within the mix the reserve changes nothing. Reserves survive the device file."""
    from predictor.adaptation import (
        RESERVE_PREFIX,
        DeviceState,
        fit_linear,
        graph_log_macs,
        graph_matmul_share,
    )
    from predictor.device_store import _state_from_json, _state_to_json
    from predictor.generator import export_spec, sample_specs

    model = _model(sized_store).eval()
    ids = [0, 2, 6, 8]
    support = sized_store.batch(ids)
    y = _kernel_device(support)
    plain = adapt(model, support, y)
    linear = fit_linear(model, support, y)
    blend = DeviceState(plain.z, plain.a, plain.b, members=[linear, plain],
                        weights=torch.tensor([1.0, 0.0]),
                        labels=["linear", RESERVE_PREFIX + "amortised"],
                        local_errors=torch.ones(2, len(ids)), local_x=graph_log_macs(support),
                        local_mix=graph_matmul_share(support))
    spec = sample_specs(0, 1, kinds=("transformer",), small=True)[0]
    transformer = GraphStore.from_graphs([extract_graph(export_spec(spec))]).batch([0])
    assert not torch.allclose(predict(model, transformer, linear),
                              predict(model, transformer, plain), atol=1e-3)
    torch.testing.assert_close(predict(model, transformer, blend),
                               predict(model, transformer, plain), atol=1e-3, rtol=0)
    cnns = sized_store.batch([1, 7])
    torch.testing.assert_close(predict(model, cnns, blend), predict(model, cnns, linear))
    again = _state_from_json(_state_to_json(blend))
    torch.testing.assert_close(predict(model, transformer, again),
                               predict(model, transformer, blend))


def test_local_blend_weights_judge_graphs_beyond_the_support_on_its_nearest_models() -> None:
    """Candidate A is right on the small support models, B on the large: within the
    support's sizes both weigh the same (their mean errors are equal); beyond its largest
    model B takes over, the more the farther out; below its smallest the global weights
    stay (a fit to the smallest support model need not extrapolate down)."""
    from predictor.adaptation import local_blend_weights

    errors = torch.tensor([[0.05, 0.05, 0.10, 0.10], [0.10, 0.10, 0.05, 0.05]])
    support_x = torch.tensor([10.0, 11.0, 12.0, 13.0], dtype=torch.float64)
    x = torch.tensor([11.5, 10.0, 13.2, 14.0, 16.0, 7.0], dtype=torch.float64)
    w = local_blend_weights(errors, support_x, x)
    torch.testing.assert_close(w.sum(dim=0), torch.ones(len(x)))
    torch.testing.assert_close(w[:, :2], torch.full((2, 2), 0.5))  # within: global weights
    assert 0.5 < w[1, 2] < w[1, 3] < w[1, 4] and w[1, 4] > 0.95
    torch.testing.assert_close(w[:, 5], torch.full((2,), 0.5))


def test_blend_drops_a_kernel_sum_far_off_its_other_members(sized_store) -> None:
    """A kernel sum predicting a graph more than KERNEL_SUM_GUARD times off the blend's
    other members (their weighted mean, or the zero-weight fallback's prediction in a
    blend of kernel sums) leaves that graph to them; within the factor it keeps its
    weight."""
    from dataclasses import replace

    from predictor.adaptation import KERNEL_SUM_GUARD, DeviceState, fit_kernel_sum

    model = _model(sized_store).eval()
    small = [6, 7, 8]
    y = _kernel_device(sized_store.batch(small))
    kernel = fit_kernel_sum(model, sized_store.batch(small), y)
    network = adapt(model, sized_store.batch(small), y)
    res = sized_store.batch(small)
    gap = (predict(model, res, kernel) - predict(model, res, network)).abs().max()
    assert float(gap) < math.log(KERNEL_SUM_GUARD) / 4  # the fitted members agree
    for factor, agrees in ((2.0, True), (3 * KERNEL_SUM_GUARD, False)):
        off = replace(kernel, kernel_sum=kernel.kernel_sum * factor)
        for weights in ([0.7, 0.3], [1.0, 0.0]):
            blend = DeviceState(network.z, network.a, network.b, members=[off, network],
                                weights=torch.tensor(weights),
                                labels=["kernelsum", "amortised"])
            w = weights[0]
            expected = (w * predict(model, res, off) + (1 - w) * predict(model, res, network)
                        if agrees else predict(model, res, network))
            torch.testing.assert_close(predict(model, res, blend), expected)


def test_auto_with_kernel_sum_is_the_geometric_mean_of_its_two_adaptations(
        sized_store, tmp_path, monkeypatch) -> None:
    """"auto+kernelsum" (reference-set calibrations on a CPU) predicts the mean log-latency
    of "auto" and "kernelsum+net" fitted on the same measurements, keeps auto's candidates
    for the spread, and survives a save / load round trip."""
    from predictor.adaptation import AUTO_WITH_KERNEL_SUM, adapt_with_residuals, predict_with_spread
    from predictor.device_store import load_device, save_device

    model = _model(sized_store).eval()
    support = list(range(0, 12, 2))
    batch, rest = sized_store.batch(support), sized_store.batch(list(range(1, 12, 2)))
    y = _kernel_device(batch)
    parts = {name: adapt_with_residuals(model, batch, y, name, finetune_steps=2)
             for name in ("auto", "kernelsum+net", AUTO_WITH_KERNEL_SUM)}
    mixed, choice, residuals = parts[AUTO_WITH_KERNEL_SUM]
    assert mixed.labels == ["auto", "kernelsum+net"] and choice == parts["auto"][1]
    auto_pred = predict(model, rest, parts["auto"][0])
    kernel_pred = predict(model, rest, parts["kernelsum+net"][0])
    assert float((auto_pred - kernel_pred).abs().max()) < math.log(4)  # the guard stays out
    torch.testing.assert_close(predict(model, rest, mixed), (auto_pred + kernel_pred) / 2)
    torch.testing.assert_close(residuals, (parts["auto"][2] + parts["kernelsum+net"][2]) / 2)
    alternatives = [predict(model, rest, a) for a in parts["auto"][0].alternatives]
    spread = torch.stack([predict(model, rest, mixed), *alternatives]).std(dim=0, unbiased=False)
    torch.testing.assert_close(predict_with_spread(model, rest, mixed)[1], spread)
    monkeypatch.setenv("LATPRED_DEVICE_DIR", str(tmp_path))
    save_device("mixed", mixed, "fp", {})
    loaded, _ = load_device("mixed", "fp")
    torch.testing.assert_close(predict(model, rest, loaded), predict(model, rest, mixed))


def test_head_ridge_refits_the_overhead_layer_a_device_needs(store) -> None:
    """A device whose log-latency departs from the network's along the overhead MLP's
    hidden features: the "headridge" member refits that layer in closed form, cuts the
    error, changes no other weight, and its prediction survives the device-file round
    trip."""
    from predictor.adaptation import (
        HEAD_RIDGE_LAYER,
        DeviceState,
        _call_raw,
        adapt_named,
        fit_head_ridge,
        overhead_features,
    )
    from predictor.device_store import _state_from_json, _state_to_json

    model = _model(store).eval()
    support = store.batch(range(len(store)))
    z = torch.linspace(-1, 1, model.config.hardware.dim)
    with torch.no_grad():
        h, _ = model.encode(support)
        raw = model.raw_log_latency(support, h, z)
        phi = overhead_features(model, support, z).float()
        direction = torch.linspace(-1, 1, phi.shape[1])
        y = raw + 0.5 * (phi @ direction) / (phi @ direction).std() + 1.5
        base = DeviceState(z, *model.calibrate(raw, y))
    refit = fit_head_ridge(model, support, y, base, ridge=1e-6)
    err = lambda s: float(((predict(model, support, s) - y) ** 2).mean())  # noqa: E731
    assert err(refit) < 0.05 * err(base)
    assert set(refit.params) == {f"{HEAD_RIDGE_LAYER}.weight"}
    assert not torch.equal(refit.params[f"{HEAD_RIDGE_LAYER}.weight"],
                           model.overhead[2].weight)
    # a strong ridge leaves the layer (nearly) as trained
    kept = fit_head_ridge(model, support, y, base, ridge=1e9)
    torch.testing.assert_close(kept.params[f"{HEAD_RIDGE_LAYER}.weight"],
                               model.overhead[2].weight, atol=1e-6, rtol=0)
    again = _state_from_json(_state_to_json(refit))
    torch.testing.assert_close(predict(model, support, again), predict(model, support, refit))
    # in a blend it shares the untuned member's encoder pass and swaps the overhead only:
    # the same numbers as its own full pass
    blend = DeviceState(z, base.a, base.b, members=[base, refit],
                        weights=torch.tensor([0.4, 0.6]), labels=["amortised", "headridge"])
    with torch.no_grad():
        direct = [s.a * _call_raw(model, s.params, support, h, z) + s.b for s in (base, refit)]
    torch.testing.assert_close(predict(model, support, blend), 0.4 * direct[0] + 0.6 * direct[1])
    torch.testing.assert_close(predict(model, support, refit), direct[1])
    state, used = adapt_named(model, support, y, "headridge", finetune_steps=0)
    assert used == "headridge" and set(state.params) == {f"{HEAD_RIDGE_LAYER}.weight"}
