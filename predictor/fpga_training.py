"""Training, few-shot adaptation and scoring of the FPGA regressor (`predictor.fpga`).

Plain torch loops on one thread: the designs are small (3 to 8 nodes), so a model
trains in a minute or two on ~7,000 syntheses. `adapt_fpga` is the inner loop for an
unseen kind of design (a few labelled syntheses): it fine-tunes the configuration
embedding and the heads, keeping the graph encoder fixed.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from predictor.fpga import FpgaCheckpoint, FpgaNet, FpgaNetConfig, design_batch
from predictor.fpga_data import TARGETS, FpgaDataset
from predictor.graph_store import GraphBatch, select_graphs
from predictor.hls4ml import FpgaConfig, HlsLayer, hls_layers

logger = logging.getLogger(__name__)
ADAPTED_MODULES = ("cond", "film", "node_head", "node_linear", "graph_head")
# Reporting unit of each metric: predictions are rounded to it (BRAM comes in halves).
UNITS = {"lut": 1.0, "ff": 1.0, "dsp": 1.0, "bram_18k": 0.5, "latency_cycles": 1.0}


@dataclass(frozen=True)
class FpgaTrainConfig:
    """One training run: network sizes, optimiser, schedule."""

    net: FpgaNetConfig = field(default_factory=FpgaNetConfig)
    epochs: int = 120
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-5
    huber_beta: float = 0.01  # in log1p units: L1 beyond ~1% error
    # loss weight per target (TARGETS order): BRAM and LUT are the hardest to fit
    target_weights: tuple[float, ...] = (2.0, 1.0, 1.0, 3.0, 1.0)
    valid_fraction: float = 0.1  # architectures held out of training for model selection
    ensemble: int = 1  # independently trained nets whose log predictions are averaged
    seed: int = 0
    max_minutes: float = 8.0


@dataclass
class EncodedDesigns:
    """Featurised syntheses: batch (one graph per row), config features, log1p targets (R, T)."""

    batch: GraphBatch
    cond: torch.Tensor
    y: torch.Tensor

    def subset(self, rows: np.ndarray | list[int]) -> EncodedDesigns:
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        return EncodedDesigns(select_graphs(self.batch, rows), self.cond[rows], self.y[rows])


def row_configs(data: FpgaDataset, rows: np.ndarray) -> list[FpgaConfig]:
    return [FpgaConfig(int(data.precision[r]), int(data.reuse_factor[r]), data.strategy[r],
                       float(data.clock_ns[r])) for r in rows]


def arch_layers(data: FpgaDataset) -> list[list[HlsLayer]]:
    """hls4ml layers of every network of the dataset (checks every op is supported)."""
    return [hls_layers(g) for g in data.graphs]


def encode(data: FpgaDataset, rows: np.ndarray | None = None,
           layers: list[list[HlsLayer]] | None = None) -> EncodedDesigns:
    """Featurise the syntheses `rows` (default: all) of `data`."""
    rows = np.arange(len(data)) if rows is None else np.asarray(rows)
    layers = layers if layers is not None else arch_layers(data)
    batch, cond = design_batch([data.graphs[a] for a in data.arch[rows]],
                               [layers[a] for a in data.arch[rows]], row_configs(data, rows))
    y = torch.from_numpy(np.log1p(data.targets[rows])).float()
    return EncodedDesigns(batch, cond, y)


def training_ranges(data: FpgaDataset, rows: np.ndarray, layers: list[list[HlsLayer]]
                    ) -> dict:
    """What the training rows cover (stored in the checkpoint, checked at prediction)."""
    mults = [layer.multipliers(int(data.reuse_factor[r]))
             for r in rows for layer in layers[data.arch[r]]]
    return {
        "precision": [int(data.precision[rows].min()), int(data.precision[rows].max())],
        "reuse_factor": [int(data.reuse_factor[rows].min()), int(data.reuse_factor[rows].max())],
        "clock_period_ns": [float(data.clock_ns[rows].min()), float(data.clock_ns[rows].max())],
        "strategies": sorted({data.strategy[r] for r in rows}),
        "kinds": sorted({data.kinds[data.arch[r]] for r in rows}),
        "max_multipliers": int(max(mults)),
        "targets": {t: [float(data.targets[rows, i].min()), float(data.targets[rows, i].max())]
                    for i, t in enumerate(TARGETS)},
    }


def _loss(pred: torch.Tensor, y: torch.Tensor, beta: float,
          weights: torch.Tensor | None = None) -> torch.Tensor:
    loss = nn.functional.smooth_l1_loss(pred, y, beta=beta, reduction="none").mean(0)
    return (loss * weights).sum() / weights.sum() if weights is not None else loss.mean()


def _fit_one(train: EncodedDesigns, valid: EncodedDesigns | None, config: FpgaTrainConfig,
             seed: int, deadline: float) -> FpgaNet:
    torch.manual_seed(seed)
    net = FpgaNet(config.net)
    net.fit_standardisers(train.batch, train.cond)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = len(train.y)
    steps_per_epoch = max(1, math.ceil(n / config.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, pct_start=0.1,
                                                total_steps=config.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    weights = torch.tensor(config.target_weights, dtype=torch.float32)
    best, best_state = math.inf, None
    for epoch in range(config.epochs):
        net.train()
        order = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            part = train.subset(order[i * config.batch_size:(i + 1) * config.batch_size].numpy())
            loss = _loss(net(part.batch, part.cond), part.y, config.huber_beta, weights)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
        if valid is not None and (epoch >= config.epochs // 2 or epoch == config.epochs - 1):
            net.eval()
            with torch.no_grad():
                score = float((net(valid.batch, valid.cond) - valid.y).abs().mean())
            if score < best:
                best, best_state = score, copy.deepcopy(net.state_dict())
        if time.monotonic() > deadline:
            logger.warning("FPGA training stopped at epoch %d (max_minutes)", epoch + 1)
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    return net.eval()


def train_fpga(data: FpgaDataset, rows: np.ndarray, config: FpgaTrainConfig | None = None,
               encoded: EncodedDesigns | None = None) -> FpgaCheckpoint:
    """Train on the syntheses `rows` of `data`; returns a checkpoint (not yet saved).

    A `valid_fraction` of the training *architectures* is held out for choosing the best
    epoch, so model selection never sees a test network.
    """
    config = config or FpgaTrainConfig()
    start = time.monotonic()
    layers = arch_layers(data)
    encoded = encoded if encoded is not None else encode(data, layers=layers)
    rng = np.random.default_rng(config.seed)
    archs = np.unique(data.arch[rows])
    held = set(rng.choice(archs, size=int(len(archs) * config.valid_fraction), replace=False))
    is_valid = np.array([a in held for a in data.arch[rows]], dtype=bool)
    train = encoded.subset(rows[~is_valid])
    valid = encoded.subset(rows[is_valid]) if is_valid.any() else None
    deadline = start + 60 * config.max_minutes
    nets = [_fit_one(train, valid, config, config.seed * 100 + k, deadline)
            for k in range(config.ensemble)]
    info = {"rows": int(len(rows)), "architectures": int(len(archs)),
            "train_seconds": round(time.monotonic() - start, 1), "epochs": config.epochs,
            "ensemble": config.ensemble}
    if valid is not None:
        info["valid_mae_log1p"] = dict(zip(TARGETS, _mae_log(nets, valid).tolist(), strict=True))
    return FpgaCheckpoint(nets, config.net, training_ranges(data, rows, layers), info)


def predict_log1p(nets: list[FpgaNet], batch: GraphBatch, cond: torch.Tensor) -> torch.Tensor:
    """Mean over the ensemble of predicted log1p targets (B, T)."""
    with torch.no_grad():
        return torch.stack([net(batch, cond) for net in nets]).mean(0)


def _mae_log(nets: list[FpgaNet], data: EncodedDesigns) -> np.ndarray:
    return (predict_log1p(nets, data.batch, data.cond) - data.y).abs().mean(0).numpy()


def to_counts(log1p: torch.Tensor | np.ndarray, targets: tuple[str, ...] = TARGETS
              ) -> np.ndarray:
    """log1p predictions (B, T) -> counts rounded to each metric's unit (`UNITS`)."""
    values = np.expm1(np.asarray(log1p, dtype=np.float64)).clip(min=0)
    unit = np.array([UNITS[t] for t in targets])
    return np.round(values / unit) * unit


def adapt_fpga(nets: list[FpgaNet], support: EncodedDesigns, steps: int = 100,
               lr: float = 3e-3, anchor: float = 1e-2) -> list[FpgaNet]:
    """Copies of `nets` fine-tuned on a few labelled syntheses (the inner loop).

    Only the configuration embedding, FiLM and the heads move, pulled towards their
    trained values by an L2 penalty of weight `anchor` (10 samples cannot re-learn them);
    the graph encoder and the feature standardisers stay as trained.
    """
    adapted = []
    for net in nets:
        net = copy.deepcopy(net)
        params = {name: p for name, p in net.named_parameters()
                  if name.split(".")[0] in ADAPTED_MODULES}
        start = {name: p.detach().clone() for name, p in params.items()}
        opt = torch.optim.Adam(list(params.values()), lr=lr)
        net.train()
        for _ in range(steps):
            loss = _loss(net(support.batch, support.cond), support.y, 0.01) + anchor * sum(
                ((p - start[name]) ** 2).sum() for name, p in params.items())
            opt.zero_grad()
            loss.backward()
            opt.step()
        adapted.append(net.eval())
    return adapted


def regression_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """SMAPE (%), R^2 and MAE of one target's predictions (counts).

    SMAPE is 2|p - y| / (|p| + |y|) averaged over rows, with rows where both are 0 (a
    design without DSP predicted as such) counted as 0 error.
    """
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    den = np.abs(pred) + np.abs(true)
    ratio = np.divide(2 * np.abs(pred - true), den, out=np.zeros_like(den), where=den > 0)
    ss_tot = float(((true - true.mean()) ** 2).sum())
    return {"smape": float(100 * ratio.mean()),
            "r2": float(1 - ((pred - true) ** 2).sum() / ss_tot) if ss_tot > 0 else math.nan,
            "mae": float(np.abs(pred - true).mean())}
