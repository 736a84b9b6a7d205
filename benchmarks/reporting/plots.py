"""Figures of the evaluation protocol: accuracy–cost fronts (like Fig. 3 of the MasRouter paper)
and what the routers choose (like its Fig. 4).

The figures must be readable without the tables beside them, so: one colour per method that is
the same in every panel, one shared legend outside the panels instead of text next to points
(which overlap as soon as two methods cost the same), MasRouter drawn thicker with a star, and
confidence intervals as vertical bars. Figures are drawn on matplotlib's Agg canvas directly,
without :mod:`matplotlib.pyplot`, so plotting neither needs a display nor changes the caller's
backend.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from typing import Any, Union

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogLocator, NullFormatter

from masr_graph.errors import ConfigError

DEFAULT_COST_LABEL = "$ per query (log; notional for replay)"
HIGHLIGHT_GROUP = "MasRouter"
DPI = 130
# Markers tell groups apart, colours tell methods apart; MasRouter always gets the star.
_GROUP_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")

FilePath = Union[str, "PathLike[str]"]


def plot_fronts(panels: Sequence[Mapping[str, Any]], path: FilePath, *,
                cost_label: str = DEFAULT_COST_LABEL, columns: int = 3) -> Figure:
    """Accuracy against $ per query, one panel per (world, pool, task), saved as an image (the
    figure is returned too, for inspection).

    Each panel is ``{"title": str, "methods": [method, ...]}`` and each method
    ``{"name": str, "group": str, "points": [(cost, accuracy, acc_ci_low, acc_ci_high), ...]}``.
    A method with several points (its ``λ`` sweep) is drawn as a line through its points in
    order of cost, with markers; a method with one point (``λ``-independent) as a marker. Every
    point carries its accuracy CI as a vertical bar (skipped when the bounds are NaN). A method
    keeps its colour in every panel; group ``"MasRouter"`` is drawn with a thicker line and a
    star. The grid has ``min(columns, len(panels))`` columns; unused cells are hidden.

    Args:
        panels: the panels, in reading order.
        path: output file; the format follows its suffix (``.png`` recommended).
        cost_label: label of the (log-scale) cost axis.
        columns: panels per row, ``≥ 1``.

    Raises:
        ConfigError: no panels, a panel or method lacks a key, a point is not a 4-tuple, a cost
            is not positive (the axis is logarithmic) or a CI does not bracket its accuracy.
    """
    if not panels:
        raise ConfigError("plot_fronts needs at least one panel; got none")
    if int(columns) != columns or columns < 1:
        raise ConfigError(f"columns must be a positive integer; got {columns!r}")
    checked = [_check_panel(panel, index) for index, panel in enumerate(panels)]
    methods: dict[str, dict[str, Any]] = {}  # name → {"group", "line"}, in first-seen order
    for title, panel_methods in checked:
        for method in panel_methods:
            entry = methods.setdefault(method["name"], {"group": method["group"], "line": False})
            if entry["group"] != method["group"]:
                raise ConfigError(f"method {method['name']!r} is in group {entry['group']!r} in "
                                  f"one panel and {method['group']!r} in panel {title!r}; a "
                                  f"method keeps one group (and so one style) across panels")
            entry["line"] = entry["line"] or len(method["points"]) > 1
    colours = dict(zip(methods, _palette(len(methods))))
    groups = list(dict.fromkeys(entry["group"] for entry in methods.values()))
    markers = {group: _GROUP_MARKERS[i % len(_GROUP_MARKERS)]
               for i, group in enumerate(g for g in groups if g != HIGHLIGHT_GROUP)}
    markers[HIGHLIGHT_GROUP] = "*"

    ncols = min(int(columns), len(checked))
    nrows = math.ceil(len(checked) / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.5 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(checked):]:
        ax.set_visible(False)
    for ax, (title, panel_methods) in zip(axes, checked):
        for method in panel_methods:
            _draw_method(ax, method, colours[method["name"]], markers[method["group"]])
        ax.set_xscale("log")
        # Matplotlib labels the minor ticks of a short log axis, and their long "3 × 10⁻⁵"
        # labels run into each other: label majors only, at 1, 2 and 5 × 10ᵏ when the panel
        # spans under two decades (so it always has labels), else at the decades.
        low, high = ax.get_xlim()
        if math.log10(high / low) < 2:
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(cost_label, fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="major")
        ax.grid(alpha=0.1, which="minor")

    # One legend section per group, MasRouter first, then groups and methods in first-seen
    # order; a bold header names the group, since markers alone do not say which is which.
    handles, headers = [], []
    for group in sorted(groups, key=lambda g: (g != HIGHLIGHT_GROUP, groups.index(g))):
        headers.append(len(handles))
        handles.append(Line2D([], [], linestyle="none", label=group))
        handles += [Line2D([], [], color=colours[name], marker=markers[group],
                           linestyle="-" if entry["line"] else "none", **_style(group),
                           label=name)
                    for name, entry in methods.items() if entry["group"] == group]
    fig.tight_layout()
    legend = fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5),
                        fontsize=7, ncol=1 + len(handles) // 28, frameon=False)
    for index in headers:
        legend.get_texts()[index].set_fontweight("bold")
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig


OTHER_LLMS = "other LLMs"


def plot_distributions(panels: Sequence[Mapping[str, Any]], path: FilePath, *,
                       named_llms: int = 8) -> Figure:
    """What each method chose on each pair, as stacked shares (like the paper's Fig. 4), saved
    as an image (the figure is returned too, for inspection).

    Each panel is one pair, ``{"title": str, "rows": [row, ...]}``, and each row one method's
    bar, ``{"label": str, "distribution": dict}`` with the dict returned by
    :func:`~masr_graph.benchmarks.reporting.fronts.plan_distribution`. A pair gets one row of
    three plots sharing its bars: collaboration-mode and team-size (``k``) shares over plans and
    LLM shares over agent slots. Modes and sizes keep one colour across pairs (one legend at the
    top); LLMs differ by pool, so each pair's LLM plot has its own legend, naming its
    ``named_llms`` most used LLMs and stacking the rest as "other LLMs", the most used at the
    bottom of every bar.

    Args:
        panels: the pairs, top to bottom.
        path: output file; the format follows its suffix.
        named_llms: LLMs named per pair, ``≥ 1``.

    Raises:
        ConfigError: no panels, a panel without ``title`` or rows, or a row lacks ``label`` or a
            distribution with ``llm_shares``, ``mode_shares`` and ``k_shares``.
    """
    if not panels:
        raise ConfigError("plot_distributions needs at least one panel; got none")
    if int(named_llms) != named_llms or named_llms < 1:
        raise ConfigError(f"named_llms must be a positive integer; got {named_llms!r}")
    checked = [_check_distribution_panel(panel, index) for index, panel in enumerate(panels)]
    mode_keys = _keys_by_share(d["mode_shares"] for _, rows in checked for _, d in rows)
    k_keys = sorted({k for _, rows in checked for _, d in rows for k in d["k_shares"]})
    mode_colours = dict(zip(mode_keys, _palette(len(mode_keys))))
    viridis = colormaps["viridis"]
    k_colours = {k: viridis(0.15 + 0.7 * i / max(1, len(k_keys) - 1))
                 for i, k in enumerate(k_keys)}
    widest = max(len(rows) for _, rows in checked)
    fig = Figure(figsize=(3 * max(2.6, 0.42 * widest) + 3.2, 2.9 * len(checked) + 0.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(checked), 3, squeeze=False)
    for (title, rows), (mode_ax, k_ax, llm_ax) in zip(checked, axes):
        labels = [label for label, _ in rows]
        distributions = [d for _, d in rows]
        _stack(mode_ax, [d["mode_shares"] for d in distributions], mode_colours, str)
        _stack(k_ax, [d["k_shares"] for d in distributions], k_colours,
               lambda key: f"k = {key}")
        llm_shares = [d["llm_shares"] for d in distributions]
        named, lumped = named_llm_shares(llm_shares, named_llms)
        llm_colours = dict(zip(named, _palette(len(named))))
        if OTHER_LLMS in lumped[0]:
            llm_colours[OTHER_LLMS] = "lightgrey"
        _stack(llm_ax, lumped, llm_colours, str)
        used = len({llm for shares in llm_shares for llm in shares})
        llm_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=6.5, frameon=False,
                      title=f"LLMs ({used} used)", title_fontsize=7)
        for ax, ylabel in ((mode_ax, "share of plans (mode)"), (k_ax, "share of plans (k)"),
                           (llm_ax, "share of agents (LLM)")):
            ax.set_title(title, fontsize=9)
            ax.set_ylabel(ylabel, fontsize=7)
            ax.set_xticks(np.arange(len(labels)))
            ax.set_xticklabels(labels, rotation=35, ha="right", rotation_mode="anchor",
                               fontsize=6.5)
    top_handles = ([Patch(color=mode_colours[key], label=str(key)) for key in mode_keys]
                   + [Patch(color=k_colours[key], label=f"k = {key}") for key in k_keys])
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.7 / fig.get_figheight()))
    fig.legend(handles=top_handles, loc="upper center", ncol=min(len(top_handles), 12),
               fontsize=7, frameon=False, title="modes and team sizes (every pair)",
               title_fontsize=7)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig


def named_llm_shares(shares: Sequence[Mapping[str, float]],
                     named_llms: int) -> tuple[list[str], list[dict[str, float]]]:
    """The ``named_llms`` LLMs of largest total share over ``shares`` (one dict per bar), and
    each bar's shares with the rest summed as :data:`OTHER_LLMS` (present only when there is a
    rest). One LLM beyond the limit is named rather than lumped: a legend entry "other LLMs"
    standing for one LLM would hide its name for nothing."""
    keys = _keys_by_share(shares)
    named = keys if len(keys) <= named_llms + 1 else keys[:named_llms]
    lumped = []
    for bar in shares:
        kept = {key: float(bar.get(key, 0.0)) for key in named}
        if len(named) < len(keys):
            kept[OTHER_LLMS] = sum(float(v) for key, v in bar.items() if key not in named)
        lumped.append(kept)
    return named, lumped


def _check_distribution_panel(panel: Mapping[str, Any],
                              index: int) -> tuple[str, list[tuple[str, Mapping[str, Any]]]]:
    needed = ("llm_shares", "mode_shares", "k_shares")
    rows = panel.get("rows") if isinstance(panel, Mapping) else None
    if not isinstance(panel, Mapping) or "title" not in panel or not rows:
        raise ConfigError(f"panel {index} must be {{'title': str, 'rows': [...]}} with at least "
                          f"one row; got {panel!r:.120}")
    checked = []
    for row_index, row in enumerate(rows):
        distribution = row.get("distribution")
        if "label" not in row or not isinstance(distribution, Mapping) or any(
                key not in distribution for key in needed):
            raise ConfigError(f"panel {index} ({panel['title']!r}) row {row_index} must be "
                              f"{{'label': str, 'distribution': plan_distribution(...)}}, the "
                              f"distribution with keys {list(needed)}; got row keys "
                              f"{sorted(row)}")
        checked.append((str(row["label"]), distribution))
    return str(panel["title"]), checked


def _keys_by_share(share_dicts: Any) -> list[Any]:
    """Keys in order of decreasing total share over the dicts (ties by name)."""
    totals: dict[Any, float] = {}
    for shares in share_dicts:
        for key, share in shares.items():
            totals[key] = totals.get(key, 0.0) + float(share)
    return sorted(totals, key=lambda key: (-totals[key], str(key)))


def _stack(ax: Any, bars: Sequence[Mapping[Any, float]], colours: Mapping[Any, Any],
           label: Callable[[Any], str]) -> None:
    """One stacked bar per share dict, its keys stacked in ``colours``' order."""
    positions = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for key, colour in colours.items():
        shares = np.array([float(bar.get(key, 0.0)) for bar in bars])
        ax.bar(positions, shares, bottom=bottom, width=0.7, color=colour, label=label(key),
               edgecolor="white", linewidth=0.5)
        bottom += shares
    ax.set_ylim(0.0, 1.0)
    ax.tick_params(labelsize=6.5)
    ax.grid(alpha=0.3, axis="y")


def _draw_method(ax: Any, method: Mapping[str, Any], colour: Any, marker: str) -> None:
    points = sorted(method["points"])
    cost, accuracy, low, high = (np.array(column, dtype=float) for column in zip(*points))
    style = _style(method["group"])
    zorder = 4 if method["group"] == HIGHLIGHT_GROUP else 2
    ax.plot(cost, accuracy, color=colour, marker=marker,
            linestyle="-" if len(points) > 1 else "none", zorder=zorder, **style)
    has_ci = ~(np.isnan(low) | np.isnan(high))
    if has_ci.any():
        ax.errorbar(cost[has_ci], accuracy[has_ci],
                    yerr=[accuracy[has_ci] - low[has_ci], high[has_ci] - accuracy[has_ci]],
                    fmt="none", ecolor=colour, elinewidth=0.9, capsize=2, alpha=0.7,
                    zorder=zorder - 1)


def _style(group: str) -> dict[str, float]:
    if group == HIGHLIGHT_GROUP:
        return {"linewidth": 2.6, "markersize": 12}
    return {"linewidth": 1.2, "markersize": 5}


def _palette(n: int) -> list[Any]:
    """``n`` distinct colours: tab10 up to 10, tab20 up to 20, then tab20 + tab20b + tab20c
    (repeating beyond 60)."""
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    pool = [colormaps[name](i) for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    return [pool[i % len(pool)] for i in range(n)]


def _check_panel(panel: Mapping[str, Any], index: int) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(panel, Mapping) or "title" not in panel or "methods" not in panel:
        raise ConfigError(f"panel {index} must be {{'title': str, 'methods': [...]}}; got "
                          f"{sorted(panel) if isinstance(panel, Mapping) else panel!r}")
    methods = []
    for method in panel["methods"]:
        missing = [key for key in ("name", "group", "points") if key not in method]
        if missing:
            raise ConfigError(f"a method of panel {panel['title']!r} lacks keys {missing}; "
                              f"each needs 'name', 'group' and 'points'")
        name, points = str(method["name"]), []
        if not method["points"]:
            raise ConfigError(f"method {name!r} of panel {panel['title']!r} has no points")
        for point in method["points"]:
            if len(point) != 4:
                raise ConfigError(f"method {name!r} of panel {panel['title']!r}: a point must be "
                                  f"(cost, accuracy, acc_ci_low, acc_ci_high); got {point!r}")
            cost, accuracy, low, high = (float(v) for v in point)
            if not (math.isfinite(cost) and cost > 0.0 and math.isfinite(accuracy)):
                raise ConfigError(f"method {name!r} of panel {panel['title']!r}: cost must be "
                                  f"> 0 (log axis) and accuracy finite; got {point!r}")
            if not (math.isnan(low) or math.isnan(high) or low <= accuracy <= high):
                raise ConfigError(f"method {name!r} of panel {panel['title']!r}: the CI "
                                  f"[{low}, {high}] does not bracket accuracy {accuracy}")
            points.append((cost, accuracy, low, high))
        methods.append({"name": name, "group": str(method["group"]), "points": points})
    return str(panel["title"]), methods
