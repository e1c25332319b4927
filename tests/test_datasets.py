"""Device tasks, training pools and episodes over the real HELP tables and a small corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from predictor import corpus
from predictor.datasets import (
    DeviceTask,
    EpisodeDataset,
    batch_siblings,
    held_out_pools,
    load_device_task,
    make_episode,
    training_pool,
)
from predictor.graph_store import GraphStore
from predictor.tables import POOLS, SPACE_SIZES, load_latency_table, valid_mask

N_ARCHS = 60  # a small corpus keeps the module fast; tasks are cut to it
DEVICES = {"nb201": ("1080ti_1", "pixel3", "silver_4114"), "fbnet": ("1080ti_64", "raspi4")}


@pytest.fixture(scope="module")
def stores(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[tuple[str, int], GraphStore]:
    root = tmp_path_factory.mktemp("cache")
    out = {}
    for space in ("nb201", "fbnet"):
        by_batch = corpus.build_corpus(space, batch_sizes=(1, 64), data_dir=shared_data_dir,
                                       root=root, limit=N_ARCHS, workers=1, progress=False)
        out.update({(space, b): s for b, s in by_batch.items()})
    return out


def small_task(space: str, device: str, data_dir: Path) -> DeviceTask:
    """The device's task, cut to the first `N_ARCHS` architectures (those in `stores`)."""
    task = load_device_task(space, device, data_dir)
    assert task.batch_size in (1, 64)  # the batch sizes of `stores`
    return DeviceTask(space, device, task.batch_size, task.latency_ms[:N_ARCHS],
                      task.pool[task.pool < N_ARCHS])


# ----------------------------------------------------------------------------- pools


@pytest.mark.parametrize("space", ["nb201", "fbnet"])
def test_training_pool_excludes_test_pools(shared_data_dir: Path, space: str) -> None:
    test_pool = POOLS[space][1]
    assert {range(900, 1900), test_pool} <= set(held_out_pools(space))
    for device in DEVICES[space]:
        table = load_latency_table(space, device, shared_data_dir)
        pool = training_pool(space, table)
        assert pool.size > 0 and np.all(np.diff(pool) > 0)
        assert not np.any((pool >= 900) & (pool < 1900)), device
        assert not np.any((pool >= test_pool.start) & (pool < test_pool.stop)), device
        # nothing else is dropped: every valid index outside the held-out pools is in
        held_out = np.zeros(SPACE_SIZES[space], dtype=bool)
        for r in held_out_pools(space):
            held_out[r.start:r.stop] = True
        assert np.array_equal(pool, np.flatnonzero(valid_mask(table) & ~held_out))
        assert np.array_equal(load_device_task(space, device, shared_data_dir).pool, pool)


@pytest.mark.parametrize("device", ["pixel3", "raspi4"])
def test_training_pool_drops_near_zero_entries(shared_data_dir: Path, device: str) -> None:
    table = load_latency_table("nb201", device, shared_data_dir)
    near_zero = np.flatnonzero(table < 0.01 * np.median(table))
    assert near_zero.size > 150  # ~200 failed measurements in HELP's data
    near_zero_train = near_zero[(near_zero < 900) | (near_zero >= 1900)]
    assert near_zero_train.size > 0
    assert not np.isin(near_zero, training_pool("nb201", table)).any()
    assert not np.isin(near_zero, load_device_task("nb201", device, shared_data_dir,
                                                   pool="all").pool).any()


# ----------------------------------------------------------------------------- episodes


def make_dataset(data_dir: Path, stores: dict, seed: int = 0, episodes: int = 6
                 ) -> EpisodeDataset:
    tasks = [small_task(s, d, data_dir) for s in ("nb201", "fbnet") for d in DEVICES[s]]
    return EpisodeDataset(tasks, stores, shots=5, queries=12, episodes=episodes, seed=seed)


def episode_key(ep) -> tuple:
    return (ep.task_index, tuple(ep.support_ids.tolist()), tuple(ep.query_ids.tolist()))


def test_episodes_deterministic_under_seed(shared_data_dir: Path, stores: dict) -> None:
    a, b = make_dataset(shared_data_dir, stores), make_dataset(shared_data_dir, stores)
    first = [episode_key(a[i]) for i in range(len(a))]
    assert first == [episode_key(b[i]) for i in range(len(b))]
    assert first == [episode_key(a[i]) for i in range(len(a))]  # re-reading: the same
    again = a[2]
    assert torch.equal(again.support.x, b[2].support.x)
    assert torch.equal(again.query_y, b[2].query_y)
    # another seed, or another epoch, gives other episodes
    other_seed = make_dataset(shared_data_dir, stores, seed=1)
    assert first != [episode_key(other_seed[i]) for i in range(len(other_seed))]
    a.set_epoch(1)
    assert first != [episode_key(a[i]) for i in range(len(a))]
    assert len({episode_key(a[i]) for i in range(len(a))}) == len(a)  # episodes differ


def test_episode_contents(shared_data_dir: Path, stores: dict) -> None:
    dataset = make_dataset(shared_data_dir, stores, episodes=12)
    seen_tasks = set()
    for i in range(len(dataset)):
        ep = dataset[i]
        task = dataset.tasks[ep.task_index]
        seen_tasks.add(ep.task_index)
        assert (ep.space, ep.device) == (task.space, task.device)
        support, query = ep.support_ids.numpy(), ep.query_ids.numpy()
        assert support.size == 5 and query.size == 12
        assert not set(support) & set(query)
        assert np.isin(np.concatenate([support, query]), task.pool).all()
        for ids, y in ((support, ep.support_y), (query, ep.query_y)):
            expected = torch.tensor(np.log(task.latency_ms[ids]), dtype=torch.float32)
            assert y.dtype == torch.float32 and torch.allclose(y, expected)
            direct = load_latency_table(task.space, task.device, shared_data_dir)[ids]
            assert np.allclose(np.exp(y.numpy()), direct, rtol=1e-6)
        store = stores[task.store_key]
        assert torch.equal(ep.support.x, store.batch(support).x)
        assert ep.support.num_graphs == 5 and ep.query.num_graphs == 12
    assert len(seen_tasks) > 1


def test_make_episode_explicit_indices(shared_data_dir: Path, stores: dict) -> None:
    task = small_task("nb201", "silver_4114", shared_data_dir)
    ep = make_episode(task, stores[task.store_key], np.array([3, 1]), np.array([7]))
    assert ep.support_ids.tolist() == [3, 1] and ep.query_ids.tolist() == [7]
    assert torch.allclose(ep.support_y, torch.log(torch.tensor(task.latency_ms[[3, 1]])).float())


def test_empty_task_list_is_rejected(stores: dict) -> None:
    with pytest.raises(ValueError, match="at least one device task"):
        EpisodeDataset([], stores, shots=5, queries=5, episodes=1)


def test_cross_batch_episodes_query_the_same_hardware_at_another_batch(
        shared_data_dir: Path, stores: dict) -> None:
    tasks = [small_task("fbnet", d, shared_data_dir) for d in ("1080ti_1", "1080ti_64", "raspi4")]
    assert batch_siblings(tasks) == {0: [1], 1: [0]}  # raspi4 has one batch only
    ds = EpisodeDataset(tasks, stores, shots=5, queries=10, episodes=30, seed=3,
                        cross_batch_prob=1.0)
    crossed = 0
    for i in range(len(ds)):
        ep = ds[i]
        task = tasks[ep.task_index]
        assert torch.allclose(ep.support_y, torch.log(torch.tensor(
            task.latency_ms[ep.support_ids.numpy()])).float())
        assert not set(ep.support_ids.tolist()) & set(ep.query_ids.tolist())
        if task.device == "raspi4":
            assert ep.device == "raspi4"
            continue
        crossed += 1
        other = tasks[1 - ep.task_index]
        assert ep.device == f"{task.device}->{other.device}"
        assert torch.allclose(ep.query_y, torch.log(torch.tensor(
            other.latency_ms[ep.query_ids.numpy()])).float())
        # the queries are the sibling's graphs, at its batch (MACs scale with it)
        expected = stores[("fbnet", other.batch_size)].batch(ep.query_ids)
        assert torch.equal(ep.query.graph_attr, expected.graph_attr)
        assert not torch.equal(ep.query.graph_attr,
                               stores[("fbnet", task.batch_size)].batch(ep.query_ids).graph_attr)
    assert crossed > 0
    plain = EpisodeDataset(tasks, stores, shots=5, queries=10, episodes=30, seed=3)
    assert all("->" not in plain[i].device for i in range(len(plain)))
    # tables timed on days of different host speed: the queries come at the support's speed
    from dataclasses import replace

    slow, fast = replace(tasks[0], speed_probe_ms=0.4), replace(tasks[1], speed_probe_ms=0.2)
    ep = EpisodeDataset([slow, fast], stores, shots=5, queries=10, episodes=1, seed=3,
                        cross_batch_prob=1.0)[0]
    other = fast if ep.task_index == 0 else slow
    drift = np.log((slow if ep.task_index == 0 else fast).speed_probe_ms / other.speed_probe_ms)
    assert torch.allclose(ep.query_y, torch.tensor(
        np.log(other.latency_ms[ep.query_ids.numpy()]) + drift).float())


def test_family_split_episodes_calibrate_on_some_families_and_query_the_others(
        shared_data_dir: Path, stores: dict) -> None:
    from dataclasses import replace

    from predictor.datasets import family_split

    base = small_task("fbnet", "raspi4", shared_data_dir)
    labels = np.array(["cnn", "vit", "mixer"])[np.arange(base.latency_ms.size) % 3]
    task = replace(base, families=labels)
    ds = EpisodeDataset([task], stores, shots=5, queries=10, episodes=40, seed=1,
                        family_split_prob=1.0)
    shown_counts = set()
    for i in range(len(ds)):
        ep = ds[i]
        support_families = set(labels[ep.support_ids.numpy()])
        query_families = set(labels[ep.query_ids.numpy()])
        assert support_families and query_families
        assert not support_families & query_families  # queries: families the support lacks
        shown_counts.add(len(support_families))
        assert torch.allclose(ep.query_y, torch.log(torch.tensor(
            task.latency_ms[ep.query_ids.numpy()])).float())
    assert shown_counts <= {1, 2} and len(shown_counts) == 2  # any proper subset
    # a task of one family (a search space's cells) has no split: plain episodes
    assert family_split(base, np.random.default_rng(0)) is None
    plain = EpisodeDataset([base], stores, shots=5, queries=10, episodes=5, seed=1,
                           family_split_prob=1.0)
    assert plain[0].support_ids.numel() == 5 and plain[0].query_ids.numel() == 10


def test_model_set_tasks_carry_their_models_families() -> None:
    from predictor.model_sets import load_model_set_task, model_set_specs

    task = load_model_set_task("zoo1", "epyc-ort-2t")
    assert list(task.families) == [s.family for s in model_set_specs("zoo1")]
    assert {"resnet", "vit"} <= set(task.families)


# ----------------------------------------------------------------------------- PyG dataset


def test_device_graph_dataset_matches_store(shared_data_dir: Path, stores: dict) -> None:
    from predictor.datasets import device_graph_dataset

    task = small_task("fbnet", "1080ti_64", shared_data_dir)
    store = stores[task.store_key]
    dataset = device_graph_dataset(task, store)
    assert len(dataset) == task.pool.size
    for i in (0, 7, len(dataset) - 1):
        data = dataset[i]
        arch = int(task.pool[i])
        assert data.arch_index == arch
        ref = store.batch([arch])
        assert torch.equal(data.x, ref.x)
        assert torch.equal(data.edge_index, ref.edge_index)
        assert torch.equal(data.graph_attr, ref.graph_attr)
        assert data.num_nodes == int(store.num_nodes[arch])
        assert data.y.shape == (1,)
        assert torch.allclose(data.y, torch.tensor([np.log(task.latency_ms[arch])]).float())
    picked = device_graph_dataset(task, store, indices=[4, 2])
    assert len(picked) == 2 and picked[1].arch_index == 2
