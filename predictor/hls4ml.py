"""hls4ml's view of an operator graph: which ops it synthesises, and how reuse maps to layers.

An hls4ml design computes each Dense / Conv layer as an `n_in x n_out` matrix-vector
product (Conv: `n_in = C_in * kh * kw`, `n_out = C_out`, once per output position),
time-multiplexed by the *reuse factor*: `ceil(n_in * n_out / rf)` multipliers, each used
`rf` times. The model-level `ReuseFactor` is not used as given: for every layer hls4ml's
FPGA backend replaces it by the closest *valid* value for that layer (`rf` divides
`n_in * n_out`, and `rf < n_in` or `rf % n_in == 0`, ...; ties go to the smaller value),
so a model-level 4093 becomes 256 on a 16x16 layer. On the wa-hls4ml syntheses the
latency is the sum of these per-layer values plus 3 to 5 cycles, and the DSP count is
the sum of the per-layer multipliers (0 at 4 bits, where Vivado builds products from
LUTs), which is what `analytic_terms` exposes.

Pure functions of an `OpGraph`; no files, no globals besides caches.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, replace
from functools import lru_cache

from predictor.errors import FpgaConfigError, UnsupportedOpError
from predictor.graph import OpGraph, OpNode, elementwise_flops

STRATEGIES: tuple[str, ...] = ("latency", "resource")
MAC_OPS = frozenset({"Gemm", "MatMul", "Conv"})
# Ops that move data only (hls4ml folds them into the stream / array layout).
LAYOUT_OPS = frozenset({"Flatten", "Reshape"})
# Activations the predictor knows from training (hls4ml dense nets built with ReLU);
# "" is a linear layer. Sigmoid/Tanh/Softmax use lookup tables in hls4ml (other costs).
ACTIVATIONS = frozenset({"", "Relu"})
SUPPORTED_OPS = MAC_OPS | LAYOUT_OPS | {"Relu"}
# A classifier's output activation: hls4ml builds it from lookup tables after the last
# layer. The training records name no activation layer, so its cost is not modelled; a
# prediction leaves it out and says so, rather than refusing the model (hls4ml's jet tagger
# ends in a Softmax).
OUTPUT_ACTIVATIONS = frozenset({"Softmax", "LogSoftmax", "Sigmoid", "Tanh"})
DSP_MIN_BITS = 5  # narrower products are built from LUTs (all 4-bit rows use 0 DSP)


@dataclass(frozen=True)
class FpgaConfig:
    """One hls4ml synthesis configuration (the FPGA's "device").

    Attributes:
        precision: total bits X of the `ap_fixed<X, ...>` weights.
        reuse_factor: hls4ml model-level `ReuseFactor` (adjusted per layer, see module doc).
        strategy: hls4ml `Strategy`, "latency" or "resource".
        clock_period_ns: target clock period in ns.
    """

    precision: int
    reuse_factor: int
    strategy: str = "resource"
    clock_period_ns: float = 5.0

    def __post_init__(self) -> None:
        for name in ("precision", "reuse_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FpgaConfigError(f"`{name}` must be a positive integer, got {value!r}")
        if self.strategy not in STRATEGIES:
            raise FpgaConfigError(f"Unknown strategy {self.strategy!r}; known: {list(STRATEGIES)}")
        if not (math.isfinite(self.clock_period_ns) and self.clock_period_ns > 0):
            raise FpgaConfigError(
                f"`clock_period_ns` must be a positive number, got {self.clock_period_ns!r}")


@dataclass(frozen=True)
class HlsLayer:
    """A multiply-accumulate layer as hls4ml implements it.

    Attributes:
        node: index of the node in its `OpGraph`.
        n_in, n_out: sizes of the matrix-vector product (Conv: C_in*kh*kw and C_out).
        positions: products per sample (1 for Dense; output pixels for Conv).
    """

    node: int
    name: str
    op_type: str
    n_in: int
    n_out: int
    positions: int

    @property
    def weights(self) -> int:
        return self.n_in * self.n_out

    def reuse(self, reuse_factor: int) -> int:
        """The reuse factor hls4ml uses for this layer given the model-level one."""
        return closest_reuse_factor(self.n_in, self.n_out, reuse_factor)

    def multipliers(self, reuse_factor: int) -> int:
        """Multipliers instantiated for this layer (hls4ml's block factor)."""
        return math.ceil(self.weights / self.reuse(reuse_factor))


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


@lru_cache(maxsize=4096)
def valid_reuse_factors(n_in: int, n_out: int) -> tuple[int, ...]:
    """Reuse factors hls4ml accepts unchanged for an `n_in x n_out` layer (ascending).

    hls4ml's rule (`FPGABackend._validate_reuse_factor`): `rf` divides `n_in * n_out`,
    `rf < n_in` or `rf % n_in == 0`, and `ceil(n_in*n_out / min(n_in, rf)) % n_out == 0`
    or `rf >= n_in`. Only divisors can pass, so only divisors are tried.
    """
    if n_in < 1 or n_out < 1:
        raise FpgaConfigError(f"Layer sizes must be positive, got n_in={n_in}, n_out={n_out}")
    valid = []
    for rf in _divisors(n_in * n_out):
        limit = math.ceil(n_in * n_out / min(n_in, rf))
        if (limit % n_out == 0 or rf >= n_in) and (rf % n_in == 0 or rf < n_in):
            valid.append(rf)
    return tuple(valid)


@lru_cache(maxsize=65536)
def closest_reuse_factor(n_in: int, n_out: int, reuse_factor: int) -> int:
    """The valid reuse factor hls4ml substitutes for `reuse_factor` (ties: the smaller)."""
    valid = valid_reuse_factors(n_in, n_out)
    pos = bisect_left(valid, reuse_factor)
    if pos < len(valid) and valid[pos] == reuse_factor:
        return reuse_factor
    if pos == 0:
        return valid[0]
    if pos == len(valid):
        return valid[-1]
    before, after = valid[pos - 1], valid[pos]
    return after if after - reuse_factor < reuse_factor - before else before


_SUPPORTED_TEXT = (f"the FPGA predictor handles hls4ml dense/conv designs built from "
                   f"{sorted(SUPPORTED_OPS)} with activations "
                   f"{sorted(a or 'linear' for a in ACTIVATIONS)}")


def _problem(node: OpNode) -> str | None:
    """Why hls4ml (as modelled here) cannot handle `node`, or None."""
    if node.op_type not in SUPPORTED_OPS:
        return "is not supported"
    if node.activation not in ACTIVATIONS:
        return f"has a fused {node.activation} activation"
    if any(op not in ("Add", "Relu") for op in node.fused):
        return f"has fused {list(node.fused)}"
    if node.op_type in MAC_OPS and node.params == 0:
        return "multiplies two activations (no constant weights)"
    if node.op_type == "Conv" and node.groups != 1:
        return f"is a grouped convolution (group={node.groups})"
    rank = 3 if node.op_type == "Conv" else 1
    if node.op_type in MAC_OPS and min(len(node.input_shape), len(node.output_shape)) < rank:
        return f"has shapes {node.input_shape} -> {node.output_shape}"
    return None


def hls_layer(node: OpNode, index: int, batch: int = 1) -> HlsLayer | None:
    """The `HlsLayer` of one node, None for a data-movement / activation node.

    Raises:
        UnsupportedOpError: an op, fused activation or layer form the predictor cannot handle.
    """
    problem = _problem(node)
    if problem:
        raise UnsupportedOpError(f"Op {node.op_type} '{node.name}' {problem}; {_SUPPORTED_TEXT}")
    if node.op_type not in MAC_OPS:
        return None
    out = node.output_shape
    if node.op_type == "Conv":
        n_in, n_out = node.input_shape[1] * math.prod(node.kernel), out[1]
        positions = math.prod(out[2:])
    else:
        n_in, n_out = node.input_shape[-1], out[-1]
        positions = max(math.prod(out) // max(batch, 1) // max(n_out, 1), 1)
    return HlsLayer(index, node.name, node.op_type, int(n_in), int(n_out), int(positions))


def _without_activation(node: OpNode) -> OpNode:
    """`node` less its fused activation (the last of its fused ops of that type) and the
    per-element work the extraction counted for it."""
    fused = list(node.fused)
    del fused[len(fused) - 1 - fused[::-1].index(node.activation)]
    work = elementwise_flops(node.activation, math.prod(node.output_shape))
    return replace(node, activation="", fused=tuple(fused),
                   other_flops=max(node.other_flops - work, 0))


def without_output_activations(graph: OpGraph) -> tuple[OpGraph, list[str]]:
    """`graph` less the `OUTPUT_ACTIVATIONS` nodes that only lead to its outputs, and their
    descriptions ("Softmax '/5/Softmax'"); the graph itself when there are none."""
    consumers: list[set[int]] = [set() for _ in graph.nodes]
    for src, dst in graph.edges:
        consumers[src].add(dst)
    dropped: set[int] = set()
    for i in reversed(range(len(graph.nodes))):  # topological order: consumers come later
        if graph.nodes[i].op_type in OUTPUT_ACTIVATIONS and consumers[i] <= dropped:
            dropped.add(i)
    # ... and one the extraction fused into the last layer (Gemm + Sigmoid)
    fused = {i for i, node in enumerate(graph.nodes) if i not in dropped
             and node.activation in OUTPUT_ACTIVATIONS and consumers[i] <= dropped}
    if not dropped and not fused:
        return graph, []
    kept = [i for i in range(len(graph.nodes)) if i not in dropped]
    index = {old: new for new, old in enumerate(kept)}
    nodes = [_without_activation(graph.nodes[i]) if i in fused else graph.nodes[i]
             for i in kept]
    stripped = OpGraph(nodes, [(index[s], index[d]) for s, d in graph.edges
                               if s in index and d in index],
                       dict(graph.input_shapes), dict(graph.unknown_ops), graph.params)
    left_out = [f"{graph.nodes[i].activation} (fused into {graph.nodes[i].op_type} "
                f"'{graph.nodes[i].name}')" for i in sorted(fused)]
    left_out += [f"{graph.nodes[i].op_type} '{graph.nodes[i].name}'" for i in sorted(dropped)]
    return stripped, left_out


def hls_layers(graph: OpGraph) -> list[HlsLayer]:
    """The multiply-accumulate layers of a graph, after checking every node is supported.

    Raises:
        UnsupportedOpError: lists every node hls4ml (as modelled here) cannot handle.
    """
    problems = [f"{n.op_type} '{n.name}' {why}" for n in graph.nodes
                if (why := _problem(n)) is not None]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UnsupportedOpError(
            f"Unsupported for FPGA prediction: {'; '.join(problems[:3])}{more}; {_SUPPORTED_TEXT}; "
            "remove or replace these ops")
    layers = [hls_layer(node, i, graph.batch_size) for i, node in enumerate(graph.nodes)]
    found = [layer for layer in layers if layer is not None]
    if not found:
        raise UnsupportedOpError(
            "The model has no Gemm, MatMul or Conv layer: nothing for hls4ml to synthesise")
    return found


def analytic_terms(layers: list[HlsLayer], config: FpgaConfig) -> dict[str, float]:
    """hls4ml-style estimates of one design (per sample), from the layers' reuse.

    Returns:
        cycles: sum of positions x used reuse factor (the latency without a few cycles of
            pipeline overhead); dsp: multipliers, 0 below `DSP_MIN_BITS`; multipliers;
        mult_bits: multipliers x precision (datapath width); weight_bits: weights x
            precision (storage); acc_bits: outputs x precision (accumulators).
    """
    p = config.precision
    mults = sum(layer.multipliers(config.reuse_factor) for layer in layers)
    return {
        "cycles": float(sum(layer.positions * layer.reuse(config.reuse_factor)
                            for layer in layers)),
        "dsp": float(mults if p >= DSP_MIN_BITS else 0),
        "multipliers": float(mults),
        "mult_bits": float(mults * p),
        "weight_bits": float(sum(layer.weights for layer in layers) * p),
        "acc_bits": float(sum(layer.n_out for layer in layers) * p),
    }
