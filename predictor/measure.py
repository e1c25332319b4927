"""Honest latency measurement: time a model on this machine until its median is stable.

Warm-up runs, then timed runs (`time.perf_counter_ns`) until at least `min_runs` are done
and the 95% confidence interval of the median (order-statistic interval) is narrower than
`target_rel_ci` x median, or the `max_runs` / `max_seconds` budget is spent. Optional
energy per inference comes from a cumulative hardware counter (NVML for NVIDIA GPUs,
RAPL for CPUs, see `predictor.energy`) with the idle power subtracted. The provenance
(CPU, GPU, versions, settings) travels with the CSV files of `predictor.measurements`.

    m = measure_onnx("model.onnx", threads=1, input_shape=(1, 3, 224, 224))
    m.latency_ms, m.p10_ms, m.p90_ms, m.cv, m.noisy     # milliseconds per inference

Several models are best measured with `measure_many`, which corrects for the machine's
speed drifting between them (`SpeedProbe`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from predictor.energy import ENERGY_SECONDS, measure_energy, open_energy_meter
from predictor.errors import InvalidModelError, MeasurementError
from predictor.errors import first_line as _first_line
from predictor.onnx_io import InputShapes, read_model, resolve_input_shapes

if TYPE_CHECKING:  # torch is imported lazily: timing ONNX models must not pay for it
    import torch

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "torch", "openvino")
DEVICES = ("cpu", "cuda")
GRAPH_OPTIMIZATIONS = ("all", "extended", "basic", "disabled")
_ORT_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED",
               "basic": "ORT_ENABLE_BASIC", "disabled": "ORT_DISABLE_ALL"}
NOISY_CV = 0.10  # coefficient of variation above which a measurement is flagged noisy
# The CV is robust: (p90 - p10) / median over the width of a normal's 10-90 % range in
# standard deviations (2 x 1.2816), so it equals std / mean for normal run times. A few
# stalls (a 2-thread ONNX Runtime preempted on a 2-core machine: one run 100x the median)
# made std / mean 1.5-1.9 while p10..p90 stayed within 3 % and the median was exact.
_NORMAL_P10_P90_WIDTH = 2 * 1.2815516
_Z95 = 1.959964


@dataclass(frozen=True)
class Measurement:
    """Latency of one model on this machine: times in ms per inference, energy in mJ.

    `model` is the path as given, or `<bytes>`, `<ModelProto:name>`, `<torch:Class>`
    (angle brackets mark names that are not paths). `ci_rel` is the achieved 95% CI
    half-width of the median divided by the median.
    """

    model: str
    latency_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    runs: int
    cv: float
    noisy: bool
    noisy_reason: str | None = None
    ci_rel: float = 0.0
    energy_mj: float | None = None
    energy_note: str | None = None
    speed_factor: float = 1.0  # times were multiplied by this (`measure_many`'s drift correction)


# ----------------------------------------------------------------------------- timing
def median_ci_rel(times_ms: Sequence[float] | np.ndarray) -> float:
    """Half-width of the 95% order-statistic CI of the median, relative to the median."""
    x = np.sort(np.asarray(times_ms, dtype=np.float64))
    n = len(x)
    if n == 0:
        return math.inf
    half = _Z95 * math.sqrt(n) / 2
    lo = min(n - 1, max(0, math.floor(n / 2 - half) - 1))  # 1-based rank floor(n/2 - h)
    hi = min(n - 1, max(0, math.ceil(n / 2 + half)))  # 1-based rank ceil(1 + n/2 + h)
    median = float(np.median(x))
    return (x[hi] - x[lo]) / 2 / median if median > 0 else math.inf


def time_runs(
    run: Callable[[], object],
    *,
    min_runs: int = 10,
    max_runs: int = 1000,
    max_seconds: float = 5.0,
    warmup: int = 5,
    target_rel_ci: float = 0.02,
) -> np.ndarray:
    """Call `run` `warmup` times, then time it until the median is stable.

    Stops once `min_runs` are done and `median_ci_rel` <= `target_rel_ci`, or after
    `max_runs` runs, or when the timed runs (warm-up excluded) have used `max_seconds`;
    at least one run is always timed.

    Returns:
        (runs,) float64 wall-clock times in ms, in call order.
    """
    if min_runs < 1 or max_runs < 1 or warmup < 0 or max_seconds <= 0 or target_rel_ci <= 0:
        raise MeasurementError(
            f"Bad timing budget min_runs={min_runs}, max_runs={max_runs}, warmup={warmup}, "
            f"max_seconds={max_seconds}, target_rel_ci={target_rel_ci}: runs and seconds must "
            "be positive (warmup >= 0)")
    for _ in range(warmup):
        run()
    times: list[int] = []
    deadline = time.perf_counter_ns() + int(max_seconds * 1e9)
    while len(times) < max_runs:
        t0 = time.perf_counter_ns()
        run()
        t1 = time.perf_counter_ns()
        times.append(t1 - t0)
        if t1 >= deadline:
            break
        if len(times) >= min_runs and median_ci_rel(times) <= target_rel_ci:
            break
    return np.asarray(times, dtype=np.float64) / 1e6


def summarize(model: str, times_ms: Sequence[float] | np.ndarray, *,
              min_runs: int = 1) -> Measurement:
    """Median, p10, p90, mean, std (ms), robust CV and the noisy flag of timed runs."""
    x = np.asarray(times_ms, dtype=np.float64)
    if x.size == 0:
        raise MeasurementError(f"{model}: no timed runs to summarize")
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    p10, p90 = np.percentile(x, [10, 90])
    median = float(np.median(x))
    cv = float((p90 - p10) / _NORMAL_P10_P90_WIDTH / median) if median > 0 else 0.0
    reasons = []
    if cv > NOISY_CV:
        reasons.append(f"CV {cv:.2f} > {NOISY_CV:.2f}: run times vary a lot (other load, "
                       "frequency scaling?); close other programs, pin --threads or raise "
                       "--max-seconds")
    if x.size < min_runs:
        reasons.append(f"only {x.size} runs fit the time budget (min_runs={min_runs}); "
                       "raise --max-seconds")
    return Measurement(
        model=model, latency_ms=median, p10_ms=float(p10), p90_ms=float(p90),
        mean_ms=mean, std_ms=std, runs=int(x.size), cv=cv, noisy=bool(reasons),
        noisy_reason="; ".join(reasons) or None, ci_rel=float(median_ci_rel(x)))


# ----------------------------------------------------------------------------- inputs
def _random_array(rng: np.random.Generator, name: str, shape: tuple[int, ...],
                  elem_type: int) -> np.ndarray:
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        dtype = np.dtype("O")
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":  # small values stay valid as indices (Gather, Embedding)
        return rng.integers(0, 4, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    raise InvalidModelError(f"Input '{name}' has element type "
                            f"{onnx.TensorProto.DataType.Name(elem_type)}, which cannot be fed "
                            "random data; supported: float, int, uint and bool tensors")


def make_inputs(
    model: onnx.ModelProto,
    *,
    input_shape: InputShapes = None,
    batch: int | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random feeds of the right dtype for every run-time input (initializers excluded).

    Args:
        input_shape: shape of the first input, or a mapping input name -> shape; dims of
            other inputs that share their names (e.g. `batch`, `seq`) follow
            (`onnx_io.resolve_input_shapes`).
        batch: overrides dim 0 of every input.
    """
    init_names = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in init_names]
    shapes = resolve_input_shapes(inputs, input_shape, batch)
    rng = np.random.default_rng(seed)
    return {v.name: _random_array(rng, v.name, shapes[v.name], v.type.tensor_type.elem_type)
            for v in inputs}


# ----------------------------------------------------------------------------- backends
def _check_options(backend: str, device: str, threads: int | None, batch: int | None,
                   graph_optimization: str) -> None:
    for what, value, known in (("backend", backend, BACKENDS), ("device", device, DEVICES),
                               ("graph_optimization", graph_optimization, GRAPH_OPTIMIZATIONS)):
        if value not in known:
            raise MeasurementError(f"Unknown {what} {value!r}; known: {list(known)}")
    for what, value in (("threads", threads), ("batch", batch)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise MeasurementError(f"Bad {what} {value!r}: expected a positive integer or None")


def _model_name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, onnx.ModelProto):
        return f"<ModelProto:{source.graph.name}>" if source.graph.name else "<ModelProto>"
    return "<bytes>"


def _ort_session(model: Any, name: str, device: str, threads: int | None,
                 graph_optimization: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               _ORT_LEVELS[graph_optimization])
    options.log_severity_level = 3  # errors only
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise MeasurementError(
                f"Device 'cuda' needs ONNX Runtime's CUDAExecutionProvider; this onnxruntime "
                f"has {available}; install onnxruntime-gpu or use --device cpu")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / ... types
        raise MeasurementError(f"ONNX Runtime cannot load {name}: {_first_line(exc)}") from exc
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise MeasurementError(f"ONNX Runtime fell back to {session.get_providers()} for {name}: "
                               "the CUDA libraries did not load; check CUDA/cuDNN versions")
    return session


def _ort_runner(session: Any, feeds: dict[str, np.ndarray], device: str) -> Callable[[], object]:
    if device == "cpu":
        return lambda: session.run(None, feeds)
    import onnxruntime as ort

    binding = session.io_binding()  # inputs stay on the GPU: time the model, not the copies
    for key, value in feeds.items():
        binding.bind_ortvalue_input(key, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda")

    def run() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


def _openvino_runner(source: str | bytes, name: str, feeds: dict[str, np.ndarray], device: str,
                     threads: int | None, graph_optimization: str) -> Callable[[], object]:
    """An OpenVINO CPU inference request on `feeds`, in fp32 (OpenVINO would otherwise run
    bf16 on CPUs that have it: another precision than the model's)."""
    if device != "cpu":
        raise MeasurementError(f"Backend 'openvino' runs on device 'cpu' here, not {device!r}")
    if graph_optimization != "all":
        raise MeasurementError("Backend 'openvino' always optimises the graph; "
                               f"graph_optimization {graph_optimization!r} needs onnxruntime")
    try:
        import openvino as ov
    except ImportError as exc:
        raise MeasurementError("Backend 'openvino' needs the openvino package: "
                               "pip install 'latpred[openvino]'") from exc
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
              "INFERENCE_PRECISION_HINT": "f32"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        model = core.read_model(source) if isinstance(source, str) else core.read_model(source, b"")
        model.reshape({i.get_any_name(): ov.PartialShape(list(feeds[i.get_any_name()].shape))
                       for i in model.inputs if i.get_any_name() in feeds})
        request = core.compile_model(model, "CPU", config).create_infer_request()
    except Exception as exc:  # OpenVINO raises RuntimeError / OpConversionFailure / ...
        raise MeasurementError(f"OpenVINO cannot load {name}: {_first_line(exc)}") from exc
    return lambda: request.infer(feeds)


def measure_onnx(
    model: str | os.PathLike | bytes | onnx.ModelProto,
    *,
    backend: str = "onnxruntime",
    device: str = "cpu",
    threads: int | None = None,
    batch: int | None = None,
    input_shape: InputShapes = None,
    graph_optimization: str = "all",
    min_runs: int = 10,
    max_runs: int = 1000,
    max_seconds: float = 5.0,
    warmup: int = 5,
    target_rel_ci: float = 0.02,
    energy: bool = False,
    energy_seconds: float = ENERGY_SECONDS,
) -> Measurement:
    """Time an ONNX model with ONNX Runtime (or OpenVINO) on random inputs; see `time_runs`
    for the stop rule.

    Args:
        model: ONNX path, ONNX bytes or an `onnx.ModelProto`.
        backend: `onnxruntime`, or `openvino` (CPU, fp32; graph_optimization `all` only).
        device: `cpu` (CPU execution provider) or `cuda` (CUDA execution provider; inputs
            and outputs stay on the GPU).
        threads: intra-op threads (inter-op then 1); None keeps ONNX Runtime's default.
        batch: overrides dim 0 of every input (the dim must be dynamic).
        input_shape: shape of the first input, e.g. ``(1, 3, 224, 224)``, or a mapping
            input name -> shape.
        graph_optimization: `all`, `extended`, `basic` or `disabled`.
        energy: also measure energy per inference (2 x `energy_seconds` more; see
            `measure_energy`).

    Raises:
        ModelNotFoundError, InvalidModelError: a bad model source.
        DynamicShapeError: an input dim stays unknown or conflicts with `batch`/`input_shape`.
        MeasurementError: a bad option, a missing backend/device, or a failing run.
    """
    _check_options(backend, device, threads, batch, graph_optimization)
    if backend == "torch":
        raise MeasurementError("Backend 'torch' times a torch.nn.Module: call "
                               "`measure_torch(module, example_input)`; ONNX models use "
                               "backend 'onnxruntime' or 'openvino'")
    if not isinstance(model, (str, os.PathLike, bytes, bytearray, memoryview, onnx.ModelProto)):
        raise InvalidModelError(f"measure_onnx takes an ONNX path, bytes or onnx.ModelProto, not "
                                f"{type(model).__name__}; time a torch.nn.Module with "
                                "`measure_torch(module, example_input)`")
    proto = read_model(model)  # ModelNotFoundError / InvalidModelError / EmptyGraphError
    name = _model_name(model)
    feeds = make_inputs(proto, input_shape=input_shape, batch=batch)
    # ORT reads a path itself, so external weight files next to the model are found.
    source = str(model) if isinstance(model, (str, os.PathLike)) else (
        bytes(model) if not isinstance(model, onnx.ModelProto) else proto.SerializeToString())
    if backend == "openvino":
        run = _openvino_runner(source, name, feeds, device, threads, graph_optimization)
    else:
        run = _ort_runner(_ort_session(source, name, device, threads, graph_optimization),
                          feeds, device)
    try:
        run()
    except Exception as exc:
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        runtime = "OpenVINO" if backend == "openvino" else "ONNX Runtime"
        raise MeasurementError(f"{runtime} failed to run {name} on random inputs {shapes}: "
                               f"{_first_line(exc)}") from exc
    times = time_runs(run, min_runs=min_runs, max_runs=max_runs, max_seconds=max_seconds,
                      warmup=warmup, target_rel_ci=target_rel_ci)
    result = summarize(name, times, min_runs=min_runs)
    return _with_energy(result, run, device, energy_seconds) if energy else result


def measure_torch(
    module: torch.nn.Module,
    example_input: Any,
    *,
    device: str = "cpu",
    threads: int | None = None,
    batch: int | None = None,
    min_runs: int = 10,
    max_runs: int = 1000,
    max_seconds: float = 5.0,
    warmup: int = 5,
    target_rel_ci: float = 0.02,
    energy: bool = False,
    energy_seconds: float = ENERGY_SECONDS,
) -> Measurement:
    """Time a torch module in eval mode under `torch.inference_mode` on `example_input`.

    `threads` sets `torch.set_num_threads` for the measurement only; the previous value
    and the module's train/eval mode are restored. With `device="cuda"` the module is
    moved to the GPU (in place) and each run is synchronised. `batch` repeats each
    batch-1 example tensor along dim 0 to that size.
    """
    import torch

    _check_options("torch", device, threads, batch, "all")
    if not isinstance(module, torch.nn.Module):
        raise InvalidModelError(f"measure_torch takes a torch.nn.Module, not "
                                f"{type(module).__name__}; time ONNX models with `measure_onnx`")
    if device == "cuda" and not torch.cuda.is_available():
        raise MeasurementError(f"Device 'cuda' needs a CUDA build of torch and an NVIDIA GPU; "
                               f"torch {torch.__version__} sees none; use device 'cpu'")
    name = f"<torch:{type(module).__name__}>"
    target = torch.device(device)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    if batch is not None:
        args = tuple(_rebatch_tensor(a, batch, name) for a in args)
    args = tuple(a.to(target) if isinstance(a, torch.Tensor) else a for a in args)
    module.to(target)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run() -> None:
        module(*args)
        sync()

    was_training, old_threads = module.training, torch.get_num_threads()
    module.eval()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            try:
                run()
            except Exception as exc:
                raise MeasurementError(f"{name} failed on the example input: "
                                       f"{_first_line(exc)}") from exc
            times = time_runs(run, min_runs=min_runs, max_runs=max_runs,
                              max_seconds=max_seconds, warmup=warmup,
                              target_rel_ci=target_rel_ci)
            result = summarize(name, times, min_runs=min_runs)
            return _with_energy(result, run, device, energy_seconds) if energy else result
    finally:
        torch.set_num_threads(old_threads)
        module.train(was_training)


def _rebatch_tensor(value: Any, batch: int, name: str) -> Any:
    """A batch-1 example tensor repeated along dim 0 to `batch`; other values as given."""
    import torch

    if not isinstance(value, torch.Tensor):
        return value
    if value.dim() == 0 or value.shape[0] != 1:
        raise MeasurementError(f"{name}: batch {batch} needs batch-1 example inputs; got an "
                               f"input of shape {list(value.shape)}")
    return value.repeat(batch, *[1] * (value.dim() - 1))


def _with_energy(result: Measurement, run: Callable[[], object], device: str,
                 seconds: float) -> Measurement:
    from dataclasses import replace

    meter, note = open_energy_meter(device)
    if meter is None:
        return replace(result, energy_mj=None, energy_note=note)
    try:
        energy_mj, note = measure_energy(meter, run, seconds=seconds)
    finally:
        meter.close()
    return replace(result, energy_mj=energy_mj, energy_note=note)


# ----------------------------------------------------------------------------- drift
PROBE_RUNS = 15  # timed runs of the probe model per probe (median taken)


def probe_model() -> bytes:
    """A small fixed ONNX model (two 3x3 convolutions and a dense layer, ~13 M MACs) whose
    run time tracks this machine's current speed."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32),
                                       name)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "speed_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [weight("w1", 32, 16, 3, 3), weight("w2", 32, 32, 3, 3), weight("w3", 32, 64)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


class SpeedProbe:
    """Times `probe_model` under the measurement's runtime, thread count and device.

    Cloud VMs and laptops change speed by tens of percent within seconds (frequency scaling,
    throttling, noisy neighbours). On this project's 2-core VM, two passes over the same 20
    models hours apart differed by 23 % per model on average, and even back-to-back passes
    by ~7 %, while each model's time relative to a probe timed around it moved half as
    much: the drift is common to every model, so it can be divided out. `backend="torch"`
    runs the same network as a torch module, so that a GPU measurement is probed on the
    GPU path it drifts with (batch-1 inference is bound by kernel launches from the host).
    On a lent H200 whole passes over 20 models still drifted by up to 13 % with it (up to
    21 % in a session without it): it helps there, it does not make GPU timing exact.
    """

    def __init__(self, threads: int | None = None, device: str = "cpu",
                 backend: str = "onnxruntime"):
        model = probe_model()
        self.backend, self.device = backend, device
        if backend == "torch":
            self._run = _torch_probe_runner(model, device, threads)
        else:
            session = _ort_session(model, "<speed probe>", device, threads, "all")
            self._run = _ort_runner(session, read_model_inputs(model), device)
        self._run()

    def time_ms(self) -> float:
        """Median time (ms) of PROBE_RUNS runs of the probe, now."""
        return float(np.median(time_runs(self._run, min_runs=PROBE_RUNS, max_runs=PROBE_RUNS,
                                         max_seconds=60.0, warmup=2)))


def speed_probe_for(backend: str, device: str, threads: int | None = None) -> SpeedProbe:
    """The drift probe for measurements with `backend` on `device`: ONNX Runtime on a CPU
    (for torch CPU runs too, as the model sets were always probed), the measurement's own
    runtime on a GPU (where ONNX Runtime may lack the CUDA provider, or torch CUDA)."""
    return SpeedProbe(threads=threads, device=device,
                      backend=backend if device == "cuda" else "onnxruntime")


def read_model_inputs(model: bytes) -> dict[str, np.ndarray]:
    return make_inputs(read_model(model))


def torch_probe_net(model: bytes, device: str = "cpu") -> tuple[Any, Any]:
    """(`probe_model` as a torch module on `device`, weights copied from the ONNX file, its
    input)."""
    import torch
    from onnx import numpy_helper

    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
               for t in read_model(model).graph.initializer}
    conv1 = torch.nn.Conv2d(16, 32, 3, padding=1, bias=False)
    conv2 = torch.nn.Conv2d(32, 32, 3, padding=1, bias=False)
    dense = torch.nn.Linear(32, 64, bias=False)
    with torch.no_grad():
        conv1.weight.copy_(weights["w1"])
        conv2.weight.copy_(weights["w2"])
        dense.weight.copy_(weights["w3"].T)
    net = torch.nn.Sequential(conv1, torch.nn.ReLU(), conv2, torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), dense)
    return net.eval().to(device), torch.from_numpy(read_model_inputs(model)["x"]).to(device)


def _torch_probe_runner(model: bytes, device: str, threads: int | None) -> Callable[[], None]:
    import torch

    net, x = torch_probe_net(model, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run() -> None:
        old = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                net(x)
            sync()
        finally:
            torch.set_num_threads(old)

    return run


def measure_many(sources: Sequence[Any], measure: Callable[[Any], Measurement], *,
                 probe: SpeedProbe | None = None, desc: str = "measure",
                 progress: bool = True) -> tuple[list[Measurement], float | None]:
    """Measure each source with `measure(source)`, correcting for the machine's speed drift.

    With a `probe`, it is timed right before and right after each model; each model's times
    (median, p10, p90, mean, std) are then scaled by (median probe time over all models) /
    (geometric mean of its two probe times), i.e. to the machine's typical speed during the
    session. Energy is not rescaled.

    Returns:
        (measurements in input order, the session's median probe time in ms or None);
        record the latter in the provenance so that sessions can be compared.
    """
    from dataclasses import replace

    from tqdm import tqdm

    raw: list[Measurement] = []
    speeds: list[float] = []
    for source in tqdm(sources, desc=desc, unit="model", disable=not progress, leave=False):
        before = probe.time_ms() if probe is not None else 1.0
        raw.append(measure(source))
        after = probe.time_ms() if probe is not None else 1.0
        speeds.append(math.sqrt(before * after))
    if probe is None or not raw:
        return raw, None
    reference = float(np.median(speeds))
    out = []
    for m, speed in zip(raw, speeds, strict=True):
        f = reference / speed
        out.append(replace(m, latency_ms=m.latency_ms * f, p10_ms=m.p10_ms * f,
                           p90_ms=m.p90_ms * f, mean_ms=m.mean_ms * f, std_ms=m.std_ms * f,
                           speed_factor=f))
    return out, reference


# ----------------------------------------------------------------------------- call floor
def floor_model() -> bytes:
    """One Add on a one-element tensor: the least a runtime can run, so that its time is
    what every inference pays whatever the network (the call, binding inputs, copying
    outputs; on a GPU a launch and a synchronisation)."""
    from onnx import TensorProto, helper, numpy_helper

    one = numpy_helper.from_array(np.ones(1, np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "call_floor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def call_floor_ms(backend: str = "onnxruntime", device: str = "cpu", threads: int | None = None,
                  graph_optimization: str = "all", max_seconds: float = 1.0) -> float | None:
    """Median ms of `floor_model` under the measurement's runtime and settings: the time
    of a network with next to no work (a 5 us MLP on this project's VM, 3.6 us of which
    is this floor), which a predictor fitted on larger models cannot extrapolate to.
    None (and a warning) where the runtime cannot run it: the measurements it goes with
    are kept."""
    try:
        if backend != "torch":
            return measure_onnx(floor_model(), backend=backend, device=device, threads=threads,
                                graph_optimization=graph_optimization,
                                max_seconds=max_seconds).latency_ms
        import torch

        class AddOne(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x + 1

        return measure_torch(AddOne(), torch.zeros(1), device=device, threads=threads,
                             max_seconds=max_seconds).latency_ms
    except MeasurementError as exc:
        log.warning("Could not time the call floor (%s); predictions of tiny models will "
                    "miss it", _first_line(exc))
        return None
