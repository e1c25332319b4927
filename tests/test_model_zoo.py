"""Zoo builders reproduce the published MACs and parameter counts (ImageNet, 224x224, batch 1)."""

from __future__ import annotations

import pytest

from predictor import model_zoo
from predictor.graph import extract_graph

PUBLISHED = {  # (GMACs, M params)
    "resnet18": (1.82, 11.7),
    "mobilenet_v2": (0.30, 3.5),
    "convnext_tiny": (4.46, 28.6),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_macs_and_params_match_published(name: str) -> None:
    graph = extract_graph(model_zoo.export(name))
    gmacs, mparams = PUBLISHED[name]
    assert graph.macs / 1e9 == pytest.approx(gmacs, rel=0.01)
    assert graph.params / 1e6 == pytest.approx(mparams, rel=0.01)
    assert not graph.unknown_ops


def test_unknown_zoo_name_is_a_clear_error() -> None:
    from predictor.errors import PredictorError

    with pytest.raises(PredictorError, match="resnet18"):
        model_zoo.build("resnet19")


def test_gpt2_is_a_causal_language_model_on_token_ids() -> None:
    """A small GPT-2 (same builder) exports with token-id input and no unknown op; its MACs
    are the blocks' linears plus the vocabulary head per token (attention adds the rest);
    changing a later token leaves the logits of earlier positions as they were."""
    import torch

    model = model_zoo.GPT2(vocab=1000, dim=64, depth=2, heads=2, context=32).eval()
    ids = torch.randint(0, 1000, (1, 16))
    from predictor.onnx_io import export_torch

    graph = extract_graph(export_torch(model, ids))
    assert not graph.unknown_ops
    linear = 16 * (2 * 12 * 64 * 64 + 64 * 1000)
    assert linear <= graph.macs <= 1.2 * linear
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 1000
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[:, :-1], model(changed)[:, :-1])
    example = model_zoo.example_input("gpt2_small")
    assert example.dtype == torch.int64 and tuple(example.shape) == (1, 128)


def test_unet_maps_an_image_to_per_pixel_classes() -> None:
    import torch

    with torch.no_grad():
        out = model_zoo.UNet(width=8, levels=3)(torch.randn(1, 3, 64, 64))
    assert tuple(out.shape) == (1, 2, 64, 64)
