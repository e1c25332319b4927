"""The overhead basis: the few directions in which the training devices' own refits of the
overhead MLP's last layer depart from the trained layer.

Given all of a model set's measurements, refitting that layer alone (`fit_head_ridge`)
brings a training runtime from 17.8 % in-sample MAPE to 7.7 % (zoo1, ONNX Runtime 2
threads, stop 39): what the device embedding cannot express. Ten measurements cannot pin
the layer's 64 weights, but the refits of the 41 model-set training devices share a few
directions (the top 8 singular vectors carry 88 % of their squared norm), and 8
coefficients fitted in that span from 10 measurements are stable. When a checkpoint
carries a basis, every untuned adaptation applies that fit (`predictor.adaptation`,
`OVERHEAD_BASIS_RIDGE`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from tqdm import tqdm

from predictor.adaptation import HEAD_RIDGE_LAYER, adapt, fit_head_ridge
from predictor.checkpoint import Checkpoint
from predictor.graph_store import GraphBatch
from predictor.model import LatencyModel

BASIS_SIZE = 8
# Ridge of each training device's refit on all of its measurements (hundreds of models:
# the same as "headridge" on ten).
DEVICE_REFIT_RIDGE = 0.1


def overhead_basis(model: LatencyModel, devices: Iterable[tuple[GraphBatch, torch.Tensor]],
                   size: int = BASIS_SIZE) -> torch.Tensor:
    """(size, hidden): the top right-singular vectors of the devices' refits of the
    overhead's last layer. `devices`: (graphs, measured log-latency in ms) per device;
    each is first adapted without a basis (the model's own is ignored)."""
    plain = _without_basis(model)
    deltas = []
    for batch, log_latency in devices:
        state = adapt(plain, batch, log_latency)
        refit = fit_head_ridge(plain, batch, log_latency, state, ridge=DEVICE_REFIT_RIDGE)
        deltas.append((refit.params[f"{HEAD_RIDGE_LAYER}.weight"]
                       - plain.overhead[2].weight).detach().double().flatten())
    if len(deltas) < size:
        raise ValueError(f"an overhead basis of {size} needs at least {size} devices, "
                         f"got {len(deltas)}")
    _, _, vt = torch.linalg.svd(torch.stack(deltas), full_matrices=False)
    return vt[:size].float()


def _without_basis(model: LatencyModel) -> LatencyModel:
    if not model.overhead_basis.numel():
        return model
    import copy

    plain = copy.deepcopy(model)
    plain.overhead_basis = torch.zeros(0, plain.overhead_basis.shape[1])
    return plain


def add_overhead_basis(checkpoint: Checkpoint, size: int = BASIS_SIZE, *,
                       cache_root=None, progress: bool = True) -> Checkpoint:
    """`checkpoint` with the overhead basis of its model-set training devices (all their
    measurements) set on its model, and recorded in its info."""
    from predictor.model_sets import SPACE_PREFIX, load_model_set_task, model_set_store

    entries = [d for d in checkpoint.devices if d.startswith(SPACE_PREFIX)]
    devices = []
    for entry in tqdm(entries, desc="overhead basis", disable=not progress):
        set_name, device = entry.removeprefix(SPACE_PREFIX).split("/", 1)
        task = load_model_set_task(set_name, device)
        store = model_set_store(set_name, cache_root=cache_root, progress=False,
                                batch=task.batch_size)
        devices.append((store.batch(task.pool),
                        torch.tensor(np.log(task.latency_ms[task.pool]), dtype=torch.float32)))
    checkpoint.model.overhead_basis = overhead_basis(checkpoint.model, devices, size)
    checkpoint.info["overhead_basis"] = {"size": size, "devices": len(entries)}
    return checkpoint
