"""Calibrating a new device: measurements of a few models -> a stored, adapted device.

Two sources of measurements: the shipped reference set (`predictor.generator`) timed on
this machine, or the user's own CSV (`model,latency_ms`, see `predictor.measurements`).
The adapted device is written atomically, under a lock, so two calibrations of one
device cannot interleave.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from predictor.device_store import device_dirs, load_device
from predictor.errors import PredictorError

if TYPE_CHECKING:
    from predictor.onnx_io import InputShapes

# None: `$LATPRED_CACHE_DIR`/reference, else the default cache folder's (`predictor.locations`).
REFERENCE_CACHE: Path | None = None
# How a CPU calibrated on the reference set (`latpred calibrate NAME --measure`) adapts:
# the geometric mean of "auto" and "kernelsum+net" (`adaptation.AUTO_WITH_KERNEL_SUM`).
# auto's 5-fold cross-validation on 13 diverse models under-rates the kernel sum, which
# the final fit on all 13 serves well. Chosen on this CPU's selection runtimes (torch
# 1 thread, ORT 2 threads, ORT unoptimised 1 thread; never the held-out ORT 1 thread),
# criteria written before a confirmatory pass with every row timed anew
# (`scripts/select_reference_strategy.py`, results/valid/stop31/reference_strategy/):
# MAPE auto -> auto+kernelsum, well-known networks 11.0 / 11.3 / 4.6 -> 8.9 / 8.2 / 4.5 %,
# model set zoo1's 200 generated models (torch, ORT 2t) 21.6 / 15.9 -> 19.0 / 15.9 %,
# ten 1-D CNNs 157.5 / 26.3 -> 95.3 / 17.0 %. GPUs keep "auto": no evidence there yet.
REFERENCE_SET_STRATEGY = {"cpu": "auto+kernelsum", "cuda": "auto"}


def default_strategy(provenance: dict[str, Any], space: str | None = None) -> str:
    """REFERENCE_SET_STRATEGY for ONNX models timed by `measure_reference_set` (its
    provenance names the reference set version and the device kind), "auto" otherwise."""
    if space is None and "reference_set_version" in provenance:
        return REFERENCE_SET_STRATEGY.get(str(provenance.get("device")), "auto")
    return "auto"


# Devices whose calibrations subtract and add back the runtime's per-inference floor
# recorded with their measurements (`Predictor.adapt(call_floor_ms=...)`). Chosen on this
# CPU's selection runtimes (ORT 2 threads, ORT unoptimised 1 thread): 36 networks of
# 4-65 us MAPE 44 -> 27 % and 57 -> 49 %; the well-known networks 6.1 -> 5.7 % and 3.35
# -> 3.43 % (`scripts/benchmark_small_models.py`). Not GPUs: at batch 1 their launches and
# synchronisation are much of every training model's time, which the network learned to
# predict with the rest; taking a floor off first would need evidence there.
CALL_FLOOR_DEVICES = ("cpu",)


def provenance_call_floor(provenance: dict[str, Any], metric: str = "latency_ms",
                          space: str | None = None) -> float | None:
    """The `call_floor_ms` a measurement's provenance records (`latpred measure`,
    `measure_reference_set`), for latency on a CALL_FLOOR_DEVICES device; else None."""
    value = provenance.get("call_floor_ms")
    if (value in (None, "") or metric != "latency_ms" or space is not None
            or str(provenance.get("device")) not in CALL_FLOOR_DEVICES):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PredictorError(f"Measurement provenance: call_floor_ms {value!r} is not a "
                             "number") from None


class CalibrationLockedError(PredictorError):
    """Another calibration of the same device is running."""


@contextmanager
def device_lock(name: str, folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on device `name` in `folder` (non-blocking: fails fast)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.lock"
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CalibrationLockedError(
                f"Device '{name}' is being calibrated by another process (lock {path})") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def reference_models(folder: Path | None = None, progress: bool = True) -> list[Path]:
    """ONNX files of the versioned reference calibration set (written once, then reused)."""
    from predictor.corpus import cache_dir
    from predictor.generator import REFERENCE_SET_VERSION, reference_specs, write_models

    root = REFERENCE_CACHE if REFERENCE_CACHE is not None else cache_dir() / "reference"
    folder = folder or root / f"v{REFERENCE_SET_VERSION}"
    return write_models(reference_specs(), folder, progress=progress)


def measure_reference_set(*, backend: str = "onnxruntime", device: str = "cpu",
                          threads: int | None = None, graph_optimization: str = "all",
                          max_seconds: float = 3.0, progress: bool = True, batch: int = 1,
                          include: Sequence[Path] = (), input_shape: InputShapes = None
                          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Time the reference set on this machine: (rows {model, latency_ms, ...}, provenance).

    `backend="onnxruntime"` (or `"openvino"`) times the ONNX files; `"torch"` times the same networks as torch
    modules (e.g. on a GPU where ONNX Runtime has no CUDA provider), at `batch` (the rows
    still name the batch-1 ONNX files: calibrate with the same batch). `include`: the
    user's own ONNX files, timed the same way after the reference set (not with torch;
    `input_shape` fixes their dynamic dims), so the device is calibrated on models like
    those it will predict too. Times get `measure_many`'s speed-drift correction
    (`predictor.measure.speed_probe_for`)."""

    from predictor.generator import REFERENCE_SET_VERSION, reference_specs
    from predictor.measure import call_floor_ms, measure_many, measure_onnx, speed_probe_for
    from predictor.measurements import provenance
    from predictor.model_sets import RuntimeConfig, measure_spec

    if batch != 1 and backend != "torch":
        raise PredictorError(f"Batch {batch} needs --backend torch: the reference ONNX files "
                             "are exported at batch 1")
    if include and backend == "torch":
        raise PredictorError("--include times your ONNX files with ONNX Runtime or OpenVINO; with "
                             f"--backend {backend}, time them yourself and calibrate with "
                             "--measurements FILE.csv (the reference set's rows included)")
    missing = [str(p) for p in include if not Path(p).is_file()]
    if missing:
        raise PredictorError(f"--include: no such file: {', '.join(missing)}")
    paths = reference_models(progress=progress)
    if backend in ("onnxruntime", "openvino"):
        own = {Path(p) for p in include}
        sources: list[Any] = paths + [Path(p) for p in include]
        settings = dict(backend=backend, device=device, threads=threads,
                        graph_optimization=graph_optimization, max_seconds=max_seconds)

        def measure(source: Path) -> Any:
            shape = input_shape if source in own else None
            return measure_onnx(source, input_shape=shape, **settings)
    elif backend == "torch":
        config = RuntimeConfig(f"torch-{device}", "torch", threads, device=device, batch=batch)
        sources = list(zip(reference_specs(), paths, strict=True))
        def measure(source: tuple) -> Any:
            return measure_spec(source[0], config, max_seconds=max_seconds, name=str(source[1]))
    else:
        raise PredictorError(f"Measuring the reference set supports backends 'onnxruntime', "
                             f"'openvino' and 'torch', not '{backend}'; time the models yourself and "
                             "pass --measurements FILE.csv")
    probe = speed_probe_for(backend, device, threads)
    measured, probe_ms = measure_many(sources, measure, probe=probe, desc="reference set",
                                      progress=progress)
    rows = [{"model": m.model, "latency_ms": m.latency_ms, "p10_ms": m.p10_ms,
             "p90_ms": m.p90_ms, "cv": m.cv, "noisy": m.noisy} for m in measured]
    floor = call_floor_ms(backend, device, threads, graph_optimization)
    info = provenance(backend, device, threads, batch if batch != 1 else None, graph_optimization,
                      reference_set_version=REFERENCE_SET_VERSION, speed_probe_ms=probe_ms,
                      **({"call_floor_ms": floor} if floor is not None else {}),
                      **({"included": [str(p) for p in include]} if include else {}))
    return rows, info


# Which of a user's models to time for a calibration (`pick_calibration_models`): the
# models nearest the centres of a k-means over their *latency signatures*, each model's
# predicted log-latency on every known (training) device: its mean (size) and, weighted
# by PICK_SIGNATURE_WEIGHT, its deviations from that mean (how its relative cost changes
# across hardware: depthwise convolutions, attention, launches). Chosen on selection
# devices only (stop 33): picked from a random half of a model set's CNNs (and
# transformers, case c) against random ones, "auto", 20 draws
# (`benchmark_local_device.py --valid SET/DEVICE --seeds 20 --picked`), MAPE % of cases
# a / b / c: zoo1 CPU torch 1 thread 13.1 / 15.3 / 13.7 -> 11.1 / 14.3 / 13.5, zoo2
# 16.5 / 13.5 / 17.4 -> 17.7 / 17.3 / 15.4, zoo8 18.1 / 21.5 / 18.3 -> 17.0 / 19.9 /
# 16.0, zoo2 H200 batch 1 13.6 / 19.7 / 11.0 -> 10.1 / 7.4 / 10.0, batch 32 13.5 / 14.4 /
# 12.9 -> 12.6 / 15.1 / 12.1 (mean 15.5 -> 14.0; 11 of 15 cells better). In a first
# diagnostic (10 draws) size alone (weight 0) did worse than random on zoo2 (18.1 % in
# a against 16.8), and farthest-point picks (k-centre) too (20.5 %): they take outliers.
PICK_SIGNATURE_WEIGHT = 2.0


def latency_signatures(predictor: Any, store: Any) -> Any:
    """(n, 1 + D) float64: each graph's mean predicted log-latency over the predictor's D
    known devices, then its per-device deviations from that mean (centred over the
    graphs) x PICK_SIGNATURE_WEIGHT / sqrt(D). Without known devices: log MACs alone."""
    import numpy as np
    import torch

    from predictor.adaptation import _predict_states, graph_log_macs, with_call_floor

    # The graphs go through the network in an order fixed by their own features, not the
    # caller's: a batch's composition moves the outputs by ~1e-7, enough to swap two
    # near-identical models in `pick_calibration_models` (the CLI lists a folder sorted
    # by name, a caller passes files in its own order).
    canonical = np.lexsort(np.asarray(store.graph_attr, dtype=np.float64).T[::-1])
    batch = store.batch(canonical)
    known = predictor.known_devices()
    if not known:
        signatures = graph_log_macs(batch).numpy()[:, None]
    else:
        # one encoder pass for every known device
        logs = torch.stack([with_call_floor(p, s.call_floor_ms) for p, s in zip(
            _predict_states(predictor.model, batch, known), known, strict=True)], 1).double()
        size = logs.mean(1, keepdim=True)
        deviation = logs - size
        deviation = deviation - deviation.mean(0, keepdim=True)
        scale = PICK_SIGNATURE_WEIGHT / len(known) ** 0.5
        signatures = torch.cat([size, scale * deviation], 1).numpy()
    restored = np.empty_like(signatures)
    restored[canonical] = signatures
    return restored


def pick_calibration_models(features: Any, n: int, iterations: int = 30) -> list[int]:
    """Indices of `n` of the rows of `features` (n_models, F) to time: k-means with
    k-means++ seeding, then per centre the model nearest it not yet picked. In pick order.
    The rows are sorted by value first and the seed is fixed, so the same models come
    back in whatever order they are given."""
    import numpy as np

    x = np.asarray(features, dtype=np.float64)
    if not 1 <= n <= len(x):
        raise PredictorError(f"Cannot pick {n} calibration models from {len(x)}")
    order = np.lexsort(x.T[::-1])
    x = x[order]
    rng = np.random.default_rng(0)
    centres = [x[rng.integers(len(x))]]
    for _ in range(n - 1):
        d = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(x[rng.choice(len(x), p=d / d.sum())] if d.sum() > 0 else
                       x[rng.integers(len(x))])
    c = np.array(centres)
    for _ in range(iterations):
        member = np.argmin(((x[:, None] - c[None]) ** 2).sum(2), axis=1)
        c = np.array([x[member == k].mean(0) if (member == k).any() else c[k]
                      for k in range(n)])
    picked: list[int] = []
    for centre in c:
        d = ((x - centre) ** 2).sum(1)
        d[picked] = np.inf
        picked.append(int(np.argmin(d)))
    return [int(order[i]) for i in picked]


def measured_graphs(models: Sequence[Any], input_shape: InputShapes = None) -> list:
    """The operator graphs of measured models, as they were measured: `input_shape` fixes
    the dims of models with dynamic inputs only (a model with fixed inputs, such as the
    reference set's next to `--include`d files, keeps its own, as `measure_onnx` ran it)."""
    from predictor.graph import extract_graph
    from predictor.onnx_io import has_dynamic_inputs, read_model

    if input_shape is None:
        return [extract_graph(m) for m in models]
    return [extract_graph(m, input_shape=input_shape if has_dynamic_inputs(read_model(m))
                          else None) for m in models]


def calibrate(predictor, name: str, rows: Sequence[dict[str, Any]], provenance: dict[str, Any],
              *, strategy: str | None = None, input_shape=None, space: str | None = None,
              num_classes: int | None = None, metric: str = "latency_ms",
              batch: int | None = None, graph: str = "eager",
              call_floor_ms: float | None = None) -> dict[str, Any]:
    """Adapt `predictor` to device `name` from measured rows and store it.

    Args:
        predictor: a `predictor.api.Predictor`.
        rows: dicts with the measured `metric` (default `latency_ms`; `energy_mj` makes an
            energy device) and either `model` (an ONNX path) or, with `space`, `arch` (a
            search-space architecture, e.g. an NB201 arch string).
        provenance: how the rows were measured (machine, runtime, settings).
        space, num_classes, input_shape: the search space of `arch` rows and its setting
            (defaults: the space's benchmark setting); stored, so that
            `Predictor.predict_batch` on this device uses the same setting by default.
        graph: with `space`, how the device ran the networks: "eager" (every op, as
            PyTorch runs them) or "exported" (a runtime compiling the exported ONNX graph,
            whose repeated ops the export merges); see `predictor.corpus.GRAPH_MODES`.
            Stored like the setting.
        batch: the batch the models were timed at, where their files hold another (see
            `Predictor.adapt`); not with `space` (give it in `input_shape`).
        strategy: how to adapt (`Predictor.adapt`); default `default_strategy`.
        call_floor_ms: the runtime's per-inference floor (`Predictor.adapt`); default:
            the one the provenance records, for a CPU's latency (`provenance_call_floor`).

    The device goes to the user device folder (`$LATPRED_DEVICE_DIR`) when set, else
    to the shipped `device_embeddings/`.

    Returns:
        The stored device's info (strategy, provenance, measured rows, date).
    """
    if not name or "/" in name or name.startswith("."):
        raise PredictorError(f"Invalid device name {name!r}: use letters, digits, -, _, @")
    folder = device_dirs()[0]
    missing = [i for i, row in enumerate(rows) if row.get(metric) is None]
    if missing:
        raise PredictorError(f"Measurements lack {metric} in rows {missing[:10]}; calibrate "
                             f"on {metric} only with a value for every model")
    values = [float(row[metric]) for row in rows]
    info: dict[str, Any] = {"kind": "calibrated device",
                            "date": datetime.now(timezone.utc).isoformat(),
                            "provenance": dict(provenance), "measurements": [dict(r) for r in rows]}
    if space is not None and batch is not None:
        raise PredictorError("With a search space, give the batch in the input shape "
                             "(--input-shape B,3,H,W), not as --batch")
    if space is None:
        models = measured_graphs([row["model"] for row in rows], input_shape)
        input_shape = None
    else:
        from predictor.spaces.custom import space_setting

        default_shape, default_classes = space_setting(space)
        shape = tuple(int(d) for d in (input_shape or default_shape))
        classes = int(num_classes or default_classes)
        models = predictor.space_graphs(space, [row["arch"] for row in rows],
                                        input_shape=shape, num_classes=classes, graph=graph)
        info.update(space=space, input_shape=list(shape), num_classes=classes,
                    batch_size=shape[0], graph=graph)
        input_shape = None
    strategy = strategy or default_strategy(provenance, space)
    with device_lock(name, folder):
        predictor.adapt(name, models, values, input_shape=input_shape, strategy=strategy,
                        metric=metric, save=True, info=info, batch=batch,
                        call_floor_ms=(provenance_call_floor(provenance, metric, space)
                                       if call_floor_ms is None else call_floor_ms))
    return load_device(name, predictor.fingerprint)[1]
