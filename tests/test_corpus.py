"""The cached corpus: same graphs as a real torch export, resumable, corrupt entries rebuilt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from predictor import corpus
from predictor.errors import PredictorError
from predictor.features import FEATURE_SCHEMA, to_data
from predictor.graph import extract_graph
from predictor.graph_store import GraphStore

NB201_SAMPLE = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    "|none~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|",
    "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
]
FBNET_SAMPLE = [
    "-".join(["k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6",
              "skip"] * 2 + ["k3_e6", "skip", "k5_e1_g2", "k3_e1"]),
    "-".join(["skip"] * 22),
]


def _reference_graph(space: str, arch: str):
    """FBNet: a real torch export. NB201: the emitter's eager graph (every op the module
    runs; the export merges repeated ones), which `tests/test_spaces_nb201.py` proves equal
    to the export but for that merge and checks against the module's calls."""
    from predictor.graph import graph_from_inferred
    from predictor.spaces import fbnet, nb201

    if space == "nb201":
        return graph_from_inferred(nb201.build_onnx(arch, cse=False))
    net = fbnet.FBNetNetwork(arch, input_shape=(1, 3, 32, 32), num_classes=100)
    return extract_graph(net.eval(), example_input=torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("space,archs", [("nb201", NB201_SAMPLE), ("fbnet", FBNET_SAMPLE)])
def test_corpus_graphs_equal_the_reference(tmp_path, space, archs) -> None:
    stores = corpus.build_corpus(space, archs=archs, batch_sizes=(1, 32), root=tmp_path,
                                 workers=1, progress=False)
    for i, arch in enumerate(archs):
        reference = _reference_graph(space, arch)
        for b, store in stores.items():
            ref = to_data(reference.with_batch(b))
            ours = store.batch([i])
            assert torch.equal(ours.x, ref.x), (space, arch, b)
            assert torch.equal(ours.edge_index, ref.edge_index)
            # The legacy exporter merges initializers with identical values (the zero
            # biases of untrained folded BNs), so its unique-parameter count is lower;
            # per-node params (in x) match, and so does every other graph feature.
            keep = [i for i, n in enumerate(FEATURE_SCHEMA.graph_features) if n != "log_params"]
            assert torch.equal(ours.graph_attr[:, keep], ref.graph_attr[:, keep])


def test_cache_is_reused_resumed_and_corruption_rebuilt(tmp_path) -> None:
    kwargs = dict(archs=NB201_SAMPLE * 2, batch_sizes=(1,), root=tmp_path, workers=1,
                  progress=False)
    first = corpus.build_corpus("nb201", **kwargs)[1]
    folder = next(tmp_path.iterdir())
    store_file = next(folder.glob("b1*.store"))
    shard = next(folder.glob("shard-*.bin"))
    # warm: loaded, not rebuilt
    mtime = shard.stat().st_mtime_ns
    corpus.build_corpus("nb201", **kwargs)
    assert shard.stat().st_mtime_ns == mtime
    # corrupt both the store and the shard: both rebuilt, same content
    for path in (store_file, shard):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    again = corpus.build_corpus("nb201", **kwargs)[1]
    assert torch.equal(again.node_rows, first.node_rows)
    assert torch.equal(again.node_ids, first.node_ids)
    GraphStore.from_bytes(store_file.read_bytes().partition(b"\n")[2])  # valid again
    # a missing shard is rebuilt alone (resume)
    shard.unlink()
    corpus.build_corpus("nb201", **{**kwargs, "batch_sizes": (1, 32)})
    assert shard.exists()


def test_unknown_space() -> None:
    with pytest.raises(PredictorError, match="nb201"):
        corpus.get_space("darts")


def test_gpu_latency_follows_macs(shared_data_dir, tmp_path) -> None:
    """Tables align with graphs by index: on a batch-256 GPU latency ranks like MACs."""
    from predictor.tables import load_latency_table

    space = corpus.get_space("nb201")
    archs = space.archs(shared_data_dir)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(archs), size=300, replace=False)
    store = corpus.build_corpus("nb201", archs=[archs[i] for i in idx], batch_sizes=(256,),
                                root=tmp_path, workers=2, progress=False)[256]
    macs_col = FEATURE_SCHEMA.graph_features.index("log_macs")
    macs = store.graph_attr[:, macs_col].numpy()
    table = load_latency_table("nb201", "titan_rtx_256", shared_data_dir)
    rho = spearmanr(macs, table[idx]).statistic
    assert rho > 0.9, rho
    # and a shuffled join would not: the alignment is what makes it work
    assert abs(spearmanr(macs, table[rng.permutation(idx)]).statistic) < 0.3
