"""Template-assembled search-space graphs equal the ONNX path's, node for node."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from predictor.api import Predictor
from predictor.corpus import arch_graph
from predictor.errors import InvalidArchError
from predictor.graph_store import GraphStore
from predictor.space_templates import SpaceTemplates, space_templates
from predictor.spaces import fbnet, nb201


def _nb201_archs(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    archs = [nb201.arch_to_str([rng.choice(nb201.OPS) for _ in range(6)]) for _ in range(count)]
    # every op everywhere, and the cells whose input is read by one ReLU (stem fusion)
    archs += [nb201.arch_to_str([op] * 6) for op in nb201.OPS]
    archs.append(nb201.arch_to_str(["nor_conv_3x3", "nor_conv_1x1", "none", "nor_conv_3x3",
                                    "skip_connect", "avg_pool_3x3"]))
    return archs


def _fbnet_archs(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    archs = ["-".join(rng.choice(fbnet.BLOCKS) for _ in range(fbnet.NUM_LAYERS))
             for _ in range(count)]
    return archs + ["-".join([b] * fbnet.NUM_LAYERS) for b in fbnet.BLOCKS]


def _canonical(store: GraphStore, i: int):
    """Graph i as (sorted node rows, sorted edges as row pairs, graph features)."""
    b = store.batch([i])
    rows = [tuple(r) for r in b.x.tolist()]
    edges = sorted((rows[s], rows[d]) for s, d in b.edge_index.t().tolist())
    return sorted(rows), edges, b.graph_attr


@pytest.mark.parametrize("space,archs,shape,classes", [
    ("nb201", _nb201_archs(60, 0), (1, 3, 32, 32), 10),
    ("nb201", _nb201_archs(15, 1), (2, 1, 16, 16), 120),
    ("fbnet", _fbnet_archs(15, 2), (1, 3, 32, 32), 100),
    ("fbnet", _fbnet_archs(5, 3), (4, 3, 64, 64), 10),
])
@pytest.mark.parametrize("graph", ["eager", "exported"])
def test_templates_equal_the_onnx_path(space, archs, shape, classes, graph):
    fast = SpaceTemplates(space, shape, classes, graph).store(archs)
    slow = GraphStore.from_graphs([arch_graph(space, a, shape, classes, graph)
                                   for a in archs])
    assert torch.equal(fast.num_nodes, slow.num_nodes)
    for i, arch in enumerate(archs):
        rows_f, edges_f, attr_f = _canonical(fast, i)
        rows_s, edges_s, attr_s = _canonical(slow, i)
        assert rows_f == rows_s, arch
        assert edges_f == edges_s, arch
        torch.testing.assert_close(attr_f, attr_s, rtol=0, atol=1e-6)


def test_batches_are_independent_of_order_and_repeats():
    t = space_templates("nb201")
    archs = _nb201_archs(20, 4)
    one = t.store(archs)
    again = t.store(list(reversed(archs)) + archs[:3])
    for i in range(len(archs)):
        j = len(archs) - 1 - i
        assert _canonical(one, i)[:2] == _canonical(again, j)[:2]
    assert _canonical(again, len(archs))[:2] == _canonical(one, 0)[:2]


def test_predict_batch_matches_predict_on_onnx_models():
    p = Predictor.load()
    archs = _nb201_archs(6, 5)
    fast = p.predict_batch("nb201", archs, "pixel3@nb201")
    slow = p.predict([nb201.build_onnx(a, cse=False) for a in archs], "pixel3@nb201")
    np.testing.assert_allclose(fast, slow, rtol=1e-5)
    # a different input and class count is a different network: with convolutions in its
    # cells, faster at 16x16 (pixel3 folds a cell of none-edges away: 0.004 ms measured)
    small = p.predict_batch("nb201", archs, "pixel3@nb201", input_shape=(1, 3, 16, 16),
                            num_classes=120)
    with_conv = np.array(["conv" in a for a in archs])
    assert with_conv.sum() >= 8 and np.all(small[with_conv] < fast[with_conv])
    assert not np.allclose(small, fast, rtol=0.05)
    blocks = _fbnet_archs(3, 6)
    np.testing.assert_allclose(p.predict_batch("fbnet", blocks, "pixel3@fbnet"),
                               p.predict([fbnet.build_onnx(b, cse=False) for b in blocks],
                                         "pixel3@fbnet"),
                               rtol=1e-5)


def test_predict_batch_uses_the_device_batch_size():
    p = Predictor.load()
    archs = _nb201_archs(3, 7)
    at_256 = p.predict_batch("nb201", archs, "1080ti_256@nb201")
    explicit = p.predict_batch("nb201", archs, "1080ti_256@nb201", input_shape=(256, 3, 32, 32))
    at_1 = p.predict_batch("nb201", archs, "1080ti_256@nb201", input_shape=(1, 3, 32, 32))
    np.testing.assert_allclose(at_256, explicit)
    assert not np.allclose(at_256, at_1)


@pytest.mark.parametrize("space,arch,fragment", [
    ("nb201", "|nor_conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "nor_conv_5x5"),
    ("nb201", "|none~0|+|none~0|", "expected 3"),
    ("nb201", "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "Wrong input index"),
    ("fbnet", "k3_e1-skip", "22"),
    ("fbnet", "-".join(["k7_e9"] * 22), "k7_e9"),
    ("nb201", 42, "42"),
])
def test_bad_archs_name_the_arch_and_the_problem(space, arch, fragment):
    with pytest.raises(InvalidArchError, match=".") as info:
        space_templates(space).store([arch])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_setting_is_a_clear_error():
    with pytest.raises(InvalidArchError, match="divisible by 4"):
        SpaceTemplates("nb201", (1, 3, 30, 30), 10)


def test_totals_match_the_extracted_graphs():
    archs = _nb201_archs(5, 8)
    totals = space_templates("nb201").totals(archs)
    for i, arch in enumerate(archs):
        g = arch_graph("nb201", arch)
        assert totals["macs"][i] == g.macs and totals["params"][i] == g.params
        assert totals["nodes"][i] == len(g.nodes) and totals["depth"][i] == g.depth
        assert totals["memory_bytes"][i] == g.memory_bytes


def test_unknown_graph_mode_is_a_clear_error():
    from predictor.errors import PredictorError

    with pytest.raises(PredictorError, match="Unknown graph mode 'compiled'.*exported"):
        SpaceTemplates("nb201", (1, 3, 32, 32), 10, "compiled")
