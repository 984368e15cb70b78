"""Small matplotlib figures rendered to PNG data URIs, for Markdown metadata in the UI."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # headless: no display on workers
import matplotlib.pyplot as plt  # noqa: E402


def figure_to_markdown(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode('ascii')})"


def histogram_grid(series_by_label: dict[str, list[float]], bins: list[float], title: str, xlabel: str) -> str:
    """One small bar histogram per label, side by side, as Markdown."""
    labels = list(series_by_label) or ["(none)"]
    fig, axes = plt.subplots(1, len(labels), figsize=(3.2 * len(labels), 2.6), squeeze=False, sharey=False)
    for ax, label in zip(axes[0], labels):
        ax.hist(series_by_label.get(label, []), bins=bins, color="#4f6bed", edgecolor="white")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    return figure_to_markdown(fig, title)


def curve_plot(series: dict[str, list], title: str, ylabel: str) -> str:
    """Lines of (step, value) points per series (loss, reward curves), as Markdown."""
    fig, ax = plt.subplots(figsize=(5, 2.6))
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", ms=2, label=name)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return figure_to_markdown(fig, title)
