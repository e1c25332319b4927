"""Well-known networks at full size, predicted from the shipped reference set: the day-one
question of a deployment engineer ("how fast are ResNet-50 and BERT-base on this board?").

    python scripts/benchmark_known_models.py --json results/known_models.json
    python scripts/benchmark_known_models.py --runtime torch-1t   # a meta-valid runtime
    python scripts/benchmark_known_models.py --resolution 512      # image networks at 512

`--resolution R` runs the image networks at R x R (segmentation, detection and
super-resolution backbones run at 320 to 1024, beyond the generator's 32..224) and leaves
the language models out; the reference models stay as they are.

This machine under a runtime configuration is the device. The reference calibration set
(`generator.reference_specs`, the models `latpred calibrate NAME --measure` times, 3 M to
3 G MACs) and the well-known networks (`generator.known_specs`: ResNet-18..101,
MobileNetV2/V3, EfficientNet-B0, ViT-Ti/S/B, BERT-mini..base, Mixer-S/B, up to 17.6 G MACs;
and ConvNeXt-T, a U-Net and GPT-2 small from `model_zoo`, beyond the generator's
default families: the shipped checkpoint trains on smaller U-Nets (`zoo3`) and, since
stop 29, ConvNeXt-like models (`zoo6`), never on GPT-like decoders) are measured here (cached in a CSV with provenance;
--remeasure to redo, --measurements to read passes taken elsewhere). The predictor is calibrated on the reference models with
each adaptation strategy (`--references 10`: on version 1's ten only) and predicts the
known networks (`latpred+auto+kernelsum` is what `latpred calibrate NAME --measure` does
on a CPU, `calibration.REFERENCE_SET_STRATEGY`; the plot shows it); MACs (log ms = a log MACs + b) and the per-device linear fit on
MACs/params/memory/depth, fitted on the same models, are the baselines. The default
runtime, ONNX Runtime 1 thread, is the local benchmark's held-out device (never trained
on); choose settings on other runtimes (`--runtime torch-1t`, a meta-valid configuration
of the model sets, or a training one), never on it.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from predictor.api import Predictor
from predictor.calibration import CALL_FLOOR_DEVICES
from predictor.evaluation import linear_fit_baseline, macs_baseline, metrics, predictor_fn
from predictor.generator import (
    REFERENCE_SET_VERSION,
    ModelSpec,
    known_specs,
    make_spec,
    reference_specs,
    write_models,
)
from predictor.model_sets import BENCHMARK_CONFIGS, HELD_OUT_CONFIG, RuntimeConfig

CACHE = Path("datasets/cache/known_models")
RUNTIMES = BENCHMARK_CONFIGS
STRATEGIES = ("auto+kernelsum", "auto", "amortised", "nearest", "finetune", "opscale",
              "kernelsum+net", "linear")


# Networks from `model_zoo`, beyond the generator's default families (the shipped checkpoint
# trains on smaller U-Nets and, since stop 29, ConvNeXt-like models; on no GPT-like one).
ZOO_NETWORKS = {"convnext_tiny": "cnn", "unet": "cnn", "gpt2_small": "transformer"}
ZOO_IMAGE_NETWORKS = ("convnext_tiny", "unet")


def known_at(resolution: int | None) -> list[ModelSpec]:
    """The known specs, or with `resolution` their image networks at that input size."""
    if resolution is None:
        return known_specs()
    return [make_spec(s.name, s.family, {**s.params, "resolution": resolution})
            for s in known_specs() if "resolution" in s.params]


def zoo_at(resolution: int | None) -> list[str]:
    """The zoo networks' names, or with `resolution` the image ones."""
    return list(ZOO_NETWORKS) if resolution is None else list(ZOO_IMAGE_NETWORKS)


def zoo_shape(resolution: int | None) -> tuple[int, ...] | None:
    """A zoo image network's input shape at `resolution` (None: its usual one)."""
    return None if resolution is None else (1, 3, resolution, resolution)


def networks(resolution: int | None = None) -> list[Any]:
    """The reference specs, the known specs and the zoo networks' names, in that order
    (with `resolution`: the image networks at that size)."""
    return reference_specs() + known_at(resolution) + zoo_at(resolution)


def network_files(folder: Path, resolution: int | None = None) -> list[Path]:
    """ONNX files in `folder` of `networks(resolution)`, in that order (written once)."""
    from predictor import model_zoo
    from predictor.storage import atomic_write_bytes

    paths = write_models(reference_specs() + known_at(resolution), folder, progress=False)
    for name in zoo_at(resolution):
        path = folder / f"{name}.onnx"
        if not path.exists():
            atomic_write_bytes(path, model_zoo.export(name, zoo_shape(resolution)))
        paths.append(path)
    return paths


def onnx_folder(resolution: int | None) -> Path:
    return CACHE / ("onnx" if resolution is None else f"onnx-r{resolution}")


def measure_network(item: tuple[Any, Path], config: RuntimeConfig, max_seconds: float,
                    resolution: int | None = None) -> Any:
    """Time a network, (generator spec or zoo name, its ONNX file), under `config`: torch
    runs the module, ONNX Runtime or OpenVINO the file (zoo image networks at
    `resolution`, if given)."""
    from dataclasses import replace

    from predictor import model_zoo
    from predictor.measure import measure_onnx, measure_torch
    from predictor.model_sets import measure_spec

    source, path = item
    if config.backend != "torch":
        m = measure_onnx(path, backend=config.backend, device=config.device,
                         threads=config.threads, graph_optimization=config.graph_optimization,
                         max_seconds=max_seconds)
    elif not isinstance(source, str):
        m = measure_spec(source, config, max_seconds=max_seconds)
    else:
        torch.manual_seed(0)
        m = measure_torch(model_zoo.build(source),
                          model_zoo.example_input(source, zoo_shape(resolution)),
                          device=config.device, threads=config.threads,
                          batch=config.batch if config.batch != 1 else None,
                          max_seconds=max_seconds)
    return replace(m, model=path.stem)


def measured(runtime: str, remeasure: bool, max_seconds: float,
             files: list[Path] | None, resolution: int | None = None
             ) -> tuple[dict[str, float], float | None]:
    """({model name: latency ms} of `networks(resolution)` under `runtime`, the runtime's
    call floor in ms as the measurements record it, or None: files from before stop 32)."""
    from predictor.measure import call_floor_ms, measure_many, speed_probe_for
    from predictor.measurements import provenance, read_measurements_csv, write_measurements_csv

    def read(path: Path) -> tuple[dict[str, float], float | None]:
        rows, info = read_measurements_csv(path)
        floor = info.get("call_floor_ms")
        return ({Path(str(r["model"])).stem: float(r["latency_ms"]) for r in rows},
                float(floor) if floor else None)

    if files:
        passes = [read(f) for f in files]
        floors = [f for _, f in passes if f is not None]
        return ({k: float(np.exp(np.mean([np.log(p[k]) for p, _ in passes])))
                 for k in passes[0][0]},
                float(np.median(floors)) if len(floors) == len(passes) else None)
    suffix = "" if resolution is None else f"-r{resolution}"
    csv = CACHE / f"{runtime}-ref{REFERENCE_SET_VERSION}{suffix}.csv"
    paths = network_files(onnx_folder(resolution), resolution)
    if csv.exists() and not remeasure:
        cached = read(csv)
        if {p.stem for p in paths} <= set(cached[0]):  # else a network was added: measure again
            return cached
    config = RUNTIMES[runtime]
    rows, probe_ms = measure_many(
        list(zip(networks(resolution), paths, strict=True)),
        partial(measure_network, config=config, max_seconds=max_seconds,
                resolution=resolution),
        probe=speed_probe_for(config.backend, config.device, config.threads),
        desc=f"measure ({runtime})")
    floor = call_floor_ms(config.backend, config.device, config.threads,
                          config.graph_optimization)
    write_measurements_csv(csv, rows, provenance(
        config.backend, config.device, config.threads, config.batch, config.graph_optimization,
        runtime_config=runtime, speed_probe_ms=probe_ms, max_seconds=max_seconds,
        **({"resolution": resolution} if resolution is not None else {}),
        **({"call_floor_ms": floor} if floor is not None else {})))
    return read(csv)


def run(args: argparse.Namespace) -> dict:
    latency, recorded_floor = measured(args.runtime, args.remeasure, args.max_seconds,
                                       args.measurements, args.resolution)
    # `latpred calibrate --measure` on a CPU takes the runtime's call floor off the
    # reference set's latencies; so does the first column where the measurements hold one.
    floor = recorded_floor if args.call_floor_ms is None else args.call_floor_ms
    if RUNTIMES[args.runtime].device not in CALL_FLOOR_DEVICES:
        floor = None
    paths = network_files(onnx_folder(args.resolution), args.resolution)
    names = [p.stem for p in paths]
    n_refs = len(reference_specs())
    refs = names[:n_refs][:args.references]
    kind_of = dict(zip(names[n_refs:], [s.kind for s in known_at(args.resolution)]
                       + [ZOO_NETWORKS[n] for n in zoo_at(args.resolution)], strict=True))
    unknown = sorted(set(args.include) - set(kind_of))
    if unknown:
        raise SystemExit(f"--include: not a known network: {', '.join(unknown)}")
    known = [n for n in names[n_refs:] if n not in args.include]
    kinds = [kind_of[n] for n in known]
    keep = [i for i, name in enumerate(names) if name in refs or i >= n_refs]
    batch = RUNTIMES[args.runtime].batch
    y = np.array([latency[names[i]] for i in keep])
    position = {names[i]: j for j, i in enumerate(keep)}
    support = np.array([position[n] for n in refs + list(args.include)])
    test = np.array([position[n] for n in known])
    predictor = Predictor.load(args.checkpoint)
    store = predictor.graphs([paths[i] for i in keep], batch=batch)  # as `latpred predict`
    known_devices = predictor.known_devices()
    methods = {f"latpred+{s}" if s != "amortised" else "latpred":
               predictor_fn(predictor.model, s, known=known_devices,
                            call_floor_ms=floor if s == STRATEGIES[0] else None)
               for s in STRATEGIES}
    methods.update({"macs": macs_baseline, "linear-baseline": linear_fit_baseline})
    predictions = {name: fn(store, support, y[support], test) for name, fn in methods.items()}
    families = {"zoo": np.array([n in ZOO_NETWORKS for n in known]),
                "cnn": np.array([k == "cnn" for k in kinds]),
                "transformer": np.array([k != "cnn" for k in kinds])}
    return {"runtime": args.runtime, "resolution": args.resolution,
            "references": len(refs), "included": list(args.include),
            "call_floor_ms": floor,
            "models": known,
            "kinds": kinds, "measured_ms": y[test].tolist(),
            "predicted_ms": {m: p.tolist() for m, p in predictions.items()},
            "summary": {m: {"all": metrics(p, y[test]),
                            **{part: metrics(p[mask], y[test][mask])
                               for part, mask in families.items()}}
                        for m, p in predictions.items()}}


def report(out: dict) -> None:
    methods = list(out["predicted_ms"])
    also = f" and {', '.join(out['included'])}" if out["included"] else ""
    at = f" at {out['resolution']} x {out['resolution']}" if out.get("resolution") else ""
    print(f"\n## Known networks{at} on this machine ({out['runtime']}), calibrated on "
          f"{out['references']} reference models{also}"
          + (f"; call floor {1e3 * out['call_floor_ms']:.1f} us (first column)"
             if out.get("call_floor_ms") else "") + "\n\n"
          "error of the prediction, % of the measured latency\n")
    print("| model | measured ms | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for i, name in enumerate(out["models"]):
        true = out["measured_ms"][i]
        print(f"| {name} | {true:.2f} | " + " | ".join(
            f"{100 * (out['predicted_ms'][m][i] / true - 1):+.0f}" for m in methods) + " |")
    for part in ("all", "cnn", "transformer", "zoo"):
        label = {"zoo": "from model_zoo (" + ", ".join(zoo_at(out.get("resolution"))) + ")"}
        print(f"\n{label.get(part, part)}: Spearman / MAPE % / within ±10 %\n")
        print("| | " + " | ".join(methods) + " |")
        print("|---|" + "---|" * len(methods))
        for metric, fmt in (("spearman", ".3f"), ("mape", ".1f"), ("within10", ".1f")):
            print(f"| {metric} | " + " | ".join(
                f"{out['summary'][m][part][metric]:{fmt}}" for m in methods) + " |")


def plot(out: dict, path: Path, method: str = "latpred+auto+kernelsum") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true, pred = np.array(out["measured_ms"]), np.array(out["predicted_ms"][method])
    fig, ax = plt.subplots(figsize=(5, 5))
    for kind, marker in (("cnn", "o"), ("transformer", "s")):
        mask = np.array(out["kinds"]) == kind
        ax.loglog(true[mask], pred[mask], marker, ls="", label=kind)
    for name, t, p in zip(out["models"], true, pred, strict=True):
        ax.annotate(name, (t, p), fontsize=6)
    lo, hi = min(true.min(), pred.min()), max(true.max(), pred.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("measured ms")
    ax.set_ylabel("predicted ms")
    at = f" at {out['resolution']}" if out.get("resolution") else ""
    ax.set_title(f"known networks{at}, {out['runtime']}, {method}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=list(RUNTIMES), default=HELD_OUT_CONFIG.name,
                        help="how this machine runs the models (default: the held-out "
                             "ONNX Runtime 1 thread)")
    parser.add_argument("--measurements", type=Path, nargs="+", default=None, metavar="CSV",
                        help="measurements of the reference and known models taken earlier "
                             "(several passes: geometric mean)")
    parser.add_argument("--remeasure", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=3.0,
                        help="timing budget per model")
    parser.add_argument("--references", type=int, default=None, metavar="N",
                        help="calibrate on the first N reference models only (10: the "
                             "models of reference set version 1)")
    parser.add_argument("--include", nargs="+", default=[], metavar="NETWORK",
                        help="also calibrate on these known networks (as `latpred calibrate "
                             "--measure --include` would) and predict the others")
    parser.add_argument("--call-floor-ms", type=float, default=None, metavar="MS",
                        help="the runtime's call floor for the first column (default: as "
                             "the measurements record it; 0: none)")
    parser.add_argument("--resolution", type=int, default=None, metavar="R",
                        help="run the image networks at R x R (language models left out)")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    start = time.time()
    out = run(args)
    report(out)
    print(f"\nseconds: {time.time() - start:.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        plot(out, args.json.with_suffix(".png"))
        print(f"wrote {args.json} and {args.json.with_suffix('.png')}")


if __name__ == "__main__":
    main()
