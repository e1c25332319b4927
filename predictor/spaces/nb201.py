"""NAS-Bench-201: architecture strings and the TinyNetwork they describe.

An NB201 cell is a DAG over 4 nodes; each of the 6 edges ``i -> j`` (``i < j``)
carries one of 5 operations. The architecture string lists the edges node by
node, inputs in order::

    |op~0|+|op~0|op~1|+|op~0|op~1|op~2|
     1<-0   2<-0 2<-1   3<-0 3<-1 3<-2

`NB201Network` rebuilds the network of NAS-Bench-201's reference code
(``xautodl.models.cell_infers.TinyNetwork`` with ``InferCell`` and
``ResNetBasicblock``, also vendored by HW-NAS-Bench) module for module, so its
ONNX export has the graph that was measured. Two details matter for latency:

* a ``none`` edge is not dropped: the reference ``Zero`` op computes
  ``x.mul(0.0)`` and the cell adds it into its node like any other edge, so the
  exported graph holds a ``Mul`` by 0 and an ``Add`` for it (a node whose inputs
  are all none is that sum of zeros, still wired to its inputs);
* the legacy exporter's common-subexpression elimination merges equal
  parameter-free ops on one tensor: the ReLU in front of several convs reading
  the same node, repeated avg pools or ``Mul`` by 0 of one node, ``Add(x, x)``
  repeats in skip-only cells. The graph therefore has fewer nodes than the
  module has ops (eager PyTorch runs them all);
* the classifier's input is flattened with ``view(batch, -1)``, exported as a
  ``Reshape``.

`build_onnx` writes the same graph as the legacy ONNX export of `NB201Network`
directly (see `predictor.spaces.onnx_emit`), in a few milliseconds.

Default ``num_classes=10``: HELP's NB201 latency tables for the HW-NAS-Bench
devices (eyeriss, fpga, pixel3, raspi4) equal HW-NAS-Bench's **cifar10**
column entry for entry (e.g. arch 0: eyeriss 3.64562 ms, pixel3 3.60585 ms,
raspi4 10.48198 ms; the cifar100 column reads 3.64864, 5.04007, 10.43298), and
HELP indexes architectures in NAS-Bench-201's own order.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
import torch
from torch import nn

from predictor.errors import InvalidArchError
from predictor.spaces.onnx_emit import GraphBuilder

OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
"""The 5 edge operations, in NAS-Bench-201's order."""

EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
"""``(source, target)`` node of each of the 6 edges, in architecture-string order."""

NUM_NODES = 4
_FORMAT = "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"


def parse_arch(arch: str) -> tuple[str, ...]:
    """Split an NB201 architecture string into its 6 edge operations.

    Args:
        arch: e.g. ``"|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|"``.

    Returns:
        The 6 operation names, in the order of `EDGES` (the string's order).

    Raises:
        InvalidArchError: ``arch`` is not a string of the form ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``,
            names an operation outside `OPS`, or gives an edge a wrong input index.
    """
    if not isinstance(arch, str):
        raise InvalidArchError(
            f"NB201 arch must be a string of the form {_FORMAT!r}, got {type(arch).__name__} {arch!r}"
        )
    nodes = arch.split("+")
    if len(nodes) != NUM_NODES - 1:
        raise InvalidArchError(
            f"Malformed NB201 arch {arch!r}: expected {NUM_NODES - 1} '+'-separated nodes "
            f"of the form {_FORMAT!r}, got {len(nodes)}"
        )
    ops: list[str] = []
    for target, node in enumerate(nodes, start=1):
        if len(node) < 2 or not (node.startswith("|") and node.endswith("|")):
            raise InvalidArchError(
                f"Malformed NB201 arch {arch!r}: node {target} {node!r} must start and end with '|' "
                f"(format {_FORMAT!r})"
            )
        edges = node[1:-1].split("|")
        if len(edges) != target:
            raise InvalidArchError(
                f"Malformed NB201 arch {arch!r}: node {target} must have {target} input edge(s), "
                f"got {len(edges)} in {node!r}"
            )
        for source, edge in enumerate(edges):
            op, sep, index = edge.partition("~")
            if not sep:
                raise InvalidArchError(
                    f"Malformed NB201 arch {arch!r}: edge {edge!r} must read 'op~input' "
                    f"(format {_FORMAT!r})"
                )
            if op not in OPS:
                raise InvalidArchError(
                    f"Unknown op {op!r} in NB201 arch {arch!r}; known ops: {list(OPS)}"
                )
            if index != str(source):
                raise InvalidArchError(
                    f"Wrong input index in NB201 arch {arch!r}: edge {edge!r} is input {source} "
                    f"of node {target}, so it must read '{op}~{source}'"
                )
            ops.append(op)
    return tuple(ops)


def arch_to_str(ops: Sequence[str]) -> str:
    """Inverse of `parse_arch`: join 6 edge operations into an NB201 architecture string.

    Raises:
        InvalidArchError: not exactly 6 operations, or one outside `OPS`.
    """
    if isinstance(ops, str):
        raise InvalidArchError(f"arch_to_str takes the 6 edge ops, got the string {ops!r}")
    try:
        ops = list(ops)
    except TypeError:
        raise InvalidArchError(
            f"NB201 arch must be an arch string or 6 edge ops from {list(OPS)}, "
            f"got {type(ops).__name__} {ops!r}"
        ) from None
    if len(ops) != len(EDGES):
        raise InvalidArchError(f"An NB201 cell has {len(EDGES)} edges, got {len(ops)} ops: {ops!r}")
    for op in ops:
        if op not in OPS:
            raise InvalidArchError(
                f"Unknown op {op!r} in NB201 ops {ops!r}; known ops: {list(OPS)}"
            )
    nodes, k = [], 0
    for target in range(1, NUM_NODES):
        nodes.append("|" + "|".join(f"{ops[k + s]}~{s}" for s in range(target)) + "|")
        k += target
    return "+".join(nodes)


def _ops_of(arch: str | Sequence[str]) -> tuple[str, ...]:
    """The 6 edge ops of an arch string or op sequence (validated)."""
    return parse_arch(arch) if isinstance(arch, str) else parse_arch(arch_to_str(arch))


def _check_config(
    input_shape: Sequence[int], num_classes: int, C: int, N: int
) -> tuple[int, int, int, int]:
    """Validate the network hyper-parameters; returns the input shape as 4 ints."""
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise InvalidArchError(
            f"input_shape must be 4 positive ints (batch, channels, height, width), got {input_shape!r}"
        )
    if num_classes < 1:
        raise InvalidArchError(f"num_classes must be >= 1, got {num_classes}")
    if C < 1 or N < 0:
        raise InvalidArchError(f"NB201 needs C >= 1 and N >= 0, got C={C}, N={N}")
    h, w = shape[2:]
    for _ in range(2):  # the two stride-2 reduction blocks add a 3x3/s2 conv to a 2x2 avg pool
        if h % 2 or w % 2:
            raise InvalidArchError(
                f"NB201 input_shape {shape!r}: height and width must stay even before each of the "
                f"two reductions (divisible by 4), otherwise the residual shapes differ"
            )
        h, w = h // 2, w // 2
    return shape  # type: ignore[return-value]


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv2d (no bias) -> BatchNorm2d, as NB201's ``nor_conv_kxk``.

    Shapes:
        (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=True, track_running_stats=True),
        )


class Zero(nn.Module):
    """NB201's ``none`` op inside a cell: ``x * 0`` (kept, as in the reference code)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(name: str, channels: int) -> nn.Module:
    """The module of edge op ``name`` at ``channels`` channels (stride 1, as in every NB201 cell)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, 1, 0)
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, 1, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise InvalidArchError(f"Unknown NB201 op {name!r}; known ops: {list(OPS)}")


class NB201Cell(nn.Module):
    """One NB201 cell (reference ``InferCell``): node j = sum over i < j of edge(i->j)(node i).

    Shapes:
        (B, C, H, W) -> (B, C, H, W)
    """

    def __init__(self, ops: Sequence[str], channels: int) -> None:
        super().__init__()
        self.ops = tuple(ops)
        self.layers = nn.ModuleList(make_op(op, channels) for op in self.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for target in range(1, NUM_NODES):
            ids = [k for k, (_, t) in enumerate(EDGES) if t == target]
            # Python's sum, like the reference: 0 + a + b ... (the leading 0 vanishes in the trace)
            nodes.append(sum(self.layers[k](nodes[EDGES[k][0]]) for k in ids))
        return nodes[-1]


class ResNetBasicBlock(nn.Module):
    """NB201's reduction block between stages (reference ``ResNetBasicblock``, stride 2).

    ``ReLUConvBN(3x3, stride 2) -> ReLUConvBN(3x3)`` plus a shortcut
    ``AvgPool2d(2, 2) -> Conv2d 1x1 (no BN, no ReLU)``; no activation after the sum.

    Shapes:
        (B, C_in, H, W) -> (B, C_out, floor(H / 2), floor(W / 2))
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(c_in, c_out, kernel_size=1, stride=1, padding=0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        basicblock = self.conv_b(self.conv_a(x))  # the reference runs the main path first
        residual = self.downsample(x)
        return residual + basicblock


class NB201Network(nn.Module):
    """NAS-Bench-201's TinyNetwork for one architecture.

    stem (3x3 conv -> BN) -> N cells at C -> reduction -> N cells at 2C -> reduction
    -> N cells at 4C -> BN -> ReLU -> global average pool -> Linear.

    Args:
        arch: an NB201 architecture string (see `parse_arch`) or its 6 edge ops.
        input_shape: (batch, channels, height, width) of the input; the stem takes
            ``channels`` input channels. NB201's CIFAR setting is (1, 3, 32, 32).
        num_classes: classifier outputs; 10 (CIFAR-10) matches HELP's tables.
        C: channels of the first stage.
        N: cells per stage.

    Shapes:
        input: ``input_shape`` = (B, C_in, H, W); output: (B, num_classes) logits.
        (The reference forward returns ``(features, logits)``; only logits are returned here,
        the graph is the same.)
    """

    def __init__(
        self,
        arch: str | Sequence[str],
        input_shape: Sequence[int] = (1, 3, 32, 32),
        num_classes: int = 10,
        C: int = 16,
        N: int = 5,
    ) -> None:
        super().__init__()
        self.ops = _ops_of(arch)
        self.input_shape = _check_config(input_shape, num_classes, C, N)
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(self.input_shape[1], C, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        cells: list[nn.Module] = []
        c_prev = C
        for stage, c in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                cells.append(ResNetBasicBlock(c_prev, c))
            cells.extend(NB201Cell(self.ops, c) for _ in range(N))
            c_prev = c
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    @property
    def arch_str(self) -> str:
        """The architecture string of this network."""
        return arch_to_str(self.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) images -> (B, num_classes) logits."""
        feature = self.stem(x)
        for cell in self.cells:
            feature = cell(feature)
        out = self.global_pooling(self.lastact(feature))
        out = out.view(out.size(0), -1)
        return self.classifier(out)


def _emit_cell(b: GraphBuilder, x: str, ops: Sequence[str], channels: int) -> str:
    """Emit one cell in the exporter's node order: each edge's ops, then its Add into the node.

    A node is Python's ``sum`` of its edges, ``(0 + e0) + e1 + ...``. The exporter drops
    ``0 + e0`` but only after its common-subexpression elimination, so when ``e0`` is a
    skip (``e0`` is the node ``x`` itself) the node is a CSE-distinct alias of ``x``.
    (When ``e0`` is an op output, nothing else reads it, so the alias is not needed.)
    """
    nodes = [x]
    for target in range(1, NUM_NODES):
        acc: str | None = None
        for k, (source, t) in enumerate(EDGES):
            if t != target:
                continue
            v = nodes[source]
            op = ops[k]
            if op == "none":
                v = b.mul_zero(v)
            elif op == "nor_conv_1x1":
                v = b.conv(b.relu(v), channels, 1, 1, 0)
            elif op == "nor_conv_3x3":
                v = b.conv(b.relu(v), channels, 3, 1, 1)
            elif op == "avg_pool_3x3":
                v = b.avg_pool(v, 3, 1, 1, count_include_pad=False)
            if acc is None:
                acc = b.alias(v) if op == "skip_connect" else v
            else:
                acc = b.add(acc, v)
        assert acc is not None
        nodes.append(acc)
    return nodes[-1]


def build_onnx(
    arch: str | Sequence[str],
    input_shape: Sequence[int] = (1, 3, 32, 32),
    num_classes: int = 10,
    C: int = 16,
    N: int = 5,
    *,
    weights: bool = True,
    cse: bool = True,
) -> onnx.ModelProto:
    """The ONNX graph of ``NB201Network(arch, input_shape, num_classes, C, N)``, without torch.

    Same nodes, op types, attributes and tensor shapes as
    ``torch.onnx.export(NB201Network(...).eval(), (x,), f, dynamo=False)`` (BatchNorm
    folded into the preceding Conv; opset `predictor.spaces.onnx_emit.OPSET`); weights
    are zeros, every tensor has a ``value_info`` shape. About 100x faster than the export
    (~4 ms vs ~0.4 s per network on one CPU core).

    Args:
        arch: architecture string or its 6 edge ops.
        input_shape: (batch, channels, height, width); height and width divisible by 4.
        num_classes: classifier outputs (10: CIFAR-10, as HELP's tables).
        C, N: channels of the first stage, cells per stage.
        weights: write the zero weights' data (default). ``False`` leaves float weights
            data-less (dims only): smaller and faster, enough for shape inference and
            feature extraction, but the model then fails ``onnx.checker`` and cannot run.
        cse: as the legacy export (default), repeated parameter-free ops on one tensor
            merged; ``False``: every op the module runs, as eager PyTorch executes it
            (`predictor.spaces.onnx_emit.GraphBuilder`).

    Returns:
        A model with input ``"input"`` of ``input_shape`` and one output of shape
        (batch, num_classes).

    Raises:
        InvalidArchError: a malformed arch or invalid hyper-parameter.
    """
    ops = _ops_of(arch)
    shape = _check_config(input_shape, num_classes, C, N)
    b = GraphBuilder(shape, weights=weights, cse=cse)
    x = emit_stem(b, b.input, C)
    for stage, c in enumerate((C, 2 * C, 4 * C)):
        if stage > 0:
            x = emit_reduction(b, x, c)
        for _ in range(N):
            x = _emit_cell(b, x, ops, c)
    logits = emit_head(b, x, num_classes)
    return b.build(logits, doc=f"NB201 {arch_to_str(ops)} num_classes={num_classes}")


# The network's fixed segments, shared by `build_onnx` and the graph templates of
# `predictor.space_templates` (one source of truth for what the network computes).
def emit_stem(b: GraphBuilder, x: str, channels: int) -> str:
    """Stem: 3x3 conv + BN (folded)."""
    return b.conv(x, channels, 3, 1, 1)


def emit_reduction(b: GraphBuilder, x: str, channels: int) -> str:
    """`ResNetBasicBlock` between stages: stride-2 main path plus avg-pool shortcut."""
    main = b.conv(b.relu(x), channels, 3, 2, 1)
    main = b.conv(b.relu(main), channels, 3, 1, 1)
    residual = b.conv(b.avg_pool(x, 2, 2, 0, count_include_pad=True), channels, 1, bias=False)
    return b.add(residual, main)


def emit_head(b: GraphBuilder, x: str, num_classes: int) -> str:
    """BN -> ReLU -> global average pool -> flatten -> Linear."""
    x = b.relu(b.batch_norm(x))
    x = b.reshape(b.global_avg_pool(x), [b.shapes[x][0], -1])
    return b.gemm(x, num_classes)


def emit_cell(b: GraphBuilder, x: str, ops: Sequence[str], channels: int) -> str:
    """One cell (public name of `_emit_cell`)."""
    return _emit_cell(b, x, ops, channels)
