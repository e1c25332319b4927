"""FPGA resource and latency regressor for hls4ml designs: graph encoder + synthesis config.

A design is an operator graph plus an `FpgaConfig` (precision, reuse factor, strategy,
clock). The configuration plays the role the hardware embedding plays for latency: it is
embedded and FiLM-conditions the encoder's last layer and the heads, and it enters the
node features through what hls4ml makes of it per layer (used reuse factor, multipliers,
bits; `predictor.hls4ml`). Prediction of each target t (`TARGETS`, log1p of counts):

    pred_t = softplus( logsumexp( {s_t(node i)} U {s_t(graph)} ) )

i.e. a sum of positive per-node costs plus a per-design overhead, in log space: cycles
are close to the sum of the layers' reuse factors, DSPs to the sum of their multipliers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from predictor import __version__
from predictor.checkpoint import CheckpointError
from predictor.encoder import EncoderConfig, GraphEncoder, scatter_sum
from predictor.features import FEATURE_SCHEMA, check_schema, graph_features, node_features
from predictor.fpga_data import TARGETS
from predictor.graph import OpGraph
from predictor.graph_store import GraphBatch
from predictor.hls4ml import DSP_MIN_BITS, STRATEGIES, FpgaConfig, HlsLayer, analytic_terms
from predictor.locations import shipped
from predictor.model import Standardiser
from predictor.storage import atomic_write_bytes

FORMAT = 1
DEFAULT_FPGA_CHECKPOINT = shipped("checkpoints") / "fpga.ckpt"
HLS_NODE_FEATURES: tuple[str, ...] = (
    "is_mac", "is_conv", "log2_n_in", "log2_n_out", "log2_weights", "log2_positions",
    "log2_rf_used", "log2_multipliers", "log2_cycles", "log2_rf_ratio", "rf_adjusted",
    "rf_below_n_in", "fully_serial", "log2_mult_bits", "log2_weight_bits", "log2_rf_bits",
    "log2_out_bits", "log2_dsp",
)
CONFIG_FEATURES: tuple[str, ...] = (
    "precision", "log2_precision", "log2_reuse_factor", *(f"strategy={s}" for s in STRATEGIES),
    "clock_period_ns", "dsp_products",
)
ANALYTIC_FEATURES: tuple[str, ...] = (
    "cycles", "dsp", "multipliers", "mult_bits", "weight_bits", "acc_bits")
NUM_NODE = FEATURE_SCHEMA.num_node_features + len(HLS_NODE_FEATURES)
NUM_GRAPH = FEATURE_SCHEMA.num_graph_features + len(ANALYTIC_FEATURES)


def _l2(x: float) -> float:
    return math.log2(max(float(x), 1.0))


def hls_node_rows(graph: OpGraph, layers: Sequence[HlsLayer], config: FpgaConfig) -> np.ndarray:
    """Config-dependent node features (nodes, len(HLS_NODE_FEATURES)); zeros off MAC nodes."""
    rows = np.zeros((len(graph.nodes), len(HLS_NODE_FEATURES)), dtype=np.float32)
    p, rf = config.precision, config.reuse_factor
    for layer in layers:
        used = layer.reuse(rf)
        mults = math.ceil(layer.weights / used)
        rows[layer.node] = (
            1.0, float(layer.op_type == "Conv"), _l2(layer.n_in), _l2(layer.n_out),
            _l2(layer.weights), _l2(layer.positions), _l2(used), _l2(mults),
            _l2(layer.positions * used), math.log2(rf / used), float(used != rf),
            float(used < layer.n_in), float(used == layer.weights), _l2(mults * p),
            _l2(layer.weights * p), _l2(used * p), _l2(layer.n_out * p),
            math.log2(1 + (mults if p >= DSP_MIN_BITS else 0)),
        )
    return rows


def config_row(config: FpgaConfig) -> list[float]:
    """The configuration's features, ordered as `CONFIG_FEATURES`."""
    return [float(config.precision), math.log2(config.precision), math.log2(config.reuse_factor),
            *(float(config.strategy == s) for s in STRATEGIES), float(config.clock_period_ns),
            float(config.precision >= DSP_MIN_BITS)]


def design_batch(graphs: Sequence[OpGraph], layers: Sequence[Sequence[HlsLayer]],
                 configs: Sequence[FpgaConfig]) -> tuple[GraphBatch, torch.Tensor]:
    """Featurise designs (graph i synthesised with configs[i]) into one batch.

    Shapes:
        returns GraphBatch with x (N, NUM_NODE), graph_attr (B, NUM_GRAPH), and the
        configuration features (B, len(CONFIG_FEATURES)).
    """
    static: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    xs, edges, batch, attrs, offset = [], [], [], [], 0
    for b, (graph, graph_layers, config) in enumerate(zip(graphs, layers, configs, strict=True)):
        if id(graph) not in static:
            static[id(graph)] = (
                np.array([node_features(n) for n in graph.nodes], dtype=np.float32),
                np.array(graph_features(graph), dtype=np.float32))
        x_static, g_static = static[id(graph)]
        xs.append(np.concatenate([x_static, hls_node_rows(graph, graph_layers, config)], axis=1))
        terms = analytic_terms(list(graph_layers), config)
        attrs.append(np.concatenate([g_static, np.log1p([terms[k] for k in ANALYTIC_FEATURES])]))
        edges += [(s + offset, d + offset) for s, d in graph.edges]
        batch += [b] * len(graph.nodes)
        offset += len(graph.nodes)
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32))
    edge_index = torch.tensor(edges, dtype=torch.long).reshape(-1, 2).t().contiguous()
    cond = torch.tensor([config_row(c) for c in configs], dtype=torch.float32)
    return GraphBatch(x, edge_index, torch.tensor(batch, dtype=torch.long),
                      torch.from_numpy(np.stack(attrs).astype(np.float32)), len(graphs)), cond


@dataclass(frozen=True)
class FpgaNetConfig:
    """Sizes of the FPGA regressor."""

    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(hidden=96, layers=2))
    cond_dim: int = 16
    targets: tuple[str, ...] = TARGETS

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FpgaNetConfig:
        return cls(EncoderConfig(**d["encoder"]), int(d["cond_dim"]), tuple(d["targets"]))


def scatter_logsumexp(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """log(sum exp) of rows of `src` (N, T) grouped by `index` (N,) -> (size, T)."""
    top = torch.full((size, src.shape[1]), -1e4, dtype=src.dtype)
    top = top.scatter_reduce(0, index[:, None].expand_as(src), src, "amax").detach()
    summed = scatter_sum(torch.exp(src - top[index]), index, size)
    return top + torch.log(summed.clamp_min(1e-30))


class FpgaNet(nn.Module):
    """Graph encoder + configuration embedding + per-node cost heads (module docstring).

    Shapes:
        forward(batch, cond): batch.x (N, NUM_NODE), cond (B, len(CONFIG_FEATURES))
        returns (B, T) predicted log1p of the targets
    """

    def __init__(self, config: FpgaNetConfig):
        super().__init__()
        self.config = config
        h, c, t = config.encoder.hidden, config.cond_dim, len(config.targets)
        self.node_norm = Standardiser(NUM_NODE)
        self.graph_norm = Standardiser(NUM_GRAPH)
        self.cond_norm = Standardiser(len(CONFIG_FEATURES))
        self.cond = nn.Sequential(nn.Linear(len(CONFIG_FEATURES), c), nn.SiLU(), nn.Linear(c, c))
        self.encoder = GraphEncoder(NUM_NODE, config.encoder)
        self.film = nn.Linear(c, 2 * h)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.node_head = nn.Sequential(nn.Linear(h + c, h), nn.SiLU(), nn.Linear(h, t))
        self.node_linear = nn.Linear(len(HLS_NODE_FEATURES), t)  # log-linear per-layer costs
        self.graph_head = nn.Sequential(nn.Linear(NUM_GRAPH + c + h, h), nn.SiLU(),
                                        nn.Linear(h, t))

    def fit_standardisers(self, batch: GraphBatch, cond: torch.Tensor) -> None:
        self.node_norm.fit(batch.x)
        self.graph_norm.fit(batch.graph_attr)
        self.cond_norm.fit(cond)

    def forward(self, batch: GraphBatch, cond: torch.Tensor) -> torch.Tensor:
        x = self.node_norm(batch.x)
        z = self.cond(self.cond_norm(cond))
        gamma, beta = self.film(z).chunk(2, dim=1)
        h = self.encoder(x, batch.edge_index, (gamma[batch.batch], beta[batch.batch]))
        node = self.node_head(torch.cat([h, z[batch.batch]], dim=1)) + \
            self.node_linear(x[:, FEATURE_SCHEMA.num_node_features:])
        counts = torch.bincount(batch.batch, minlength=batch.num_graphs).clamp_min(1)
        pooled = scatter_sum(h, batch.batch, batch.num_graphs) / counts[:, None]
        graph = self.graph_head(torch.cat([self.graph_norm(batch.graph_attr), z, pooled], dim=1))
        scores = torch.cat([node, graph], dim=0)
        index = torch.cat([batch.batch, torch.arange(batch.num_graphs)])
        return nn.functional.softplus(scatter_logsumexp(scores, index, batch.num_graphs))


@dataclass
class FpgaCheckpoint:
    """A trained `FpgaNet` (or an ensemble of them) with its training ranges.

    Attributes:
        ranges: what training saw: "precision", "reuse_factor", "clock_period_ns" as
            [min, max]; "strategies", "kinds" as lists; "max_multipliers" per layer;
            "targets": {metric: [min, max]}.
        info: provenance (data, rows, validation scores, training time).
    """

    nets: list[FpgaNet]
    config: FpgaNetConfig
    ranges: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.config.targets

    def save(self, path: str | Path) -> None:
        buffer = io.BytesIO()
        torch.save({
            "format": FORMAT, "kind": "fpga", "package_version": __version__,
            "schema": FEATURE_SCHEMA.to_dict(), "hls_node_features": list(HLS_NODE_FEATURES),
            "config_features": list(CONFIG_FEATURES), "config": asdict(self.config),
            "metrics": list(self.metrics), "ranges": self.ranges, "info": self.info,
            "state_dicts": [{k: v.detach().cpu() for k, v in net.state_dict().items()}
                            for net in self.nets],
        }, buffer)
        atomic_write_bytes(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path | None = None) -> FpgaCheckpoint:
        """Load an FPGA checkpoint (default: the shipped `checkpoints/fpga.ckpt`)."""
        path = Path(path) if path is not None else DEFAULT_FPGA_CHECKPOINT
        if not path.is_file():
            raise CheckpointError(f"FPGA checkpoint not found: {path}; train one with "
                                  "`scripts/benchmark_fpga.py --save-checkpoint`")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
            kind, fmt = obj["kind"], obj["format"]
        except Exception as exc:
            raise CheckpointError(f"{path}: not an FPGA checkpoint ({type(exc).__name__}: "
                                  f"{exc})".splitlines()[0]) from None
        if kind != "fpga" or fmt != FORMAT:
            raise CheckpointError(f"{path}: {kind!r} checkpoint format {fmt}, expected 'fpga' "
                                  f"format {FORMAT}")
        check_schema(obj["schema"], what=f"FPGA checkpoint {path}")
        if (obj["hls_node_features"] != list(HLS_NODE_FEATURES)
                or obj["config_features"] != list(CONFIG_FEATURES)):
            raise CheckpointError(f"{path}: made with other FPGA features; retrain it")
        config = FpgaNetConfig.from_dict(obj["config"])
        nets = []
        for state in obj["state_dicts"]:
            net = FpgaNet(config)
            try:
                net.load_state_dict(state)
            except RuntimeError as exc:
                raise CheckpointError(f"{path}: weights do not fit its config "
                                      f"({exc})".splitlines()[0]) from None
            nets.append(net.eval())
        return cls(nets, config, obj["ranges"], obj.get("info", {}))
