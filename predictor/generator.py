"""Deterministic generator of diverse CNNs and transformers, as specs and ONNX models.

Users bring models beyond the NAS search spaces (ResNets, MobileNets, ViTs, BERT-like
encoders, MLP-Mixers, conv-attention hybrids). This module samples such models for
meta-training data, for benchmark test models (another seed) and as a small,
versioned reference calibration set:

    specs = sample_specs(seed=0, count=100)          # balanced cnn / transformer
    paths = write_models(specs, "datasets/cache/generated/s0")
    ref = reference_specs()                          # REFERENCE_SET_VERSION

Everything is a pure function of its arguments: the hyper-parameters of spec `index`
come from `random.Random` seeded with (seed, index, family), the weights from
`torch.manual_seed(crc32(spec.name))` inside `torch.random.fork_rng()`, so the global
random state is untouched and the same spec always exports the same ONNX bytes.

Sampled models are kept within a cost budget (multiply-accumulates and parameters,
computed on the meta device without allocating weights): `DEFAULT_MACS_RANGE` gives
roughly 0.2 to 50 ms batch-1 single-thread ONNX Runtime latency on a desktop CPU;
``small=True`` gives tiny models for tests.
"""

from __future__ import annotations

import json
import logging
import random
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from predictor.errors import InvalidArchError
from predictor.generator_families import ALL_KINDS, FAMILIES, KINDS, Family, example_input

log = logging.getLogger(__name__)

REFERENCE_SET_VERSION = 2
"""Bump when `reference_specs()` or a builder it uses changes (the models change)."""

DEFAULT_MACS_RANGE: tuple[float, float] = (2e6, 1e9)
DEFAULT_MAX_PARAMS = 12_000_000  # about 48 MB of float32 weights per ONNX file
SMALL_MACS_RANGE: tuple[float, float] = (1e5, 3e7)
SMALL_MAX_PARAMS = 1_000_000
_MAX_ATTEMPTS = 1000  # hyper-parameter draws per spec before giving up
_MIN_ONNX_BYTES = 1024  # an existing file smaller than this is rewritten
SPEC_METADATA_KEY = "latpred.generator_spec"  # ONNX metadata_props entry holding the spec


@dataclass(frozen=True)
class ModelSpec:
    """A generated model: family, sampled hyper-parameters and input.

    Attributes:
        name: unique and stable, e.g. ``vit-s3-017`` (family, seed, index); the file stem.
        family: a key of `FAMILIES` (``plain_cnn``, ``resnet``, ``mobilenet``, ``vit``,
            ``bert``, ``mixer``, ``hybrid``).
        kind: ``"cnn"`` or ``"transformer"``.
        params: the family's hyper-parameters (JSON values: ints, floats, str, bool, lists).
        input_shape: shape of the single input, batch 1: (1, 3, R, R) or (1, L).
        input_dtype: ``"float32"`` (images) or ``"int64"`` (token ids).
    """

    name: str
    family: str
    kind: str
    params: dict[str, Any]
    input_shape: tuple[int, ...]
    input_dtype: str

    def __hash__(self) -> int:  # params is a dict; equal specs have equal names
        return hash((self.name, self.family))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; `ModelSpec.from_dict` inverts it."""
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(name=data["name"], family=data["family"], kind=data["kind"],
                   params=dict(data["params"]), input_shape=tuple(data["input_shape"]),
                   input_dtype=data["input_dtype"])


def _family(name: str) -> Family:
    if name not in FAMILIES:
        raise InvalidArchError(f"Unknown model family {name!r}; known: {list(FAMILIES)}")
    return FAMILIES[name]


def make_spec(name: str, family: str, params: dict[str, Any]) -> ModelSpec:
    """A spec of `family` with the given hyper-parameters (kind and input filled in)."""
    fam = _family(family)
    return ModelSpec(name=name, family=family, kind=fam.kind, params=dict(params),
                     input_shape=tuple(fam.input_shape(params)), input_dtype=fam.input_dtype)


def _family_plan(count: int, kinds: Sequence[str] | str, families: Sequence[str] | None
                 ) -> list[str]:
    """Family of each of `count` specs: kinds alternate, families cycle within a kind."""
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad or not kinds:
        raise InvalidArchError(f"Unknown model kinds {bad}; choose from {list(ALL_KINDS)}")
    if families is None:
        # a kind's default families; all of them for a kind that has none ("rnn")
        defaults = {f.kind for f in FAMILIES.values() if f.default}
        chosen = [f for f in FAMILIES.values()
                  if f.kind in kinds and (f.default or f.kind not in defaults)]
    else:
        chosen = [_family(name) for name in dict.fromkeys(families)]
        outside = [f.name for f in chosen if f.kind not in kinds]
        if outside or not chosen:
            raise InvalidArchError(
                f"Families {outside or list(families)} are not of the kinds {list(kinds)}; "
                "pass families of those kinds or widen `kinds`")
    by_kind = {k: [f.name for f in chosen if f.kind == k] for k in kinds}
    order = [k for k in kinds if by_kind[k]]
    seen = dict.fromkeys(order, 0)
    plan = []
    for i in range(count):
        kind = order[i % len(order)]
        plan.append(by_kind[kind][seen[kind] % len(by_kind[kind])])
        seen[kind] += 1
    return plan


def sample_specs(
    seed: int,
    count: int,
    kinds: Sequence[str] | str = KINDS,
    *,
    families: Sequence[str] | None = None,
    small: bool = False,
    resolutions: Sequence[int] | None = None,
    macs_range: tuple[float, float] | None = None,
) -> list[ModelSpec]:
    """Sample `count` model specs, deterministically in (seed, count, kinds, families, small).

    Kinds alternate (cnn, transformer, cnn, ...) and the families of each kind take
    turns, so every kind is balanced and every family appears once `count` is at least
    twice the largest number of families of a kind (2 x 4 = 8 by default). Spec
    `index` depends only on (seed, index, its family, small): the first specs of a
    longer sample are those of a shorter one.

    Args:
        seed: any int; different seeds give different models.
        count: number of specs.
        kinds: ``"cnn"`` and/or ``"transformer"`` (a sequence or ``"cnn,transformer"``);
            ``"rnn"`` (recurrent models) only when asked for.
        families: restrict to these families (of the given kinds); default: every family
            of the kinds except the opt-in ones (`Family.default`, e.g. "unet").
        small: tiny models (`SMALL_MACS_RANGE`, at most `SMALL_MAX_PARAMS` weights) for
            tests; their names end in ``-small``.
        resolutions: input resolutions to draw from instead of each CNN family's own
            (deployment sizes such as 512 x 512 for segmentation); with them the names
            carry ``-r`` (``resnet-s9-004-r``), so they never clash with a default
            sample's. Only CNN families take them.
        macs_range: the MACs range instead of the default one (or a family's own).

    Returns:
        Specs named ``<family>-s<seed>-<index:03d>[-small]`` whose MACs lie in
        `DEFAULT_MACS_RANGE` (or `SMALL_MACS_RANGE`).
    """
    if count < 0:
        raise InvalidArchError(f"count must be >= 0, got {count}")
    default_range, max_params = ((SMALL_MACS_RANGE, SMALL_MAX_PARAMS) if small
                                 else (DEFAULT_MACS_RANGE, DEFAULT_MAX_PARAMS))
    plan = _family_plan(count, kinds, families)
    if resolutions is not None:
        other = sorted({f for f in plan if FAMILIES[f].kind != "cnn"})
        if other or not resolutions or min(resolutions) < 32:
            raise InvalidArchError(f"resolutions {list(resolutions)} apply to CNN families "
                                   f"only, each >= 32 (asked for {other or 'none'})")
    specs = []
    for index, family in enumerate(plan):
        name = (f"{family}-s{seed}-{index:03d}" + ("-r" if resolutions else "")
                + ("-small" if small else ""))
        rng = random.Random(f"latpred.generator:{seed}:{index}:{family}:{small}"
                            + (f":{list(resolutions)}" if resolutions else ""))
        own = FAMILIES[family].macs_range
        budget = macs_range or (own if own and not small else default_range)
        own_params = FAMILIES[family].max_params
        specs.append(_sample_within_budget(name, family, rng, small, budget,
                                           own_params if own_params and not small
                                           else max_params, resolutions))
    return specs


def _sample_within_budget(name: str, family: str, rng: random.Random, small: bool,
                          macs_range: tuple[float, float], max_params: int,
                          resolutions: Sequence[int] | None = None) -> ModelSpec:
    for _ in range(_MAX_ATTEMPTS):
        hyper = FAMILIES[family].sample(rng, small)
        if resolutions:
            hyper["resolution"] = rng.choice(list(resolutions))
        spec = make_spec(name, family, hyper)
        macs, params = estimate_cost(spec)
        if macs_range[0] <= macs <= macs_range[1] and params <= max_params:
            return spec
    raise RuntimeError(  # a sampler whose ranges cannot meet the budget: a bug here
        f"No {family} model within {macs_range} MACs and {max_params} parameters after "
        f"{_MAX_ATTEMPTS} draws; widen the sampler's ranges in generator_families.py")


def estimate_cost(spec: ModelSpec) -> tuple[int, int]:
    """(MACs, parameters) of a spec's model at batch 1, without allocating weights.

    Builds the module on the meta device and counts the matmul/conv FLOPs of one forward
    pass (`torch.utils.flop_counter`); MACs = FLOPs / 2, which matches
    `predictor.graph.OpGraph.macs` of the exported model up to rounding. Parameters
    include BatchNorm's (folded away in the ONNX graph).
    """
    from torch.utils.flop_counter import FlopCounterMode

    family = _family(spec.family)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        module = family.build(spec.params)
        x = example_input(family, spec.params)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module.eval()(x)
    return counter.get_total_flops() // 2, sum(p.numel() for p in module.parameters())


def spec_seed(spec: ModelSpec) -> int:
    """The torch seed of a spec's weights and example input: crc32 of its name."""
    return zlib.crc32(spec.name.encode("utf-8"))


def build_module(spec: ModelSpec) -> tuple[nn.Module, torch.Tensor]:
    """The spec's network in eval mode and an example input, both deterministic.

    Returns:
        (module, example) where example has `spec.input_shape` and `spec.input_dtype`
        (N(0, 1) images or uniform token ids) and module(example) is (1, num_classes)
        (the `gpt` family: language-model logits, (1, seq_len, vocab)).
    """
    family = _family(spec.family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec_seed(spec))
        module = family.build(spec.params).eval()
        _randomize_norms(module)
        example = example_input(family, spec.params)
    return module, example


@torch.no_grad()
def _randomize_norms(module: nn.Module) -> None:
    """Give norm layers trained-looking (distinct, non-trivial) weights and statistics.

    Freshly initialised norms all hold ones and zeros, which the ONNX exporter
    deduplicates into shared initializers; real models have distinct values.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.BatchNorm2d, nn.LayerNorm)) and layer.weight is not None:
            layer.weight.copy_(1 + 0.1 * torch.randn_like(layer.weight))
            layer.bias.copy_(0.1 * torch.randn_like(layer.bias))
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.copy_(0.1 * torch.randn_like(layer.running_mean))
            layer.running_var.copy_(torch.empty_like(layer.running_var).uniform_(0.5, 1.5))


def export_spec(spec: ModelSpec, batch: int = 1) -> onnx.ModelProto:
    """The spec's model as ONNX (legacy exporter, BatchNorm folded) at `batch` (the
    example repeated, as torch measurements at a batch run it); the spec is stored as
    JSON in the model's metadata under `SPEC_METADATA_KEY`."""
    from predictor.onnx_io import export_torch

    module, example = build_module(spec)
    if batch != 1:
        example = example.repeat(batch, *[1] * (example.dim() - 1))
    model = export_torch(module, example)
    onnx.helper.set_model_props(
        model, {SPEC_METADATA_KEY: json.dumps(spec.to_dict(), sort_keys=True)})
    return model


def write_models(specs: Iterable[ModelSpec], folder: str | Path, progress: bool = True
                 ) -> list[Path]:
    """Export each spec to ``folder/<name>.onnx`` atomically; existing files are kept.

    A file that exists with at least `_MIN_ONNX_BYTES` bytes is not exported again (a
    rerun after an interruption resumes). Returns the paths in the order of `specs`.
    """
    from tqdm.auto import tqdm

    from predictor.storage import atomic_write_bytes

    specs = list(specs)
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidArchError(f"Duplicate spec names {duplicates}; names must be unique")
    folder = Path(folder)
    paths = []
    for spec in tqdm(specs, desc="export", unit="model", disable=not progress):
        path = folder / f"{spec.name}.onnx"
        if path.is_file() and path.stat().st_size >= _MIN_ONNX_BYTES:
            log.debug("keeping %s", path)
        else:
            atomic_write_bytes(path, export_spec(spec).SerializeToString())
        paths.append(path)
    return paths


def spec_from_model(model: onnx.ModelProto) -> ModelSpec | None:
    """The spec stored in an exported model's metadata, None for other models."""
    for prop in model.metadata_props:
        if prop.key == SPEC_METADATA_KEY:
            return ModelSpec.from_dict(json.loads(prop.value))
    return None


# ----------------------------------------------------------------------------- reference set


def reference_specs() -> list[ModelSpec]:
    """The reference calibration set, version `REFERENCE_SET_VERSION`: 13 fixed models.

    Two plain CNNs, three ResNets, two MobileNets, two ViTs, two BERT encoders, an
    MLP-Mixer and a conv-attention hybrid, from about 3 M to 3 G MACs (see
    `estimate_cost`). Version 2 added the three largest (a ResNet, a ViT and a BERT of
    1.7 to 3 G MACs), the size of deployed networks: predicting 17 well-known ones (ResNet-50,
    BERT-base, ...; `scripts/benchmark_known_models.py`) on a meta-valid and two training
    runtimes of a CPU (torch 1 thread, ONNX Runtime 2 threads, ONNX Runtime unoptimised)
    from version 1's ten (up to 850 M MACs) was MAPE 16.3 / 10.4 / 15.2 % with strategy
    auto, 26 / 26 / 22 % with the amortised embedding; from version 2's thirteen 16.2 /
    9.3 / 6.4 % and 22 / 18 / 15 %. Names are ``ref<version>-<family>-<letter>``.
    """
    v = REFERENCE_SET_VERSION
    return [make_spec(f"ref{v}-{family}-{tag}", family, params)
            for family, tag, params in _REFERENCE_PARAMS]


_REFERENCE_PARAMS: list[tuple[str, str, dict[str, Any]]] = [
    ("plain_cnn", "a", {
        "resolution": 32, "base_width": 16, "convs": [1, 1, 1], "kernels": [3, 3, 3],
        "downsample": "max", "batchnorm": True, "act": "relu", "fc_hidden": 0,
        "num_classes": 10}),
    ("plain_cnn", "b", {
        "resolution": 128, "base_width": 32, "convs": [2, 2, 2, 2], "kernels": [3, 3, 3, 3],
        "downsample": "max", "batchnorm": True, "act": "relu", "fc_hidden": 512,
        "num_classes": 1000}),
    ("resnet", "a", {
        "resolution": 32, "stem": "conv3", "block": "basic", "base_width": 16,
        "depths": [2, 2, 2], "act": "relu", "num_classes": 10}),
    ("resnet", "b", {
        "resolution": 160, "stem": "conv7_pool", "block": "bottleneck", "base_width": 32,
        "depths": [2, 3, 3, 2], "act": "relu", "num_classes": 1000}),
    ("mobilenet", "a", {
        "resolution": 96, "stem_width": 16, "widths": [16, 24, 32, 64],
        "strides": [1, 2, 2, 2], "depths": [1, 2, 2, 2], "expands": [1, 4, 4, 6],
        "kernels": [3, 3, 5, 3], "se": [False, False, True, False], "act": "relu6",
        "head_width": 0, "num_classes": 100}),
    ("mobilenet", "b", {
        "resolution": 224, "stem_width": 16, "widths": [16, 24, 40, 80, 112, 160],
        "strides": [1, 2, 2, 2, 1, 2], "depths": [1, 2, 3, 3, 2, 2],
        "expands": [1, 4, 3, 6, 6, 6], "kernels": [3, 3, 5, 3, 5, 5],
        "se": [False, False, True, False, True, True], "act": "hardswish",
        "head_width": 960, "num_classes": 1000}),
    ("vit", "a", {
        "resolution": 160, "patch": 16, "dim": 192, "heads": 3, "depth": 6, "mlp_ratio": 4,
        "act": "gelu", "pool": "cls", "qkv_bias": True, "num_classes": 1000}),
    ("bert", "a", {
        "seq_len": 128, "vocab": 8192, "dim": 128, "heads": 4, "depth": 4, "mlp_ratio": 4,
        "act": "gelu", "norm_first": False, "pooler": True, "num_classes": 2}),
    ("mixer", "a", {
        "resolution": 64, "patch": 8, "dim": 128, "token_hidden": 64, "channel_ratio": 4,
        "depth": 4, "act": "gelu", "num_classes": 100}),
    ("hybrid", "a", {
        "resolution": 128, "stem_width": 16, "conv_block": "mbconv",
        "conv_widths": [32, 64, 128], "conv_depths": [1, 2, 2], "conv_act": "silu",
        "dim": 128, "heads": 4, "depth": 2, "mlp_ratio": 4, "act": "gelu", "pos_embed": True,
        "num_classes": 100}),
    # version 2: models of the size users deploy, so that predicting them interpolates
    ("resnet", "c", {
        "resolution": 224, "stem": "conv7_pool", "block": "bottleneck", "base_width": 48,
        "depths": [2, 3, 4, 2], "act": "relu", "num_classes": 1000}),
    ("vit", "b", {
        "resolution": 192, "patch": 16, "dim": 384, "heads": 6, "depth": 10, "mlp_ratio": 4,
        "act": "gelu", "pool": "mean", "qkv_bias": True, "num_classes": 1000}),
    ("bert", "b", {
        "seq_len": 256, "vocab": 30522, "dim": 384, "heads": 6, "depth": 6, "mlp_ratio": 4,
        "act": "gelu", "norm_first": True, "pooler": False, "num_classes": 3}),
]


# ----------------------------------------------------------------------------- known networks


def known_specs() -> list[ModelSpec]:
    """Well-known networks at their published sizes, as generator specs: what users ask
    about, and far larger than the reference set (ResNet-50 is 5x its largest model,
    BERT-base 100x its BERT), so predicting them tests extrapolation.

    Layer plans follow the papers (ImageNet 224 x 224, sequence length 128, 1000 / 2
    classes) within the generator's families: one activation per network (MobileNetV3 uses
    hardswish throughout), squeeze-excite reducing the expanded width 4x (EfficientNet-B0
    then has 8.4 M parameters, not 5.3 M; its MACs match). Names are the networks'.
    """
    return [make_spec(name, family, params) for name, family, params in _KNOWN_PARAMS]


def _resnet(block: str, depths: list[int]) -> dict[str, Any]:
    return {"resolution": 224, "stem": "conv7_pool", "block": block, "base_width": 64,
            "depths": depths, "act": "relu", "num_classes": 1000}


def _vit(dim: int, heads: int, depth: int = 12) -> dict[str, Any]:
    return {"resolution": 224, "patch": 16, "dim": dim, "heads": heads, "depth": depth,
            "mlp_ratio": 4, "act": "gelu", "pool": "cls", "qkv_bias": True, "num_classes": 1000}


def _bert(dim: int, depth: int, heads: int) -> dict[str, Any]:
    return {"seq_len": 128, "vocab": 30522, "dim": dim, "heads": heads, "depth": depth,
            "mlp_ratio": 4, "act": "gelu", "norm_first": False, "pooler": True,
            "num_classes": 2}


def _mobile(stem: int, widths: list[int], strides: list[int], depths: list[int],
            expands: list[int], kernels: list[int], se: list[bool], act: str,
            head: int) -> dict[str, Any]:
    return {"resolution": 224, "stem_width": stem, "widths": widths, "strides": strides,
            "depths": depths, "expands": expands, "kernels": kernels, "se": se, "act": act,
            "head_width": head, "num_classes": 1000}


_KNOWN_PARAMS: list[tuple[str, str, dict[str, Any]]] = [
    ("resnet18", "resnet", _resnet("basic", [2, 2, 2, 2])),
    ("resnet34", "resnet", _resnet("basic", [3, 4, 6, 3])),
    ("resnet50", "resnet", _resnet("bottleneck", [3, 4, 6, 3])),
    ("resnet101", "resnet", _resnet("bottleneck", [3, 4, 23, 3])),
    ("mobilenet_v2", "mobilenet", _mobile(
        32, [16, 24, 32, 64, 96, 160, 320], [1, 2, 2, 2, 1, 2, 1], [1, 2, 3, 4, 3, 3, 1],
        [1, 6, 6, 6, 6, 6, 6], [3] * 7, [False] * 7, "relu6", 1280)),
    ("mobilenet_v3_large", "mobilenet", _mobile(
        16, [16, 24, 40, 80, 112, 160], [1, 2, 2, 2, 1, 2], [1, 2, 3, 4, 2, 3],
        [1, 4, 3, 6, 6, 6], [3, 3, 5, 3, 3, 5], [False, False, True, False, True, True],
        "hardswish", 960)),
    ("efficientnet_b0", "mobilenet", _mobile(
        32, [16, 24, 40, 80, 112, 192, 320], [1, 2, 2, 2, 1, 2, 1], [1, 2, 2, 3, 3, 4, 1],
        [1, 6, 6, 6, 6, 6, 6], [3, 3, 5, 3, 5, 5, 3], [True] * 7, "silu", 1280)),
    ("vit_tiny16", "vit", _vit(192, 3)),
    ("vit_small16", "vit", _vit(384, 6)),
    ("vit_base16", "vit", _vit(768, 12)),
    ("bert_mini", "bert", _bert(256, 4, 4)),
    ("bert_small", "bert", _bert(512, 4, 8)),
    ("bert_medium", "bert", _bert(512, 8, 8)),
    ("distilbert", "bert", _bert(768, 6, 12)),
    ("bert_base", "bert", _bert(768, 12, 12)),
    ("mixer_s16", "mixer", {"resolution": 224, "patch": 16, "dim": 512, "token_hidden": 256,
                            "channel_ratio": 4, "depth": 8, "act": "gelu", "num_classes": 1000}),
    ("mixer_b16", "mixer", {"resolution": 224, "patch": 16, "dim": 768, "token_hidden": 384,
                            "channel_ratio": 4, "depth": 12, "act": "gelu",
                            "num_classes": 1000}),
]
