"""Metrics of the evaluation protocol: utility with a confidence interval, accuracy–cost fronts,
their hypervolume, regret against the best baseline and what a router's plans look like.

A router trades accuracy for $ at a cost preference ``λ`` (utility per $), so one number per
method hides the trade-off. The protocol reports, per (world, pool, task):

- the utility ``accuracy − λ · $/query`` at each ``λ`` with a bootstrap CI over queries
  (:func:`utility_with_ci`), and the regret of a router against the best baseline at that ``λ``
  (:func:`best_baseline`, :func:`regret`) with a paired CI (:func:`paired_difference_with_ci`);
- the non-dominated (cost, accuracy) points of a method's ``λ`` sweep (:func:`accuracy_cost_front`)
  and the share of the cost–accuracy box they dominate (:func:`hypervolume`), one number for the
  whole front;
- how diverse the chosen plans are (:func:`plan_distribution`), since a router that always
  returns one plan is a fixed baseline in disguise.

Everything here is a pure function of numpy arrays or plain Python values.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from masr_graph.errors import ConfigError

# Bootstrap resamples drawn at once: bounds memory to ~_CHUNK × N indices for large N.
_CHUNK = 256


def utility_with_ci(correct: np.ndarray, cost: np.ndarray, cost_lambda: float, *,
                    level: float = 0.95, n_resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """Mean utility ``correct − λ · cost`` over queries, with a paired bootstrap CI.

    With several seeds (rows of the same queries, in the same column order) the utility is the
    mean over seeds, and the CI resamples *queries*: each resample draws ``N`` query columns with
    replacement and averages the per-query seed-mean utility. Resampling a query keeps all its
    seeds together, so the interval reflects which queries were drawn, not seed noise counted as
    independent queries. The CI is the percentile interval at ``level``; it collapses to the mean
    when every query has the same utility.

    Args:
        correct: ``[N]`` or ``[S, N]`` score per query (1 solved, 0 not; fractions allowed).
        cost: $ per query, same shape as ``correct``.
        cost_lambda: utility per $, finite and ``≥ 0``.
        level: coverage of the interval, in ``(0, 1)``.
        n_resamples: bootstrap resamples, ``≥ 1``.
        seed: seed of the resampling.

    Returns:
        ``(mean, low, high)``.

    Raises:
        ConfigError: the shapes differ or are not ``[N]`` / ``[S, N]`` with ``N ≥ 1``, a value is
            not finite, or an argument is out of range.
    """
    return _mean_with_bootstrap_ci(_seed_mean_utility(correct, cost, cost_lambda), level,
                                   n_resamples, seed)


def paired_difference_with_ci(first: tuple[np.ndarray, np.ndarray],
                              second: tuple[np.ndarray, np.ndarray], cost_lambda: float, *,
                              level: float = 0.95, n_resamples: int = 2000,
                              seed: int = 0) -> tuple[float, float, float]:
    """Mean utility of ``first`` minus that of ``second`` on the same queries, with a paired
    bootstrap CI: each resample draws queries and takes both methods' seed-mean utility on the
    same draw, so what the two share (an easy query both solve, a plan both chose) cancels.

    Why paired: two methods' separate CIs overlap even when one beats the other on nearly every
    query; whether a regret is beyond the test set's noise is a question about the difference.

    Args:
        first, second: ``(correct, cost)``, each ``[N]`` or ``[S, N]`` as in
            :func:`utility_with_ci`; the two may have different numbers of seeds ``S`` but must
            share the query columns ``N``, in the same order.
        cost_lambda, level, n_resamples, seed: as in :func:`utility_with_ci`.

    Returns:
        ``(mean, low, high)`` of ``first − second``.

    Raises:
        ConfigError: as :func:`utility_with_ci`, or the two cover different numbers of queries.
    """
    first_utility, second_utility = (_seed_mean_utility(*method, cost_lambda)
                                     for method in (first, second))
    if first_utility.shape != second_utility.shape:
        raise ConfigError(f"a paired difference needs the same queries; got "
                          f"{first_utility.size} and {second_utility.size}")
    return _mean_with_bootstrap_ci(first_utility - second_utility, level, n_resamples, seed)


def _seed_mean_utility(correct: np.ndarray, cost: np.ndarray, cost_lambda: float) -> np.ndarray:
    """``[N]`` per-query utility ``correct − λ · cost``, averaged over seeds (rows), checked."""
    scores = np.asarray(correct, dtype=float)
    costs = np.asarray(cost, dtype=float)
    if scores.shape != costs.shape or scores.ndim not in (1, 2) or scores.size == 0:
        raise ConfigError(f"correct and cost must share a non-empty [N] or [S, N] shape; got "
                          f"correct {scores.shape} and cost {costs.shape}")
    if not (np.all(np.isfinite(scores)) and np.all(np.isfinite(costs))):
        raise ConfigError("correct and cost must be finite; found NaN or infinite entries")
    if not (math.isfinite(cost_lambda) and cost_lambda >= 0.0):
        raise ConfigError(f"cost_lambda must be finite and >= 0 (utility per $); "
                          f"got {cost_lambda!r}")
    return np.atleast_2d(scores - cost_lambda * costs).mean(axis=0)


def _mean_with_bootstrap_ci(per_query: np.ndarray, level: float, n_resamples: int,
                            seed: int) -> tuple[float, float, float]:
    """The mean of ``[N]`` per-query values and its percentile bootstrap interval."""
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1); got {level!r}")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ConfigError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    mean = float(per_query.mean())
    if np.all(per_query == per_query[0]):
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    n = per_query.size
    means = np.concatenate([
        per_query[rng.integers(0, n, size=(min(_CHUNK, n_resamples - start), n))].mean(axis=1)
        for start in range(0, int(n_resamples), _CHUNK)
    ])
    alpha = (1.0 - level) / 2.0
    return mean, float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def accuracy_cost_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated ``(cost, accuracy)`` points, sorted by increasing cost.

    A point is dominated when another costs no more and is at least as accurate, and is strictly
    better in one of the two. Repeated points appear once. Along the result both cost and
    accuracy strictly increase.

    Raises:
        ConfigError: a point is not a pair of finite numbers.
    """
    checked = [_check_point(point, index) for index, point in enumerate(points)]
    front: list[tuple[float, float]] = []
    # Cheapest first and, at equal cost, most accurate first: a point joins the front exactly
    # when it is more accurate than every cheaper-or-equal point seen so far.
    for cost, accuracy in sorted(checked, key=lambda p: (p[0], -p[1])):
        if not front or accuracy > front[-1][1]:
            front.append((cost, accuracy))
    return front


def hypervolume(front: Sequence[tuple[float, float]], *, cost_range: tuple[float, float],
                accuracy_floor: float = 0.0, log_cost: bool = True) -> float:
    """Share of the cost–accuracy box dominated by ``front``, in ``[0, 1]``.

    Definition. Let ``t(c) = log10(c)`` when ``log_cost`` (costs span orders of magnitude, so a
    factor of ten costs the same width anywhere) and ``t(c) = c`` otherwise. The box is
    ``B = [t(c_min), t(c_max)] × [accuracy_floor, 1]`` with ``(c_min, c_max) = cost_range``. A
    point ``(c_i, a_i)`` dominates everything that costs more and is less accurate,
    ``D_i = {(t, a) : t ≥ t(c_i), a ≤ a_i}``. Then

        ``hypervolume = area((∪_i D_i) ∩ B) / area(B)``.

    Points outside the box are clipped to it, which gives the same area: a point cheaper than
    ``c_min`` counts as if it cost ``c_min``, one dearer than ``c_max`` or below the floor adds
    nothing. A cost of 0 is fine on the log axis (it clips to ``c_min``). Dominated points add
    nothing, so ``front`` may be any set of points. An empty front gives 0; a point at
    ``(c_min, 1)`` gives 1. With the points of the front sorted by cost,
    ``t_1 < … < t_n`` (clipped), accuracies ``a_1 < … < a_n`` and ``t_{n+1} = t(c_max)``:

        ``hypervolume = Σ_i (t_{i+1} − t_i) · (a_i − accuracy_floor)
        / ((t(c_max) − t(c_min)) · (1 − accuracy_floor))``.

    Args:
        front: ``(cost, accuracy)`` points, cost in $ per query.
        cost_range: ``(c_min, c_max)``, ``c_min < c_max``; both ``> 0`` when ``log_cost``,
            ``c_min ≥ 0`` otherwise. Use the same range for every method compared.
        accuracy_floor: bottom of the box, in ``[0, 1)``.
        log_cost: measure cost widths on a log10 axis.

    Raises:
        ConfigError: the range or floor is invalid, or a point is not a pair of finite numbers.
    """
    if len(cost_range) != 2:
        raise ConfigError(f"cost_range must be (c_min, c_max); got {cost_range!r}")
    low, high = (float(c) for c in cost_range)
    if not (math.isfinite(low) and math.isfinite(high) and low < high
            and (low > 0.0 if log_cost else low >= 0.0)):
        axis = "0 < c_min < c_max (log axis)" if log_cost else "0 <= c_min < c_max"
        raise ConfigError(f"cost_range must satisfy {axis}; got {cost_range!r}")
    if not 0.0 <= accuracy_floor < 1.0:
        raise ConfigError(f"accuracy_floor must be in [0, 1); got {accuracy_floor!r}")
    transform = math.log10 if log_cost else float
    clipped = [(min(max(cost, low), high), min(max(accuracy, accuracy_floor), 1.0))
               for cost, accuracy in (_check_point(p, i) for i, p in enumerate(front))]
    steps = accuracy_cost_front(clipped)
    if not steps:
        return 0.0
    edges = [transform(cost) for cost, _ in steps] + [transform(high)]
    area = sum((edges[i + 1] - edges[i]) * (accuracy - accuracy_floor)
               for i, (_, accuracy) in enumerate(steps))
    return area / ((transform(high) - transform(low)) * (1.0 - accuracy_floor))


def regret(best_baseline_utility: float, router_utility: float) -> float:
    """``best_baseline_utility − router_utility``: how much utility the router leaves on the table.

    Positive when the router is below the best baseline, negative when it beats it.
    """
    return float(best_baseline_utility) - float(router_utility)


def best_baseline(utilities: Mapping[str, float], groups: Mapping[str, str],
                  exclude_groups: Collection[str]) -> tuple[str, float]:
    """The method with the highest utility among those whose group is not excluded.

    Exclude the router under test and anything that is not a deployable competitor, e.g.
    ``{"MasRouter", "oracle"}``. Ties (methods that chose the same plans tie exactly) go to the
    method listed first in ``utilities``, so a caller decides which of equals to name.

    Args:
        utilities: method name → utility at one ``λ``.
        groups: method name → group (every method of ``utilities`` must have one).
        exclude_groups: groups left out.

    Returns:
        ``(name, utility)`` of the best remaining method.

    Raises:
        ConfigError: a method has no group or a non-finite utility, or no method remains.
    """
    missing = sorted(set(utilities) - set(groups))
    if missing:
        raise ConfigError(f"methods without a group: {missing}; groups has {sorted(groups)}")
    candidates = {name: float(value) for name, value in utilities.items()
                  if groups[name] not in exclude_groups}
    bad = sorted(name for name, value in candidates.items() if not math.isfinite(value))
    if bad:
        raise ConfigError(f"utilities must be finite; got {[(n, candidates[n]) for n in bad]}")
    if not candidates:
        raise ConfigError(f"no baseline left after excluding groups {sorted(exclude_groups)}; "
                          f"the groups present are {sorted({groups[n] for n in utilities})}")
    name = max(candidates, key=candidates.__getitem__)  # the first of equal maxima
    return name, candidates[name]


def plan_distribution(plans: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What a router's plans look like: shares of modes, team sizes, roles and LLMs, and diversity.

    Each plan has ``"mode"`` (str), ``"k"`` (int ≥ 1, the number of agents), ``"roles"`` and
    ``"llms"`` (lists of ``k`` names, one per agent slot). Mode and ``k`` shares are over plans;
    role and LLM shares are over agent slots, so a 3-agent plan weighs three times a 1-agent one.
    Share dicts are ordered by decreasing share, ties by key.

    Returns:
        A dict with ``"n_plans"``; ``"mode_shares"``, ``"k_shares"`` (keys ``int``),
        ``"role_shares"``, ``"llm_shares"``; ``"distinct_teams"``, the number of distinct
        ``(mode, k, llms)``; ``"distinct_plans"``, distinct ``(mode, k, roles, llms)``;
        ``"top_plan"``, the most common full plan as ``{"mode", "k", "roles", "llms"}`` (ties: the
        one seen first) and ``"top_plan_share"``, its share of the plans.

    Raises:
        ConfigError: there are no plans, a key is missing, or ``k`` does not match the number of
            roles and LLMs.
    """
    if not plans:
        raise ConfigError("plan_distribution needs at least one plan; got none")
    modes: Counter = Counter()
    sizes: Counter = Counter()
    roles: Counter = Counter()
    llms: Counter = Counter()
    teams: set = set()
    full: Counter = Counter()
    for index, plan in enumerate(plans):
        missing = [key for key in ("mode", "k", "roles", "llms") if key not in plan]
        if missing:
            raise ConfigError(f"plan {index} lacks keys {missing}; each plan needs "
                              f"'mode', 'k', 'roles' and 'llms' (got keys {sorted(plan)})")
        mode, k = str(plan["mode"]), plan["k"]
        plan_roles, plan_llms = tuple(plan["roles"]), tuple(plan["llms"])
        is_count = isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1
        if not (is_count and len(plan_roles) == len(plan_llms) == k):
            raise ConfigError(f"plan {index} has k = {k!r} with {len(plan_roles)} roles and "
                              f"{len(plan_llms)} LLMs; k must be a positive integer equal to both")
        k = int(k)
        modes[mode] += 1
        sizes[k] += 1
        roles.update(plan_roles)
        llms.update(plan_llms)
        teams.add((mode, k, plan_llms))
        full[(mode, k, plan_roles, plan_llms)] += 1
    (top_mode, top_k, top_roles, top_llms), top_count = full.most_common(1)[0]
    return {
        "n_plans": len(plans),
        "mode_shares": _shares(modes),
        "k_shares": _shares(sizes),
        "role_shares": _shares(roles),
        "llm_shares": _shares(llms),
        "distinct_teams": len(teams),
        "distinct_plans": len(full),
        "top_plan": {"mode": top_mode, "k": top_k, "roles": list(top_roles),
                     "llms": list(top_llms)},
        "top_plan_share": top_count / len(plans),
    }


def _shares(counts: Counter) -> dict:
    total = sum(counts.values())
    return {key: counts[key] / total
            for key in sorted(counts, key=lambda key: (-counts[key], key))}


def _check_point(point: Sequence[float], index: int) -> tuple[float, float]:
    if len(point) != 2:
        raise ConfigError(f"point {index} must be (cost, accuracy); got {point!r}")
    cost, accuracy = float(point[0]), float(point[1])
    if not (math.isfinite(cost) and math.isfinite(accuracy)):
        raise ConfigError(f"point {index} must be finite; got {point!r}")
    return cost, accuracy

