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


class MaskedEmbedding(nn.Module):
    """Token ids and an attention mask, as a transformer's export has them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.proj = nn.Embedding(100, 8), nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(ids) * mask.unsqueeze(-1).float())


@pytest.fixture
def two_input_onnx(tmp_path: Path) -> Path:
    """`MaskedEmbedding` in ONNX: inputs `ids` and `mask`, both with dynamic dims named
    `batch` and `sequence`."""
    path = tmp_path / "two_inputs.onnx"
    ids, mask = torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(MaskedEmbedding().eval(), (ids, mask), path, dynamo=False,
                      input_names=["ids", "mask"], dynamic_axes={"ids": axes, "mask": axes})
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
