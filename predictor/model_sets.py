"""Measured model sets: generated CNNs and transformers timed on real machines.

NB201 and FBNet cells are small CNNs; users bring ResNets, MobileNets and transformers.
A *model set* is a list of generator specs (`predictor.generator`) plus one measurement
CSV per *device*, where a device is a machine under a runtime configuration (e.g. this
CPU with ONNX Runtime on 2 threads). Each CSV keeps its provenance. Model sets join
meta-training like the HELP tables: a device of a set is a `DeviceTask` whose graphs are
the set's models.

Layout: `datasets/model_sets/<set>/specs.json` and `<set>/<device>.csv` (small, committed);
the ONNX files and the graph store are regenerated deterministically into the cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predictor.errors import DataError
from predictor.graph_store import GraphStore
from predictor.storage import atomic_write_bytes, atomic_write_json

MODEL_SETS_DIR = Path(__file__).resolve().parent.parent / "datasets" / "model_sets"
SPACE_PREFIX = "set:"  # DeviceTask.space of a model set: "set:<name>"


@dataclass(frozen=True)
class RuntimeConfig:
    """How models are run when a device of a model set is measured."""

    name: str
    backend: str  # "onnxruntime", "torch" or "openvino"
    threads: int | None  # None: the runtime's default (host threads matter little on a GPU)
    graph_optimization: str = "all"
    device: str = "cpu"  # "cpu" or "cuda"
    batch: int = 1  # torch repeats the batch-1 example; ONNX exports it repeated


# The benchmark's held-out "new device" is ONNX Runtime, 1 thread, full optimisation
# (`scripts/benchmark_local_device.py`): it is deliberately not a training configuration.
HELD_OUT_CONFIG = RuntimeConfig("ort-1t", "onnxruntime", 1, "all")
TRAINING_CONFIGS: dict[str, RuntimeConfig] = {c.name: c for c in (
    RuntimeConfig("ort-2t", "onnxruntime", 2, "all"),
    RuntimeConfig("ort-noopt-1t", "onnxruntime", 1, "disabled"),
    RuntimeConfig("torch-1t", "torch", 1),
    RuntimeConfig("ort-basic-2t", "onnxruntime", 2, "basic"),
    RuntimeConfig("ort-noopt-2t", "onnxruntime", 2, "disabled"),
    RuntimeConfig("torch-2t", "torch", 2),
    # batches on the CPU: every other CPU configuration runs batch 1, and the network
    # learned how latency grows with the batch from HELP's GPUs only (`torch` repeats the
    # batch-1 example)
    RuntimeConfig("torch-2t-b8", "torch", 2, batch=8),
    RuntimeConfig("torch-1t-b8", "torch", 1, batch=8),
    # ... and under ONNX Runtime (stop 41): cross-batch episodes need CPU runtimes whose
    # batch scaling differs (torch 2 threads alone taught one scaling for every CPU)
    RuntimeConfig("ort-2t-b8", "onnxruntime", 2, "all", batch=8),
    RuntimeConfig("ort-noopt-1t-b8", "onnxruntime", 1, "disabled", batch=8),
    # another CPU runtime (oneDNN-based kernels, fp32): more runtimes for the embedding
    RuntimeConfig("ov-1t", "openvino", 1),
    RuntimeConfig("ov-2t", "openvino", 2),
    # batch-1 GPU latency follows the number of kernel launches far more than MACs
    RuntimeConfig("torch-cuda", "torch", None, device="cuda"),
    # batch 32 on a GPU: compute-bound where batch 1 is launch-bound
    RuntimeConfig("torch-cuda-b32", "torch", None, device="cuda", batch=32),
)}
# Every configuration a benchmark can time its test models under: the held-out one and
# the training ones (on other models than the ones they trained on).
BENCHMARK_CONFIGS: dict[str, RuntimeConfig] = {HELD_OUT_CONFIG.name: HELD_OUT_CONFIG,
                                               **TRAINING_CONFIGS}


def machine_tag(device: str = "cpu") -> str:
    """A short name for this machine's CPU, e.g. "xeon-platinum-8480c", or with
    `device="cuda"` for its GPU, e.g. "h200"."""
    import re

    from predictor.measurements import _gpu_name, cpu_model

    if device == "cuda":
        words = re.sub(r"nvidia|geforce|\d+\s*gb\b|hbm\w*|pcie|sxm\w*", " ", _gpu_name().lower())
        return "-".join(re.findall(r"[a-z0-9]+", words)[:2]) or "gpu"
    words = re.sub(r"\(r\)|\(tm\)|cpu|@.*|processor|intel|amd", " ", cpu_model().lower())
    return "-".join(re.findall(r"[a-z0-9]+", words)[:3]) or "cpu"


def set_dir(name: str, root: Path | None = None) -> Path:
    return (root or MODEL_SETS_DIR) / name


def create_model_set(name: str, seed: int, cnns: int, transformers: int,
                     root: Path | None = None, small: bool = False,
                     families: list[str] | None = None, rnns: int = 0,
                     resolutions: list[int] | None = None,
                     macs_range: tuple[float, float] | None = None) -> Path:
    """Write the specs of a new model set (deterministic in seed, counts and families;
    `small`: the generator's small-cost range, for tests; `families`: only these, e.g.
    the opt-in "unet", split by kind; `rnns`: recurrent models, an opt-in kind;
    `resolutions` / `macs_range`: the CNNs' input sizes and cost range instead of the
    generator's, see `generator.sample_specs`)."""
    from predictor.generator import FAMILIES, sample_specs

    specs = []
    for kind, count in (("cnn", cnns), ("transformer", transformers), ("rnn", rnns)):
        if not count:
            continue
        chosen = None if families is None else [f for f in families
                                                if f in FAMILIES and FAMILIES[f].kind == kind]
        if chosen == []:
            raise DataError(f"No {kind} family among {families}; set --{kind}s 0")
        specs += sample_specs(seed, count, kinds=(kind,), small=small, families=chosen,
                              resolutions=resolutions, macs_range=macs_range)
    path = set_dir(name, root) / "specs.json"
    atomic_write_json(path, {"seed": seed, "cnns": cnns, "transformers": transformers,
                             **({"rnns": rnns} if rnns else {}),
                             **({"families": families} if families else {}),
                             **({"resolutions": resolutions} if resolutions else {}),
                             **({"macs_range": list(macs_range)} if macs_range else {}),
                             "specs": [s.to_dict() for s in specs]})
    return path


def model_set_specs(name: str, root: Path | None = None) -> list:
    from predictor.generator import ModelSpec

    path = set_dir(name, root) / "specs.json"
    if not path.is_file():
        raise DataError(f"Unknown model set '{name}': {path} not found")
    return [ModelSpec.from_dict(d) for d in json.loads(path.read_text())["specs"]]


def model_set_devices(name: str, root: Path | None = None) -> list[str]:
    """Devices measured on a model set (one CSV each)."""
    return sorted(p.stem for p in set_dir(name, root).glob("*.csv"))


# Bumped when the graphs built from the same specs change (2: recurrent ops unrolled,
# batch sizes other than 1).
STORE_VERSION = 2


def model_set_store(name: str, root: Path | None = None, cache_root: Path | None = None,
                    progress: bool = True, batch: int = 1) -> GraphStore:
    """The set's operator graphs at `batch` (index i = spec i), cached and checksummed.
    Recurrent ops are unrolled per time step, as `Predictor.graphs` runs them."""
    from tqdm import tqdm

    from predictor.corpus import cache_dir
    from predictor.generator import export_spec
    from predictor.graph import extract_graph
    from predictor.stand_ins import unroll_recurrent

    specs = model_set_specs(name, root)
    key = hashlib.sha256(json.dumps([STORE_VERSION, batch, [s.to_dict() for s in specs]],
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir(cache_root) / "model_sets" / f"{name}-b{batch}-{key}.store"
    if path.is_file():
        try:
            return GraphStore.from_bytes(path.read_bytes(), str(path))
        except DataError:
            pass  # corrupt: rebuild
    graphs = [unroll_recurrent(extract_graph(export_spec(s)).with_batch(batch))
              for s in tqdm(specs, desc=f"graphs {name}", unit="model", disable=not progress)]
    store = GraphStore.from_graphs(graphs, meta={"model_set": name, "key": key, "batch": batch})
    atomic_write_bytes(path, store.to_bytes())
    return store


def measure_device(name: str, device: str, config: RuntimeConfig, *, max_seconds: float = 1.0,
                   energy: bool = False, root: Path | None = None, progress: bool = True) -> Path:
    """Time every model of the set under `config`; write `<set>/<device>.csv`.

    `energy` also measures energy per inference (NVML on cuda, RAPL on cpu; about two
    seconds more per model). Times are drift-corrected with a speed probe timed around each
    model (`predictor.measure.speed_probe_for`).
    """
    from functools import partial

    from predictor.measure import call_floor_ms, measure_many, speed_probe_for
    from predictor.measurements import provenance, write_measurements_csv

    if config == HELD_OUT_CONFIG:
        raise DataError(f"'{config.name}' is the benchmark's held-out configuration; "
                        "it must not become training data")
    measure = partial(measure_spec, config=config, max_seconds=max_seconds, energy=energy)
    probe = speed_probe_for(config.backend, config.device, config.threads)
    rows, probe_ms = measure_many(model_set_specs(name, root), measure, probe=probe,
                                  desc=f"measure {device}", progress=progress)
    path = set_dir(name, root) / f"{device}.csv"
    floor = call_floor_ms(config.backend, config.device, config.threads,
                          config.graph_optimization) if config.device == "cpu" else None
    info = provenance(config.backend, config.device, config.threads, config.batch,
                      config.graph_optimization,
                      model_set=name, runtime_config=config.name, speed_probe_ms=probe_ms,
                      **({"call_floor_ms": floor} if floor is not None else {}))
    write_measurements_csv(path, rows, info)
    return path


def record_call_floor(name: str, device: str, config: RuntimeConfig, *,
                      root: Path | None = None) -> tuple[Path, float]:
    """Time the runtime's per-inference floor (`predictor.measure.call_floor_ms`) now and
    add it to the provenance of `<set>/<device>.csv`, measured before sets recorded one:
    `call_floor_ms`, with the date and the speed probe it was timed with. Only on a host
    of the measurements' speed: their speed probe and this one within SAME_HOST_FACTOR.
    The rows stay byte for byte; the file is rewritten atomically.

    Returns:
        (the CSV, the floor in ms).
    """
    from datetime import datetime, timezone

    from predictor.measure import call_floor_ms, speed_probe_for
    from predictor.measurements import read_measurements_csv, recorded_speed_probe
    from predictor.shipped import SAME_HOST_FACTOR
    from predictor.storage import atomic_write_text

    if config.device != "cpu":
        raise DataError(f"'{config.name}': call floors are recorded for CPU runtimes only")
    path = set_dir(name, root) / f"{device}.csv"
    _, info = read_measurements_csv(path)
    if info.get("runtime_config") != config.name:
        raise DataError(f"{path} was measured under {info.get('runtime_config')!r}, "
                        f"not {config.name!r}")
    if "call_floor_ms" in info:
        raise DataError(f"{path} records a call floor already ({info['call_floor_ms']} ms)")
    probe = speed_probe_for(config.backend, config.device, config.threads).time_ms()
    recorded = recorded_speed_probe(info) or float("nan")
    if not max(probe / recorded, recorded / probe) <= SAME_HOST_FACTOR:
        raise DataError(f"{path}: this host's speed probe ({probe:.4f} ms) is not within "
                        f"{SAME_HOST_FACTOR}x of the measurements' ({recorded:.4f} ms); "
                        "time the floor on their host")
    floor = call_floor_ms(config.backend, config.device, config.threads,
                          config.graph_optimization)
    if floor is None:
        raise DataError(f"Could not time the call floor under {config.name!r}")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    header = next(i for i, line in enumerate(lines) if not line.lstrip().startswith("#"))
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    added = [f"# call_floor_ms: {floor:.6g}\n", f"# call_floor_date: {stamp}\n",
             f"# call_floor_speed_probe_ms: {probe:.6g}\n"]
    atomic_write_text(path, "".join(lines[:header] + added + lines[header:]))
    return path, floor


def measure_spec(spec: Any, config: RuntimeConfig, *, max_seconds: float = 1.0,
                 energy: bool = False, energy_seconds: float | None = None,
                 name: str | None = None) -> Any:
    """Time one generator spec under `config` (torch: the module itself; onnxruntime and
    openvino: its ONNX export); the `Measurement` is named `name` or the spec's name."""
    from dataclasses import replace

    from predictor.energy import ENERGY_SECONDS
    from predictor.generator import build_module, export_spec
    from predictor.measure import measure_onnx, measure_torch

    window = {"energy": energy, "energy_seconds": energy_seconds or ENERGY_SECONDS}
    if config.backend == "torch":
        module, example = build_module(spec)
        m = measure_torch(module, example, device=config.device, threads=config.threads,
                          batch=config.batch if config.batch != 1 else None,
                          max_seconds=max_seconds, **window)
    else:
        m = measure_onnx(export_spec(spec, config.batch), backend=config.backend, device=config.device,
                         threads=config.threads, graph_optimization=config.graph_optimization,
                         max_seconds=max_seconds, **window)
    return replace(m, model=name or spec.name)


def load_model_set_task(name: str, device: str, root: Path | None = None):
    """A device of a model set as a `DeviceTask` aligned with `model_set_store(name, batch=
    task.batch_size)`, the batch size its CSV's provenance records."""
    from predictor.datasets import DeviceTask
    from predictor.measurements import read_measurements_csv, recorded_speed_probe

    specs = model_set_specs(name, root)
    path = set_dir(name, root) / f"{device}.csv"
    if not path.is_file():
        raise DataError(f"Model set '{name}' has no device '{device}'; measured: "
                        f"{model_set_devices(name, root)}")
    rows, info = read_measurements_csv(path)
    by_name = {Path(str(r["model"])).stem: float(r["latency_ms"]) for r in rows}
    latency = np.array([by_name.get(s.name, np.nan) for s in specs])
    pool = np.flatnonzero(np.isfinite(latency))
    batch = info.get("batch", "1")
    batch = int(batch) if str(batch).isdigit() else 1  # "as in model": specs export at 1
    return DeviceTask(f"{SPACE_PREFIX}{name}", device, batch, latency, pool,
                      recorded_speed_probe(info), np.array([s.family for s in specs]))
