"""Predictor checkpoints: weights + config + feature schema + training devices + version.

A checkpoint is a single `torch.save` file written atomically. Loading checks the
format and the feature schema before touching the weights, so an old or foreign file
is a clear error, never silently wrong predictions.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from predictor import __version__
from predictor.config import TrainConfig, config_from_dict, config_to_dict
from predictor.errors import PredictorError
from predictor.features import FEATURE_SCHEMA, check_schema
from predictor.locations import shipped
from predictor.model import LatencyModel
from predictor.storage import atomic_write_bytes

CHECKPOINT_FORMAT = 1
DEFAULT_CHECKPOINT = shipped("checkpoints") / "latpred.ckpt"


class CheckpointError(PredictorError):
    """A missing, corrupt or incompatible checkpoint file."""


@dataclass
class Checkpoint:
    """A trained latency network and what it was trained on.

    Attributes:
        devices: training devices as "space/device" names.
        metrics: metrics the checkpoint serves (e.g. ("latency_ms",)).
        info: free-form provenance (training time, validation scores, git state).
    """

    model: LatencyModel
    config: TrainConfig
    devices: tuple[str, ...]
    metrics: tuple[str, ...] = ("latency_ms",)
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        buffer = io.BytesIO()
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save({
            "format": CHECKPOINT_FORMAT,
            "package_version": __version__,
            "schema": FEATURE_SCHEMA.to_dict(),
            "config": config_to_dict(self.config),
            "devices": list(self.devices),
            "metrics": list(self.metrics),
            "info": self.info,
            "state_dict": state,
        }, buffer)
        atomic_write_bytes(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path | None = None) -> Checkpoint:
        """Load a checkpoint (default: the shipped one)."""
        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        if not path.is_file():
            raise CheckpointError(f"Checkpoint not found: {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
            fmt = obj["format"]
        except Exception as exc:
            raise CheckpointError(
                f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc})".splitlines()[0]
            ) from None
        if fmt != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: checkpoint format {fmt}, this package reads "
                                  f"{CHECKPOINT_FORMAT}")
        check_schema(obj["schema"], what=f"checkpoint {path}")
        try:
            config = config_from_dict(obj["config"])
            model = LatencyModel(config.model)
            model.load_state_dict(obj["state_dict"])
        except Exception as exc:
            raise CheckpointError(
                f"{path}: checkpoint weights do not fit its config ({exc})".splitlines()[0]
            ) from None
        model.eval()
        return cls(model, config, tuple(obj["devices"]), tuple(obj.get("metrics", ("latency_ms",))),
                   dict(obj.get("info", {})))
