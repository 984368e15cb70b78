"""Every figure the assets show: small matplotlib plots rendered to PNG data URIs, for Markdown metadata in the UI.

Each public function draws one kind of figure and returns Markdown (an image
with ``alt`` text). Figures use matplotlib's constrained layout, so a figure
title, the axes titles and the axis labels never overlap; the drawing function
behind each one is its ``__wrapped__`` (it returns the figure and its alt text,
for tests).
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BLUE, GREEN, ORANGE = "#4f6bed", "#2aa876", "#e8833a"
TITLE_SIZE, SUPTITLE_SIZE, LABEL_SIZE, TICK_SIZE, LEGEND_SIZE = 9, 10, 8, 7, 7


def figure_to_markdown(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode('ascii')})"


def _markdown(draw: Callable[..., tuple[Any, str]]) -> Callable[..., str]:
    """``draw(...)`` returns (figure, alt text); the wrapped function returns the figure as Markdown."""

    @functools.wraps(draw)
    def render(*args, **kwargs) -> str:
        fig, alt = draw(*args, **kwargs)
        return figure_to_markdown(fig, alt)

    return render


def _axes(figsize: tuple[float, float], ncols: int = 1, **kwargs):
    # Constrained layout makes room for every title and label, the figure's suptitle included.
    return plt.subplots(1, ncols, figsize=figsize, layout="constrained", **kwargs)


@_markdown
def histogram_grid(
    series_by_label: dict[str, list[float]],
    bins: list[float],
    title: str,
    xlabel: str,
    threshold: float | None = None,
    threshold_label: str = "threshold",
):
    """One small bar histogram per label, side by side; ``threshold``: a dashed line where the rows are
    split (e.g. high = Overall >= 8), named in a legend, with each panel's count on either side."""
    labels = list(series_by_label) or ["(none)"]
    fig, axes = _axes((3.2 * len(labels), 2.6), len(labels), squeeze=False, sharey=False)
    for ax, label in zip(axes[0], labels):
        values = series_by_label.get(label, [])
        ax.hist(values, bins=bins, color=BLUE, edgecolor="white")
        name = label
        if threshold is not None:
            at = threshold - 0.5 if all(float(b) % 1 == 0.5 for b in bins) else threshold  # integer scores: a bin edge
            ax.axvline(at, color=ORANGE, linestyle="--", linewidth=1.2, label=f"{threshold_label} ({threshold:g})")
            above = sum(1 for v in values if v >= threshold)
            name = f"{label}: {above} of {len(values)} at or above"
            ax.legend(fontsize=LEGEND_SIZE, loc="upper left")
        ax.set_title(name, fontsize=TITLE_SIZE)
        ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
        ax.tick_params(labelsize=TICK_SIZE)
    fig.suptitle(title, fontsize=SUPTITLE_SIZE)
    return fig, title


@_markdown
def curve_plot(series: dict[str, list], title: str, ylabel: str):
    """Lines of (step, value) points per series (loss, reward curves)."""
    fig, ax = _axes((5, 2.6))
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", ms=2, label=name)
    ax.set_xlabel("step", fontsize=LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    ax.set_title(title, fontsize=TITLE_SIZE)
    if len(series) > 1:
        ax.legend(fontsize=LEGEND_SIZE)
    return fig, title


@_markdown
def sizes_and_similarities(sizes: Sequence[int], cosines: Sequence[float], title: str, alt: str):
    """Two panels: how many clusters have each size, and the histogram of member-to-centre cosines."""
    sizes, cosines = np.asarray(sizes), np.asarray(cosines, dtype=float)
    fig, (a, b) = _axes((7.5, 2.6), 2)
    if len(sizes):
        values, counts = np.unique(sizes, return_counts=True)
        a.bar(values, counts, color=BLUE)
    a.set_title("cluster size", fontsize=TITLE_SIZE)
    a.set_xlabel("members", fontsize=LABEL_SIZE)
    b.hist(cosines, bins=30, range=(min(0.0, float(cosines.min())) if len(cosines) else 0.0, 1.0), color=GREEN)
    b.set_title("member-to-centre cosine", fontsize=TITLE_SIZE)
    fig.suptitle(title, fontsize=SUPTITLE_SIZE)
    return fig, alt


@_markdown
def labelled_bars(values: dict[str, int | float], title: str, alt: str):
    """One bar per key, in order, each with its value written on top (e.g. a funnel of row counts)."""
    labels = list(values)
    fig, ax = _axes((5.5, 2.6))
    ax.bar(labels, [values[k] for k in labels], color=BLUE)
    for x, k in enumerate(labels):
        ax.text(x, values[k], str(values[k]), ha="center", va="bottom", fontsize=TICK_SIZE)
    ax.tick_params(labelsize=TICK_SIZE)
    ax.set_title(title, fontsize=TITLE_SIZE)
    return fig, alt


@_markdown
def grouped_bars(
    groups: dict[str, Sequence[float]],
    categories: Sequence[str],
    title: str,
    alt: str,
    ylim: tuple[float, float] | None = None,
    figsize: tuple[float, float] = (6, 2.8),
    legend_columns: int = 1,
    legend_fontsize: int = LEGEND_SIZE,
):
    """Per category, one bar for each group (e.g. each model's or arm's score on each metric), with a legend."""
    fig, ax = _axes(figsize)
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(categories))
    for i, (label, values) in enumerate(groups.items()):
        ax.bar(x + i * width, list(values), width, label=label)
    ax.set_xticks(x + width * (len(groups) - 1) / 2, list(categories), fontsize=TICK_SIZE)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if groups:
        ax.legend(fontsize=legend_fontsize, ncol=legend_columns)
    ax.set_title(title, fontsize=TITLE_SIZE)
    return fig, alt


@_markdown
def histogram(values: Sequence[float], bins: Any, title: str, alt: str, figsize: tuple[float, float] = (4, 2.4)):
    """One histogram."""
    fig, ax = _axes(figsize)
    ax.hist(values, bins=bins, color=BLUE)
    ax.set_title(title, fontsize=TITLE_SIZE)
    return fig, alt


@_markdown
def overlaid_histograms(series: dict[str, Sequence[float]], bins: Any, title: str, xlabel: str, alt: str):
    """One translucent histogram per label, on the same axes, each labelled with its row count."""
    fig, ax = _axes((5, 2.6))
    for label, values in series.items():
        ax.hist(values, bins=bins, alpha=0.6, label=f"{label} ({len(values)})")
    ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    if series:
        ax.legend(fontsize=LEGEND_SIZE)
    ax.set_title(title, fontsize=TITLE_SIZE)
    return fig, alt


@_markdown
def stacked_barh(table, colors: dict[str, str], title: str, alt: str):
    """A pandas DataFrame as horizontal bars (one per row), its columns stacked in ``colors``."""
    fig, ax = _axes((5, 2.6))
    if len(table):
        table.plot.barh(stacked=True, ax=ax, color=colors)
    ax.set_title(title, fontsize=TITLE_SIZE)
    ax.tick_params(labelsize=TICK_SIZE)
    return fig, alt


@_markdown
def funnel_panels(funnels: dict[str, dict[str, int]], title: str, alt: str):
    """One panel per label (e.g. a source): a horizontal bar per stage, top to bottom, each with its count,
    on a log scale so 1,500 input rows and 3 accepted pairs both stay readable; 0 is written, not drawn."""
    labels = list(funnels) or ["(none)"]
    stages = list(next(iter(funnels.values()), {}))
    fig, axes = _axes((2.9 * len(labels), 0.28 * max(4, len(stages)) + 1.0), len(labels), squeeze=False, sharey=True)
    for ax, label in zip(axes[0], labels):
        values = [funnels.get(label, {}).get(s, 0) for s in stages]
        y = np.arange(len(stages))
        ax.barh(y, [max(v, 0.8) if v else 0 for v in values], color=BLUE)
        ax.set_xscale("log")
        ax.set_xlim(0.8, max([10, *values]) * 4)
        for yi, v in zip(y, values):
            ax.text(max(v, 0.9), yi, f" {v:,}", va="center", fontsize=TICK_SIZE)
        ax.set_yticks(y, stages, fontsize=TICK_SIZE)
        ax.tick_params(axis="x", labelsize=TICK_SIZE)
        ax.set_title(label, fontsize=TITLE_SIZE)
    axes[0][0].invert_yaxis()  # the first stage on top; once, since the panels share the y axis
    fig.suptitle(title, fontsize=SUPTITLE_SIZE)
    return fig, alt


@_markdown
def interval_panels(panels: dict[str, dict[str, tuple[float, float, float]]], title: str, alt: str):
    """One panel per task (each on its own scale): per model a point at its score with its interval as a bar,
    ``panels[task][model] = (value, low, high)``."""
    fig, axes = _axes(
        (3.2 * max(1, len(panels)), 0.5 + 0.35 * max((len(p) for p in panels.values()), default=1)),
        ncols=max(1, len(panels)),
        squeeze=False,
    )
    for ax, (task, models) in zip(axes[0], panels.items()):
        names = list(models)
        y = np.arange(len(names))
        values = np.array([models[n][0] for n in names], dtype=float)
        lows = np.array([models[n][1] for n in names], dtype=float)
        highs = np.array([models[n][2] for n in names], dtype=float)
        ax.errorbar(values, y, xerr=[values - lows, highs - values], fmt="o", color=BLUE, capsize=3)
        ax.set_yticks(y, names, fontsize=TICK_SIZE)
        ax.tick_params(axis="x", labelsize=TICK_SIZE)
        ax.set_title(task, fontsize=LABEL_SIZE)
    fig.suptitle(title, fontsize=SUPTITLE_SIZE)
    return fig, alt
