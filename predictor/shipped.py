"""Embeddings of the training devices, shipped next to the checkpoint as default devices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from predictor.adaptation import DeviceState, adapt
from predictor.checkpoint import Checkpoint
from predictor.corpus import build_corpus
from predictor.datasets import load_device_task
from predictor.device_store import model_fingerprint, save_device

SHOTS = 20  # measurements per shipped device embedding


def embed_table_device(model, space: str, device: str, *, data_dir: str | Path | None = None,
                       cache_root: str | Path | None = None, shots: int = SHOTS, seed: int = 0
                       ) -> tuple[DeviceState, dict]:
    """Embed a device of the HELP tables (or of a model set, space "set:<name>") from
    `shots` of its training-pool measurements."""
    from predictor.model_sets import SPACE_PREFIX, load_model_set_task, model_set_store

    if space.startswith(SPACE_PREFIX):
        name = space.removeprefix(SPACE_PREFIX)
        task = load_model_set_task(name, device)
        store = model_set_store(name, cache_root=cache_root, progress=False,
                                batch=task.batch_size)
        shots = min(shots, task.pool.size)
    else:
        task = load_device_task(space, device, data_dir)
        store = build_corpus(space, batch_sizes=(task.batch_size,), data_dir=data_dir,
                             root=cache_root, progress=False)[task.batch_size]
    rng = np.random.default_rng(seed)
    support = np.sort(rng.choice(task.pool, size=shots, replace=False))
    y = torch.tensor(np.log(task.latency_ms[support]), dtype=torch.float32)
    state = adapt(model, store.batch(support), y)
    info = {"space": space, "device": device, "batch_size": task.batch_size,
            "source": "model set" if space.startswith(SPACE_PREFIX) else "help",
            "support_indices": support.tolist(), "kind": "training device"}
    return state, info


def export_training_devices(checkpoint: Checkpoint, folder: str | Path, *,
                            data_dir: str | Path | None = None,
                            cache_root: str | Path | None = None, seed: int = 0) -> list[Path]:
    """Write the embeddings of every training device of `checkpoint` to `folder`."""
    fingerprint = model_fingerprint(checkpoint.model)
    paths = []
    for entry in checkpoint.devices:
        space, device = entry.split("/", 1)
        state, info = embed_table_device(checkpoint.model, space, device, data_dir=data_dir,
                                         cache_root=cache_root, seed=seed)
        # One file per device *and* space: the same board ranks NB201 and FBNet differently.
        label = space.split(":", 1)[-1]  # "set:zoo1" -> "zoo1"
        paths.append(save_device(f"{device}@{label}", state, fingerprint, info, Path(folder)))
    return paths
