"""Stop 43: each generic set (zoo1, zoo2, zoo8) under each CPU runtime, its committed table
against the same models timed again on 2026-11-29 (`epyc-day2-<config>.csv`, by
`measure_day2.sh`): the overall factor between the two days, the factors of CNNs and
transformers, the per-model MAPE and share within ±10 % after the overall factor, and an
oracle that knows every model's latency in the older table and fits today's factor on
issue 6's 10 calibration models (cases a / b / c, 20 draws) of the set.

    python results/valid/stop43/day_shift.py
"""
import numpy as np

from predictor.measurements import read_measurements_csv
from predictor.model_sets import model_set_specs, set_dir

CONFIGS = ("ort-2t", "ort-noopt-1t", "ort-basic-2t", "ort-noopt-2t", "torch-2t", "torch-1t")


def load(path) -> tuple[dict[str, float], dict[str, str]]:
    rows, info = read_measurements_csv(path)
    return {str(r["model"]).split("/")[-1].removesuffix(".onnx"): r["latency_ms"]
            for r in rows}, info


def oracle(x: np.ndarray, y: np.ndarray, kind: np.ndarray) -> dict[str, float]:
    cnn, tf = np.flatnonzero(kind == "cnn"), np.flatnonzero(kind == "transformer")
    out: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    for seed in range(20):  # the draws of results/valid/stop38/R/exp_auto.py
        rng = np.random.default_rng(seed)
        sa = rng.choice(cnn, 10, replace=False)
        sc = np.concatenate([rng.choice(cnn, 5, replace=False), rng.choice(tf, 5, replace=False)])
        for case, sup, test in (("a", sa, np.setdiff1d(cnn, sa)), ("b", sa, tf),
                                ("c", sc, np.setdiff1d(np.arange(len(x)), sc))):
            err = np.exp(x[test] + np.mean(y[sup] - x[sup]) - y[test]) - 1
            out[case].append(100 * np.mean(np.abs(err)))
    return {c: float(np.mean(v)) for c, v in out.items()}


print("| set | runtime | dates | factor all / CNN / transformer | per-model MAPE % | within ±10 % "
      "| oracle MAPE % a / b / c |")
print("|---|---|---|---|---|---|---|")
totals = []
for name in ("zoo1", "zoo2", "zoo8"):
    specs = {s.name: s.kind for s in model_set_specs(name)}
    for config in CONFIGS:
        old, info_old = load(set_dir(name) / f"epyc-{config}.csv")
        new, info_new = load(set_dir(name) / f"epyc-day2-{config}.csv")
        keys = sorted(set(old) & set(new))
        kind = np.array([specs[k] for k in keys])
        x, y = np.log([old[k] for k in keys]), np.log([new[k] for k in keys])
        d = y - x
        r = d - np.median(d)
        mape, within = 100 * np.mean(np.abs(np.exp(r) - 1)), 100 * np.mean(np.abs(np.exp(r) - 1) <= 0.1)
        o = oracle(x, y, kind)
        totals.append((mape, within, o["a"], o["b"], o["c"]))
        print(f"| {name} | {config} | {info_old.get('date', '')[:10]} -> "
              f"{info_new.get('date', '')[:10]} | {np.exp(np.median(d)):.2f} / "
              f"{np.exp(np.median(d[kind == 'cnn'])):.2f} / "
              f"{np.exp(np.median(d[kind == 'transformer'])):.2f} | {mape:.1f} | {within:.0f} | "
              f"{o['a']:.1f} / {o['b']:.1f} / {o['c']:.1f} |")
m = np.mean(totals, axis=0)
print(f"| mean | | | | {m[0]:.1f} | {m[1]:.0f} | {m[2]:.1f} / {m[3]:.1f} / {m[4]:.1f} |")
