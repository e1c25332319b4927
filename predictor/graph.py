"""Operator-graph extraction: a shape-inferred ONNX model in, an `OpGraph` out.

One `OpNode` per compute op as an inference runtime executes it, one edge per data
dependency between compute ops. Extraction is pure: no files, no globals.

What is dropped, because runtimes do not execute it per inference:
- constants and everything computed only from constants and static shapes
  (`Constant`, `Shape`, and shape arithmetic on them: runtimes fold these at load time);
- `Identity` and `Dropout` (no-ops at inference).

What is fused into the producing node, as ONNX Runtime does at its default
optimisation level (the fused ops are listed in `OpNode.fused`):
- `BatchNormalization` after `Conv` / `ConvTranspose` / `Gemm` (folded into the weights);
- an activation (`Relu`, `Clip`, `LeakyRelu`, `Sigmoid`, `HardSigmoid`, `HardSwish`,
  `Tanh`, `Gelu`, ...) after `Conv` / `ConvTranspose` / `Gemm` / `MatMul`;
- a constant bias `Add` after `MatMul` (MatMul + Add -> Gemm).
Fusion only happens when the intermediate tensor has a single consumer and is not a
graph output.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import onnx
from onnx import helper

from predictor.errors import DynamicShapeError, EmptyGraphError
from predictor.onnx_io import InputShapes, ModelSource, activation_inputs, load_model

Shape = tuple[int, ...]

# Ops that only forward their input at inference.
PASSTHROUGH_OPS = frozenset({"Identity", "Dropout"})
# Ops whose output depends only on static shapes, never on activation values.
SHAPE_OPS = frozenset({"Shape", "Size"})
ACTIVATION_OPS = frozenset({
    "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu",
    "Elu", "Selu", "Softplus", "Mish", "PRelu",
})
_FUSE_BN_INTO = frozenset({"Conv", "ConvTranspose", "Gemm"})
_FUSE_ACT_INTO = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Quantized convolutions and matmuls (ONNX Runtime's dynamic / QOperator int8 formats):
# the index of their weight input (the MACs and parameters are a Conv's / MatMul's).
QUANTIZED_CONV = {"ConvInteger": 1, "QLinearConv": 3}
QUANTIZED_MATMUL = {"MatMulInteger": 1, "QLinearMatMul": 3}
RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}  # gate matmuls per step
MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", *RECURRENT_GATES,
                     *QUANTIZED_CONV, *QUANTIZED_MATMUL})
_FLOAT_TYPES = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
})
# Weights of the quantized ops are 8-bit integers (their scales and zero points count too).
_INT8_TYPES = frozenset({onnx.TensorProto.INT8, onnx.TensorProto.UINT8})
_WEIGHT_TYPES = _FLOAT_TYPES | _INT8_TYPES
# Arithmetic per output element for ops outside MAC_OPS (rough, for `other_flops`).
_FLOPS_PER_ELEMENT = {
    "Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 8, "GroupNormalization": 8,
    "InstanceNormalization": 8, "BatchNormalization": 2, "Gelu": 8, "Erf": 8, "Mish": 6,
    "Softplus": 4, "Sigmoid": 4, "Tanh": 4, "HardSwish": 3, "HardSigmoid": 2, "Elu": 3,
    "Selu": 3, "Exp": 4, "Sqrt": 2, "Pow": 4, "Div": 1, "Clip": 1,
}
_ZERO_FLOP_OPS = frozenset({
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice",
    "Gather", "Expand", "Tile", "Pad", "Cast", "DepthToSpace", "SpaceToDepth",
})


@dataclass(frozen=True)
class OpNode:
    """One compute op as a runtime executes it (after fusion).

    Sizes are element counts, bytes are bytes; shapes are of the first activation
    input and the first output, () when the op has no activation input.
    """

    name: str = field(compare=False)  # not part of equality: equal nodes have equal features
    op_type: str = ""  # ONNX op type; "domain::Type" for ops outside the default domain
    fused: tuple[str, ...] = ()  # op types folded into this node, in order
    activation: str = ""  # fused activation op type, "" if none
    input_shape: Shape = ()
    output_shape: Shape = ()
    kernel: Shape = ()  # spatial kernel size (Conv/ConvTranspose/pools)
    stride: Shape = ()
    dilation: Shape = ()
    groups: int = 1
    depthwise: bool = False
    macs: int = 0  # multiply-accumulates (MAC_OPS only)
    other_flops: int = 0  # rough arithmetic of every other op
    params: int = 0  # float weight elements (initializers) this node reads
    weight_bytes: int = 0
    read_bytes: int = 0  # activation bytes read
    write_bytes: int = 0  # activation bytes written
    # Interpolation of Resize / Upsample ("nearest", "linear", "cubic"), "" otherwise: not a
    # feature (training graphs resize by nearest and linear only), but cubic is flagged as
    # unfamiliar (`predictor.stand_ins.interpolation_ops`): ONNX Runtime runs it ~100x
    # slower than linear.
    mode: str = ""


@dataclass
class OpGraph:
    """A model's operator graph: compute nodes in topological order and data edges."""

    nodes: list[OpNode]
    edges: list[tuple[int, int]]  # (producer index, consumer index)
    input_shapes: dict[str, Shape]
    unknown_ops: dict[str, int] = field(default_factory=dict)
    params: int = 0  # unique float weight elements of the model (shared weights once)

    @property
    def macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    @property
    def other_flops(self) -> int:
        return sum(n.other_flops for n in self.nodes)

    @property
    def memory_bytes(self) -> int:
        """Total traffic: activations read and written plus weights read, in bytes."""
        return sum(n.read_bytes + n.write_bytes + n.weight_bytes for n in self.nodes)

    @property
    def depth(self) -> int:
        """Number of compute nodes on the longest input-to-output path."""
        longest = [1] * len(self.nodes)
        preds: list[list[int]] = [[] for _ in self.nodes]
        for src, dst in self.edges:
            preds[dst].append(src)
        for i in range(len(self.nodes)):  # nodes are topologically sorted
            if preds[i]:
                longest[i] = 1 + max(longest[p] for p in preds[i])
        return max(longest, default=0)

    @property
    def batch_size(self) -> int:
        shape = self.primary_input_shape
        return shape[0] if shape else 1

    @property
    def primary_input_shape(self) -> Shape:
        return next(iter(self.input_shapes.values()), ())

    @property
    def input_resolution(self) -> int:
        """Spatial size of the first input: H*W of NCHW, L of (N, L) / (N, L, D), 1 else."""
        shape = self.primary_input_shape
        if len(shape) >= 4:
            return math.prod(shape[2:])
        if len(shape) in (2, 3):
            return shape[1]
        return 1

    def with_batch(self, batch_size: int) -> OpGraph:
        """The same graph run at another batch size.

        Exact for graphs whose activations all carry the batch as their leading
        dimension (CNNs in NCHW, batch-first transformers), such as the search spaces'
        networks: activation shapes, MACs, other FLOPs and activation bytes scale with the
        batch; parameters and weight bytes do not.
        """
        old = self.batch_size
        if batch_size == old:
            return self
        return OpGraph(
            nodes=[rebatch_node(n, old, batch_size) for n in self.nodes],
            edges=list(self.edges),
            input_shapes={k: (batch_size, *v[1:]) if v else v
                          for k, v in self.input_shapes.items()},
            unknown_ops=dict(self.unknown_ops),
            params=self.params,
        )

    def op_counts(self) -> dict[str, int]:
        return dict(Counter(n.op_type for n in self.nodes).most_common())

    def summary(self) -> dict[str, Any]:
        """Graph-level figures as plain JSON-able values."""
        return {
            "macs": self.macs,
            "params": self.params,
            "other_flops": self.other_flops,
            "memory_bytes": self.memory_bytes,
            "weight_bytes": sum(n.weight_bytes for n in self.nodes),
            "activation_bytes": sum(n.read_bytes + n.write_bytes for n in self.nodes),
            "nodes": len(self.nodes),
            "edges": len(self.edges),
            "depth": self.depth,
            "batch_size": self.batch_size,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "input_resolution": self.input_resolution,
            "op_counts": self.op_counts(),
            "unknown_ops": dict(self.unknown_ops),
        }


def rebatch_node(node: OpNode, old_batch: int, new_batch: int) -> OpNode:
    """`node` with its batch dimension changed from `old_batch` to `new_batch`: the leading
    one, except in recurrent ops, whose tensors are sequence-first (X: seq, batch, features;
    Y: seq, directions, batch, hidden)."""
    recurrent = node.op_type in RECURRENT_GATES

    def shape(s: Shape, output: bool = False) -> Shape:
        axis = (len(s) - 2 if output else 1) if recurrent else 0
        if 0 <= axis < len(s) and s[axis] == old_batch:
            return (*s[:axis], new_batch, *s[axis + 1:])
        return s

    def scale(value: int) -> int:
        return value * new_batch // old_batch

    return replace(
        node, input_shape=shape(node.input_shape), output_shape=shape(node.output_shape, output=True),
        macs=scale(node.macs), other_flops=scale(node.other_flops),
        read_bytes=scale(node.read_bytes), write_bytes=scale(node.write_bytes),
    )


def _resize_mode(node: onnx.NodeProto, attrs: dict[str, Any]) -> str:
    if node.op_type not in ("Resize", "Upsample"):
        return ""
    mode = attrs.get("mode", b"nearest")
    return mode.decode() if isinstance(mode, bytes) else str(mode)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _qualified_type(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


class _Tensors:
    """Shapes, element types and constness of every tensor of a shape-inferred model."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.shape: dict[str, Shape | None] = {}
        self.elem_type: dict[str, int] = {}
        for value_info in (*graph.input, *graph.value_info, *graph.output):
            tensor_type = value_info.type.tensor_type
            self.elem_type[value_info.name] = tensor_type.elem_type
            if tensor_type.HasField("shape"):
                dims = tensor_type.shape.dim
                if all(d.HasField("dim_value") for d in dims):
                    self.shape[value_info.name] = tuple(d.dim_value for d in dims)
                    continue
            self.shape.setdefault(value_info.name, None)
        for init in graph.initializer:
            self.shape[init.name] = tuple(init.dims)
            self.elem_type[init.name] = init.data_type
        runtime = {i.name for i in activation_inputs(model)}
        # Weights: initializers and the shape-only inputs that stand in for large ones.
        self.weights = {i.name for i in graph.input if i.name not in runtime} | {
            i.name for i in graph.initializer}
        self.runtime_inputs = runtime

    def numel(self, name: str) -> int:
        shape = self.shape.get(name)
        return math.prod(shape) if shape is not None else 0

    def nbytes(self, name: str) -> int:
        return self.numel(name) * _elem_size(self.elem_type.get(name, onnx.TensorProto.FLOAT))


def _elem_size(elem_type: int) -> int:
    try:
        return max(1, onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return 4


def extract_graph(
    source: ModelSource,
    *,
    input_shape: InputShapes = None,
    example_input: Any = None,
    known_ops: frozenset[str] | None = None,
) -> OpGraph:
    """Extract the operator graph of any model source.

    Args:
        source: ONNX path, bytes, `onnx.ModelProto`, or torch module (+ `example_input`).
        input_shape: fixed shape for dynamic inputs, e.g. ``(1, 3, 224, 224)``.
        known_ops: op types that are not "unknown"; defaults to the feature vocabulary.

    Raises:
        ModelNotFoundError, InvalidModelError, EmptyGraphError, DynamicShapeError.
    """
    model = load_model(source, input_shape=input_shape, example_input=example_input)
    return graph_from_inferred(model, known_ops=known_ops)


def graph_from_inferred(
    model: onnx.ModelProto, *, known_ops: frozenset[str] | None = None
) -> OpGraph:
    """Build the `OpGraph` of a model returned by `predictor.onnx_io.load_model`."""
    if known_ops is None:
        from predictor.ops import OP_VOCABULARY

        known_ops = frozenset(OP_VOCABULARY)
    graph = model.graph
    tensors = _Tensors(model)
    nodes = _topological(graph.node)

    # Tensors whose values are known before any input arrives.
    static: set[str] = set(tensors.weights) - tensors.runtime_inputs
    alias: dict[str, str] = {}  # passthrough output -> its input
    compute: list[onnx.NodeProto] = []
    for node in nodes:
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or all(i in static for i in inputs) or (
            node.op_type in SHAPE_OPS and node.domain in ("", "ai.onnx")
        ):
            static.update(o for o in node.output if o)
        elif node.op_type in PASSTHROUGH_OPS and inputs:
            alias[node.output[0]] = alias.get(inputs[0], inputs[0])
        else:
            compute.append(node)
    if not compute:
        raise EmptyGraphError("The model has no compute operator (only constants or no-ops)")

    def resolve(name: str) -> str:
        return alias.get(name, name)

    compute = _fold_decomposed(compute, static, resolve)

    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(compute):
        for name in node.input:
            if name:
                consumers.setdefault(resolve(name), []).append(i)
    graph_outputs = {resolve(o.name) for o in graph.output}

    def single_consumer(tensor: str) -> int | None:
        users = consumers.get(tensor, [])
        if len(users) == 1 and tensor not in graph_outputs:
            return users[0]
        return None

    # Fusion: absorb followers into their producer; `absorbed[j] = i` means node j
    # is part of node i, and node i's outputs become node j's outputs.
    absorbed: dict[int, int] = {}
    fused_into: dict[int, list[int]] = {}
    for i, node in enumerate(compute):
        if i in absorbed or node.domain not in ("", "ai.onnx"):
            continue
        head_type = node.op_type
        tail = i
        chain: list[int] = []
        stages = []
        if head_type in _FUSE_BN_INTO:
            stages.append("bn")
        if head_type == "MatMul":
            stages.append("bias")
        if head_type in _FUSE_ACT_INTO:
            stages.append("act")
        for stage in stages:
            out = resolve(compute[tail].output[0]) if compute[tail].output else ""
            j = single_consumer(out)
            if j is None or j in absorbed or compute[j].domain not in ("", "ai.onnx"):
                continue
            follower = compute[j]
            first = resolve(follower.input[0]) if follower.input else ""
            others = [resolve(x) for x in follower.input if x and resolve(x) != out]
            if (
                (stage == "bn" and follower.op_type == "BatchNormalization" and first == out)
                or (stage == "act" and follower.op_type in ACTIVATION_OPS and first == out)
                or (stage == "bias" and follower.op_type == "Add" and len(others) == 1
                    and others[0] in static)
            ):
                absorbed[j] = i
                chain.append(j)
                tail = j
        if chain:
            fused_into[i] = chain

    kept = [i for i in range(len(compute)) if i not in absorbed]
    index_of = {i: k for k, i in enumerate(kept)}
    producer: dict[str, int] = {}
    for i in kept:
        last = fused_into[i][-1] if i in fused_into else i
        for out in compute[last].output:
            if out:
                producer[out] = index_of[i]

    out_nodes: list[OpNode] = []
    edges: set[tuple[int, int]] = set()
    unknown: Counter[str] = Counter()
    used_weights: dict[str, int] = {}
    for i in kept:
        node = compute[i]
        chain = [compute[j] for j in fused_into.get(i, [])]
        last = chain[-1] if chain else node
        op_node = _describe(node, chain, last, tensors, static, resolve)
        out_nodes.append(op_node)
        if op_node.op_type not in known_ops:
            unknown[op_node.op_type] += 1
        for member in (node, *chain):
            for name in member.input:
                if not name:
                    continue
                name = resolve(name)
                if name in producer and producer[name] != index_of[i]:
                    edges.add((producer[name], index_of[i]))
                elif name in tensors.weights and tensors.elem_type.get(name) in _FLOAT_TYPES:
                    used_weights[name] = tensors.numel(name)
    # 8-bit weights of a quantized model: those its quantized ops read, and those its
    # DequantizeLinear nodes (folded as constant work) turn into float weights (QDQ)
    used_weights.update((name, tensors.numel(name)) for name in tensors.weights
                        if tensors.elem_type.get(name) in _INT8_TYPES)
    return OpGraph(
        nodes=out_nodes,
        edges=sorted(edges),
        input_shapes={
            i.name: tensors.shape.get(i.name) or () for i in activation_inputs(model)
        },
        unknown_ops=dict(unknown.most_common()),
        params=sum(used_weights.values()),
    )


class _Dataflow:
    """Who produces and who reads each tensor of the compute nodes (for `_fold_decomposed`)."""

    def __init__(self, compute: list[onnx.NodeProto], static: set[str], resolve) -> None:
        self.compute, self.static, self.resolve = compute, static, resolve
        self.producer: dict[str, int] = {}
        self.readers: dict[str, list[int]] = {}
        for i, node in enumerate(compute):
            for name in node.input:
                if name:
                    self.readers.setdefault(resolve(name), []).append(i)
            for name in node.output:
                if name:
                    self.producer[name] = i

    def is_op(self, i: int | None, op_type: str) -> bool:
        return i is not None and self.compute[i].op_type == op_type

    def out(self, i: int) -> str:
        return self.compute[i].output[0] if self.compute[i].output else ""

    def args(self, i: int) -> list[str]:
        return [self.resolve(x) for x in self.compute[i].input if x]

    def reader(self, i: int | None, op_type: str) -> int | None:
        """The only node reading node i's output, if it is an `op_type`."""
        if i is None:
            return None
        users = self.readers.get(self.out(i), [])
        return users[0] if len(users) == 1 and self.is_op(users[0], op_type) else None

    def split(self, i: int) -> tuple[str | None, str | None]:
        """(the static operand, the other) of a binary node i; (None, None) otherwise."""
        a = self.args(i)
        if len(a) != 2 or (a[0] in self.static) == (a[1] in self.static):
            return None, None
        return (a[0], a[1]) if a[0] in self.static else (a[1], a[0])

    def of_static(self, i: int | None, op_type: str, operand: str) -> bool:
        """Node i is `op_type` of `operand` and a static value."""
        return self.is_op(i, op_type) and self.split(i)[1] == operand


# A match: (op type, inputs, attributes, the matched nodes, the last of them).
_Match = tuple[str, list[str], dict[str, Any], list[int], int]


def _fold_decomposed(compute: list[onnx.NodeProto], static: set[str], resolve
                     ) -> list[onnx.NodeProto]:
    """Exports below opset 17 (LayerNorm) or 20 (GELU) spell these ops out in elementwise
    steps; fold torch's (and HF's tanh GELU) spellings back into one `LayerNormalization` /
    `Gelu` node, so a network gets the same graph (and prediction) whatever opset it was
    exported with. A match needs every intermediate to feed only the next step."""
    flow = _Dataflow(compute, static, resolve)
    matchers = {"Erf": _erf_gelu, "Tanh": _tanh_gelu, "Sub": _layer_norm}
    replace: dict[int, onnx.NodeProto] = {}  # last node of a match -> the folded node
    dropped: set[int] = set()
    for i, node in enumerate(compute):
        matcher = matchers.get(node.op_type)
        if matcher is None or node.domain not in ("", "ai.onnx") or i in dropped \
                or not flow.args(i):
            continue
        match = matcher(flow, i)
        if match is not None:
            op_type, inputs, attrs, nodes, last = match
            replace[last] = onnx.helper.make_node(op_type, inputs, [flow.out(last)],
                                                  name=node.name, **attrs)
            dropped.update(nodes)
    if not replace:
        return compute
    return [replace.get(i, node) for i, node in enumerate(compute)
            if i in replace or i not in dropped]


def _erf_gelu(flow: _Dataflow, i: int) -> _Match | None:
    """Around Erf node i: Div(x, c) -> Erf -> Add(c) -> Mul(x, .) -> Mul(c)."""
    div = flow.producer.get(flow.args(i)[0])
    if not flow.is_op(div, "Div") or flow.split(div)[0] != flow.args(div)[-1] \
            or flow.readers.get(flow.out(div)) != [i]:
        return None
    x = flow.args(div)[0]
    add = flow.reader(i, "Add")
    if not flow.of_static(add, "Add", flow.out(i)):
        return None
    mul = flow.reader(add, "Mul")
    if mul is None or sorted(flow.args(mul)) != sorted([x, flow.out(add)]):
        return None
    half = flow.reader(mul, "Mul")
    if not flow.of_static(half, "Mul", flow.out(mul)):
        return None
    return "Gelu", [x], {}, [div, i, add, mul, half], half


def _tanh_gelu(flow: _Dataflow, i: int) -> _Match | None:
    """Around Tanh node i: 0.5 x (1 + tanh(c (x + k x^3))), x^3 as Pow(x, 3) or
    x * (x * x), the halving after (torch) or before (HF's NewGELU) the product."""
    scaled = flow.producer.get(flow.args(i)[0])  # c * (x + k x^3)
    if not flow.is_op(scaled, "Mul") or flow.split(scaled)[1] is None:
        return None
    inner = flow.producer.get(flow.split(scaled)[1])  # x + k x^3
    if not flow.is_op(inner, "Add") or len(flow.args(inner)) != 2:
        return None
    for x, term in (flow.args(inner), flow.args(inner)[::-1]):
        kx3 = flow.producer.get(term)
        if not flow.is_op(kx3, "Mul") or flow.split(kx3)[1] is None:
            continue
        cube = flow.producer.get(flow.split(kx3)[1])
        if flow.is_op(cube, "Pow") and flow.split(cube)[1] == x:
            powers = [cube]
        elif flow.is_op(cube, "Mul") and x in flow.args(cube):
            square = flow.producer.get(next((a for a in flow.args(cube) if a != x), x))
            if not (flow.is_op(square, "Mul") and flow.args(square) == [x, x]):
                continue
            powers = [square, cube]
        else:
            continue
        one_plus = flow.reader(i, "Add")
        if not flow.of_static(one_plus, "Add", flow.out(i)):
            return None
        product = flow.reader(one_plus, "Mul")
        if product is None or len(flow.args(product)) != 2:
            return None
        other = next(a for a in flow.args(product) if a != flow.out(one_plus))
        half = flow.reader(product, "Mul")
        if other == x and flow.of_static(half, "Mul", flow.out(product)):  # torch
            tail, last = [one_plus, product, half], half
        else:  # HF: (0.5 * x) * (1 + tanh(...))
            halved = flow.producer.get(other)
            if not flow.of_static(halved, "Mul", x):
                return None
            tail, last = [one_plus, halved, product], product
        nodes = [*powers, kx3, inner, scaled, i, *tail]
        if any(len(flow.readers.get(flow.out(j), [])) != 1 for j in nodes if j != last):
            return None
        return "Gelu", [x], {"approximate": "tanh"}, nodes, last
    return None


def _layer_norm(flow: _Dataflow, i: int) -> _Match | None:
    """Around Sub node i: m = ReduceMean(x); d = Sub(x, m);
    Div(d, Sqrt(Add(ReduceMean(Pow(d, c)), c))) [-> Mul(gamma) -> Add(beta)]."""
    if len(flow.args(i)) != 2:
        return None
    x, mean = flow.args(i)
    m = flow.producer.get(mean)
    if not flow.is_op(m, "ReduceMean") or flow.args(m)[:1] != [x] \
            or flow.readers.get(mean) != [i]:
        return None
    d = flow.out(i)
    users = flow.readers.get(d, [])
    pow_ = next((u for u in users if flow.of_static(u, "Pow", d)), None)
    div = next((u for u in users if flow.is_op(u, "Div") and flow.args(u)[:1] == [d]), None)
    if pow_ is None or div is None or len(users) != 2:
        return None
    var = flow.reader(pow_, "ReduceMean")
    eps = flow.reader(var, "Add")
    sqrt = flow.reader(eps, "Sqrt") if var is not None and \
        flow.of_static(eps, "Add", flow.out(var)) else None
    if sqrt is None or flow.args(div)[1:] != [flow.out(sqrt)] \
            or flow.readers.get(flow.out(sqrt)) != [div]:
        return None
    nodes, inputs, last = [m, i, pow_, var, eps, sqrt, div], [x], div
    for step in ("Mul", "Add"):  # the affine scale, then shift
        nxt = flow.reader(last, step)
        if not flow.of_static(nxt, step, flow.out(last)):
            break
        inputs.append(flow.split(nxt)[0])
        nodes.append(nxt)
        last = nxt
    return "LayerNormalization", inputs, {"axis": -1}, nodes, last


def _topological(nodes: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Nodes in a topological order (ONNX requires one, but not every producer keeps it)."""
    produced_by = {}
    for idx, node in enumerate(nodes):
        for out in node.output:
            produced_by[out] = idx
    order: list[int] = []
    state = [0] * len(nodes)  # 0 new, 1 visiting, 2 done
    for root in range(len(nodes)):
        if state[root]:
            continue
        stack = [(root, iter(nodes[root].input))]
        state[root] = 1
        while stack:
            idx, it = stack[-1]
            for name in it:
                dep = produced_by.get(name)
                if dep is not None and state[dep] == 0:
                    state[dep] = 1
                    stack.append((dep, iter(nodes[dep].input)))
                    break
            else:
                stack.pop()
                state[idx] = 2
                order.append(idx)
    return [nodes[i] for i in order]


def _spatial(attrs: dict[str, Any], key: str, rank: int, default: int) -> Shape:
    value = attrs.get(key)
    return tuple(int(v) for v in value) if value else (default,) * rank


def _weight_types(op_type: str) -> frozenset[int]:
    """Element types of the initializers an op of this type reads as weights."""
    return _WEIGHT_TYPES if op_type in QUANTIZED_CONV or op_type in QUANTIZED_MATMUL \
        else _FLOAT_TYPES


def elementwise_flops(op_type: str, elements: int) -> int:
    """The `other_flops` counted for an op of `op_type` (or fused into a node) that writes
    `elements` values."""
    return elements * _FLOPS_PER_ELEMENT.get(op_type, 1)


def _einsum_macs(equation: bytes | str, shapes: list[Shape]) -> int:
    """Multiply-accumulates of a two-operand einsum: the product of the sizes of all its
    indices (each output element sums over the contracted ones); 0 when unparsable."""
    text = equation.decode() if isinstance(equation, bytes) else equation
    operands = text.replace(" ", "").split("->")[0].split(",")
    if len(operands) != 2 or "..." in text:
        return 0
    sizes: dict[str, int] = {}
    for letters, shape in zip(operands, shapes, strict=False):
        if len(letters) != len(shape):
            return 0
        sizes.update(zip(letters, shape, strict=True))
    return math.prod(sizes.values())


def _describe(
    node: onnx.NodeProto,
    chain: list[onnx.NodeProto],
    last: onnx.NodeProto,
    tensors: _Tensors,
    static: set[str],
    resolve,
) -> OpNode:
    op_type = _qualified_type(node)
    attrs = _attrs(node)
    inputs = [resolve(i) for i in node.input if i]
    act_inputs = [i for i in inputs if i not in static]
    weight_inputs = [i for i in inputs if i in static and
                     tensors.elem_type.get(i) in _weight_types(node.op_type)]
    for member in chain:  # BN scale/bias, bias of MatMul+Add
        weight_inputs += [resolve(i) for i in member.input[1:] if i and resolve(i) in static
                          and tensors.elem_type.get(resolve(i)) in _FLOAT_TYPES]
    outputs = [o for o in last.output if o]
    in_shape = tensors.shape.get(act_inputs[0]) if act_inputs else ()
    out_shape = tensors.shape.get(outputs[0]) if outputs else ()
    if in_shape is None or out_shape is None:
        missing = act_inputs[0] if in_shape is None else outputs[0]
        raise DynamicShapeError(
            f"Shape of tensor '{missing}' (op {op_type} '{node.name}') is unknown after shape "
            "inference; give a fixed input shape, e.g. --input-shape 1,3,224,224"
        )
    out_numel = math.prod(out_shape) if out_shape else 1
    kernel: Shape = ()
    stride: Shape = ()
    dilation: Shape = ()
    groups = 1
    depthwise = False
    macs = 0
    other = 0
    weight_at = QUANTIZED_CONV.get(node.op_type, 1)
    if node.op_type in ("Conv", "ConvTranspose", *QUANTIZED_CONV) and len(inputs) > weight_at:
        w_shape = tensors.shape.get(inputs[weight_at]) or ()
        rank = max(len(w_shape) - 2, 0)
        kernel = tuple(w_shape[2:]) or _spatial(attrs, "kernel_shape", rank, 1)
        stride = _spatial(attrs, "strides", rank, 1)
        dilation = _spatial(attrs, "dilations", rank, 1)
        groups = int(attrs.get("group", 1))
        in_channels = in_shape[1] if len(in_shape) > 1 else 1
        depthwise = groups > 1 and groups == in_channels
        if node.op_type != "ConvTranspose":
            # N * C_out * spatial_out * (C_in / groups) * prod(kernel)
            macs = out_numel * (w_shape[1] if len(w_shape) > 1 else 1) * math.prod(kernel)
        else:
            # N * C_in * spatial_in * (C_out / groups) * prod(kernel)
            macs = math.prod(in_shape) * (w_shape[1] if len(w_shape) > 1 else 1) * \
                math.prod(kernel)
    elif node.op_type == "Gemm" and len(inputs) > 1:
        a_shape = tensors.shape.get(inputs[0]) or (1, 1)
        k = a_shape[0] if attrs.get("transA", 0) else a_shape[-1]
        macs = out_numel * k
    elif node.op_type in ("MatMul", *QUANTIZED_MATMUL) and len(inputs) > 1:
        a_shape = tensors.shape.get(inputs[0]) or (1,)
        macs = out_numel * a_shape[-1]
    elif node.op_type == "Einsum" and len(inputs) > 1:
        macs = _einsum_macs(attrs.get("equation", b""), [tensors.shape.get(i) or ()
                                                         for i in inputs])
    elif node.op_type in ("MaxPool", "AveragePool", "LpPool"):
        rank = max(len(in_shape) - 2, 0)
        kernel = _spatial(attrs, "kernel_shape", rank, 1)
        stride = _spatial(attrs, "strides", rank, 1)
        dilation = _spatial(attrs, "dilations", rank, 1)
        other = out_numel * math.prod(kernel)
    elif node.op_type in ("GlobalAveragePool", "GlobalMaxPool") or node.op_type.startswith(
        "Reduce"
    ):
        other = math.prod(in_shape) if in_shape else out_numel
    elif node.op_type in RECURRENT_GATES:
        gates = RECURRENT_GATES[node.op_type]
        hidden = int(attrs.get("hidden_size", 1))
        directions = 2 if attrs.get("direction") == b"bidirectional" else 1
        seq, batch, feat = (tuple(in_shape) + (1, 1, 1))[:3]
        # Each step multiplies [input, hidden state] by the gates' weights: matmul work,
        # as a Gemm's; the gate nonlinearities and state updates are per-element work.
        macs = directions * seq * batch * gates * hidden * (feat + hidden)
        other = directions * seq * batch * gates * hidden * 3
    elif node.op_type not in _ZERO_FLOP_OPS:
        other = elementwise_flops(node.op_type, out_numel)
    for member in chain:  # fused BN / bias / activation still do per-element work
        other += elementwise_flops(member.op_type, out_numel)

    activation = next((m.op_type for m in chain if m.op_type in ACTIVATION_OPS), "")
    return OpNode(
        name=node.name or (node.output[0] if node.output else op_type),
        op_type=op_type,
        fused=tuple(m.op_type for m in chain),
        activation=activation,
        input_shape=tuple(in_shape),
        output_shape=tuple(out_shape),
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        groups=groups,
        depthwise=depthwise,
        macs=int(macs),
        other_flops=int(other),
        params=sum(tensors.numel(w) for w in weight_inputs),
        weight_bytes=sum(tensors.nbytes(w) for w in weight_inputs),
        mode=_resize_mode(node, attrs),
        read_bytes=sum(tensors.nbytes(i) for i in act_inputs),
        write_bytes=sum(tensors.nbytes(o) for o in outputs),
    )
