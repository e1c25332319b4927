"""Embeddings of the training devices, shipped next to the checkpoint as default devices.

Two kinds of files:
- one per training device *and* dataset ("pixel3@nb201", "h200-torch-cuda@zoo4"), embedded
  from 20 of that dataset's measurements: the references new devices are ensembled with
  (`Predictor.known_devices`). They hold one kind of model only (NB201 cells; zoo4: RNNs)
  and can be far off on others.
- one per board or runtime measured on several datasets ("pixel3": NB201 and FBNet;
  "h200-torch-cuda": every model set timing it), adapted ("auto") on all of them at once:
  the device to predict arbitrary models with."""

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
# A HELP board's default device adapts on this many random archs of each space's table.
TABLE_SHOTS = 100


def _task_and_store(space: str, device: str, data_dir: str | Path | None,
                    cache_root: str | Path | None):
    """(the device's `DeviceTask` on `space`, the space's graphs at the task's batch)."""
    from predictor.model_sets import SPACE_PREFIX, load_model_set_task, model_set_store

    if space.startswith(SPACE_PREFIX):
        task = load_model_set_task(space.removeprefix(SPACE_PREFIX), device)
        return task, model_set_store(space.removeprefix(SPACE_PREFIX), cache_root=cache_root,
                                     progress=False, batch=task.batch_size)
    task = load_device_task(space, device, data_dir)
    return task, build_corpus(space, batch_sizes=(task.batch_size,), data_dir=data_dir,
                              root=cache_root, progress=False)[task.batch_size]


def embed_table_device(model, space: str, device: str, *, data_dir: str | Path | None = None,
                       cache_root: str | Path | None = None, shots: int = SHOTS, seed: int = 0
                       ) -> tuple[DeviceState, dict]:
    """Embed a device of the HELP tables (or of a model set, space "set:<name>") from
    `shots` of its training-pool measurements."""
    from predictor.model_sets import SPACE_PREFIX

    task, store = _task_and_store(space, device, data_dir, cache_root)
    rng = np.random.default_rng(seed)
    support = np.sort(rng.choice(task.pool, size=min(shots, task.pool.size), replace=False))
    y = torch.tensor(np.log(task.latency_ms[support]), dtype=torch.float32)
    state = adapt(model, store.batch(support), y)
    info = {"space": space, "device": device, "batch_size": task.batch_size,
            "source": "model set" if space.startswith(SPACE_PREFIX) else "help",
            "support_indices": support.tolist(), "kind": "training device"}
    return state, info


def default_device_sources(checkpoint: Checkpoint, root: Path | None = None
                           ) -> dict[str, list[str]]:
    """Training device -> the datasets ("nb201", "set:zoo1", ...) its default device pools:
    a HELP board in both spaces' tables, or a model-set runtime's sets timed on the host of
    the newest (`SAME_HOST_FACTOR`). A board in one table only has no default device."""
    from predictor.measurements import read_measurements_csv, recorded_speed_probe
    from predictor.model_sets import SPACE_PREFIX, set_dir

    spaces: dict[str, list[str]] = defaultdict(list)
    for entry in checkpoint.devices:
        space, device = entry.split("/", 1)
        spaces[device].append(space)
    chosen = {}
    for device, names in spaces.items():
        sets = [n for n in names if n.startswith(SPACE_PREFIX)]
        if not sets:
            if len(names) > 1:
                chosen[device] = names
            continue
        stamps = {}
        for name in sets:
            _, info = read_measurements_csv(
                set_dir(name.removeprefix(SPACE_PREFIX), root) / f"{device}.csv")
            stamps[name] = (info.get("date", ""), recorded_speed_probe(info))
        newest_probe = max(stamps.values(), key=lambda stamp: stamp[0])[1]  # by date
        chosen[device] = [
            name for name in sets
            if newest_probe is None or stamps[name][1] is None
            or max(stamps[name][1] / newest_probe, newest_probe / stamps[name][1])
            <= SAME_HOST_FACTOR]
    return chosen


def recorded_call_floor(device: str, spaces: list[str], root: Path | None = None) -> float:
    """The least call floor (`latpred data model-set floor`) the CPU latency tables of
    `device` in `spaces` record, in ms; 0 where none records one (GPUs, HELP tables). The
    least: a lower bound must not lift a model that really ran that fast there."""
    from predictor.calibration import provenance_call_floor
    from predictor.measurements import read_measurements_csv
    from predictor.model_sets import SPACE_PREFIX, set_dir

    floors = []
    for space in spaces:
        if space.startswith(SPACE_PREFIX):
            _, info = read_measurements_csv(
                set_dir(space.removeprefix(SPACE_PREFIX), root) / f"{device}.csv")
            floor = provenance_call_floor(info)
            if floor:
                floors.append(floor)
    return min(floors, default=0.0)


def embed_default_device(checkpoint: Checkpoint, device: str, spaces: list[str], *,
                         known: list[DeviceState], data_dir: str | Path | None = None,
                         cache_root: str | Path | None = None, table_shots: int = TABLE_SHOTS,
                         seed: int = 0) -> tuple[DeviceState, dict]:
    """Adapt ("auto", as `Predictor.adapt`) on `device`'s measurements in `spaces`: every
    model of a model set, `table_shots` random archs of a HELP table's training pool."""
    from predictor.api import DEFAULT_FINETUNE_STEPS
    from predictor.model_sets import SPACE_PREFIX, model_set_specs

    rng = np.random.default_rng(seed)
    stores, latency, families = [], [], set()
    for space in spaces:
        task, store = _task_and_store(space, device, data_dir, cache_root)
        if space.startswith(SPACE_PREFIX):
            ids = task.pool
            specs = model_set_specs(space.removeprefix(SPACE_PREFIX))
            families |= {specs[i].family for i in ids}
        else:
            ids = np.sort(rng.choice(task.pool, size=min(table_shots, task.pool.size),
                                     replace=False))
            families.add(f"{space} archs")
        stores.append(store.subset(ids))
        latency.append(task.latency_ms[ids])
    store = GraphStore.concat(stores)
    log_y = torch.tensor(np.log(np.concatenate(latency)), dtype=torch.float32)
    config = checkpoint.config
    state, strategy, residuals = adapt_with_residuals(
        checkpoint.model, store.batch(range(len(store))), log_y, "auto",
        finetune_steps=config.finetune_steps or DEFAULT_FINETUNE_STEPS, lr=config.finetune_lr,
        known=known)
    # Adapted on latencies that include the runtime's floor (adapting on latencies less
    # it moved the ms-scale predictions, stop 38): the floor only bounds predictions below.
    state.min_ms = recorded_call_floor(device, spaces)
    info = {"device": device, "kind": "default device",
            "sources": [space.removeprefix(SPACE_PREFIX) for space in spaces],
            "families": sorted(families), "models": len(store),
            "batch_size": task.batch_size, "strategy": strategy,
            **({"min_ms": state.min_ms} if state.min_ms > 0 else {}),
            "cv_log_residuals": [round(float(r), 5) for r in residuals],
            "blend": {n: round(float(w), 4) for n, w in zip(state.labels, state.weights,
                                                             strict=True)}}
    return state, info


def export_training_devices(checkpoint: Checkpoint, folder: str | Path, *,
                            data_dir: str | Path | None = None,
                            cache_root: str | Path | None = None, seed: int = 0) -> list[Path]:
    """Write the embeddings of every training device of `checkpoint` to `folder`, then the
    default devices (see the module docstring)."""
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
                                          data_dir=data_dir, cache_root=cache_root)


def export_default_devices(checkpoint: Checkpoint, folder: str | Path, *,
                           known: list[DeviceState] | None = None,
                           data_dir: str | Path | None = None,
                           cache_root: str | Path | None = None) -> list[Path]:
    """Write the default devices of `checkpoint` (`default_device_sources`) to `folder`;
    `known`: the training devices' states (default: their files in `folder`)."""
    from predictor.device_store import load_device_file

    fingerprint = model_fingerprint(checkpoint.model)
    if known is None:
        known = [state for state, info in (load_device_file(path, fingerprint)
                                           for path in sorted(Path(folder).glob("*.json")))
                 if info.get("kind") == "training device"]
    paths = []
    for device, spaces in tqdm(default_device_sources(checkpoint).items(),
                               desc="default devices"):
        state, info = embed_default_device(checkpoint, device, spaces, known=known,
                                           data_dir=data_dir, cache_root=cache_root)
        paths.append(save_device(device, state, fingerprint, info, Path(folder)))
    return paths
