"""Latency-constrained search on unseen devices, checked against HELP's measured tables.

    python scripts/benchmark_constrained_search.py --budget-evals 1000 --json OUT.json
    python scripts/benchmark_constrained_search.py --valid --margins 0,0.05,0.1  # choose margin
    python scripts/benchmark_constrained_search.py --valid --coverage  # choose SPREAD_K

For each NB201 meta-test device (`--valid`: meta-valid) and three budgets, tight / median /
loose = the 10th / 50th / 90th percentile of the device's valid measured latencies over
the whole table, the device is calibrated with 10 measurements sampled from the training
pool exactly as `benchmark_fewshot.py` samples them (`evaluation.make_cases`, seed s), then
regularised evolution maximises the objective under the budget with (a) latpred
(`Predictor.adapt`, strategy auto; the budget constrains its upper bound
predicted x exp(k x spread), `--spreads`, default `SPREAD_K`, scaled down below the
fastest calibration measurement as `search.bound_widths` does; k = 0 is the prediction
itself), (b) MACs, fitted on the same 10 samples as log ms = a log MACs + b, and (c) for
reference an oracle, the measured table itself with 5 % lognormal noise (`ORACLE_NOISE`),
as the latency surrogate, each with the same margin rule. The top architectures it returns are then looked up in the measured
table:

* feasible_share: share of returned archs whose measured latency meets the budget
  (entries `tables.valid_mask` flags as invalid, near-zero folded networks on raspi4,
  are left out: their true latency is unknown);
* objective_gap: (best objective among truly feasible archs of the whole table - best
  objective among truly feasible returned archs) / the former; 1 when none is feasible
  (or none is returned: the search found no arch within budget under its surrogate; the
  share is then undefined, "-" in the table and null in the JSON).

Both are averaged over `--seeds` calibration draws (search seed = `--seed` + draw).

`--objective params` (default) is the CLI's built-in capacity proxy. Its values are
coarse: an NB201 network's parameter count depends only on how many 3x3 and 1x1 convs its
cell has, so a search that misses the top level under a budget loses 20-60 % at once.
`--objective accuracy` maximises what NAS researchers search for, NB201's CIFAR-100 test
accuracy (HW-NAS-Bench-360's copy, `hwnb360.nb201_accuracy`; read from the data
directory, passed to the search as a callable as a user's own objective would be).
Prints a markdown table; with --json writes the results and a PNG next to them.

`--coverage` also predicts the whole table per draw and reports quantiles of the
normalised error (log measured - log predicted - log(1 + margin)) / spread: its 95th
percentile on the meta-valid devices is the split-conformal choice of SPREAD_K, for
predictions at or above the draw's fastest measurement, and of SPREAD_K_BELOW below it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from predictor.api import Predictor
from predictor.corpus import build_corpus, get_space
from predictor.devices import get_device
from predictor.evaluation import make_cases
from predictor.features import FEATURE_SCHEMA
from predictor.hwnb360 import nb201_accuracy
from predictor.search import (
    MARGIN_QUANTILE,
    SPREAD_K,
    SPREAD_K_BELOW,
    NoFeasibleArchError,
    SearchConfig,
    bound_widths,
    device_margin,
    get_search_space,
    regularized_evolution,
    suggest_measurements,
    with_measurements,
)
from predictor.splits import get_split
from predictor.tables import load_latency_table, valid_mask

SHOTS = 10
BUDGETS = {"tight": 10, "median": 50, "loose": 90}  # percentiles of measured latency
SURROGATES = ("latpred", "latpred+timed", "macs", "oracle")
# latpred+timed: 5 of the 10 measurements are the draw's first 5 archs, the other 5 are
# timed where the search will answer (`search.suggest_measurements` on a device calibrated
# on the first 5, one per fraction of the budget), then the device is calibrated on all
# 10 and searched `with_measurements` (timed archs report their table latency).
TIMED_FIRST = 5
# The reference surrogate "oracle" is the measured table itself times lognormal noise of
# this standard deviation in log space, drawn once per calibration draw: what the same
# search and margin rule reach with a predictor that is off by about this much on every
# architecture (latpred's NB201 MAPE at K = 10 is about 4 %).
ORACLE_NOISE = 0.05


class TableSurrogate:
    """latency_fn (predicted, upper bound = predicted x exp(k x spread), k from
    `bound_widths` and the calibration's fastest measurement) memoised per table index: a
    search, margin or budget that revisits an arch reuses its prediction (`compute`: ids ->
    (ms, spread), sees each arch once)."""

    def __init__(self, index: dict[str, int], compute, fastest_ms: float) -> None:
        self.index, self.compute, self.fastest = index, compute, fastest_ms
        self.ms, self.spread = np.full(len(index), np.nan), np.zeros(len(index))
        self.k = 0.0

    def __call__(self, archs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array([self.index[a] for a in archs])
        missing = np.unique(ids[np.isnan(self.ms[ids])])
        if missing.size:
            self.ms[missing], self.spread[missing] = self.compute(missing)
        ms = self.ms[ids]
        return ms, ms * np.exp(bound_widths(self.fastest, ms, self.k) * self.spread[ids])


def latpred_surrogate(predictor: Predictor, name: str, archs: list[str], support: np.ndarray,
                      y_ms: np.ndarray, batch: int):
    """Calibrate `name` on the support archs and predict with `Predictor.predict_batch`
    and its spread, the path `latpred search` takes (adaptation strategy auto, the
    product default)."""
    shape = (batch, *get_space("nb201").input_shape[1:])
    graphs = predictor.space_graphs("nb201", [archs[i] for i in support], input_shape=shape)
    predictor.adapt(name, graphs, y_ms, strategy="auto")
    return lambda ids: predictor.predict_batch("nb201", [archs[i] for i in ids], name,
                                               input_shape=shape, with_spread=True)


def timed_surrogates(predictor: Predictor, name: str, archs: list[str], index: dict[str, int],
                     table: np.ndarray, support: np.ndarray, budgets: dict[str, float],
                     objective, batch: int, config: SearchConfig) -> dict:
    """Per budget: (the latpred surrogate of a device calibrated on the support's first
    TIMED_FIRST archs plus the archs `suggest_measurements` proposes to time for that
    budget, its calibration residuals, {timed arch: table latency})."""
    first = support[:TIMED_FIRST]
    scout = TableSurrogate(index, latpred_surrogate(predictor, f"{name}-first", archs, first,
                                                    table[first], batch), table[first].min())
    out = {}
    for budget, ms in budgets.items():
        measured = [archs[i] for i in first]
        extra = suggest_measurements("nb201", scout, ms, objective,
                                     SHOTS - TIMED_FIRST, config, measured)
        ids = np.array([*first, *(index[a] for a in extra)])
        device = f"{name}-{budget}"
        fn = TableSurrogate(index, latpred_surrogate(predictor, device, archs, ids, table[ids],
                                                     batch), table[ids].min())
        out[budget] = (fn, predictor.device_info(device).get("cv_log_residuals"),
                       {archs[i]: float(table[i]) for i in ids})
    return out


def macs_surrogate(store, support: np.ndarray, y_ms: np.ndarray):
    """log ms = a log MACs + b, least squares on the support archs; also its leave-one-out
    residuals (predicted - measured log ms), for the "auto" margin as latpred's."""
    col = FEATURE_SCHEMA.graph_features.index("log_macs")
    log_macs = np.log(np.expm1(store.graph_attr[:, col].numpy().astype(np.float64)))
    x, y = log_macs[support], np.log(y_ms)
    a, b = np.polyfit(x, y, 1)
    keep = ~np.eye(len(x), dtype=bool)
    loo = [np.polyval(np.polyfit(x[k], y[k], 1), x[i]) - y[i] for i, k in enumerate(keep)]
    return (lambda ids: (np.exp(a * log_macs[ids] + b), np.zeros(len(ids)))), loo


def oracle_surrogate(table: np.ndarray, support: np.ndarray, seed: int,
                     sigma: float = ORACLE_NOISE):
    """The measured latencies times exp(N(0, sigma)), and that noise on the support archs
    as its calibration residuals (predicted - measured log ms)."""
    noise = np.random.default_rng([seed, 1]).normal(0.0, sigma, table.size)
    noisy = table * np.exp(noise)
    return (lambda ids: (noisy[ids], np.zeros(len(ids)))), noise[support].tolist()


def score(archs: list[str], index: dict[str, int], table: np.ndarray, valid: np.ndarray,
          objective: np.ndarray, budget: float) -> dict:
    """feasible_share and objective_gap of returned archs against the measured table
    (`objective`: (n,) per table index, higher is better, positive)."""
    ids = np.array([index[a] for a in archs], dtype=np.int64)
    best_table = objective[valid & (table <= budget)].max()
    ids = ids[valid[ids]]
    ok = ids[table[ids] <= budget]
    best = objective[ok].max() if ok.size else 0.0
    return {"feasible_share": float(ok.size / ids.size) if ids.size else float("nan"),
            "objective_gap": float((best_table - best) / best_table),
            "returned": int(ids.size),
            "measured_over_budget": (table[ids] / budget).round(4).tolist(),
            "objective": objective[ids].tolist()}


def _margin(setting: str, residuals) -> float:
    """A fixed margin ("0.05"), or "auto" / "auto:Q" (the calibration's error quantile Q)."""
    if setting.startswith("auto"):
        q = float(setting.split(":", 1)[1]) if ":" in setting else MARGIN_QUANTILE
        return device_margin(residuals, q)
    return float(setting)


def run(args: argparse.Namespace) -> dict:
    split = get_split("nb201")
    devices = split.valid if args.valid else split.test
    space = get_search_space("nb201")
    archs = get_space("nb201").archs(args.data_dir)
    index = {a: i for i, a in enumerate(archs)}
    values = (space.params(archs) if args.objective == "params"
              else nb201_accuracy("cifar100", args.data_dir))

    def objective(names: list[str]) -> np.ndarray:
        return values[[index[a] for a in names]]

    predictor = Predictor.load(args.checkpoint)
    settings = [(m, k) for m in args.margins for k in args.spreads]
    raw: dict = {_key(m, k): {} for m, k in settings}
    coverage: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for device in devices:
        t0 = time.time()
        table = load_latency_table("nb201", device, args.data_dir)
        valid = valid_mask(table)
        batch = get_device(device).batch_size or 1
        store = build_corpus("nb201", batch_sizes=(batch,), data_dir=args.data_dir,
                             root=args.cache_dir, progress=False)[batch]
        budgets = {b: float(np.percentile(table[valid], q)) for b, q in BUDGETS.items()}
        for case in make_cases("nb201", device, table, SHOTS, args.seeds):
            y = table[case.support]
            calibrated = f"{device}-k{SHOTS}-s{case.seed}"
            macs_fn, macs_residuals = macs_surrogate(store, case.support, y)
            oracle_fn, oracle_residuals = oracle_surrogate(table, case.support, case.seed)
            fns = {"latpred": TableSurrogate(index, latpred_surrogate(
                       predictor, calibrated, archs, case.support, y, batch), y.min()),
                   "macs": TableSurrogate(index, macs_fn, y.min()),
                   "oracle": TableSurrogate(index, oracle_fn, y.min())}
            residuals = {"latpred": predictor.device_info(calibrated).get("cv_log_residuals"),
                         "macs": macs_residuals, "oracle": oracle_residuals}
            timed = {} if args.coverage_only else timed_surrogates(
                predictor, f"{calibrated}-timed", archs, index, table, case.support, budgets,
                objective, batch, SearchConfig(evaluations=args.budget_evals,
                                               seed=args.seed + case.seed, top=args.top))
            if args.coverage:
                ms_all, spread = predictor.predict_with_spread(store, calibrated)
                slack = np.log1p(_margin(args.margins[0], residuals["latpred"]))
                error = (np.log(table) - np.log(ms_all))[valid]
                coverage.setdefault(device, []).append(
                    (error, (error - slack) / np.maximum(spread[valid], 1e-6),
                     ms_all[valid] < y.min()))
            for margin, k in ([] if args.coverage_only else settings):
                fns["latpred"].k = k
                for budget, ms in budgets.items():
                    surrogates = dict(fns)
                    if budget in timed:
                        timed[budget][0].k = k
                        surrogates["latpred+timed"] = timed[budget][0]
                        residuals["latpred+timed"] = timed[budget][1]
                    for name, fn in surrogates.items():
                        config = SearchConfig(evaluations=args.budget_evals,
                                              margin=_margin(margin, residuals[name]),
                                              seed=args.seed + case.seed, top=args.top)
                        initial: list[str] = []
                        if name == "latpred+timed":  # as `search_device` on such a device
                            fn = with_measurements(fn, timed[budget][2], config.margin)
                            initial = list(timed[budget][2])
                        try:
                            found = regularized_evolution(space, fn, ms, objective, config,
                                                          initial=initial).archs
                        except NoFeasibleArchError:
                            found = []
                        s = score(found, index, table, valid, values, ms)
                        s["budget_ms"] = ms
                        raw[_key(margin, k)].setdefault(device, {}) \
                            .setdefault(budget, {}).setdefault(name, []).append(s)
        print(f"{device}: {time.time() - t0:.0f} s", flush=True)
    out = {"raw": raw, "devices": list(devices)}
    if coverage:
        t = np.concatenate([n for runs in coverage.values() for _, n, _ in runs])
        below = np.concatenate([b for runs in coverage.values() for _, _, b in runs])
        k = args.spreads[0]
        out["coverage"] = {
            **{f"q{int(q * 1000) / 10:g}": round(float(np.quantile(t, q)), 3)
               for q in (0.9, 0.95, 0.975)},
            # the Mondrian split of `search.bound_widths`: SPREAD_K / SPREAD_K_BELOW
            "q95_at_or_above_fastest": round(float(np.quantile(t[~below], 0.95)), 3),
            "q95_below_fastest": round(float(np.quantile(t[below], 0.95)), 3),
            "share_below_fastest": round(float(below.mean()), 4),
            # share of each device's archs whose measured latency is <= the prediction,
            # and <= the upper estimate (k = the first of --spreads), over the draws
            "by_device": {dev: {"prediction": float(np.mean([(e <= 0).mean() for e, _, _ in runs])),
                                "upper": float(np.mean([(n <= np.where(
                                    b, k * SPREAD_K_BELOW / SPREAD_K, k)).mean()
                                    for _, n, b in runs]))}
                          for dev, runs in coverage.items()}}
    return out


def _key(margin: str, k: float) -> str:
    return f"{margin} k={k:g}"


def _mean(values) -> float | None:
    """Mean of the defined values (None where no search returned an arch: JSON null)."""
    kept = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(kept)) if kept else None


def summarise(raw: dict) -> dict:
    """Mean over calibration draws per device / budget / surrogate; means over devices
    per budget level and overall."""
    keys = ("feasible_share", "objective_gap")
    devices = {
        dev: {budget: {name: {k: _mean([r[k] for r in runs]) for k in (*keys, "budget_ms")}
                       for name, runs in per_budget.items()}
              for budget, per_budget in per_dev.items()}
        for dev, per_dev in raw.items()}
    by_budget = {b: {name: {k: _mean([devices[d][b][name][k] for d in devices]) for k in keys}
                     for name in SURROGATES} for b in BUDGETS}
    mean = {name: {k: _mean([devices[d][b][name][k] for d in devices for b in BUDGETS])
                   for k in keys} for name in SURROGATES}
    return {"devices": devices, "mean": mean, "mean_by_budget": by_budget}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cells(row: dict) -> str:
    return " | ".join(_fmt(row[n][k]) for n in SURROGATES
                      for k in ("feasible_share", "objective_gap"))


def tables(summaries: dict, which: str, evals: int, top: int, seeds: int,
           objective: str) -> str:
    """Markdown tables, one per margin."""
    lines = []
    for margin, summary in summaries.items():
        lines += [f"\n## NB201 {which} devices, K={SHOTS}, margin {margin}, {evals} "
                  f"evaluations, top {top}, {seeds} draws\n",
                  f"feasible share / objective gap ({objective}) of the returned archs\n",
                  "| device | budget | ms | latpred share | latpred gap | latpred+timed share "
                  "| latpred+timed gap | macs share | macs gap "
                  f"| oracle±{ORACLE_NOISE:.0%} share | oracle±{ORACLE_NOISE:.0%} gap |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for dev, per_dev in summary["devices"].items():
            for budget, r in per_dev.items():
                lines.append(f"| {dev} | {budget} | {r['latpred']['budget_ms']:.3f} | "
                             f"{_cells(r)} |")
        for b, m in summary["mean_by_budget"].items():
            lines.append(f"| **mean {b}** | | | {_cells(m)} |")
        lines.append(f"| **mean** | | | {_cells(summary['mean'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-evals", type=int, default=1000,
                        help="distinct architectures evaluated per search")
    parser.add_argument("--seed", type=int, default=0, help="search seed offset")
    parser.add_argument("--seeds", type=int, default=5, help="calibration draws per device")
    parser.add_argument("--top", type=int, default=10, help="architectures returned per search")
    parser.add_argument("--margins", type=lambda s: s.split(","), default=["auto"],
                        help="comma-separated safety margins: fixed (0.05) or auto[:Q] (the "
                             "calibration's error quantile Q); the first is reported")
    parser.add_argument("--spreads", type=lambda s: [float(v) for v in s.split(",")],
                        default=[SPREAD_K], help="comma-separated widths k of latpred's upper "
                        "bound predicted x exp(k x spread); 0: the prediction (default "
                        f"{SPREAD_K}); the first is reported")
    parser.add_argument("--coverage", action="store_true",
                        help="also quantiles of the normalised error over the whole tables")
    parser.add_argument("--coverage-only", action="store_true",
                        help="with --coverage: no searches, only the coverage report")
    parser.add_argument("--objective", choices=("params", "accuracy"), default="params",
                        help="maximised under the budget: parameters (the CLI's built-in "
                             "proxy) or NB201 CIFAR-100 test accuracy (from the data dir)")
    parser.add_argument("--valid", action="store_true",
                        help="meta-valid devices instead (to choose the margin)")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.coverage_only and not args.coverage:
        parser.error("--coverage-only needs --coverage")

    start = time.time()
    out = run(args)
    seconds = time.time() - start
    which = "meta-valid" if args.valid else "meta-test"
    summaries = {m: summarise(raw) for m, raw in out["raw"].items()}
    if not args.coverage_only:
        print(tables(summaries, which, args.budget_evals, args.top, args.seeds, args.objective))
    if "coverage" in out:
        cov = out["coverage"]
        print("\nnormalised error (log measured - log predicted - log(1 + margin)) / spread, "
              "quantiles over the whole tables: "
              f"{ {q: v for q, v in cov.items() if q != 'by_device'} }")
        print(f"\nmeasured latency <= prediction / <= upper estimate (k={args.spreads[0]:g}), "
              "share of each device's archs\n\n| device | prediction | upper |\n|---|---|---|")
        for dev, c in cov["by_device"].items():
            print(f"| {dev} | {c['prediction']:.3f} | {c['upper']:.3f} |")
    print(f"\nseconds: {seconds:.1f}")

    if args.json and args.coverage_only:
        report = {"split": which, "shots": SHOTS, "seeds": args.seeds,
                  "spread_k": args.spreads[0], "margin": args.margins[0],
                  "coverage": out["coverage"], "seconds": round(seconds, 1),
                  "checkpoint": str(args.checkpoint or "shipped")}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    elif args.json:
        main_margin = _key(args.margins[0], args.spreads[0])
        report = {
            **summaries[main_margin], "margin": main_margin, "split": which,
            "budgets": {b: f"{q}th percentile of the device's measured latencies"
                        for b, q in BUDGETS.items()},
            "objective": args.objective, "shots": SHOTS, "budget_evals": args.budget_evals,
            "seeds": args.seeds, "seed": args.seed, "top": args.top,
            "spread_k": args.spreads[0], "coverage": out.get("coverage"),
            "margins": {str(m): s for m, s in summaries.items()},
            "raw": out["raw"][main_margin], "seconds": round(seconds, 1),
            "checkpoint": str(args.checkpoint or "shipped"),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        png = args.json.with_suffix(".png")
        plot(out["raw"][main_margin], png, f"NB201 {which}, K={SHOTS}, margin {main_margin}",
             args.objective)
        print(f"wrote {args.json} and {png}")


def plot(raw: dict, path: Path, title: str, objective: str) -> None:
    """Per device: measured latency / budget vs the objective of every returned arch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = list(raw)
    cols = min(3, len(devices))
    rows = (len(devices) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.8 * rows), squeeze=False)
    scale, label = (1e6, "params (M)") if objective == "params" else (1.0, objective)
    markers = {"tight": "o", "median": "s", "loose": "^"}
    colours = {"latpred": "tab:blue", "latpred+timed": "tab:purple", "macs": "tab:orange",
               "oracle": "tab:green"}
    for ax, device in zip(axes.flat, devices, strict=False):
        for budget, per_budget in raw[device].items():
            for name, runs in per_budget.items():
                x = [v for r in runs for v in r["measured_over_budget"]]
                y = [v / scale for r in runs for v in r["objective"]]
                ax.scatter(x, y, s=10, alpha=0.5, marker=markers[budget], c=colours[name],
                           label=f"{name} {budget}")
        ax.axvline(1.0, color="k", ls="--", lw=0.8)
        ax.set_title(device)
        ax.set_xlabel("measured latency / budget")
        ax.set_ylabel(label)
    axes.flat[0].legend(fontsize=6)
    for ax in list(axes.flat)[len(devices):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
