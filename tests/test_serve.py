"""`latpred serve`: the HTTP JSON service, through FastAPI's TestClient, on the shipped
checkpoint and a temporary device folder."""

from __future__ import annotations

import base64
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
with warnings.catch_warnings():  # starlette's TestClient nags about httpx vs httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from predictor.api import Predictor  # noqa: E402
from predictor.calibration import device_lock  # noqa: E402
from predictor.corpus import SPACES  # noqa: E402
from predictor.serve import MAX_ARCHS, create_app  # noqa: E402
from predictor.spaces import nb201  # noqa: E402

SHIPPED = "pixel3@nb201"
LIGHT = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
HEAVY = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def nb201_archs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [nb201.arch_to_str(rng.choice(nb201.OPS, 6).tolist()) for _ in range(n)]


@pytest.fixture(scope="module")
def device_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("devices")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LATPRED_DEVICE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def predictor(device_dir) -> Predictor:
    return Predictor.load()


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor)) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def calibration_body(name: str, n: int = 10, seed: int = 1, scale: float = 2.0,
                     predictor: Predictor | None = None) -> dict:
    archs = nb201_archs(n, seed)
    if predictor is not None:  # plausible latencies: a known device, slowed down
        latency = (scale * predictor.predict_batch("nb201", archs, SHIPPED)).tolist()
    else:
        latency = [1.0 + i for i in range(n)]
    return {"name": name, "space": "nb201", "archs": archs, "latency_ms": latency}


def test_health_and_device_listing(client, predictor) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["checkpoint"] == predictor.fingerprint
    devices = {d["name"]: d for d in client.get("/devices").json()["devices"]}
    assert devices[SHIPPED]["kind"] == "training device" and devices[SHIPPED]["usable"]
    assert "path" not in devices[SHIPPED]  # server paths stay private


def test_predict_archs_in_input_order(client, predictor) -> None:
    r = client.post("/predict", json={"device": SHIPPED, "space": "nb201",
                                      "archs": [HEAVY, LIGHT, HEAVY]})
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    assert [row["arch"] for row in rows] == [HEAVY, LIGHT, HEAVY]
    ms = [row["latency_ms"] for row in rows]
    assert ms[0] > ms[1] > 0 and ms[0] == pytest.approx(ms[2])
    expected = predictor.predict_batch("nb201", [HEAVY, LIGHT], SHIPPED)
    assert ms[:2] == pytest.approx(expected.tolist(), rel=1e-4)
    assert not any("upper" in row for row in rows)  # only on request: it costs more
    # A shipped device has no candidate spread: the upper estimate is the default margin.
    from predictor.search import DEFAULT_MARGIN

    r = client.post("/predict", json={"device": SHIPPED, "space": "nb201",
                                      "archs": [HEAVY, LIGHT], "upper": True})
    assert [row["upper"] for row in r.json()["predictions"]] == \
        pytest.approx([v * (1 + DEFAULT_MARGIN) for v in ms[:2]], rel=1e-4)
    assert not any("uncertain" in row for row in r.json()["predictions"])  # no disagreement


def test_predict_uploaded_onnx(client) -> None:
    # the eager graph: what the arch path predicts for a space's network (`corpus.GRAPH_MODES`)
    onnx_bytes = nb201.build_onnx(HEAVY, cse=False).SerializeToString()
    r = client.post("/predict", json={"device": SHIPPED,
                                      "models": [{"name": "heavy.onnx", "onnx_b64": b64(onnx_bytes)}]})
    assert r.status_code == 200, r.text
    (row,) = r.json()["predictions"]
    by_arch = client.post("/predict", json={"device": SHIPPED, "space": "nb201", "archs": [HEAVY]})
    assert row["model"] == "heavy.onnx"
    assert row["latency_ms"] == pytest.approx(by_arch.json()["predictions"][0]["latency_ms"],
                                              rel=1e-2)
    r = client.post("/predict", json={"device": SHIPPED, "upper": True,
                                      "models": [{"name": "heavy.onnx", "onnx_b64": b64(onnx_bytes)}]})
    (bounded,) = r.json()["predictions"]
    assert bounded["upper"] > bounded["latency_ms"] == pytest.approx(row["latency_ms"])
    assert "unfamiliar_ops" not in row  # NB201's ops are all in the training graphs


def test_predict_names_op_types_no_training_graph_held(client, predictor, tmp_path) -> None:
    import torch
    from torch import nn

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(8, 8, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.gru(x)[0]

    path = tmp_path / "gru.onnx"
    torch.onnx.export(Recurrent().eval(), (torch.randn(1, 5, 8),), str(path), dynamo=False)
    r = client.post("/predict", json={"device": SHIPPED, "models": [
        {"name": "gru.onnx", "onnx_b64": b64(path.read_bytes())}]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["unfamiliar_ops"] == {"GRU": 1}
    # predicted through the same stand-ins (the GRU unrolled) as the Python API
    assert r.json()["predictions"][0]["latency_ms"] == pytest.approx(
        float(predictor.predict([path], device=SHIPPED)[0]), rel=1e-5)


def test_calibrate_then_predict(client, predictor, device_dir) -> None:
    body = calibration_body("lab-board", predictor=predictor)
    r = client.post("/calibrate", json={**body, "provenance": {"runtime": "tflite", "threads": 4}})
    assert r.status_code == 200, r.text
    info = r.json()["info"]
    assert r.json()["device"] == "lab-board" and info["kind"] == "calibrated device"
    assert info["strategy"] and info["provenance"]["runtime"] == "tflite"
    assert [m["arch"] for m in info["measurements"]] == body["archs"]
    assert (device_dir / "lab-board.json").is_file()
    listed = {d["name"]: d for d in client.get("/devices").json()["devices"]}
    assert listed["lab-board"]["usable"] and listed["lab-board"]["samples"] == 10
    r = client.post("/predict", json={"device": "lab-board", "space": "nb201",
                                      "archs": [LIGHT, HEAVY]})
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    light, heavy = (row["latency_ms"] for row in rows)
    assert 0 < light < heavy
    # under the smallest calibration measurement: flagged as extrapolated
    fastest = min(body["latency_ms"])
    assert light < fastest < heavy  # the all-skip cell is the fastest NB201 network
    assert [row.get("below_calibration", False) for row in rows] == [True, False]
    assert info["graph"] == "eager"
    # A board that ran the exported ONNX files keeps that graph mode.
    r = client.post("/calibrate", json={**body, "name": "ort-board", "graph": "exported"})
    assert r.status_code == 200, r.text
    assert r.json()["info"]["graph"] == "exported"


def test_uploaded_models_calibrate_with_the_call_floor_of_their_provenance(client,
                                                                          predictor) -> None:
    """ONNX uploads timed by `latpred measure` on a CPU post its provenance: the device
    takes the recorded call floor off the latencies (as `latpred calibrate` does); a floor
    that is not a number is a clear 4xx."""
    body = calibration_body("cpu-board", predictor=predictor)
    models = [{"name": f"a{i}.onnx", "onnx_b64": b64(SPACES["nb201"].build_onnx(arch)
                                                    .SerializeToString())}
              for i, arch in enumerate(body.pop("archs"))]
    body = {**body, "space": None, "models": models,
            "provenance": {"device": "cpu", "call_floor_ms": 0.004}}
    r = client.post("/calibrate", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["info"]["call_floor_ms"] == 0.004
    r = client.post("/calibrate", json={**body, "provenance": {"device": "cpu",
                                                                "call_floor_ms": "soon"}})
    assert r.status_code == 400 and "call_floor_ms 'soon' is not a number" in r.json()["detail"]


def test_energy_device_calibrates_and_predicts_energy(client, predictor) -> None:
    body = calibration_body("pi-energy", predictor=predictor, scale=3.0)
    body["energy_mj"] = body.pop("latency_ms")
    r = client.post("/calibrate", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["info"]["metric"] == "energy_mj"
    assert "energy_mj" in r.json()["info"]["measurements"][0]
    listed = {d["name"]: d for d in client.get("/devices").json()["devices"]}
    assert listed["pi-energy"]["metric"] == "energy_mj"
    r = client.post("/predict", json={"device": "pi-energy", "space": "nb201",
                                      "archs": [LIGHT, HEAVY], "metric": "energy_mj"})
    assert r.status_code == 200, r.text
    assert r.json()["metric"] == "energy_mj"
    light, heavy = (row["energy_mj"] for row in r.json()["predictions"])
    assert 0 < light < heavy and "latency_ms" not in r.json()["predictions"][0]
    wrong = client.post("/predict", json={"device": "pi-energy", "space": "nb201",
                                          "archs": [LIGHT], "metric": "latency_ms"})
    assert wrong.status_code == 400 and "calibrated on energy_mj" in wrong.json()["detail"]


def test_concurrent_calibrations_and_predictions_lose_nothing(client, predictor) -> None:
    names = ["board-a", "board-b"]
    bodies = [calibration_body(n, seed=i + 5, predictor=predictor) for i, n in enumerate(names)]
    results: dict[str, int] = {}

    def call(key: str, path: str, body: dict) -> None:
        results[key] = client.post(path, json=body).status_code

    threads = [threading.Thread(target=call, args=(n, "/calibrate", b))
               for n, b in zip(names, bodies, strict=True)]
    threads += [threading.Thread(target=call, args=(f"p{i}", "/predict", {
        "device": SHIPPED, "space": "nb201", "archs": nb201_archs(8, 100 + i)}))
        for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results.values()) == {200}, results
    listed = {d["name"] for d in client.get("/devices").json()["devices"]}
    assert set(names) <= listed
    for name in names:
        r = client.post("/predict", json={"device": name, "space": "nb201", "archs": [HEAVY]})
        assert r.status_code == 200, r.text


def test_calibration_of_a_busy_device_gets_409(client, device_dir) -> None:
    with device_lock("busy-board", device_dir):
        r = client.post("/calibrate", json=calibration_body("busy-board"))
    assert r.status_code == 409
    assert "being calibrated" in r.json()["detail"]


def test_shipped_training_device_cannot_be_overwritten(client) -> None:
    r = client.post("/calibrate", json=calibration_body(SHIPPED))
    assert r.status_code == 409
    assert "training device" in r.json()["detail"]


def _junk_upload() -> dict:
    return {"device": SHIPPED, "models": [{"name": "junk", "onnx_b64": b64(b"not a model")}]}


ARCHS10 = nb201_archs(10)
BAD_REQUESTS = {
    # name: (path, json body, expected status, substrings of the message)
    "wrong type archs": ("/predict", {"device": SHIPPED, "space": "nb201", "archs": HEAVY},
                         422, ["archs", "valid list"]),
    "wrong type arch item": ("/predict", {"device": SHIPPED, "space": "nb201", "archs": [5]},
                             422, ["archs.0", "valid string"]),
    "wrong type latency": ("/calibrate", {"name": "x", "space": "nb201", "archs": ARCHS10,
                                          "latency_ms": ["fast"] * 10},
                           422, ["latency_ms.0"]),
    "body not an object": ("/predict", [1, 2], 422, ["body", "object"]),
    "unknown device": ("/predict", {"device": "no-such-board", "space": "nb201",
                                    "archs": [HEAVY]},
                       404, ["Unknown device 'no-such-board'", "POST /calibrate"]),
    "malformed arch": ("/predict", {"device": SHIPPED, "space": "nb201", "archs": ["|conv~0|"]},
                       400, ["Malformed NB201 arch '|conv~0|'"]),
    "unknown op": ("/predict", {"device": SHIPPED, "space": "nb201",
                                "archs": [HEAVY.replace("nor_conv_3x3~1", "conv9~1")]},
                   400, ["Unknown op 'conv9'"]),
    "unknown space": ("/predict", {"device": SHIPPED, "space": "nb999", "archs": [HEAVY]},
                      422, ["space", "unknown search space 'nb999'", "nb201"]),
    "archs without space": ("/predict", {"device": SHIPPED, "archs": [HEAVY]},
                            422, ["`archs` needs `space`"]),
    "neither archs nor models": ("/predict", {"device": SHIPPED}, 422, ["exactly one of"]),
    "unknown graph mode": ("/predict", {"device": SHIPPED, "space": "nb201", "archs": [HEAVY],
                                        "graph": "compiled"}, 422, ["graph", "exported"]),
    "too many archs": ("/predict", {"device": SHIPPED, "space": "nb201",
                                    "archs": [LIGHT] * (MAX_ARCHS + 1)},
                       422, ["archs", f"at most {MAX_ARCHS}"]),
    "bad base64": ("/predict", {"device": SHIPPED, "models": [{"name": "m", "onnx_b64": "@@"}]},
                   422, ["models.0.onnx_b64", "not valid base64"]),
    "not ONNX bytes": ("/predict", _junk_upload(), 400, ["models[0] ('junk')", "not a valid ONNX"]),
    "a file path instead of bytes": ("/predict", {"device": SHIPPED,
                                                  "models": [{"name": "m", "path": "/etc/passwd"}]},
                                     422, ["models.0.path", "Extra inputs are not permitted"]),
    "negative latency": ("/calibrate", {"name": "x", "space": "nb201", "archs": ARCHS10,
                                        "latency_ms": [1.0] * 9 + [-2.0]},
                         422, ["latency_ms.9", "greater than or equal to"]),
    "absurd latency": ("/calibrate", {"name": "x", "space": "nb201", "archs": ARCHS10,
                                      "latency_ms": [1.0] * 9 + [1e300]},
                       422, ["latency_ms.9", "less than or equal to"]),
    "too few samples": ("/calibrate", {"name": "x", "space": "nb201", "archs": ARCHS10[:3],
                                       "latency_ms": [1.0, 2.0, 3.0]},
                        400, ["Too few calibration samples: 3"]),
    "latency count mismatch": ("/calibrate", {"name": "x", "space": "nb201", "archs": ARCHS10,
                                              "latency_ms": [1.0] * 9},
                               422, ["got 9 latency_ms values for 10 archs"]),
    "latency and energy both": ("/calibrate", {**calibration_body("x"), "energy_mj": [1.0] * 10},
                                422, ["exactly one of `latency_ms` or `energy_mj`"]),
    "no measurements": ("/calibrate", {"name": "x", "space": "nb201", "archs": ARCHS10},
                        422, ["exactly one of `latency_ms` or `energy_mj`"]),
    "unknown metric": ("/predict", {"device": SHIPPED, "space": "nb201", "archs": [HEAVY],
                                    "metric": "lut"}, 422, ["metric", "latency_ms"]),
    "metric the device lacks": ("/predict", {"device": SHIPPED, "space": "nb201",
                                             "archs": [HEAVY], "metric": "energy_mj"},
                                400, [f"Device '{SHIPPED}' was calibrated on latency_ms"]),
    "device name with a path": ("/calibrate", {"name": "../evil", "space": "nb201",
                                               "archs": ARCHS10, "latency_ms": [1.0] * 10},
                                422, ["invalid device name '../evil'"]),
    "unknown strategy": ("/calibrate", {**calibration_body("x"), "strategy": "magic"},
                         400, ["Unknown adaptation strategy 'magic'"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_clear_4xx(client, case) -> None:
    path, body, status, fragments = BAD_REQUESTS[case]
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    for fragment in fragments:
        assert fragment in detail, detail


@pytest.mark.parametrize("raw, fragment", [
    (b'{"device": "pixel3@nb201", "archs": [', "Malformed JSON"),
    (b'{"name": "x", "space": "nb201", "archs": ["a", "b", "c", "d", "e"], '
     b'"latency_ms": [1, 2, NaN, 4, 5]}', "latency_ms.2: Input should be a finite number"),
    (b"", "Request body is missing"),
])
def test_malformed_json_and_nan_get_422(client, raw, fragment) -> None:
    r = client.post("/calibrate" if b"NaN" in raw else "/predict", content=raw,
                    headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]


def test_non_json_content_type_gets_422(client) -> None:
    r = client.post("/predict", content=b'{"device": "x"}', headers={"content-type": "text/plain"})
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["detail"]


def test_oversized_body_gets_413_before_parsing(predictor) -> None:
    with TestClient(create_app(predictor, max_body_bytes=1000)) as small:
        body = {"device": SHIPPED, "space": "nb201", "archs": [HEAVY] * 20}
        r = small.post("/predict", json=body)
        assert r.status_code == 413
        assert "too large" in r.json()["detail"] and "limit is 1000 bytes" in r.json()["detail"]
        # Streamed without a Content-Length (chunked), and not even JSON: still 413.
        r = small.post("/predict", content=(b"x" * 300 for _ in range(10)),
                       headers={"content-type": "application/json"})
        assert r.status_code == 413 and "too large" in r.json()["detail"]
        r = small.post("/predict", json={"device": SHIPPED, "space": "nb201", "archs": [HEAVY]})
        assert r.status_code == 200  # a small request still passes


def test_serve_without_fastapi_says_what_to_install(monkeypatch) -> None:
    from predictor.cli_serve import require_serve_dependencies
    from predictor.errors import PredictorError

    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` now fails
    with pytest.raises(PredictorError, match=r"pip install 'latpred\[serve\]'"):
        require_serve_dependencies()


def test_serve_command_binds_localhost_by_default() -> None:
    import argparse

    from predictor.cli_serve import DEFAULT_PORT, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve"])
    assert (args.host, args.port, args.max_body_mb) == ("127.0.0.1", DEFAULT_PORT, 16.0)
    assert args.checkpoint is None or isinstance(args.checkpoint, Path)


def test_registered_space_is_served(client, predictor) -> None:
    """A space registered in the serving process (`latpred serve --plugin`) takes arch
    requests like nb201; its bad archs get a 4xx naming them."""
    from torch import nn

    from predictor.spaces.custom import register_space, unregister_space

    def build(arch, input_shape, num_classes):
        widths = [int(w) for w in arch.split("-")]
        layers, c = [], input_shape[1]
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU()]
            c = w
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(c, num_classes)).eval()

    register_space("widths", build, input_shape=(1, 3, 16, 16), num_classes=10,
                   options=("8", "16", "32"), positions=2)
    try:
        r = client.post("/predict", json={"device": SHIPPED, "space": "widths",
                                          "archs": ["8-8", "32-32"]})
        assert r.status_code == 200, r.text
        got = [row["latency_ms"] for row in r.json()["predictions"]]
        np.testing.assert_allclose(got, predictor.predict_batch("widths", ["8-8", "32-32"],
                                                                SHIPPED), rtol=1e-5)
        bad = client.post("/predict", json={"device": SHIPPED, "space": "widths",
                                            "archs": ["8-64"]})
        assert 400 <= bad.status_code < 500 and "'64'" in bad.text
    finally:
        unregister_space("widths")
    gone = client.post("/predict", json={"device": SHIPPED, "space": "widths", "archs": ["8-8"]})
    assert gone.status_code == 422 and "unknown search space 'widths'" in gone.text
