"""Zoo builders reproduce the published MACs and parameter counts (ImageNet, 224x224, batch 1)."""

from __future__ import annotations

import pytest

from predictor import model_zoo
from predictor.graph import extract_graph

PUBLISHED = {  # (GMACs, M params)
    "resnet18": (1.82, 11.7),
    "mobilenet_v2": (0.30, 3.5),
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
