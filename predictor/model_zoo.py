"""Plain-torch builders of well-known networks (no torchvision on CPU machines here).

Each builder returns an `nn.Module` in eval mode whose layer structure follows the
reference definition (torchvision's ResNet, MobileNetV2 and ConvNeXt, the U-Net paper,
GPT-2), so MACs and parameter counts match the published figures. ConvNeXt and GPT-2
are also the builders of the generator's opt-in `convnext` and `gpt` families (smaller,
varied); the U-Net belongs to no generator family (the `unet` family is a plainer one).
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


class _ConvNeXtBlock(nn.Module):
    """7x7 (`kernel`) depthwise conv, LayerNorm over channels (channels-last), MLP 4x
    (`mlp_ratio`) with GELU, layer scale, residual."""

    def __init__(self, dim: int, kernel: int = 7, mlp_ratio: int = 4):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        hidden = mlp_ratio * dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.dwconv(x).permute(0, 2, 3, 1))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class _ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (ConvNeXt's downsampling layers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt (Liu et al. 2022) as in torchvision: patchify stem 4x4/4, four stages of
    `_ConvNeXtBlock`s, LayerNorm + 2x2/2 conv between them."""

    def __init__(self, depths: tuple[int, ...] = (3, 3, 9, 3),
                 dims: tuple[int, ...] = (96, 192, 384, 768), num_classes: int = 1000,
                 kernel: int = 7, mlp_ratio: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), _ChannelNorm(dims[0], eps=1e-6)]
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            if i:
                layers += [_ChannelNorm(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [_ConvNeXtBlock(dim, kernel, mlp_ratio) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.features(x).mean((2, 3))))


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) for segmentation, narrower (width 32, four levels;
    the paper's: 64, five): double-conv levels down (max pooling), transposed convs up with
    skip concatenations, 1x1 conv to the classes."""

    def __init__(self, width: int = 32, levels: int = 4, num_classes: int = 2):
        super().__init__()

        def double(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(_conv_bn(c_in, c_out, 3), _conv_bn(c_out, c_out, 3))

        widths = [width * 2**i for i in range(levels)]
        self.down = nn.ModuleList(double(c_in, c) for c_in, c in zip([3, *widths[:-1]], widths, strict=True))
        self.up = nn.ModuleList(nn.ConvTranspose2d(c, c // 2, 2, 2) for c in widths[:0:-1])
        self.merge = nn.ModuleList(double(c, c // 2) for c in widths[:0:-1])
        self.out = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, skips[-2::-1], strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.out(x)


class _GPTBlock(nn.Module):
    """Pre-norm decoder block: causal self-attention (fused QKV), MLP 4x with tanh-GELU."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in self.qkv(self.ln1(x)).split(d, dim=2))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(nn.functional.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT2(nn.Module):
    """GPT-2 (Radford et al. 2019): token and learned position embeddings, pre-norm causal
    decoder blocks, final LayerNorm, language-model head over the vocabulary (logits for
    every position: one forward pass over a prompt). The head is not tied to the token
    embedding: 163 M parameters (124 M tied), the same MACs."""

    def __init__(self, vocab: int = 50257, dim: int = 768, depth: int = 12, heads: int = 12,
                 context: int = 1024):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*(_GPTBlock(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        return self.head(self.norm(self.blocks(x)))


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(_BasicBlock, (2, 2, 2, 2), num_classes).eval()


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(_Bottleneck, (3, 4, 6, 3), num_classes).eval()


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    return MobileNetV2(num_classes).eval()


def convnext_tiny(num_classes: int = 1000) -> ConvNeXt:
    return ConvNeXt(num_classes=num_classes).eval()


def unet() -> UNet:
    return UNet().eval()


def gpt2_small() -> GPT2:
    return GPT2().eval()


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "convnext_tiny": convnext_tiny,
    "unet": unet,
    "gpt2_small": gpt2_small,
}
DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)
# Inputs other than a 224 x 224 image: U-Net on 256 x 256 tiles, GPT-2 on a 128-token prompt.
INPUT_SHAPES = {"unet": (1, 3, 256, 256), "gpt2_small": (1, 128)}
VOCABULARIES = {"gpt2_small": 50257}  # networks whose input is token ids


def build(name: str) -> nn.Module:
    """Build a zoo network by name (eval mode, random weights)."""
    from predictor.errors import PredictorError

    if name not in BUILDERS:
        raise PredictorError(f"Unknown zoo model '{name}'; known: {sorted(BUILDERS)}")
    return BUILDERS[name]()


def example_input(name: str, input_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """An input for zoo network `name`: token ids for a language model, else N(0, 1)."""
    shape = input_shape or INPUT_SHAPES.get(name, DEFAULT_INPUT_SHAPE)
    if name in VOCABULARIES:
        return torch.randint(0, VOCABULARIES[name], shape)
    return torch.randn(*shape)


def export(name: str, input_shape: tuple[int, ...] | None = None) -> bytes:
    """ONNX bytes of a zoo network exported at `input_shape` (default: its usual input;
    weights random)."""
    from predictor.onnx_io import export_torch

    torch.manual_seed(0)
    module = build(name)
    model = export_torch(module, example_input(name, input_shape))
    return model.SerializeToString()
