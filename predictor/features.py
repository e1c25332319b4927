"""Featurisation: an `OpGraph` to a `torch_geometric.data.Data` under a named, versioned schema.

The schema (op vocabulary, feature names, their order) travels with every checkpoint;
`check_schema` turns a mismatch into a clear error instead of silently wrong inputs.

Numeric features are log-scaled (`log1p`) so that MACs of 1e3 and 1e10 live on one
scale; standardisation is left to the model, which learns it from training data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from predictor.errors import SchemaMismatchError
from predictor.graph import OpGraph, OpNode
from predictor.ops import ACTIVATIONS, OP_VOCABULARY, OTHER

if TYPE_CHECKING:
    from torch_geometric.data import Data

_NUMERIC_NODE_FEATURES: tuple[str, ...] = (
    "fused_bn", "fused_bias",
    "log_macs", "log_other_flops", "log_params", "log_weight_bytes", "log_read_bytes",
    "log_write_bytes",
    "kernel_h", "kernel_w", "stride_h", "stride_w", "dilation_h", "dilation_w",
    "log_groups", "depthwise",
    "in_rank", "in_d0", "in_d1", "in_d2", "in_d3", "log_in_numel",
    "out_rank", "out_d0", "out_d1", "out_d2", "out_d3", "log_out_numel",
)
GRAPH_FEATURES: tuple[str, ...] = (
    "log_macs", "log_params", "log_other_flops", "log_memory_bytes", "log_weight_bytes",
    "log_activation_bytes", "log_nodes", "log_depth", "log_batch", "log_input_resolution",
    "log_input_numel", "log_conv_nodes", "log_matmul_nodes", "log_depthwise_nodes",
)


@dataclass(frozen=True)
class FeatureSchema:
    """Names and order of node and graph features; stored in every checkpoint."""

    name: str
    version: int
    op_vocabulary: tuple[str, ...]
    activations: tuple[str, ...]
    node_features: tuple[str, ...]
    graph_features: tuple[str, ...]

    @property
    def num_node_features(self) -> int:
        return len(self.node_features)

    @property
    def num_graph_features(self) -> int:
        return len(self.graph_features)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


FEATURE_SCHEMA = FeatureSchema(
    name="latpred-opgraph",
    version=1,
    op_vocabulary=OP_VOCABULARY,
    activations=ACTIVATIONS,
    node_features=(
        *(f"op={op}" for op in (*OP_VOCABULARY, OTHER)),
        *(f"act={a}" for a in ("none", *ACTIVATIONS)),
        *_NUMERIC_NODE_FEATURES,
    ),
    graph_features=GRAPH_FEATURES,
)
_OP_INDEX = {op: i for i, op in enumerate(OP_VOCABULARY)}


def op_types_in(rows: torch.Tensor) -> list[str]:
    """Op types (vocabulary names, or "other") and fused activations present in raw node
    feature rows (N, F)."""
    names = (*OP_VOCABULARY, OTHER, "", *ACTIVATIONS)  # "" = the "act=none" column
    present = (rows[:, :len(names)] > 0.5).any(dim=0).tolist() if rows.numel() else []
    return sorted({name for name, seen in zip(names, present, strict=False) if seen and name})
_ACT_OFFSET = len(OP_VOCABULARY) + 1
_ACT_INDEX = {a: i + 1 for i, a in enumerate(ACTIVATIONS)}
_NUM_OFFSET = _ACT_OFFSET + len(ACTIVATIONS) + 1


def check_schema(stored: Mapping[str, Any] | FeatureSchema, what: str = "checkpoint") -> None:
    """Raise `SchemaMismatchError` unless `stored` equals the package's feature schema."""
    stored_dict = stored.to_dict() if isinstance(stored, FeatureSchema) else dict(stored)
    current = FEATURE_SCHEMA.to_dict()
    if stored_dict == current:
        return
    differs = sorted(k for k in current if stored_dict.get(k) != current[k])
    raise SchemaMismatchError(
        f"The {what} uses feature schema {stored_dict.get('name')!r} v{stored_dict.get('version')}, "
        f"but this package uses {current['name']!r} v{current['version']} (differs in {differs}); "
        "retrain it or install the latpred version it was made with"
    )


def _log(x: float) -> float:
    return math.log1p(max(float(x), 0.0))


def _dims(shape: tuple[int, ...]) -> list[float]:
    """Rank, the last four dims right-aligned (log1p; 0 where absent), log numel."""
    tail = list(shape[-4:])
    padded = [0] * (4 - len(tail)) + tail
    return [float(len(shape)), *(_log(d) for d in padded), _log(math.prod(shape) if shape else 0)]


def _pair(values: tuple[int, ...]) -> list[float]:
    """Last two spatial values (1-D ops as (1, k)); zeros for ops without the attribute."""
    if not values:
        return [0.0, 0.0]
    v = list(values[-2:])
    return [float(x) for x in ([1, *v] if len(v) == 1 else v)]


def node_features(node: OpNode) -> list[float]:
    """The feature vector of one node, ordered as `FEATURE_SCHEMA.node_features`."""
    row = [0.0] * FEATURE_SCHEMA.num_node_features
    row[_OP_INDEX.get(node.op_type, len(OP_VOCABULARY))] = 1.0
    row[_ACT_OFFSET + _ACT_INDEX.get(node.activation, 0)] = 1.0
    numeric = [
        float("BatchNormalization" in node.fused), float("Add" in node.fused),
        _log(node.macs), _log(node.other_flops), _log(node.params), _log(node.weight_bytes),
        _log(node.read_bytes), _log(node.write_bytes),
        *_pair(node.kernel), *_pair(node.stride), *_pair(node.dilation),
        _log(node.groups - 1), float(node.depthwise),
        *_dims(node.input_shape), *_dims(node.output_shape),
    ]
    row[_NUM_OFFSET:] = numeric
    return row


def graph_features(graph: OpGraph, batch_size: int | None = None) -> list[float]:
    """Graph-level features, ordered as `FEATURE_SCHEMA.graph_features`.

    With `batch_size`, the features of `graph.with_batch(batch_size)`, computed without
    building that graph (activation work scales with the batch, weights do not).
    """
    nodes = graph.nodes
    scale = batch_size / graph.batch_size if batch_size else 1.0
    weight_bytes = sum(n.weight_bytes for n in nodes)
    input_numel = math.prod(graph.primary_input_shape) if graph.primary_input_shape else 0
    row = graph_features_from_totals(
        macs=graph.macs * scale, params=graph.params, other_flops=graph.other_flops * scale,
        weight_bytes=weight_bytes,
        activation_bytes=(graph.memory_bytes - weight_bytes) * scale, nodes=len(nodes),
        depth=graph.depth, batch=batch_size or graph.batch_size,
        input_resolution=graph.input_resolution, input_numel=input_numel * scale,
        conv_nodes=sum(n.op_type in ("Conv", "ConvTranspose") for n in nodes),
        matmul_nodes=sum(n.op_type in ("MatMul", "Gemm", "Einsum") for n in nodes),
        depthwise_nodes=sum(n.depthwise for n in nodes))
    return [float(v) for v in row]


def graph_features_from_totals(*, macs, params, other_flops, weight_bytes, activation_bytes,
                               nodes, depth, batch, input_resolution, input_numel, conv_nodes,
                               matmul_nodes, depthwise_nodes) -> np.ndarray:
    """Graph features from a graph's totals; scalars give (Fg,), arrays of G graphs (G, Fg)
    (how `predictor.space_templates` computes many graphs' features at once)."""
    values = [macs, params, other_flops, np.add(weight_bytes, activation_bytes), weight_bytes,
              activation_bytes, nodes, depth, batch, input_resolution, input_numel, conv_nodes,
              matmul_nodes, depthwise_nodes]
    columns = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in values))
    return np.log1p(np.maximum(np.stack(columns, axis=-1), 0.0))


def to_data(graph: OpGraph) -> Data:
    """Convert an `OpGraph` to a PyG `Data`.

    Shapes:
        x: (num_nodes, FEATURE_SCHEMA.num_node_features) float32
        edge_index: (2, num_edges) int64, producer -> consumer
        graph_attr: (1, FEATURE_SCHEMA.num_graph_features) float32
    """
    from torch_geometric.data import Data  # slow import: only when tensors are needed

    x = torch.tensor([node_features(n) for n in graph.nodes], dtype=torch.float32)
    if graph.edges:
        edge_index = torch.tensor(graph.edges, dtype=torch.long).t().contiguous()
    else:
        edge_index = torch.empty((2, 0), dtype=torch.long)
    return Data(
        x=x,
        edge_index=edge_index,
        graph_attr=torch.tensor([graph_features(graph)], dtype=torch.float32),
        num_nodes=len(graph.nodes),
    )
