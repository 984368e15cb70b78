"""Every figure of lib/plots.py renders to a Markdown image, and its titles and labels do not overlap."""

import base64
import itertools

import numpy as np
import pandas as pd
import pytest

from lm_mixup_assets.lib import plots

LONG = "a rather long figure title that names the source, the arm and the smoke level"

# (plot function, arguments): every figure the assets draw, with long titles to crowd them.
FIGURES = {
    "histogram_grid": (
        plots.histogram_grid,
        ({"humaneval": [3, 5, 8], "chatterbot": [1, 9]}, [x + 0.5 for x in range(11)], LONG, "Overall (1-10)"),
    ),
    "histogram_grid_one": (
        plots.histogram_grid,
        ({"one source": [3, 5, 8]}, [x + 0.5 for x in range(11)], LONG, "Overall"),
    ),
    "histogram_grid_threshold": (
        plots.histogram_grid,
        ({"humaneval": [3, 5, 8], "chatterbot": [1, 9]}, [x + 0.5 for x in range(11)], LONG, "Overall (1-10)"),
        {"threshold": 8, "threshold_label": "high from"},
    ),
    "funnel_panels": (
        plots.funnel_panels,
        (
            {
                "chatterbot": {"input": 1500, "rejected": 0, "high": 31, "accepted": 2},
                "humaneval": {"input": 164, "rejected": 3, "high": 160, "accepted": 0},
            },
            LONG,
            "funnel per source",
        ),
    ),
    "curve_plot": (plots.curve_plot, ({"loss": [(1, 2.0), (2, 1.5)], "eval": [(1, 2.2), (2, 1.9)]}, LONG, "loss")),
    "sizes_and_similarities": (plots.sizes_and_similarities, ([2, 3, 3, 5], [0.2, 0.9, 0.7, 0.5], LONG, "clusters x")),
    "labelled_bars": (
        plots.labelled_bars,
        ({"low_rows": 10, "cluster_inputs": 4, "accepted": 2}, LONG, "rescue yield x"),
    ),
    "grouped_bars": (
        plots.grouped_bars,
        (
            {"arm_a": [0.2, 0.4, 0.3], "arm_b": [0.5, 0.1, 0.3], "base": [0.1, 0.1, 0.1]},
            ["task_1", "task_2", "average"],
            LONG,
            "scores",
        ),
        {"ylim": (0, 1), "figsize": (7, 3), "legend_columns": 2, "legend_fontsize": 6},
    ),
    "histogram": (plots.histogram, ([2, 3, 3, 4, 20], np.arange(1.5, 21.5), LONG, "variants per example")),
    "overlaid_histograms": (
        plots.overlaid_histograms,
        (
            {"original": [0.1, 0.2, 0.4], "distilled": [0.3, 0.5]},
            30,
            LONG,
            "mean cosine distance to k nearest neighbours",
            "long-tail",
        ),
    ),
    "stacked_barh": (
        plots.stacked_barh,
        (
            pd.DataFrame({"original": [3, 1], "distilled": [1, 2]}, index=["src_a", "src_b"]),
            {"original": plots.BLUE, "distilled": plots.ORANGE},
            LONG,
            "origin mix",
        ),
    ),
}


def _texts(fig) -> list[tuple[str, object]]:
    """(name, text artist) of every title, axis label and tick label that shows."""
    found = []
    if fig._suptitle is not None and fig._suptitle.get_text():
        found.append(("suptitle", fig._suptitle))
    for i, ax in enumerate(fig.axes):
        for name, text in (("title", ax.title), ("xlabel", ax.xaxis.label), ("ylabel", ax.yaxis.label)):
            if text.get_text():
                found.append((f"ax{i}.{name}", text))
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            # Ticks outside the view limits keep a label but are not drawn.
            shown = [
                t
                for loc, t in zip(axis.get_ticklocs(), axis.get_ticklabels())
                if min(lo, hi) <= loc <= max(lo, hi) and t.get_text()
            ]
            found += [(f"ax{i}.tick", t) for t in shown]
    return found


@pytest.mark.parametrize("name", FIGURES)
def test_plot_renders_markdown_with_titles_apart(name):
    fn, args, *kw = FIGURES[name]
    kwargs = kw[0] if kw else {}
    md = fn(*args, **kwargs)
    alt = (
        args[-1]
        if name not in ("histogram_grid", "histogram_grid_one", "histogram_grid_threshold", "curve_plot")
        else LONG
    )
    prefix = f"![{alt}](data:image/png;base64,"
    assert md.startswith(prefix) and md.endswith(")")
    assert base64.b64decode(md[len(prefix) : -1])[:8] == b"\x89PNG\r\n\x1a\n"

    fig, _ = fn.__wrapped__(*args, **kwargs)  # the same drawing, as a figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(n, t.get_window_extent(renderer)) for n, t in _texts(fig)]
    titles = [(n, b) for n, b in boxes if n == "suptitle" or n.endswith(".title")]
    assert titles, "every figure has a title"
    for (n1, b1), (n2, b2) in itertools.combinations(boxes, 2):
        if (n1, b1) in titles or (n2, b2) in titles:
            assert not b1.overlaps(b2), f"{name}: {n1} overlaps {n2}"
    plots.plt.close(fig)
