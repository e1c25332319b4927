"""Shared fixtures: tiny real models exported to ONNX, and the shared data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from predictor.onnx_io import export_torch

REPO = Path(__file__).resolve().parents[1]


class TinyConvNet(nn.Module):
    """Three layers: conv-bn-relu, depthwise conv, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(self.conv(x))
        return self.fc(y.mean(dim=(2, 3)))


@pytest.fixture
def tiny_module() -> nn.Module:
    torch.manual_seed(0)
    return TinyConvNet().eval()


@pytest.fixture
def tiny_onnx(tmp_path: Path, tiny_module: nn.Module) -> Path:
    """A 3-layer CNN exported to ONNX in tmp_path, input 1x3x16x16."""
    path = tmp_path / "tiny.onnx"
    path.write_bytes(export_torch(tiny_module, torch.randn(1, 3, 16, 16)).SerializeToString())
    return path


def _shared_data() -> Path | None:
    env = os.environ.get("LATPRED_DATA_DIR")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (candidate / "help").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real measurement data (`../shared/data`); tests that need it skip without it."""
    path = _shared_data()
    if path is None:
        pytest.skip("shared data directory not found (set LATPRED_DATA_DIR)")
    return path
