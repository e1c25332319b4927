"""FBNet search space (HW-NAS-Bench's CIFAR-100 setting, as used by HELP).

An FBNet architecture picks one of 9 blocks for each of 22 layers. The
macro-structure follows HW-NAS-Bench's ``hw_nas_bench_api/fbnet_models/model_infer.py``
(``FBNet_Infer`` with ``dataset="cifar100"``):

* stem: 3x3 conv (stride 1) -> BN -> ReLU, 16 channels;
* 7 stages of [1, 4, 4, 4, 4, 4, 1] layers with [16, 24, 32, 64, 112, 184, 352]
  channels; the first layer of a stage has stride [1, 1, 2, 2, 1, 2, 1] and
  changes the channels, the others keep both;
* a block ``kK_eE[_g2]`` is 1x1 conv (groups g) -> BN -> ReLU -> [channel shuffle
  when g = 2] -> KxK depthwise conv (stride) -> BN -> ReLU -> 1x1 conv (groups g)
  -> BN, plus the input when the stride is 1 and the channels stay;
* ``skip`` is the identity, or 1x1 conv (stride) -> BN -> ReLU when the shape changes;
* head: 1x1 conv to 1504 -> BN -> ReLU -> global average pool -> flatten -> Linear.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import onnx
import torch
from torch import nn

from predictor.errors import InvalidArchError
from predictor.spaces.onnx_emit import GraphBuilder

BLOCKS: tuple[str, ...] = (
    "k3_e1",
    "k3_e1_g2",
    "k3_e3",
    "k3_e6",
    "k5_e1",
    "k5_e1_g2",
    "k5_e3",
    "k5_e6",
    "skip",
)
"""The 9 candidate blocks; a block's index is its id in HELP's / HW-NAS-Bench's ``op_idx_list``."""

NUM_LAYERS = 22
STEM_CHANNELS = 16
STAGE_LAYERS: tuple[int, ...] = (1, 4, 4, 4, 4, 4, 1)
STAGE_CHANNELS: tuple[int, ...] = (16, 24, 32, 64, 112, 184, 352)
STAGE_STRIDES: tuple[int, ...] = (1, 1, 2, 2, 1, 2, 1)  # HW-NAS-Bench's CIFAR setting
HEAD_CHANNELS = 1504  # HW-NAS-Bench's CIFAR setting (1984 on ImageNet)


@dataclass(frozen=True)
class BlockSpec:
    """Hyper-parameters of one block type.

    Attributes:
        kernel: depthwise kernel size (0 for ``skip``).
        expansion: channel multiplier of the first 1x1 conv.
        groups: groups of both 1x1 convs (2 adds a channel shuffle).
    """

    kernel: int
    expansion: int
    groups: int

    @property
    def is_skip(self) -> bool:
        return self.kernel == 0


def block_spec(name: str) -> BlockSpec:
    """Parse a block name such as ``"k5_e1_g2"`` (or ``"skip"``) into a `BlockSpec`."""
    if name not in BLOCKS:
        raise InvalidArchError(f"Unknown FBNet block {name!r}; known blocks: {list(BLOCKS)}")
    if name == "skip":
        return BlockSpec(0, 1, 1)
    parts = name.split("_")
    groups = int(parts[2][1:]) if len(parts) == 3 else 1
    return BlockSpec(kernel=int(parts[0][1:]), expansion=int(parts[1][1:]), groups=groups)


def layer_shapes() -> tuple[tuple[int, int, int], ...]:
    """``(c_in, c_out, stride)`` of each of the 22 layers."""
    out: list[tuple[int, int, int]] = []
    c_prev = STEM_CHANNELS
    for n, c, s in zip(STAGE_LAYERS, STAGE_CHANNELS, STAGE_STRIDES, strict=True):
        for i in range(n):
            out.append((c_prev, c, s) if i == 0 else (c, c, 1))
            c_prev = c
    return tuple(out)


def parse_arch(spec: str | Sequence[int] | Sequence[str]) -> tuple[str, ...]:
    """Normalise an FBNet architecture to its 22 block names.

    Args:
        spec: 22 block indices into `BLOCKS` (HELP's ``op_idx_list``), 22 block names
            (HELP's ``arch_str``), or the names joined by ``-``.

    Returns:
        The 22 block names.

    Raises:
        InvalidArchError: not 22 layers, an index outside 0..8, or an unknown name.
    """
    if isinstance(spec, str):
        items: list[object] = spec.split("-") if spec else []
    else:
        try:
            items = list(spec)
        except TypeError:
            raise InvalidArchError(
                f"FBNet arch must be 22 block indices, 22 block names or names joined by '-' "
                f"(blocks: {list(BLOCKS)}), got {type(spec).__name__} {spec!r}"
            ) from None
    if len(items) != NUM_LAYERS:
        raise InvalidArchError(
            f"FBNet arch {spec!r} has {len(items)} layers; it needs {NUM_LAYERS} "
            f"(indices 0..{len(BLOCKS) - 1} or names from {list(BLOCKS)})"
        )
    names: list[str] = []
    for pos, item in enumerate(items):
        if isinstance(item, str):
            if item not in BLOCKS:
                raise InvalidArchError(
                    f"Unknown block {item!r} at layer {pos} of FBNet arch {spec!r}; "
                    f"known blocks: {list(BLOCKS)}"
                )
            names.append(item)
            continue
        try:
            if isinstance(item, bool):
                raise TypeError
            idx = operator.index(item)  # type: ignore[arg-type]
        except TypeError:
            raise InvalidArchError(
                f"Layer {pos} of FBNet arch {spec!r} is {item!r}; expected a block index "
                f"0..{len(BLOCKS) - 1} or a name from {list(BLOCKS)}"
            ) from None
        if not 0 <= idx < len(BLOCKS):
            raise InvalidArchError(
                f"Block index {idx} at layer {pos} of FBNet arch {spec!r} is out of range; "
                f"allowed 0..{len(BLOCKS) - 1} ({list(BLOCKS)})"
            )
        names.append(BLOCKS[idx])
    return tuple(names)


def arch_to_str(blocks: str | Sequence[int] | Sequence[str]) -> str:
    """The ``-``-joined block names of an FBNet architecture (any form `parse_arch` takes)."""
    return "-".join(parse_arch(blocks))


def arch_to_indices(blocks: str | Sequence[int] | Sequence[str]) -> tuple[int, ...]:
    """The 22 block indices (HELP's ``op_idx_list``) of an FBNet architecture."""
    return tuple(BLOCKS.index(b) for b in parse_arch(blocks))


def same_padding(kernel: int, stride: int) -> int:
    """HW-NAS-Bench's padding rule ``ceil((kernel - stride) / 2)`` (output = input / stride)."""
    return int(math.ceil((kernel - stride) / 2.0))


class ChannelShuffle(nn.Module):
    """ShuffleNet channel shuffle, written as HW-NAS-Bench writes it (view/permute/view).

    Shapes:
        (N, C, H, W) -> (N, C, H, W), with C divisible by ``groups``.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        g = self.groups
        return x.view(n, g, int(c / g), h, w).permute(0, 2, 1, 3, 4).contiguous().view(n, c, h, w)


def _check_config(input_shape: Sequence[int], num_classes: int) -> tuple[int, int, int, int]:
    """Validate the network hyper-parameters; returns the input shape as 4 ints."""
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise InvalidArchError(
            f"input_shape must be 4 positive ints (batch, channels, height, width), got {input_shape!r}"
        )
    if num_classes < 1:
        raise InvalidArchError(f"num_classes must be >= 1, got {num_classes}")
    return shape  # type: ignore[return-value]


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ConvBlock(nn.Module):
    """Inverted-residual block ``kK_eE[_gG]`` (HW-NAS-Bench ``ConvBlock``).

    Shapes:
        (B, c_in, H, W) -> (B, c_out, ceil(H / stride), ceil(W / stride))
    """

    def __init__(self, c_in: int, c_out: int, stride: int, spec: BlockSpec) -> None:
        super().__init__()
        mid = c_in * spec.expansion
        g = spec.groups
        self.c_in, self.c_out, self.stride, self.groups = c_in, c_out, stride, g
        self.conv1 = nn.Conv2d(c_in, mid, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(g) if g > 1 else None
        pad = same_padding(spec.kernel, stride)
        self.conv2 = nn.Conv2d(mid, mid, spec.kernel, stride, pad, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_out, 1, groups=g, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.nl = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        x = self.nl(self.bn1(self.conv1(x)))
        if self.shuffle is not None:
            x = self.shuffle(x)
        x = self.nl(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        if self.c_in == self.c_out and self.stride == 1:
            x = x + identity
        return x


class Skip(nn.Module):
    """``skip``: identity, or 1x1 conv (stride) -> BN -> ReLU when the shape changes.

    Shapes:
        (B, c_in, H, W) -> (B, c_out, ceil(H / stride), ceil(W / stride))
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.proj = (
            _conv_bn_relu(c_in, c_out, 1, stride, 0) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.proj is None else self.proj(x)


def make_block(name: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    """The module of block ``name`` for one layer."""
    spec = block_spec(name)
    return Skip(c_in, c_out, stride) if spec.is_skip else ConvBlock(c_in, c_out, stride, spec)


class FBNetNetwork(nn.Module):
    """One FBNet architecture in HW-NAS-Bench's CIFAR setting.

    Args:
        blocks: the architecture, in any form `parse_arch` takes.
        input_shape: (batch, channels, height, width); the stem takes ``channels``
            input channels. HELP's FBNet tables are CIFAR-100: (1, 3, 32, 32).
        num_classes: classifier outputs (100 for CIFAR-100).

    Shapes:
        input: ``input_shape`` = (B, C_in, H, W); output: (B, num_classes) logits.
    """

    def __init__(
        self,
        blocks: str | Sequence[int] | Sequence[str],
        input_shape: Sequence[int] = (1, 3, 32, 32),
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        self.blocks = parse_arch(blocks)
        self.input_shape = shape = _check_config(input_shape, num_classes)
        self.num_classes = num_classes
        self.stem = _conv_bn_relu(shape[1], STEM_CHANNELS, 3, 1, 1)
        self.cells = nn.ModuleList(
            make_block(name, c_in, c_out, s)
            for name, (c_in, c_out, s) in zip(self.blocks, layer_shapes(), strict=True)
        )
        self.header = _conv_bn_relu(STAGE_CHANNELS[-1], HEAD_CHANNELS, 1, 1, 0)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(HEAD_CHANNELS, num_classes)

    @property
    def arch_str(self) -> str:
        """The ``-``-joined block names of this network."""
        return "-".join(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) images -> (B, num_classes) logits."""
        out = self.stem(x)
        for cell in self.cells:
            out = cell(out)
        out = self.avgpool(self.header(out))
        return self.fc(out.view(out.size(0), -1))


def build_onnx(
    blocks: str | Sequence[int] | Sequence[str],
    input_shape: Sequence[int] = (1, 3, 32, 32),
    num_classes: int = 100,
    *,
    weights: bool = True,
    cse: bool = True,
) -> onnx.ModelProto:
    """The ONNX graph of ``FBNetNetwork(blocks, input_shape, num_classes)``, without torch.

    Same nodes, op types, attributes and tensor shapes as
    ``torch.onnx.export(FBNetNetwork(...).eval(), (x,), f, dynamo=False)``: every
    BatchNorm folded into its Conv, the channel shuffle as
    ``Reshape(N, g, C/g, H, W) -> Transpose(0, 2, 1, 3, 4) -> Reshape(N, C, H, W)``
    with constant shapes, the flatten as ``Reshape(N, -1)``, the classifier as ``Gemm``.
    Weights are zeros; every tensor has a ``value_info`` shape. About 100x faster than
    the export (~5 ms vs ~0.7 s per network on one CPU core).

    Args:
        blocks: the architecture, in any form `parse_arch` takes.
        input_shape: (batch, channels, height, width).
        num_classes: classifier outputs (100: CIFAR-100, as HELP's tables).
        weights: write the zero weights' data (default). ``False`` leaves float weights
            data-less (dims only): smaller and faster, enough for shape inference and
            feature extraction, but the model then fails ``onnx.checker`` and cannot run.
        cse: as the legacy export (default), repeated parameter-free ops on one tensor
            merged; ``False``: every op the module runs, as eager PyTorch executes it
            (`predictor.spaces.onnx_emit.GraphBuilder`).

    Returns:
        A model with input ``"input"`` of ``input_shape`` and one output of shape
        (batch, num_classes).

    Raises:
        InvalidArchError: a malformed arch or invalid hyper-parameter.
    """
    names = parse_arch(blocks)
    shape = _check_config(input_shape, num_classes)
    b = GraphBuilder(shape, weights=weights, cse=cse)
    x = emit_stem(b, b.input)
    for name, (c_in, c_out, stride) in zip(names, layer_shapes(), strict=True):
        x = emit_block(b, x, name, c_in, c_out, stride)
    logits = emit_head(b, x, num_classes)
    return b.build(logits, doc=f"FBNet {'-'.join(names)} num_classes={num_classes}")


# The network's segments, shared by `build_onnx` and the graph templates of
# `predictor.space_templates` (one source of truth for what the network computes).
def emit_stem(b: GraphBuilder, x: str) -> str:
    """3x3 conv -> BN -> ReLU."""
    return b.relu(b.conv(x, STEM_CHANNELS, 3, 1, 1))


def emit_block(b: GraphBuilder, x: str, name: str, c_in: int, c_out: int, stride: int) -> str:
    """One layer's block (``x`` itself for a shape-keeping ``skip``)."""
    spec = block_spec(name)
    if spec.is_skip:
        if stride != 1 or c_in != c_out:
            x = b.relu(b.conv(x, c_out, 1, stride, 0))
        return x
    mid, g = c_in * spec.expansion, spec.groups
    y = b.relu(b.conv(x, mid, 1, groups=g))
    if g > 1:
        n, _, h, w = b.shapes[y]
        y = b.reshape(y, [n, g, mid // g, h, w])
        y = b.transpose(y, [0, 2, 1, 3, 4])
        y = b.reshape(y, [n, mid, h, w])
    y = b.relu(
        b.conv(y, mid, spec.kernel, stride, same_padding(spec.kernel, stride), groups=mid)
    )
    y = b.conv(y, c_out, 1, groups=g)
    return b.add(y, x) if c_in == c_out and stride == 1 else y


def emit_head(b: GraphBuilder, x: str, num_classes: int) -> str:
    """1x1 conv to the head width -> BN -> ReLU -> global average pool -> flatten -> Linear."""
    x = b.relu(b.conv(x, HEAD_CHANNELS, 1))
    x = b.reshape(b.global_avg_pool(x), [b.shapes[x][0], -1])
    return b.gemm(x, num_classes)
