"""Stand-ins for op types a checkpoint never trained on, on real exported models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from predictor.api import Predictor
from predictor.graph import extract_graph
from predictor.graph_store import GraphStore
from predictor.stand_ins import STAND_INS, stand_in_graph

# the op types of the shipped checkpoint's training graphs (CNNs and transformers)
TRAINED = ("Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv", "Flatten",
           "Gather", "Gelu", "Gemm", "GlobalAveragePool", "HardSigmoid", "HardSwish",
           "LayerNormalization", "MatMul", "MaxPool", "Mul", "ReduceMean", "Relu", "Reshape",
           "Sigmoid", "Softmax", "Tanh", "Transpose")


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.Module], bidirectional: bool) -> None:
        super().__init__()
        self.rnn = cell(32, 48, batch_first=True, bidirectional=bidirectional)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


@pytest.mark.parametrize(("cell", "gates"), [(nn.LSTM, 4), (nn.GRU, 3)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_ops_unroll_into_one_chain_of_steps_per_direction(cell, gates,
                                                                    bidirectional) -> None:
    seq, directions = 12, 2 if bidirectional else 1
    graph = extract_graph(Recurrent(cell, bidirectional).eval(),
                          example_input=torch.randn(1, seq, 32))
    out = stand_in_graph(graph, TRAINED)
    assert {n.op_type for n in out.nodes} <= set(TRAINED)
    unrolled = [n for n in out.nodes if "/d" in n.name]
    # per direction: the input projection, then a recurrent MatMul and a gate update per step
    assert len(unrolled) == directions * (1 + 2 * seq)
    assert out.macs == graph.macs and out.other_flops == graph.other_flops
    step = next(n for n in unrolled if n.name.endswith("/t0/recurrent"))
    assert step.macs == gates * 48 * 48 and step.op_type == "MatMul"
    # each direction is one chain: input -> t0 recurrent -> t0 gates -> t1 recurrent ...
    index = {n.name: i for i, n in enumerate(out.nodes)}
    prefix = unrolled[0].name.rsplit("/d", 1)[0]
    for d in range(directions):
        names = [f"{prefix}/d{d}/input"] + [f"{prefix}/d{d}/t{t}/{part}" for t in range(seq)
                                            for part in ("recurrent", "gates")]
        assert all((index[a], index[b]) in out.edges for a, b in zip(names[:-1], names[1:], strict=True))
    # the graph stays connected: something feeds every chain and reads its last step
    heads = {index[f"{prefix}/d{d}/input"] for d in range(directions)}
    tails = {index[f"{prefix}/d{d}/t{seq - 1}/gates"] for d in range(directions)}
    assert heads <= {b for _, b in out.edges} and tails <= {a for a, _ in out.edges}


def test_untrained_ops_and_activations_take_trained_stand_ins() -> None:
    decoder = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.LeakyReLU(),
                            nn.Upsample(scale_factor=2), nn.Conv2d(8, 3, 3, padding=1))
    graph = extract_graph(decoder.eval(), example_input=torch.randn(1, 16, 8, 8))
    out = stand_in_graph(graph, TRAINED)
    before = {n.op_type for n in graph.nodes} | {n.activation for n in graph.nodes}
    assert {"ConvTranspose", "LeakyRelu", "Resize"} <= before
    for old, new in zip(graph.nodes, out.nodes, strict=True):
        assert new.op_type in TRAINED and new.activation in ("", *TRAINED)
        if old.op_type in TRAINED:
            assert new == old
        else:
            assert new.op_type == next(op for op in STAND_INS[old.op_type] if op in TRAINED)
            # the work stays the node's own
            assert (new.macs, new.input_shape, new.output_shape, new.kernel) == \
                (old.macs, old.input_shape, old.output_shape, old.kernel)
    assert out.edges == graph.edges


def test_graphs_of_trained_ops_or_without_stand_ins_are_left_alone() -> None:
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    graph = extract_graph(cnn.eval(), example_input=torch.randn(1, 3, 16, 16))
    assert stand_in_graph(graph, TRAINED) is graph
    lstm = extract_graph(Recurrent(nn.LSTM, False).eval(), example_input=torch.randn(1, 5, 32))
    # nothing MatMul-like was trained: the LSTM node stays as it is
    kept = stand_in_graph(lstm, ("Conv", "Relu", "Add", "Transpose"))
    assert "LSTM" in {n.op_type for n in kept.nodes}


def test_predictor_predicts_unfamiliar_ops_through_their_stand_ins() -> None:
    """The shipped checkpoint's graphs of an LSTM are the unrolled ones, its latency grows
    with the sequence it steps through, and the op still counts as unfamiliar."""
    predictor = Predictor.load()
    model = Recurrent(nn.LSTM, False).eval()
    graphs = [extract_graph(model, example_input=torch.randn(1, seq, 32)) for seq in (8, 32)]
    store = predictor.graphs(graphs)
    assert int(store.num_nodes[0]) > len(graphs[0].nodes)
    ms = predictor.predict(store, device="silver_4114@nb201")
    assert ms[1] > 2 * ms[0]
    assert predictor.unfamiliar_ops(graphs[0]) == {"LSTM": 1}


class _MatMulMLP(nn.Module):
    """An MLP written with matmuls, which exports as MatMul nodes even on 2-D inputs."""

    def __init__(self, dims: tuple[int, int]):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(dims[0], dims[1]) * 0.02)
        self.b1 = nn.Parameter(torch.zeros(dims[1]))
        self.w2 = nn.Parameter(torch.randn(dims[1], dims[0]) * 0.02)
        self.b2 = nn.Parameter(torch.zeros(dims[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2


def test_gemm_over_many_rows_runs_as_matmul() -> None:
    """Training Gemms are classifier heads; a Gemm of many rows and more work than those is
    the GEMM kernel that MatMul nodes trained, and is predicted like the same MLP written
    with MatMuls."""
    gemm_mlp = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256)).eval()
    rows = extract_graph(gemm_mlp, example_input=torch.randn(512, 256))
    assert {n.op_type for n in rows.nodes} == {"Gemm"}
    out = stand_in_graph(rows, TRAINED)
    assert [n.op_type for n in out.nodes] == ["MatMul", "MatMul"]
    assert [(n.macs, n.input_shape, n.activation) for n in out.nodes] == \
        [(n.macs, n.input_shape, n.activation) for n in rows.nodes]
    one_row = extract_graph(gemm_mlp, example_input=torch.randn(1, 256))
    assert stand_in_graph(one_row, TRAINED) is one_row  # a classifier head stays a Gemm
    head = extract_graph(nn.Linear(1280, 1000).eval(), example_input=torch.randn(32, 1280))
    assert stand_in_graph(head, TRAINED) is head  # as at batch 32, where training has them

    predictor = Predictor.load()
    matmul_mlp = extract_graph(_MatMulMLP((256, 1024)).eval(),
                               example_input=torch.randn(512, 256))
    assert {n.op_type for n in matmul_mlp.nodes} == {"MatMul"}
    gemm_ms, matmul_ms = predictor.predict(predictor.graphs([rows, matmul_mlp]),
                                           device="epyc-ort-2t")
    assert 0.8 < gemm_ms / matmul_ms < 1.25
    # without the stand-in the network prices the Gemms as classifier heads
    raw = GraphStore.from_graphs([rows, matmul_mlp])
    raw_gemm_ms, raw_matmul_ms = predictor.predict(raw, device="epyc-ort-2t")
    assert raw_gemm_ms < 0.5 * raw_matmul_ms


def test_generating_steps_are_flagged_as_streaming_their_weights(tmp_path) -> None:
    """One token through millions of weights is memory-bound, a regime no training model is
    in: `latpred predict` flags it ("streams_weights" in --json, a note); the same layers on
    a prompt of 64 tokens, or a small MLP on one, are not flagged."""
    import json
    import subprocess
    import sys

    from predictor.stand_ins import streams_weights

    layers = nn.Sequential(nn.Linear(1024, 2048), nn.GELU(), nn.Linear(2048, 1024)).eval()
    step = extract_graph(layers, example_input=torch.randn(1, 1, 1024))
    prompt = extract_graph(layers, example_input=torch.randn(1, 64, 1024))
    small = extract_graph(nn.Linear(256, 256).eval(), example_input=torch.randn(1, 1, 256))
    assert streams_weights(step)
    assert not streams_weights(prompt) and not streams_weights(small)
    # a CNN at a small input reads its (convolution) weights a few times each, as training
    # CNNs do: not a generating step
    from predictor.model_zoo import mobilenet_v2

    cnn = extract_graph(mobilenet_v2().eval(), example_input=torch.randn(1, 3, 32, 32))
    assert cnn.macs < 8 * cnn.params and not streams_weights(cnn)
    path = tmp_path / "step.onnx"
    torch.onnx.export(layers, (torch.randn(1, 1, 1024),), str(path), dynamo=False)
    result = subprocess.run([sys.executable, "-m", "predictor.cli", "predict", str(path),
                             "--device", "epyc-ort-2t", "--json"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["streams_weights"] is True
    assert "memory-bound" in result.stderr


def test_int8_models_run_as_the_float_kernels_they_quantise(tmp_path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 10))
    torch.onnx.export(net.eval(), (torch.randn(1, 3, 16, 16),), str(tmp_path / "f.onnx"),
                      dynamo=False)
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx")
    graph = extract_graph(tmp_path / "q.onnx")
    out = stand_in_graph(graph, TRAINED)
    assert {n.op_type for n in out.nodes} <= set(TRAINED)
    convs = [(a, b) for a, b in zip(graph.nodes, out.nodes, strict=True)
             if a.op_type == "ConvInteger"]
    assert convs and all(b.op_type == "Conv" and b.macs == a.macs > 0 for a, b in convs)


def _video_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
                         nn.MaxPool3d(2), nn.Conv3d(8, 16, (1, 3, 3), padding=(0, 1, 1)),
                         nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                         nn.Linear(16, 4)).eval()


def test_volumetric_networks_are_read_as_their_2d_counterparts() -> None:
    """3-D convolutions and pools keep their work, with depth folded into height: no
    rank-5 activation is left (no training graph had one), and the kernels keep their
    (height, width)."""
    from predictor.stand_ins import fold_volumetric, volumetric_ops

    graph = extract_graph(_video_cnn(), example_input=torch.randn(1, 3, 4, 16, 16))
    assert volumetric_ops(graph) == {"Conv (3-D)": 2, "MaxPool (3-D)": 1}
    folded = stand_in_graph(graph, TRAINED)
    assert all(len(s) <= 4 for n in folded.nodes for s in (n.input_shape, n.output_shape))
    assert folded.macs == graph.macs and folded.memory_bytes == graph.memory_bytes
    first = folded.nodes[0]
    assert first.input_shape == (1, 3, 4 * 16, 16) and first.kernel == (3, 3)
    assert folded.primary_input_shape == (1, 3, 64, 16)
    # a graph whose rank-5 tensors are not volumes (attention heads) is left alone
    heads = nn.Sequential(nn.Unflatten(2, (2, 4, 8)), nn.Flatten(2), nn.Linear(64, 8)).eval()
    sequence = extract_graph(heads, example_input=torch.randn(1, 5, 64))
    assert any(len(n.output_shape) == 5 for n in sequence.nodes)
    assert fold_volumetric(sequence) is sequence


def test_volumetric_ops_are_reported_as_unfamiliar() -> None:
    predictor = Predictor.load()
    graph = extract_graph(_video_cnn(), example_input=torch.randn(1, 3, 4, 16, 16))
    assert predictor.unfamiliar_ops(graph) == {"Conv (3-D)": 2, "MaxPool (3-D)": 1}
    small, large = (extract_graph(_video_cnn(), example_input=torch.randn(1, 3, d, 32, 32))
                    for d in (4, 16))
    ms = predictor.predict([small, large], device="silver_4114@nb201")
    assert ms[1] > ms[0] > 0


def _audio_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv1d(1, 16, 9, 4), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Conv1d(16, 32, 5, 2), nn.ReLU(), nn.MaxPool1d(2),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 4)).eval()


def test_sequence_networks_are_read_as_2d_ones_of_height_1() -> None:
    """1-D convolutional networks keep their work, with every (N, C, L) activation as
    (N, C, 1, L), so channels and length sit where a 2-D feature map's do and the input's
    length is its resolution; a transformer's rank-3 activations are left alone."""
    from predictor.stand_ins import sequence_ops, unfold_sequence

    graph = extract_graph(_audio_cnn(), example_input=torch.randn(1, 1, 4000))
    assert sequence_ops(graph) == {"Conv (1-D)": 2, "MaxPool (1-D)": 1}
    assert graph.input_resolution == 1  # (N, C, L) read as a sequence of length C
    unfolded = stand_in_graph(graph, TRAINED)
    assert unfolded.macs == graph.macs and unfolded.memory_bytes == graph.memory_bytes
    first = unfolded.nodes[0]
    assert first.input_shape == (1, 1, 1, 4000) and first.output_shape == (1, 16, 1, 998)
    assert unfolded.primary_input_shape == (1, 1, 1, 4000)
    assert unfolded.input_resolution == 4000
    assert all(len(n.input_shape) != 3 for n in unfolded.nodes)
    # a transformer with a 1-D convolution (a conformer-like block) is left alone
    class ConvAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(32, 32, 3, padding=1, groups=32)
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv(x.transpose(1, 2)).transpose(1, 2)
            return self.attn(x, x, x, need_weights=False)[0]

    hybrid = extract_graph(ConvAttention().eval(), example_input=torch.randn(1, 10, 32))
    assert sequence_ops(hybrid) == {"Conv (1-D)": 1}
    assert unfold_sequence(hybrid) is hybrid


def test_sequence_ops_are_reported_as_unfamiliar() -> None:
    predictor = Predictor.load()
    graph = extract_graph(_audio_cnn(), example_input=torch.randn(1, 1, 4000))
    assert predictor.unfamiliar_ops(graph) == {"Conv (1-D)": 2, "MaxPool (1-D)": 1}
    short, long = (extract_graph(_audio_cnn(), example_input=torch.randn(1, 1, n))
                   for n in (4000, 32000))
    ms = predictor.predict([short, long], device="silver_4114@nb201")
    assert ms[1] > 2 * ms[0] > 0


class _Upsampler(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.conv, self.mode = nn.Conv2d(3, 8, 3, padding=1), mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.conv(x), scale_factor=2, mode=self.mode)


@pytest.mark.parametrize("mode,onnx_mode", [("nearest", "nearest"), ("bilinear", "linear"),
                                            ("bicubic", "cubic")])
def test_only_cubic_interpolation_is_reported_as_unfamiliar(mode: str, onnx_mode: str) -> None:
    """Training graphs resize by nearest and linear interpolation; cubic, which ONNX Runtime
    runs ~100x slower, is flagged."""
    graph = extract_graph(_Upsampler(mode).eval(), example_input=torch.randn(1, 3, 16, 16))
    (resize,) = [n for n in graph.nodes if n.op_type == "Resize"]
    assert resize.mode == onnx_mode and all(n.mode == "" for n in graph.nodes if n is not resize)
    flagged = Predictor.load().unfamiliar_ops(graph)
    assert flagged == ({"Resize (cubic)": 1} if mode == "bicubic" else {})
