"""The latency network: graph encoder + hardware embedding + per-node cost head.

Prediction for a graph G on a device embedded as z (both in log-milliseconds):

    raw(G, z)   = log( sum_i m(cost(h_i(G, z), z)) ) + overhead(G, z)
    pred(G, z)  = a * raw(G, z) + b

where h_i are node states (last encoder layer FiLM-conditioned on z), cost is a
FiLM-conditioned MLP, m maps its score to a positive node cost (softplus or exp, `ModelConfig.node_cost`),
and (a, b) is a per-device affine calibration fitted in closed form on the support set,
so absolute milliseconds are right, not only the ranking.
The sum over nodes mirrors how runtimes execute graphs op after op. A device may also
scale the costs of whole op classes (`OP_CLASSES`, e.g. depthwise convolutions) by
exp(s_c): few parameters that few samples can fit, where a runtime's kernels for one
class are unlike any training device's (see `predictor.adaptation`).

The module is a plain `nn.Module`: usable without a Trainer (see `predictor.adaptation`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from predictor.encoder import EncoderConfig, GraphEncoder, UniquePlan, scatter_sum
from predictor.errors import PredictorError
from predictor.features import FEATURE_SCHEMA
from predictor.graph_store import GraphBatch
from predictor.hardware import HardwareConfig, HardwareEmbedding

NODE_COSTS: tuple[str, ...] = ("softplus", "exp")  # `ModelConfig.node_cost`

# Op classes whose costs a device may scale as a whole: kernels of one class share code
# (and its efficiency) within a runtime. "conv": dense convolutions with a spatial kernel.
# "pool": windowed pooling, memory-bound, whose cost relative to convolutions differs most
# between devices (NB201 training devices: a third of a 3x3 convolution's cost on GPUs at
# batch 1, four fifths at batch 256). Appended last, so older 5-class scales still read.
OP_CLASSES: tuple[str, ...] = ("conv", "pointwise", "depthwise", "matmul", "other", "pool")
FEATURE_COLUMN = {name: i for i, name in enumerate(FEATURE_SCHEMA.node_features)}


def op_classes(rows: torch.Tensor) -> torch.Tensor:
    """(N,) index into OP_CLASSES of each raw (unstandardised) node feature row (N, F)."""
    col = FEATURE_COLUMN
    conv = (rows[:, col["op=Conv"]] + rows[:, col["op=ConvTranspose"]]) > 0.5
    grouped = (rows[:, col["depthwise"]] > 0.5) | (rows[:, col["log_groups"]] > 0)
    pointwise = (rows[:, col["kernel_h"]] * rows[:, col["kernel_w"]]) <= 1.0
    matmul = (rows[:, col["op=Gemm"]] + rows[:, col["op=MatMul"]] + rows[:, col["op=Einsum"]]) > 0.5
    pool = (rows[:, col["op=MaxPool"]] + rows[:, col["op=AveragePool"]]) > 0.5
    out = torch.full((rows.shape[0],), OP_CLASSES.index("other"), dtype=torch.long)
    out[pool] = OP_CLASSES.index("pool")
    out[matmul] = OP_CLASSES.index("matmul")
    out[conv] = OP_CLASSES.index("conv")
    out[conv & pointwise] = OP_CLASSES.index("pointwise")
    out[conv & grouped] = OP_CLASSES.index("depthwise")
    return out


def node_op_classes(batch: GraphBatch) -> torch.Tensor:
    """(N,) op class of every node of `batch` (computed on a store's unique rows if any)."""
    if batch.x is None and batch.rows is not None:
        return op_classes(batch.rows)[batch.row_ids.long()]
    return op_classes(batch.features())


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the latency network."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    graph_dim: int = 96  # device-independent graph embedding (input of the set encoder)
    calibration_ridge: float = 1.0  # pulls the calibration slope towards 1 (few samples)
    # Map from a node's score to its cost: "softplus" (the shipped checkpoint) or "exp" (a
    # log-cost per node, as costs of one graph span 1e4 from an elementwise op to a large
    # convolution; it lost on the model sets' valid devices, see configs/latpred.yaml).
    node_cost: str = "softplus"

    def __post_init__(self) -> None:
        if self.node_cost not in NODE_COSTS:
            raise PredictorError(f"model.node_cost must be one of {list(NODE_COSTS)}, "
                                 f"got {self.node_cost!r}")


class Standardiser(nn.Module):
    """Fixed per-feature mean/std, fitted once on training graphs and saved as buffers.

    A feature that never varied in training (an op type absent from the training graphs,
    a fixed input resolution) keeps unit scale: dividing by its ~0 std would turn the
    first unseen value into an input of thousands and the prediction into nonsense.
    Standardised values are also clipped to +-CLIP for the same reason.
    """

    MIN_STD = 0.05  # below this a feature counts as constant in training
    CLIP = 20.0

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("std", torch.ones(size))

    def fit(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(x.std(dim=0).clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Applied here, not in `fit`, so that checkpoints fitted before keep working.
        std = torch.where(self.std < self.MIN_STD, torch.ones_like(self.std), self.std)
        return ((x - self.mean) / std).clamp(-self.CLIP, self.CLIP)


def affine_calibration(raw: torch.Tensor, y: torch.Tensor, ridge: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Slope a and offset b minimising sum (y - a raw - b)^2 + ridge (a - 1)^2 (closed form).

    Shapes: raw, y: (k,) -> a, b: scalars. Differentiable.
    """
    rc = raw - raw.mean()
    yc = y - y.mean()
    a = (torch.dot(rc, yc) + ridge) / (torch.dot(rc, rc) + ridge)
    b = y.mean() - a * raw.mean()
    return a, b


class LatencyModel(nn.Module):
    """Graph encoder + hardware embedding + FiLM-conditioned per-node cost head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        nf, ng = FEATURE_SCHEMA.num_node_features, FEATURE_SCHEMA.num_graph_features
        h, zdim = config.encoder.hidden, config.hardware.dim
        self.node_norm = Standardiser(nf)
        self.graph_norm = Standardiser(ng)
        self.encoder = GraphEncoder(nf, config.encoder)
        self.graph_embed = nn.Sequential(nn.Linear(2 * h + ng, config.graph_dim), nn.SiLU(),
                                         nn.Linear(config.graph_dim, config.graph_dim))
        self.hardware = HardwareEmbedding(config.graph_dim, config.hardware)
        self.film_encoder = nn.Linear(zdim, 2 * h)
        self.film_head = nn.Linear(zdim, 2 * h)
        self.cost_in = nn.Linear(h, h)
        self.cost_out = nn.Sequential(nn.SiLU(), nn.Linear(h, 1))
        self.overhead = nn.Sequential(nn.Linear(ng + zdim, h), nn.SiLU(), nn.Linear(h, 1))
        for film in (self.film_encoder, self.film_head):  # start as identity conditioning
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)

    # -- device-independent part -------------------------------------------------
    def encode(self, batch: GraphBatch, plan: UniquePlan | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Node states before the conditioned layer (N, h), and graph embeddings (B, graph_dim).

        With a `plan` (inference), the states are one per class of the plan's second-to-last
        level instead of one per node: the same numbers, computed once per distinct node.
        """
        h = self.node_states(batch, plan)
        per_node = h if plan is None else h[plan.classes[-2]]
        counts = torch.bincount(batch.batch, minlength=batch.num_graphs).clamp_min(1)
        summed = scatter_sum(per_node, batch.batch, batch.num_graphs)
        pooled = torch.cat([summed / counts[:, None], summed / 100.0,
                            self.graph_norm(batch.graph_attr)], dim=1)
        return h, self.graph_embed(pooled)

    def node_states(self, batch: GraphBatch, plan: UniquePlan | None = None) -> torch.Tensor:
        """The first output of `encode` alone (what prediction needs)."""
        if plan is None:
            return self.encoder(self.node_norm(batch.features()), batch.edge_index,
                                skip_last=True)
        return self.encoder.forward_unique(self.node_norm(batch.features(plan.first)), plan)

    def plan(self, batch: GraphBatch) -> UniquePlan:
        """The distinct-node plan of `batch` for `encode` / `raw_log_latency` (inference)."""
        return UniquePlan.build(batch.x, batch.edge_index, len(self.encoder.layers),
                                batch.row_ids)

    def embed_device(self, graph_emb: torch.Tensor, log_latency: torch.Tensor) -> torch.Tensor:
        """Device embedding (dim,) from support graph embeddings (k, G) and log-latencies (k,)."""
        return self.hardware(graph_emb, log_latency)

    # -- device-conditioned part ---------------------------------------------------
    def raw_log_latency(self, batch: GraphBatch, h: torch.Tensor, z: torch.Tensor,
                        plan: UniquePlan | None = None, op_scale: torch.Tensor | None = None,
                        by_class: bool = False):
        """Uncalibrated log-latency (B,) of encoded graphs on the device embedded as z (dim,).

        `h` and `plan` as returned by / given to `encode`. `op_scale` (len(OP_CLASSES),):
        log multipliers of the node costs per op class. With `by_class`, the parts instead:
        (summed node cost per graph and op class (B, C), overhead (B,)), so that
        raw = log(costs @ exp(op_scale) + 1e-6) + overhead.
        """
        gamma, beta = self.film_encoder(z).chunk(2)
        if plan is None:
            n = h.shape[0]
            h = self.encoder.last(h, batch.edge_index, (gamma.expand(n, -1), beta.expand(n, -1)))
        else:
            h = self.encoder.layers[-1].forward_unique(h, plan.levels[-1],
                                                       (gamma[None], beta[None]))
        g2, b2 = self.film_head(z).chunk(2)
        score = self.cost_out(self.cost_in(h) * (1 + g2) + b2).squeeze(1)
        cost = (torch.exp(score.clamp(-30.0, 30.0)) if self.config.node_cost == "exp"
                else F.softplus(score))
        if plan is not None:
            cost = cost[plan.classes[-1]]
        overhead = self.overhead(self.overhead_input(batch, z)).squeeze(1)
        if by_class:
            onehot = F.one_hot(node_op_classes(batch), len(OP_CLASSES)).to(cost.dtype)
            return scatter_sum(cost[:, None] * onehot, batch.batch, batch.num_graphs), overhead
        if op_scale is not None:
            cost = cost * torch.exp(op_scale)[node_op_classes(batch)]
        total = scatter_sum(cost[:, None], batch.batch, batch.num_graphs).squeeze(1)
        return torch.log(total + 1e-6) + overhead

    def overhead_input(self, batch: GraphBatch, z: torch.Tensor) -> torch.Tensor:
        """(B, graph_dim + dim): what the overhead MLP reads, graph features and z."""
        return torch.cat([self.graph_norm(batch.graph_attr), z.expand(batch.num_graphs, -1)],
                         dim=1)

    def calibrate(self, raw_support: torch.Tensor, y_support: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        return affine_calibration(raw_support, y_support, self.config.calibration_ridge)

