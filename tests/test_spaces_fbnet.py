"""Tests of `predictor.spaces.fbnet`: arch specs, the network, and the direct ONNX emitter."""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from predictor.errors import InvalidArchError
from predictor.spaces import fbnet
from predictor.spaces.onnx_emit import OPSET, compute_graph_signature, diff_signatures

# HELP's first FBNet arch: g2 blocks, skips at stage starts (16->24 stride 1, 32->64 stride 2 ...)
HELP_ARCH0 = [7, 8, 1, 8, 4, 8, 8, 8, 7, 4, 1, 4, 7, 3, 2, 7, 3, 2, 4, 2, 4, 5]
MIXED = [1, 8, 1, 8, 4, 8, 8, 8, 8, 4, 1, 4, 7, 3, 2, 7, 3, 2, 4, 2, 8, 5]


def _help_dir() -> Path | None:
    """HELP's data folder: ``$LATPRED_DATA_DIR/help``, else ``<repo>/../shared/data/help``."""
    env = os.environ.get("LATPRED_DATA_DIR")
    candidates = [Path(env) / "help"] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "help")
    return next((p for p in candidates if p.is_dir()), None)


@pytest.fixture(scope="module")
def metainfo() -> dict:
    d = _help_dir()
    path = d / "fbnet" / "metainfo.pt" if d else None
    if path is None or not path.is_file():
        pytest.skip("HELP data (fbnet/metainfo.pt) not found")
    return torch.load(path, weights_only=False)


# -- arch specs ---------------------------------------------------------------------------


def test_block_order_matches_help(metainfo: dict) -> None:
    assert metainfo["num_classes"] == 100 and metainfo["dataset"] == "cifar100"
    archs = metainfo["arch"]
    assert len(archs) == 5000
    for a in archs:
        names = fbnet.parse_arch(a["op_idx_list"])
        assert list(names) == a["arch_str"]
        assert fbnet.parse_arch("-".join(a["arch_str"])) == names
        assert fbnet.arch_to_indices(names) == tuple(a["op_idx_list"])
    assert archs[0]["op_idx_list"] == HELP_ARCH0


def test_spec_forms_agree() -> None:
    names = fbnet.parse_arch(MIXED)
    assert fbnet.parse_arch(list(names)) == names
    assert fbnet.parse_arch(fbnet.arch_to_str(MIXED)) == names
    assert fbnet.parse_arch(np.array(MIXED)) == names  # numpy ints are indices too
    assert fbnet.block_spec("k5_e1_g2") == fbnet.BlockSpec(kernel=5, expansion=1, groups=2)
    assert fbnet.block_spec("k3_e6") == fbnet.BlockSpec(kernel=3, expansion=6, groups=1)
    assert fbnet.block_spec("skip").is_skip


def test_layer_shapes_follow_hw_nas_bench() -> None:
    shapes = fbnet.layer_shapes()
    assert len(shapes) == 22
    firsts = [shapes[i] for i in (0, 1, 5, 9, 13, 17, 21)]
    assert firsts == [
        (16, 16, 1),
        (16, 24, 1),
        (24, 32, 2),
        (32, 64, 2),
        (64, 112, 1),
        (112, 184, 2),
        (184, 352, 1),
    ]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ([0] * 21, "21 layers"),
        (["k3_e1"] * 23, "23 layers"),
        ("-".join(["k3_e1"] * 21), "21 layers"),
        ("", "0 layers"),
        ([0] * 21 + [9], "Block index 9 at layer 21"),
        ([-1] + [0] * 21, "Block index -1 at layer 0"),
        (["k3_e1"] * 21 + ["k7_e6"], "Unknown block 'k7_e6' at layer 21"),
        ("-".join(["k3_e1"] * 21 + ["skip_connect"]), "Unknown block 'skip_connect'"),
        ([0.5] * 22, "Layer 0"),
        ([True] * 22, "Layer 0"),
        (7, "got int"),
    ],
)
def test_bad_specs_raise_with_the_arch(spec: object, match: str) -> None:
    with pytest.raises(InvalidArchError, match=re.escape(match)) as err:
        fbnet.parse_arch(spec)  # type: ignore[arg-type]
    assert repr(spec) in str(err.value)
    assert "k3_e1_g2" in str(err.value)  # names the allowed blocks


# -- the network ---------------------------------------------------------------------------


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_forward_shapes_and_parameters() -> None:
    net = fbnet.FBNetNetwork(HELP_ARCH0).eval()
    assert net.arch_str == fbnet.arch_to_str(HELP_ARCH0)
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    # equal to HW-NAS-Bench's FBNet_Infer(cifar100) for this arch (checked against the reference)
    assert _n_params(net) == 1_790_500
    gray = fbnet.FBNetNetwork([8] * 22, input_shape=(1, 1, 64, 64), num_classes=10).eval()
    assert gray.stem[0].in_channels == 1
    with torch.no_grad():
        assert gray(torch.randn(1, 1, 64, 64)).shape == (1, 10)


def test_parameter_counts_are_ordered() -> None:
    small = _n_params(fbnet.FBNetNetwork([8] * 22))  # skips: only the stage-changing 1x1 convs
    e1 = _n_params(fbnet.FBNetNetwork([0] * 22))
    g2 = _n_params(fbnet.FBNetNetwork([1] * 22))
    e6 = _n_params(fbnet.FBNetNetwork([7] * 22))
    assert small < g2 < e1 < e6
    assert 0.5e6 < small and e6 < 6e6  # head 352->1504 and fc 1504->100 dominate the small ones


def test_residual_only_when_shapes_allow() -> None:
    net = fbnet.FBNetNetwork([0] * 22)
    blocks = list(net.cells)
    assert blocks[0].c_in == blocks[0].c_out and blocks[0].stride == 1  # residual
    assert (blocks[1].c_in, blocks[1].c_out) == (16, 24)  # no residual
    skips = fbnet.FBNetNetwork([8] * 22).cells
    assert skips[0].proj is None and skips[2].proj is None  # identities
    assert skips[1].proj is not None and skips[5].proj[0].stride == (2, 2)


def test_bad_config_raises() -> None:
    with pytest.raises(InvalidArchError, match="4 positive ints"):
        fbnet.FBNetNetwork(MIXED, input_shape=(1, 3, 32))
    with pytest.raises(InvalidArchError, match="num_classes"):
        fbnet.build_onnx(MIXED, num_classes=0)


# -- direct ONNX emission vs torch.onnx.export ------------------------------------------


def _export(net: torch.nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.randn(shape),), f, dynamo=False, opset_version=OPSET)
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize(
    ("arch", "input_shape", "num_classes"),
    [
        (HELP_ARCH0, (1, 3, 32, 32), 100),
        (MIXED, (1, 3, 32, 32), 100),  # g2 first block (residual), skip at a stride-2 stage start
        ([1] * 22, (1, 3, 32, 32), 100),  # all g2: a channel shuffle per layer
        ([8] * 22, (1, 3, 32, 32), 100),  # all skip: identities + 1x1 convs where shapes change
        ([5, 7, 6, 3, 2, 8, 0, 4, 5, 8] + [8] * 12, (2, 1, 36, 36), 10),  # batch 2, gray, odd sizes
    ],
)
def test_build_onnx_matches_torch_export(
    arch: list[int], input_shape: tuple[int, ...], num_classes: int
) -> None:
    net = fbnet.FBNetNetwork(arch, input_shape, num_classes)
    exported = _export(net, input_shape)
    emitted = fbnet.build_onnx(arch, input_shape=input_shape, num_classes=num_classes)
    onnx.checker.check_model(emitted, full_check=True)
    ref, got = compute_graph_signature(exported), compute_graph_signature(emitted)
    assert not diff_signatures(ref, got), diff_signatures(ref, got)


def test_channel_shuffle_is_reshape_transpose_reshape() -> None:
    m = fbnet.build_onnx(["k3_e1_g2"] + ["skip"] * 21)
    ops = [n.op_type for n in m.graph.node]
    i = ops.index("Transpose")
    assert ops[i - 3 : i + 3] == ["Conv", "Relu", "Reshape", "Transpose", "Reshape", "Conv"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    first, second = m.graph.node[i - 1], m.graph.node[i + 1]
    assert inits[first.input[1]].tolist() == [1, 2, 8, 32, 32]
    assert list(m.graph.node[i].attribute[0].ints) == [0, 2, 1, 3, 4]
    assert inits[second.input[1]].tolist() == [1, 16, 32, 32]
    assert ops.count("Add") == 1  # the residual of the stride-1 16->16 block


def test_build_onnx_runs_in_onnxruntime() -> None:
    ort = pytest.importorskip("onnxruntime")
    m = fbnet.build_onnx(MIXED)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input": np.ones((1, 3, 32, 32), np.float32)})
    assert out.shape == (1, 100)


def test_build_onnx_accepts_the_corpus_string_form() -> None:
    s = fbnet.arch_to_str(MIXED)
    a, b = fbnet.build_onnx(s), fbnet.build_onnx(MIXED)
    assert compute_graph_signature(a) == compute_graph_signature(b)
    with pytest.raises(InvalidArchError, match="21 layers"):
        fbnet.build_onnx(s.rsplit("-", 1)[0])


def test_build_onnx_without_weight_data_keeps_the_graph() -> None:
    full, bare = fbnet.build_onnx(HELP_ARCH0), fbnet.build_onnx(HELP_ARCH0, weights=False)
    assert bare.ByteSize() < full.ByteSize() / 100
    assert compute_graph_signature(bare) == compute_graph_signature(full)
