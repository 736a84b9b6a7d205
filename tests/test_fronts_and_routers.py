"""The evaluation protocol's metrics (hypervolume, fronts, utility CIs, regret, plan shares), the
single-agent LLM routers on a dataset whose best LLM per query is known, and the figures."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from masr_graph import ConfigError
from masr_graph.benchmarks.experiment.routers import (
    KNNRouter, LogisticRouter, MFRouter, MLPRouter,
)
from masr_graph.benchmarks.reporting.fronts import (
    accuracy_cost_front, best_baseline, hypervolume, paired_difference_with_ci, plan_distribution,
    regret, utility_with_ci,
)
from masr_graph.benchmarks.reporting.plots import (
    OTHER_LLMS, named_llm_shares, plot_distributions, plot_fronts,
)

from router_support import one_torch_thread

LLMS = ["cheap", "middle", "dear"]
PRICES = np.array([1e-5, 1e-4, 1e-3])
ROUTERS = {
    "knn": KNNRouter,
    "logistic": LogisticRouter,
    "mlp": MLPRouter,
    "mf": MFRouter,
    "mf-pairwise": lambda: MFRouter(pairwise_weight=1.0),
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


# ---------------------------------------------------------------------------- hypervolume, fronts

def test_hypervolume_of_one_point_on_log_and_linear_axes():
    # Log axis: box [-5, -3] × [0, 1]; the point dominates [-4, -3] × [0, 0.8] = 0.8 of area 2.
    assert hypervolume([(1e-4, 0.8)], cost_range=(1e-5, 1e-3)) == pytest.approx(0.4)
    # Linear axis: width (1e-3 − 2.5e-4) / 1e-3 = 0.75, height 0.8.
    assert hypervolume([(2.5e-4, 0.8)], cost_range=(0.0, 1e-3), log_cost=False) == \
        pytest.approx(0.6)
    # The same point on the two axes: half the log box, 0.009 / 0.0099 of the linear one.
    assert hypervolume([(1e-3, 1.0)], cost_range=(1e-4, 1e-2)) == pytest.approx(0.5)
    assert hypervolume([(1e-3, 1.0)], cost_range=(1e-4, 1e-2), log_cost=False) == \
        pytest.approx(0.009 / 0.0099)


def test_hypervolume_of_two_points_ignores_dominated_points():
    # Box [-4, -2]: [-4, -3] at height 0.5 plus [-3, -2] at height 0.9 = 1.4 of area 2.
    two = [(1e-4, 0.5), (1e-3, 0.9)]
    assert hypervolume(two, cost_range=(1e-4, 1e-2)) == pytest.approx(0.7)
    assert hypervolume(two + [(3e-3, 0.6), (1e-3, 0.9)], cost_range=(1e-4, 1e-2)) == \
        pytest.approx(0.7)
    assert hypervolume(list(reversed(two)), cost_range=(1e-4, 1e-2)) == pytest.approx(0.7)


def test_hypervolume_clips_points_to_the_box_and_empty_is_zero():
    box = (1e-4, 1e-2)
    assert hypervolume([], cost_range=box) == 0.0
    # Cheaper than c_min (even free) counts as c_min; dearer than c_max or under the floor: 0.
    assert hypervolume([(1e-6, 0.5)], cost_range=box) == pytest.approx(0.5)
    assert hypervolume([(0.0, 0.5)], cost_range=box) == pytest.approx(0.5)
    assert hypervolume([(1.0, 0.9)], cost_range=box) == 0.0
    assert hypervolume([(1e-4, 0.3)], cost_range=box, accuracy_floor=0.5) == 0.0
    # Floor 0.5: height (0.75 − 0.5) / 0.5.
    assert hypervolume([(1e-4, 0.75)], cost_range=box, accuracy_floor=0.5) == pytest.approx(0.5)
    assert hypervolume([(1e-4, 1.0)], cost_range=box) == pytest.approx(1.0)


def test_hypervolume_rejects_bad_ranges():
    with pytest.raises(ConfigError, match="0 < c_min < c_max"):
        hypervolume([(1e-3, 0.5)], cost_range=(0.0, 1e-2))
    with pytest.raises(ConfigError, match="c_min < c_max"):
        hypervolume([(1e-3, 0.5)], cost_range=(1e-2, 1e-3), log_cost=False)
    with pytest.raises(ConfigError, match="accuracy_floor"):
        hypervolume([(1e-3, 0.5)], cost_range=(1e-4, 1e-2), accuracy_floor=1.0)
    with pytest.raises(ConfigError, match="point 0"):
        hypervolume([(float("nan"), 0.5)], cost_range=(1e-4, 1e-2))


def test_front_keeps_non_dominated_points_sorted_by_cost():
    points = [(3.0, 0.8), (1.0, 0.5), (2.0, 0.4), (1.0, 0.45), (4.0, 0.8), (5.0, 0.9), (3.0, 0.8)]
    assert accuracy_cost_front(points) == [(1.0, 0.5), (3.0, 0.8), (5.0, 0.9)]
    assert accuracy_cost_front([]) == []
    with pytest.raises(ConfigError, match=r"point 1 must be \(cost, accuracy\)"):
        accuracy_cost_front([(1.0, 0.5), (1.0,)])


# ---------------------------------------------------------------------------- utility, regret

def test_utility_ci_brackets_the_mean_and_shrinks_with_more_queries():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 2000):
        correct = (rng.random(n) < 0.7).astype(float)
        cost = rng.uniform(1e-4, 1e-3, n)
        mean, low, high = utility_with_ci(correct, cost, 100.0)
        assert mean == pytest.approx(np.mean(correct - 100.0 * cost))
        assert low < mean < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(40) in theory
    assert utility_with_ci(np.ones(5), np.zeros(5), 0.0) == (1.0, 1.0, 1.0)


def test_utility_ci_resamples_queries_with_their_seeds_paired():
    # Two seeds that disagree on every query but average to 0.5 on each: the seed-mean per query
    # is constant, so a paired bootstrap over queries has nothing to resample.
    first = np.array([1.0, 0.0] * 20)
    seeds = np.stack([first, 1.0 - first])
    cost = np.full_like(seeds, 1e-4)
    mean, low, high = utility_with_ci(seeds, cost, 1000.0)
    assert (mean, low, high) == pytest.approx((0.4, 0.4, 0.4))
    # Treating the 80 rows × queries as independent would report a wide interval instead.
    _, flat_low, flat_high = utility_with_ci(seeds.ravel(), cost.ravel(), 1000.0)
    assert flat_high - flat_low > 0.1
    # With noise across queries: the mean over seeds, and the same seed gives the same interval.
    noisy = (np.random.default_rng(1).random((3, 60)) < 0.6).astype(float)
    costs = np.full((3, 60), 1e-4)
    mean, low, high = utility_with_ci(noisy, costs, 10.0, seed=4)
    assert mean == pytest.approx(np.mean([row.mean() - 1e-3 for row in noisy]))
    assert low < mean < high
    assert utility_with_ci(noisy, costs, 10.0, seed=4) == (mean, low, high)


def test_utility_ci_rejects_mismatched_shapes_and_bad_arguments():
    with pytest.raises(ConfigError, match=r"correct \(2, 5\) and cost \(5,\)"):
        utility_with_ci(np.ones((2, 5)), np.ones(5), 1.0)
    with pytest.raises(ConfigError, match="cost_lambda"):
        utility_with_ci(np.ones(5), np.ones(5), -1.0)
    with pytest.raises(ConfigError, match="level"):
        utility_with_ci(np.ones(5), np.ones(5), 1.0, level=95)


def test_paired_difference_ci_cancels_what_two_methods_share():
    # B solves what A solves except 6 of 200 queries: separate CIs overlap, the paired one is
    # tight and excludes 0; A has three seeds, B one
    rng = np.random.default_rng(2)
    solved = (rng.random(200) < 0.6).astype(float)
    fewer = solved.copy()
    fewer[np.flatnonzero(solved)[:6]] = 0.0
    a = (np.stack([solved] * 3), np.zeros((3, 200)))
    b = (fewer, np.zeros(200))
    _, a_low, _ = utility_with_ci(*a, 0.0)
    _, _, b_high = utility_with_ci(*b, 0.0)
    assert a_low < b_high
    mean, low, high = paired_difference_with_ci(a, b, 0.0)
    assert mean == pytest.approx(0.03)
    assert 0.0 < low < mean < high < 0.06
    assert paired_difference_with_ci(b, a, 0.0) == pytest.approx((-0.03, -high, -low))
    # cost enters at λ: B costs 1e-4 more per query, so at λ = 100 A leads by 0.01 more
    dearer = (fewer, np.full(200, 1e-4))
    assert paired_difference_with_ci(a, dearer, 100.0)[0] == pytest.approx(0.04)
    # identical methods: the interval collapses to 0
    assert paired_difference_with_ci(a, a, 10.0) == (0.0, 0.0, 0.0)
    with pytest.raises(ConfigError, match="same queries; got 200 and 199"):
        paired_difference_with_ci(a, (fewer[:199], np.zeros(199)), 0.0)


def test_best_baseline_excludes_groups_and_regret_has_the_router_below_positive():
    utilities = {"MasRouter": 0.9, "oracle": 0.99, "kNN router": 0.8, "qwen (IO)": 0.8,
                 "gemma (IO)": 0.6}
    groups = {"MasRouter": "MasRouter", "oracle": "oracle", "kNN router": "LLM router",
              "qwen (IO)": "single LLM", "gemma (IO)": "single LLM"}
    name, utility = best_baseline(utilities, groups, {"MasRouter", "oracle"})
    assert (name, utility) == ("kNN router", 0.8)  # tie with "qwen (IO)": first name wins
    # of equals, the one listed first, not the one whose name sorts first
    reordered = {"qwen (IO)": 0.8, **utilities}
    assert best_baseline(reordered, groups, {"MasRouter", "oracle"}) == ("qwen (IO)", 0.8)
    assert regret(utility, utilities["MasRouter"]) == pytest.approx(-0.1)
    assert regret(0.8, 0.7) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="no baseline left"):
        best_baseline({"oracle": 1.0}, {"oracle": "oracle"}, {"oracle"})
    with pytest.raises(ConfigError, match=r"without a group: \['x'\]"):
        best_baseline({"x": 1.0}, {}, set())


# ---------------------------------------------------------------------------- plan distribution

def test_plan_distribution_counts_modes_sizes_slots_and_distinct_plans():
    plans = [
        {"mode": "IO", "k": 1, "roles": ["solver"], "llms": ["a"]},
        {"mode": "IO", "k": 1, "roles": ["solver"], "llms": ["a"]},
        {"mode": "IO", "k": 1, "roles": ["critic"], "llms": ["a"]},
        {"mode": "Debate", "k": 3, "roles": ["solver", "critic", "solver"],
         "llms": ["a", "b", "b"]},
    ]
    d = plan_distribution(plans)
    assert d["n_plans"] == 4
    assert d["mode_shares"] == {"IO": 0.75, "Debate": 0.25}
    assert d["k_shares"] == {1: 0.75, 3: 0.25}
    assert d["role_shares"] == pytest.approx({"solver": 4 / 6, "critic": 2 / 6})
    assert d["llm_shares"] == pytest.approx({"a": 4 / 6, "b": 2 / 6})
    assert list(d["llm_shares"]) == ["a", "b"]  # most common first
    assert d["distinct_teams"] == 2  # (IO, 1, (a,)) and (Debate, 3, (a, b, b))
    assert d["distinct_plans"] == 3  # the two IO role variants differ
    assert d["top_plan"] == {"mode": "IO", "k": 1, "roles": ["solver"], "llms": ["a"]}
    assert d["top_plan_share"] == 0.5


def test_plan_distribution_rejects_inconsistent_plans():
    with pytest.raises(ConfigError, match="at least one plan"):
        plan_distribution([])
    with pytest.raises(ConfigError, match=r"plan 0 lacks keys \['roles'\]"):
        plan_distribution([{"mode": "IO", "k": 1, "llms": ["a"]}])
    with pytest.raises(ConfigError, match="plan 0 has k = 2 with 1 roles and 1 LLMs"):
        plan_distribution([{"mode": "IO", "k": 2, "roles": ["r"], "llms": ["a"]}])


# ---------------------------------------------------------------------------- routers

def _clustered(n: int, rng: np.random.Generator, centres: np.ndarray):
    """Queries in three clusters; LLM ``c`` solves cluster ``c`` 90 % of the time, others 20 %."""
    cluster = rng.integers(0, 3, n)
    x = centres[cluster] + 0.5 * rng.standard_normal((n, centres.shape[1]))
    p = np.full((n, 3), 0.2)
    p[np.arange(n), cluster] = 0.9
    correct = (rng.random((n, 3)) < p).astype(float)
    cost = PRICES[None, :] * (1.0 + 0.1 * rng.random((n, 3)))
    return x, correct, cost


@pytest.fixture(scope="module")
def splits():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 16))
    return {name: _clustered(n, rng, centres)
            for name, n in (("train", 240), ("validation", 120), ("test", 300))}


@pytest.mark.parametrize("kind", sorted(ROUTERS))
def test_router_beats_the_best_single_llm_and_goes_cheap_at_huge_lambda(kind, splits):
    router = ROUTERS[kind]().fit(*splits["train"], LLMS, validation=splits["validation"], seed=0)
    x, correct, _ = splits["test"]
    best_single = correct.mean(axis=0).max()  # ~0.43
    routed = correct[np.arange(len(x)), router.choose(x, 0.0)].mean()
    assert routed > best_single + 0.3, (router.name, routed, best_single)
    assert router.llms == tuple(LLMS)
    assert router.llm_costs.argmin() == 0
    assert np.all(router.choose(x, 1e6) == 0)
    assert np.all(router.choose(x, math.inf) == 0)
    probabilities = router.success_probabilities(x)
    assert probabilities.shape == (len(x), 3)
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0


@pytest.mark.parametrize("kind", sorted(ROUTERS))
def test_router_is_deterministic_under_a_seed_and_keeps_the_global_rng(kind, splits):
    state = torch.get_rng_state()
    first = ROUTERS[kind]().fit(*splits["train"], LLMS, validation=splits["validation"], seed=3)
    second = ROUTERS[kind]().fit(*splits["train"], LLMS, validation=splits["validation"], seed=3)
    assert torch.equal(state, torch.get_rng_state())
    x = splits["test"][0]
    np.testing.assert_array_equal(first.success_probabilities(x), second.success_probabilities(x))


def test_torch_routers_differ_across_seeds_and_train_without_validation(splits):
    x = splits["test"][0]
    for make in (MLPRouter, MFRouter):
        a = make().fit(*splits["train"], LLMS, seed=0)
        b = make().fit(*splits["train"], LLMS, seed=1)
        assert a.epochs_ == a.epochs_without_validation
        assert not np.array_equal(a.success_probabilities(x), b.success_probabilities(x))


def test_validation_picks_hyper_parameters(splits):
    knn = KNNRouter().fit(*splits["train"], LLMS, validation=splits["validation"])
    assert knn.k_ in knn.k_candidates
    assert KNNRouter(default_k=7).fit(*splits["train"], LLMS).k_ == 7
    logistic = LogisticRouter().fit(*splits["train"], LLMS, validation=splits["validation"])
    assert all(c in logistic.c_candidates for c in logistic.c_)
    mlp = MLPRouter(patience=5).fit(*splits["train"], LLMS, validation=splits["validation"])
    assert 1 <= mlp.epochs_ < mlp.max_epochs


def test_knn_with_fewer_training_queries_than_k_predicts_the_shrunk_accuracy():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    correct = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    cost = np.full((3, 2), 1e-4)
    router = KNNRouter(prior_strength=2.0).fit(x, correct, cost, ["a", "b"],
                                               validation=(x, correct, cost))
    assert router.k_ == 3
    np.testing.assert_allclose(router.success_probabilities(x[:1]), [[2 / 3, 1 / 3]])


def test_an_llm_with_one_class_on_train_is_a_constant(splits):
    x, correct, cost = splits["train"]
    always = np.concatenate([correct, np.ones((len(x), 1)), np.zeros((len(x), 1))], axis=1)
    cost = np.concatenate([cost, np.full((len(x), 2), 1e-3)], axis=1)
    names = LLMS + ["oracle-like", "broken"]
    logistic = LogisticRouter().fit(x, always, cost, names)
    probabilities = logistic.success_probabilities(splits["test"][0])
    assert np.all(probabilities[:, 3] == 1.0) and np.all(probabilities[:, 4] == 0.0)
    assert logistic.c_[3:] == [None, None]
    for make in (KNNRouter, MLPRouter, MFRouter):
        probabilities = make().fit(x, always, cost, names).success_probabilities(x)
        assert probabilities[:, 3].min() > 0.5 and probabilities[:, 4].max() < 0.5


@pytest.mark.parametrize("kind", ["knn", "logistic"])
def test_ties_go_to_the_lowest_index(kind, splits):
    x, correct, _ = splits["train"]
    twins = np.concatenate([correct[:, :1], correct[:, :1]], axis=1)
    same_cost = np.full((len(x), 2), 1e-4)
    router = ROUTERS[kind]().fit(x, twins, same_cost, ["first", "twin"])
    for cost_lambda in (0.0, 10.0, math.inf):
        assert np.all(router.choose(splits["test"][0], cost_lambda) == 0)


def test_router_shape_errors_name_the_shapes(splits):
    x, correct, cost = splits["train"]
    router = MLPRouter()
    with pytest.raises(ConfigError, match=r"embeddings \(240, 16\).*correct \(239, 3\)"):
        router.fit(x, correct[1:], cost[1:], LLMS)
    with pytest.raises(ConfigError, match=r"cost \(240, 2\)"):
        router.fit(x, correct, cost[:, :2], LLMS)
    with pytest.raises(ConfigError, match=r"llms has 2 names but correct has shape \(240, 3\)"):
        router.fit(x, correct, cost, LLMS[:2])
    with pytest.raises(ConfigError, match=r"validation shapes embeddings \(120, 8\)"):
        vx, vy, vc = splits["validation"]
        router.fit(x, correct, cost, LLMS, validation=(vx[:, :8], vy, vc))
    with pytest.raises(ConfigError, match="0 or 1 only; found 0.5"):
        router.fit(x, np.where(correct == 1.0, 0.5, 0.0), cost, LLMS)
    with pytest.raises(ConfigError, match="must be >= 0 \\$"):
        router.fit(x, correct, -cost, LLMS)
    with pytest.raises(ConfigError, match="repeated: \\['a'\\]"):
        router.fit(x, correct, cost, ["a", "a", "b"])
    with pytest.raises(ConfigError, match="before fit"):
        KNNRouter().choose(x, 0.0)
    fitted = KNNRouter().fit(x, correct, cost, LLMS)
    with pytest.raises(ConfigError, match=r"shape \(5, 4\) but the router was fitted on D = 16"):
        fitted.success_probabilities(np.zeros((5, 4)))
    with pytest.raises(ConfigError, match="cost_lambda must be >= 0"):
        fitted.choose(x, -1.0)


# ---------------------------------------------------------------------------- plots

def _panel(title: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    methods = [{"name": f"llm-{i} (IO)", "group": "single LLM",
                "points": [(10 ** rng.uniform(-5, -3), a, a - 0.05, a + 0.05)]}
               for i, a in enumerate(rng.uniform(0.3, 0.9, 6))]
    methods.append({"name": "kNN router", "group": "LLM router",
                    "points": [(1e-3, 0.85, 0.8, 0.9), (1e-4, 0.7, 0.65, 0.75),
                               (1e-5, 0.5, float("nan"), float("nan"))]})
    methods.append({"name": "MasRouter", "group": "MasRouter",
                    "points": [(2e-4, 0.88, 0.84, 0.92), (3e-5, 0.75, 0.7, 0.8)]})
    methods.append({"name": "oracle", "group": "oracle", "points": [(5e-5, 0.97, 0.95, 0.99)]})
    return {"title": title, "methods": methods}


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _overlapping(texts, renderer) -> list[tuple[str, str]]:
    """Pairs of non-empty, visible texts whose drawn boxes intersect."""
    shown = [text for text in texts if text.get_visible() and text.get_text()]
    boxes = [text.get_window_extent(renderer) for text in shown]
    return [(shown[i].get_text(), shown[j].get_text())
            for i in range(len(shown)) for j in range(i + 1, len(shown))
            if boxes[i].overlaps(boxes[j])]


def _method_lines(ax) -> list:
    """The lines drawn for methods (not the caps of CI bars, which are lines too)."""
    return [line for line in ax.get_lines() if line.get_marker() != "_"]


def _narrow(panel: dict) -> dict:
    """``panel`` with its costs squeezed into under one decade (1e-4 to 8e-4), where
    matplotlib's default log axis labels minor ticks that run into each other."""
    for method in panel["methods"]:
        method["points"] = [(1e-4 * 8 ** ((math.log10(cost) + 5) / 2), *rest)
                            for cost, *rest in method["points"]]
    return panel


@pytest.mark.parametrize("n_panels, narrow", [(1, False), (2, True), (5, False)])
def test_plot_fronts_draws_each_front_as_a_line_with_ci_bars_a_legend_and_no_overlaps(
        n_panels, narrow, tmp_path):
    path = tmp_path / "fronts.png"
    panels = [_panel(f"replay / pool / task {i}", i) for i in range(n_panels)]
    if narrow:
        panels = [_narrow(panel) for panel in panels]
    fig = plot_fronts(panels, path)
    assert _is_png(path)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == n_panels  # unused grid cells (5 panels on 3 columns) are hidden
    renderer = fig.canvas.get_renderer()
    for ax, panel in zip(visible, panels):
        assert ax.get_title() == panel["title"]
        # every method is drawn (no empty panel); the two λ sweeps as lines through their
        # points in cost order, the single points as bare markers
        drawn = _method_lines(ax)
        assert len(drawn) == len(panel["methods"])
        lines = [line for line in drawn if line.get_linestyle() == "-"]
        assert sorted(len(line.get_xdata()) for line in lines) == [2, 3]
        assert all(list(line.get_xdata()) == sorted(line.get_xdata()) for line in lines)
        # one CI bar per point with finite bounds: 6 singles + 2 of kNN + 2 + 1
        bars = sum(len(c.get_segments()) for c in ax.collections)
        assert bars == 6 + 2 + 2 + 1
        low, high = ax.get_xlim()
        ticks = [label for label in ax.get_xticklabels(which="both")
                 if low <= label.get_position()[0] <= high]  # ticks off the axis are not drawn
        assert any(label.get_text() for label in ticks)  # the cost axis is labelled
        assert not _overlapping(ticks, renderer)
    assert not _overlapping([ax.title for ax in visible], renderer)
    legend = fig.legends[0]
    names = [text.get_text() for text in legend.get_texts()]
    methods = [m["name"] for m in panels[0]["methods"]]
    assert names[0] == "MasRouter" and set(methods) <= set(names)
    assert {"single LLM", "LLM router", "oracle"} <= set(names)  # group headers
    legend_box = legend.get_window_extent(renderer)
    assert not any(legend_box.overlaps(ax.get_tightbbox(renderer)) for ax in visible)


def test_plot_fronts_rejects_unplottable_input(tmp_path):
    with pytest.raises(ConfigError, match="at least one panel"):
        plot_fronts([], tmp_path / "x.png")
    bad = {"title": "t", "methods": [{"name": "free", "group": "g",
                                      "points": [(0.0, 0.5, 0.4, 0.6)]}]}
    with pytest.raises(ConfigError, match="cost must be > 0"):
        plot_fronts([bad], tmp_path / "x.png")
    bad["methods"][0]["points"] = [(1e-4, 0.5, 0.6, 0.7)]
    with pytest.raises(ConfigError, match="does not bracket"):
        plot_fronts([bad], tmp_path / "x.png")
    other = {"title": "u", "methods": [{"name": "free", "group": "h",
                                        "points": [(1e-4, 0.5, 0.4, 0.6)]}]}
    bad["methods"][0]["points"] = [(1e-4, 0.5, 0.4, 0.6)]
    with pytest.raises(ConfigError, match="keeps one group"):
        plot_fronts([bad, other], tmp_path / "x.png")


def test_plot_distributions_writes_a_png_with_a_row_per_pair(tmp_path):
    plans = [{"mode": mode, "k": k, "roles": ["solver"] * k, "llms": llms[:k]}
             for mode, k, llms in [("IO", 1, ["a"]), ("Debate", 3, ["a", "b", "c"]),
                                   ("Chain", 2, ["b", "c"])]]
    panels = [{"title": f"world / pool / task {p}",
               "rows": [{"label": f"router {i}", "distribution": plan_distribution(
                   plans[: 1 + (i + p) % 3])} for i in range(7)]} for p in range(3)]
    path = tmp_path / "distribution.png"
    fig = plot_distributions(panels, path)
    assert _is_png(path)
    grid = [fig.axes[3 * p: 3 * p + 3] for p in range(len(panels))]
    assert len(fig.axes) == 3 * len(panels)
    renderer = fig.canvas.get_renderer()
    for panel, row in zip(panels, grid):
        labels = [r["label"] for r in panel["rows"]]
        for ax in row:
            assert ax.get_title() == panel["title"]
            assert [text.get_text() for text in ax.get_xticklabels()] == labels
            tops = np.zeros(len(labels))  # each bar's segments tile [0, 1] bottom to top
            for segment in ax.patches:
                position = round(segment.get_x() + segment.get_width() / 2)
                assert segment.get_y() == pytest.approx(tops[position])
                tops[position] += segment.get_height()
            assert tops == pytest.approx(np.ones(len(labels)))
        assert row[2].get_legend().get_title().get_text() == "LLMs (3 used)"
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes]
    assert not [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
                if boxes[i].overlaps(boxes[j])]  # no plot's labels run into another plot
    top = fig.legends[0]
    assert [text.get_text() for text in top.get_texts()] == [
        "IO", "Debate", "Chain", "k = 1", "k = 2", "k = 3"]
    assert not any(top.get_window_extent(renderer).overlaps(box) for box in boxes)
    with pytest.raises(ConfigError, match=r"panel 0 \('t'\) row 0 must be"):
        plot_distributions([{"title": "t", "rows": [{"label": "x", "distribution": {
            "llm_shares": {}}}]}], path)
    with pytest.raises(ConfigError, match="panel 0 must be"):
        plot_distributions([{"title": "t", "rows": []}], path)
    with pytest.raises(ConfigError, match="at least one panel"):
        plot_distributions([], path)


def test_named_llm_shares_lumps_the_least_used_and_keeps_each_bar_summing_to_one():
    bars = [{"a": 0.5, "b": 0.3, "c": 0.1, "d": 0.1}, {"a": 0.2, "e": 0.8}]
    named, lumped = named_llm_shares(bars, 2)
    assert named == ["e", "a"]  # totals: e 0.8, a 0.7, b 0.3, c 0.1, d 0.1
    assert lumped == [{"e": 0.0, "a": 0.5, OTHER_LLMS: pytest.approx(0.5)},
                      {"e": 0.8, "a": 0.2, OTHER_LLMS: 0.0}]
    assert all(sum(bar.values()) == pytest.approx(1.0) for bar in lumped)
    # one LLM beyond the limit is named, not lumped
    named, lumped = named_llm_shares(bars, 4)
    assert len(named) == 5 and all(OTHER_LLMS not in bar for bar in lumped)


