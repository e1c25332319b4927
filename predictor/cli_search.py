"""`latpred search`: latency-constrained architecture search, a thin handler over
`predictor.search`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from predictor.cli_measure import add_plugin_argument


def cmd_search(args: argparse.Namespace) -> int:
    from predictor.api import Predictor
    from predictor.search import (
        SearchConfig,
        builtin_objective,
        objective_names,
        search_device,
        suggest_for_device,
    )
    from predictor.spaces.custom import load_plugins

    load_plugins(args.plugin)
    builtin_objective(args.objective, args.space)  # unknown objective: fail before loading
    config = SearchConfig(evaluations=args.budget_evals, population=args.population,
                          sample=args.sample, margin=args.margin, seed=args.seed, top=args.top,
                          spread_k=args.spread_k)
    config.check()
    predictor = Predictor.load(args.checkpoint)
    if args.suggest is not None:
        archs = suggest_for_device(predictor, args.space, args.device, args.latency_ms,
                                   args.objective, args.suggest, config)
        print(json.dumps(archs, indent=2) if args.json else "\n".join(archs))
        return 0
    result = search_device(predictor, args.space, args.device, args.latency_ms,
                           args.objective, config)
    if args.json:
        print(json.dumps({"space": args.space, "device": args.device,
                          "budget_ms": result.budget_ms, "margin": result.margin,
                          "spread_k": config.spread_k,
                          "objective": args.objective, "evaluations": result.evaluations,
                          "feasible": result.feasible, "seed": args.seed,
                          "archs": result.rows()}, indent=2))
        return 0
    print(f"{args.space} on {args.device}: budget {result.budget_ms:g} ms (upper ms x "
          f"{1 + result.margin:g} <= budget), objective {args.objective} "
          f"({objective_names()[args.objective]}); {result.evaluations} evaluated, "
          f"{result.feasible} within budget")
    print(f"{'predicted':>10}    {'upper':>10}    {'objective':>14}  arch")
    for row in result.rows():
        timed = "  (measured)" if row["measured"] else ""
        print(f"{row['latency_ms']:10.3f} ms {row['latency_bound_ms']:10.3f} ms "
              f"{_objective_text(row['objective']):>14}  {row['arch']}{timed}")
    return 0


def _objective_text(value: float) -> str:
    """Counts with thousands separators (params: 1,045,466), other values to 4 digits
    (an accuracy: 67.31)."""
    return f"{value:,.0f}" if abs(value) >= 1000 and float(value).is_integer() else f"{value:.4g}"


def register(sub: argparse._SubParsersAction) -> None:
    from predictor.search import (
        DEFAULT_MARGIN,
        OBJECTIVES,
        SPREAD_K,
        SPREAD_K_BELOW,
        SUGGEST_FRACTIONS,
        SearchConfig,
    )

    defaults = SearchConfig()
    p = sub.add_parser("search", help="evolutionary search for architectures that meet a "
                                      "latency budget on a device (predictor as constraint)")
    p.add_argument("--space", metavar="SPACE", required=True,
                   help="nb201, fbnet or a space a --plugin registers")
    add_plugin_argument(p)
    p.add_argument("--device", required=True,
                   help="a known device (see 'latpred devices'), e.g. pixel3@nb201")
    p.add_argument("--latency-ms", type=float, required=True, metavar="BUDGET",
                   help="latency budget in ms")
    p.add_argument("--objective", default="params",
                   help=f"what to maximise: {', '.join(OBJECTIVES)} (default params), or "
                        "a name a --plugin registers (predictor.search.register_objective)")
    p.add_argument("--budget-evals", type=int, default=defaults.evaluations, metavar="N",
                   help="distinct architectures evaluated (default %(default)s)")
    p.add_argument("--population", type=int, default=defaults.population)
    p.add_argument("--sample", type=int, default=defaults.sample,
                   help="tournament size (default %(default)s)")
    p.add_argument("--margin", type=float, default=None,
                   help="safety margin on predicted latency, e.g. 0.05 (default: from the "
                        f"device's calibration error, {DEFAULT_MARGIN:g} without one)")
    p.add_argument("--spread-k", type=float, default=defaults.spread_k, metavar="K",
                   help="upper bound = predicted x exp(K x spread of the candidate "
                        f"adaptations), K x {SPREAD_K_BELOW:g}/{SPREAD_K:g} where the "
                        "prediction is below the device's fastest calibration measurement "
                        "(default %(default)s; 0: the prediction itself)")
    p.add_argument("--suggest", type=int, default=None, metavar="N",
                   help=f"instead of searching, print N (1-{len(SUGGEST_FRACTIONS)}) archs to "
                        "time on the device: the best arch whose prediction meets the budget, "
                        "then 0.95 of it, 0.9 of it... Calibrate again with them added to your "
                        "CSV: the search holds archs the device was calibrated on to their "
                        "measured latency")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=defaults.top,
                   help="architectures to print (default %(default)s)")
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_search)
