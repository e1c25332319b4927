"""Latency datasets: measured device tables joined to the graph corpus, and meta-learning episodes.

A *device task* is one device's latency table in one search space, aligned by index
with that space's `GraphStore` at the device's batch size. An *episode* samples a
device task, a support set of k measured architectures and a query set, the unit of
meta-learning.

Architecture pools follow HELP's protocol (`predictor.tables.POOLS`): the test pool of
a space (NB201: indices 900..1899, FBNet: 4000..4999) never appears in training episodes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from predictor.graph_store import GraphBatch, GraphStore
from predictor.tables import POOLS, TEST_POOL


@dataclass(frozen=True)
class DeviceTask:
    """One device's measured latencies over a space's architectures.

    Attributes:
        latency_ms: (num_archs,) float64, index-aligned with the space's graph store.
        pool: architecture indices usable for this task (valid measurements only).
    """

    space: str
    device: str
    batch_size: int
    latency_ms: np.ndarray = field(repr=False)
    pool: np.ndarray = field(repr=False)
    # The host's speed probe when the table was timed (`predictor.measure.SpeedProbe`), or
    # None: tables of one machine timed on different days differ by the host's drift.
    speed_probe_ms: float | None = None
    # (num_archs,) family label of each architecture (a model set's "resnet", "vit", ...),
    # or None (a search space's cells are one family).
    families: np.ndarray | None = field(default=None, repr=False)

    @property
    def store_key(self) -> tuple[str, int]:
        return (self.space, self.batch_size)


def training_pool(space: str, latency_ms: np.ndarray) -> np.ndarray:
    """Indices a training episode may use: valid measurements outside the space's test pool."""
    from predictor.tables import valid_mask

    idx = np.flatnonzero(valid_mask(latency_ms))
    for pool in held_out_pools(space):
        idx = idx[(idx < pool.start) | (idx >= pool.stop)]
    return idx


def held_out_pools(space: str) -> tuple[range, ...]:
    """Index ranges no training episode may touch: the space's HELP test pool, and
    900..1899 in every space (the test pool the benchmarks use for NB201-style reports)."""
    return tuple({POOLS[space][1], TEST_POOL})


def load_device_task(space: str, device: str, data_dir: str | Path | None = None,
                     pool: str = "train") -> DeviceTask:
    """Load a device's table as a task; `pool` is "train" (no test pool) or "all"."""
    from predictor.devices import get_device
    from predictor.tables import load_latency_table, valid_mask

    table = load_latency_table(space, device, data_dir)
    batch = get_device(device).batch_size or 1
    indices = training_pool(space, table) if pool == "train" else np.flatnonzero(valid_mask(table))
    return DeviceTask(space, device, batch, table, indices)


@dataclass
class Episode:
    """A meta-learning episode: support and query graphs of one device, log-latency targets.

    Shapes:
        support_y: (k,) float32, log(latency in ms)
        query_y: (q,) float32
    """

    space: str
    device: str
    task_index: int
    support: GraphBatch
    support_y: torch.Tensor
    query: GraphBatch
    query_y: torch.Tensor
    support_ids: torch.Tensor
    query_ids: torch.Tensor

    def to(self, device: torch.device | str) -> Episode:
        def move(b: GraphBatch) -> GraphBatch:
            return GraphBatch(b.x.to(device), b.edge_index.to(device), b.batch.to(device),
                              b.graph_attr.to(device), b.num_graphs)

        return Episode(self.space, self.device, self.task_index, move(self.support),
                       self.support_y.to(device), move(self.query), self.query_y.to(device),
                       self.support_ids, self.query_ids)


class EpisodeDataset(torch.utils.data.Dataset):
    """Map-style dataset of episodes, deterministic in (seed, epoch, index).

    Args:
        tasks: device tasks to sample from (uniformly).
        stores: graph stores by (space, batch size).
        shots: support-set size k.
        queries: query-set size.
        episodes: episodes per epoch.
        seed: base seed; `set_epoch` varies episodes across epochs.
        max_shots: if set, k is drawn uniformly from shots..max_shots per episode.
        mix_prob: probability that an episode's device is a synthetic mixture of two
            training devices with the same graphs (task augmentation; see `mix_tasks`).
        task_weights: sampling weights of the tasks (default: uniform).
        cross_batch_prob: probability that an episode on a task with batch siblings
            (`batch_siblings`) takes its queries from a sibling, at the sibling's batch:
            the support's embedding and calibration must then carry to another batch.
        family_split_prob: probability that an episode on a task of several model
            families takes its support from a random part of the families only and its
            queries from the others: calibrated on some kinds of models, predict others
            (a user's 10 CNNs, then a transformer).
    """

    def __init__(self, tasks: Sequence[DeviceTask], stores: dict[tuple[str, int], GraphStore],
                 shots: int, queries: int, episodes: int, seed: int = 0,
                 max_shots: int | None = None, mix_prob: float = 0.0,
                 task_weights: Sequence[float] | None = None, cross_batch_prob: float = 0.0,
                 family_split_prob: float = 0.0):
        if not tasks:
            raise ValueError("EpisodeDataset needs at least one device task")
        self.tasks = list(tasks)
        self.stores = stores
        self.shots = shots
        self.queries = queries
        self.episodes = episodes
        self.seed = seed
        self.epoch = 0
        self.max_shots = max_shots
        self.mix_prob = mix_prob
        self.task_p = None
        if task_weights is not None:
            w = np.asarray(task_weights, dtype=np.float64)
            if w.shape != (len(self.tasks),) or (w < 0).any() or w.sum() <= 0:
                raise ValueError("task_weights: one non-negative weight per task, not all 0")
            self.task_p = w / w.sum()
        self.cross_batch_prob = cross_batch_prob
        self.siblings = batch_siblings(self.tasks) if cross_batch_prob > 0 else {}
        self.family_split_prob = family_split_prob

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.episodes

    def __getitem__(self, index: int) -> Episode:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        task_index = (int(rng.integers(len(self.tasks))) if self.task_p is None
                      else int(rng.choice(len(self.tasks), p=self.task_p)))
        task = self.tasks[task_index]
        siblings = self.siblings.get(task_index)
        if siblings and rng.random() < self.cross_batch_prob:
            other = self.tasks[siblings[int(rng.integers(len(siblings)))]]
            return self._cross_batch_episode(task, other, task_index, rng)
        if self.mix_prob > 0 and rng.random() < self.mix_prob:
            partners = [t for t in self.tasks if t.store_key == task.store_key and t is not task]
            if partners:
                task = mix_tasks(task, partners[int(rng.integers(len(partners)))],
                                 float(rng.uniform(0.2, 0.8)))
        shots = self._shots(rng)
        split = (family_split(task, rng) if self.family_split_prob > 0
                 and rng.random() < self.family_split_prob else None)
        if split is not None and split[0].size >= shots:
            support_pool, query_pool = split
            support = rng.choice(support_pool, size=shots, replace=False)
            query = rng.choice(query_pool, size=min(self.queries, query_pool.size),
                               replace=False)
            return make_episode(task, self.stores[task.store_key], support, query, task_index)
        chosen = rng.choice(task.pool, size=min(shots + self.queries, task.pool.size),
                            replace=False)
        support, query = chosen[:shots], chosen[shots:]
        return make_episode(task, self.stores[task.store_key], support, query, task_index)

    def _shots(self, rng: np.random.Generator) -> int:
        return self.shots if self.max_shots is None else int(
            rng.integers(self.shots, self.max_shots + 1))

    def _cross_batch_episode(self, task: DeviceTask, other: DeviceTask, task_index: int,
                             rng: np.random.Generator) -> Episode:
        """Support from `task`, queries (other architectures) from its batch sibling `other`."""
        shots = self._shots(rng)
        pool = np.intersect1d(task.pool, other.pool)
        chosen = rng.choice(pool, size=min(shots + self.queries, pool.size), replace=False)
        support = torch.as_tensor(chosen[:shots], dtype=torch.long)
        query = torch.as_tensor(chosen[shots:], dtype=torch.long)
        # the sibling's times at the support's host speed: batch scaling, not drift
        drift = (np.log(task.speed_probe_ms / other.speed_probe_ms)
                 if task.speed_probe_ms and other.speed_probe_ms else 0.0)
        return Episode(task.space, f"{task.device}->{other.device}", task_index,
                       self.stores[task.store_key].batch(support),
                       torch.from_numpy(np.log(task.latency_ms[support.numpy()])).float(),
                       self.stores[other.store_key].batch(query),
                       torch.from_numpy(np.log(other.latency_ms[query.numpy()]) + drift).float(),
                       support, query)


def family_split(task: DeviceTask, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """(support pool, query pool) of a family-split episode: the task's pool split by a
    random non-empty proper subset of its families; None for a task of one family."""
    if task.families is None:
        return None
    families = task.families[task.pool]
    names = np.unique(families)
    if names.size < 2:
        return None
    shown = rng.choice(names, size=int(rng.integers(1, names.size)), replace=False)
    in_support = np.isin(families, shown)
    return task.pool[in_support], task.pool[~in_support]


def hardware_key(task: DeviceTask) -> tuple[str, str]:
    """(space, hardware) of a task: the same for one device's tables at different
    batches (HELP's "1080ti_1" / "1080ti_32", a model set's "h200-torch-cuda" /
    "h200-torch-cuda-b32")."""
    from predictor.model_sets import SPACE_PREFIX

    if task.space.startswith(SPACE_PREFIX):
        return task.space, re.sub(r"-b\d+$", "", task.device)
    from predictor.devices import get_device

    return task.space, get_device(task.device).hardware


def batch_siblings(tasks: Sequence[DeviceTask]) -> dict[int, list[int]]:
    """For each task, the indices of the tasks of the same hardware and space at another
    batch (tasks without any are left out)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, task in enumerate(tasks):
        groups.setdefault(hardware_key(task), []).append(i)
    siblings = {i: [j for j in group if tasks[j].batch_size != tasks[i].batch_size]
                for group in groups.values() for i in group}
    return {i: js for i, js in siblings.items() if js}


def mix_tasks(a: DeviceTask, b: DeviceTask, weight: float) -> DeviceTask:
    """A synthetic device whose latency is `weight` of device a plus the rest of device b,
    each scaled to a median of 1: a plausible device between two real ones (latency is
    close to a sum of per-op costs, and a sum of two cost models is another one)."""
    lat = weight * a.latency_ms / np.median(a.latency_ms[a.pool]) + \
        (1 - weight) * b.latency_ms / np.median(b.latency_ms[b.pool])
    return DeviceTask(a.space, f"{a.device}+{b.device}", a.batch_size, lat,
                      np.intersect1d(a.pool, b.pool), families=a.families)


def make_episode(task: DeviceTask, store: GraphStore, support: np.ndarray, query: np.ndarray,
                 task_index: int = -1) -> Episode:
    """An episode of `task` with the given support and query architecture indices."""
    log_lat = torch.from_numpy(np.log(task.latency_ms)).float()
    support_t = torch.as_tensor(np.asarray(support), dtype=torch.long)
    query_t = torch.as_tensor(np.asarray(query), dtype=torch.long)
    return Episode(task.space, task.device, task_index, store.batch(support_t),
                   log_lat[support_t], store.batch(query_t), log_lat[query_t], support_t,
                   query_t)


def collate_episodes(episodes: list[Episode]) -> list[Episode]:
    """Episodes stay separate (each is its own task); the loader yields lists of them."""
    return episodes


def device_graph_dataset(task: DeviceTask, store: GraphStore, indices: Sequence[int] | None = None
                         ) -> Any:
    """A `torch_geometric.data.Dataset` of one device: item i is a `Data` with
    x, edge_index, graph_attr and y = log(latency ms), for architecture `indices[i]`."""
    from torch_geometric.data import Dataset

    idx = np.asarray(task.pool if indices is None else indices)

    class _DeviceGraphs(Dataset):
        def __init__(self) -> None:
            super().__init__(root=None)

        def len(self) -> int:
            return int(idx.size)

        def get(self, i: int):
            data = store.data(int(idx[i]))
            data.y = torch.tensor([np.log(task.latency_ms[idx[i]])], dtype=torch.float32)
            data.arch_index = int(idx[i])
            return data

    return _DeviceGraphs()
