"""How the energy windows shape NVML energy per inference: repeatability, and agreement
with latency, per window setting.

    python scripts/benchmark_energy_windows.py --models 10 --batches 1 32 --json OUT.json

For N generated models (half CNNs, half transformers, generator seed --seed) at each batch
size, on this machine's GPU under torch eager, every window setting (`seconds` of idle and
of busy counting, `settle` seconds of quiet before the idle window and of unmeasured runs
before the busy one; `predictor.energy.measure_energy`) measures energy per inference
twice, the settings interleaved per model so that they see the same machine state. Per
setting it prints the Spearman rank agreement of the two passes, their median |log ratio|,
the Spearman correlation of energy with latency (timed once per model), the implied power
above idle (energy / latency) and how many models drew too little to measure. Stops
starting models after --deadline seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

SETTINGS = {"0.4 s, no settle": (0.4, 0.0), "1 s, no settle": (1.0, 0.0),
            "1 s, settle 0.5 s": (1.0, 0.5)}


def run_fn(module, example, batch: int):
    """A synchronised call of `module` on `example` repeated to `batch`, on the GPU."""
    import torch

    module = module.eval().cuda()
    x = example.repeat(batch, *[1] * (example.dim() - 1)).cuda()

    def run() -> None:
        with torch.inference_mode():
            module(x)
        torch.cuda.synchronize()

    return run


def measure(args: argparse.Namespace) -> dict:
    from predictor.energy import measure_energy, open_energy_meter
    from predictor.generator import build_module, sample_specs
    from predictor.measure import measure_torch

    half = args.models // 2
    specs = (sample_specs(args.seed, args.models - half, kinds=("cnn",))
             + sample_specs(args.seed, half, kinds=("transformer",)))
    meter, note = open_energy_meter("cuda")
    if meter is None:
        raise SystemExit(f"no GPU energy meter: {note}")
    start = time.perf_counter()
    rows = []
    for batch in args.batches:
        for spec in specs:
            if time.perf_counter() - start > args.deadline:
                print(f"deadline: stopped before {spec.name} at batch {batch}")
                break
            module, example = build_module(spec)
            latency = measure_torch(module, example, device="cuda", batch=batch,
                                    max_seconds=0.3).latency_ms
            run = run_fn(module, example, batch)
            energy = {name: [measure_energy(meter, run, seconds=s, settle=w)[0]
                             for _ in range(2)] for name, (s, w) in SETTINGS.items()}
            rows.append({"model": spec.name, "batch": batch, "latency_ms": latency,
                         "energy_mj": energy})
            print(f"b{batch} {spec.name}: {latency:.3f} ms, " + ", ".join(
                f"{n}: {e}" for n, e in energy.items()), flush=True)
    meter.close()
    return {"rows": rows, "settings": {n: list(v) for n, v in SETTINGS.items()}}


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        sub = [r for r in rows if r["batch"] == batch]
        latency = np.array([r["latency_ms"] for r in sub])
        for name in SETTINGS:
            e = np.array([[np.nan if v is None else v for v in r["energy_mj"][name]]
                          for r in sub], dtype=float)
            ok = np.isfinite(e).all(axis=1) & (e > 0).all(axis=1)
            mean = np.exp(np.log(e[ok]).mean(axis=1))
            out.append({
                "batch": batch, "setting": name, "models": len(sub),
                "unmeasurable": int((~ok).sum()),
                "pass_spearman": float(spearmanr(e[ok, 0], e[ok, 1]).statistic),
                "pass_median_abs_log_ratio": float(np.median(np.abs(np.log(e[ok, 0] / e[ok, 1])))),
                "energy_latency_spearman": float(spearmanr(mean, latency[ok]).statistic),
                "power_w_q10_q50_q90": np.quantile(mean / latency[ok], [0.1, 0.5, 0.9]).round(1).tolist(),
            })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seed", type=int, default=31, help="generator seed of the models")
    parser.add_argument("--deadline", type=float, default=1e9, help="seconds")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args)
    result["summary"] = summarise(result["rows"])
    print("\n| batch | setting | pass Spearman | median abs log ratio | Spearman vs latency "
          "| power W q10 / q50 / q90 | unmeasurable |\n|---|---|---|---|---|---|---|")
    for s in result["summary"]:
        print(f"| {s['batch']} | {s['setting']} | {s['pass_spearman']:.3f} | "
              f"{s['pass_median_abs_log_ratio']:.3f} | {s['energy_latency_spearman']:.3f} | "
              f"{' / '.join(map(str, s['power_w_q10_q50_q90']))} | "
              f"{s['unmeasurable']} of {s['models']} |")
    if args.json:
        from predictor.storage import atomic_write_json

        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
