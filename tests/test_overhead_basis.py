"""The overhead basis: computed from devices' refits, stored in checkpoints, used by the
untuned adaptations."""

from __future__ import annotations

import pytest
import torch

from predictor import model_zoo
from predictor.adaptation import HEAD_RIDGE_LAYER, adapt, overhead_features, predict
from predictor.checkpoint import Checkpoint
from predictor.config import TrainConfig
from predictor.device_store import model_fingerprint
from predictor.graph import extract_graph
from predictor.graph_store import GraphStore
from predictor.model import LatencyModel, ModelConfig
from predictor.overhead_basis import overhead_basis


@pytest.fixture(scope="module")
def store() -> GraphStore:
    graphs = [extract_graph(model_zoo.export(name, (1, 3, s, s)))
              for name in ("mobilenet_v2", "resnet18") for s in (32, 48, 64, 96, 128)]
    return GraphStore.from_graphs(graphs)


def _model(store: GraphStore) -> LatencyModel:
    """An untrained network whose overhead features do not depend on the device embedding
    (its z inputs zeroed; FiLM starts at zero): each made-up device below departs from it
    exactly along the directions it was made with."""
    torch.manual_seed(0)
    model = LatencyModel(ModelConfig())
    model.node_norm.fit(store.node_rows)
    model.graph_norm.fit(store.graph_attr)
    with torch.no_grad():
        model.overhead[0].weight[:, -model.config.hardware.dim:] = 0
    return model.eval()


def _device(model, batch, direction: torch.Tensor, offset: float) -> torch.Tensor:
    """log-latency of a made-up device: the network's prediction with the overhead's last
    layer moved by `direction`."""
    z = torch.zeros(model.config.hardware.dim)
    with torch.no_grad():
        h, _ = model.encode(batch)
        return (model.raw_log_latency(batch, h, z)
                + overhead_features(model, batch, z).float() @ direction + offset)


def test_the_basis_spans_the_directions_devices_refit_along(store, tmp_path) -> None:
    model = _model(store)
    batch = store.batch(range(len(store)))
    hidden = model.overhead[2].weight.shape[1]
    # two directions the graphs' overhead features vary along (10 graphs cannot tell apart
    # directions outside those)
    z = torch.zeros(model.config.hardware.dim)
    with torch.no_grad():
        phi = overhead_features(model, batch, z)
    phi = (phi - phi.mean(dim=0)).float()
    mixing = torch.randn(len(store), 2, generator=torch.Generator().manual_seed(1))
    span = torch.linalg.qr(phi.T @ mixing)[0].T
    rng = torch.Generator().manual_seed(2)
    devices = [(batch, _device(model, batch, torch.randn(2, generator=rng) @ span, 0.3 * k))
               for k in range(10)]
    basis = overhead_basis(model, devices, size=4)
    assert basis.shape == (4, hidden)
    torch.testing.assert_close(basis @ basis.T, torch.eye(4), atol=1e-5, rtol=0)
    # its first two directions span the planted plane (cosines of the principal angles ~1)
    cosines = torch.linalg.svdvals(basis[:2].double() @ span.double().T)
    assert float(cosines.min()) > 0.95
    with pytest.raises(ValueError, match="needs at least 12 devices"):
        overhead_basis(model, devices, size=12)

    # A new device in that plane, 6 measurements: adapting within the basis fits the
    # others far better than the plain amortised embedding, changing only that layer.
    target = _device(model, batch, torch.tensor([0.8, -0.5]) @ span, 1.0)
    support, rest = [0, 3, 5, 6, 8, 9], [1, 2, 4, 7]
    plain = adapt(model, store.batch(support), target[support])
    model.overhead_basis = basis
    fitted = adapt(model, store.batch(support), target[support])
    assert not plain.params and set(fitted.params) == {f"{HEAD_RIDGE_LAYER}.weight"}
    err = lambda s: float(((predict(model, store.batch(rest), s) - target[rest]) ** 2).mean())  # noqa: E731
    assert err(fitted) < 0.5 * err(plain)

    # The checkpoint stores the basis; a model without one keeps its fingerprint.
    path = tmp_path / "basis.ckpt"
    Checkpoint(model, TrainConfig(), ("set:zoo1/x",)).save(path)
    loaded = Checkpoint.load(path)
    torch.testing.assert_close(loaded.model.overhead_basis, basis)
    before = model_fingerprint(loaded.model)
    loaded.model.overhead_basis = torch.zeros(0, hidden)
    without = model_fingerprint(loaded.model)
    assert without != before
    del loaded.model._buffers["overhead_basis"]  # as a checkpoint from before stop 39
    assert model_fingerprint(loaded.model) == without
