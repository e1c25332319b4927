"""Python API: load the predictor, adapt it to a device, predict milliseconds.

    >>> p = Predictor.load()                       # the shipped checkpoint
    >>> p.adapt("myboard", ["a.onnx", "b.onnx", ...], [3.1, 7.4, ...])
    >>> p.predict(["c.onnx"], device="myboard")     # -> np.ndarray of ms
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from predictor.adaptation import (
    AUTO_WITH_KERNEL_SUM,
    STRATEGIES,
    DeviceState,
    adapt_with_residuals,
    predict,
    predict_with_spread,
)
from predictor.checkpoint import Checkpoint
from predictor.device_store import (
    list_device_files,
    load_device,
    model_fingerprint,
    save_device,
)
from predictor.errors import PredictorError
from predictor.features import FEATURE_SCHEMA
from predictor.graph import OpGraph, extract_graph
from predictor.graph_store import GraphStore
from predictor.onnx_io import InputShapes
from predictor.spaces.custom import space_setting
from predictor.stand_ins import (
    interpolation_ops,
    sequence_ops,
    stand_in_graph,
    volumetric_ops,
)

MIN_SHOTS = 5
# Unfamiliar op types below this share of a graph's work (MACs + other flops) are not
# reported: they cannot move its prediction much.
UNFAMILIAR_MIN_SHARE = 0.01
# ... except quantization ops, cheap themselves but a sign that the ops between them run
# in int8 (ONNX Runtime fuses a QDQ model's convolutions into QLinearConv).
QUANTIZATION_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
    "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul"})
DEFAULT_FINETUNE_STEPS = 20  # when the checkpoint's config sets none
SPACE_CHUNK = 1024  # search-space graphs per network call in `predict_batch`
_STORE_BATCH_ERROR = ("batch applies to models or OpGraphs, not to a GraphStore: re-batch "
                      "the graphs first (OpGraph.with_batch)")


# Per-inference costs the latency network serves: positive quantities regressed in log
# space, so a device calibrated on energy measurements predicts energy. (FPGA resources
# have their own checkpoint: `predictor.fpga_predict`, `latpred fpga`.)
METRICS: dict[str, str] = {"latency_ms": "ms", "energy_mj": "mJ"}
FPGA_METRICS = ("lut", "ff", "dsp", "bram_18k", "latency_cycles", "ii_cycles")


def check_metric(metric: str) -> str:
    """`metric` if this predictor serves it, else a clear error."""
    if metric in METRICS:
        return metric
    if metric in FPGA_METRICS:
        raise PredictorError(f"Metric '{metric}' is an FPGA resource: the latency checkpoint "
                             "does not serve it; use `latpred fpga MODEL.onnx ...`")
    raise PredictorError(f"Unknown metric '{metric}'; this checkpoint serves {list(METRICS)}")


def check_latencies(latencies_ms: Sequence[float], count: int,
                    metric: str = "latency_ms") -> np.ndarray:
    """Validate measured values of `metric`: as many as models, finite and positive."""
    y = np.asarray(latencies_ms, dtype=np.float64).reshape(-1)
    what = "latencies" if metric == "latency_ms" else f"{metric} values"
    if y.size != count:
        raise PredictorError(f"Got {y.size} {what} for {count} models; give one per model")
    bad = [i for i, v in enumerate(y) if not np.isfinite(v) or v <= 0]
    if bad:
        raise PredictorError(
            f"{what.capitalize()} must be finite and positive ({METRICS.get(metric, metric)}); "
            f"bad values at rows {bad[:10]}: {[float(y[i]) for i in bad[:10]]}")
    if y.size < MIN_SHOTS:
        raise PredictorError(f"Too few calibration samples: {y.size}; need at least {MIN_SHOTS}")
    return y


def usable_call_floor(call_floor_ms: float | None, latencies: np.ndarray, metric: str
                      ) -> float:
    """The floor `Predictor.adapt` subtracts: 0 without one, at most half the smallest
    latency; a clear error for a negative or non-finite floor, or one with energy."""
    if call_floor_ms is None or call_floor_ms == 0:
        return 0.0
    if not math.isfinite(call_floor_ms) or call_floor_ms < 0:
        raise PredictorError(f"call_floor_ms must be a finite time >= 0 ms, got {call_floor_ms}")
    if metric != "latency_ms":
        raise PredictorError(f"A call floor is a latency; the device is calibrated on {metric}")
    return float(min(call_floor_ms, 0.5 * float(latencies.min())))


class Predictor:
    """A checkpoint plus the devices it knows (shipped and calibrated)."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.model = checkpoint.model.eval()
        self.fingerprint = model_fingerprint(self.model)
        self.devices: dict[str, DeviceState] = {}
        self._infos: dict[str, dict[str, Any]] = {}
        self._paths: dict[str, Path] = {}  # device files and their mtimes, to notice
        self._stamps: dict[str, int] = {}  # recalibrations by other processes

    @classmethod
    def load(cls, path: str | Path | None = None) -> Predictor:
        """Load a checkpoint (default: the shipped one in `checkpoints/`)."""
        return cls(Checkpoint.load(path))

    def graphs(self, models: Sequence[Any], input_shape: InputShapes = None,
               batch: int | None = None) -> GraphStore:
        """Operator graphs of models: ONNX paths/bytes/ModelProtos, `OpGraph`s, or
        (torch module, example input) pairs; with `batch`, re-batched to that batch size
        (`OpGraph.with_batch`: exact for models whose activations lead with the batch).
        Op types the checkpoint never trained on become their stand-ins
        (`predictor.stand_ins`)."""
        if batch is not None and (type(batch) is not int or batch < 1):
            raise PredictorError(f"Bad batch {batch!r}: expected a positive integer")
        graphs = []
        for m in _model_list(models):
            if isinstance(m, OpGraph):
                graphs.append(m)
            elif isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], torch.nn.Module):
                graphs.append(extract_graph(m[0], example_input=m[1]))
            else:
                graphs.append(extract_graph(m, input_shape=input_shape))
        if batch is not None:
            graphs = [g.with_batch(batch) for g in graphs]
        trained = self.checkpoint.info.get("op_types")
        if trained is not None:  # ops it never trained on run as their stand-ins
            graphs = [stand_in_graph(g, trained) for g in graphs]
        return GraphStore.from_graphs(graphs)

    def adapt(self, device_name: str, models: Sequence[Any], latencies_ms: Sequence[float], *,
              metric: str = "latency_ms",
              input_shape: InputShapes = None, strategy: str = "auto",
              finetune_steps: int | None = None, save: bool = False,
              info: dict[str, Any] | None = None, batch: int | None = None,
              call_floor_ms: float | None = None) -> DeviceState:
        """Adapt to a device from measured models; with `save`, store it for later sessions.

        `batch`: the batch size the models were measured at, when their graphs hold
        another (e.g. batch-1 ONNX exports timed at batch 32 on a GPU). The device
        records it, and `predict` then runs models at that batch by default.

        `strategy`: "auto" (default) blends the candidate adaptations (the amortised
        embedding, fine-tuning, the nearest-known-device ensemble, op-class scales, kernel
        sums; see `predictor.adaptation.STRATEGIES`) with weights from their
        cross-validated errors on the measurements; "auto+kernelsum" is the geometric
        mean of that blend and "kernelsum+net" (what `calibration.calibrate` uses for a
        CPU's reference-set measurements); or name one of them. The strategy
        (for "auto" the heaviest candidate) is recorded in the device's
        `info["strategy"]`, the blend's weights in `info["blend"]`.

        `call_floor_ms`: the runtime's time for a network with next to no work
        (`predictor.measure.call_floor_ms`, timed the way the models were): the device is
        adapted on the latencies less it and adds it to every prediction, so that tiny
        models are not predicted at a fraction of it. At most half the smallest latency is
        used (a larger floor was not timed like the models).
        """
        names = ["auto", AUTO_WITH_KERNEL_SUM, *STRATEGIES]
        if strategy not in names:
            raise PredictorError(f"Unknown adaptation strategy '{strategy}'; use one of {names}")
        y = check_latencies(latencies_ms, len(models), check_metric(metric))
        floor = usable_call_floor(call_floor_ms, y, metric)
        if isinstance(models, GraphStore) and batch is not None:
            raise PredictorError(_STORE_BATCH_ERROR)
        store = (models if isinstance(models, GraphStore)
                 else self.graphs(models, input_shape, batch))
        steps = (finetune_steps if finetune_steps is not None
                 else self.checkpoint.config.finetune_steps or DEFAULT_FINETUNE_STEPS)
        support = store.batch(range(len(store)))
        log_y = torch.tensor(np.log(y - floor), dtype=torch.float32)
        lr = self.checkpoint.config.finetune_lr
        # The residuals say how wrong this device's predictions are on models it was not
        # adapted on (5-fold on the measurements): what a caller needs to keep a budget.
        state, strategy, residuals = adapt_with_residuals(
            self.model, support, log_y, strategy, finetune_steps=steps, lr=lr,
            known=self.known_devices())
        state.call_floor_ms = floor
        self.devices[device_name] = state
        self._infos[device_name] = {**(info or {}), "strategy": strategy, "metric": metric,
                                    "cv_log_residuals": [round(float(r), 5) for r in residuals],
                                    # in the metric's unit; the search bound depends on it
                                    "measured_range": [float(y.min()), float(y.max())],
                                    **({"batch": batch} if batch is not None else {}),
                                    "calibration_batches": graph_batches(store),
                                    **({"call_floor_ms": floor} if floor > 0 else {})}
        if state.labels:
            self._infos[device_name]["blend"] = {
                name: round(float(w), 4) for name, w in zip(state.labels, state.weights,
                                                            strict=True)}
        if save:
            path = save_device(device_name, state, self.fingerprint, self._infos[device_name])
            self._paths[device_name] = path
            self._stamps[device_name] = path.stat().st_mtime_ns
        else:
            self._paths.pop(device_name, None)
        return state

    def unfamiliar_ops(self, graph: OpGraph) -> dict[str, int]:
        """Op types in `graph` that no training graph of the checkpoint held, with their
        counts (e.g. {"LSTM": 1}): its prediction for such a model extrapolates. Ops that
        only move or reshape data (no flops: Squeeze, Identity...) are left out, and so are
        op types doing under UNFAMILIAR_MIN_SHARE of the graph's work (a BERT's Equal and
        Where on its attention mask) unless they quantize (QUANTIZATION_OPS). 3-D
        convolutions and pools count as "Conv (3-D)" and so on (no training graph held
        volumes; `predictor.stand_ins.fold_volumetric`), 1-D ones as "Conv (1-D)"
        (`unfold_sequence`), cubic interpolation as "Resize (cubic)". Empty when the checkpoint does not record its training op
        types."""
        trained = self.checkpoint.info.get("op_types")
        if trained is None:
            return {}
        known = set(trained)
        work: Counter = Counter()
        count: Counter = Counter()
        for n in graph.nodes:
            for op in {n.op_type, n.activation} - known - {""}:
                work[op] += n.macs + n.other_flops
                count[op] += 1
        total = max(graph.macs + graph.other_flops, 1)
        return {**{op: count[op] for op in count
                   if work[op] >= UNFAMILIAR_MIN_SHARE * total or op in QUANTIZATION_OPS},
                **volumetric_ops(graph), **sequence_ops(graph), **interpolation_ops(graph)}

    def pick_calibration(self, models: Sequence[Any] | GraphStore, n: int = 10, *,
                         input_shape: InputShapes = None) -> list[int]:
        """Which `n` of `models` to time to calibrate a new device: indices, in pick
        order, of models that together cover the pool's sizes and the ways their
        relative costs differ across the known devices
        (`calibration.pick_calibration_models`). At least MIN_SHOTS."""
        from predictor.calibration import latency_signatures, pick_calibration_models

        if type(n) is not int or n < MIN_SHOTS:
            raise PredictorError(f"Pick at least {MIN_SHOTS} calibration models, not {n!r}")
        store = models if isinstance(models, GraphStore) else self.graphs(models, input_shape)
        if n > len(store):
            raise PredictorError(f"Cannot pick {n} calibration models from {len(store)}")
        return pick_calibration_models(latency_signatures(self, store), n)

    def known_devices(self) -> list[DeviceState]:
        """The checkpoint's training devices (shipped embeddings), for the nearest-device
        ensemble; empty when none match this checkpoint."""
        if not hasattr(self, "_known"):
            self._known = []
            for name in list_device_files():
                try:
                    state, info = load_device(name, self.fingerprint)
                except PredictorError:
                    continue  # another checkpoint's or a corrupt file: not a reference
                if info.get("kind") == "training device":
                    self._known.append(state)
        return self._known

    def space_graphs(self, space: str, archs: Sequence[Any], *,
                     input_shape: Sequence[int] | None = None,
                     num_classes: int | None = None, graph: str = "eager") -> GraphStore:
        """Operator graphs of search-space architectures (NB201 arch strings or op lists,
        FBNet block lists or '-'-joined names), assembled from cached per-segment templates
        (`predictor.space_templates`): the graphs of the ONNX path, without building ONNX;
        `graph`: every op the network runs ("eager") or the export's ("exported").

        Raises:
            InvalidArchError: a malformed arch, naming it and the problem.
        """
        from predictor.spaces.custom import custom_space

        custom = custom_space(space)
        if custom is not None:  # a registered space: its builder, through the general path
            if graph != "eager":
                raise PredictorError(f"Graph mode {graph!r} applies to nb201 and fbnet; a "
                                     f"registered space's builder decides its graph")
            return self.graphs([custom.graph(a, input_shape, num_classes) for a in archs])
        from predictor.space_templates import space_templates

        return space_templates(space, input_shape, num_classes, graph).store(list(archs))

    def predict_batch(self, space: str, archs: Sequence[Any], device: str, *,
                      input_shape: Sequence[int] | None = None,
                      num_classes: int | None = None, metric: str | None = None,
                      with_spread: bool = False, graph: str | None = None
                      ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Predicted latency in ms of search-space architectures on `device`, (n,); with
        `with_spread`, also its spread (see `predict_with_spread`).

        `input_shape`, `num_classes` and `graph` (see `space_graphs`) default to the setting
        the device was calibrated with on this space, else to the space's benchmark setting
        at the device's batch size (e.g. 256 for HELP's `1080ti_256`, or the batch given to
        `adapt`) and "eager".
        """
        info = self.device_info(device)
        if info.get("space") == space:  # calibrated on this space: its setting by default
            input_shape = input_shape or info.get("input_shape")
            num_classes = num_classes or info.get("num_classes")
            graph = graph or info.get("graph")
        graph = graph or "eager"
        if input_shape is None:
            input_shape = (device_batch(info) or 1, *space_setting(space)[0][1:])
        archs = list(archs)
        state = self._state(device, metric)

        def part(sub: list) -> tuple[torch.Tensor, torch.Tensor | None]:
            store = self.space_graphs(space, sub, input_shape=input_shape,
                                      num_classes=num_classes, graph=graph)
            return _run_batch(self.model, store.batch(range(len(store)), gather=False), state,
                              with_spread)

        # Search-space graphs are small: bigger network calls share more node states
        # (`encoder.UniquePlan`), about a fifth faster than the general path's 256.
        return _collect([part(sub) for sub in split_parts(archs, SPACE_CHUNK)], with_spread)

    def device(self, name: str) -> DeviceState:
        """The adapted state of device `name` (calibrated here or loaded from its file;
        reloaded when the file changed, e.g. recalibrated by another process)."""
        if name in self.devices:
            path = self._paths.get(name)
            if path is None:
                return self.devices[name]  # adapted in this process and not saved
            try:
                if path.stat().st_mtime_ns == self._stamps.get(name):
                    return self.devices[name]
            except OSError:
                pass
        path = list_device_files().get(name)
        state, info = load_device(name, self.fingerprint)
        self.devices[name] = state
        self._infos[name] = info
        if path is not None:
            self._paths[name] = path
            self._stamps[name] = path.stat().st_mtime_ns
        return state

    def device_metric(self, name: str) -> str:
        """What device `name` predicts: "latency_ms" unless calibrated on another metric."""
        return self.device_info(name).get("metric", "latency_ms")

    def check_device_metric(self, name: str, metric: str) -> None:
        check_metric(metric)
        has = self.device_metric(name)
        if has != metric:
            raise PredictorError(
                f"Device '{name}' was calibrated on {has}, not {metric}; calibrate a device "
                f"from {metric} measurements (latpred calibrate NAME --metric {metric} ...)")

    def device_info(self, name: str) -> dict[str, Any]:
        """What is stored about device `name` (kind, batch size, provenance, strategy...)."""
        self.device(name)
        return self._infos.get(name, {})

    def predict(self, models: Sequence[Any] | GraphStore, device: str, *,
                input_shape: InputShapes = None, metric: str | None = None,
                chunk: int = 256, batch: int | None = None) -> np.ndarray:
        """Predicted latency in ms (or the device's metric, e.g. energy in mJ for a device
        calibrated on energy), one per model, (n,) float64.

        With `metric`, the device must have been calibrated on that metric (clear error
        otherwise). `batch` runs the models at that batch size (see `graphs`); by default
        at the batch the device was calibrated at with `adapt(..., batch=B)`, else at
        each model's own (a `GraphStore` is always taken as it is).
        """
        state, store = self._prepare(models, device, input_shape, metric, batch)
        return self._run_store(store, state, chunk, with_spread=False)

    def predict_with_spread(self, models: Sequence[Any] | GraphStore, device: str, *,
                            input_shape: InputShapes = None, metric: str | None = None,
                            chunk: int = 256, batch: int | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
        """(`predict`, the spread (n,)): the standard deviation of log-latency over the
        candidate adaptations of the device's measurements, an uncertainty to keep a
        budget with (`predict * exp(k * spread)`). Zeros for a device adapted with a
        named strategy or shipped as a training device."""
        state, store = self._prepare(models, device, input_shape, metric, batch)
        return self._run_store(store, state, chunk, with_spread=True)

    def _run_store(self, store: GraphStore, state: DeviceState, chunk: int,
                   with_spread: bool) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """`store`'s predictions (and spread), `chunk` graphs per network call."""
        return _collect([_run_batch(self.model, store.batch(ids, gather=False), state,
                                    with_spread)
                         for ids in split_parts(range(len(store)), chunk)], with_spread)

    def _state(self, device: str, metric: str | None) -> DeviceState:
        """The device's state, checked against `metric` when given."""
        state = self.device(device)
        if metric is not None:
            self.check_device_metric(device, metric)
        return state

    def _prepare(self, models: Sequence[Any] | GraphStore, device: str,
                 input_shape: InputShapes, metric: str | None, batch: int | None = None
                 ) -> tuple[DeviceState, GraphStore]:
        """The device's state (checked against `metric` when given) and the models' graphs
        at `batch`, else at the device's calibration batch, else as they are."""
        state = self._state(device, metric)
        if isinstance(models, GraphStore):
            if batch is not None:
                raise PredictorError(_STORE_BATCH_ERROR)
            return state, models
        if batch is None:  # `_state` loaded the device and its info
            batch = device_batch(self._infos.get(device, {}))
        return state, self.graphs(models, input_shape, batch)


def _model_list(models: Any) -> Sequence[Any]:
    """`models` as a sequence of models: one model given alone (a path, ONNX bytes, a
    ModelProto, an `OpGraph`, a (module, example input) pair) becomes a list of one, where
    iterating it would walk a path's characters or a pair's halves."""
    if isinstance(models, (str, os.PathLike, bytes, bytearray, onnx.ModelProto, OpGraph)):
        return [models]
    if isinstance(models, tuple) and len(models) == 2 and isinstance(models[0], torch.nn.Module):
        return [models]
    if isinstance(models, torch.nn.Module):
        raise PredictorError("A torch module needs an example input: pass (module, example_input)")
    return models


def device_batch(info: dict[str, Any]) -> int | None:
    """The batch a device's measurements ran at, which its predictions default to: the
    batch given to `adapt`, else a training device's table batch (HELP's `1080ti_256` times
    batches of 256; a batch-1 ONNX predicted there must run at 256, not 1). None (batch 1
    or not recorded): each model's own batch."""
    if info.get("batch") is not None:
        return int(info["batch"])
    table_batch = int(info.get("batch_size") or 1)
    return table_batch if table_batch != 1 else None


def graph_batches(store: GraphStore) -> list[int]:
    """The distinct batch sizes of the graphs in `store` (from their `log_batch` feature)."""
    column = FEATURE_SCHEMA.graph_features.index("log_batch")
    return sorted({round(math.expm1(float(v))) for v in store.graph_attr[:, column]})


def calibration_batches(info: dict[str, Any]) -> list[int]:
    """The batch sizes a device's measurements ran at: recorded by `Predictor.adapt`, else
    (devices stored before it recorded them, training devices) `device_batch` or 1."""
    return list(info.get("calibration_batches") or [device_batch(info) or 1])


def _run_batch(model: torch.nn.Module, batch, state: DeviceState,
               with_spread: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-predictions, spread or None) of one batch."""
    with torch.inference_mode():  # thread-local: set in the thread that runs the batch
        if with_spread:
            return predict_with_spread(model, batch, state)
        return predict(model, batch, state), None


def _collect(parts: list[tuple[torch.Tensor, torch.Tensor | None]], with_spread: bool
             ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Milliseconds (n,) float64 from the parts' log-predictions, with the spread if asked."""
    log_ms = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0)
    ms = torch.exp(log_ms).numpy().astype(np.float64)
    if not with_spread:
        return ms
    spread = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0)
    return ms, spread.numpy().astype(np.float64)


def _one_thread_in_forked_child() -> None:
    """GNU OpenMP is not fork-safe: a child forked after the parent's thread ran torch on
    several threads waits forever for the parent's OpenMP workers, which fork did not
    copy, in its first parallel op. A team of one starts none; PyTorch's DataLoader
    workers do the same. Forked workers (a multiprocessing pool of predictions) would
    share the cores anyway; `torch.set_num_threads` in the child raises it again."""
    torch.set_num_threads(1)


os.register_at_fork(after_in_child=_one_thread_in_forked_child)


def split_parts(items: Sequence, chunk: int) -> list:
    """`items` in consecutive parts of at most `chunk`.

    The parts run one after another on the calling thread. Running them on two Python
    threads instead overlapped one part's serial steps with the other's matmuls, but
    every thread that runs torch gets its own team of OpenMP threads. With more OpenMP
    threads than cores, libgomp's workers stop spinning between parallel regions and
    have to be woken for each of a small graph's many small ops. That slowed every later
    small call in the process about 5x (single prediction p50 1.0 -> 5 ms on 2 cores).
    Large batches were no faster on threads (stop 19, `benchmark_throughput.py`)."""
    return [items[i:i + chunk] for i in range(0, len(items), chunk)]
