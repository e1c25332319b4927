"""The episode DataModule: meta-train devices for train, meta-valid for val, no test device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from predictor.datamodule import DataConfig, EpisodeDataModule
from predictor.datasets import Episode
from predictor.graph_store import GraphBatch
from predictor.splits import get_split

LIMIT = 200


@pytest.fixture(scope="module")
def module(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> EpisodeDataModule:
    config = DataConfig(spaces=("nb201",), limit_archs=LIMIT, episodes_per_epoch=8,
                        episodes_per_step=3, val_episodes=4, shots=5, queries=16, seed=3)
    dm = EpisodeDataModule(config, data_dir=shared_data_dir,
                           cache_root=tmp_path_factory.mktemp("cache"), progress=False)
    dm.setup("fit")
    return dm


def test_roles_follow_the_split(module: EpisodeDataModule) -> None:
    split = get_split("nb201", "help")
    train = [t.device for t in module.train_tasks]
    val = [t.device for t in module.val_tasks]
    assert train == list(split.train)
    assert val == list(split.valid)
    assert not set(train + val) & set(split.test)
    # no test device anywhere, not even in what the loaders sample from
    for loader in (module.train_dataloader(), module.val_dataloader()):
        devices = {t.device for t in loader.dataset.tasks}
        assert not devices & set(split.test)
    assert {t.device for t in module.train_dataloader().dataset.tasks} == set(split.train)
    assert {t.device for t in module.val_dataloader().dataset.tasks} == set(split.valid)
    # stores only at the batch sizes of those devices (CPUs and phones count as 1)
    assert sorted(module.stores) == [("nb201", 1), ("nb201", 32), ("nb201", 256)]
    for task in module.train_tasks + module.val_tasks:
        assert task.latency_ms.shape == (LIMIT,)
        assert task.pool.size > 0 and task.pool.max() < LIMIT
        assert len(module.stores[task.store_key]) == LIMIT


def check_batch(batch: GraphBatch, ids: torch.Tensor, store) -> None:
    n_nodes = store.num_nodes[ids]
    assert batch.num_graphs == ids.numel()
    assert batch.x.shape[0] == int(n_nodes.sum())
    assert torch.equal(torch.bincount(batch.batch, minlength=ids.numel()), n_nodes)
    assert batch.graph_attr.shape[0] == ids.numel()
    assert int(batch.edge_index.max()) < batch.x.shape[0]
    # every edge stays inside its graph
    assert torch.equal(batch.batch[batch.edge_index[0]], batch.batch[batch.edge_index[1]])


def test_loaders_yield_lists_of_episodes(module: EpisodeDataModule) -> None:
    config = module.config
    train = list(module.train_dataloader())
    assert [len(b) for b in train] == [3, 3, 2]  # 8 episodes, 3 per step
    val = list(module.val_dataloader())
    assert sum(len(b) for b in val) == config.val_episodes
    for episodes in train + val:
        assert isinstance(episodes, list)
        for ep in episodes:
            assert isinstance(ep, Episode)
            assert ep.support_ids.numel() == config.shots
            assert ep.query_ids.numel() == config.queries
            assert ep.support_y.shape == (config.shots,)
            assert ep.query_y.shape == (config.queries,)
            assert not set(ep.support_ids.tolist()) & set(ep.query_ids.tolist())
            task = next(t for t in module.train_tasks + module.val_tasks
                        if t.device == ep.device)
            store = module.stores[task.store_key]
            check_batch(ep.support, ep.support_ids, store)
            check_batch(ep.query, ep.query_ids, store)
            assert torch.isfinite(ep.support_y).all() and torch.isfinite(ep.query_y).all()


def test_episodes_reproducible_and_val_differs(module: EpisodeDataModule) -> None:
    def keys(loader) -> list[tuple]:
        return [(ep.device, ep.support_ids.tolist()) for b in loader for ep in b]

    assert keys(module.train_dataloader()) == keys(module.train_dataloader())
    assert keys(module.val_dataloader()) == keys(module.val_dataloader())
    assert keys(module.train_dataloader())[:4] != keys(module.val_dataloader())


def test_setup_is_idempotent(module: EpisodeDataModule) -> None:
    before = list(module.train_tasks)
    module.setup("validate")
    assert len(module.train_tasks) == len(before)
    assert all(a is b for a, b in zip(module.train_tasks, before, strict=True))
