"""GNN encoder over operator graphs: message passing along and against data edges.

Latency is close to a sum of per-op costs, and an op's cost depends on its neighbours
(fusion, memory reuse, launch overlap), so the encoder produces node states that see
both producers and consumers; the head (`predictor.model`) turns them into per-node
costs. The last layer is conditioned on the device embedding with FiLM.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F


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
        return self.update(h, scatter_sum(h[src], dst, n), scatter_sum(h[dst], src, n), film)

    def update(self, h: torch.Tensor, from_producers: torch.Tensor, from_consumers: torch.Tensor,
               film: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The layer given each node's state and its summed neighbour states."""
        update = self.mlp(torch.cat([h, from_producers, from_consumers], dim=1))
        if film is not None:
            gamma, beta = film
            update = update * (1 + gamma) + beta
        return self.norm(h + update)

    def forward_unique(self, h: torch.Tensor, level: PlanLevel,
                       film: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The layer on distinct nodes only: `h` (K, H) holds one state per class of the
        previous level; returns one per class of `level`. `film`: (1, H) gamma and beta.

        The first linear map is split over [own, producers, consumers] and applied to the
        K previous states before gathering (linear maps commute with sums), so the widest
        matmul runs on the fewer previous classes.
        """
        first = self.mlp[0]
        hidden = h.shape[1]
        # Row 3j + b of `projected` is block b (own, producers, consumers) of the first
        # linear map applied to previous class j; `level.mix` sums the right rows.
        weight = first.weight.view(hidden, 3, hidden).transpose(0, 1).reshape(3 * hidden, hidden)
        projected = F.linear(h, weight).reshape(3 * h.shape[0], hidden)
        pre = torch.sparse.mm(level.mix, projected) + first.bias
        update = self.mlp[3](self.mlp[2](self.mlp[1](pre)))
        if film is not None:
            gamma, beta = film
            update = update * (1 + gamma) + beta
        return self.norm(h[level.own] + update)


class PlanLevel(NamedTuple):
    """One message-passing level of a `UniquePlan`: classes of nodes whose states are equal.

    own: (K',) class (at the previous level) of each new class's representative node;
    mix: (K', 3K) sparse CSR counts: entry (i, 3j + b) counts how often previous class j is
    the representative of new class i itself (b = 0), one of its producers (b = 1) or one
    of its consumers (b = 2).
    """

    own: torch.Tensor
    mix: torch.Tensor


class UniquePlan(NamedTuple):
    """Which nodes of a batch get equal states, level by level (inference speed-up).

    After k message-passing layers a node's state is a function of its k-hop neighbourhood
    in both directions, so nodes whose neighbourhoods match (Weisfeiler-Lehman colours:
    own row, multisets of producer and consumer colours) have equal states. Search-space
    graphs repeat cells and blocks, so a batch of NB201 networks has ~2-6x fewer distinct
    states than nodes per layer. Colours are refined with random 64-bit hashes of the
    multisets (a false merge needs a 64-bit collision).

    first: (K0,) a representative node per class of the input rows;
    levels: one `PlanLevel` per layer; classes: (N,) class of each node, by input row, then
    after each level (layers + 1 tensors).
    """

    first: torch.Tensor
    levels: list[PlanLevel]
    classes: list[torch.Tensor]

    @classmethod
    def build(cls, x: torch.Tensor, edge_index: torch.Tensor, layers: int,
              row_ids: torch.Tensor | None = None) -> UniquePlan:
        with torch.no_grad():
            if row_ids is None:
                _, colour = torch.unique(x, dim=0, return_inverse=True)
            else:  # a store's row ids: few, so usable as classes directly (some may be unused)
                colour = row_ids
            first = _representatives(colour)
            src, dst = edge_index
            g = torch.Generator().manual_seed(0x5EED)
            levels, classes = [], [colour]
            for _ in range(layers):
                k = int(colour.max()) + 1 if colour.numel() else 0
                salt = torch.randint(-2**62, 2**62, (3, k), generator=g, dtype=torch.long)
                key = salt[0][colour]
                key = key.index_add(0, dst, salt[1][colour[src]])
                key = key.index_add(0, src, salt[2][colour[dst]])
                _, new = torch.unique(key, return_inverse=True)
                rep = _representatives(new)
                is_rep = torch.zeros_like(colour, dtype=torch.bool)
                is_rep[rep] = True
                p = is_rep[dst]
                c = is_rep[src]
                rows = torch.cat([torch.arange(rep.numel()), new[dst[p]], new[src[c]]])
                cols = torch.cat([3 * colour[rep], 3 * colour[src[p]] + 1,
                                  3 * colour[dst[c]] + 2])
                levels.append(PlanLevel(colour[rep], _csr(rows, cols, (rep.numel(), 3 * k))))
                colour = new
                classes.append(new)
        return cls(first, levels, classes)


def _csr(rows: torch.Tensor, cols: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sparse CSR matrix of counts: 1 per (row, col) pair, duplicates add up."""
    order = torch.argsort(rows, stable=True)
    crow = torch.zeros(size[0] + 1, dtype=torch.long)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=size[0]), 0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product is tested
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols[order], torch.ones(rows.numel()), size,
                                       check_invariants=False)


def _representatives(classes: torch.Tensor) -> torch.Tensor:
    """(K,) one node index per class 0..K-1 (node 0 for a class without nodes)."""
    k = int(classes.max()) + 1 if classes.numel() else 0
    rep = torch.zeros(k, dtype=torch.long)
    rep[classes] = torch.arange(classes.numel())
    return rep


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

    def forward_unique(self, x_rows: torch.Tensor, plan: UniquePlan) -> torch.Tensor:
        """States before the last layer, one per class of the plan's second-to-last level.

        `x_rows`: standardised features of the plan's `first` representatives (K0, F).
        """
        h = self.embed(x_rows)
        for layer, level in zip(self.layers[:-1], plan.levels[:-1], strict=True):
            h = layer.forward_unique(h, level)
        return h

    def last(self, h: torch.Tensor, edge_index: torch.Tensor,
             film: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Apply only the last (conditioned) layer to states from `skip_last=True`."""
        return self.layers[-1](h, edge_index, film)
