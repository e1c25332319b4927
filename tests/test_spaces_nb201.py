"""Tests of `predictor.spaces.nb201`: arch strings, the TinyNetwork, and the direct ONNX emitter."""

from __future__ import annotations

import io
import itertools
import os
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from predictor.errors import InvalidArchError
from predictor.spaces import nb201
from predictor.spaces.onnx_emit import OPSET, compute_graph_signature, diff_signatures

ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
MIXED = "|none~0|+|nor_conv_3x3~0|none~1|+|avg_pool_3x3~0|skip_connect~1|nor_conv_1x1~2|"
POOLS = "|avg_pool_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|avg_pool_3x3~2|"


def _help_dir() -> Path | None:
    """HELP's data folder: ``$LATPRED_DATA_DIR/help``, else ``<repo>/../shared/data/help``."""
    env = os.environ.get("LATPRED_DATA_DIR")
    candidates = [Path(env) / "help"] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "help")
    return next((p for p in candidates if p.is_dir()), None)


@pytest.fixture(scope="module")
def arch_index() -> dict[str, int]:
    d = _help_dir()
    path = d / "nasbench201" / "str_arch2idx.pt" if d else None
    if path is None or not path.is_file():
        pytest.skip("HELP data (nasbench201/str_arch2idx.pt) not found")
    return torch.load(path, weights_only=False)


# -- arch strings ----------------------------------------------------------------------


def test_all_help_archs_parse_and_round_trip(arch_index: dict[str, int]) -> None:
    assert len(arch_index) == 15625
    parsed = {nb201.parse_arch(a) for a in arch_index}
    assert parsed == set(itertools.product(nb201.OPS, repeat=6))  # the whole space, once each
    for a in arch_index:
        assert nb201.arch_to_str(nb201.parse_arch(a)) == a


def test_parse_orders_edges_as_the_string() -> None:
    ops = nb201.parse_arch(MIXED)
    assert ops == ("none", "nor_conv_3x3", "none", "avg_pool_3x3", "skip_connect", "nor_conv_1x1")
    assert nb201.EDGES == ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))


@given(st.tuples(*[st.sampled_from(nb201.OPS)] * 6))
def test_round_trip_from_ops(ops: tuple[str, ...]) -> None:
    assert nb201.parse_arch(nb201.arch_to_str(ops)) == ops


@pytest.mark.parametrize(
    ("arch", "problem"),
    [
        ("", "Malformed"),
        ("|none~0|", "Malformed"),
        ("|none~0|+|none~0|none~1|", "Malformed"),
        (ALL_NONE + "+|none~0|", "Malformed"),
        ("none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "Malformed"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "Malformed"),
        ("|none0|+|none~0|none~1|+|none~0|none~1|none~2|", "Malformed"),
        ("|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "Unknown op 'conv_5x5'"),
        ("|none~0|+|none~0|none~1|+|none~0|max_pool_3x3~1|none~2|", "Unknown op"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "Wrong input index"),
        ("|none~0|+|none~0|none~1|+|none~0|none~2|none~1|", "Wrong input index"),
    ],
)
def test_bad_arch_strings_raise_with_the_arch(arch: str, problem: str) -> None:
    with pytest.raises(InvalidArchError, match=re.escape(problem)) as err:
        nb201.parse_arch(arch)
    assert repr(arch) in str(err.value)


def test_bad_op_sequences_raise() -> None:
    with pytest.raises(InvalidArchError, match="6 edges"):
        nb201.arch_to_str(["none"] * 5)
    with pytest.raises(InvalidArchError, match="'conv'.*known ops"):
        nb201.arch_to_str(["none"] * 5 + ["conv"])
    with pytest.raises(InvalidArchError, match="must be a string"):
        nb201.parse_arch(123)  # type: ignore[arg-type]
    with pytest.raises(InvalidArchError, match="got int 123"):
        nb201.NB201Network(123)  # type: ignore[arg-type]


# -- the network -------------------------------------------------------------------------


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    ("arch", "num_classes", "expected"),
    [
        # NAS-Bench-201's published parameter range: CIFAR-10 0.073306..1.531546 MB,
        # CIFAR-100 0.079156..1.537396 MB (all-none and all-conv3x3 cells).
        (ALL_CONV3, 10, 1_531_546),
        (ALL_NONE, 10, 73_306),
        (ALL_CONV3, 100, 1_537_396),
        (ALL_NONE, 100, 79_156),
    ],
)
def test_parameter_counts_match_nb201(arch: str, num_classes: int, expected: int) -> None:
    assert _n_params(nb201.NB201Network(arch, num_classes=num_classes)) == expected


def test_forward_shapes() -> None:
    net = nb201.NB201Network(MIXED).eval()
    assert net.arch_str == MIXED
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        gray = nb201.NB201Network(list(nb201.parse_arch(POOLS)), (1, 1, 28, 28), 7).eval()
        assert gray.stem[0].in_channels == 1
        assert gray(torch.randn(3, 1, 28, 28)).shape == (3, 7)


def test_none_edges_are_kept_as_mul_by_zero() -> None:
    """The reference Zero op is `x.mul(0.)`: a node fed only by none edges is exactly 0."""
    cell = nb201.NB201Cell(nb201.parse_arch(ALL_NONE), 4).eval()
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(cell(x), torch.zeros_like(x))
    assert sum(isinstance(m, nb201.Zero) for m in cell.modules()) == 6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": (1, 3, 30, 30)}, "divisible by 4"),
        ({"input_shape": (3, 32, 32)}, "4 positive ints"),
        ({"num_classes": 0}, "num_classes"),
        ({"C": 0}, "C >= 1"),
    ],
)
def test_bad_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidArchError, match=match):
        nb201.NB201Network(MIXED, **kwargs)
    with pytest.raises(InvalidArchError, match=match):
        nb201.build_onnx(MIXED, **kwargs)


# -- direct ONNX emission vs torch.onnx.export ----------------------------------------


def _export(net: torch.nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.randn(shape),), f, dynamo=False, opset_version=OPSET)
    return onnx.load_from_string(f.getvalue())


# Node 1 = skip(node 0) is torch's `0 + x`: CSE keeps ops on it apart from the same ops on x.
SKIP_ALIAS_NONE = "|skip_connect~0|+|skip_connect~0|none~1|+|none~0|none~1|nor_conv_3x3~2|"
SKIP_ALIAS_RELU = (
    "|skip_connect~0|+|nor_conv_3x3~0|skip_connect~1|+|nor_conv_1x1~0|nor_conv_1x1~1|none~2|"
)
SKIP_ALIAS_POOL = "|skip_connect~0|+|avg_pool_3x3~0|nor_conv_3x3~1|+|skip_connect~0|avg_pool_3x3~1|skip_connect~2|"


@pytest.mark.parametrize(
    ("arch", "input_shape", "num_classes", "C", "N"),
    [
        (MIXED, (1, 3, 32, 32), 10, 16, 5),  # none edges next to every other op
        (ALL_SKIP, (1, 3, 32, 32), 10, 16, 5),  # skip-only cell: Add(x, x) shared by CSE
        (ALL_NONE, (1, 3, 32, 32), 10, 16, 5),  # all-none cell: zeros, still wired to its input
        (ALL_CONV3, (1, 3, 32, 32), 10, 16, 5),  # one ReLU of a node shared by its three convs
        (POOLS, (2, 1, 16, 24), 100, 16, 5),  # shared avg pools, 1 input channel, batch 2
        (SKIP_ALIAS_NONE, (1, 3, 16, 16), 10, 8, 1),
        (SKIP_ALIAS_RELU, (1, 3, 16, 16), 10, 8, 1),
        (SKIP_ALIAS_POOL, (1, 3, 16, 16), 10, 8, 1),
    ],
)
def test_build_onnx_matches_torch_export(
    arch: str, input_shape: tuple[int, ...], num_classes: int, C: int, N: int
) -> None:
    net = nb201.NB201Network(arch, input_shape, num_classes, C=C, N=N)
    exported = _export(net, input_shape)
    emitted = nb201.build_onnx(arch, input_shape=input_shape, num_classes=num_classes, C=C, N=N)
    onnx.checker.check_model(emitted, full_check=True)
    ref, got = compute_graph_signature(exported), compute_graph_signature(emitted)
    assert not diff_signatures(ref, got), diff_signatures(ref, got)
    assert sum(ref.nodes.values()) == sum(got.nodes.values()) >= 10 * N


@pytest.mark.parametrize("arch", [
    "|avg_pool_3x3~0|+|avg_pool_3x3~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|",
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|none~0|none~1|skip_connect~2|",
])
def test_eager_graph_has_a_node_per_module_call(arch: str) -> None:
    """Without CSE the graph holds every pool, ReLU, zero-multiply and conv that eager
    PyTorch runs (counted with forward hooks); the export merges repeated ones."""
    net = nb201.NB201Network(arch).eval()
    kinds = {nn.AvgPool2d: "AveragePool", nn.ReLU: "Relu", nb201.Zero: "Mul", nn.Conv2d: "Conv"}
    calls = dict.fromkeys(kinds.values(), 0)
    for module in net.modules():
        if type(module) in kinds:
            module.register_forward_hook(
                lambda m, i, o: calls.__setitem__(kinds[type(m)], calls[kinds[type(m)]] + 1))
    with torch.no_grad():
        net(torch.randn(1, 3, 32, 32))

    def count(model: onnx.ModelProto, op: str) -> int:
        return sum(n.op_type == op for n in model.graph.node)

    eager, exported = nb201.build_onnx(arch, cse=False), nb201.build_onnx(arch)
    assert {op: count(eager, op) for op in calls} == calls
    assert count(exported, "AveragePool") + count(exported, "Relu") \
        < calls["AveragePool"] + calls["Relu"]


def test_build_onnx_node_sequence_and_metadata() -> None:
    m = nb201.build_onnx(MIXED)
    assert m.opset_import[0].version == OPSET
    ops = [n.op_type for n in m.graph.node]
    assert ops[0] == "Conv" and ops[-5:] == [
        "BatchNormalization",
        "Relu",
        "GlobalAveragePool",
        "Reshape",
        "Gemm",
    ]
    assert ops.count("AveragePool") == 15 + 2  # one per cell + one per reduction shortcut
    # every tensor's shape is written, so no shape inference is needed downstream
    shaped = {vi.name for vi in [*m.graph.value_info, *m.graph.output]}
    assert all(n.output[0] in shaped for n in m.graph.node)
    assert [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim] == [1, 10]


def test_build_onnx_runs_in_onnxruntime() -> None:
    ort = pytest.importorskip("onnxruntime")
    m = nb201.build_onnx(MIXED, input_shape=(2, 3, 32, 32))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input": np.ones((2, 3, 32, 32), np.float32)})
    assert out.shape == (2, 10) and np.all(out == 0)  # zero weights


def test_build_onnx_rejects_bad_arch() -> None:
    with pytest.raises(InvalidArchError, match=re.escape("'|bad~0|'")):
        nb201.build_onnx("|bad~0|")


def test_signature_tells_wiring_apart() -> None:
    """Two cells with the same multiset of nodes but different wiring get different signatures."""
    a = "|none~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|nor_conv_3x3~0|none~1|skip_connect~2|"
    b = "|nor_conv_1x1~0|+|none~0|none~1|+|nor_conv_3x3~0|skip_connect~1|nor_conv_3x3~2|"
    sa, sb = (compute_graph_signature(nb201.build_onnx(x, N=1)) for x in (a, b))
    assert sa.nodes == sb.nodes and sa.params == sb.params
    assert sa.topology != sb.topology
    assert diff_signatures(sa, sb).startswith("topology")
