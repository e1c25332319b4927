"""`latpred serve`: an HTTP JSON service over one `Predictor`, for teams sharing devices.

Endpoints (JSON in, JSON out; `GET /docs` shows the schemas):

* `GET /health` -> status, checkpoint fingerprint, number of devices.
* `GET /devices` -> every known device: name, kind, space, strategy, date, samples, usable.
* `POST /predict` -> latency in ms of search-space archs (`space` + `archs`) or of ONNX
  models uploaded as base64 (`models`), on a known device, in input order; on a device
  calibrated on energy, `energy_mj` instead (an optional `metric` field checks which).
* `POST /calibrate` -> adapt to a new device from measured archs or uploaded models
  (`latency_ms`, or `energy_mj` for an energy device) and store it (under the device
  lock: a concurrent calibration of the same name gets 409).

Clients never name files: models arrive as bytes, devices by name. The body size limit
is enforced before parsing (413); schema violations and malformed JSON get 422, a
`PredictorError` 400 (404 for an unknown device, 409 for a busy one). Inference runs in
FastAPI's thread pool so the event loop stays free, and one lock serialises the use of
the serving `Predictor` (its device cache reloads a device whose file changed), so a
device calibrated by one request is seen by every later prediction.
"""

from __future__ import annotations

import base64
import binascii
import copy
import logging
import re
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from predictor import __version__
from predictor.api import Predictor
from predictor.calibration import (
    CalibrationLockedError,
    device_lock,
    measured_graphs,
    provenance_call_floor,
)
from predictor.corpus import SPACES
from predictor.device_store import describe_devices, device_dirs, list_device_files, load_device
from predictor.errors import PredictorError, UnknownDeviceError
from predictor.graph import OpGraph, extract_graph
from predictor.graph_store import GraphStore
from predictor.search import below_calibration, uncertain, upper_estimate
from predictor.spaces.custom import custom_space, registered_spaces

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 2**20  # an NB201 ONNX with weights is ~3 MB in base64
MAX_ARCHS = 1024  # per predict request
MAX_MODELS = 64  # ONNX uploads per request
MAX_CALIBRATION_SAMPLES = 256
MAX_DIM = 100_000  # per input_shape entry

DEVICE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$"


def _b64decode(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"onnx_b64 must be a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"onnx_b64 is not valid base64 ({exc})") from None


def _check_device_name(name: str) -> str:
    if re.fullmatch(DEVICE_NAME, name) is None:
        raise ValueError(f"invalid device name {name[:140]!r}: use 1-128 letters, digits and "
                         "'.', '_', '@', '+', '-', starting with a letter or digit")
    return name


DeviceName = Annotated[str, AfterValidator(_check_device_name),
                       Field(description="e.g. pixel3@nb201")]
Arch = Annotated[str, Field(min_length=1, max_length=1024)]
Dim = Annotated[int, Field(ge=1, le=MAX_DIM)]
OnnxBytes = Annotated[bytes, BeforeValidator(_b64decode)]
Latency = Annotated[float, Field(ge=1e-6, le=1e7, allow_inf_nan=False,
                                 description="measured latency in ms, 1 ns to ~3 h")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class OnnxUpload(_Strict):
    name: str = Field(min_length=1, max_length=200, description="echoed in the reply")
    onnx_b64: OnnxBytes = Field(description="the ONNX file, base64-encoded")


class _Models(_Strict):
    """Either search-space archs (`space` + `archs`) or uploaded ONNX `models`."""

    space: str | None = Field(None, description=f"one of {sorted(SPACES)} or a registered "
                                                "space (`latpred serve --plugin`), with `archs`")
    archs: list[Arch] | None = Field(None, min_length=1, max_length=MAX_ARCHS)
    models: list[OnnxUpload] | None = Field(None, min_length=1, max_length=MAX_MODELS)
    input_shape: list[Dim] | None = Field(None, min_length=1, max_length=8)
    num_classes: int | None = Field(None, ge=1, le=MAX_DIM)
    graph: Literal["eager", "exported"] | None = Field(
        None, description="with `archs`: every op the network runs (eager, default) or the "
                          "exported ONNX graph's (a runtime compiling the exported file)")

    @field_validator("space")
    @classmethod
    def _known_space(cls, space: str | None) -> str | None:
        if space is not None and space not in SPACES and custom_space(space) is None:
            raise ValueError(f"unknown search space {space!r}; known: "
                             f"{[*sorted(SPACES), *registered_spaces()]}")
        return space

    @model_validator(mode="after")
    def _one_source(self):
        if (self.archs is None) == (self.models is None):
            raise ValueError("give exactly one of `archs` (with `space`) or `models` "
                             "(ONNX uploads as base64)")
        if self.archs is not None and self.space is None:
            raise ValueError(f"`archs` needs `space`, one of "
                             f"{[*sorted(SPACES), *registered_spaces()]}")
        if self.models is not None and (self.space is not None or self.num_classes is not None
                                        or self.graph is not None):
            raise ValueError("`space`, `num_classes` and `graph` apply to `archs` only, not "
                             "to `models`")
        return self

    def count(self) -> int:
        return len(self.archs if self.archs is not None else self.models)

    def labels(self) -> list[tuple[str, str]]:
        """("arch" or "model", value) per item, in input order."""
        if self.archs is not None:
            return [("arch", a) for a in self.archs]
        return [("model", m.name) for m in self.models]


Metric = Literal["latency_ms", "energy_mj"]


class PredictRequest(_Models):
    device: DeviceName
    metric: Metric | None = Field(None, description="what the device must predict "
                                                    "(default: whatever it was calibrated on)")
    upper: bool = Field(False, description="also each prediction's upper estimate (costs "
                        "several times the prediction on a calibrated device)")


class CalibrateRequest(_Models):
    name: DeviceName = Field(description="the device to store")
    latency_ms: list[Latency] | None = Field(None, min_length=1,
                                             max_length=MAX_CALIBRATION_SAMPLES)
    energy_mj: list[Latency] | None = Field(
        None, min_length=1, max_length=MAX_CALIBRATION_SAMPLES,
        description="instead of latency_ms: calibrates a device that predicts energy")
    strategy: str = Field("auto", max_length=64)
    provenance: dict[str, str | int | float | bool] | None = Field(
        None, max_length=32, description="how the latencies were measured (runtime, threads...)")

    @model_validator(mode="after")
    def _one_latency_each(self):
        if self.archs is not None and len(self.archs) > MAX_CALIBRATION_SAMPLES:
            raise ValueError(f"at most {MAX_CALIBRATION_SAMPLES} calibration samples, "
                             f"got {len(self.archs)}")
        if (self.latency_ms is None) == (self.energy_mj is None):
            raise ValueError("give exactly one of `latency_ms` or `energy_mj`")
        if len(self.values) != self.count():
            raise ValueError(f"got {len(self.values)} {self.metric} values for {self.count()} "
                             f"{'archs' if self.archs is not None else 'models'}; "
                             "give one per item, in the same order")
        return self

    @property
    def metric(self) -> str:
        return "latency_ms" if self.latency_ms is not None else "energy_mj"

    @property
    def values(self) -> list[float]:
        return self.latency_ms if self.latency_ms is not None else self.energy_mj


class Prediction(BaseModel):
    arch: str | None = None
    model: str | None = None
    latency_ms: float | None = None
    energy_mj: float | None = None
    upper: float | None = Field(None, description="upper estimate in the metric's unit, the "
                                "bound latpred search keeps budgets with")
    unfamiliar_ops: dict[str, int] | None = Field(
        None, description="op types of an uploaded model that no training graph held, with "
        "their counts: its prediction extrapolates (absent when there are none)")
    uncertain: bool | None = Field(
        None, description="with upper: true where the device's candidate adaptations "
        "disagree by more than 1.5x (absent otherwise)")
    below_calibration: bool | None = Field(
        None, description="true where the prediction lies below the smallest measurement "
        "the device was calibrated on: extrapolated, often less accurate (absent otherwise)")


class PredictResponse(BaseModel):
    device: str
    metric: str
    predictions: list[Prediction]


class BodySizeLimit:
    """ASGI middleware: refuse (413) a request body over `max_bytes` before anything
    parses it, by its Content-Length or, when streamed, as soon as the count passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(int(declared), scope, receive, send)
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._refuse(total, scope, receive, send, at_least=True)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, size: int, scope: Scope, receive: Receive, send: Send,
                      at_least: bool = False) -> None:
        detail = (f"Request body too large: {'over ' if at_least else ''}{size} bytes; the "
                  f"limit is {self.max_bytes} bytes. Send fewer items per request, or start "
                  "the server with a larger --max-body-mb")
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


class ProtectedDeviceError(PredictorError):
    """A calibration that would overwrite a shipped training device."""


def _describe_validation(errors: Sequence[dict[str, Any]]) -> str:
    """One readable line for pydantic/FastAPI validation errors."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        pos = first["loc"][1] if len(first.get("loc", ())) > 1 else "?"
        reason = (first.get("ctx") or {}).get("error", "")
        return f"Malformed JSON in the request body at character {pos}: {reason}".rstrip(": ")
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return "Request body is missing: send a JSON object (Content-Type: application/json)"
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ())[1:]) or "body"
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "Invalid request: " + "; ".join(parts) + more


def _status(exc: PredictorError) -> int:
    if isinstance(exc, UnknownDeviceError):
        return 404
    if isinstance(exc, (CalibrationLockedError, ProtectedDeviceError)):
        return 409
    return 400


class PredictionService:
    """The work behind the endpoints; every call into the predictor holds `lock`.

    Calibrations run on their own copy of the model (`calibrator`, one at a time under
    `calibration_lock`): a calibration takes seconds that predictions should not wait
    for. The stored device file is what the serving predictor then loads (it reloads a
    device whose file changed).
    """

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.lock = threading.Lock()
        self.calibrator = Predictor(copy.deepcopy(predictor.checkpoint))
        self.calibration_lock = threading.Lock()
        with self.lock:
            predictor.known_devices()  # memoised lazily; fill it before threads race on it
            self.calibrator.known_devices()

    def _graphs(self, req: _Models, measured: bool = False) -> GraphStore:
        """Operator graphs of the request's items (templates are thread-safe)."""
        if req.archs is not None:
            return self.predictor.space_graphs(req.space, req.archs,
                                               input_shape=req.input_shape,
                                               num_classes=req.num_classes,
                                               graph=req.graph or "eager")
        # stand-ins as `predict`
        return self.predictor.graphs(self._uploaded_graphs(req, measured))

    def _uploaded_graphs(self, req: _Models, measured: bool = False) -> list[OpGraph]:
        """`measured`: the uploads were timed, so `input_shape` fixes dynamic dims only (a
        model with fixed inputs ran at its own shape; `calibration.measured_graphs`)."""
        graphs = []
        shape = tuple(req.input_shape) if req.input_shape else None
        for i, upload in enumerate(req.models):
            try:  # pure: ONNX bytes in, graph out; safe outside the lock
                if measured and shape is not None:
                    graphs.extend(measured_graphs([upload.onnx_b64], shape))
                else:
                    graphs.append(extract_graph(upload.onnx_b64, input_shape=shape))
            except PredictorError as exc:
                raise type(exc)(f"models[{i}] ({upload.name!r}): {exc}") from None
        return graphs

    def predict(self, req: PredictRequest) -> PredictResponse:
        graphs = self._uploaded_graphs(req) if req.models is not None else None
        store = self.predictor.graphs(graphs) if graphs is not None else None
        unfamiliar = ([self.predictor.unfamiliar_ops(g) or None for g in graphs]
                      if graphs is not None else [None] * len(req.archs))
        with self.lock:
            self.predictor.device(req.device)  # unknown device: 404 before any work
            metric = self.predictor.device_metric(req.device)
            if req.metric is not None:
                self.predictor.check_device_metric(req.device, req.metric)
            if store is None:
                out = self.predictor.predict_batch(req.space, req.archs, req.device,
                                                   input_shape=req.input_shape,
                                                   num_classes=req.num_classes,
                                                   with_spread=req.upper, graph=req.graph)
            elif req.upper:
                out = self.predictor.predict_with_spread(store, req.device)
            else:
                out = self.predictor.predict(store, req.device)
            ms, spread = out if req.upper else (out, None)
            upper = (upper_estimate(self.predictor, req.device, ms, spread) if req.upper
                     else [None] * len(ms))
            unsure = uncertain(spread) if req.upper else np.zeros(len(ms), dtype=bool)
            below = below_calibration(self.predictor.device_info(req.device), ms)
        bad = [i for i, v in enumerate(ms) if not np.isfinite(v)]
        if bad:
            raise PredictorError(f"Predicted {metric} is not finite for items {bad[:10]}; "
                                 "the inputs are far outside what the predictor knows")
        return PredictResponse(device=req.device, metric=metric, predictions=[
            Prediction(**{kind: label, metric: float(v), "upper": u if u is None else float(u),
                          "unfamiliar_ops": ops, "uncertain": True if flag else None,
                          "below_calibration": True if low else None})
            for (kind, label), v, u, ops, flag, low in zip(req.labels(), ms, upper, unfamiliar,
                                                           unsure, below, strict=True)])

    def calibrate(self, req: CalibrateRequest) -> dict[str, Any]:
        if _stored_kind(req.name) == "training device":
            raise ProtectedDeviceError(
                f"Device '{req.name}' is a shipped training device and cannot be "
                "recalibrated; choose another name")
        kind, _ = req.labels()[0]
        info = {"kind": "calibrated device", "date": datetime.now(timezone.utc).isoformat(),
                "space": req.space or "onnx",
                "provenance": {"source": f"latpred serve {__version__}",
                               **(req.provenance or {})},
                "measurements": [{kind: label, req.metric: y}
                                 for (_, label), y in zip(req.labels(), req.values,
                                                          strict=True)]}
        if req.input_shape:
            info["input_shape"] = list(req.input_shape)
        if req.num_classes:
            info["num_classes"] = req.num_classes
        if req.space:
            info["graph"] = req.graph or "eager"
        store = self._graphs(req, measured=True) if req.models is not None else None
        with device_lock(req.name, device_dirs()[0]), self.calibration_lock:
            if store is None:
                store = self._graphs(req)
            self.calibrator.adapt(req.name, store, req.values, metric=req.metric,
                                  strategy=req.strategy, save=True, info=info,
                                  call_floor_ms=provenance_call_floor(
                                      info["provenance"], req.metric, req.space))
            stored = load_device(req.name, self.calibrator.fingerprint)[1]
        log.info("calibrated %s from %d samples (strategy %s)", req.name, len(req.values),
                 stored.get("strategy"))
        return {"device": req.name, "info": stored}

    def devices(self) -> list[dict[str, Any]]:
        out = []
        for d in describe_devices():
            samples = d.get("measurements") or d.get("support_indices") or []
            out.append({"name": d["name"], "kind": d.get("kind"), "space": d.get("space"),
                        "strategy": d.get("strategy"), "date": d.get("date"),
                        "metric": d.get("metric", "latency_ms"),
                        "samples": len(samples),
                        "usable": d.get("checkpoint") == self.predictor.fingerprint,
                        **({"error": d["error"]} if "error" in d else {})})
        return out


def _stored_kind(name: str) -> str | None:
    """The `kind` of a stored device, or None when there is none (or it is unreadable)."""
    if name not in list_device_files():
        return None
    try:
        return load_device(name)[1].get("kind")
    except PredictorError:
        return None


def create_app(predictor: Predictor, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app serving `predictor`; see the module docstring for the endpoints."""
    service = PredictionService(predictor)
    app = FastAPI(title="latpred", version=__version__,
                  description="Meta-learned hardware latency predictor")
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in exc.errors()]
        detail = _describe_validation(exc.errors())
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type and request.method == "POST":
            detail = (f"Request body must be JSON: send Content-Type: application/json "
                      f"(got {content_type or 'none'!r})")
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    @app.exception_handler(PredictorError)
    async def _user_error(request: Request, exc: PredictorError) -> JSONResponse:
        detail = str(exc)
        if isinstance(exc, UnknownDeviceError):
            detail += "; over HTTP, calibrate one with POST /calibrate"
        return JSONResponse({"detail": detail, "error": type(exc).__name__},
                            status_code=_status(exc))

    # Plain `def` endpoints run in FastAPI's thread pool: inference never blocks the loop.
    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "checkpoint": predictor.fingerprint,
                "devices": len(list_device_files())}

    @app.get("/devices")
    def devices() -> dict[str, Any]:
        return {"devices": service.devices()}

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True)
    def predict(req: PredictRequest) -> PredictResponse:
        return service.predict(req)

    @app.post("/calibrate")
    def calibrate(req: CalibrateRequest) -> dict[str, Any]:
        return service.calibrate(req)

    return app
