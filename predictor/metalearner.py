"""Meta-learning in Lightning: episodes of device tasks train the latency network.

Each episode: embed the device from its support set, predict the query set, calibrate
on the support set, and score calibrated log-latency (MSE scaled by the device's spread)
plus a pairwise ranking loss, optionally plus the unscaled MSE (absolute error). The
wrapper only adds steps, logging and optimisers; the network is
`predictor.model.LatencyModel`.
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from torch.nn import functional as F

from predictor.adaptation import overhead_features, overhead_ridge_delta, rank_loss
from predictor.config import TrainConfig
from predictor.datasets import Episode
from predictor.model import LatencyModel


def episode_forward(model: LatencyModel, episode: Episode, head_ridge: float | None = None
                    ) -> list[torch.Tensor]:
    """Calibrated log-latency predictions (q,) for the query set of `episode`; with
    `head_ridge`, also those after the ridge refit of the overhead's last layer on the
    support set (differentiable, as `predictor.adaptation.fit_head_ridge` does it)."""
    h_s, g_s = model.encode(episode.support)
    z = model.embed_device(g_s, episode.support_y)
    raw_s = model.raw_log_latency(episode.support, h_s, z)
    a, b = model.calibrate(raw_s, episode.support_y)
    h_q, _ = model.encode(episode.query)
    raw_q = model.raw_log_latency(episode.query, h_q, z)
    preds = [a * raw_q + b]
    if head_ridge is not None:
        phi_s = overhead_features(model, episode.support, z)
        residual = ((episode.support_y - (a * raw_s + b)) / a).double()
        delta = overhead_ridge_delta(phi_s, residual, head_ridge)
        raw_s2 = raw_s + (phi_s @ delta).to(raw_s.dtype)
        a2, b2 = model.calibrate(raw_s2, episode.support_y)
        raw_q2 = raw_q + (overhead_features(model, episode.query, z) @ delta).to(raw_q.dtype)
        preds.append(a2 * raw_q2 + b2)
    return preds


def episode_loss(model: LatencyModel, episode: Episode, rank_weight: float,
                 absolute_weight: float = 0.0, head_ridge: float | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, query predictions) of one episode: with `head_ridge`, the mean loss of the
    plain and the refitted predictions, and the refitted ones."""
    y = episode.query_y
    spread = y.var().clamp_min(1e-4)
    losses = []
    preds = episode_forward(model, episode, head_ridge)
    for pred in preds:
        mse = F.mse_loss(pred, y)
        losses.append(mse / spread + rank_weight * rank_loss(pred, y) + absolute_weight * mse)
    return torch.stack(losses).mean(), preds[-1]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (average ranks for ties)."""
    from scipy.stats import spearmanr

    value = spearmanr(a.detach().cpu().numpy(), b.detach().cpu().numpy()).statistic
    return float(value) if value == value else 0.0


WARMUP_FRACTION = 0.05  # of the run: linear warm-up of the learning rate


def lr_factor(fraction: float) -> float:
    """Learning-rate factor at `fraction` (0..1] of the run: linear warm-up over the first
    5 %, then cosine decay to 5 % of the base rate at the end."""
    if fraction < WARMUP_FRACTION:
        return fraction / WARMUP_FRACTION
    progress = min(1.0, (fraction - WARMUP_FRACTION) / (1 - WARMUP_FRACTION))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


class MetaLearner(L.LightningModule):
    """Lightning wrapper: training and validation steps over lists of episodes."""

    def __init__(self, config: TrainConfig):
        super().__init__()
        self.config = config
        self.model = LatencyModel(config.model)
        self._started: float | None = None

    def on_train_start(self) -> None:
        self._started = time.monotonic()

    def run_fraction(self, step: int, steps: int) -> float:
        """How far the run is: by steps of `max_epochs`, or by `max_minutes` of wall
        clock when that runs out first, so that a time-capped run still anneals. The
        clock is used on one process only (DDP ranks must step their rates alike)."""
        fraction = (step + 1) / steps
        c = self.config
        if c.max_minutes and self._started is not None and self.trainer.world_size == 1:
            fraction = max(fraction, (time.monotonic() - self._started) / (60 * c.max_minutes))
        return min(1.0, fraction)

    def training_step(self, episodes: list[Episode], batch_idx: int) -> torch.Tensor:
        c = self.config
        losses = [episode_loss(self.model, ep, c.rank_weight, c.absolute_weight,
                               c.head_ridge)[0] for ep in episodes]
        loss = torch.stack(losses).mean()
        self.log("train_loss", loss, prog_bar=True, batch_size=len(episodes))
        return loss

    def validation_step(self, episodes: list[Episode], batch_idx: int) -> None:
        losses, rhos = [], []
        for ep in episodes:
            loss, pred = episode_loss(self.model, ep, self.config.rank_weight,
                                      self.config.absolute_weight, self.config.head_ridge)
            losses.append(loss)
            rhos.append(spearman(pred, ep.query_y))
        n = len(episodes)
        self.log("val_loss", torch.stack(losses).mean(), prog_bar=True, batch_size=n)
        self.log("val_spearman", sum(rhos) / n, prog_bar=True, batch_size=n)

    def configure_optimizers(self):
        c = self.config
        for name, param in self.model.named_parameters():
            param.requires_grad_(not c.trainable or name.startswith(tuple(c.trainable)))
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"trainable {list(c.trainable)} matches no parameter of the model")
        optimiser = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: lr_factor(self.run_fraction(step, steps)))
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return [ep.to(device) for ep in batch]
