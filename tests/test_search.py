"""Latency-constrained search with the shipped checkpoint on a shipped device (pixel3)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from predictor.api import Predictor
from predictor.search import (
    SPREAD_K,
    SPREAD_K_BELOW,
    NoFeasibleArchError,
    SearchConfig,
    SearchError,
    builtin_objective,
    get_search_space,
    predictor_latency_fn,
    random_search,
    regularized_evolution,
)
from predictor.spaces import fbnet, nb201

DEVICE = "pixel3@nb201"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load()


class Counted:
    """Memoised latency_fn that records its calls (tests share the predictions)."""

    def __init__(self, fn) -> None:
        self.fn, self.memo, self.calls = fn, {}, []

    def __call__(self, archs: list[str]) -> np.ndarray:
        self.calls.append(len(archs))
        new = [a for a in archs if a not in self.memo]
        if new:
            self.memo.update(zip(new, self.fn(new), strict=True))
        return np.array([self.memo[a] for a in archs])


@pytest.fixture(scope="module")
def latency(predictor) -> Counted:
    return Counted(lambda archs: predictor.predict_batch("nb201", archs, DEVICE))


@pytest.fixture(scope="module")
def budget(latency) -> float:
    """Median predicted latency of 60 random NB201 archs on pixel3."""
    space = get_search_space("nb201")
    rng = np.random.default_rng(123)
    return float(np.median(latency([space.key(space.random(rng)) for _ in range(60)])))


@pytest.mark.parametrize("name,net", [("nb201", nb201.NB201Network),
                                      ("fbnet", fbnet.FBNetNetwork)])
def test_params_objective_counts_the_networks_parameters(name, net) -> None:
    space = get_search_space(name)
    rng = np.random.default_rng(0)
    archs = [space.key(space.random(rng)) for _ in range(2)]
    expected = [sum(p.numel() for p in net(a).parameters()) for a in archs]
    assert space.params(archs).tolist() == expected


def test_macs_objective_matches_the_graph() -> None:
    from predictor.corpus import arch_graph

    arch = "|nor_conv_3x3~0|+|none~0|nor_conv_1x1~1|+|skip_connect~0|avg_pool_3x3~1|none~2|"
    macs = builtin_objective("macs", "nb201")([arch])
    assert macs.tolist() == [arch_graph("nb201", arch).summary()["macs"]]


def test_mutation_changes_exactly_one_edge() -> None:
    space = get_search_space("nb201")
    rng = np.random.default_rng(0)
    for _ in range(50):
        genes = space.random(rng)
        child = space.mutate(genes, rng)
        assert sum(a != b for a, b in zip(genes, child, strict=True)) == 1
        assert space.genes(space.key(child)) == child


def test_returned_archs_meet_the_budget_under_the_predictor(predictor, latency, budget) -> None:
    config = SearchConfig(evaluations=150, population=20, sample=5, margin=0.05, top=5)
    latency.calls.clear()
    result = regularized_evolution("nb201", latency, budget, "params", config)
    assert 1 <= len(result.archs) <= 5 and result.evaluations == 150
    assert np.all(result.latency_ms * 1.05 <= budget)
    again = predictor.predict_batch("nb201", result.archs, DEVICE)
    np.testing.assert_allclose(result.latency_ms, again, rtol=1e-5)
    np.testing.assert_array_equal(result.objective, get_search_space("nb201").params(result.archs))
    assert list(result.objective) == sorted(result.objective, reverse=True)
    # Batched: one surrogate call for the population, then one per generation of 10
    # children (fewer when some repeat earlier archs), never one arch at a time.
    assert latency.calls[0] == 20 and max(latency.calls[1:]) <= 10
    assert sum(latency.calls) == 150 and len(latency.calls) <= 30


def test_evolution_beats_random_sampling_at_equal_budget(latency, budget) -> None:
    config = SearchConfig(evaluations=150, population=20, sample=5, top=10)
    evolved = regularized_evolution("nb201", latency, budget, "params", config)
    sampled = random_search("nb201", latency, budget, "params", config)
    assert evolved.evaluations == sampled.evaluations == 150
    assert evolved.objective[0] >= sampled.objective[0]
    assert evolved.objective.mean() > sampled.objective.mean()


def test_same_seed_same_result(latency, budget) -> None:
    config = SearchConfig(evaluations=150, population=20, sample=5, seed=7)
    a = regularized_evolution("nb201", latency, budget, "params", config)
    b = regularized_evolution("nb201", latency, budget, "params", config)
    assert a.archs == b.archs
    np.testing.assert_array_equal(a.history, b.history)


def test_objective_is_pluggable_and_sees_only_feasible_batches(latency, budget) -> None:
    seen: list[list[str]] = []

    def pooling(archs: list[str]) -> np.ndarray:  # as many avg pools as possible
        seen.append(list(archs))
        return np.array([a.count("avg_pool_3x3") for a in archs], dtype=float)

    config = SearchConfig(evaluations=150, population=20, sample=5, margin=0.0)
    result = regularized_evolution("nb201", latency, budget, pooling, config)
    # As many pools as the best of as many random feasible archs, or more.
    space = get_search_space("nb201")
    rng = np.random.default_rng(7)
    randoms = [space.key(space.random(rng)) for _ in range(150)]
    feasible = [a for a, ms in zip(randoms, latency(randoms), strict=True) if ms <= budget]
    assert result.objective[0] >= max(a.count("avg_pool_3x3") for a in feasible) >= 3
    assert all(latency.memo[a] <= budget for batch in seen for a in batch)
    assert len(seen) < 150 // 5


def test_fbnet_search(predictor) -> None:
    fn = predictor_latency_fn(predictor, "fbnet", "pixel3@fbnet")
    result = regularized_evolution("fbnet", fn, 1e6, "params",
                                   SearchConfig(evaluations=12, population=6, sample=3, top=3))
    assert len(result.archs) == 3 and all(len(a.split("-")) == 22 for a in result.archs)


def test_infeasible_budget_and_bad_settings_raise(latency) -> None:
    with pytest.raises(NoFeasibleArchError, match="No architecture meets"):
        regularized_evolution("nb201", latency, 1e-3, config=SearchConfig(evaluations=20))
    with pytest.raises(SearchError, match="positive"):
        regularized_evolution("nb201", latency, -1.0)
    with pytest.raises(SearchError, match="Unknown objective 'flops'"):
        regularized_evolution("nb201", latency, 5.0, "flops")
    with pytest.raises(SearchError, match="sample"):
        regularized_evolution("nb201", latency, 5.0, config=SearchConfig(population=4))


def _cli(argv: list[str]) -> int:
    from predictor.cli import main

    return main(argv)


def test_cli_prints_top_archs_as_json(capsys, budget) -> None:
    rc = _cli(["search", "--space", "nb201", "--device", DEVICE, "--latency-ms", str(budget),
               "--budget-evals", "60", "--population", "20", "--sample", "5", "--top", "3",
               "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["archs"]) == 3 and out["evaluations"] == 60
    assert all(r["latency_ms"] * (1 + out["margin"]) <= budget for r in out["archs"])


@pytest.mark.parametrize("args,message", [
    (["--device", "nosuch", "--latency-ms", "5"], "Unknown device 'nosuch'"),
    (["--device", DEVICE, "--latency-ms", "0"], "positive"),
    (["--device", DEVICE, "--latency-ms", "5", "--objective", "flops"],
     "Unknown objective 'flops'"),
    (["--device", DEVICE, "--latency-ms", "0.001", "--budget-evals", "20"],
     "No architecture meets"),
])
def test_cli_errors_exit_2_with_one_clear_line(capsys, args, message) -> None:
    assert _cli(["search", "--space", "nb201", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_margin_follows_the_calibration_error(predictor) -> None:
    """A calibrated device stores its cross-validated residuals; the default margin is their
    under-prediction quantile, so a device predicted worse gets a wider margin."""
    from predictor.search import DEFAULT_MARGIN, device_margin, search_device

    assert device_margin(None) == DEFAULT_MARGIN
    assert device_margin([0.1, 0.2]) == 0.0  # only over-predictions: no margin needed
    assert device_margin([-0.1] * 10) == pytest.approx(np.exp(0.1) - 1)
    assert device_margin([-0.3, 0.0, 0.1], quantile=1.0) > device_margin([-0.1, 0.0, 0.1],
                                                                           quantile=1.0)
    space = get_search_space("nb201")
    rng = np.random.default_rng(7)
    archs = [space.key(space.random(rng)) for _ in range(10)]
    ms = predictor.predict_batch("nb201", archs, DEVICE) * rng.uniform(0.8, 1.25, 10)
    predictor.adapt("noisy-board", predictor.space_graphs("nb201", archs), ms,
                    strategy="amortised")
    residuals = predictor.device_info("noisy-board")["cv_log_residuals"]
    assert len(residuals) == 10 and all(np.isfinite(residuals))
    result = search_device(predictor, "nb201", "noisy-board", float(np.median(ms)),
                           config=SearchConfig(evaluations=50, population=20, sample=5))
    assert result.margin == pytest.approx(device_margin(residuals))
    # A budget below every calibration measurement: the error says so and what helps.
    with pytest.raises(NoFeasibleArchError, match=r"fastest [0-9.]+ ms\): calibrating with"):
        search_device(predictor, "nb201", "noisy-board", float(ms.min()) / 50,
                      config=SearchConfig(evaluations=50, population=20, sample=5))


def test_budget_constrains_the_upper_bound(latency, budget) -> None:
    """A surrogate that gives (predicted, upper bound): the budget holds the bound, so an
    arch predicted within budget but unsure (here: any with a pooling edge) is left out."""
    def unsure_pooling(archs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ms = latency(archs)
        return ms, ms * np.array([1.5 if "avg_pool" in a else 1.0 for a in archs])

    config = SearchConfig(evaluations=150, population=20, sample=5, margin=0.05, top=10)
    plain = regularized_evolution("nb201", latency, budget, "params", config)
    bounded = regularized_evolution("nb201", unsure_pooling, budget, "params", config)
    assert np.all(bounded.bound_ms * 1.05 <= budget)
    assert np.all(bounded.bound_ms >= bounded.latency_ms)
    np.testing.assert_allclose(bounded.latency_ms, latency(bounded.archs), rtol=1e-5)
    pooled = [a for a, t in zip(plain.archs, plain.latency_ms, strict=True)
              if "avg_pool" in a and t * 1.5 * 1.05 > budget]
    assert pooled and not set(pooled) & set(bounded.archs)
    assert [r["latency_bound_ms"] for r in bounded.rows()] == bounded.bound_ms.tolist()


def test_auto_calibration_bounds_by_the_spread_of_its_candidates(predictor, tmp_path,
                                                                   monkeypatch) -> None:
    """Strategy auto keeps the other candidate adaptations; their disagreement is a
    per-arch spread that widens the search's upper bound. Shipped training devices have
    none (bound = prediction); a saved device keeps its spread."""
    space = get_search_space("nb201")
    rng = np.random.default_rng(11)
    archs = [space.key(space.random(rng)) for _ in range(10)]
    others = [space.key(space.random(rng)) for _ in range(40)]
    # A board unlike pixel3: per-arch factors the amortised embedding cannot know.
    ms = predictor.predict_batch("nb201", archs, DEVICE) * rng.uniform(0.6, 1.6, 10)
    monkeypatch.setenv("LATPRED_DEVICE_DIR", str(tmp_path))
    predictor.adapt("odd-board", predictor.space_graphs("nb201", archs), ms, save=True)
    point, spread = predictor.predict_batch("nb201", others, "odd-board", with_spread=True)
    np.testing.assert_allclose(point, predictor.predict_batch("nb201", others, "odd-board"),
                               rtol=1e-5)
    assert spread.min() >= 0 and spread.max() > 0.01
    assert not predictor.predict_batch("nb201", others, DEVICE, with_spread=True)[1].any()
    bounded, upper = predictor_latency_fn(predictor, "nb201", "odd-board", spread_k=2.0)(others)
    # Below the fastest measurement the bound is narrower (`bound_widths`): both occur here.
    fastest = predictor.device_info("odd-board")["measured_range"][0]
    assert fastest == pytest.approx(ms.min()) and 0 < (bounded < fastest).sum() < len(others)
    k = np.where(bounded < fastest, 2.0 * SPREAD_K_BELOW / SPREAD_K, 2.0)
    np.testing.assert_allclose(upper, bounded * np.exp(k * spread), rtol=1e-5)
    fresh = Predictor.load()
    assert fresh.device_info("odd-board")["measured_range"] == pytest.approx(
        [ms.min(), ms.max()])
    again = fresh.predict_batch("nb201", others, "odd-board", with_spread=True)
    np.testing.assert_allclose(again[0], point, rtol=1e-5)
    np.testing.assert_allclose(again[1], spread, rtol=1e-4, atol=1e-6)


def test_predictions_whose_candidates_disagree_are_flagged(predictor, tmp_path, monkeypatch,
                                                           capsys) -> None:
    """`latpred predict` flags a prediction as uncertain when the device's candidate
    adaptations disagree by more than UNSURE_RATIO: "uncertain": true in the JSON and a
    note on stderr; a device whose candidates agree gets neither."""
    from predictor.adaptation import DeviceState
    from predictor.device_store import save_device
    from predictor.search import SPREAD_K, UNSURE_RATIO, uncertain

    assert UNSURE_RATIO == pytest.approx(1.5)
    edge = np.log(UNSURE_RATIO) / SPREAD_K  # the upper bound 1.5x the prediction
    np.testing.assert_array_equal(uncertain(np.array([0.0, 0.9 * edge, 1.1 * edge])),
                                  [False, False, True])
    monkeypatch.setenv("LATPRED_DEVICE_DIR", str(tmp_path))
    base = predictor.device(DEVICE)
    for name, shift in (("calm", 0.05), ("torn", 1.0)):  # an alternative e^shift slower
        state = DeviceState(base.z, base.a, base.b,
                            alternatives=[DeviceState(base.z, base.a, base.b + shift)])
        save_device(name, state, predictor.fingerprint, {"kind": "calibrated device"})
    archs = tmp_path / "archs.txt"
    space = get_search_space("nb201")
    rng = np.random.default_rng(0)
    archs.write_text("\n".join(space.key(space.random(rng)) for _ in range(3)) + "\n")
    for name, flagged in (("calm", False), ("torn", True)):
        assert _cli(["predict", "--space", "nb201", "--archs", str(archs), "--device", name,
                     "--json"]) == 0
        out = capsys.readouterr()
        rows = json.loads(out.out)
        assert [r.get("uncertain", False) for r in rows] == [flagged] * 3
        # two candidates e^1.0 apart: spread (their std) 0.5, ratio exp(SPREAD_K x 0.5)
        assert (f"disagree by {np.exp(SPREAD_K * 0.5):.1f}x" in out.err) == flagged


def test_predictions_below_the_calibration_range_are_flagged(predictor, tmp_path,
                                                              monkeypatch, capsys) -> None:
    """`latpred predict` flags predictions under the smallest measurement the device was
    calibrated on ("below_calibration": true and a note); a device without a stored range
    (a shipped one) flags none."""
    from predictor.adaptation import DeviceState
    from predictor.device_store import save_device
    from predictor.search import below_calibration

    monkeypatch.setenv("LATPRED_DEVICE_DIR", str(tmp_path))
    base = predictor.device(DEVICE)
    space = get_search_space("nb201")
    rng = np.random.default_rng(1)
    keys = [space.key(space.random(rng)) for _ in range(4)]
    ms = predictor.predict_batch("nb201", keys, DEVICE)
    middle = float(np.sort(ms)[1:3].mean())  # two predictions below it, two above
    state = DeviceState(base.z, base.a, base.b)
    save_device("ranged", state, predictor.fingerprint,
                {"kind": "calibrated device", "measured_range": [middle, 10 * middle]})
    save_device("unranged", state, predictor.fingerprint, {"kind": "calibrated device"})
    archs = tmp_path / "archs.txt"
    archs.write_text("\n".join(keys) + "\n")
    for name, expected in (("ranged", ms < middle), ("unranged", np.zeros(4, dtype=bool))):
        assert _cli(["predict", "--space", "nb201", "--archs", str(archs), "--device", name,
                     "--json"]) == 0
        out = capsys.readouterr()
        rows = json.loads(out.out)
        np.testing.assert_allclose([r["latency_ms"] for r in rows], ms, rtol=1e-5)
        assert [r.get("below_calibration", False) for r in rows] == expected.tolist()
        assert ("2 of the 4 predictions lie below the smallest calibration" in out.err) == \
            bool(expected.any())
    np.testing.assert_array_equal(below_calibration({"measured_range": [middle, 1.0]}, ms),
                                  ms < middle)


OBJECTIVE_PLUGIN = '''
import numpy as np
from predictor.search import register_objective

def conv3x3_edges(archs):
    return np.array([a.count("nor_conv_3x3") + 0.5 * a.count("avg_pool") for a in archs])

register_objective("conv3x3_edges", conv3x3_edges, "3x3 convolutions in the cell")
register_objective("broken", lambda archs: np.full(len(archs), np.nan))
'''


def test_cli_objective_from_a_plugin(tmp_path, capsys, budget) -> None:
    """A `--plugin` registers an objective by name; the search maximises it and prints its
    values; a non-finite value is one clear line naming the arch."""
    plugin = tmp_path / "objectives.py"
    plugin.write_text(OBJECTIVE_PLUGIN)
    common = ["search", "--space", "nb201", "--plugin", str(plugin), "--device", DEVICE,
              "--latency-ms", str(budget), "--budget-evals", "60", "--population", "20",
              "--sample", "5", "--top", "3"]
    assert _cli([*common, "--objective", "conv3x3_edges", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["objective"] == "conv3x3_edges" and len(out["archs"]) == 3
    for row in out["archs"]:
        a = row["arch"]
        assert row["objective"] == a.count("nor_conv_3x3") + 0.5 * a.count("avg_pool")
    assert _cli([*common, "--objective", "conv3x3_edges"]) == 0
    text = capsys.readouterr().out
    assert "3x3 convolutions in the cell" in text
    assert _cli([*common, "--objective", "broken"]) == 2
    err = capsys.readouterr().err.strip()
    assert "objective returned nan for arch |" in err and len(err.splitlines()) == 1
    from predictor.search import register_objective

    with pytest.raises(SearchError, match="built-in"):
        register_objective("params", len)
    with pytest.raises(SearchError, match="callable"):
        register_objective("x", 3)  # type: ignore[arg-type]


def test_suggested_archs_meet_fractions_of_the_budget_and_skip_timed_ones(latency,
                                                                          budget) -> None:
    """One arch per fraction of the budget (1, 0.95, ...), each predicted within it, none
    already timed; a count outside 1..5 is an error."""
    from predictor.search import SUGGEST_FRACTIONS, suggest_measurements

    config = SearchConfig(evaluations=200, population=20, sample=5, seed=3)
    first = suggest_measurements("nb201", latency, budget, "params", 1, config)
    archs = suggest_measurements("nb201", latency, budget, "params", 5, config,
                                 measured=first)
    assert len(archs) == len(set(archs)) == 5 and first[0] not in archs
    assert np.all(latency(archs) <= budget * np.array(SUGGEST_FRACTIONS))
    with pytest.raises(SearchError, match="Suggest 1 to 5 archs"):
        suggest_measurements("nb201", latency, budget, "params", 6, config)
    with pytest.raises(NoFeasibleArchError, match="No architecture meets"):
        suggest_measurements("nb201", latency, budget / 100, "params", 2, config)


def test_archs_a_device_was_calibrated_on_are_held_to_their_measurement(
        predictor, latency, budget, tmp_path, monkeypatch, capsys) -> None:
    """The search treats an arch the device was calibrated on as measured: the largest
    NB201 network, predicted far over the budget but timed within it, is the answer,
    marked measured; `latpred search --suggest` names archs not timed yet."""
    from predictor.calibration import calibrate
    from predictor.cli import main
    from predictor.search import MEASURED_SLACK, search_device, with_measurements

    monkeypatch.setenv("LATPRED_DEVICE_DIR", str(tmp_path))
    space = get_search_space("nb201")
    heavy = space.key([space.options.index("nor_conv_3x3")] * space.positions)
    rng = np.random.default_rng(5)
    archs = [space.key(space.random(rng)) for _ in range(9)]
    assert latency([heavy])[0] > 1.5 * budget
    rows = [{"arch": a, "latency_ms": float(t)} for a, t in zip(archs, latency(archs),
                                                                strict=True)]
    rows.append({"arch": heavy, "latency_ms": 0.5 * budget})
    calibrate(predictor, "timed-board", rows, {}, space="nb201")
    config = SearchConfig(evaluations=100, population=20, sample=5, top=3)
    result = search_device(predictor, "nb201", "timed-board", budget, "params", config)
    assert result.archs[0] == heavy and result.rows()[0]["measured"]
    assert result.bound_ms[0] == pytest.approx(0.5 * budget * (1 + MEASURED_SLACK))
    # the wrapper itself: timed archs report their time, a bound the margin turns into it
    ms, bound = with_measurements(latency, {heavy: 2.0}, 0.1)([heavy, archs[0]])
    assert ms[0] == 2.0 and bound[0] * 1.1 == pytest.approx(2.0 * (1 + MEASURED_SLACK))
    assert ms[1] == bound[1] == pytest.approx(latency([archs[0]])[0])
    assert main(["search", "--space", "nb201", "--device", "timed-board", "--latency-ms",
                 str(budget), "--suggest", "2", "--budget-evals", "100", "--json"]) == 0
    suggested = json.loads(capsys.readouterr().out)
    assert len(suggested) == 2 and not {heavy, *archs} & set(suggested)
