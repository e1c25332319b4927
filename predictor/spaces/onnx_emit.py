"""Emit ONNX graphs directly, as ``torch.onnx.export(..., dynamo=False)`` would.

`GraphBuilder` writes the nodes of a network in execution order with the op
types, attributes and tensor shapes the legacy (TorchScript) exporter produces
for a model in eval mode: BatchNorm after a Conv folded into the Conv's bias,
a standalone BatchNorm kept as ``BatchNormalization``, ``view(batch, -1)`` as
``Reshape`` with a constant shape, ``nn.Linear`` as ``Gemm(transB=1)``, and
equal parameter-free nodes on one tensor merged, as the exporter's
common-subexpression elimination merges them.

Weights are zeros (their shapes are what a latency model reads), or left out on
request. Shape constants are initializers where the exporter writes ``Constant``
nodes, and the exporter's de-duplication of equal weights (``Identity`` nodes)
is not copied; `compute_graph_signature` ignores both when it compares an
emitted graph with a real export.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 20
"""Default ONNX opset of ``torch.onnx.export(dynamo=False)`` in torch 2.13."""
IR_VERSION = 9
"""IR version the legacy exporter writes (readable by onnxruntime >= 1.15)."""


@functools.lru_cache(maxsize=256)
def _zeros(nbytes: int) -> bytes:
    """Cached all-zero bytes of a given length (bytes are immutable, so sharing is safe)."""
    return bytes(nbytes)


def _set_attr(node: onnx.NodeProto, name: str, value: object) -> None:
    """Append attribute ``name`` to ``node`` in place (faster than ``helper.make_attribute``)."""
    a = node.attribute.add()
    a.name = name
    if isinstance(value, int):
        a.type = onnx.AttributeProto.INT
        a.i = value
    elif isinstance(value, float):
        a.type = onnx.AttributeProto.FLOAT
        a.f = value
    else:
        a.type = onnx.AttributeProto.INTS
        a.ints.extend(value)  # type: ignore[arg-type]


_TYPE_BYTES: dict[tuple[int, ...], bytes] = {}


def _set_tensor_type(vi: onnx.ValueInfoProto, name: str, shape: Sequence[int]) -> None:
    """Fill ``vi`` as a float tensor of ``shape`` (merging a cached serialized type: fast)."""
    key = tuple(shape)
    buf = _TYPE_BYTES.get(key)
    if buf is None:
        proto = onnx.ValueInfoProto()
        tt = proto.type.tensor_type
        tt.elem_type = TensorProto.FLOAT
        for d in key:
            tt.shape.dim.add().dim_value = d
        buf = _TYPE_BYTES[key] = proto.SerializeToString()
    vi.MergeFromString(buf)
    vi.name = name


class GraphBuilder:
    """Writes the nodes, initializers and shapes of one ONNX graph, in place.

    Tensor shapes are tracked as the nodes are added, so every value gets a
    ``value_info`` entry and the model needs no shape inference. Protos are
    filled in place (no ``helper.make_*`` copies): ~25-40 us per node, so a
    150-node network takes a few milliseconds.

    Args:
        input_shape: shape of the single float input ``"input"``, e.g. (1, 3, 32, 32).
        name: graph name.
        weights: write the float weights' (zero) data. ``False`` writes shape-only weight
            initializers (dims and dtype, no data): up to 4x faster and far smaller for big
            networks, fine for shape inference and feature extraction, but such a model
            fails ``onnx.checker`` and cannot run. Shape operands always carry their data.
        cse: merge repeated parameter-free ops on one tensor, as the legacy exporter's
            common-subexpression elimination does (the exported file). ``False`` keeps every
            op the module runs: the graph eager PyTorch executes.
    """

    def __init__(
        self, input_shape: Sequence[int], name: str = "main_graph", weights: bool = True,
        cse: bool = True,
    ) -> None:
        self.with_weights = weights
        self.cse = cse
        self.model = onnx.ModelProto()
        self.graph = self.model.graph
        self.graph.name = name
        self.input = "input"
        self.shapes: dict[str, tuple[int, ...]] = {self.input: tuple(int(d) for d in input_shape)}
        self._count: Counter[str] = Counter()
        self._cse: dict[tuple, str] = {}
        self._consts: dict[tuple, str] = {}
        self._n_init = 0
        self._real: dict[str, str] = {}  # alias -> tensor (see `alias`)

    # -- helpers -----------------------------------------------------------------
    def _node(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs: object) -> str:
        # The legacy exporter runs common-subexpression elimination: a second node with the
        # same op, inputs and attributes (e.g. the ReLU of one tensor feeding two convs, or
        # `x.mul(0.)` on two `none` edges leaving the same node) is the first one's output.
        key = (op, tuple(inputs), repr(attrs))
        out = self._cse.get(key) if self.cse else None
        if out is not None:
            return out
        self._count[op] += 1
        name = f"/{op}_{self._count[op]}"
        out = name + "_output_0"
        node = self.graph.node.add()
        node.op_type = op
        node.name = name
        node.input.extend(self._real.get(i, i) for i in inputs)
        node.output.append(out)
        for k in sorted(attrs):
            _set_attr(node, k, attrs[k])
        _set_tensor_type(self.graph.value_info.add(), out, shape)
        self.shapes[out] = shape
        self._cse[key] = out
        return out

    def alias(self, x: str) -> str:
        """A value equal to ``x`` that common-subexpression elimination keeps apart from ``x``.

        This is torch's ``0 + x`` (Python's ``sum`` starting at 0): the exporter runs CSE
        while the add is still there and drops the add (adding zero) only afterwards, so
        the same op applied to ``x`` and to ``0 + x`` stays two nodes, both reading ``x``.
        """
        name = x + "+0"
        if name not in self._real:
            self._real[name] = self._real.get(x, x)
            self.shapes[name] = self.shapes[x]
        return name

    def _initializer(self, prefix: str) -> TensorProto:
        t = self.graph.initializer.add()
        t.name = f"{prefix}{self._n_init}"
        self._n_init += 1
        return t

    def weight(self, shape: Sequence[int]) -> str:
        """Add a zero-filled (or, without ``weights``, data-less) float initializer; returns its name."""
        t = self._initializer("w")
        t.data_type = TensorProto.FLOAT
        t.dims.extend(shape)
        if self.with_weights:
            n = 1
            for d in shape:
                n *= d
            t.raw_data = _zeros(4 * n)
        return t.name

    def int64_const(self, values: Sequence[int]) -> str:
        """A 1-D int64 initializer (a shape operand), shared between equal values; returns its name."""
        key = ("int64", tuple(int(v) for v in values))
        name = self._consts.get(key)
        if name is None:
            t = self._initializer("c")
            t.data_type = TensorProto.INT64
            t.dims.append(len(key[1]))
            t.raw_data = np.asarray(key[1], dtype="<i8").tobytes()
            name = self._consts[key] = t.name
        return name

    # -- operators ---------------------------------------------------------------
    def conv(
        self,
        x: str,
        c_out: int,
        kernel: int,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        bias: bool = True,
    ) -> str:
        """``Conv`` (+ bias when a BatchNorm was folded into it). (N, C, H, W) -> (N, c_out, H', W')."""
        n, c, h, w = self.shapes[x]
        ho = (h + 2 * pad - kernel) // stride + 1
        wo = (w + 2 * pad - kernel) // stride + 1
        inputs = [x, self.weight((c_out, c // groups, kernel, kernel))]
        if bias:
            inputs.append(self.weight((c_out,)))
        return self._node(
            "Conv",
            inputs,
            (n, c_out, ho, wo),
            dilations=[1, 1],
            group=groups,
            kernel_shape=[kernel, kernel],
            pads=[pad] * 4,
            strides=[stride, stride],
        )

    def relu(self, x: str) -> str:
        return self._node("Relu", [x], self.shapes[x])

    def add(self, a: str, b: str) -> str:
        return self._node("Add", [a, b], self.shapes[a])

    def mul_zero(self, x: str) -> str:
        """``x * 0.0`` with a scalar float operand (torch's ``x.mul(0.)``)."""
        name = self._consts.get(("zero",))
        if name is None:  # one pooled scalar, as the exporter pools equal constants
            t = self._initializer("c")
            t.data_type = TensorProto.FLOAT
            t.raw_data = _zeros(4)
            name = self._consts[("zero",)] = t.name
        return self._node("Mul", [x, name], self.shapes[x])

    def avg_pool(self, x: str, kernel: int, stride: int, pad: int, count_include_pad: bool) -> str:
        n, c, h, w = self.shapes[x]
        ho = (h + 2 * pad - kernel) // stride + 1
        wo = (w + 2 * pad - kernel) // stride + 1
        return self._node(
            "AveragePool",
            [x],
            (n, c, ho, wo),
            ceil_mode=0,
            count_include_pad=int(count_include_pad),
            kernel_shape=[kernel, kernel],
            pads=[pad] * 4,
            strides=[stride, stride],
        )

    def batch_norm(self, x: str) -> str:
        """Inference ``BatchNormalization`` (eps 1e-5, torch momentum 0.1 written as 0.9)."""
        c = self.shapes[x][1]
        params = [self.weight((c,)) for _ in range(4)]  # scale, B, mean, var
        return self._node(
            "BatchNormalization",
            [x, *params],
            self.shapes[x],
            epsilon=1e-5,
            momentum=0.9,
            training_mode=0,
        )

    def global_avg_pool(self, x: str) -> str:
        n, c = self.shapes[x][:2]
        return self._node("GlobalAveragePool", [x], (n, c, 1, 1))

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        """``Reshape`` to a constant ``shape`` (may hold one -1)."""
        total = int(np.prod(self.shapes[x]))
        known = int(np.prod([d for d in shape if d != -1]))
        out = tuple(total // known if d == -1 else d for d in shape)
        return self._node("Reshape", [x, self.int64_const(shape)], out, allowzero=0)

    def transpose(self, x: str, perm: Sequence[int]) -> str:
        shape = self.shapes[x]
        return self._node("Transpose", [x], tuple(shape[p] for p in perm), perm=list(perm))

    def gemm(self, x: str, n_out: int) -> str:
        """``nn.Linear``: (N, K) -> (N, n_out) as ``Gemm(transB=1)``."""
        n, k = self.shapes[x]
        w, b = self.weight((n_out, k)), self.weight((n_out,))
        return self._node("Gemm", [x, w, b], (n, n_out), alpha=1.0, beta=1.0, transB=1)

    # -- result ------------------------------------------------------------------
    def build(self, output: str, doc: str = "") -> onnx.ModelProto:
        """Finish the model: single input ``"input"``, single output ``output``."""
        g = self.graph
        _set_tensor_type(g.input.add(), self.input, self.shapes[self.input])
        _set_tensor_type(g.output.add(), output, self.shapes[output])
        keep = [vi for vi in g.value_info if vi.name == output]
        for vi in keep:  # a graph output needs no value_info
            g.value_info.remove(vi)
        m = self.model
        m.ir_version = IR_VERSION
        m.producer_name = "latpred.spaces"
        m.doc_string = doc
        op = m.opset_import.add()
        op.domain = ""
        op.version = OPSET
        return m


# -- comparing graphs -----------------------------------------------------------------

_SHAPE_OPS = frozenset({"Shape", "Size"})


@dataclass(frozen=True)
class GraphSignature:
    """Name-free description of the compute part of an ONNX graph.

    Attributes:
        nodes: multiset of node signatures ``(op_type, attributes, input shapes,
            output shapes, constant int operands)``.
        params: multiset of (shape, dtype) of the constant float operands of compute nodes.
        topology: multiset of ``(node hash, sorted consumer hashes)``, where a node's hash
            covers its signature and, recursively and in input order, its producers
            (graph input and constants are leaves).
    """

    nodes: Counter[tuple]
    params: Counter[tuple]
    topology: Counter[tuple]


def _attr_value(a: onnx.AttributeProto) -> object:
    v = helper.get_attribute_value(a)
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, list):
        return tuple(round(x, 6) if isinstance(x, float) else x for x in v)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, TensorProto):
        return ("tensor", tuple(v.dims), v.data_type)
    return v


def compute_graph_signature(model: onnx.ModelProto) -> GraphSignature:
    """Describe ``model``'s compute nodes independently of node/tensor names.

    Runs shape inference, then drops ``Constant``/``Identity`` nodes and every
    node computed from constants only (shape arithmetic), treating their outputs
    as constants. Identity of an activation is looked through.

    Two models with equal signatures have the same multiset of operations with
    the same attributes and tensor shapes, wired the same way.
    """
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, int] = {}
    for vi in [*g.input, *g.output, *g.value_info]:
        tt = vi.type.tensor_type
        shapes[vi.name] = tuple(
            d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim
        )
        dtypes[vi.name] = tt.elem_type
    const: dict[str, np.ndarray | None] = {}
    for t in g.initializer:
        shapes[t.name] = tuple(t.dims)
        dtypes[t.name] = t.data_type
        const[t.name] = onnx.numpy_helper.to_array(t) if t.data_type == TensorProto.INT64 else None
    alias: dict[str, str] = {}

    def real(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    compute: list[onnx.NodeProto] = []
    for n in g.node:
        ins = [real(i) for i in n.input if i]
        if n.op_type == "Constant":
            t = n.attribute[0].t
            shapes[n.output[0]] = tuple(t.dims)
            dtypes[n.output[0]] = t.data_type
            const[n.output[0]] = (
                onnx.numpy_helper.to_array(t) if t.data_type == TensorProto.INT64 else None
            )
        elif n.op_type == "Identity":
            if ins[0] in const:
                const[n.output[0]] = const[ins[0]]
            alias[n.output[0]] = ins[0]
        elif n.op_type in _SHAPE_OPS or all(i in const for i in ins):
            for o in n.output:
                const[o] = None
        else:
            compute.append(n)

    producer: dict[str, int] = {}
    sigs: list[tuple] = []
    node_inputs: list[list[str]] = []
    params: Counter[tuple] = Counter()
    for k, n in enumerate(compute):
        ins = [real(i) for i in n.input if i]
        attrs = tuple(sorted((a.name, _attr_value(a)) for a in n.attribute))
        int_consts = tuple(
            tuple(np.atleast_1d(const[i]).tolist()) if const.get(i) is not None else None
            for i in ins
        )
        for i in ins:
            if i in const and dtypes.get(i) != TensorProto.INT64:
                params[(shapes.get(i), dtypes.get(i))] += 1
        sigs.append(
            (
                n.op_type,
                attrs,
                tuple(shapes.get(i) for i in ins),
                tuple(shapes.get(o) for o in n.output),
                int_consts,
            )
        )
        node_inputs.append(ins)
        for o in n.output:
            producer[o] = k

    def h(obj: object) -> str:
        return hashlib.sha1(repr(obj).encode()).hexdigest()[:16]

    graph_inputs = {vi.name for vi in g.input}
    hashes: list[str] = []  # compute nodes are in topological order in a valid ONNX graph
    for k, ins in enumerate(node_inputs):
        parts = []
        for i in ins:
            if i in producer:
                parts.append(hashes[producer[i]])
            elif i in graph_inputs and i not in const:
                parts.append("input")
            else:
                parts.append("const")
        hashes.append(h((sigs[k], tuple(parts))))
    consumers: list[list[str]] = [[] for _ in compute]
    for k, ins in enumerate(node_inputs):
        for i in ins:
            if i in producer:
                consumers[producer[i]].append(hashes[k])
    topology = Counter((hashes[k], tuple(sorted(consumers[k]))) for k in range(len(compute)))
    return GraphSignature(Counter(sigs), params, topology)


def diff_signatures(a: GraphSignature, b: GraphSignature) -> str:
    """A short human-readable difference between two signatures ('' when equal)."""
    lines = []
    for label, x, y in (
        ("nodes", a.nodes, b.nodes),
        ("params", a.params, b.params),
        ("topology", a.topology, b.topology),
    ):
        only_a, only_b = x - y, y - x
        if only_a or only_b:
            lines.append(f"{label}: only in first {list(only_a.items())[:3]}")
            lines.append(f"{label}: only in second {list(only_b.items())[:3]}")
    return "\n".join(lines)
