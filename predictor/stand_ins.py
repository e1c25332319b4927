"""Stand-ins for op types a checkpoint never trained on, so that it predicts them as the
nearest kind of kernel it knows rather than through untrained weights.

The op one-hot of an op type that no training graph held feeds weights that never
received a gradient: its node cost is arbitrary (an LSTM came out 30x too fast, a
ConvTranspose decoder 4x). `stand_in_graph` rewrites such nodes before featurisation,
keeping their work (MACs, other FLOPs, bytes, shapes) and changing only the op type (or
fused activation) to a trained one that runs a similar kernel:

* Gemm of more than one row and more work than any training Gemm (an MLP on 2-D
  activations) -> MatMul: training Gemms are all classifier heads;
* ConvTranspose and int8 convolutions -> Conv, Einsum and int8 matmuls -> MatMul,
  (de)quantisation -> elementwise, the other normalisations -> LayerNorm,
  reductions -> ReduceMean, elementwise math -> Add / Relu / Sigmoid, data movement ->
  Transpose / Gather / Reshape (`STAND_INS`);
* recurrent ops (LSTM, GRU, RNN) are unrolled as runtimes execute them: one MatMul
  projecting the whole input sequence onto the gates, then per time step a MatMul of the
  hidden state by the recurrent weights and an elementwise gate update, in sequence (a
  recurrent op's cost grows with its sequence length through per-step overheads, not
  only its MACs);
* 1-D convolutional networks (NCL activations) are read as 2-D ones of height 1
  (`unfold_sequence`), their 1-D ops flagged (`sequence_ops`);
* volumetric networks (3-D convolutions and pools, NCDHW activations) are read as their
  2-D counterparts, depth folded into height (`fold_volumetric`): no training graph
  has rank-5 activations, and the network priced video CNNs 6x too fast from features
  it never saw (the channel count where a batch belongs); folded, still about 4x, so
  their 3-D ops stay flagged (`volumetric_ops`).

Pure: graphs in, graphs out. `Predictor.graphs` applies it with the checkpoint's recorded
training op types; predictions of such models still extrapolate and stay flagged
(`Predictor.unfamiliar_ops`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection
from dataclasses import replace

from predictor.graph import (
    QUANTIZED_CONV,
    QUANTIZED_MATMUL,
    RECURRENT_GATES,
    OpGraph,
    OpNode,
)

_BINARY = ("Add", "Mul")
_CHEAP_UNARY = ("Relu", "Clip")
_TRANSCENDENTAL = ("Sigmoid", "Tanh", "Gelu")
_COPY = ("Transpose", "Concat", "Gather")
_NORM = ("LayerNormalization", "BatchNormalization")
# Op type -> trained op types to stand in for it, in order of preference.
STAND_INS: dict[str, tuple[str, ...]] = {
    "ConvTranspose": ("Conv",),
    "Einsum": ("MatMul", "Gemm"),
    # int8 models (ONNX Runtime's quantisation): the kernels are convolutions and matmuls
    **dict.fromkeys(QUANTIZED_CONV, ("Conv",)),
    **dict.fromkeys(QUANTIZED_MATMUL, ("MatMul", "Gemm")),
    **dict.fromkeys(("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"), _BINARY),
    "InstanceNormalization": _NORM, "GroupNormalization": _NORM,
    **dict.fromkeys(("LeakyRelu", "PRelu", "Elu", "Selu"), _CHEAP_UNARY),
    **dict.fromkeys(("Softplus", "Mish", "Erf", "Exp", "Log"), _TRANSCENDENTAL),
    "LogSoftmax": ("Softmax",),
    **dict.fromkeys(("Sub", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater",
                     "And"), _BINARY),
    **dict.fromkeys(("Sqrt", "Reciprocal", "Neg", "Abs", "Not", "Cast"), _CHEAP_UNARY),
    **dict.fromkeys(("ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ArgMax", "TopK"),
                    ("ReduceMean",)),
    "GlobalMaxPool": ("GlobalAveragePool",),
    **dict.fromkeys(("Pad", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Resize",
                     "Upsample", "Slice", "CumSum", "Split", "GatherElements", "ScatterND"),
                    _COPY),
    **dict.fromkeys(("Squeeze", "Unsqueeze", "Range", "ConstantOfShape"), ("Reshape",)),
}
_STEP_OPS = (("MatMul", "Gemm"), _BINARY)  # recurrent MatMul, gate update


def _pick(candidates: tuple[str, ...], trained: Collection[str]) -> str | None:
    return next((op for op in candidates if op in trained), None)


# A Gemm of more rows than one and more MACs than this runs as MatMul: more work than any
# training Gemm does (all classifier heads; the largest, ResNet-like heads at batch 32 on
# the H200, do 41 M MACs), so that the graphs a checkpoint trained on keep their Gemms.
GEMM_AS_MATMUL_MACS = 50_000_000


def gemm_rows(node: OpNode) -> int:
    """Rows of a Gemm's output (M of its M x N result; transposed inputs alike)."""
    return math.prod(node.output_shape[:-1]) if len(node.output_shape) >= 2 else 1


def stand_in_node(node: OpNode, trained: Collection[str]) -> OpNode:
    """`node` with an untrained op type / fused activation replaced by a trained stand-in
    (unchanged where it is trained or has none), and a Gemm of more rows and work than
    training Gemms have as MatMul."""
    changes = {}
    rows = gemm_rows(node) if node.op_type == "Gemm" else 1
    if rows > 1 and node.macs > GEMM_AS_MATMUL_MACS and "MatMul" in trained:
        # Training graphs hold Gemm only as classifier heads, so the network learned it as
        # a cheap op: a 512-row MLP (2-D activations) came out 8x too fast as Gemm and
        # right as MatMul, the same GEMM kernel in runtimes. A bias (Gemm's input C) reads
        # as the Add that `predictor.graph` fuses into a MatMul.
        changes["op_type"] = "MatMul"
        cols = node.output_shape[-1]
        depth = node.macs // max(rows * cols, 1)
        if node.params > depth * cols and "Add" not in node.fused:
            changes.update(fused=("Add", *node.fused), other_flops=node.other_flops + rows * cols)
    elif node.op_type not in trained and node.op_type in STAND_INS:
        op = _pick(STAND_INS[node.op_type], trained)
        if op is not None:
            changes["op_type"] = op
    if node.activation and node.activation not in trained and node.activation in STAND_INS:
        act = _pick(STAND_INS[node.activation], trained)
        if act is not None:
            changes["activation"] = act
    return replace(node, **changes) if changes else node


def _unroll(node: OpNode, trained: Collection[str]) -> list[list[OpNode]] | None:
    """The chains of nodes a recurrent op runs as, one per direction in execution order,
    or None when no MatMul-like or elementwise op is trained."""
    matmul, update = (_pick(ops, trained) for ops in _STEP_OPS)
    if matmul is None or update is None or len(node.input_shape) < 3:
        return None
    gates = RECURRENT_GATES[node.op_type]
    seq, batch, feat = node.input_shape[:3]
    hidden = node.output_shape[-1] if node.output_shape else 1
    width = gates * hidden
    # `graph.py` counts directions x seq x batch x width x (feat + hidden) MACs
    directions = max(round(node.macs / max(seq * batch * width * (feat + hidden), 1)), 1)
    weight_elem = node.weight_bytes // node.params if node.params else 4
    out_numel = math.prod(node.output_shape) if node.output_shape else 0
    elem = node.write_bytes // out_numel if out_numel else 4  # bytes per activation value
    step_flops = node.other_flops // (directions * seq)
    chains = []
    for d in range(directions):
        chain = [OpNode(
            name=f"{node.name}/d{d}/input", op_type=matmul,
            input_shape=(seq * batch, feat), output_shape=(seq * batch, width),
            macs=seq * batch * width * feat, params=width * feat,
            weight_bytes=width * feat * weight_elem,
            read_bytes=node.read_bytes // directions, write_bytes=seq * batch * width * elem)]
        for t in range(seq):
            chain.append(OpNode(
                name=f"{node.name}/d{d}/t{t}/recurrent", op_type=matmul,
                input_shape=(batch, hidden), output_shape=(batch, width),
                macs=batch * width * hidden, params=width * hidden,
                weight_bytes=width * hidden * weight_elem,
                read_bytes=batch * hidden * elem, write_bytes=batch * width * elem))
            chain.append(OpNode(
                name=f"{node.name}/d{d}/t{t}/gates", op_type=update,
                input_shape=(batch, width), output_shape=(batch, hidden),
                other_flops=step_flops, read_bytes=2 * batch * width * elem,
                write_bytes=batch * hidden * elem))
        chains.append(chain)
    return chains


# Ops whose kernel spans the spatial dims: a 3-D kernel marks a volumetric network.
_SPATIAL_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool",
                *QUANTIZED_CONV)


def _fold_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(N, C, D, H, W) -> (N, C, D * H, W); other ranks as they are."""
    return (*shape[:2], shape[2] * shape[3], shape[4]) if len(shape) == 5 else shape


def volumetric_ops(graph: OpGraph) -> dict[str, int]:
    """Counts of 3-D convolutions and pools by op type, named "Conv (3-D)" and so on: no
    training graph held them, so their predictions extrapolate even once folded."""
    return dict(Counter(f"{n.op_type} (3-D)" for n in graph.nodes
                        if n.op_type in _SPATIAL_OPS and len(n.kernel) == 3))


def fold_volumetric(graph: OpGraph) -> OpGraph:
    """A graph with 3-D convolutions or pools as its 2-D counterpart: every rank-5
    activation (N, C, D, H, W) becomes (N, C, D * H, W) and 3-D kernels, strides and
    dilations keep their last two (height, width) values. Work (MACs, FLOPs, bytes) is
    kept. Any other graph (a transformer's rank-5 reshapes included) is returned as it
    is."""
    if not volumetric_ops(graph):
        return graph
    nodes = [replace(n, input_shape=_fold_shape(n.input_shape),
                     output_shape=_fold_shape(n.output_shape),
                     kernel=n.kernel[-2:], stride=n.stride[-2:], dilation=n.dilation[-2:])
             for n in graph.nodes]
    inputs = {name: _fold_shape(shape) for name, shape in graph.input_shapes.items()}
    return replace(graph, nodes=nodes, input_shapes=inputs)


def sequence_ops(graph: OpGraph) -> dict[str, int]:
    """Counts of 1-D convolutions and pools by op type, named "Conv (1-D)" and so on: no
    training graph held them, so their predictions extrapolate even once unfolded."""
    return dict(Counter(f"{n.op_type} (1-D)" for n in graph.nodes
                        if n.op_type in _SPATIAL_OPS and len(n.kernel) == 1))


def interpolation_ops(graph: OpGraph) -> dict[str, int]:
    """Counts of cubic Resize / Upsample ops, named "Resize (cubic)": training graphs resize
    by nearest and linear interpolation only, and runtimes price cubic very differently
    (ONNX Runtime 1.32, 2 threads, 21 x 256 x 256 outputs: nearest 0.5 ms, linear 0.5 ms,
    cubic 62 ms)."""
    return dict(Counter(f"{n.op_type} (cubic)" for n in graph.nodes if n.mode == "cubic"))


# Models that multiply millions of weights by a few rows (a generating step of a decoder:
# one token, each weight read once per MAC or so) are bound by reading their weights, a
# regime training models are not in: on this CPU's held-out runtime, calibrated on the
# reference set, two decoding steps came out at 0.28x and 0.46x their time
# (`scripts/benchmark_workloads.py`, stop 40). Every training transformer multiplies at
# least 16 tokens; a 16-token BERT does about 16 MACs per weight.
STREAMING_MACS_PER_WEIGHT = 8
STREAMING_MIN_WEIGHTS = 2_000_000


def streams_weights(graph: OpGraph) -> bool:
    """Whether the matrix products of `graph` (MatMul, Gemm) read more than
    `STREAMING_MIN_WEIGHTS` weights and do fewer than `STREAMING_MACS_PER_WEIGHT` MACs per
    weight: memory-bound, its prediction extrapolates (flagged by `latpred predict`).
    Convolutions do not count: a CNN at a small input (MobileNetV2 at 32 x 32: 2 MACs per
    weight) reuses its weights little too, but training CNNs cover it (0.87x its time on
    the held-out runtime from the reference set, stop 43)."""
    products = [n for n in graph.nodes if n.op_type in ("MatMul", "Gemm") and n.macs]
    weights = sum(n.params for n in products)
    return (weights > STREAMING_MIN_WEIGHTS
            and sum(n.macs for n in products) < STREAMING_MACS_PER_WEIGHT * weights)


def _unfold_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(N, C, L) -> (N, C, 1, L); other ranks as they are."""
    return (*shape[:2], 1, shape[2]) if len(shape) == 3 else shape


def unfold_sequence(graph: OpGraph) -> OpGraph:
    """A 1-D convolutional network (audio, ECG, temporal CNNs) as the 2-D one of height 1
    that runtimes execute alike: every rank-3 activation (N, C, L) becomes (N, C, 1, L),
    as 1-D kernels, strides and dilations already read as (1, k). Training graphs hold
    2-D feature maps only; shapes are featurised right-aligned, so (N, C, L) put the
    channels where a feature map's height goes and the batch where its channels go (and
    the input's length was lost). Chosen on selection runtimes (stop 30,
    `scripts/select_sequence_unfold.py`: 10 1-D CNNs predicted from the reference set, MAPE
    torch 1 thread 308 -> 155 %, ONNX Runtime 2 threads 58 -> 25 %). A graph that also
    multiplies rank-3 tensors (a transformer's (B, S, D) activations, a conformer) is
    returned as it is, as is any without 1-D ops."""
    if not sequence_ops(graph) or any(n.op_type in ("MatMul", "Gemm", "Einsum")
                                      and len(n.input_shape) >= 3 for n in graph.nodes):
        return graph
    nodes = [replace(n, input_shape=_unfold_shape(n.input_shape),
                     output_shape=_unfold_shape(n.output_shape)) for n in graph.nodes]
    inputs = {name: _unfold_shape(shape) for name, shape in graph.input_shapes.items()}
    return replace(graph, nodes=nodes, input_shapes=inputs)


def stand_in_graph(graph: OpGraph, trained: Collection[str]) -> OpGraph:
    """`graph` with every node whose op type `trained` lacks replaced by its stand-in
    (recurrent ops unrolled), volumetric ops folded to 2-D (`fold_volumetric`) and 1-D
    convolutional networks unfolded to 2-D (`unfold_sequence`); the graph itself when
    nothing changes."""
    graph = unfold_sequence(fold_volumetric(graph))
    trained = frozenset(trained)
    nodes: list[OpNode] = []
    heads: list[list[int]] = []  # per old node: new nodes reading its inputs
    tails: list[list[int]] = []  # per old node: new nodes producing its outputs
    edges: set[tuple[int, int]] = set()
    for node in graph.nodes:
        chains = (_unroll(node, trained) if node.op_type in RECURRENT_GATES
                  and node.op_type not in trained else None)
        if chains is None:
            nodes.append(stand_in_node(node, trained))
            heads.append([len(nodes) - 1])
            tails.append([len(nodes) - 1])
            continue
        heads.append([])
        tails.append([])
        for chain in chains:
            start = len(nodes)
            nodes.extend(chain)
            edges.update((i, i + 1) for i in range(start, len(nodes) - 1))
            heads[-1].append(start)
            tails[-1].append(len(nodes) - 1)
    if len(nodes) == len(graph.nodes) and all(
            new is old for new, old in zip(nodes, graph.nodes, strict=True)):
        return graph
    edges.update((out, head) for src, dst in graph.edges
                 for out in tails[src] for head in heads[dst])
    return replace(graph, nodes=nodes, edges=sorted(edges))


def unroll_recurrent(graph: OpGraph) -> OpGraph:
    """`graph` with its recurrent ops unrolled and every other node as it is: the form
    training graphs take, so that checkpoints learn recurrent costs per step."""
    kept = {n.op_type for n in graph.nodes} | {n.activation for n in graph.nodes
                                               if n.activation}
    return stand_in_graph(graph, (kept - set(RECURRENT_GATES)) | {"MatMul", "Add"})
