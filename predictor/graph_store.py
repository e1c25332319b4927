"""Many operator graphs in compact form, with fast vectorised batching.

Search-space networks reuse the same few node configurations over and over (NB201's
15,625 graphs have a few hundred distinct nodes), so a store keeps the feature rows of
the *unique* nodes once and describes each graph by the row ids of its nodes plus its
edges. Batching a list of graphs is a handful of tensor gathers, no Python loop per
graph: this is what makes thousands of predictions per second possible.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, NamedTuple

import torch

from predictor.errors import DataError
from predictor.features import FEATURE_SCHEMA, check_schema, graph_features, node_features
from predictor.graph import OpGraph, OpNode, rebatch_node

STORE_FORMAT = 1


def _narrow(t: torch.Tensor) -> torch.Tensor:
    return t.int() if t.dtype == torch.long and (t.numel() == 0 or int(t.max()) < 2**31) else t


class GraphBatch(NamedTuple):
    """A batch of graphs in the layout of PyG's `Batch`.

    Shapes:
        x: (total_nodes, num_node_features) float32
        edge_index: (2, total_edges) long, indices into x
        batch: (total_nodes,) long, graph of each node
        graph_attr: (num_graphs, num_graph_features) float32
    """

    x: torch.Tensor
    edge_index: torch.Tensor
    batch: torch.Tensor
    graph_attr: torch.Tensor
    num_graphs: int
    # (total_nodes,) long: equal ids <=> equal rows of x (from a store's unique rows);
    # None when unknown. Lets inference compute each distinct node once.
    row_ids: torch.Tensor | None = None
    # (U, F) the store's unique rows, with x = rows[row_ids]; set by `GraphStore.batch(...,
    # gather=False)`, which leaves x None (inference reads only the rows it needs).
    rows: torch.Tensor | None = None

    def features(self, nodes: torch.Tensor | None = None) -> torch.Tensor:
        """Feature rows of `nodes` (default: all nodes), from x or from the unique rows."""
        if self.x is not None:
            return self.x if nodes is None else self.x[nodes]
        return self.rows[self.row_ids if nodes is None else self.row_ids[nodes]]


def select_graphs(batch: GraphBatch, ids: Sequence[int] | torch.Tensor) -> GraphBatch:
    """The sub-batch of graphs `ids` of `batch` (graph j of the result = graph ids[j])."""
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    position = torch.full((batch.num_graphs,), -1, dtype=torch.long)
    position[ids] = torch.arange(ids.numel())
    keep = position[batch.batch] >= 0
    new_index = torch.cumsum(keep.long(), 0) - 1
    edges = batch.edge_index[:, keep[batch.edge_index[0]]]
    return GraphBatch(None if batch.x is None else batch.x[keep], new_index[edges],
                      position[batch.batch[keep]], batch.graph_attr[ids], ids.numel(),
                      None if batch.row_ids is None else batch.row_ids[keep], batch.rows)


@dataclass
class GraphStore:
    """Graphs as unique node rows + per-graph row ids and edges (see module docstring).

    Shapes:
        node_rows: (U, F) float32, features of the unique nodes
        node_ids: (N,) long, the row of every node, graphs one after another
        node_ptr: (G + 1,) long, graph g's nodes are node_ids[node_ptr[g]:node_ptr[g + 1]]
        edge_index: (2, E) long, node indices local to each graph
        edge_ptr: (G + 1,) long
        graph_attr: (G, Fg) float32
    """

    node_rows: torch.Tensor
    node_ids: torch.Tensor
    node_ptr: torch.Tensor
    edge_index: torch.Tensor
    edge_ptr: torch.Tensor
    graph_attr: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.node_ptr.numel() - 1

    @property
    def num_nodes(self) -> torch.Tensor:
        """(G,) nodes per graph."""
        return self.node_ptr[1:] - self.node_ptr[:-1]

    @classmethod
    def from_graphs(cls, graphs: Sequence[OpGraph], meta: Mapping[str, Any] | None = None,
                    batch_size: int | None = None) -> GraphStore:
        """Build a store; with `batch_size`, every graph is first re-batched to it."""
        rows: dict[OpNode, int] = {}  # OpNode equality ignores names: equal nodes, one row
        node_ids: list[int] = []
        node_ptr = [0]
        edges: list[tuple[int, int]] = []
        edge_ptr = [0]
        attrs = []
        for graph in graphs:
            for node in graph.nodes:
                node_ids.append(rows.setdefault(node, len(rows)))
            node_ptr.append(len(node_ids))
            edges.extend(graph.edges)
            edge_ptr.append(len(edges))
            attrs.append(graph_features(graph, batch_size))
        unique = list(rows)
        if batch_size is not None:  # all graphs of a store share one batch size
            old = graphs[0].batch_size if graphs else batch_size
            unique = [rebatch_node(n, old, batch_size) for n in unique]
        return cls(
            node_rows=torch.tensor([node_features(n) for n in unique], dtype=torch.float32)
            .reshape(len(unique), FEATURE_SCHEMA.num_node_features),
            node_ids=torch.tensor(node_ids, dtype=torch.long),
            node_ptr=torch.tensor(node_ptr, dtype=torch.long),
            edge_index=torch.tensor(edges, dtype=torch.long).reshape(-1, 2).t().contiguous(),
            edge_ptr=torch.tensor(edge_ptr, dtype=torch.long),
            graph_attr=torch.tensor(attrs, dtype=torch.float32)
            .reshape(len(attrs), FEATURE_SCHEMA.num_graph_features),
            meta=dict(meta or {}),
        )

    def subset(self, ids: Sequence[int]) -> GraphStore:
        """The store of graphs `ids` (graph j = graph ids[j]), sharing the unique node rows."""
        ids = [int(i) for i in ids]
        nodes = [self.node_ids[self.node_ptr[i]:self.node_ptr[i + 1]] for i in ids]
        edges = [self.edge_index[:, self.edge_ptr[i]:self.edge_ptr[i + 1]] for i in ids]
        return GraphStore(
            node_rows=self.node_rows,
            node_ids=torch.cat(nodes) if nodes else self.node_ids[:0],
            node_ptr=torch.tensor([0, *accumulate(n.numel() for n in nodes)], dtype=torch.long),
            edge_index=torch.cat(edges, dim=1) if edges else self.edge_index[:, :0],
            edge_ptr=torch.tensor([0, *accumulate(e.shape[1] for e in edges)],
                                  dtype=torch.long),
            graph_attr=self.graph_attr[ids], meta=dict(self.meta))

    @classmethod
    def concat(cls, stores: Sequence[GraphStore]) -> GraphStore:
        """One store of every graph of `stores`, in order (node rows not deduplicated)."""
        row_offsets = list(accumulate([0] + [s.node_rows.shape[0] for s in stores]))
        node_offsets = list(accumulate([0] + [int(s.node_ptr[-1]) for s in stores]))
        edge_offsets = list(accumulate([0] + [int(s.edge_ptr[-1]) for s in stores]))
        return cls(
            node_rows=torch.cat([s.node_rows for s in stores]),
            node_ids=torch.cat([s.node_ids + int(o) for s, o in zip(stores, row_offsets,
                                                                     strict=False)]),
            node_ptr=torch.cat([torch.zeros(1, dtype=torch.long)]
                               + [s.node_ptr[1:] + int(o) for s, o in zip(stores, node_offsets,
                                                                          strict=False)]),
            edge_index=torch.cat([s.edge_index for s in stores], dim=1),
            edge_ptr=torch.cat([torch.zeros(1, dtype=torch.long)]
                               + [s.edge_ptr[1:] + int(o) for s, o in zip(stores, edge_offsets,
                                                                          strict=False)]),
            graph_attr=torch.cat([s.graph_attr for s in stores]))

    def batch(self, ids: Sequence[int] | torch.Tensor, gather: bool = True) -> GraphBatch:
        """Gather graphs `ids` into one `GraphBatch` (vectorised, no per-graph loop).

        `gather=False` skips materialising x (total nodes x features): the batch carries
        the unique rows and row ids instead (`GraphBatch.features`), enough for inference.
        """
        if isinstance(ids, range) and ids == range(len(self)):
            return self._whole(gather)
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        n_graphs = ids.numel()
        graph_range = torch.arange(n_graphs)
        n_start = self.node_ptr[ids]
        n_count = self.node_ptr[ids + 1] - n_start
        batch = torch.repeat_interleave(graph_range, n_count)
        new_start = torch.cumsum(n_count, 0) - n_count
        pos = torch.arange(batch.numel()) - new_start[batch] + n_start[batch]
        row_ids = self.node_ids[pos]
        x = self.node_rows[row_ids] if gather else None
        e_start = self.edge_ptr[ids]
        e_count = self.edge_ptr[ids + 1] - e_start
        e_batch = torch.repeat_interleave(graph_range, e_count)
        e_pos = torch.arange(e_batch.numel()) - (torch.cumsum(e_count, 0) - e_count)[e_batch] \
            + e_start[e_batch]
        edge_index = self.edge_index[:, e_pos] + new_start[e_batch]
        return GraphBatch(x, edge_index, batch, self.graph_attr[ids], n_graphs, row_ids,
                          None if gather else self.node_rows)

    def _whole(self, gather: bool) -> GraphBatch:
        """`batch` of every graph in order: the store's own tensors, edges made global
        (what a search-space call does with the store it just assembled)."""
        graph_range = torch.arange(len(self))
        batch = torch.repeat_interleave(graph_range, self.num_nodes)
        e_batch = torch.repeat_interleave(graph_range, self.edge_ptr[1:] - self.edge_ptr[:-1])
        edge_index = self.edge_index + self.node_ptr[e_batch]
        x = self.node_rows[self.node_ids] if gather else None
        return GraphBatch(x, edge_index, batch, self.graph_attr, len(self), self.node_ids,
                          None if gather else self.node_rows)

    def data(self, i: int):
        """Graph `i` as a PyG `Data` (x, edge_index, graph_attr)."""
        from torch_geometric.data import Data

        b = self.batch([i])
        return Data(x=b.x, edge_index=b.edge_index, graph_attr=b.graph_attr,
                    num_nodes=b.x.shape[0])

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save({
            "format": STORE_FORMAT,
            "schema": FEATURE_SCHEMA.to_dict(),
            "meta": self.meta,
            # indices are stored as int32 (half the size) and widened on load
            "tensors": {k: _narrow(getattr(self, k)) for k in (
                "node_rows", "node_ids", "node_ptr", "edge_index", "edge_ptr", "graph_attr")},
        }, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<graph store>") -> GraphStore:
        """Load a store; raises `DataError` for a corrupt file, `SchemaMismatchError` for an old one."""
        try:
            obj = torch.load(io.BytesIO(data), weights_only=False)
            tensors = {k: v.long() if v.dtype == torch.int32 else v
                       for k, v in obj["tensors"].items()}
            store = cls(**tensors, meta=obj["meta"])
            fmt, schema = obj["format"], obj["schema"]
        except Exception as exc:
            raise DataError(f"{name}: corrupt graph store ({type(exc).__name__}: {exc})") from None
        if fmt != STORE_FORMAT:
            raise DataError(f"{name}: graph store format {fmt}, expected {STORE_FORMAT}")
        check_schema(schema, what=f"graph store {name}")
        store.validate(name)
        return store

    def validate(self, name: str = "<graph store>") -> None:
        """Cheap structural checks that catch truncated or mixed-up tensors."""
        g = len(self)
        ok = (
            self.node_ptr[0] == 0 and self.node_ptr[-1] == self.node_ids.numel()
            and self.edge_ptr.numel() == g + 1 and self.edge_ptr[-1] == self.edge_index.shape[1]
            and self.graph_attr.shape[0] == g
            and (self.node_ids.numel() == 0 or int(self.node_ids.max()) < self.node_rows.shape[0])
            and bool(torch.isfinite(self.node_rows).all()) and bool(torch.isfinite(self.graph_attr).all())
        )
        if not ok:
            raise DataError(f"{name}: inconsistent graph store tensors")

    def summary(self) -> dict[str, float]:
        counts = self.num_nodes.float()
        return {
            "graphs": len(self),
            "unique_nodes": int(self.node_rows.shape[0]),
            "mean_nodes": float(counts.mean()) if len(self) else math.nan,
            "max_nodes": int(counts.max()) if len(self) else 0,
            "mean_edges": float((self.edge_ptr[1:] - self.edge_ptr[:-1]).float().mean())
            if len(self) else math.nan,
        }
