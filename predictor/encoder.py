"""GNN encoder over operator graphs: message passing along and against data edges.

Latency is close to a sum of per-op costs, and an op's cost depends on its neighbours
(fusion, memory reuse, launch overlap), so the encoder produces node states that see
both producers and consumers; the head (`predictor.model`) turns them into per-node
costs. The last layer is conditioned on the device embedding with FiLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes of the graph encoder."""

    hidden: int = 96
    layers: int = 3
    dropout: float = 0.0


def scatter_sum(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Sum rows of `src` (E, H) into `size` buckets given by `index` (E,) -> (size, H)."""
    out = torch.zeros(size, src.shape[1], dtype=src.dtype, device=src.device)
    return out.index_add_(0, index, src)


class BiMessageLayer(nn.Module):
    """h_i <- h_i + MLP([h_i, sum of producers' h, sum of consumers' h]), then LayerNorm.

    Optional FiLM: the update is scaled and shifted per graph by (gamma, beta).
    """

    def __init__(self, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(3 * hidden, hidden), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
        )
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor,
                film: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        src, dst = edge_index
        n = h.shape[0]
        from_producers = scatter_sum(h[src], dst, n)
        from_consumers = scatter_sum(h[dst], src, n)
        update = self.mlp(torch.cat([h, from_producers, from_consumers], dim=1))
        if film is not None:
            gamma, beta = film
            update = update * (1 + gamma) + beta
        return self.norm(h + update)


class GraphEncoder(nn.Module):
    """Node states of operator graphs.

    Shapes:
        x: (N, F) standardised node features; edge_index: (2, E)
        returns: (N, hidden)
    """

    def __init__(self, num_node_features: int, config: EncoderConfig):
        super().__init__()
        self.config = config
        h = config.hidden
        self.embed = nn.Sequential(nn.Linear(num_node_features, h), nn.SiLU(), nn.Linear(h, h))
        self.layers = nn.ModuleList(BiMessageLayer(h, config.dropout)
                                    for _ in range(config.layers))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor,
                last_film: tuple[torch.Tensor, torch.Tensor] | None = None,
                skip_last: bool = False) -> torch.Tensor:
        """Encode; `last_film` (per-node gamma, beta) conditions the last layer.

        With `skip_last`, stop before the last layer (the device-independent states used
        to embed the support set).
        """
        h = self.embed(x)
        for layer in self.layers[:-1]:
            h = layer(h, edge_index)
        if skip_last:
            return h
        return self.layers[-1](h, edge_index, last_film)

    def last(self, h: torch.Tensor, edge_index: torch.Tensor,
             film: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Apply only the last (conditioned) layer to states from `skip_last=True`."""
        return self.layers[-1](h, edge_index, film)
