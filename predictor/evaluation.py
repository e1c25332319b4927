"""Few-shot evaluation under HELP's protocol: metrics, baselines, and the predictor's scores.

Protocol (see `predictor.tables`): for a test device, K architectures are measured from
the space's training pool (outliers trimmed as HELP does); predictions are scored on
the test pool, fastest and slowest 10% dropped. K counts every measurement taken on
the target device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import kendalltau, spearmanr

from predictor.adaptation import LINEAR_FEATURES
from predictor.features import FEATURE_SCHEMA
from predictor.graph_store import GraphStore


def metrics(pred_ms: np.ndarray, true_ms: np.ndarray) -> dict[str, float]:
    """Spearman, Kendall tau, MAPE (%) and share within +-10% (%) of predictions."""
    pred_ms = np.asarray(pred_ms, dtype=np.float64)
    true_ms = np.asarray(true_ms, dtype=np.float64)
    rel = np.abs(pred_ms - true_ms) / np.abs(true_ms)
    rho = spearmanr(pred_ms, true_ms).statistic
    tau = kendalltau(pred_ms, true_ms).statistic
    return {
        "spearman": float(np.nan_to_num(rho)),
        "kendall": float(np.nan_to_num(tau)),
        "mape": float(100 * rel.mean()),
        "within10": float(100 * (rel <= 0.10).mean()),
    }


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and std over seeds of each metric, and its value per seed (a mean over draws
    of 10 samples hides the occasional draw that calibrates badly)."""
    keys = runs[0].keys()
    return {k: {"mean": float(np.mean([r[k] for r in runs])),
                "std": float(np.std([r[k] for r in runs])),
                "per_seed": [round(float(r[k]), 4) for r in runs]} for k in keys}


def _column(store: GraphStore, name: str) -> np.ndarray:
    return store.graph_attr[:, FEATURE_SCHEMA.graph_features.index(name)].numpy().astype(np.float64)


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1e-2) -> np.ndarray:
    """Ridge regression weights (with intercept as the last column of x)."""
    penalty = alpha * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    return np.linalg.solve(x.T @ x + penalty, x.T @ y)


def _design(store: GraphStore, idx: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    cols = np.stack([_column(store, f)[idx] for f in LINEAR_FEATURES], axis=1)
    return np.concatenate([(cols - mean) / std, np.ones((idx.size, 1))], axis=1)


def linear_fit_baseline(store: GraphStore, support: np.ndarray, y_ms: np.ndarray,
                        test: np.ndarray) -> np.ndarray:
    """Per-device ridge fit of log-latency on log MACs/params/memory/depth (K samples)."""
    all_cols = np.stack([_column(store, f) for f in LINEAR_FEATURES], axis=1)
    mean, std = all_cols.mean(0), all_cols.std(0) + 1e-9
    w = _ridge(_design(store, support, mean, std), np.log(y_ms), alpha=1.0)
    return np.exp(_design(store, test, mean, std) @ w)


def macs_baseline(store: GraphStore, support: np.ndarray, y_ms: np.ndarray,
                  test: np.ndarray) -> np.ndarray:
    """Latency proportional to MACs, the factor fitted on the K samples (geometric mean)."""
    log_macs = np.log(np.expm1(_column(store, "log_macs")))
    offset = np.mean(np.log(y_ms) - log_macs[support])
    return np.exp(log_macs[test] + offset)


def transfer_baseline(train_tables: dict[str, np.ndarray], support: np.ndarray,
                      y_ms: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, str]:
    """Latencies of the training device that best rank-correlates with the K samples,
    mapped by a log-linear fit on those samples."""
    best, best_rho = None, -2.0
    for name, table in train_tables.items():
        rho = spearmanr(table[support], y_ms).statistic
        rho = -2.0 if np.isnan(rho) else rho
        if rho > best_rho:
            best, best_rho = name, rho
    table = train_tables[best]
    x = np.log(np.clip(table[support], 1e-6, None))
    slope, intercept = np.polyfit(x, np.log(y_ms), 1) if np.ptp(x) > 0 else (1.0, 0.0)
    return np.exp(slope * np.log(np.clip(table[test], 1e-6, None)) + intercept), best


@dataclass
class FewShotCase:
    """One (device, seed) case: support and test indices of a device table."""

    device: str
    seed: int
    support: np.ndarray
    test: np.ndarray


def make_cases(space: str, device: str, table: np.ndarray, shots: int, seeds: int
               ) -> list[FewShotCase]:
    """HELP's pools: K support archs from the trimmed training pool, the trimmed test pool."""
    from predictor.tables import POOLS, trim_outliers, valid_mask

    train_pool, test_pool = POOLS[space]
    valid = valid_mask(table)
    train_idx = np.array(trim_outliers([i for i in train_pool if valid[i]], table))
    test_idx = np.array(sorted(trim_outliers([i for i in test_pool if valid[i]], table)))
    cases = []
    for seed in range(seeds):
        rng = np.random.default_rng([seed, shots])
        cases.append(FewShotCase(device, seed, rng.choice(train_idx, size=shots, replace=False),
                                 test_idx))
    return cases


Predictor = Callable[[GraphStore, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def predictor_fn(model, strategy: str = "amortised", finetune_steps: int = 20,
                 finetune_lr: float = 1e-2, chunk: int = 1024, known: list | None = None,
                 call_floor_ms: float | None = None) -> Predictor:
    """Wrap a `LatencyModel` as (store, support, y_ms, test) -> predicted ms.

    `strategy`: one of `predictor.adaptation.STRATEGIES` or "auto" (cross-validated choice).
    `known`: device states of known (training) devices for the nearest-device ensemble.
    `call_floor_ms`: the runtime's per-inference floor, taken off the support's latencies
    and added to the predictions as `Predictor.adapt` does (`usable_call_floor`).
    """
    from predictor.adaptation import adapt_named, predict
    from predictor.api import usable_call_floor

    def run(store: GraphStore, support: np.ndarray, y_ms: np.ndarray, test: np.ndarray
            ) -> np.ndarray:
        floor = usable_call_floor(call_floor_ms, np.asarray(y_ms), "latency_ms")
        y = torch.tensor(np.log(np.asarray(y_ms) - floor), dtype=torch.float32)
        batch = store.batch(support)
        state, _ = adapt_named(model, batch, y, strategy, finetune_steps=finetune_steps,
                               lr=finetune_lr, known=known)
        state.call_floor_ms = floor
        out = [predict(model, store.batch(test[i:i + chunk]), state)
               for i in range(0, test.size, chunk)]
        return torch.exp(torch.cat(out)).numpy().astype(np.float64)

    return run


def scratch_gnn_fn(steps: int = 150, lr: float = 3e-3) -> Predictor:
    """The same network trained from scratch on the K samples alone (no meta-learning)."""
    from predictor.adaptation import rank_loss
    from predictor.model import LatencyModel, ModelConfig

    def run(store: GraphStore, support: np.ndarray, y_ms: np.ndarray, test: np.ndarray
            ) -> np.ndarray:
        torch.manual_seed(0)
        model = LatencyModel(ModelConfig())
        model.node_norm.fit(store.node_rows)
        model.graph_norm.fit(store.graph_attr)
        batch = store.batch(support)
        y = torch.tensor(np.log(y_ms), dtype=torch.float32)
        z = torch.zeros(model.config.hardware.dim)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(steps):
            h, _ = model.encode(batch)
            pred = model.raw_log_latency(batch, h, z)
            loss = torch.nn.functional.mse_loss(pred, y) + rank_loss(pred, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            test_batch = store.batch(test)
            h, _ = model.encode(test_batch)
            return torch.exp(model.raw_log_latency(test_batch, h, z)).numpy()

    return run
