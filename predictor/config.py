"""Training configuration: frozen dataclasses, read from YAML, stored in every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from predictor.errors import PredictorError
from predictor.model import ModelConfig

T = TypeVar("T")



@dataclass(frozen=True)
class DataConfig:
    """Which spaces, split and episode sizes to meta-train on.

    Attributes:
        spaces: search spaces, each with the split named in `splits` (default "help").
        shots: support-set size k of training episodes.
        queries: query-set size.
        episodes_per_epoch: training episodes per epoch.
        episodes_per_step: episodes per optimiser step (the loader's batch).
        val_episodes: fixed validation episodes.
        limit_archs: only the first N architectures of each space (tests).
        model_sets: measured model sets to meta-train on too (`predictor.model_sets`):
            {set name: {"train": [devices], "valid": [devices]}}.
        model_set_share: share of training episodes drawn from model-set devices
            (default: uniform over all devices).
        cross_batch_prob: share of training episodes, on a device timed at several
            batches, whose queries are timed at another batch than the support
            (`datasets.batch_siblings`): calibrated at one batch, predict at another.
        family_split_prob: share of training episodes, on a model-set device, whose
            support holds some model families only and whose queries hold the others
            (`datasets.family_split`): calibrated on CNNs, predict a transformer.
    """

    spaces: tuple[str, ...] = ("nb201", "fbnet")
    splits: dict[str, str] = field(default_factory=dict)
    shots: int = 10
    queries: int = 64
    episodes_per_epoch: int = 2000
    episodes_per_step: int = 4
    val_episodes: int = 64
    seed: int = 0
    limit_archs: int | None = None
    num_workers: int = 0
    max_shots: int | None = None  # k drawn from shots..max_shots per training episode
    mix_prob: float = 0.0  # share of training episodes on mixtures of two devices
    model_sets: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    model_set_share: float | None = None
    cross_batch_prob: float = 0.0
    family_split_prob: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Attributes:
        rank_weight: weight of the pairwise ranking loss next to the log-latency MSE.
        absolute_weight: weight of the log-latency MSE *not* scaled by the device's spread.
            The scaled MSE treats a 25 % error as small on a device whose latencies span
            100x (diverse models on one CPU) but as huge on a NAS cell space spanning 3x;
            this term keeps absolute errors (MAPE) in view on wide-spread devices.
        max_minutes: wall-clock budget (Lightning's `max_time`); training stops there.
        accelerator, devices, strategy, num_nodes: passed through to `lightning.Trainer`
            (e.g. strategy "ddp" with devices 2 for data-parallel meta-training).
        finetune_steps: inner-loop steps at adaptation time (0: amortised embedding only).
        init_from: start from this checkpoint's weights and feature standardisers (its
            model config must equal `model`), e.g. to add devices to a trained predictor.
        trainable: prefixes of the parameter names that train (empty: all); the others
            stay frozen, e.g. ("cost_in.", "cost_out.", "overhead.", "film_head.") trains
            a second regression head on a frozen encoder and hardware embedding.
        head_ridge: also score each episode's query predictions after a closed-form
            ridge refit of the overhead's last layer on the support set, with this ridge
            (`predictor.adaptation.fit_head_ridge`, the "headridge" member), so that the
            features it refits are trained for it; None: off.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_epochs: int = 20
    max_minutes: float = 55.0
    rank_weight: float = 1.0
    absolute_weight: float = 0.0
    grad_clip: float = 1.0
    finetune_steps: int = 0
    finetune_lr: float = 1e-2
    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    seed: int = 0
    init_from: str | None = None
    trainable: tuple[str, ...] = ()
    head_ridge: float | None = None


def _build(cls: type[T], raw: dict[str, Any], where: str) -> T:
    if not isinstance(raw, dict):
        raise PredictorError(f"Config section '{where}' must be a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise PredictorError(f"Unknown config key(s) {unknown} in '{where}'; allowed: {sorted(names)}")
    kwargs = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}.{key}")
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, raw, "config")


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML training config; unknown keys are a clear error."""
    path = Path(path)
    if not path.is_file():
        raise PredictorError(f"Config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PredictorError(f"{path}: not valid YAML ({exc})".splitlines()[0]) from None
    return config_from_dict(raw)
