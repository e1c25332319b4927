"""Lightning DataModule of meta-learning episodes over device tasks of one or more spaces.

Train episodes come from the split's meta-train devices, validation episodes (fixed,
for model selection) from its meta-valid devices. Test devices are never loaded here:
they belong to the benchmark scripts only.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from predictor.config import DataConfig
from predictor.corpus import build_corpus
from predictor.datasets import DeviceTask, EpisodeDataset, collate_episodes, load_device_task
from predictor.errors import PredictorError
from predictor.graph_store import GraphStore


class EpisodeDataModule(L.LightningDataModule):
    """Episodes of the meta-train (train) and meta-valid (val) devices."""

    def __init__(self, config: DataConfig, data_dir: str | Path | None = None,
                 cache_root: str | Path | None = None, progress: bool = True):
        super().__init__()
        self.config = config
        self.data_dir = data_dir
        self.cache_root = cache_root
        self.progress = progress
        self.stores: dict[tuple[str, int], GraphStore] = {}
        self.train_tasks: list[DeviceTask] = []
        self.val_tasks: list[DeviceTask] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_tasks:
            return
        from predictor.splits import get_split

        for space in self.config.spaces:
            split = get_split(space, self.config.splits.get(space, "help"))
            train = [load_device_task(space, d, self.data_dir) for d in split.train]
            val = [load_device_task(space, d, self.data_dir) for d in split.valid]
            batches = sorted({t.batch_size for t in train + val})
            stores = build_corpus(space, batch_sizes=batches, data_dir=self.data_dir,
                                  root=self.cache_root, limit=self.config.limit_archs,
                                  progress=self.progress)
            for b, store in stores.items():
                self.stores[(space, b)] = store
            if self.config.limit_archs is not None:
                train = [_limit(t, self.config.limit_archs) for t in train]
                val = [_limit(t, self.config.limit_archs) for t in val]
            self.train_tasks += train
            self.val_tasks += val
        self._setup_model_sets()

    def _task_weights(self) -> list[float] | None:
        """Per-task weights giving model-set devices `model_set_share` of the episodes."""
        from predictor.model_sets import SPACE_PREFIX

        share = self.config.model_set_share
        in_set = [t.space.startswith(SPACE_PREFIX) for t in self.train_tasks]
        if share is None or not any(in_set) or all(in_set):
            return None
        n_set = sum(in_set)
        n_other = len(in_set) - n_set
        return [share / n_set if s else (1 - share) / n_other for s in in_set]

    def _setup_model_sets(self) -> None:
        from predictor.model_sets import load_model_set_task, model_set_store

        for name, roles in self.config.model_sets.items():
            unknown = sorted(set(roles) - {"train", "valid"})
            if unknown:
                raise PredictorError(f"model_sets.{name}: unknown role(s) {unknown}; "
                                     "use train and valid")
            tasks = {role: [load_model_set_task(name, d) for d in roles.get(role, [])]
                     for role in ("train", "valid")}
            for task in tasks["train"] + tasks["valid"]:
                if task.store_key not in self.stores:
                    self.stores[task.store_key] = model_set_store(
                        name, cache_root=self.cache_root, progress=self.progress,
                        batch=task.batch_size)
            self.train_tasks += tasks["train"]
            self.val_tasks += tasks["valid"]

    def train_dataloader(self) -> DataLoader:
        c = self.config
        dataset = EpisodeDataset(self.train_tasks, self.stores, c.shots, c.queries,
                                 c.episodes_per_epoch, seed=c.seed, max_shots=c.max_shots,
                                 mix_prob=c.mix_prob, task_weights=self._task_weights(),
                                 cross_batch_prob=c.cross_batch_prob,
                                 family_split_prob=c.family_split_prob)
        if self.trainer is not None:
            dataset.set_epoch(self.trainer.current_epoch)
        return DataLoader(dataset, batch_size=c.episodes_per_step, shuffle=False,
                          collate_fn=collate_episodes, num_workers=c.num_workers)

    def val_dataloader(self) -> DataLoader:
        c = self.config
        tasks = self.val_tasks or self.train_tasks
        dataset = EpisodeDataset(tasks, self.stores, c.shots, c.queries, c.val_episodes,
                                 seed=c.seed + 10_000)
        return DataLoader(dataset, batch_size=c.episodes_per_step, shuffle=False,
                          collate_fn=collate_episodes, num_workers=c.num_workers)


def _limit(task: DeviceTask, n: int) -> DeviceTask:
    return replace(task, latency_ms=task.latency_ms[:n], pool=task.pool[task.pool < n],
                   families=None if task.families is None else task.families[:n])
