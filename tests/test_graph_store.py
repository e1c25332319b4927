"""GraphStore: compact storage and vectorised batching agree with PyG's own batching."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from predictor import model_zoo
from predictor.errors import DataError
from predictor.features import to_data
from predictor.graph import extract_graph
from predictor.graph_store import GraphStore, select_graphs


@pytest.fixture(scope="module")
def graphs():
    shapes = [(1, 3, 32, 32), (1, 3, 48, 48), (2, 3, 32, 32)]
    return [extract_graph(model_zoo.export("mobilenet_v2", s)) for s in shapes]


def test_batch_matches_pyg_batch(graphs) -> None:
    store = GraphStore.from_graphs(graphs)
    assert len(store) == 3
    # shared node configurations are stored once
    assert store.node_rows.shape[0] < sum(len(g.nodes) for g in graphs)
    for ids in ([0], [2, 0], [1, 2, 1]):
        ours = store.batch(ids)
        ref = Batch.from_data_list([to_data(graphs[i]) for i in ids])
        assert torch.equal(ours.x, ref.x)
        assert torch.equal(ours.edge_index, ref.edge_index)
        assert torch.equal(ours.batch, ref.batch)
        assert torch.equal(ours.graph_attr, ref.graph_attr)
        assert ours.num_graphs == len(ids)


def test_store_with_batch_size(graphs) -> None:
    store = GraphStore.from_graphs(graphs[:1], batch_size=2)
    assert torch.equal(store.batch([0]).x, to_data(graphs[2]).x)


def test_roundtrip_and_corruption(graphs) -> None:
    store = GraphStore.from_graphs(graphs, meta={"space": "zoo"})
    again = GraphStore.from_bytes(store.to_bytes())
    assert again.meta == {"space": "zoo"}
    assert torch.equal(again.batch([1]).x, store.batch([1]).x)
    data = store.to_bytes()
    with pytest.raises(DataError, match="corrupt"):
        GraphStore.from_bytes(data[: len(data) // 2], "cut.store")
    store.node_ptr[-1] += 1
    with pytest.raises(DataError, match="inconsistent"):
        GraphStore.from_bytes(store.to_bytes())


def test_data_item(graphs) -> None:
    store = GraphStore.from_graphs(graphs)
    item = store.data(1)
    ref = to_data(graphs[1])
    assert torch.equal(item.x, ref.x) and torch.equal(item.edge_index, ref.edge_index)


def test_select_graphs_equals_batching_the_subset(graphs) -> None:
    store = GraphStore.from_graphs(graphs)
    whole = store.batch([0, 1, 2])
    for ids in ([0], [1], [0, 2], [1, 2]):
        ours, ref = select_graphs(whole, ids), store.batch(ids)
        for name in ("x", "edge_index", "batch", "graph_attr"):
            assert torch.equal(getattr(ours, name), getattr(ref, name)), name
        assert ours.num_graphs == len(ids)


def test_batch_of_the_whole_store_equals_gathering_it(graphs) -> None:
    store = GraphStore.from_graphs(graphs)
    for gather in (True, False):
        whole, gathered = store.batch(range(len(store)), gather), store.batch([0, 1, 2], gather)
        for field in ("x", "edge_index", "batch", "graph_attr", "row_ids", "rows"):
            a, b = getattr(whole, field), getattr(gathered, field)
            assert (a is None and b is None) or torch.equal(a, b), field


def test_subset_and_concat_keep_every_graph_as_it_was(graphs) -> None:
    store = GraphStore.from_graphs(graphs)
    other = GraphStore.from_graphs(graphs[::-1])
    joined = GraphStore.concat([store.subset([2, 0]), other.subset([1])])
    assert len(joined) == 3
    for j, (source, i) in enumerate([(store, 2), (store, 0), (other, 1)]):
        got, want = joined.batch([j]), source.batch([i])
        assert torch.equal(got.x, want.x)
        assert torch.equal(got.edge_index, want.edge_index)
        assert torch.equal(got.graph_attr, want.graph_attr)
    assert len(store.subset([])) == 0
