"""A search space of the user's own: registered builder -> predict, calibrate, search by arch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from predictor.api import Predictor
from predictor.calibration import calibrate
from predictor.errors import InvalidArchError, PredictorError
from predictor.measure import measure_onnx
from predictor.onnx_io import export_torch
from predictor.search import SearchConfig, SearchError, get_search_space, search_device
from predictor.spaces.custom import custom_space, register_space, unregister_space

OPTIONS = ("c3", "c5", "skip")
POSITIONS = 4
SHIPPED_DEVICE = "silver_4114@nb201"


def build_tiny(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A stem conv, then per position a 3x3 / 5x5 conv + ReLU (or nothing), then a head."""
    layers: list[nn.Module] = [nn.Conv2d(input_shape[1], 16, 3, padding=1), nn.ReLU()]
    for op in arch.split("-"):
        if op == "c3":
            layers += [nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()]
        elif op == "c5":
            layers += [nn.Conv2d(16, 16, 5, padding=2), nn.ReLU()]
        elif op != "skip":
            raise ValueError(f"no op {op}")
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes)]
    return nn.Sequential(*layers).eval()


@pytest.fixture
def tiny_space():
    space = register_space("tinyconv", build_tiny, input_shape=(1, 3, 16, 16), num_classes=10,
                           options=OPTIONS, positions=POSITIONS)
    yield space
    unregister_space("tinyconv")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load()


def _archs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["-".join(OPTIONS[i] for i in rng.integers(len(OPTIONS), size=POSITIONS))
            for _ in range(n)]


def test_registered_space_predicts_like_its_networks(tiny_space, predictor) -> None:
    archs = _archs(6)
    by_arch = predictor.predict_batch("tinyconv", archs, SHIPPED_DEVICE)
    x = torch.zeros(1, 3, 16, 16)
    by_module = predictor.predict([(build_tiny(a, (1, 3, 16, 16), 10), x) for a in archs],
                                  device=SHIPPED_DEVICE)
    np.testing.assert_allclose(by_arch, by_module, rtol=1e-5)
    assert np.all(by_arch > 0)
    # op lists work too, and another setting builds another network
    as_lists = predictor.predict_batch("tinyconv", [a.split("-") for a in archs],
                                       SHIPPED_DEVICE)
    np.testing.assert_allclose(as_lists, by_arch, rtol=1e-6)
    big = predictor.predict_batch("tinyconv", archs[:1], SHIPPED_DEVICE,
                                  input_shape=(1, 3, 64, 64))
    assert big[0] > by_arch[0]
    assert tiny_space.graph(archs[0], (1, 3, 64, 64)).macs > tiny_space.graph(archs[0]).macs


def test_bad_archs_name_the_arch_and_problem(tiny_space, predictor) -> None:
    for arch, problem in (("c3-c5", "2 positions, expected 4"),
                          ("c3-c5-c7-skip", "unknown option 'c7'"),
                          (42, "expected a string")):
        with pytest.raises(InvalidArchError, match=problem) as info:
            predictor.predict_batch("tinyconv", [arch], SHIPPED_DEVICE)
        assert str(arch) in str(info.value)
    # a builder failure names the arch too (this space has no options to check first)
    register_space("looseconv", build_tiny, input_shape=(1, 3, 16, 16), num_classes=10)
    try:
        with pytest.raises(InvalidArchError, match="'c3-zz'.*builder failed.*no op zz"):
            predictor.predict_batch("looseconv", ["c3-zz"], SHIPPED_DEVICE)
        with pytest.raises(SearchError, match="without options"):
            get_search_space("looseconv")
    finally:
        unregister_space("looseconv")
    with pytest.raises(PredictorError, match="built in"):
        register_space("nb201", build_tiny, input_shape=(1, 3, 16, 16), num_classes=10)
    with pytest.raises(PredictorError, match=r"Unknown search space 'nope'.*tinyconv"):
        predictor.predict_batch("nope", ["c3"], SHIPPED_DEVICE)


def test_calibrate_on_measured_archs_then_search(tiny_space, predictor, tmp_path,
                                                 monkeypatch) -> None:
    """A device calibrated from real ONNX Runtime timings of the space's networks, then
    searched under a budget: every returned arch is valid and predicted within it."""
    monkeypatch.setenv("LATPRED_DEVICE_DIR", str(tmp_path / "devices"))
    archs = list(dict.fromkeys(_archs(12, seed=1)))[:8]
    x = torch.zeros(1, 3, 16, 16)
    rows = [{"arch": a, "latency_ms": measure_onnx(
        export_torch(build_tiny(a, (1, 3, 16, 16), 10), x), threads=1, max_seconds=0.2,
        warmup=2).latency_ms} for a in archs]
    stored = calibrate(predictor, "tiny-board", rows, {"backend": "onnxruntime"},
                       space="tinyconv", strategy="amortised")
    assert stored["space"] == "tinyconv" and stored["input_shape"] == [1, 3, 16, 16]
    measured = np.array([r["latency_ms"] for r in rows])
    predicted = predictor.predict_batch("tinyconv", archs, "tiny-board")
    # calibrated in milliseconds on this machine, not on the shipped device's scale
    assert np.median(np.abs(np.log(predicted / measured))) < np.log(2)
    budget = float(np.median(measured))
    result = search_device(predictor, "tinyconv", "tiny-board", budget,
                           config=SearchConfig(evaluations=40, population=10, sample=3,
                                               margin=0.0, spread_k=0.0))
    assert result.archs and np.all(result.latency_ms <= budget)
    space = get_search_space("tinyconv")
    np.testing.assert_allclose(result.objective, space.params(result.archs))
    assert all(len(space.genes(a)) == POSITIONS for a in result.archs)
    params = [sum(p.numel() for p in build_tiny(a, (1, 3, 16, 16), 10).parameters())
              for a in result.archs]
    np.testing.assert_allclose(space.params(result.archs), params)
    assert custom_space("tinyconv") is tiny_space


PLUGIN = '''
from torch import nn
from predictor.spaces.custom import register_space


def build(arch, input_shape, num_classes):
    layers = [nn.Conv2d(input_shape[1], 8, 3, padding=1), nn.ReLU()]
    for op in arch.split("-"):
        if op != "skip":
            k = int(op[1])
            layers += [nn.Conv2d(8, 8, k, padding=k // 2), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes)).eval()


register_space("pluginconv", build, input_shape=(1, 3, 16, 16), num_classes=10,
               options=("c3", "c5", "skip"), positions=3)
'''


def test_cli_space_from_a_plugin(tmp_path) -> None:
    """`--plugin` registers a space for predict, calibrate and search from the CLI."""
    import json
    import os
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "predictor.cli", *args], text=True,
                              capture_output=True, timeout=300,
                              env={**os.environ, "LATPRED_DEVICE_DIR": str(tmp_path / "dev")})

    plugin = tmp_path / "myspace.py"
    plugin.write_text(PLUGIN)
    archs = ["c3-c3-c3", "skip-skip-c5", "c5-c5-c5", "c3-skip-skip", "c5-c3-skip"]
    (tmp_path / "archs.txt").write_text("\n".join(archs) + "\n")
    out = cli("predict", "--space", "pluginconv", "--plugin", str(plugin), "--archs",
              str(tmp_path / "archs.txt"), "--device", SHIPPED_DEVICE, "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["arch"] for r in rows] == archs and all(r["latency_ms"] > 0 for r in rows)
    ms = {r["arch"]: r["latency_ms"] for r in rows}
    assert ms["c5-c5-c5"] > ms["skip-skip-c5"]
    # calibrate from arch,latency_ms rows, then search on that device
    csv = tmp_path / "m.csv"
    csv.write_text("arch,latency_ms\n" + "".join(f"{a},{2 * ms[a]}\n" for a in archs))
    cal = cli("calibrate", "plugboard", "--space", "pluginconv", "--plugin", str(plugin),
              "--measurements", str(csv), "--strategy", "amortised", "--json")
    assert cal.returncode == 0, cal.stderr
    assert json.loads(cal.stdout)["space"] == "pluginconv"
    found = cli("search", "--space", "pluginconv", "--plugin", str(plugin), "--device",
                "plugboard", "--latency-ms", str(2 * max(ms.values())), "--budget-evals",
                "20", "--json")
    assert found.returncode == 0, found.stderr
    assert all(len(r["arch"].split("-")) == 3 for r in json.loads(found.stdout)["archs"])
    # without the plugin the space is unknown; a broken plugin is one clear line
    for args, message in ((("--archs", str(tmp_path / "archs.txt")), "Unknown search space"),
                          (("--plugin", str(tmp_path / "none.py"), "--archs",
                            str(tmp_path / "archs.txt")), "Plugin file not found")):
        bad = cli("predict", "--space", "pluginconv", *args, "--device", SHIPPED_DEVICE)
        assert bad.returncode == 2 and message in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
