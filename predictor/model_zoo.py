"""Plain-torch builders of well-known networks (no torchvision on CPU machines here).

Each builder returns an `nn.Module` in eval mode whose layer structure follows the
reference definition (torchvision's ResNet and MobileNetV2), so MACs and parameter
counts match the published figures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
             act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(_conv_bn(c_in, width, 3, stride), _conv_bn(width, c_out, 3, act=None))
        self.shortcut = (_conv_bn(c_in, c_out, 1, stride, act=None)
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class _Bottleneck(_BasicBlock):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int):
        nn.Module.__init__(self)
        c_out = width * self.expansion
        self.body = nn.Sequential(
            _conv_bn(c_in, width, 1), _conv_bn(width, width, 3, stride),
            _conv_bn(width, c_out, 1, act=None),
        )
        self.shortcut = (_conv_bn(c_in, c_out, 1, stride, act=None)
                         if stride != 1 or c_in != c_out else nn.Identity())


class ResNet(nn.Module):
    """ResNet (He et al. 2016) as in torchvision: stem 7x7/2 + maxpool, four stages."""

    def __init__(self, block: type[_BasicBlock], layers: tuple[int, ...],
                 num_classes: int = 1000, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        )
        blocks: list[nn.Module] = []
        c_in = width
        for stage, count in enumerate(layers):
            stage_width = width * 2**stage
            for i in range(count):
                blocks.append(block(c_in, stage_width, 2 if i == 0 and stage > 0 else 1))
                c_in = stage_width * block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class _InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(c_in, hidden, 1, act=nn.ReLU6))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   _conv_bn(hidden, c_out, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), width 1.0, as in torchvision."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # (expand, c, n, stride)

    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, 32, 3, 2, act=nn.ReLU6)]
        c_in = 32
        for expand, c_out, n, stride in self.SETTINGS:
            for i in range(n):
                layers.append(_InvertedResidual(c_in, c_out, stride if i == 0 else 1, expand))
                c_in = c_out
        layers.append(_conv_bn(c_in, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                                  nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(_BasicBlock, (2, 2, 2, 2), num_classes).eval()


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(_Bottleneck, (3, 4, 6, 3), num_classes).eval()


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    return MobileNetV2(num_classes).eval()


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
}
DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)


def build(name: str) -> nn.Module:
    """Build a zoo network by name (ImageNet head, eval mode)."""
    from predictor.errors import PredictorError

    if name not in BUILDERS:
        raise PredictorError(f"Unknown zoo model '{name}'; known: {sorted(BUILDERS)}")
    return BUILDERS[name]()


def export(name: str, input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE) -> bytes:
    """ONNX bytes of a zoo network exported at `input_shape` (weights random)."""
    from predictor.onnx_io import export_torch

    torch.manual_seed(0)
    model = export_torch(build(name), torch.randn(*input_shape))
    return model.SerializeToString()
