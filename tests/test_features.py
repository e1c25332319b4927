"""Feature schema and PyG conversion."""

from __future__ import annotations

import pytest
import torch

from predictor.errors import SchemaMismatchError
from predictor.features import FEATURE_SCHEMA, OTHER, check_schema, node_features, to_data
from predictor.graph import OpNode, extract_graph


def test_data_shapes_follow_schema(tiny_onnx) -> None:
    graph = extract_graph(tiny_onnx)
    data = to_data(graph)
    assert data.x.shape == (len(graph.nodes), FEATURE_SCHEMA.num_node_features)
    assert data.graph_attr.shape == (1, FEATURE_SCHEMA.num_graph_features)
    assert data.edge_index.shape == (2, len(graph.edges))
    assert torch.isfinite(data.x).all() and torch.isfinite(data.graph_attr).all()
    conv_col = FEATURE_SCHEMA.node_features.index("op=Conv")
    assert data.x[:, conv_col].sum() == 2


def test_unknown_op_goes_to_other_bucket() -> None:
    row = node_features(OpNode(name="n", op_type="com.x::Weird", output_shape=(1, 4)))
    assert row[FEATURE_SCHEMA.node_features.index(f"op={OTHER}")] == 1.0
    assert sum(row[: len(FEATURE_SCHEMA.op_vocabulary) + 1]) == 1.0


def test_features_are_pure(tiny_onnx) -> None:
    a, b = to_data(extract_graph(tiny_onnx)), to_data(extract_graph(tiny_onnx))
    assert torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index)


def test_schema_roundtrip_and_mismatch() -> None:
    stored = FEATURE_SCHEMA.to_dict()
    check_schema(stored)
    stored["version"] = FEATURE_SCHEMA.version + 1
    with pytest.raises(SchemaMismatchError, match="version"):
        check_schema(stored)
    stored = FEATURE_SCHEMA.to_dict()
    stored["node_features"] = stored["node_features"][:-1]
    with pytest.raises(SchemaMismatchError, match="node_features"):
        check_schema(stored)
