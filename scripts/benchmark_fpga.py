"""FPGA resource prediction on real hls4ml syntheses (wa-hls4ml): graph model vs baselines.

    python scripts/benchmark_fpga.py --seeds 3 --json results/fpga.json

Per seed, the fully connected networks are split by architecture (no `model_string` in
both train and test; 20% of them held out), and in the same run:

- graph: `predictor.fpga` (graph encoder over the ONNX operator graph, conditioned on the
  synthesis configuration), trained on the training networks only;
- analytic: hls4ml-style estimates (`predictor.hls4ml.analytic_terms`): cycles = sum of
  the layers' used reuse factors (x output positions) + a constant, DSP = multipliers
  (0 at 4 bits), LUT / FF / BRAM = least squares on multiplier bits, weight bits,
  accumulator bits and multipliers, fitted on the training rows;
- gbr: sklearn `HistGradientBoostingRegressor` on hand features (the 4 layer widths,
  total multiplications, precision, reuse factor), log1p targets;
- gbr_hls: the same regressor given the per-layer hls4ml features the graph model sees
  (used reuse factors, multipliers, bits), to separate features from model.

All predictions are rounded to each metric's unit (integers; BRAM in halves) and scored
per target with SMAPE (%), R^2 and MAE; SMAPE counts rows where prediction and truth are
both 0 (designs without DSP) as 0 error. `ii_cycles` is not scored: the data holds no
initiation interval (its interval columns copy the latency).

Few-shot conv2d: the conv2d networks are an unseen kind of design. The seed's graph
model (trained on dense networks only) is adapted on 10 conv2d syntheses (whole
architectures, drawn at random) with `adapt_fpga`, and scored on the other conv2d
architectures against the unadapted model and the analytic estimate; hand features do
not apply (other depth). Each seed averages `--draws` support draws.

Writes a markdown table, `--json OUT` and a predicted-vs-measured plot `OUT.png`.
`--save-checkpoint PATH` finally trains on every synthesis (dense and conv2d) and saves
the shipped checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from predictor.encoder import EncoderConfig
from predictor.fpga import FpgaNetConfig, design_batch
from predictor.fpga_data import TARGETS, FpgaDataset, dense_onnx, load_wa_hls4ml
from predictor.fpga_training import (
    EncodedDesigns,
    FpgaTrainConfig,
    adapt_fpga,
    arch_layers,
    encode,
    predict_log1p,
    regression_metrics,
    row_configs,
    to_counts,
    train_fpga,
)
from predictor.graph import extract_graph
from predictor.hls4ml import FpgaConfig, analytic_terms, hls_layers
from predictor.storage import atomic_write_json, atomic_write_text

TEST_FRACTION = 0.2
SUPPORT = 10


def split_by_arch(data: FpgaDataset, rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): a random TEST_FRACTION of the architectures is tested."""
    rng = np.random.default_rng(seed)
    archs = np.unique(data.arch[rows])
    test = set(rng.choice(archs, size=round(len(archs) * TEST_FRACTION), replace=False))
    is_test = np.array([a in test for a in data.arch[rows]])
    return rows[~is_test], rows[is_test]


def analytic_table(data: FpgaDataset, layers) -> np.ndarray:
    """(R, 6) analytic terms of every synthesis (`analytic_terms` order below)."""
    keys = ("cycles", "dsp", "multipliers", "mult_bits", "weight_bits", "acc_bits")
    return np.array([[t[k] for k in keys] for t in (
        analytic_terms(layers[data.arch[r]], c)
        for r, c in zip(range(len(data)), row_configs(data, np.arange(len(data))), strict=True))])


class Analytic:
    """hls4ml-style estimate with a few least-squares constants (module docstring)."""

    def fit(self, terms: np.ndarray, y: np.ndarray) -> Analytic:
        self.offset = float(np.median(y[:, 4] - terms[:, 0]))
        design = self._design(terms)
        self.coef = {i: np.linalg.lstsq(design, y[:, i], rcond=None)[0] for i in (0, 1, 3)}
        return self

    @staticmethod
    def _design(terms: np.ndarray) -> np.ndarray:
        return np.column_stack([np.ones(len(terms)), terms[:, 2:6]])

    def predict(self, terms: np.ndarray) -> np.ndarray:
        out = np.zeros((len(terms), len(TARGETS)))
        design = self._design(terms)
        for i, coef in self.coef.items():
            out[:, i] = design @ coef
        out[:, 2] = terms[:, 1]
        out[:, 4] = terms[:, 0] + self.offset
        return out


def hand_features(data: FpgaDataset, rows: np.ndarray) -> np.ndarray:
    """Widths, total multiplications, precision, reuse factor (3-layer dense nets only)."""
    widths = np.array([[int(w) for w in data.archs[a].split("-")] for a in data.arch[rows]])
    mults = (widths[:, :-1] * widths[:, 1:]).sum(1)
    return np.column_stack([widths, mults, data.precision[rows], data.reuse_factor[rows]])


def hls_features(data: FpgaDataset, rows: np.ndarray, layers, terms: np.ndarray) -> np.ndarray:
    """Hand features + per-layer used reuse factor, multipliers, and the analytic terms."""
    per_layer = []
    for r in rows:
        rf = int(data.reuse_factor[r])
        per_layer.append([v for layer in layers[data.arch[r]]
                          for v in (layer.reuse(rf), layer.multipliers(rf))])
    return np.column_stack([hand_features(data, rows), np.array(per_layer), terms[rows]])


def gbr_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int
                ) -> np.ndarray:
    from sklearn.ensemble import HistGradientBoostingRegressor

    out = np.zeros((len(x_test), len(TARGETS)))
    for i in range(len(TARGETS)):
        model = HistGradientBoostingRegressor(max_iter=500, learning_rate=0.1, random_state=seed)
        model.fit(x_train, np.log1p(y_train[:, i]))
        out[:, i] = np.expm1(model.predict(x_test))
    return out


def rounded(values: np.ndarray) -> np.ndarray:
    return to_counts(np.log1p(np.clip(values, 0, None)))


def score(pred: np.ndarray, true: np.ndarray) -> dict[str, dict[str, float]]:
    return {t: regression_metrics(pred[:, i], true[:, i]) for i, t in enumerate(TARGETS)}


def support_draw(data: FpgaDataset, rows: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """SUPPORT rows made of whole conv2d architectures (random order, greedy fill), rest."""
    archs = rng.permutation(np.unique(data.arch[rows]))
    chosen, size = [], 0
    for a in archs:
        n = int((data.arch[rows] == a).sum())
        if size + n <= SUPPORT:
            chosen.append(a)
            size += n
    is_support = np.isin(data.arch[rows], chosen)
    return rows[is_support], rows[~is_support]


def other_depths(nets, seed: int, count: int = 100) -> dict:
    """Dense nets of 2, 4 and 5 layers (no synthesis labels exist): the graph model's
    cycles and DSP against hls4ml's rule, which is exact on the 3-layer data (latency =
    sum of used reuse factors + 3..5 cycles, DSP = multipliers above 4 bits)."""
    rng = np.random.default_rng(2000 + seed)
    pool = np.arange(8, 129, 8)
    out = {}
    for depth in (2, 4, 5):
        graphs, layers, configs = [], [], []
        for _ in range(count):
            graph = extract_graph(dense_onnx(tuple(int(w) for w in rng.choice(pool, depth + 1))))
            graphs.append(graph)
            layers.append(hls_layers(graph))
            configs.append(FpgaConfig(int(rng.choice([4, 8, 12, 16])),
                                      int(rng.choice([1024, 2047, 3070, 4093]))))
        batch, cond = design_batch(graphs, layers, configs)
        pred = to_counts(predict_log1p(nets, batch, cond))
        terms = [analytic_terms(layer, c) for layer, c in zip(layers, configs, strict=True)]
        rule_cycles = np.array([t["cycles"] + 5 for t in terms])
        rule_dsp = np.array([t["dsp"] for t in terms])
        out[f"{depth}_layers"] = {
            "latency_cycles_vs_rule": regression_metrics(pred[:, 4], rule_cycles),
            "dsp_vs_rule": regression_metrics(pred[:, 2], rule_dsp)}
    return out


def run_seed(data: FpgaDataset, enc: EncodedDesigns, layers, terms: np.ndarray, seed: int,
             args: argparse.Namespace) -> tuple[dict, dict]:
    dense, conv = data.rows_of_kind("dense"), data.rows_of_kind("conv2d")
    train, test = split_by_arch(data, dense, seed)
    y_test = data.targets[test]
    result: dict = {"seed": seed, "train_rows": int(len(train)), "test_rows": int(len(test))}

    start = time.monotonic()
    checkpoint = train_fpga(data, train, train_config(args, seed), encoded=enc)
    result["graph_train_seconds"] = round(time.monotonic() - start, 1)
    sub = enc.subset(test)
    graph = to_counts(predict_log1p(checkpoint.nets, sub.batch, sub.cond))
    result["graph"] = score(graph, y_test)

    analytic = Analytic().fit(terms[train], data.targets[train])
    result["analytic"] = score(rounded(analytic.predict(terms[test])), y_test)
    start = time.monotonic()
    gbr = gbr_predict(hand_features(data, train), data.targets[train],
                      hand_features(data, test), seed)
    result["gbr_seconds"] = round(time.monotonic() - start, 1)
    result["gbr"] = score(rounded(gbr), y_test)
    gbr_hls = gbr_predict(hls_features(data, train, layers, terms), data.targets[train],
                          hls_features(data, test, layers, terms), seed)
    result["gbr_hls"] = score(rounded(gbr_hls), y_test)

    rng = np.random.default_rng(1000 + seed)
    fewshot = {"unadapted": [], "adapted": [], "analytic": []}
    for _ in range(args.draws):
        support, query = support_draw(data, conv, rng)
        q = enc.subset(query)
        nets = adapt_fpga(checkpoint.nets, enc.subset(support), steps=args.adapt_steps,
                          lr=args.adapt_lr)
        for name, models in (("unadapted", checkpoint.nets), ("adapted", nets)):
            fewshot[name].append(score(to_counts(predict_log1p(models, q.batch, q.cond)),
                                       data.targets[query]))
        fewshot["analytic"].append(score(rounded(analytic.predict(terms[query])),
                                         data.targets[query]))
    result["fewshot_conv2d"] = {k: mean_scores(v) for k, v in fewshot.items()}
    result["other_depths"] = other_depths(checkpoint.nets, seed)
    plot = {"test": test, "graph": graph, "gbr": rounded(gbr)}
    return result, plot


def mean_scores(runs: list[dict]) -> dict:
    """Mean (and std over runs) of each target's metrics."""
    out = {}
    for t in runs[0]:
        names = [m for m in runs[0][t] if m != "std"]
        out[t] = {m: float(np.nanmean([r[t][m] for r in runs])) for m in names}
        if len(runs) > 1:
            out[t]["std"] = {m: float(np.nanstd([r[t][m] for r in runs])) for m in names}
    return out


def train_config(args: argparse.Namespace, seed: int) -> FpgaTrainConfig:
    return FpgaTrainConfig(net=FpgaNetConfig(encoder=EncoderConfig(hidden=args.hidden, layers=2)),
                           epochs=args.epochs, ensemble=args.ensemble, seed=seed)


def table(summary: dict) -> str:
    methods = ("graph", "analytic", "gbr", "gbr_hls")
    lines = ["| target | metric | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for t in TARGETS:
        for m in ("smape", "r2", "mae"):
            cells = [f"{summary[k][t][m]:.4f}" if m == "r2" else f"{summary[k][t][m]:.2f}"
                     for k in methods]
            lines.append(f"| {t} | {m} | " + " | ".join(cells) + " |")
    few = summary["fewshot_conv2d"]
    lines += ["", f"Few-shot conv2d ({SUPPORT} support syntheses):", "",
              "| target | unadapted SMAPE | adapted SMAPE | analytic SMAPE | "
              "unadapted R2 | adapted R2 |", "|---|---|---|---|---|---|"]
    for t in TARGETS:
        lines.append(f"| {t} | {few['unadapted'][t]['smape']:.1f} | "
                     f"{few['adapted'][t]['smape']:.1f} | {few['analytic'][t]['smape']:.1f} | "
                     f"{few['unadapted'][t]['r2']:.3f} | {few['adapted'][t]['r2']:.3f} |")
    lines += ["", "Other depths (no labels; graph model vs hls4ml's rule, SMAPE %):", "",
              "| dense layers | latency_cycles | dsp |", "|---|---|---|"]
    for depth, scores in summary["other_depths"].items():
        lines.append(f"| {depth.split('_')[0]} | {scores['latency_cycles_vs_rule']['smape']:.2f} | "
                     f"{scores['dsp_vs_rule']['smape']:.2f} |")
    return "\n".join(lines)


def save_plot(path: Path, data: FpgaDataset, plot: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true = data.targets[plot["test"]]
    fig, axes = plt.subplots(1, len(TARGETS), figsize=(4 * len(TARGETS), 4))
    for i, (ax, t) in enumerate(zip(axes, TARGETS, strict=True)):
        lo, hi = max(true[:, i].min(), 0.5), true[:, i].max()
        ax.scatter(true[:, i] + 0.5, plot["gbr"][:, i] + 0.5, s=3, c="0.7", label="gbr")
        ax.scatter(true[:, i] + 0.5, plot["graph"][:, i] + 0.5, s=3, label="graph")
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set(xscale="log", yscale="log", title=t, xlabel="measured + 0.5",
               ylabel="predicted + 0.5")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def benchmark(data: FpgaDataset, enc: EncodedDesigns, layers, terms: np.ndarray,
              args: argparse.Namespace) -> dict:
    """Run every seed, print the table, write the JSON, markdown and plot; the summary."""
    runs, plot = [], None
    for seed in range(args.seeds):
        result, seed_plot = run_seed(data, enc, layers, terms, seed, args)
        plot = plot or seed_plot
        runs.append(result)
        print(f"seed {seed}: graph {json.dumps({t: round(v['smape'], 2) for t, v in result['graph'].items()})}"
              f" ({result['graph_train_seconds']} s)", flush=True)
    summary = {k: mean_scores([r[k] for r in runs]) for k in ("graph", "analytic", "gbr", "gbr_hls")}
    summary["fewshot_conv2d"] = {k: mean_scores([r["fewshot_conv2d"][k] for r in runs])
                                 for k in ("unadapted", "adapted", "analytic")}
    summary["other_depths"] = {d: mean_scores([r["other_depths"][d] for r in runs])
                               for d in runs[0]["other_depths"]}
    text = table(summary)
    print(text)
    report = {
        "targets": summary["graph"],
        "baselines": {k: summary[k] for k in ("analytic", "gbr", "gbr_hls")},
        "fewshot_conv2d": {"support_syntheses": SUPPORT, "draws_per_seed": args.draws,
                           "adapt_steps": args.adapt_steps, **summary["fewshot_conv2d"]},
        "other_depths": summary["other_depths"],
        "data": data.report,
        "seeds": args.seeds,
        "config": {"epochs": args.epochs, "hidden": args.hidden, "ensemble": args.ensemble,
                   "test_fraction": TEST_FRACTION},
        "per_seed": runs,
        "notes": [
            "SMAPE rows where prediction and measurement are both 0 count as 0 error.",
            "Predictions of every method are rounded to the metric's unit (BRAM: 0.5).",
            "ii_cycles is not scored: the data's interval columns copy the latency.",
            "conv2d graphs are approximate (kernel, image size and last filters are not "
            "in the CSV; see predictor/fpga_data.py).",
        ],
        "machine": {"platform": platform.platform(), "threads": args.threads},
    }
    if args.json:
        atomic_write_json(args.json, report)
        atomic_write_text(args.json.with_suffix(".md"), text + "\n")
        save_plot(args.json.with_suffix(".png"), data, plot)
        print(f"wrote {args.json}, {args.json.with_suffix('.md')}, {args.json.with_suffix('.png')}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3,
                        help="benchmark seeds (0: only --save-checkpoint)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT")
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--hidden", type=int, default=96)
    parser.add_argument("--ensemble", type=int, default=1)
    parser.add_argument("--draws", type=int, default=5, help="few-shot support draws per seed")
    parser.add_argument("--adapt-steps", type=int, default=100)
    parser.add_argument("--adapt-lr", type=float, default=3e-3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-checkpoint", type=Path, default=None, metavar="PATH",
                        help="also train on every synthesis and save the shipped checkpoint")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    data = load_wa_hls4ml(args.data_dir, args.cache_dir)
    layers = arch_layers(data)
    enc = encode(data, layers=layers)
    terms = analytic_table(data, layers)
    summary = benchmark(data, enc, layers, terms, args) if args.seeds > 0 else None
    if args.save_checkpoint:
        rows = np.arange(len(data))
        checkpoint = train_fpga(data, rows, train_config(args, 0), encoded=enc)
        checkpoint.info["data"] = "wa-hls4ml dense + conv2d (all successful syntheses)"
        if summary is not None:
            checkpoint.info["benchmark"] = {t: summary["graph"][t] for t in TARGETS}
        checkpoint.save(args.save_checkpoint)
        print(f"wrote {args.save_checkpoint} ({checkpoint.info['train_seconds']} s)")


if __name__ == "__main__":
    main()
