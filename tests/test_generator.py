"""Generated CNNs / transformers: deterministic, balanced, and every model goes through the pipeline.

Uses ``small=True`` samples (tiny models, ~0.1 s export each) except for the reference set.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from predictor import generator
from predictor.errors import InvalidArchError
from predictor.generator import (
    DEFAULT_MACS_RANGE,
    FAMILIES,
    ModelSpec,
    build_module,
    estimate_cost,
    export_spec,
    known_specs,
    reference_specs,
    sample_specs,
    spec_from_model,
    write_models,
)
from predictor.graph import extract_graph

COUNT = 14  # two of each of the 7 families


@pytest.fixture(scope="module")
def small_specs() -> list[ModelSpec]:
    return sample_specs(0, COUNT, small=True)


def _run_onnx(model: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_same_seed_same_specs_and_onnx_bytes(small_specs: list[ModelSpec]) -> None:
    again = sample_specs(0, COUNT, small=True)
    assert again == small_specs
    assert [s.name for s in again] == [s.name for s in small_specs]
    spec = small_specs[0]
    assert export_spec(spec).SerializeToString() == export_spec(spec).SerializeToString()
    # spec index i depends on (seed, i, family) only: a shorter sample is a prefix
    assert sample_specs(0, 5, small=True) == small_specs[:5]


def test_different_seeds_differ(small_specs: list[ModelSpec]) -> None:
    other = sample_specs(1, COUNT, small=True)
    assert [s.params for s in other] != [s.params for s in small_specs]
    assert not {s.name for s in other} & {s.name for s in small_specs}


def test_kinds_balanced_and_every_family_appears(small_specs: list[ModelSpec]) -> None:
    assert Counter(s.kind for s in small_specs) == {"cnn": 7, "transformer": 7}
    assert {s.family for s in small_specs} == {n for n, f in FAMILIES.items() if f.default}
    assert len({s.name for s in small_specs}) == COUNT
    for spec in small_specs:
        assert spec.kind == FAMILIES[spec.family].kind
        assert spec.input_dtype == ("int64" if spec.family == "bert" else "float32")


def test_kind_and_family_filters() -> None:
    cnns = sample_specs(3, 6, kinds=("cnn",), small=True)
    assert {s.kind for s in cnns} == {"cnn"}
    assert [s.family for s in sample_specs(3, 4, families=["vit", "resnet"], small=True)] == [
        "resnet", "vit", "resnet", "vit"]  # kinds alternate, cnn first
    with pytest.raises(InvalidArchError, match="known"):
        sample_specs(0, 2, families=["alexnet"])
    with pytest.raises(InvalidArchError, match="kinds"):
        sample_specs(0, 2, kinds=("cnn",), families=["vit"])
    with pytest.raises(InvalidArchError, match="gan"):
        sample_specs(0, 2, kinds="cnn,gan")


@pytest.mark.parametrize(("family", "kind", "ops"), [
    ("unet", "cnn", {"ConvTranspose", "Resize"}),
    ("rnn", "rnn", {"LSTM", "GRU"}),
    ("cnn_block", "cnn", {"Conv", "ConvTranspose", "Resize", "MaxPool", "AveragePool",
                          "InstanceNormalization", "GroupNormalization"}),
    ("seq_block", "transformer", {"MatMul", "Gemm", "Softmax", "LayerNormalization"}),
    ("convnext", "cnn", {"Conv", "LayerNormalization", "MatMul", "Transpose"}),
    ("gpt", "transformer", {"Gather", "MatMul", "Softmax", "LayerNormalization"}),
    ("gpt_step", "transformer", {"Gather", "MatMul", "Softmax", "LayerNormalization"}),
])
def test_opt_in_families_run_and_count_their_work(family, kind, ops) -> None:
    """Encoder-decoders and recurrent models are sampled only when named, so the default
    samples (and every model set measured from them) keep their specs; their models
    export, run in ONNX Runtime as in torch, and their graphs hold the work the sampler
    budgeted."""
    assert family not in {s.family for s in sample_specs(5, 20)}
    specs = sample_specs(5, 6, kinds=kind, families=[family], small=True)
    seen = set()
    for spec in specs:
        assert spec.family == family and spec.kind == kind
        model = export_spec(spec)
        graph = extract_graph(model)
        assert graph.macs == estimate_cost(spec)[0]
        seen |= set(graph.op_counts()) & ops
        module, x = build_module(spec)
        with torch.no_grad():
            expected = module(x).numpy()
        np.testing.assert_allclose(_run_onnx(model, x), expected, rtol=1e-3, atol=1e-4)
    assert seen  # its characteristic ops are in the graphs


def test_global_rng_untouched(small_specs: list[ModelSpec]) -> None:
    state = torch.random.get_rng_state()
    module, x = build_module(small_specs[1])
    estimate_cost(small_specs[1])
    assert torch.equal(state, torch.random.get_rng_state())
    module2, x2 = build_module(small_specs[1])
    assert torch.equal(x, x2)
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(),
                                                 module2.state_dict().values(), strict=True))


def test_small_sample_goes_through_the_pipeline(small_specs: list[ModelSpec]) -> None:
    for spec in small_specs:
        model = export_spec(spec)
        graph = extract_graph(model)
        assert graph.summary()["unknown_ops"] == {}, spec.name
        assert graph.macs > 0
        assert graph.macs == estimate_cost(spec)[0], spec.name
        assert graph.primary_input_shape == spec.input_shape
        assert spec_from_model(model) == spec
        _, x = build_module(spec)
        out = _run_onnx(model, x)
        assert out.shape == (1, spec.params["num_classes"])
        assert np.isfinite(out).all(), spec.name


def test_default_sample_within_budget() -> None:
    specs = sample_specs(0, 8)  # each default family once (cnn: 3, transformer: 4)
    specs += sample_specs(0, 8, kinds=("cnn", "transformer", "rnn"),
                          families=[n for n, f in FAMILIES.items() if not f.default])
    assert {s.family for s in specs} == set(FAMILIES)
    for spec in specs:
        macs, params = estimate_cost(spec)
        low, high = FAMILIES[spec.family].macs_range or DEFAULT_MACS_RANGE
        assert low <= macs <= high, spec.name
        assert params <= (FAMILIES[spec.family].max_params or generator.DEFAULT_MAX_PARAMS)


def test_generating_steps_stream_their_weights() -> None:
    """`gpt_step` runs decoders on 1-8 tokens: a few MACs per weight (memory-bound), where
    the prompt-sized `gpt` models do tens to hundreds, and models up to its own size cap."""
    steps = sample_specs(10, 24, kinds="transformer", families=["gpt_step"])
    prompts = sample_specs(10, 24, kinds="transformer", families=["gpt"])
    assert {s.params["seq_len"] for s in steps} == {1, 2, 4, 8}
    step_cost = np.array([estimate_cost(s) for s in steps], dtype=float)
    prompt_cost = np.array([estimate_cost(s) for s in prompts], dtype=float)
    assert np.median(step_cost[:, 0] / step_cost[:, 1]) < 8
    assert np.median(prompt_cost[:, 0] / prompt_cost[:, 1]) > 8
    assert step_cost[:, 1].max() > generator.DEFAULT_MAX_PARAMS
    assert step_cost[:, 1].max() <= FAMILIES["gpt_step"].max_params


def test_resolutions_and_cost_range_override() -> None:
    """Deployment-size inputs (segmentation at 512 x 512): the CNNs take the given
    resolutions and cost range, their names never clash with a default sample's, and
    transformer families refuse them."""
    specs = sample_specs(5, 5, kinds=("cnn",), families=["resnet", "mobilenet", "unet"],
                         resolutions=[320, 512], macs_range=(2e8, 4e9))
    default = sample_specs(5, 5, kinds=("cnn",), families=["resnet", "mobilenet", "unet"])
    assert {s.input_shape[2:] for s in specs} <= {(320, 320), (512, 512)}
    assert all(s.name.endswith("-r") for s in specs)
    assert not {s.name for s in specs} & {s.name for s in default}
    for spec in specs:
        assert 2e8 <= estimate_cost(spec)[0] <= 4e9, spec.name
    assert specs == sample_specs(5, 5, kinds=("cnn",), families=["resnet", "mobilenet", "unet"],
                                 resolutions=[320, 512], macs_range=(2e8, 4e9))
    with pytest.raises(InvalidArchError, match="CNN families only"):
        sample_specs(5, 2, resolutions=[512])  # the default kinds include transformers


def test_blocks_reach_below_whole_networks() -> None:
    """Single layers and blocks (the opt-in block families) have their own cost range:
    many fall below the smallest whole network, which is what they are there to teach."""
    specs = sample_specs(1, 40, kinds=("cnn", "transformer"),
                         families=["cnn_block", "seq_block"])
    macs = np.array([estimate_cost(s)[0] for s in specs])
    assert {s.family for s in specs} == {"cnn_block", "seq_block"}
    assert (macs < DEFAULT_MACS_RANGE[0]).mean() > 0.2
    assert macs.min() >= FAMILIES["cnn_block"].macs_range[0]


def test_spec_dict_roundtrip(small_specs: list[ModelSpec]) -> None:
    import json

    for spec in small_specs:
        assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert len(set(small_specs)) == COUNT  # hashable despite the params dict


def test_reference_set() -> None:
    specs = reference_specs()
    assert generator.REFERENCE_SET_VERSION == 2
    assert len({s.name for s in specs}) == 13
    assert all(s.name.startswith("ref2-") for s in specs)
    assert {s.kind for s in specs} == {"cnn", "transformer"}
    assert len({s.family for s in specs}) >= 5
    assert reference_specs() == specs
    macs = []
    for spec in specs:
        graph = extract_graph(export_spec(spec))
        assert not graph.unknown_ops, spec.name
        macs.append(graph.macs)
    # from a few M MACs (per-kernel overheads) to the size of deployed networks
    assert min(macs) < 1e7 and max(macs) > 2e9, macs


def test_known_networks_have_their_published_sizes() -> None:
    """MACs and parameters of the well-known networks match the papers' figures (10 %;
    EfficientNet-B0's squeeze-excite layers reduce the expanded width, not the input's, so
    only its MACs match)."""
    published = {"resnet50": (4.09e9, 25.6e6), "resnet18": (1.81e9, 11.7e6),
                 "mobilenet_v2": (0.30e9, 3.5e6), "efficientnet_b0": (0.39e9, None),
                 "vit_base16": (17.6e9, 86.6e6), "bert_base": (11.2e9, 109.5e6)}
    specs = {s.name: s for s in known_specs()}
    assert len(specs) == len(known_specs()) >= 15
    for name, (macs, params) in published.items():
        got_macs, got_params = estimate_cost(specs[name])
        assert abs(got_macs / macs - 1) < 0.1, name
        assert params is None or abs(got_params / params - 1) < 0.1, name
    assert not {s.name for s in reference_specs()} & set(specs)


def test_write_models_atomic_and_skips_existing(tmp_path: Path, small_specs: list[ModelSpec],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    specs = small_specs[:2]
    paths = write_models(specs, tmp_path / "out", progress=False)
    assert paths == [tmp_path / "out" / f"{s.name}.onnx" for s in specs]
    assert spec_from_model(onnx.load(paths[0])) == specs[0]
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left
    before = [p.read_bytes() for p in paths]
    paths[1].write_bytes(b"")  # an empty (broken) file is rewritten, a good one is kept
    exported = []

    def spy(spec: ModelSpec) -> onnx.ModelProto:
        exported.append(spec.name)
        return export_spec(spec)

    monkeypatch.setattr(generator, "export_spec", spy)
    write_models(specs, tmp_path / "out", progress=False)
    assert exported == [specs[1].name]
    assert [p.read_bytes() for p in paths] == before
    with pytest.raises(InvalidArchError, match="Duplicate"):
        write_models([specs[0], specs[0]], tmp_path / "dup", progress=False)
