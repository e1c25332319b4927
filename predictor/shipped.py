"""Embeddings of the training devices, shipped next to the checkpoint as default devices.

Two kinds of files:
- one per training device *and* dataset ("pixel3@nb201", "h200-torch-cuda@zoo4"), embedded
  from 20 of that dataset's measurements: the references new devices are ensembled with
  (`Predictor.known_devices`). A model set's embedding has seen one family of models only
  (zoo4: RNNs) and can be far off on others.
- one per model-set runtime ("h200-torch-cuda"), adapted ("auto") on every model set's
  measurements of it: the device to predict arbitrary models with.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from predictor.adaptation import DeviceState, adapt, adapt_with_residuals
from predictor.checkpoint import Checkpoint
from predictor.corpus import build_corpus
from predictor.datasets import load_device_task
from predictor.device_store import model_fingerprint, save_device
from predictor.graph_store import GraphStore

SHOTS = 20  # measurements per shipped device embedding
# A model set's measurements join a default device's when their CPU/GPU speed probe lies
# within this factor of the newest set's: this project's cloud CPU ran about 3x slower in
# its first sessions (zoo1, zoo2) than since, which no adaptation can tell from model cost.
SAME_HOST_FACTOR = 1.5


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


def default_device_sets(checkpoint: Checkpoint, root: Path | None = None
                        ) -> dict[str, list[str]]:
    """Model-set training device -> the model sets whose measurements of it make its
    default device: those timed on the host of the newest (`SAME_HOST_FACTOR`)."""
    from predictor.measurements import read_measurements_csv
    from predictor.model_sets import SPACE_PREFIX, set_dir

    sets: dict[str, list[str]] = defaultdict(list)
    for entry in checkpoint.devices:
        space, device = entry.split("/", 1)
        if space.startswith(SPACE_PREFIX):
            sets[device].append(space.removeprefix(SPACE_PREFIX))
    chosen = {}
    for device, names in sets.items():
        stamps = {}
        for name in names:
            _, info = read_measurements_csv(set_dir(name, root) / f"{device}.csv")
            probe = info.get("speed_probe_ms")
            stamps[name] = (info.get("date", ""), float(probe) if probe else None)
        newest_probe = max(stamps.values())[1]
        chosen[device] = [
            name for name in names
            if newest_probe is None or stamps[name][1] is None
            or max(stamps[name][1] / newest_probe, newest_probe / stamps[name][1])
            <= SAME_HOST_FACTOR]
    return chosen


def embed_default_device(checkpoint: Checkpoint, device: str, sets: list[str], *,
                         known: list[DeviceState], cache_root: str | Path | None = None
                         ) -> tuple[DeviceState, dict]:
    """Adapt ("auto", as `Predictor.adapt`) on every measurement of `device` in `sets`."""
    from predictor.api import DEFAULT_FINETUNE_STEPS
    from predictor.model_sets import load_model_set_task, model_set_specs, model_set_store

    stores, latency, families = [], [], set()
    for name in sets:
        task = load_model_set_task(name, device)
        store = model_set_store(name, cache_root=cache_root, progress=False,
                                batch=task.batch_size)
        stores.append(store.subset(task.pool))
        latency.append(task.latency_ms[task.pool])
        families |= {model_set_specs(name)[i].family for i in task.pool}
    store = GraphStore.concat(stores)
    log_y = torch.tensor(np.log(np.concatenate(latency)), dtype=torch.float32)
    config = checkpoint.config
    state, strategy, residuals = adapt_with_residuals(
        checkpoint.model, store.batch(range(len(store))), log_y, "auto",
        finetune_steps=config.finetune_steps or DEFAULT_FINETUNE_STEPS, lr=config.finetune_lr,
        known=known)
    info = {"device": device, "kind": "default device", "source": "model sets",
            "sets": list(sets), "families": sorted(families), "models": len(store),
            "batch_size": task.batch_size, "strategy": strategy,
            "cv_log_residuals": [round(float(r), 5) for r in residuals],
            "blend": {n: round(float(w), 4) for n, w in zip(state.labels, state.weights,
                                                             strict=True)}}
    return state, info


def export_training_devices(checkpoint: Checkpoint, folder: str | Path, *,
                            data_dir: str | Path | None = None,
                            cache_root: str | Path | None = None, seed: int = 0) -> list[Path]:
    """Write the embeddings of every training device of `checkpoint` to `folder`, then a
    default device per model-set runtime (see the module docstring)."""
    fingerprint = model_fingerprint(checkpoint.model)
    paths, known = [], []
    for entry in checkpoint.devices:
        space, device = entry.split("/", 1)
        state, info = embed_table_device(checkpoint.model, space, device, data_dir=data_dir,
                                         cache_root=cache_root, seed=seed)
        known.append(state)
        # One file per device *and* space: the same board ranks NB201 and FBNet differently.
        label = space.split(":", 1)[-1]  # "set:zoo1" -> "zoo1"
        paths.append(save_device(f"{device}@{label}", state, fingerprint, info, Path(folder)))
    return paths + export_default_devices(checkpoint, folder, known=known,
                                          cache_root=cache_root)


def export_default_devices(checkpoint: Checkpoint, folder: str | Path, *,
                           known: list[DeviceState] | None = None,
                           cache_root: str | Path | None = None) -> list[Path]:
    """Write a default device per model-set runtime of `checkpoint` to `folder`; `known`:
    the training devices' states (default: their files in `folder`)."""
    from predictor.device_store import load_device_file

    fingerprint = model_fingerprint(checkpoint.model)
    if known is None:
        known = [state for state, info in (load_device_file(path, fingerprint)
                                           for path in sorted(Path(folder).glob("*.json")))
                 if info.get("kind") == "training device"]
    paths = []
    for device, sets in tqdm(default_device_sets(checkpoint).items(), desc="default devices"):
        state, info = embed_default_device(checkpoint, device, sets, known=known,
                                           cache_root=cache_root)
        paths.append(save_device(device, state, fingerprint, info, Path(folder)))
    return paths
