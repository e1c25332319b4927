"""Latency-constrained architecture search: regularised evolution with a latency surrogate.

    >>> p = Predictor.load()
    >>> result = search_device(p, "nb201", "pixel3@nb201", budget_ms=5.0)   # maximise params
    >>> result.archs[0], result.latency_ms[0], result.objective[0]

The search (Real et al., AAAI 2019, "regularised evolution") keeps a population of the
`population` most recent architectures; each child mutates the best of `sample` random
members, and the oldest member dies. Children are proposed `generation` at a time and
evaluated in one call of the latency surrogate and one of the objective, so any batched
predictor (`Predictor.predict_batch`, a lookup table, a MACs fit) plugs in.

The latency constraint is `bound_ms * (1 + margin) <= budget_ms`, where the bound is the
surrogate's upper estimate of an architecture's latency (the prediction itself for a
surrogate that gives none; the predictor's `predicted * exp(k * spread)`, wider
where its candidate adaptations disagree, k = SPREAD_K or, below the device's fastest
measurement, SPREAD_K_BELOW) and the margin the device's calibration error:
together they absorb the surrogate's error so that returned architectures really meet the
budget. Selection follows the feasibility rule: a feasible architecture beats an
infeasible one, feasible ones compare by objective (higher is better), infeasible ones by
their bound (lower is better), which walks a population that starts over budget towards
it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from predictor.errors import PredictorError

log = logging.getLogger(__name__)

LatencyFn = Callable[[list[str]], "np.ndarray | tuple[np.ndarray, np.ndarray]"]
"""Canonical arch strings -> (n,) predicted latency in ms, or (predicted, upper bound)
both (n,) ms; called once per batch."""
Objective = Callable[[list[str]], np.ndarray]
"""Canonical arch strings -> (n,) objective, higher is better; called once per batch."""

# Safety margin on the predicted latency: `margin=None` (the default) takes it from the
# device's calibration, `device_margin`: the MARGIN_QUANTILE quantile of how much the
# calibrated predictor under-predicted held-out measurements (5-fold cross-validation on
# the calibration samples, stored by `Predictor.adapt`). A device the predictor knows well
# gets a small margin, one it ranks poorly a large one. DEFAULT_MARGIN serves devices
# without stored residuals (the shipped training devices).
# Both were chosen on HELP's NB201 meta-valid devices only (titanx_1, titanx_32,
# titanx_256, gold_6240; never a meta-test device), each calibrated with 10 samples drawn
# as in the few-shot benchmark (5 draws), budgets at the 10th / 50th / 90th percentile of
# the device's measured latencies, 1000 evaluations, top 10 returned
# (`scripts/benchmark_constrained_search.py --valid`, results/constrained_search_nb201_valid*).
# Rule: the smallest setting whose returned archs truly meet the budget >= 95% of the time
# at every budget level. Share tight / median / loose (mean objective gap), 5 draws:
#   fixed 0: 0.955 / 0.995 / 0.89; 0.02: 0.98 / 1.00 / 0.94; 0.05: 0.98 / 1.00 / 0.96 (0.17);
#   0.10: 1.00 / 1.00 / 0.99 (0.22); quantile 0.5: 0.955 / 0.99 / 0.885 (0.14);
#   0.75: 0.98 / 1.00 / 0.95 (0.17); 0.9: 0.975 / 1.00 / 0.985 (0.17); 1.0: 0.975 / 1.00 /
#   0.995 (0.19) (results/constrained_search_nb201_valid_auto.txt).
# Quantile 0.75 and the fixed 0.05 tie on these devices, which all resemble training
# devices; the quantile is the default because it widens the margin where the calibration
# shows the predictor is unsure of the device.
DEFAULT_MARGIN = 0.05
MARGIN_QUANTILE = 0.75
# Width of the predictor's upper bound, predicted * exp(SPREAD_K * spread) (`spread`: the
# std of log-latency over the candidate adaptations, `Predictor.predict_with_spread`).
# Split-conformal on HELP's NB201 meta-valid devices only (4 devices x 5 draws of 10
# samples, the whole table; never a meta-test device): the 95th percentile of
# (measured - predicted - log(1 + margin)) / spread in log space was 1.70 with the
# blended "auto" calibration (2.2 when "auto" picked one candidate: the kernel sums
# disagree more with the network where it is unsure, so the spread is wider)
# (`scripts/benchmark_constrained_search.py --valid --coverage`; stop 18, after the fix
# of parallel predictions with fine-tuned heads, which had given 1.59). Recalibrated in
# stop 20 for the one-step checkpoint: 1.90; in stop 24 for stop 23's checkpoint: 1.80
# (q90 0.89, q97.5 2.84); in stop 25 for the eager NB201 graphs (`predictor.corpus`): 2.17
# (q90 0.97, q97.5 3.72); in stop 27 for "auto" on absolute errors at temperature 0.25
# (a sharper blend whose kept candidates disagree more): 2.29 (q90 1.08, q97.5 3.84); in
# stop 28 for the stage-2 checkpoint (`configs/latpred_stage2.yaml`): 2.12 (q90 1.06,
# q97.5 3.58); in stop 29 (stage 2 with zoo6): 2.12 again (q90 1.005, q97.5 3.70).
# Spreads over the blend's kept candidates only were tried in stop
# 25: q95 2.80, and at that width the valid searches tied (feasible 0.995 vs 0.990,
# gap 0.240 vs 0.232), so all candidates stay. The margin alone covers devices like the
# training ones; the spread widens the bound where the device is unlike them (there the
# candidates disagree).
# Stop 30: split by region (Mondrian conformal), because the candidates disagree most
# where a prediction extrapolates below the device's fastest measured model, and there the
# network over-predicts (the fastest archs regress to the mean: safe for a budget), so one
# k for all archs made tight budgets needlessly conservative (a calibration whose
# measurements were all slower than the budget could find no arch within it). On the same
# meta-valid draws the q95 was 1.63 for predictions below the fastest measurement (33,205
# of 312,500) and 2.17 for the others (`--coverage`, which now reports both).
SPREAD_K = 2.2
SPREAD_K_BELOW = 1.6


class SearchError(PredictorError, ValueError):
    """Bad search input: a non-positive budget, an unknown objective or space."""


class NoFeasibleArchError(SearchError):
    """The search found no architecture that meets the latency budget under the surrogate."""


# ------------------------------------------------------------------------- search spaces


class SearchSpace:
    """A search space as genes: `positions` slots, each holding one of `options` (by index).

    Subclasses say how genes map to the space's canonical arch string and back, and
    count parameters; random sampling and mutation are the same for every space.
    """

    name: str = ""
    options: tuple[str, ...] = ()
    positions: int = 0

    def key(self, genes: Sequence[int]) -> str:
        """The canonical arch string of `genes` (what `Predictor.predict_batch` takes)."""
        raise NotImplementedError

    def genes(self, arch: str | Sequence) -> tuple[int, ...]:
        """Inverse of `key`: option index per position (raises `InvalidArchError`)."""
        raise NotImplementedError

    def _param_table(self) -> tuple[float, np.ndarray]:
        raise NotImplementedError

    def random(self, rng: np.random.Generator) -> tuple[int, ...]:
        """A uniformly random architecture."""
        return tuple(int(g) for g in rng.integers(len(self.options), size=self.positions))

    def mutate(self, genes: Sequence[int], rng: np.random.Generator) -> tuple[int, ...]:
        """Change one random position to a different option (one edge op / one block)."""
        out = list(genes)
        pos = int(rng.integers(self.positions))
        new = int(rng.integers(len(self.options) - 1))
        out[pos] = new if new < out[pos] else new + 1
        return tuple(out)

    @cached_property
    def param_table(self) -> tuple[float, np.ndarray]:
        """Parameters of the network = `base + sum_p table[p, genes[p]]`: (base, (positions,
        options)). Exact, since every edge / layer owns its modules."""
        return self._param_table()

    def params(self, archs: Sequence[str]) -> np.ndarray:
        """(n,) trainable parameters (torch `nn.Module.parameters()`) of the networks."""
        base, table = self.param_table
        genes = np.array([self.genes(a) for a in archs], dtype=np.int64).reshape(-1, self.positions)
        return base + table[np.arange(self.positions), genes].sum(axis=1)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


class NB201Space(SearchSpace):
    """NAS-Bench-201: 6 cell edges, each one of 5 ops (`predictor.spaces.nb201`)."""

    name = "nb201"

    def __init__(self) -> None:
        from predictor.spaces import nb201

        self._nb201 = nb201
        self.options = nb201.OPS
        self.positions = len(nb201.EDGES)

    def key(self, genes: Sequence[int]) -> str:
        return self._nb201.arch_to_str([self.options[g] for g in genes])

    def genes(self, arch: str | Sequence) -> tuple[int, ...]:
        ops = self._nb201.parse_arch(arch if isinstance(arch, str)
                                     else self._nb201.arch_to_str(arch))
        return tuple(self.options.index(op) for op in ops)

    def _param_table(self) -> tuple[float, np.ndarray]:
        nb = self._nb201
        net = nb.NB201Network(nb.arch_to_str(["none"] * self.positions))
        # Every cell edge is an op at its stage's channels, stride 1, whatever its position.
        row, per_channels = np.zeros(len(self.options)), {}
        channels = net.stem[0].out_channels
        for cell in net.cells:
            if isinstance(cell, nb.ResNetBasicBlock):
                channels = cell.conv_b[1].out_channels
                continue
            if channels not in per_channels:
                per_channels[channels] = [_count(nb.make_op(op, channels)) for op in self.options]
            row += per_channels[channels]
        return float(_count(net)), np.tile(row, (self.positions, 1))


class FBNetSpace(SearchSpace):
    """FBNet: 22 layers, each one of 9 blocks (`predictor.spaces.fbnet`)."""

    name = "fbnet"

    def __init__(self) -> None:
        from predictor.spaces import fbnet

        self._fbnet = fbnet
        self.options = fbnet.BLOCKS
        self.positions = fbnet.NUM_LAYERS

    def key(self, genes: Sequence[int]) -> str:
        return "-".join(self.options[g] for g in genes)

    def genes(self, arch: str | Sequence) -> tuple[int, ...]:
        return self._fbnet.arch_to_indices(arch)

    def _param_table(self) -> tuple[float, np.ndarray]:
        fb = self._fbnet
        shapes = fb.layer_shapes()
        blocks: dict[tuple[str, int, int, int], int] = {}
        for name in self.options:
            for shape in set(shapes):
                blocks[(name, *shape)] = _count(fb.make_block(name, *shape))
        table = np.array([[blocks[(name, *shape)] for name in self.options] for shape in shapes],
                         dtype=np.float64)
        skip = self.options.index("skip")
        net = fb.FBNetNetwork([skip] * self.positions)
        return float(_count(net) - table[:, skip].sum()), table


class RegisteredSpace(SearchSpace):
    """A space registered with `predictor.spaces.custom.register_space` (with options and
    positions): parameters and MACs come from its built graphs."""

    def __init__(self, custom) -> None:
        self.custom = custom
        self.name, self.options, self.positions = custom.name, custom.options, custom.positions

    def key(self, genes: Sequence[int]) -> str:
        return self.custom.separator.join(self.options[g] for g in genes)

    def genes(self, arch: str | Sequence) -> tuple[int, ...]:
        return self.custom.genes(self.custom.arch_key(arch))

    def params(self, archs: Sequence[str]) -> np.ndarray:
        return np.array([self.custom.graph(a).params for a in archs], dtype=np.float64)

    def macs(self, archs: Sequence[str]) -> np.ndarray:
        return np.array([self.custom.graph(a).macs for a in archs], dtype=np.float64)


SEARCH_SPACES: dict[str, type[SearchSpace]] = {"nb201": NB201Space, "fbnet": FBNetSpace}
_SPACE_CACHE: dict[str, SearchSpace] = {}


def get_search_space(name: str) -> SearchSpace:
    """The `SearchSpace` of "nb201", "fbnet" (one shared instance per name) or a space
    registered with options and positions (`predictor.spaces.custom`)."""
    from predictor.spaces.custom import custom_space, unknown_space_message

    custom = custom_space(name)
    if custom is not None:
        if not custom.options:
            raise SearchError(f"Space '{name}' was registered without options and "
                              "positions: register it with them to search it")
        return RegisteredSpace(custom)
    if name not in SEARCH_SPACES:
        raise SearchError(unknown_space_message(name))
    if name not in _SPACE_CACHE:
        _SPACE_CACHE[name] = SEARCH_SPACES[name]()
    return _SPACE_CACHE[name]


# ---------------------------------------------------------------------------- objectives

OBJECTIVES: dict[str, str] = {
    "params": "trainable parameters of the network (capacity proxy; computed analytically)",
    "macs": "multiply-accumulates at the space's benchmark input, batch 1 (compute proxy)",
}


# Objectives plugins register by name (`register_objective`): name -> (fn, description).
_REGISTERED: dict[str, tuple[Objective, str]] = {}


def register_objective(name: str, fn: Objective, description: str = "") -> None:
    """Make `fn` (arch strings -> (n,) values, higher is better; called in batches, only on
    archs within budget) available by name, e.g. to `latpred search --plugin FILE.py
    --objective NAME`: a lookup of trained accuracies, a zero-cost proxy. Registering a
    name again replaces it; built-in names are refused.

    Raises:
        SearchError: an empty or built-in name, or `fn` not callable.
    """
    if not name or name in OBJECTIVES:
        raise SearchError(f"Cannot register objective '{name}': "
                          + ("a built-in name" if name else "empty name"))
    if not callable(fn):
        raise SearchError(f"Objective '{name}' must be callable, got {type(fn).__name__}")
    _REGISTERED[name] = (fn, description or "registered by a plugin")


def objective_names() -> dict[str, str]:
    """Every objective usable by name: built-ins, then registered ones, with descriptions."""
    return {**OBJECTIVES, **{name: d for name, (_, d) in _REGISTERED.items()}}


def builtin_objective(name: str, space: str | SearchSpace) -> Objective:
    """A built-in (see `OBJECTIVES`) or registered (`register_objective`) objective for
    `space`: arch strings -> (n,) values."""
    if name in _REGISTERED and name not in OBJECTIVES:
        return _REGISTERED[name][0]
    space = get_search_space(space) if isinstance(space, str) else space
    if name == "params":
        return space.params
    if name == "macs" and isinstance(space, RegisteredSpace):
        return space.macs
    if name == "macs":
        from predictor.space_templates import space_templates

        templates = space_templates(space.name)
        return lambda archs: templates.totals(list(archs))["macs"].astype(np.float64)
    raise SearchError(f"Unknown objective '{name}'; known: {list(objective_names())} "
                      "(register one with register_objective in a --plugin, or pass a "
                      "callable archs -> array to the Python API)")


# -------------------------------------------------------------------------------- search


@dataclass(frozen=True)
class SearchConfig:
    """Regularised evolution settings.

    Attributes:
        evaluations: budget: distinct architectures whose latency is predicted (the search
            stops earlier when 100 generations in a row bring no new architecture).
        population: P, members alive at a time (the oldest dies when a child is born).
        sample: S, members drawn per tournament; the best of them is mutated.
        generation: children proposed and evaluated per batch (one surrogate call).
        margin: bound_ms * (1 + margin) must be <= the budget; None: from the
            device's calibration error (`device_margin`, in `search_device`).
        seed: seeds sampling and mutation; same seed and surrogate, same result.
        top: how many of the best feasible architectures the result keeps.
        spread_k: width of the predictor's upper bound (`SPREAD_K`, `search_device`);
            0 constrains the prediction itself.
    """

    evaluations: int = 1000
    population: int = 50
    sample: int = 10
    generation: int = 10
    margin: float | None = None
    seed: int = 0
    top: int = 10
    spread_k: float = SPREAD_K

    def check(self) -> None:
        for name in ("evaluations", "population", "sample", "generation", "top"):
            if getattr(self, name) < 1:
                raise SearchError(f"Search setting '{name}' must be >= 1, "
                                  f"got {getattr(self, name)}")
        if self.sample > self.population:
            raise SearchError(f"Tournament sample {self.sample} exceeds the population "
                              f"{self.population}; use sample <= population")
        if not 0 <= self.spread_k < 10:
            raise SearchError(f"spread_k must be in [0, 10), got {self.spread_k}")
        if self.margin is not None and not 0 <= self.margin < 10:
            raise SearchError(f"Margin must be in [0, 10) (a fraction, e.g. 0.05), "
                              f"got {self.margin}")


@dataclass
class SearchResult:
    """Best architectures found that meet the budget under the surrogate.

    Attributes:
        archs: up to `top` canonical arch strings, best objective first.
        latency_ms: (k,) their predicted latency in ms.
        bound_ms: (k,) the surrogate's upper estimate (= latency_ms without one), the
            value the budget constrains.
        objective: (k,) their objective.
        evaluations: distinct architectures evaluated (surrogate calls counted per arch).
        budget_ms: the latency budget; `margin` the safety margin used.
        feasible: how many evaluated architectures met the budget under the surrogate.
        history: (evaluations,) best feasible objective after each evaluation (NaN before
            the first feasible one).
    """

    archs: list[str]
    latency_ms: np.ndarray
    objective: np.ndarray
    evaluations: int
    budget_ms: float
    margin: float
    feasible: int
    history: np.ndarray = field(repr=False)
    bound_ms: np.ndarray | None = None
    # (k,) bool: the arch's latency is a measurement, not a prediction (`with_measurements`)
    measured: np.ndarray | None = None

    def rows(self) -> list[dict]:
        bounds = self.latency_ms if self.bound_ms is None else self.bound_ms
        timed = np.zeros(len(self.archs), bool) if self.measured is None else self.measured
        return [{"arch": a, "latency_ms": float(t), "latency_bound_ms": float(u),
                 "objective": float(o), "measured": bool(m)}
                for a, t, u, o, m in zip(self.archs, self.latency_ms, bounds, self.objective,
                                         timed, strict=True)]

    def with_timed(self, timed: Mapping[str, float]) -> SearchResult:
        """This result with the archs in `timed` marked measured and bounded by their
        time x (1 + MEASURED_SLACK), what the search held them to."""
        measured = np.array([a in timed for a in self.archs], dtype=bool)
        before = self.latency_ms if self.bound_ms is None else self.bound_ms
        bounds = np.array([timed[a] * (1 + MEASURED_SLACK) if a in timed else float(b)
                           for a, b in zip(self.archs, before, strict=True)])
        return replace(self, bound_ms=bounds, measured=measured)


class _Evaluator:
    """Memoised, batched evaluation under an evaluation budget.

    The latency surrogate sees every new architecture; the objective only the feasible
    ones (it may be the expensive part). Fitness orders by the feasibility rule.
    """

    def __init__(self, latency_fn: LatencyFn, objective: Objective, limit_ms: float,
                 budget: int) -> None:
        self.latency_fn, self.objective = latency_fn, objective
        self.limit_ms, self.budget = limit_ms, budget
        self.latency: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.value: dict[str, float] = {}
        self.history: list[float] = []
        self._best = float("nan")

    @property
    def left(self) -> int:
        return self.budget - len(self.latency)

    def __call__(self, keys: Sequence[str]) -> list[str]:
        """Evaluate the new ones among `keys` (within the budget); returns the keys that
        are evaluated now or before, in order."""
        new = list(dict.fromkeys(k for k in keys if k not in self.latency))[:max(self.left, 0)]
        if new:
            ms, bound = _point_and_bound(self.latency_fn(new), len(new))
            ok = [k for k, u in zip(new, bound, strict=True) if u <= self.limit_ms]
            values = (np.asarray(self.objective(ok), dtype=np.float64).reshape(-1) if ok
                      else np.empty(0))
            if values.size != len(ok):
                raise SearchError(f"objective returned {values.size} values for {len(ok)} archs")
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise SearchError(f"objective returned {values[bad[0]]} for arch {ok[bad[0]]} "
                                  f"({bad.size} of {len(ok)} values not finite)")
            self.value.update(zip(ok, values.tolist(), strict=True))
            for k, t, u in zip(new, ms.tolist(), bound.tolist(), strict=True):
                self.latency[k], self.bound[k] = t, u
                if k in self.value and not self.value[k] <= self._best:
                    self._best = self.value[k]
                self.history.append(self._best)
        return [k for k in keys if k in self.latency]

    def fitness(self, key: str) -> tuple[int, float, float]:
        """Larger is better: feasible first, then by objective, then by lower latency bound
        (ties are common: NB201's parameters take 28 values); infeasible ones by bound."""
        if key in self.value:
            return 1, self.value[key], -self.bound[key]
        return 0, -self.bound[key], 0.0

    def result(self, budget_ms: float, margin: float, top: int) -> SearchResult:
        order = sorted(self.value, key=lambda k: (-self.value[k], self.bound[k], k))[:top]
        if not order:
            fastest = min(self.bound.values()) if self.bound else float("nan")
            raise NoFeasibleArchError(
                f"No architecture meets the latency budget {budget_ms:g} ms under the "
                f"surrogate with margin {margin:g} (upper ms x {1 + margin:g} <= budget) "
                f"after {len(self.latency)} evaluations; the fastest found is bounded at "
                f"{fastest:.4g} ms; raise the budget to at least {fastest * (1 + margin):.4g} "
                "ms or search longer")
        return SearchResult(
            archs=order, latency_ms=np.array([self.latency[k] for k in order]),
            objective=np.array([self.value[k] for k in order]),
            evaluations=len(self.latency), budget_ms=budget_ms, margin=margin,
            feasible=len(self.value), history=np.array(self.history),
            bound_ms=np.array([self.bound[k] for k in order]))


def _point_and_bound(out, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A latency_fn's output as (predicted, upper bound), both (n,) float64."""
    pair = out if isinstance(out, tuple) else (out, out)
    if len(pair) != 2:
        raise SearchError(f"latency_fn returned a tuple of {len(pair)}; expected "
                          "(predicted_ms, upper_ms)")
    ms, bound = (np.asarray(a, dtype=np.float64).reshape(-1) for a in pair)
    if ms.size != n or bound.size != n:
        raise SearchError(f"latency_fn returned {ms.size} values for {n} archs")
    return ms, bound


def _check_budget(budget_ms: float) -> float:
    try:
        value = float(budget_ms)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise SearchError(f"Latency budget must be a positive number of ms, got {budget_ms!r}")
    return value


def _resolve(space: str | SearchSpace, objective: str | Objective) -> tuple[SearchSpace,
                                                                             Objective]:
    space = get_search_space(space) if isinstance(space, str) else space
    fn = builtin_objective(objective, space) if isinstance(objective, str) else objective
    return space, fn


def regularized_evolution(space: str | SearchSpace, latency_fn: LatencyFn, budget_ms: float,
                          objective: str | Objective = "params",
                          config: SearchConfig = SearchConfig(),
                          initial: Sequence[str] = ()) -> SearchResult:
    """Maximise `objective` subject to `upper(arch) * (1 + margin) <= budget_ms`.

    Args:
        space: "nb201", "fbnet" or a `SearchSpace`.
        latency_fn: canonical arch strings -> (n,) predicted ms or (predicted, upper
            bound) ms, called once per batch of `config.generation` children (and once
            for the initial population); the bound is what the budget constrains.
        budget_ms: the latency budget in ms.
        objective: a built-in name (`OBJECTIVES`) or a callable arch strings -> (n,),
            higher is better; called only on architectures that meet the budget.
        config: population, tournament size, evaluation budget, margin, seed.
        initial: archs that start in the population (e.g. ones timed on the device),
            the rest of it random.

    Returns:
        The `config.top` best feasible architectures found.

    Raises:
        SearchError: non-positive budget, unknown objective or space, bad settings.
        NoFeasibleArchError: no evaluated architecture meets the budget.
    """
    budget_ms = _check_budget(budget_ms)
    config.check()
    space, fn = _resolve(space, objective)
    rng = np.random.default_rng(config.seed)
    margin = DEFAULT_MARGIN if config.margin is None else config.margin
    ev = _Evaluator(latency_fn, fn, budget_ms / (1 + margin), config.evaluations)

    genes: dict[str, tuple[int, ...]] = {}
    population: deque[str] = deque()
    seeded = list(dict.fromkeys(space.genes(a) for a in initial))[:config.population]
    tries = 0
    while len(population) < config.population and ev.left > 0 and tries < 100:
        tries += 1  # fill with distinct random archs (a tiny space may run out)
        batch = seeded + [space.random(rng)
                          for _ in range(config.population - len(population) - len(seeded))]
        seeded = []
        keys = [space.key(g) for g in batch]
        genes.update(zip(keys, batch, strict=True))
        seen = set(population)
        for k in ev(keys):
            if k not in seen:
                population.append(k)
                seen.add(k)

    stale = 0  # generations without a new architecture: the reachable space is exhausted
    while ev.left > 0 and len(population) >= config.sample and stale < 100:
        children = []
        for _ in range(config.generation):
            drawn = rng.choice(len(population), size=config.sample, replace=False)
            parent = max((population[i] for i in drawn), key=ev.fitness)
            child = space.mutate(genes[parent], rng)
            key = space.key(child)
            genes[key] = child
            children.append(key)
        before = len(ev.latency)
        for key in ev(children):
            population.append(key)
            population.popleft()
        stale = stale + 1 if len(ev.latency) == before else 0
    log.info("regularised evolution: %d evaluations, %d feasible", len(ev.latency),
             len(ev.value))
    return ev.result(budget_ms, margin, config.top)


def random_search(space: str | SearchSpace, latency_fn: LatencyFn, budget_ms: float,
                  objective: str | Objective = "params",
                  config: SearchConfig = SearchConfig()) -> SearchResult:
    """The baseline: `config.evaluations` distinct uniformly random architectures, in
    batches of `config.population`; same constraint, margin and result as the evolution."""
    budget_ms = _check_budget(budget_ms)
    config.check()
    space, fn = _resolve(space, objective)
    rng = np.random.default_rng(config.seed)
    margin = DEFAULT_MARGIN if config.margin is None else config.margin
    ev = _Evaluator(latency_fn, fn, budget_ms / (1 + margin), config.evaluations)
    stale = 0
    while ev.left > 0 and stale < 100:
        before = len(ev.latency)
        ev([space.key(space.random(rng)) for _ in range(min(ev.left, config.population))])
        stale = stale + 1 if len(ev.latency) == before else 0
    return ev.result(budget_ms, margin, config.top)


# -------------------------------------------------------------- timing candidates
# How much a repeated timing of an arch may differ from the one that was taken: a timed arch
# is held to measured x (1 + MEASURED_SLACK) <= budget, not to the predictor's margin.
MEASURED_SLACK = 0.02
# Where `suggest_measurements` looks for archs to time: the best arch whose point
# prediction meets each of these fractions of the budget, so that a predictor a few per
# cent off at the budget still has a timed arch within it.
SUGGEST_FRACTIONS = (1.0, 0.95, 0.9, 0.85, 0.8)


def with_measurements(latency_fn: LatencyFn, measured: Mapping[str, float],
                      margin: float) -> LatencyFn:
    """`latency_fn` in which timed archs (canonical strings -> ms) report their time, and
    a bound that the search's constraint (bound x (1 + `margin`) <= budget) turns into
    time x (1 + MEASURED_SLACK) <= budget: a measurement needs no allowance for the
    predictor's error."""
    timed = {k: float(v) for k, v in measured.items()}

    def fn(archs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ms, bound = (a.copy() for a in _point_and_bound(latency_fn(archs), len(archs)))
        for i, arch in enumerate(archs):
            if arch in timed:
                ms[i] = timed[arch]
                bound[i] = timed[arch] * (1 + MEASURED_SLACK) / (1 + margin)
        return ms, bound

    return fn


def suggest_measurements(space: str | SearchSpace, latency_fn: LatencyFn, budget_ms: float,
                         objective: str | Objective = "params", count: int = 5,
                         config: SearchConfig = SearchConfig(),
                         measured: Sequence[str] = ()) -> list[str]:
    """Archs worth timing before trusting a search under `budget_ms`: for each of the
    first `count` SUGGEST_FRACTIONS of the budget, the best arch by objective whose point
    prediction (no margin, no spread) meets it and that is not in `measured` yet. Where
    the search's answer comes from, the predictor extrapolates most (a tight budget lies
    below a random calibration's archs); a device calibrated again with these timed, and
    searched `with_measurements`, returns archs known to meet the budget.

    Raises:
        SearchError: `count` outside 1..len(SUGGEST_FRACTIONS), a bad budget or setting.
        NoFeasibleArchError: no arch found is even predicted within the budget.
    """
    budget_ms = _check_budget(budget_ms)
    if not 1 <= count <= len(SUGGEST_FRACTIONS):
        raise SearchError(f"Suggest 1 to {len(SUGGEST_FRACTIONS)} archs to time, got {count}")

    def point(archs: list[str]) -> np.ndarray:
        return _point_and_bound(latency_fn(archs), len(archs))[0]

    chosen: list[str] = []
    for fraction in SUGGEST_FRACTIONS[:count]:
        skip = set(measured) | set(chosen)
        try:
            found = regularized_evolution(space, point, budget_ms * fraction, objective,
                                          replace(config, margin=0.0,
                                                  top=config.top + len(skip)))
        except NoFeasibleArchError:
            if fraction == SUGGEST_FRACTIONS[0]:
                raise  # nothing is even predicted within the budget: say so
            continue
        chosen += [a for a in found.archs if a not in skip][:1]
    return chosen


# ------------------------------------------------------------------ with the predictor


def device_margin(residuals: Sequence[float] | None, quantile: float = MARGIN_QUANTILE
                  ) -> float:
    """Safety margin from a calibration's cross-validated residuals (predicted minus measured
    log-latency): the `quantile` of the under-prediction factor measured / predicted - 1,
    at least 0; `DEFAULT_MARGIN` without residuals."""
    if not residuals:
        return DEFAULT_MARGIN
    under = np.exp(-np.asarray(residuals, dtype=np.float64)) - 1.0
    return float(max(0.0, np.quantile(under, quantile)))


# A prediction whose candidate adaptations disagree by more than this factor
# (exp(SPREAD_K x spread)) is flagged as uncertain (`latpred predict`). On the 20 known
# networks predicted from the reference set (`scripts/benchmark_known_models.py`, the
# meta-valid and two training runtimes of this CPU), the flagged ones (ConvNeXt-T,
# EfficientNet-B0, U-Net; 5 of 60) were 1.7 to 4x further off (mean |log error| 0.15 to
# 0.56 against 0.09 to 0.13), and the factor ranks the errors at Spearman 0.58 (at SPREAD_K 1.8;
# the wider 2.2 of stop 25 flags a little more).
UNSURE_RATIO = 1.5


def uncertain(spread: np.ndarray, spread_k: float = SPREAD_K) -> np.ndarray:
    """Which predictions' candidate adaptations disagree by more than `UNSURE_RATIO`."""
    return np.exp(spread_k * np.asarray(spread)) > UNSURE_RATIO


def bound_widths(fastest: float, predicted: np.ndarray, spread_k: float = SPREAD_K
                 ) -> np.ndarray:
    """(n,) k of each prediction's upper bound predicted x exp(k x spread): `spread_k`,
    scaled by SPREAD_K_BELOW / SPREAD_K below `fastest`, the device's smallest
    measurement in the same unit (0 when unknown: one width for all)."""
    return np.where(np.asarray(predicted) < fastest,
                    spread_k * SPREAD_K_BELOW / SPREAD_K, spread_k)


def fastest_measured(info: dict) -> float:
    """The smallest measurement a device was calibrated on, in its metric's unit (0.0 if
    not stored: shipped training devices, files from before stop 30)."""
    return float((info.get("measured_range") or [0.0])[0])


def below_calibration(info: dict, values: np.ndarray) -> np.ndarray:
    """(n,) bool: predictions under the smallest measurement the device was calibrated on
    (none for a device without a stored range): extrapolated from larger models. On the
    model sets' valid runtimes, 10 CNNs -> the other CNNs, 20 draws (stop 38), mean
    absolute log error by where the prediction fell: OpenVINO 1 thread within the range
    0.14, below it 0.20-0.21, below a third of it 0.50-0.51; torch 1 thread 0.13-0.18,
    0.14-0.21, 0.15-0.22."""
    fastest = fastest_measured(info)
    return np.asarray(values) < fastest if fastest > 0 else np.zeros(len(values), dtype=bool)


def upper_estimate(predictor, device: str, values: np.ndarray, spread: np.ndarray,
                   spread_k: float = SPREAD_K) -> np.ndarray:
    """The bound `latpred search` keeps budgets with, as one number per prediction:
    values x exp(k x spread) x (1 + the device's calibration margin), k from
    `bound_widths`."""
    info = predictor.device_info(device)
    margin = device_margin(info.get("cv_log_residuals"))
    k = bound_widths(fastest_measured(info), values, spread_k)
    return np.asarray(values) * np.exp(k * np.asarray(spread)) * (1 + margin)


def predictor_latency_fn(predictor, space: str, device: str, spread_k: float = SPREAD_K
                         ) -> LatencyFn:
    """`latency_fn` of a `Predictor` on a known device: batched `predict_batch` at the
    setting the device was calibrated with (else the space's, at the device's batch size),
    with the upper bound predicted * exp(k * spread), k = `bound_widths(.., spread_k)`;
    spread_k = 0: the prediction alone (the candidates' spread is not computed)."""
    info = predictor.device_info(device)  # unknown device: fails now, listing known ones
    if info.get("space") not in (None, space):
        log.warning("Device '%s' was calibrated on %s architectures; searching %s",
                    device, info["space"], space)
    if spread_k == 0:
        return lambda archs: predictor.predict_batch(space, archs, device)
    fastest = fastest_measured(info)

    def latency_fn(archs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ms, spread = predictor.predict_batch(space, archs, device, with_spread=True)
        return ms, ms * np.exp(bound_widths(fastest, ms, spread_k) * spread)
    return latency_fn


def search_device(predictor, space: str, device: str, budget_ms: float,
                  objective: str | Objective = "params",
                  config: SearchConfig = SearchConfig()) -> SearchResult:
    """Regularised evolution on `space` under `budget_ms` on a known `device`, with the
    predictor as the latency constraint (what `latpred search` runs)."""
    _check_budget(budget_ms)
    get_search_space(space)
    latency_fn = predictor_latency_fn(predictor, space, device, config.spread_k)
    info = predictor.device_info(device)
    if config.margin is None:
        config = replace(config, margin=device_margin(info.get("cv_log_residuals")))
    timed = measured_archs(info, space)
    if timed:  # archs the device was calibrated on are known, not predicted
        latency_fn = with_measurements(latency_fn, timed, config.margin)
    try:
        return regularized_evolution(space, latency_fn, budget_ms, objective, config,
                                     initial=list(timed)).with_timed(timed)
    except NoFeasibleArchError as exc:
        fastest = fastest_measured(info)
        if fastest <= budget_ms:
            raise
        # The usual cause on a calibrated device: everything within the budget is an
        # extrapolation below the measurements, where the candidates disagree most.
        raise NoFeasibleArchError(
            f"{exc}; every model '{device}' was calibrated on took longer than the budget "
            f"(fastest {fastest:.4g} ms): calibrating with a few models near the budget "
            "narrows the bound there") from None


def measured_archs(info: dict, space: str) -> dict[str, float]:
    """{canonical arch: ms} of the `space` archs a device was calibrated on (its stored
    measurements; none for an energy device or one calibrated on ONNX files)."""
    if info.get("space") != space or info.get("metric", "latency_ms") != "latency_ms":
        return {}
    search_space = get_search_space(space)
    return {search_space.key(search_space.genes(row["arch"])): float(row["latency_ms"])
            for row in info.get("measurements", []) if "arch" in row and "latency_ms" in row}


def suggest_for_device(predictor, space: str, device: str, budget_ms: float,
                       objective: str | Objective = "params", count: int = 5,
                       config: SearchConfig = SearchConfig()) -> list[str]:
    """`suggest_measurements` for a known device (what `latpred search --suggest` prints):
    archs to time and calibrate the device on again before searching under `budget_ms`;
    archs it was calibrated on are not suggested again."""
    _check_budget(budget_ms)
    get_search_space(space)
    latency_fn = predictor_latency_fn(predictor, space, device, spread_k=0.0)
    measured = list(measured_archs(predictor.device_info(device), space))
    return suggest_measurements(space, latency_fn, budget_ms, objective, count, config,
                                measured)
