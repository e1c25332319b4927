"""Model families of the generator: a hyper-parameter sampler and a plain-torch builder each.

A family's `sample(rng, small)` draws a JSON-able dict of hyper-parameters from a
`random.Random`; its `build(params)` turns that dict into an `nn.Module` whose first
input has `input_shape(params)` (batch 1). `predictor.generator` combines them into
specs, checks their cost and exports them.

CNN families take (1, 3, R, R) float images; `vit`, `mixer` and `hybrid` take images
too; `bert` takes (1, L) int64 token ids (an `nn.Embedding`, exported as `Gather`).
Attention is written out as Linear + matmul + softmax so that the legacy ONNX
exporter handles it (MatMul, Softmax, Transpose, Reshape in the graph).

The parameter names and their meaning are part of `generator.REFERENCE_SET_VERSION`:
changing a builder changes the reference models.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from predictor.model_zoo import GPT2, ConvNeXt

Params = dict[str, Any]

RESOLUTIONS = (32, 64, 96, 128, 160, 224)
SMALL_RESOLUTIONS = (32, 64)
SEQ_LENS = (16, 32, 64, 96, 128, 192, 256)
_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "gelu": nn.GELU, "silu": nn.SiLU,
    "hardswish": nn.Hardswish, "leakyrelu": lambda: nn.LeakyReLU(0.1), "prelu": nn.PReLU,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "none": nn.Identity,
}
CNN_ACTS = ("relu", "relu", "relu6", "silu", "hardswish", "gelu")
TRANSFORMER_ACTS = ("gelu", "gelu", "relu", "silu")


def _act(name: str) -> nn.Module:
    return _ACTS[name]()


def _round8(x: float) -> int:
    return max(8, int(round(x / 8)) * 8)


# ----------------------------------------------------------------------------- blocks


def conv_bn_act(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
                act: str | None = "relu", bn: bool = True) -> nn.Sequential:
    """Conv k x k ("same" padding) -> BatchNorm (optional) -> activation (optional)."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
    if act is not None:
        layers.append(_act(act))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """x * gate(conv1x1(act(conv1x1(mean_hw(x))))), reduction 4."""

    def __init__(self, channels: int, gate: str = "sigmoid"):
        super().__init__()
        hidden = _round8(channels / 4)
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
            nn.Hardsigmoid() if gate == "hardsigmoid" else nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: 1x1 expand -> k x k depthwise -> [SE] -> 1x1 project (+ x)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int, kernel: int,
                 se: bool, act: str):
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_act(c_in, hidden, 1, act=act))
        layers.append(conv_bn_act(hidden, hidden, kernel, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden, "hardsigmoid" if act == "hardswish" else "sigmoid"))
        layers.append(conv_bn_act(hidden, c_out, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class ResidualBlock(nn.Module):
    """ResNet basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 with 4x expansion) block."""

    def __init__(self, c_in: int, width: int, stride: int, bottleneck: bool, act: str):
        super().__init__()
        c_out = width * 4 if bottleneck else width
        if bottleneck:
            self.body = nn.Sequential(
                conv_bn_act(c_in, width, 1, act=act), conv_bn_act(width, width, 3, stride, act=act),
                conv_bn_act(width, c_out, 1, act=None))
        else:
            self.body = nn.Sequential(conv_bn_act(c_in, width, 3, stride, act=act),
                                      conv_bn_act(width, c_out, 3, act=None))
        self.shortcut = (conv_bn_act(c_in, c_out, 1, stride, act=None)
                         if stride != 1 or c_in != c_out else nn.Identity())
        self.act = _act(act)
        self.c_out = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class Attention(nn.Module):
    """Multi-head self-attention over (B, N, D): one qkv Linear, matmul, softmax, matmul."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, head_dim)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)  # (B, heads, N, N)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, act: str, out: int | None = None):
        super().__init__(nn.Linear(dim, hidden), _act(act), nn.Linear(hidden, out or dim))


class TransformerBlock(nn.Module):
    """Encoder block over (B, N, D): pre-norm (ViT) or post-norm (original BERT)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, act: str,
                 qkv_bias: bool = True, norm_first: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio, act)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class MixerBlock(nn.Module):
    """MLP-Mixer block over (B, N, D): token-mixing MLP over N, channel-mixing MLP over D."""

    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int, act: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = Mlp(tokens, token_hidden, act)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = Mlp(dim, channel_hidden, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


def _classifier(dim: int, num_classes: int, hidden: int = 0, act: str = "relu") -> nn.Sequential:
    """(B, C, H, W) -> global average pool -> [Linear -> act] -> Linear -> (B, classes)."""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if hidden:
        layers += [nn.Linear(dim, hidden), _act(act)]
        dim = hidden
    layers.append(nn.Linear(dim, num_classes))
    return nn.Sequential(*layers)


def _image_shape(params: Params) -> tuple[int, ...]:
    return (1, 3, params["resolution"], params["resolution"])


def _token_shape(params: Params) -> tuple[int, ...]:
    return (1, params["seq_len"])


def _heads_for(rng: random.Random, dim: int, small: bool) -> int:
    options = [h for h in (1, 2, 3, 4, 6, 8, 12) if dim % h == 0 and dim // h >= 16]
    return rng.choice(options[:3] if small else options)


# ----------------------------------------------------------------------------- plain_cnn


def sample_plain_cnn(rng: random.Random, small: bool) -> Params:
    stages = rng.randint(2, 3) if small else rng.randint(3, 5)
    return {
        "resolution": rng.choice(SMALL_RESOLUTIONS if small else RESOLUTIONS),
        "base_width": rng.choice((8, 16) if small else (8, 16, 24, 32, 48, 64)),
        "convs": [rng.randint(1, 2 if small else 3) for _ in range(stages)],
        "kernels": [rng.choice((3, 3, 3, 5)) for _ in range(stages)],
        "downsample": rng.choice(("max", "avg", "stride")),
        "batchnorm": rng.random() < 0.75,
        "act": rng.choice(CNN_ACTS),
        "fc_hidden": rng.choice((0, 64) if small else (0, 0, 256, 512)),
        "num_classes": rng.choice((10, 100, 1000)),
    }


class PlainCNN(nn.Module):
    """VGG-like: stages of k x k convs, width doubling (at most 512), downsampling between."""

    def __init__(self, p: Params):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for stage, (convs, k) in enumerate(zip(p["convs"], p["kernels"], strict=True)):
            width = min(p["base_width"] * 2**stage, 512)
            down = stage > 0
            if down and p["downsample"] in ("max", "avg"):
                layers.append(nn.MaxPool2d(2) if p["downsample"] == "max" else nn.AvgPool2d(2))
            for i in range(convs):
                stride = 2 if down and i == 0 and p["downsample"] == "stride" else 1
                layers.append(conv_bn_act(c_in, width, k, stride, act=p["act"],
                                          bn=p["batchnorm"]))
                c_in = width
        self.features = nn.Sequential(*layers)
        self.head = _classifier(c_in, p["num_classes"], p["fc_hidden"], p["act"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------- resnet


def sample_resnet(rng: random.Random, small: bool) -> Params:
    resolution = rng.choice(SMALL_RESOLUTIONS if small else RESOLUTIONS)
    stages = rng.randint(2, 3) if small else rng.randint(3, 4)
    return {
        "resolution": resolution,
        "stem": "conv3" if resolution <= 64 else rng.choice(("conv3_s2", "conv7_pool")),
        "block": rng.choice(("basic", "bottleneck")),
        "base_width": rng.choice((8, 16) if small else (16, 24, 32, 48, 64)),
        "depths": [rng.randint(1, 2 if small else 4) for _ in range(stages)],
        "act": rng.choice(("relu", "relu", "silu")),
        "num_classes": rng.choice((10, 100, 1000)),
    }


class ResNet(nn.Module):
    """Residual stages (width doubling, stride 2 from the second stage), CIFAR or ImageNet stem."""

    def __init__(self, p: Params):
        super().__init__()
        width, act = p["base_width"], p["act"]
        if p["stem"] == "conv7_pool":
            self.stem = nn.Sequential(conv_bn_act(3, width, 7, 2, act=act), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = conv_bn_act(3, width, 3, 2 if p["stem"] == "conv3_s2" else 1, act=act)
        blocks: list[nn.Module] = []
        c_in = width
        for stage, depth in enumerate(p["depths"]):
            for i in range(depth):
                block = ResidualBlock(c_in, width * 2**stage, 2 if i == 0 and stage > 0 else 1,
                                      p["block"] == "bottleneck", act)
                blocks.append(block)
                c_in = block.c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = _classifier(c_in, p["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


# ----------------------------------------------------------------------------- mobilenet


def sample_mobilenet(rng: random.Random, small: bool) -> Params:
    resolution = rng.choice(SMALL_RESOLUTIONS if small else RESOLUTIONS)
    stages = rng.randint(3, 4) if small else rng.randint(4, 7)
    widths, strides, size = [], [], resolution // 2
    width = rng.choice((8, 16) if small else (8, 16, 24))
    for i in range(stages):
        if i > 0:
            width = min(_round8(width * rng.choice((1.0, 1.5, 2.0))), 320)
        stride = 2 if size >= 8 and (i > 0 or rng.random() < 0.5) else 1
        size //= stride
        widths.append(width)
        strides.append(stride)
    return {
        "resolution": resolution,
        "stem_width": rng.choice((8, 16) if small else (16, 24, 32)),
        "widths": widths,
        "strides": strides,
        "depths": [rng.randint(1, 2 if small else 4) for _ in range(stages)],
        "expands": [1 if i == 0 and rng.random() < 0.5 else rng.choice((2, 3, 4, 6))
                    for i in range(stages)],
        "kernels": [rng.choice((3, 5)) for _ in range(stages)],
        "se": [rng.random() < 0.3 for _ in range(stages)],
        "act": rng.choice(("relu", "relu6", "hardswish", "silu")),
        "head_width": rng.choice((0, 128) if small else (0, 256, 512, 1024, 1280)),
        "num_classes": rng.choice((10, 100, 1000)),
    }


class MobileNet(nn.Module):
    """Stem conv 3x3/2, stages of inverted residual blocks, optional 1x1 head conv."""

    def __init__(self, p: Params):
        super().__init__()
        act = p["act"]
        layers: list[nn.Module] = [conv_bn_act(3, p["stem_width"], 3, 2, act=act)]
        c_in = p["stem_width"]
        for width, stride, depth, expand, k, se in zip(
            p["widths"], p["strides"], p["depths"], p["expands"], p["kernels"], p["se"],
            strict=True,
        ):
            for i in range(depth):
                layers.append(InvertedResidual(c_in, width, stride if i == 0 else 1, expand, k,
                                               se, act))
                c_in = width
        if p["head_width"]:
            layers.append(conv_bn_act(c_in, p["head_width"], 1, act=act))
            c_in = p["head_width"]
        self.features = nn.Sequential(*layers)
        self.head = _classifier(c_in, p["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------- vit


def _patch_options(resolution: int, patches: tuple[int, ...] = (4, 8, 16, 32)) -> list[int]:
    """Patch sizes that tile `resolution` into 16 to 256 tokens."""
    return [p for p in patches if resolution % p == 0 and 16 <= (resolution // p) ** 2 <= 256]


def sample_vit(rng: random.Random, small: bool) -> Params:
    resolution = rng.choice((32,) if small else RESOLUTIONS)
    dim = rng.choice((32, 64) if small else (64, 96, 128, 192, 256, 384, 512))
    return {
        "resolution": resolution,
        "patch": rng.choice(_patch_options(resolution)),
        "dim": dim,
        "heads": _heads_for(rng, dim, small),
        "depth": rng.randint(1, 2) if small else rng.randint(1, 12),
        "mlp_ratio": rng.choice((2, 3, 4)),
        "act": rng.choice(TRANSFORMER_ACTS),
        "pool": rng.choice(("cls", "mean")),
        "qkv_bias": rng.random() < 0.7,
        "num_classes": rng.choice((10, 100, 1000)),
    }


class ViT(nn.Module):
    """Patch-embedding conv, [class token], learned positions, pre-norm blocks, LN, head."""

    def __init__(self, p: Params):
        super().__init__()
        dim, patch = p["dim"], p["patch"]
        tokens = (p["resolution"] // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = (nn.Parameter(torch.randn(1, 1, dim) * 0.02) if p["pool"] == "cls"
                          else None)
        self.pos_embed = nn.Parameter(
            torch.randn(1, tokens + (self.cls_token is not None), dim) * 0.02)
        self.blocks = nn.Sequential(*(
            TransformerBlock(dim, p["heads"], p["mlp_ratio"], p["act"], p["qkv_bias"])
            for _ in range(p["depth"])))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, p["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        if self.cls_token is not None:
            # At batch 1 (as exported) a plain Concat with the weight: an Expand over the
            # batch would leave shapes that ONNX shape inference cannot resolve.
            cls = self.cls_token if x.shape[0] == 1 else self.cls_token.expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)
        x = self.norm(self.blocks(x + self.pos_embed))
        return self.head(x[:, 0] if self.cls_token is not None else x.mean(dim=1))


# ----------------------------------------------------------------------------- bert


def sample_bert(rng: random.Random, small: bool) -> Params:
    dim = rng.choice((32, 64) if small else (64, 128, 192, 256, 384, 512, 768))
    return {
        "seq_len": rng.choice((16, 32) if small else SEQ_LENS),
        "vocab": rng.choice((1000,) if small else (1000, 4096, 8192, 16384, 30522)),
        "dim": dim,
        "heads": _heads_for(rng, dim, small),
        "depth": rng.randint(1, 2) if small else rng.randint(1, 12),
        "mlp_ratio": rng.choice((2, 4, 4)),
        "act": rng.choice(("gelu", "gelu", "relu")),
        "norm_first": rng.random() < 0.5,
        "pooler": rng.random() < 0.5,
        "num_classes": rng.choice((2, 3, 10)),
    }


class Bert(nn.Module):
    """Token + position embeddings, LN, encoder blocks, [CLS] -> [Linear-Tanh pooler] -> head."""

    def __init__(self, p: Params):
        super().__init__()
        dim = p["dim"]
        self.tokens = nn.Embedding(p["vocab"], dim)
        self.pos_embed = nn.Parameter(torch.randn(1, p["seq_len"], dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.Sequential(*(
            TransformerBlock(dim, p["heads"], p["mlp_ratio"], p["act"],
                             norm_first=p["norm_first"])
            for _ in range(p["depth"])))
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) if p["pooler"] else None
        self.head = nn.Linear(dim, p["num_classes"])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.norm(self.tokens(ids) + self.pos_embed))  # (B, L, D)
        cls = x[:, 0]
        return self.head(self.pooler(cls) if self.pooler is not None else cls)


# ----------------------------------------------------------------------------- mixer


def sample_mixer(rng: random.Random, small: bool) -> Params:
    resolution = rng.choice((32,) if small else RESOLUTIONS)
    return {
        "resolution": resolution,
        "patch": rng.choice(_patch_options(resolution)),
        "dim": rng.choice((32, 64) if small else (64, 128, 192, 256, 384, 512)),
        "token_hidden": rng.choice((16, 32) if small else (32, 64, 128, 256)),
        "channel_ratio": rng.choice((2, 4)),
        "depth": rng.randint(1, 2) if small else rng.randint(1, 12),
        "act": rng.choice(TRANSFORMER_ACTS),
        "num_classes": rng.choice((10, 100, 1000)),
    }


class Mixer(nn.Module):
    """Patch-embedding conv, Mixer blocks, LN, mean over tokens, head."""

    def __init__(self, p: Params):
        super().__init__()
        dim = p["dim"]
        tokens = (p["resolution"] // p["patch"]) ** 2
        self.patch_embed = nn.Conv2d(3, dim, p["patch"], p["patch"])
        self.blocks = nn.Sequential(*(
            MixerBlock(tokens, dim, p["token_hidden"], dim * p["channel_ratio"], p["act"])
            for _ in range(p["depth"])))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, p["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.patch_embed(x).flatten(2).transpose(1, 2))
        return self.head(self.norm(x).mean(dim=1))


# ----------------------------------------------------------------------------- hybrid


def sample_hybrid(rng: random.Random, small: bool) -> Params:
    resolution = rng.choice(SMALL_RESOLUTIONS if small else RESOLUTIONS)
    # conv stages after the stride-2 stem, each stride 2, leaving 16 to 256 tokens
    options = [n for n in range(1, 5) if 16 <= (resolution // 2 ** (n + 1)) ** 2 <= 256]
    stages = rng.choice(options)
    width = rng.choice((8, 16) if small else (16, 24, 32))
    dim = rng.choice((32, 64) if small else (64, 96, 128, 192, 256))
    return {
        "resolution": resolution,
        "stem_width": width,
        "conv_block": rng.choice(("conv", "mbconv", "basic")),
        "conv_widths": [min(width * 2 ** (i + 1), 256) for i in range(stages)],
        "conv_depths": [rng.randint(1, 2) for _ in range(stages)],
        "conv_act": rng.choice(("relu", "silu", "hardswish")),
        "dim": dim,
        "heads": _heads_for(rng, dim, small),
        "depth": rng.randint(1, 2) if small else rng.randint(1, 6),
        "mlp_ratio": rng.choice((2, 4)),
        "act": rng.choice(TRANSFORMER_ACTS),
        "pos_embed": rng.random() < 0.5,
        "num_classes": rng.choice((10, 100, 1000)),
    }


class Hybrid(nn.Module):
    """Conv stem and stride-2 conv stages, 1x1 conv to `dim`, attention over the H*W tokens."""

    def __init__(self, p: Params):
        super().__init__()
        act = p["conv_act"]
        layers: list[nn.Module] = [conv_bn_act(3, p["stem_width"], 3, 2, act=act)]
        c_in = p["stem_width"]
        for width, depth in zip(p["conv_widths"], p["conv_depths"], strict=True):
            for i in range(depth):
                stride = 2 if i == 0 else 1
                if p["conv_block"] == "mbconv":
                    layers.append(InvertedResidual(c_in, width, stride, 4, 3, False, act))
                elif p["conv_block"] == "basic":
                    layers.append(ResidualBlock(c_in, width, stride, False, act))
                else:
                    layers.append(conv_bn_act(c_in, width, 3, stride, act=act))
                c_in = width
        layers.append(conv_bn_act(c_in, p["dim"], 1, act=act))
        self.convs = nn.Sequential(*layers)
        side = p["resolution"] // 2 ** (len(p["conv_widths"]) + 1)
        self.pos_embed = (nn.Parameter(torch.randn(1, side * side, p["dim"]) * 0.02)
                          if p["pos_embed"] else None)
        self.blocks = nn.Sequential(*(
            TransformerBlock(p["dim"], p["heads"], p["mlp_ratio"], p["act"])
            for _ in range(p["depth"])))
        self.norm = nn.LayerNorm(p["dim"])
        self.head = nn.Linear(p["dim"], p["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x).flatten(2).transpose(1, 2)  # (B, H*W, dim)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


# ----------------------------------------------------------------------------- unet


def sample_unet(rng: random.Random, small: bool) -> Params:
    """Image-to-image encoder-decoders (segmentation, restoration): transposed
    convolutions or resizes, skip concatenations, few output channels."""
    return {
        "resolution": rng.choice(SMALL_RESOLUTIONS if small else (64, 96, 128, 160, 224, 256)),
        "base_width": rng.choice((8, 16) if small else (8, 16, 24, 32, 48)),
        "levels": rng.randint(2, 3) if small else rng.randint(2, 4),
        "upsample": rng.choice(("transpose", "bilinear", "nearest")),
        "act": rng.choice(("relu", "relu", "leakyrelu", "prelu", "silu")),
        "batchnorm": rng.random() < 0.75,
        "out_channels": rng.choice((1, 2, 3, 21)),
    }


class UNet(nn.Module):
    """Per level: two 3x3 convs then a 2x2 max pool down; back up by a 2x2 transposed
    convolution or a resize + 1x1 conv, concatenating the level's features."""

    def __init__(self, p: Params):
        super().__init__()
        widths = [min(p["base_width"] * 2**i, 512) for i in range(p["levels"] + 1)]

        def double(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(conv_bn_act(c_in, c_out, 3, act=p["act"], bn=p["batchnorm"]),
                                 conv_bn_act(c_out, c_out, 3, act=p["act"], bn=p["batchnorm"]))

        self.down = nn.ModuleList([double(3 if i == 0 else widths[i - 1], widths[i])
                                   for i in range(p["levels"])])
        self.bottom = double(widths[-2], widths[-1])
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for i in reversed(range(p["levels"])):
            if p["upsample"] == "transpose":
                self.up.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            else:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode=p["upsample"]),
                                             nn.Conv2d(widths[i + 1], widths[i], 1)))
            self.merge.append(double(2 * widths[i], widths[i]))
        self.out = nn.Conv2d(widths[0], p["out_channels"], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.out(x)


# ----------------------------------------------------------------------------- convnext


def sample_convnext(rng: random.Random, small: bool) -> Params:
    """ConvNeXt-like CNNs (`model_zoo.ConvNeXt`): patchify stem, stages of wide depthwise
    convolutions, LayerNorm and an MLP over channels-last activations, layer scale."""
    stages = rng.randint(2, 3) if small else rng.randint(2, 4)
    base = rng.choice((8, 16) if small else (24, 32, 48, 64, 96))
    return {
        "resolution": rng.choice(SMALL_RESOLUTIONS if small else (64, 96, 128, 160, 224)),
        "dims": [base * 2**i for i in range(stages)],
        # ConvNeXt's third stage is its deep one
        "depths": [rng.randint(1, 2) if small else rng.randint(1, 9 if i == 2 else 3)
                   for i in range(stages)],
        "kernel": rng.choice((3, 5, 7, 7)),
        "mlp_ratio": rng.choice((2, 4, 4)),
        "num_classes": rng.choice((10, 100, 1000)),
    }


def build_convnext(p: Params) -> nn.Module:
    return ConvNeXt(tuple(p["depths"]), tuple(p["dims"]), p["num_classes"], p["kernel"],
                    p["mlp_ratio"])


# ----------------------------------------------------------------------------- gpt


def sample_gpt(rng: random.Random, small: bool) -> Params:
    """GPT-like decoders (`model_zoo.GPT2`): token and position embeddings, pre-norm causal
    blocks (fused QKV, scaled-dot-product attention), a language-model head on every
    position. The output is (1, seq_len, vocab), not (1, num_classes)."""
    dim = rng.choice((32, 64) if small else (64, 128, 192, 256, 384, 512, 768))
    return {
        "seq_len": rng.choice((16, 32) if small else SEQ_LENS),
        "vocab": rng.choice((1000,) if small else (1000, 4096, 8192, 16384, 32000, 50257)),
        "dim": dim,
        "heads": _heads_for(rng, dim, small),
        "depth": rng.randint(1, 2) if small else rng.randint(1, 12),
    }


def build_gpt(p: Params) -> nn.Module:
    return GPT2(p["vocab"], p["dim"], p["depth"], p["heads"], context=p["seq_len"])


def sample_gpt_step(rng: random.Random, small: bool) -> Params:
    """A GPT-like decoder run on 1 to 8 tokens, as a generating step (or a speculative
    one) is, without its KV cache: every weight matrix multiplies a few rows, so the
    model streams its weights (memory-bound), where prompt-sized inputs are compute-bound.
    Larger models than `sample_gpt`'s: their MACs are 1-8 per weight."""
    dim = rng.choice((32, 64) if small else (256, 384, 512, 768, 1024, 1280))
    return {
        "seq_len": rng.choice((1, 2) if small else (1, 1, 2, 4, 8)),
        "vocab": rng.choice((1000,) if small else (1000, 8192, 32000, 50257)),
        "dim": dim,
        "heads": _heads_for(rng, dim, small),
        "depth": rng.randint(1, 2) if small else rng.randint(2, 16),
    }


# ----------------------------------------------------------------------------- rnn


def sample_rnn(rng: random.Random, small: bool) -> Params:
    """Recurrent sequence models (speech, time series): LSTM or GRU layers over feature
    vectors, a linear head on every step or on the last one."""
    return {
        "cell": rng.choice(("lstm", "gru")),
        "seq_len": rng.choice((8, 16, 32) if small else (16, 32, 64, 100, 128, 200, 256)),
        "features": rng.choice((16, 32) if small else (40, 64, 80, 128, 256)),
        "hidden": rng.choice((16, 32) if small else (64, 128, 256, 384, 512)),
        "layers": rng.randint(1, 2) if small else rng.randint(1, 3),
        "bidirectional": rng.random() < 0.3,
        "head": rng.choice(("last", "every")),
        "num_classes": rng.choice((10, 29, 128)),
    }


class RNN(nn.Module):
    def __init__(self, p: Params):
        super().__init__()
        cell = nn.LSTM if p["cell"] == "lstm" else nn.GRU
        self.rnn = cell(p["features"], p["hidden"], p["layers"], batch_first=True,
                        bidirectional=p["bidirectional"])
        self.every = p["head"] == "every"
        self.head = nn.Linear(p["hidden"] * (2 if p["bidirectional"] else 1), p["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rnn(x)[0]
        return self.head(y if self.every else y[:, -1])


# ----------------------------------------------------------------------------- blocks


BLOCK_CHANNELS = (3, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384)
BLOCK_RESOLUTIONS = (7, 8, 14, 16, 28, 32, 56, 64, 112, 128)
BLOCK_ACTS = ("none", "relu", "relu", "prelu", "leakyrelu", "silu", "gelu", "hardswish",
              "tanh", "sigmoid")
BLOCK_NORMS = ("none", "batchnorm", "batchnorm", "groupnorm", "instancenorm")
TRANSPOSE_KERNEL = {1: 2, 3: 4, 5: 3, 7: 4}  # sampled kernel -> transposed conv's kernel
CNN_BLOCK_OPS = ("conv", "conv", "pointwise", "depthwise", "transpose", "resize_conv", "pool_conv",
                 "conv_pair", "squeeze_excite", "residual")


def sample_cnn_block(rng: random.Random, small: bool) -> Params:
    """One to three layers on a feature map (not an image): what a network is made of
    and what per-layer latency tables time, from a 7 x 7 map to 128 x 128, 1 to 384
    channels, unusual kernels and strides, few output channels, norms and activations of
    every kind."""
    return {
        "op": rng.choice(CNN_BLOCK_OPS),
        "c_in": rng.choice(BLOCK_CHANNELS[:6] if small else BLOCK_CHANNELS),
        "c_out": rng.choice((1, 2, 3, 4) if rng.random() < 0.15 else
                            BLOCK_CHANNELS[1:6] if small else BLOCK_CHANNELS[1:]),
        "resolution": rng.choice(BLOCK_RESOLUTIONS[:6] if small else BLOCK_RESOLUTIONS),
        "kernel": rng.choice((1, 3, 3, 3, 5, 7)),
        "stride": rng.choice((1, 1, 2)),
        "act": rng.choice(BLOCK_ACTS),
        "norm": rng.choice(BLOCK_NORMS),
        "mode": rng.choice(("nearest", "bilinear")),
        "pool": rng.choice(("max", "avg")),
    }


def _block_norm(name: str, channels: int) -> nn.Module:
    if name == "batchnorm":
        return nn.BatchNorm2d(channels)
    if name == "groupnorm":
        return nn.GroupNorm(next(g for g in (8, 4, 2, 1) if channels % g == 0), channels)
    if name == "instancenorm":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class CNNBlock(nn.Module):
    """`sample_cnn_block`'s layers: conv / 1x1 / depthwise / transposed conv / resize +
    conv / pool + conv / two convs / squeeze-excite / residual pair, each with its norm
    and activation."""

    def __init__(self, p: Params):
        super().__init__()
        op, c_in, c_out, k, s = p["op"], p["c_in"], p["c_out"], p["kernel"], p["stride"]

        def tail(c: int) -> list[nn.Module]:
            return [_block_norm(p["norm"], c), _act(p["act"])]

        def conv(a: int, b: int, kk: int = k, ss: int = s, groups: int = 1) -> nn.Conv2d:
            return nn.Conv2d(a, b, kk, ss, (kk - 1) // 2, groups=groups)

        self.residual = op == "residual"
        if op == "pointwise":
            layers = [conv(c_in, c_out, 1, 1), *tail(c_out)]
        elif op == "depthwise":
            layers = [conv(c_in, c_in, groups=c_in), *tail(c_in)]
        elif op == "transpose":
            kk = TRANSPOSE_KERNEL[k]  # upsamples by 2 exactly
            layers = [nn.ConvTranspose2d(c_in, c_out, kk, 2, (kk - 1) // 2,
                                         output_padding=kk % 2), *tail(c_out)]
        elif op == "resize_conv":
            layers = [nn.Upsample(scale_factor=2, mode=p["mode"]), conv(c_in, c_out, ss=1),
                      *tail(c_out)]
        elif op == "pool_conv":
            pool = nn.MaxPool2d if p["pool"] == "max" else nn.AvgPool2d
            layers = [pool(3 if k > 1 else 2, 2, 1 if k > 1 else 0), conv(c_in, c_out, ss=1),
                      *tail(c_out)]
        elif op == "conv_pair":
            layers = [conv(c_in, c_out), *tail(c_out), conv(c_out, c_out, ss=1), *tail(c_out)]
        elif op == "squeeze_excite":
            layers = [conv(c_in, c_out), *tail(c_out), SqueezeExcite(c_out)]
        elif op == "residual":
            layers = [conv(c_in, c_in, ss=1), *tail(c_in), conv(c_in, c_in, ss=1),
                      _block_norm(p["norm"], c_in)]
        else:
            layers = [conv(c_in, c_out), *tail(c_out)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def _block_shape(params: Params) -> tuple[int, ...]:
    return (1, params["c_in"], params["resolution"], params["resolution"])


SEQ_BLOCK_OPS = ("linear", "mlp", "norm_linear", "attention", "attention", "encoder",
                 "token_mix")


def sample_seq_block(rng: random.Random, small: bool) -> Params:
    """One layer or block on a token sequence (B, N, D): a linear layer, an MLP, layer
    norm + linear, self-attention, an encoder block or a token-mixing MLP, at 1 to 512
    tokens of width 32 to 1024."""
    dim = rng.choice((32, 64, 96) if small else (32, 64, 128, 192, 256, 384, 512, 768, 1024))
    return {
        "op": rng.choice(SEQ_BLOCK_OPS),
        "tokens": rng.choice((1, 8, 16, 32) if small else (1, 8, 16, 49, 64, 128, 196, 256, 512)),
        "dim": dim,
        "out": rng.choice((dim, dim, 2 * dim, 4 * dim, max(8, dim // 4))),
        "heads": _heads_for(rng, dim, small),
        "act": rng.choice(TRANSFORMER_ACTS),
    }


class SeqBlock(nn.Module):
    """`sample_seq_block`'s layer or block over (1, N, D)."""

    def __init__(self, p: Params):
        super().__init__()
        op, d, n, out = p["op"], p["dim"], p["tokens"], p["out"]
        if op == "linear":
            self.body = nn.Linear(d, out)
        elif op == "mlp":
            self.body = Mlp(d, out, p["act"])
        elif op == "norm_linear":
            self.body = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, out), _act(p["act"]))
        elif op == "attention":
            self.body = Attention(d, p["heads"])
        elif op == "encoder":
            self.body = TransformerBlock(d, p["heads"], max(1, out // d), p["act"])
        else:
            self.body = MixerBlock(n, d, max(8, n // 2), out, p["act"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _seq_shape(params: Params) -> tuple[int, ...]:
    return (1, params["tokens"], params["dim"])


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Family:
    """One model family: its kind, sampler, builder and input description."""

    name: str
    kind: str  # "cnn" or "transformer"
    sample: Callable[[random.Random, bool], Params]
    build: Callable[[Params], nn.Module]
    input_shape: Callable[[Params], tuple[int, ...]] = _image_shape
    input_dtype: str = "float32"
    # Sampled without naming it (`sample_specs(families=None)`)? Families added after model
    # sets were measured are opt-in, so that every existing seed keeps its specs.
    default: bool = True
    # (min, max) MACs of a sampled model when not `small`; None: the generator's default.
    macs_range: tuple[float, float] | None = None
    # Most parameters of a sampled model when not `small`; None: the generator's default.
    max_params: int | None = None


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("plain_cnn", "cnn", sample_plain_cnn, PlainCNN),
    Family("resnet", "cnn", sample_resnet, ResNet),
    Family("mobilenet", "cnn", sample_mobilenet, MobileNet),
    Family("vit", "transformer", sample_vit, ViT),
    Family("bert", "transformer", sample_bert, Bert,
           input_shape=_token_shape, input_dtype="int64"),
    Family("mixer", "transformer", sample_mixer, Mixer),
    Family("hybrid", "transformer", sample_hybrid, Hybrid),
    Family("unet", "cnn", sample_unet, UNet, default=False),
    Family("convnext", "cnn", sample_convnext, build_convnext, default=False),
    Family("gpt", "transformer", sample_gpt, build_gpt, default=False,
           input_shape=_token_shape, input_dtype="int64"),
    Family("gpt_step", "transformer", sample_gpt_step, build_gpt, default=False,
           input_shape=_token_shape, input_dtype="int64", macs_range=(5e5, 1e9),
           max_params=40_000_000),
    Family("rnn", "rnn", sample_rnn, RNN, default=False,
           input_shape=lambda p: (1, p["seq_len"], p["features"])),
    Family("cnn_block", "cnn", sample_cnn_block, CNNBlock, default=False,
           input_shape=_block_shape, macs_range=(1e4, 3e8)),
    Family("seq_block", "transformer", sample_seq_block, SeqBlock, default=False,
           input_shape=_seq_shape, macs_range=(1e4, 3e8)),
)}
KINDS: tuple[str, ...] = ("cnn", "transformer")  # sampled by default
ALL_KINDS: tuple[str, ...] = (*KINDS, "rnn")  # "rnn": opt-in, by name


def example_input(family: Family, params: Params, device: str | None = None) -> torch.Tensor:
    """A (batch 1) input for a module of `family`: N(0, 1) images or uniform token ids."""
    shape = family.input_shape(params)
    if family.input_dtype == "int64":
        return torch.randint(0, params["vocab"], shape, dtype=torch.int64, device=device)
    return torch.randn(*shape, device=device)

