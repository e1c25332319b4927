"""Hardware embedding: a device embedded from its few-shot measurements by a set encoder.

Input: for each measured architecture, its device-independent graph embedding and its
measured log-latency. The latencies are centred and scaled within the set, so the
embedding describes how the device *ranks* architectures, not how fast it is overall
(absolute speed is restored by the per-device affine calibration of the head). Any
support set works: its size and its architectures are free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HardwareConfig:
    """Sizes of the set encoder."""

    dim: int = 32  # device embedding size
    hidden: int = 96


def standardise_set(y: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Centre and scale a set of log-latencies (k,) -> (k,)."""
    if y.numel() < 2:
        return y - y.mean()
    return (y - y.mean()) / (y.std() + eps)


class HardwareEmbedding(nn.Module):
    """DeepSets over (graph embedding, standardised log-latency) pairs.

    Shapes:
        graph_emb: (k, G) support graph embeddings
        log_latency: (k,) measured log-latency (ms)
        returns: (dim,) device embedding
    """

    def __init__(self, graph_dim: int, config: HardwareConfig):
        super().__init__()
        self.config = config
        h = config.hidden
        self.phi = nn.Sequential(nn.Linear(graph_dim + 2, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU())
        # Interactions: which graphs are slow relative to which others.
        self.attn = nn.MultiheadAttention(h, num_heads=4, batch_first=True)
        self.rho = nn.Sequential(nn.Linear(2 * h, h), nn.SiLU(), nn.Linear(h, config.dim))

    def forward(self, graph_emb: torch.Tensor, log_latency: torch.Tensor) -> torch.Tensor:
        y = standardise_set(log_latency)
        spread = log_latency.std() if log_latency.numel() > 1 else log_latency.new_zeros(())
        feats = torch.cat([graph_emb, y[:, None], spread.expand(y.shape[0])[:, None]], dim=1)
        e = self.phi(feats)[None]  # (1, k, h)
        e = e + self.attn(e, e, e, need_weights=False)[0]
        pooled = torch.cat([e.mean(dim=1), e.amax(dim=1)], dim=1)[0]
        return self.rho(pooled)
