"""Operator-graph extraction on real exported models and hand-built ONNX graphs."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from predictor import model_zoo
from predictor.errors import DynamicShapeError, EmptyGraphError
from predictor.graph import extract_graph


def _value(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _weight(name: str, shape) -> onnx.TensorProto:
    import numpy as np

    return helper.make_tensor(name, TensorProto.FLOAT, shape, np.zeros(shape, "float32").ravel())


def test_all_input_kinds_give_the_same_graph(tiny_onnx, tiny_module) -> None:
    from_path = extract_graph(tiny_onnx).summary()
    from_bytes = extract_graph(tiny_onnx.read_bytes()).summary()
    from_proto = extract_graph(onnx.load(tiny_onnx)).summary()
    from_module = extract_graph(tiny_module, example_input=torch.randn(1, 3, 16, 16)).summary()
    assert from_path == from_bytes == from_proto == from_module
    # conv 3*8*9*256 + depthwise 8*9*64 + linear 8*10
    assert from_path["macs"] == 3 * 8 * 9 * 256 + 8 * 9 * 64 + 80
    assert from_path["op_counts"]["Conv"] == 2


def test_tiny_graph_features(tiny_onnx) -> None:
    graph = extract_graph(tiny_onnx)
    dw = [n for n in graph.nodes if n.depthwise]
    assert len(dw) == 1
    assert dw[0].kernel == (3, 3) and dw[0].stride == (2, 2) and dw[0].groups == 8
    assert dw[0].input_shape == (1, 8, 16, 16) and dw[0].output_shape == (1, 8, 8, 8)
    first = graph.nodes[0]
    assert first.op_type == "Conv" and first.activation == "Relu"
    assert first.read_bytes == 3 * 16 * 16 * 4 and first.write_bytes == 8 * 16 * 16 * 4
    assert first.params == 8 * 3 * 9 + 8  # BN folded into the conv bias by the exporter
    assert graph.depth == len(graph.nodes)  # a chain


def test_batch_scales_activations_not_params() -> None:
    one = extract_graph(model_zoo.export("resnet18", (1, 3, 64, 64)))
    four = extract_graph(model_zoo.export("resnet18", (4, 3, 64, 64)))
    assert four.params == one.params
    assert four.macs == 4 * one.macs
    assert sum(n.weight_bytes for n in four.nodes) == sum(n.weight_bytes for n in one.nodes)
    act = lambda g: sum(n.read_bytes + n.write_bytes for n in g.nodes)  # noqa: E731
    assert act(four) == 4 * act(one)
    assert four.batch_size == 4 and one.batch_size == 1
    assert four.input_resolution == one.input_resolution == 64 * 64


def test_conv_bn_relu_are_fused() -> None:
    c = 4
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    inits = [_weight("w", [c, 3, 3, 3])] + [_weight(k, [c]) for k in "sbmv"]
    model = _model(nodes, [_value("x", [1, 3, 8, 8])], [_value("y", [1, c, 8, 8])], inits)
    graph = extract_graph(model)
    assert len(graph.nodes) == 1
    node = graph.nodes[0]
    assert node.fused == ("BatchNormalization", "Relu") and node.activation == "Relu"
    assert node.macs == c * 64 * 27
    assert node.write_bytes == c * 64 * 4


def test_no_fusion_when_intermediate_has_two_consumers() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Add", ["c", "r"], ["y"]),
    ]
    model = _model(nodes, [_value("x", [1, 2, 4, 4])], [_value("y", [1, 2, 4, 4])],
                   [_weight("w", [2, 2, 1, 1])])
    graph = extract_graph(model)
    assert [n.op_type for n in graph.nodes] == ["Conv", "Relu", "Add"]
    assert graph.edges == [(0, 1), (0, 2), (1, 2)]
    assert graph.depth == 3


def test_matmul_bias_fused_and_batched_macs() -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["h"]),
        helper.make_node("MatMul", ["h", "h_t"], ["y"]),
        helper.make_node("Transpose", ["h"], ["h_t"], perm=[0, 2, 1]),
    ]  # deliberately out of topological order
    model = _model(nodes, [_value("x", [2, 5, 8])], [_value("y", [2, 5, 5])],
                   [_weight("w", [8, 16]), _weight("b", [16])])
    graph = extract_graph(model)
    assert [n.op_type for n in graph.nodes] == ["MatMul", "Transpose", "MatMul"]
    assert graph.nodes[0].fused == ("Add",)
    assert graph.nodes[0].params == 8 * 16 + 16
    assert graph.macs == 2 * 5 * 16 * 8 + 2 * 5 * 5 * 16


def test_shape_computation_is_folded() -> None:
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y.reshape(y.shape[0], -1)

    graph = extract_graph(Flat(), example_input=torch.randn(2, 3, 8, 8))
    ops = [n.op_type for n in graph.nodes]
    assert ops == ["Conv", "Reshape"]


def test_transformer_block_macs() -> None:
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    graph = extract_graph(layer.eval(), example_input=torch.randn(1, 10, 32))
    # projections q,k,v,out: 4*L*d*d; attention scores and weighted sum: 2*L*L*d; FFN 2*L*d*ff
    expected = 4 * 10 * 32 * 32 + 2 * 10 * 10 * 32 + 2 * 10 * 32 * 64
    assert graph.macs == expected
    assert "Softmax" in graph.op_counts()
    assert graph.input_resolution == 10


@pytest.mark.parametrize(("equation", "a", "b", "macs"), [
    ("bij,bjk->bik", [2, 5, 8], [2, 8, 3], 2 * 5 * 8 * 3),   # batched matmul
    ("bhqd,bhkd->bhqk", [1, 4, 6, 8], [1, 4, 6, 8], 4 * 6 * 6 * 8),  # attention scores
    ("i,i->", [7], [7], 7),                                  # dot product
    ("...ij,...jk->...ik", [2, 5, 8], [2, 8, 3], 0),         # ellipsis: not counted
])
def test_einsum_macs_are_the_product_of_its_index_sizes(equation, a, b, macs) -> None:
    nodes = [helper.make_node("Einsum", ["a", "b"], ["y"], equation=equation)]
    model = _model(nodes, [_value("a", a), _value("b", b)], [_value("y", None)])
    assert extract_graph(model).macs == macs


@pytest.mark.parametrize("quantization", ["dynamic", "qdq"])
def test_int8_models_keep_the_float_models_macs_and_parameters(quantization, tmp_path) -> None:
    """ONNX Runtime's int8 quantisation (ConvInteger / MatMulInteger, or QDQ around float
    convolutions) keeps the work and the weights of the float model it came from."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_dynamic,
        quantize_static,
    )

    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=4),
                        nn.Flatten(), nn.Linear(16 * 12 * 12, 10))
    float_path, int8_path = tmp_path / "f.onnx", tmp_path / "q.onnx"
    torch.onnx.export(net.eval(), (torch.randn(1, 3, 16, 16),), str(float_path),
                      input_names=["x"], dynamo=False)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": torch.randn(1, 3, 16, 16).numpy()} for _ in range(2)])

        def get_next(self):
            return next(self.batches, None)

    if quantization == "dynamic":
        quantize_dynamic(float_path, int8_path)
    else:
        quantize_static(float_path, int8_path, Reader(), quant_format=QuantFormat.QDQ)
    fp32, int8 = extract_graph(float_path), extract_graph(int8_path)
    assert int8.macs == fp32.macs
    assert int8.params == pytest.approx(fp32.params, rel=0.02)  # + scales and zero points
    if quantization == "dynamic":
        assert {"ConvInteger", "MatMulInteger"} <= set(int8.op_counts())


def test_qlinear_conv_counts_its_int8_weights_and_macs() -> None:
    import numpy as np

    def const(name, dtype, values, shape=()):
        return helper.make_tensor(name, dtype, shape, np.asarray(values).ravel().tolist())

    inits = [const("xs", TensorProto.FLOAT, [0.1]), const("xz", TensorProto.UINT8, [128]),
             const("w", TensorProto.INT8, np.ones(8 * 3 * 3 * 3, "int8"), [8, 3, 3, 3]),
             const("ws", TensorProto.FLOAT, [0.02]), const("wz", TensorProto.INT8, [0]),
             const("ys", TensorProto.FLOAT, [0.2]), const("yz", TensorProto.UINT8, [128])]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
                            ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8,
                                                             [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out = extract_graph(model)
    assert out.macs == 8 * 16 * 16 * 3 * 3 * 3
    assert out.nodes[0].params >= 8 * 3 * 3 * 3 and out.nodes[0].kernel == (3, 3)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_layers_count_their_matmuls_as_macs(bidirectional) -> None:
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(32, 64, batch_first=True, bidirectional=bidirectional)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lstm(x)[0]

    graph = extract_graph(Recurrent().eval(), example_input=torch.randn(1, 20, 32))
    lstm = next(n for n in graph.nodes if n.op_type == "LSTM")
    # per step and direction: 4 gates x hidden x (input + hidden) multiply-accumulates
    assert lstm.macs == (2 if bidirectional else 1) * 20 * 4 * 64 * (32 + 64)
    assert 0 < lstm.other_flops < lstm.macs


@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_and_gelu_spelled_out_by_old_opsets_fold_back(affine, tmp_path) -> None:
    """Opsets below 17 spell LayerNorm, below 20 GELU, as elementwise steps: the graph is
    the same whatever opset the network was exported with."""
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(32, elementwise_affine=affine)
            self.ffn = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.ffn(self.norm(x))

    graphs = {}
    for opset in (14, 17, 20):
        path = tmp_path / f"block{opset}.onnx"
        torch.onnx.export(Block().eval(), (torch.randn(1, 10, 32),), str(path), dynamo=False,
                          opset_version=opset)
        graphs[opset] = extract_graph(path)
    reference = graphs[20]
    assert reference.op_counts()["LayerNormalization"] == 1
    assert any(n.activation == "Gelu" for n in reference.nodes)  # fused into its matmul
    def described(graph):
        # Without affine weights, opset 17+ still passes constant ones and zeros as scale
        # and bias (counted as parameters); the spelled-out form has none.
        return [(n.op_type, n.activation, n.macs, n.other_flops, n.output_shape,
                 n.params if affine or n.op_type != "LayerNormalization" else None)
                for n in graph.nodes]

    for opset, graph in graphs.items():
        assert graph.op_counts() == reference.op_counts(), opset
        assert described(graph) == described(reference), opset
        assert graph.edges == reference.edges


def test_tanh_gelu_spellings_fold_into_one_gelu(tmp_path) -> None:
    """torch's tanh GELU below opset 20 and HF's NewGELU (written with pow and tanh) give
    the graph of opset 20's Gelu node, fused into the matmul before it."""
    import math

    class NewGELU(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi)
                                               * (x + 0.044715 * torch.pow(x, 3.0))))

    def graph(act: nn.Module, opset: int):
        path = tmp_path / f"ffn{opset}{type(act).__name__}.onnx"
        net = nn.Sequential(nn.Linear(8, 16), act, nn.Linear(16, 8)).eval()
        torch.onnx.export(net, (torch.randn(1, 4, 8),), str(path), dynamo=False,
                          opset_version=opset)
        g = extract_graph(path)
        return [(n.op_type, n.activation, n.macs, n.other_flops, n.params) for n in g.nodes], \
            g.edges

    reference = graph(nn.GELU(approximate="tanh"), 20)
    assert reference[0][0][:2] == ("MatMul", "Gelu")
    assert graph(nn.GELU(approximate="tanh"), 17) == reference
    assert graph(NewGELU(), 17) == reference


def test_custom_domain_op_is_kept_and_reported() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("FancyAct", ["c"], ["f"], domain="com.example"),
        helper.make_node("Relu", ["f"], ["y"]),
    ]
    graph_proto = helper.make_graph(nodes, "g", [_value("x", [1, 2, 4, 4])],
                                    [_value("y", None)], [_weight("w", [3, 2, 1, 1])])
    model = helper.make_model(graph_proto, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    graph = extract_graph(model)
    assert [n.op_type for n in graph.nodes] == ["Conv", "com.example::FancyAct", "Relu"]
    assert graph.unknown_ops == {"com.example::FancyAct": 1}
    assert graph.nodes[2].output_shape == (1, 3, 4, 4)  # shapes flow past the custom op


def test_dynamic_input_needs_a_shape(tmp_path) -> None:
    path = tmp_path / "dyn.onnx"
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    torch.onnx.export(module, (torch.randn(1, 3, 8, 8),), path, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"}})
    with pytest.raises(DynamicShapeError, match="input-shape"):
        extract_graph(path)
    graph = extract_graph(path, input_shape=(2, 3, 10, 10))
    assert graph.nodes[0].output_shape == (2, 4, 8, 8)
    graph = extract_graph(path, input_shape={"x": (1, 3, 12, 12)})
    assert graph.nodes[0].output_shape == (1, 4, 10, 10)
    with pytest.raises(DynamicShapeError, match="rank"):
        extract_graph(path, input_shape=(1, 3, 10))


def test_inputs_sharing_dim_names_take_one_shape(two_input_onnx) -> None:
    path = two_input_onnx
    with pytest.raises(DynamicShapeError, match=r"Input 'ids'.*--input-shape ids=1,128"):
        extract_graph(path)
    for given in ((2, 16), {"ids": (2, 16)}, {"mask": (2, 16)}):
        graph = extract_graph(path, input_shape=given)
        assert graph.input_shapes == {"ids": (2, 16), "mask": (2, 16)}, given
        assert graph.nodes[-1].output_shape == (2, 16, 4)
    with pytest.raises(DynamicShapeError, match="disagree on dim 'sequence'"):
        extract_graph(path, input_shape={"ids": (1, 16), "mask": (1, 32)})
    with pytest.raises(DynamicShapeError, match=r"Unknown input 'tokens'.*\['ids', 'mask'\]"):
        extract_graph(path, input_shape={"tokens": (1, 16)})


def test_empty_graph_is_rejected() -> None:
    with pytest.raises(EmptyGraphError):
        extract_graph(_model([], [_value("x", [1])], [_value("x", [1])]))
    only_identity = _model([helper.make_node("Identity", ["x"], ["y"])],
                           [_value("x", [1, 2])], [_value("y", [1, 2])])
    with pytest.raises(EmptyGraphError, match="no compute operator"):
        extract_graph(only_identity)


def test_with_batch_equals_a_real_export_at_that_batch() -> None:
    one = extract_graph(model_zoo.export("mobilenet_v2", (1, 3, 64, 64)))
    three = extract_graph(model_zoo.export("mobilenet_v2", (3, 3, 64, 64)))
    strip = lambda g: [n.__class__(**{**n.__dict__, "name": ""}) for n in g.nodes]  # noqa: E731
    derived = one.with_batch(3)
    assert strip(derived) == strip(three)
    assert derived.summary() == three.summary()


def test_with_batch_moves_the_batch_axis_of_sequence_first_recurrent_ops() -> None:
    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.GRU(8, 16, batch_first=True, bidirectional=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    model = Tagger().eval()
    one = extract_graph(model, example_input=torch.randn(1, 5, 8))
    three = extract_graph(model, example_input=torch.randn(3, 5, 8))
    gru = lambda g: next(n for n in g.nodes if n.op_type == "GRU")  # noqa: E731
    derived = gru(one.with_batch(3))
    assert derived.input_shape == gru(three).input_shape == (5, 3, 8)
    assert derived.output_shape == gru(three).output_shape == (5, 2, 3, 16)
    assert derived.macs == gru(three).macs


def test_python_api_raises_typed_errors(tmp_path, tiny_onnx) -> None:
    from predictor.errors import InvalidModelError, ModelNotFoundError, PredictorError

    with pytest.raises(ModelNotFoundError):
        extract_graph(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(InvalidModelError, match="not a valid ONNX model"):
        extract_graph(tmp_path / "text.onnx")
    data = tiny_onnx.read_bytes()
    with pytest.raises(InvalidModelError):
        extract_graph(data[: len(data) // 3])
    with pytest.raises(InvalidModelError, match="example input"):
        extract_graph(nn.Linear(2, 2))
    with pytest.raises(PredictorError, match="Unsupported model type"):
        extract_graph(12345)


def test_shape_arithmetic_is_folded_cls_token_expand() -> None:
    """`cls.expand(x.shape[0], -1, -1)` (ViTs) exports Shape/ConstantOfShape/Where/Expand
    arithmetic that ONNX's own inference leaves unknown; extraction folds it."""
    from torch import nn

    class ClsViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, 32, 8, 8)
            self.cls = nn.Parameter(torch.randn(1, 1, 32))
            self.proj = nn.Linear(32, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
            return self.proj(x).mean(1)

    graph = extract_graph(ClsViT(), example_input=torch.randn(1, 3, 32, 32))
    # patch conv: 16 positions x 32 x 3*8*8; projection: 17 tokens x 32 x 32
    assert graph.macs == 16 * 32 * 192 + 17 * 32 * 32
    assert "Expand" not in graph.op_counts() and "Where" not in graph.op_counts()
