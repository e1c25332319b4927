"""Search-space graphs from cached per-block templates: thousands of architectures per second.

Exporting (or even emitting) a network's ONNX graph and extracting its operator graph
costs milliseconds per architecture; a NAS loop asks for thousands per second. But a
search-space network is a chain of segments (stem, cells or blocks, reductions, head)
joined by single tensors, so its operator graph is the chain of its segments' graphs:

* each segment is emitted once into a small ONNX graph by the space's own emitter
  (`predictor.spaces.*.emit_*`, the code `build_onnx` runs) and extracted by the real
  extractor (`predictor.graph.graph_from_inferred`): its nodes, edges, the nodes that
  read its input and the node that writes its output form a `Fragment`, cached per
  (segment, shapes);
* a network is assembled by concatenating its fragments and wiring each fragment's
  input readers to the previous fragment's output node.

NB201 has 15,625 cells, so its cells are not emitted through ONNX: the cell emitter runs
on `_CellTrace`, a recorder with `GraphBuilder`'s common-subexpression rules, and the
extractor's one fusion that occurs in a cell (Conv -> its only consumer ReLU) is applied
to the trace; each node's feature row comes from a one-node probe through the real
extractor. One fusion crosses a segment boundary: when the first cell's input is read
only by one ReLU, that ReLU folds into the stem conv.

`tests/test_space_templates.py` proves the assembled graphs equal the ONNX path's.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from predictor.errors import InvalidArchError
from predictor.features import FEATURE_SCHEMA, graph_features_from_totals, node_features
from predictor.graph import OpNode, graph_from_inferred
from predictor.graph_store import GraphStore
from predictor.spaces import fbnet, nb201
from predictor.spaces.onnx_emit import GraphBuilder

Emit = Callable[[GraphBuilder, str], str]


@dataclass(frozen=True)
class Fragment:
    """The operator graph of one segment, node indices local to it.

    Attributes:
        rows: row (in the space's `RowTable`) of each node.
        edges: (producer, consumer) pairs.
        inputs: nodes that read the segment's input tensor.
        sink: node writing the segment's output; -1 when the segment is the identity.
        depth: nodes on the longest path from an input reader to the sink.
    """

    rows: np.ndarray  # (n,) int64
    edges: np.ndarray  # (m, 2) int64
    inputs: np.ndarray  # (k,) int64
    sink: int
    depth: int


def _fragment(rows, edges, inputs, sink: int, depth: int) -> Fragment:
    return Fragment(np.asarray(rows, dtype=np.int64).reshape(-1),
                    np.asarray(edges, dtype=np.int64).reshape(-1, 2),
                    np.asarray(inputs, dtype=np.int64).reshape(-1), sink, depth)


# Per-node figures summed into graph features; "zero_scalars" counts nodes reading the one
# scalar zero that NB201's `x * 0` nodes share (the extractor counts shared weights once).
_STATS = ("macs", "other_flops", "params", "weight_bytes", "activation_bytes", "conv", "matmul",
          "depthwise", "zero_scalars")


class RowTable:
    """Unique `OpNode`s of one space configuration, their feature rows and stats."""

    def __init__(self) -> None:
        self.ids: dict[OpNode, int] = {}
        self.nodes: list[OpNode] = []
        self.stats = np.zeros((0, len(_STATS)))
        self._features: torch.Tensor | None = None

    def row(self, node: OpNode) -> int:
        k = self.ids.get(node)
        if k is None:
            k = self.ids[node] = len(self.nodes)
            self.nodes.append(node)
            stats = [node.macs, node.other_flops, node.params, node.weight_bytes,
                     node.read_bytes + node.write_bytes,
                     node.op_type in ("Conv", "ConvTranspose"),
                     node.op_type in ("MatMul", "Gemm", "Einsum"), node.depthwise,
                     node.op_type == "Mul" and node.params == 1]
            self.stats = np.vstack([self.stats, np.array(stats, dtype=np.float64)])
            self._features = None
        return k

    def features(self) -> torch.Tensor:
        """(U, F) feature rows of the unique nodes."""
        if self._features is None:
            self._features = torch.tensor([node_features(n) for n in self.nodes],
                                          dtype=torch.float32).reshape(
                -1, FEATURE_SCHEMA.num_node_features)
        return self._features


def _longest_to(n: int, edges: Sequence[tuple[int, int]], sink: int) -> int:
    """Nodes on the longest path ending at `sink` (nodes are topologically ordered)."""
    longest = [1] * n
    for src, dst in sorted(edges, key=lambda e: e[1]):
        longest[dst] = max(longest[dst], longest[src] + 1)
    return longest[sink] if n else 0


def extract_fragment(emit: Emit, input_shape: Sequence[int], table: RowTable,
                     cse: bool = False) -> Fragment:
    """Emit one segment after a marker node, extract it, and read off its `Fragment`.

    The marker (`Add(x, x)`, which no fusion absorbs) stands for the previous segment:
    its consumers are the segment's input readers.
    """
    b = GraphBuilder(input_shape, weights=False, cse=cse)
    marker = b.add(b.input, b.input)
    out = emit(b, marker)
    if out == marker:
        return _fragment((), (), (), -1, 0)
    graph = graph_from_inferred(b.build(out))
    m = next(i for i, node in enumerate(graph.nodes) if node.name == "/Add_1")
    keep = [i for i in range(len(graph.nodes)) if i != m]
    local = {i: k for k, i in enumerate(keep)}
    edges = tuple((local[s], local[d]) for s, d in graph.edges if s != m)
    inputs = tuple(sorted(local[d] for s, d in graph.edges if s == m))
    sinks = [local[i] for i in keep if not any(s == i for s, _ in graph.edges)]
    if len(sinks) != 1:
        raise AssertionError(f"a segment must have one output node, got {len(sinks)}")
    return _fragment([table.row(graph.nodes[i]) for i in keep], edges, inputs, sinks[0],
                     _longest_to(len(keep), edges, sinks[0]))


def _probe(emit: Emit, input_shape: Sequence[int]) -> OpNode:
    """The single operator-graph node of a one-op ONNX graph (exact features)."""
    b = GraphBuilder(input_shape, weights=False)
    graph = graph_from_inferred(b.build(emit(b, b.input)))
    assert len(graph.nodes) == 1, graph.nodes
    return graph.nodes[0]


class _CellTrace:
    """Records the ops `nb201.emit_cell` emits, with `GraphBuilder`'s alias rules and, with
    `cse`, its common-subexpression elimination."""

    def __init__(self, cse: bool = False) -> None:
        self.cse = cse
        self.ops: list[tuple[str, tuple[str, ...]]] = []  # (kind, real inputs)
        self._cse: dict[tuple, str] = {}
        self._real: dict[str, str] = {}

    def _node(self, kind: str, inputs: Sequence[str], cse: bool = True) -> str:
        key = (kind, tuple(inputs))
        if cse and self.cse and key in self._cse:
            return self._cse[key]
        out = f"n{len(self.ops)}"
        self.ops.append((kind, tuple(self._real.get(i, i) for i in inputs)))
        self._cse[key] = out
        return out

    def alias(self, x: str) -> str:
        name = x + "+0"
        self._real.setdefault(name, self._real.get(x, x))
        return name

    def relu(self, x: str) -> str:
        return self._node("relu", [x])

    def conv(self, x: str, c_out: int, kernel: int, stride: int = 1, pad: int = 0,
             groups: int = 1, bias: bool = True) -> str:
        return self._node(f"conv{kernel}", [x], cse=False)  # fresh weights: never merged

    def mul_zero(self, x: str) -> str:
        return self._node("mul", [x])

    def avg_pool(self, x: str, kernel: int, stride: int, pad: int, count_include_pad: bool) -> str:
        return self._node("pool", [x])

    def add(self, a: str, b: str) -> str:
        return self._node("add", [a, b])


CELL_KINDS = ("relu", "pool", "mul", "add", "conv1", "conv3", "conv1+relu", "conv3+relu")


class CellTopology(NamedTuple):
    """An NB201 cell's operator graph with node kinds (indices into `CELL_KINDS`) instead of
    rows: the same at every stage."""

    kinds: np.ndarray  # (n,)
    edges: np.ndarray  # (m, 2)
    inputs: np.ndarray  # (k,)
    sink: int
    depth: int


_KIND = {k: i for i, k in enumerate(CELL_KINDS)}


def _topology(kinds, edges, inputs, sink: int) -> CellTopology:
    return CellTopology(np.array([_KIND[k] for k in kinds], dtype=np.int64),
                        np.array(edges, dtype=np.int64).reshape(-1, 2),
                        np.array(inputs, dtype=np.int64), sink,
                        _longest_to(len(kinds), edges, sink))


def _cell_topology(ops: tuple[str, ...], cse: bool = False
                   ) -> tuple[CellTopology, CellTopology | None]:
    """The cell's topology, and the variant after the stem (None when it equals the first):
    there the input's only reader, if it is one ReLU, folds into the stem conv."""
    trace = _CellTrace(cse)
    out = nb201.emit_cell(trace, "x", ops, 0)
    kinds = [k for k, _ in trace.ops]
    inputs = [ins for _, ins in trace.ops]
    consumers: dict[str, list[int]] = {}
    for i, ins in enumerate(inputs):
        for name in ins:
            consumers.setdefault(name, []).append(i)
    sink = int(out[1:])
    # Conv -> ReLU fusion, as the extractor does it: the conv's output has that ReLU as its
    # only consumer (the cell output also has readers outside the cell).
    absorbed: dict[int, int] = {}
    for i, kind in enumerate(kinds):
        users = consumers.get(f"n{i}", [])
        if kind.startswith("conv") and i != sink and len(users) == 1 \
                and kinds[users[0]] == "relu":
            absorbed[users[0]] = i
            kinds[i] += "+relu"
    keep = [i for i in range(len(kinds)) if i not in absorbed]
    local = {i: k for k, i in enumerate(keep)}
    producer = {f"n{i}": local[absorbed.get(i, i)] for i in range(len(kinds))}
    edges = sorted({(producer[name], local[i]) for i in keep for name in inputs[i]
                    if name in producer})
    readers = sorted({local[i] for i in keep if "x" in inputs[i]})
    kept_kinds = [kinds[i] for i in keep]
    topo = _topology(kept_kinds, edges, readers, local[sink])
    x_users = consumers.get("x", [])
    if len(x_users) != 1 or kinds[x_users[0]] != "relu":
        return topo, None
    r = local[x_users[0]]  # drop the ReLU; its readers now read the (fused) stem
    keep2 = [k for k in range(len(keep)) if k != r]
    local2 = {k: j for j, k in enumerate(keep2)}
    edges2 = [(local2[s], local2[d]) for s, d in edges if s != r]
    readers2 = sorted(local2[d] for s, d in edges if s == r)
    return topo, _topology([kept_kinds[k] for k in keep2], edges2, readers2,
                           local2[local[sink]])


def _cell_probe(kind: str, channels: int) -> Emit:
    if kind == "relu":
        return lambda b, x: b.relu(x)
    if kind == "pool":
        return lambda b, x: b.avg_pool(x, 3, 1, 1, count_include_pad=False)
    if kind == "mul":
        return lambda b, x: b.mul_zero(x)
    if kind == "add":
        return lambda b, x: b.add(x, x)
    k = int(kind[4])
    if kind.endswith("+relu"):
        return lambda b, x: b.relu(b.conv(x, channels, k, 1, k // 2))
    return lambda b, x: b.conv(x, channels, k, 1, k // 2)


class FragmentBank:
    """Fragments stacked into padded arrays, so a batch of networks (each a row of fragment
    ids, one per slot of the chain) is assembled with a few array operations."""

    def __init__(self, table: RowTable):
        self.table = table
        self.size = 0
        self.nodes = np.zeros((0, 1), np.int64)  # (T, max nodes) rows, padded
        self.edges = np.zeros((0, 1, 2), np.int64)
        self.inputs = np.zeros((0, 1), np.int64)
        self.counts = np.zeros((0, 3), np.int64)  # nodes, edges, inputs
        self.sink = np.zeros(0, np.int64)
        self.depth = np.zeros(0, np.int64)
        self.stats = np.zeros((0, len(_STATS)), np.float64)  # per-fragment sums of node stats

    def add(self, f: Fragment) -> int:
        rows = np.asarray(f.rows, dtype=np.int64).reshape(1, -1)
        return int(self.add_variants(rows, f)[0])

    def add_variants(self, rows: np.ndarray, topology: CellTopology | Fragment) -> np.ndarray:
        """Add fragments that share `topology`'s wiring and differ in their rows (V, n), e.g.
        one cell at every stage, in one go; returns their ids (V,)."""
        count, n = rows.shape
        m, k = len(topology.edges), len(topology.inputs)
        while self.size + count > self.sink.size:
            cap = max(8, 2 * self.sink.size)
            self.nodes, self.edges, self.inputs, self.counts, self.sink, self.depth, \
                self.stats = (_grow(a, cap) for a in (self.nodes, self.edges, self.inputs,
                                                      self.counts, self.sink, self.depth,
                                                      self.stats))
        self.nodes, self.edges, self.inputs = (_fit(self.nodes, n), _fit(self.edges, m),
                                               _fit(self.inputs, k))
        ids = slice(self.size, self.size + count)
        self.nodes[ids, :n] = rows
        self.edges[ids, :m] = topology.edges
        self.inputs[ids, :k] = topology.inputs
        self.counts[ids] = (n, m, k)
        self.sink[ids] = topology.sink
        self.depth[ids] = topology.depth
        self.stats[ids] = self.table.stats[rows].sum(axis=1)
        self.size += count
        return np.arange(ids.start, ids.stop)

    def assemble(self, choices: np.ndarray) -> tuple[np.ndarray, ...]:
        """Networks from fragment ids (G, S), slot after slot.

        Returns node rows (N,), nodes per graph (G,), edges (E, 2) local to each graph,
        edges per graph (G,), depth (G,), stat sums (G, len(_STATS)).
        """
        g = choices.shape[0]
        n = self.counts[choices, 0]
        offset = np.cumsum(n, axis=1) - n
        node_mask = np.arange(self.nodes.shape[1]) < n[..., None]
        rows = self.nodes[choices][node_mask]
        inner = self.edges[choices] + offset[..., None, None]
        inner_mask = np.arange(self.edges.shape[1]) < self.counts[choices, 1][..., None]
        # A slot's input readers read the output node of the last non-empty slot before it.
        sink = np.where(self.sink[choices] >= 0, offset + self.sink[choices], -1)
        prev = np.maximum.accumulate(sink, axis=1)
        prev = np.concatenate([np.full((g, 1), -1), prev[:, :-1]], axis=1)
        readers = self.inputs[choices] + offset[..., None]
        reader_mask = (np.arange(self.inputs.shape[1]) < self.counts[choices, 2][..., None]) \
            & (prev >= 0)[..., None]
        boundary = np.stack([np.broadcast_to(prev[..., None], readers.shape), readers], axis=-1)
        edges = np.concatenate([inner.reshape(g, -1, 2), boundary.reshape(g, -1, 2)], axis=1)
        mask = np.concatenate([inner_mask.reshape(g, -1), reader_mask.reshape(g, -1)], axis=1)
        return (rows, n.sum(axis=1), edges[mask], mask.sum(axis=1),
                self.depth[choices].sum(axis=1), self.stats[choices].sum(axis=1))


def _grow(a: np.ndarray, cap: int) -> np.ndarray:
    out = np.zeros((cap, *a.shape[1:]), a.dtype)
    out[:a.shape[0]] = a
    return out


def _fit(a: np.ndarray, width: int) -> np.ndarray:
    """`a` padded along axis 1 to at least `width`."""
    if a.shape[1] >= width:
        return a
    out = np.zeros((a.shape[0], width, *a.shape[2:]), a.dtype)
    out[:, :a.shape[1]] = a
    return out


class SpaceTemplates:
    """Graphs of one search space at one input shape and class count, from templates;
    `graph`: every op the network runs ("eager") or the export's ("exported"), see
    `predictor.corpus.GRAPH_MODES`."""

    def __init__(self, space: str, input_shape: Sequence[int], num_classes: int,
                 graph: str = "eager"):
        from predictor.corpus import check_graph_mode

        self.space = space
        self.graph = check_graph_mode(graph)
        self.cse = graph == "exported"  # the export merges repeated parameter-free ops
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.table = RowTable()
        self.bank = FragmentBank(self.table)
        self._ids: dict[tuple, int] = {}  # fragment key -> bank id
        self._lock = threading.RLock()  # templates grow on first sight: one writer at a time
        # Validates the configuration once (raises InvalidArchError like build_onnx).
        module = nb201 if space == "nb201" else fbnet
        module.build_onnx(module.arch_to_str(self._example()), self.input_shape,
                          self.num_classes, weights=False)
        if space == "nb201":
            self._init_nb201()
        else:
            self._init_fbnet()

    def _example(self) -> tuple[str, ...]:
        return ("skip_connect",) * 6 if self.space == "nb201" else ("skip",) * fbnet.NUM_LAYERS

    def _extracted(self, key: tuple, emit: Emit, shape: Sequence[int]) -> int:
        """Bank id of a segment extracted through ONNX (once per key)."""
        i = self._ids.get(key)
        if i is None:
            i = self._ids[key] = self.bank.add(
                extract_fragment(emit, shape, self.table, self.cse))
        return i

    # -- NB201 ---------------------------------------------------------------------
    def _init_nb201(self, C: int = 16, N: int = 5) -> None:
        n, _, h, w = self.input_shape
        shape = self.input_shape
        self._stem = self._extracted(("stem",), lambda b, x: nb201.emit_stem(b, x, C), shape)
        self._stem_relu = self._extracted(
            ("stem+relu",), lambda b, x: b.relu(nb201.emit_stem(b, x, C)), shape)
        stage_rows = []
        self._reductions: list[int] = []
        for stage, c in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                self._reductions.append(self._extracted(
                    ("reduction", stage),
                    lambda b, x, c=c: nb201.emit_reduction(b, x, c), (n, c // 2, h, w)))
                h, w = h // 2, w // 2
            stage_rows.append([self.table.row(_probe(_cell_probe(kind, c), (n, c, h, w)))
                               for kind in CELL_KINDS])
        self._stage_rows = np.array(stage_rows, dtype=np.int64)  # (stage, kind) -> row
        self._head = self._extracted(
            ("head",), lambda b, x: nb201.emit_head(b, x, self.num_classes), (n, 4 * C, h, w))
        self._cells_per_stage = N
        self._choices: dict[tuple[str, ...], np.ndarray] = {}

    def _nb201_choice(self, ops: tuple[str, ...]) -> np.ndarray:
        """Fragment ids of the network's slots: stem, 3 x (reduction, N cells), head."""
        choice = self._choices.get(ops)
        if choice is not None:
            return choice
        plain, after_stem = _cell_topology(ops, self.cse)
        cells = self.bank.add_variants(self._stage_rows[:, plain.kinds], plain)
        slots = [self._stem if after_stem is None else self._stem_relu]
        for stage, cell in enumerate(cells):
            if stage > 0:
                slots.append(self._reductions[stage - 1])
            slots += [int(cell)] * self._cells_per_stage
        if after_stem is not None:
            slots[1] = int(self.bank.add_variants(self._stage_rows[:1, after_stem.kinds],
                                                  after_stem)[0])
        slots.append(self._head)
        choice = self._choices[ops] = np.array(slots, dtype=np.int64)
        return choice

    # -- FBNet ---------------------------------------------------------------------
    def _init_fbnet(self) -> None:
        self._stem = self._extracted(("stem",), fbnet.emit_stem, self.input_shape)
        # Every block of a layer maps the layer's input shape to the same output shape:
        # trace one network to learn the shapes.
        b = GraphBuilder(self.input_shape, weights=False, cse=self.cse)
        x = fbnet.emit_stem(b, b.input)
        self._layer_inputs = []
        for c_in, c_out, stride in fbnet.layer_shapes():
            self._layer_inputs.append(b.shapes[x])
            x = fbnet.emit_block(b, x, fbnet.BLOCKS[0], c_in, c_out, stride)
        self._head = self._extracted(
            ("head",), lambda b, x: fbnet.emit_head(b, x, self.num_classes), b.shapes[x])

    def _fbnet_choice(self, names: tuple[str, ...]) -> np.ndarray:
        slots = [self._stem]
        for layer, (name, (c_in, c_out, stride)) in enumerate(
                zip(names, fbnet.layer_shapes(), strict=True)):
            slots.append(self._extracted(
                ("block", layer, name),
                lambda b, x, name=name, c_in=c_in, c_out=c_out, stride=stride:
                fbnet.emit_block(b, x, name, c_in, c_out, stride),
                self._layer_inputs[layer]))
        slots.append(self._head)
        return np.array(slots, dtype=np.int64)

    # -- assembly --------------------------------------------------------------------
    def canonical(self, arch: object) -> tuple[str, ...]:
        """The architecture's ops (NB201) or block names (FBNet), validated."""
        try:
            if self.space == "nb201":
                return nb201.parse_arch(arch) if isinstance(arch, str) \
                    else nb201.parse_arch(nb201.arch_to_str(arch))
            return fbnet.parse_arch(arch)
        except InvalidArchError:
            raise
        except Exception as exc:  # e.g. an odd object where an arch belongs
            raise InvalidArchError(f"Invalid {self.space} arch {arch!r}: {exc}") from None

    def choices(self, archs: Sequence[object]) -> np.ndarray:
        """(G, S) fragment ids of `archs`."""
        pick = self._nb201_choice if self.space == "nb201" else self._fbnet_choice
        if not archs:
            return np.zeros((0, 1), np.int64)
        with self._lock:
            return np.stack([pick(self.canonical(a)) for a in archs])

    def totals(self, archs: Sequence[object]) -> dict[str, np.ndarray]:
        """Graph totals of `archs` without assembling graphs: macs, params, other_flops,
        memory bytes, nodes and depth, (G,) each (e.g. the MACs surrogate, a params
        objective)."""
        with self._lock:
            choices = self.choices(archs)
            stats = self.bank.stats[choices].sum(axis=1)
        return {"macs": stats[:, 0], "params": _unique_params(stats),
                "other_flops": stats[:, 1], "memory_bytes": stats[:, 3] + stats[:, 4],
                "nodes": self.bank.counts[choices, 0].sum(axis=1),
                "depth": self.bank.depth[choices].sum(axis=1)}

    def store(self, archs: Sequence[object]) -> GraphStore:
        """The `GraphStore` of `archs`, in order (equal to `GraphStore.from_graphs` of their
        extracted ONNX graphs, up to the order of nodes and edges)."""
        with self._lock:
            choices = self.choices(archs)
            rows, counts, edges, e_counts, depth, stats = self.bank.assemble(choices)
            features = self.table.features()
        params = _unique_params(stats)
        attrs = graph_features_from_totals(
            macs=stats[:, 0], other_flops=stats[:, 1], params=params,
            weight_bytes=stats[:, 3], activation_bytes=stats[:, 4], nodes=counts,
            depth=depth, batch=self.input_shape[0],
            input_resolution=_resolution(self.input_shape),
            input_numel=math.prod(self.input_shape), conv_nodes=stats[:, 5],
            matmul_nodes=stats[:, 6], depthwise_nodes=stats[:, 7])
        return GraphStore(
            node_rows=features, node_ids=torch.from_numpy(rows),
            node_ptr=torch.from_numpy(np.concatenate([[0], np.cumsum(counts)])),
            edge_index=torch.from_numpy(np.ascontiguousarray(edges.T)),
            edge_ptr=torch.from_numpy(np.concatenate([[0], np.cumsum(e_counts)])),
            graph_attr=torch.as_tensor(attrs, dtype=torch.float32).reshape(
                len(choices), FEATURE_SCHEMA.num_graph_features),
            meta={"space": self.space, "input_shape": list(self.input_shape),
                  "num_classes": self.num_classes})


def _unique_params(stats: np.ndarray) -> np.ndarray:
    """Parameter counts from stat sums, the shared scalar zero counted once."""
    return stats[:, 2] - np.maximum(stats[:, _STATS.index("zero_scalars")] - 1, 0)


def _resolution(shape: Sequence[int]) -> int:
    return math.prod(shape[2:]) if len(shape) >= 4 else (shape[1] if len(shape) in (2, 3) else 1)


_TEMPLATES: dict[tuple, SpaceTemplates] = {}
_TEMPLATES_LOCK = threading.Lock()


def space_templates(space: str, input_shape: Sequence[int] | None = None,
                    num_classes: int | None = None, graph: str = "eager") -> SpaceTemplates:
    """The (cached) templates of `space` ("nb201" or "fbnet") at a shape and class count
    (defaults: the space's benchmark setting) and graph mode."""
    from predictor.corpus import get_space

    spec = get_space(space)
    shape = tuple(int(d) for d in (input_shape or spec.input_shape))
    classes = int(num_classes or spec.num_classes)
    key = (spec.name, shape, classes, graph)
    with _TEMPLATES_LOCK:
        if key not in _TEMPLATES:
            if len(_TEMPLATES) >= 64:  # a long-running service asked for many settings
                _TEMPLATES.pop(next(iter(_TEMPLATES)))
            _TEMPLATES[key] = SpaceTemplates(spec.name, shape, classes, graph)
        return _TEMPLATES[key]
