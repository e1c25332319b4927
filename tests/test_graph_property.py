"""Property test: random small valid ONNX graphs never crash extraction, and MACs are exact.

The generator tracks shapes itself and counts MACs with the textbook formulas, an
independent count to compare with what extraction reads from ONNX shape inference.
"""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from predictor.graph import extract_graph


def _weight(name: str, shape: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, shape,
                              np.zeros(int(np.prod(shape)), "float32"))


@st.composite
def random_cnn(draw):
    """A random CNN chain with optional residual Adds; returns (model, expected MACs)."""
    batch = draw(st.integers(1, 3))
    channels = draw(st.integers(1, 8))
    size = draw(st.integers(4, 12))
    nodes, inits = [], []
    current, shape = "x", [batch, channels, size, size]
    macs = 0
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["conv", "conv", "relu", "bn", "pool", "residual"]))
        out = f"t{i}"
        n, c, h, w = shape
        if kind == "conv":
            groups = draw(st.sampled_from([g for g in (1, 2, c) if c % g == 0]))
            c_out = groups * draw(st.integers(1, 4))
            k = draw(st.sampled_from([1, 3]))
            stride = draw(st.sampled_from([1, 2]))
            pad = k // 2
            ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
            inits.append(_weight(f"w{i}", [c_out, c // groups, k, k]))
            nodes.append(helper.make_node("Conv", [current, f"w{i}"], [out], kernel_shape=[k, k],
                                          strides=[stride, stride], pads=[pad] * 4, group=groups))
            macs += n * c_out * ho * wo * (c // groups) * k * k
            shape = [n, c_out, ho, wo]
        elif kind == "relu":
            nodes.append(helper.make_node("Relu", [current], [out]))
        elif kind == "bn":
            for p in "sbmv":
                inits.append(_weight(f"{p}{i}", [c]))
            nodes.append(helper.make_node("BatchNormalization",
                                          [current] + [f"{p}{i}" for p in "sbmv"], [out]))
        elif kind == "pool":
            nodes.append(helper.make_node("MaxPool", [current], [out], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            shape = [n, c, h // 2, w // 2]
            if min(shape[2:]) < 1:
                return draw(random_cnn())
        else:  # residual: 1x1 conv keeping the shape, added to its input
            inits.append(_weight(f"w{i}", [c, c, 1, 1]))
            nodes.append(helper.make_node("Conv", [current, f"w{i}"], [f"r{i}"],
                                          kernel_shape=[1, 1]))
            nodes.append(helper.make_node("Add", [current, f"r{i}"], [out]))
            macs += n * c * h * w * c
        current = out
    n, c, h, w = shape
    classes = draw(st.integers(1, 5))
    inits.append(_weight("fc", [c * h * w, classes]))
    nodes.append(helper.make_node("Flatten", [current], ["flat"]))
    nodes.append(helper.make_node("Gemm", ["flat", "fc"], ["y"]))
    macs += n * c * h * w * classes
    graph = helper.make_graph(
        nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                        [batch, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model, macs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_cnn())
def test_random_graphs_extract_with_exact_macs(case) -> None:
    model, expected_macs = case
    graph = extract_graph(model)
    assert graph.macs == expected_macs
    assert len(graph.nodes) >= 2 and graph.depth >= 2
    assert all(0 <= a < b < len(graph.nodes) for a, b in graph.edges)  # topological edges
    assert graph.nodes[-1].op_type == "Gemm"
    assert not graph.unknown_ops
    assert graph.params == sum(int(np.prod(t.dims)) for t in model.graph.initializer)
