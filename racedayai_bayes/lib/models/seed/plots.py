"""The seed model's own plot: a forest of its gender, age-group and cluster effects."""

from __future__ import annotations

import numpy as np
import pandas as pd

from racedayai_bayes.lib.evaluation.plots import fixed_margins, new_figure, png
from racedayai_bayes.lib.inference.draws import Draws
from racedayai_bayes.lib.models.seed.encoding import NO_CLUSTER, Encoding

GENDER_NAMES = {"M": "Male", "F": "Female"}
SECTIONS = ("gender", "age group", "cluster")


def _cluster_label(cluster_id: int) -> str:
    return "no cluster" if int(cluster_id) == NO_CLUSTER else f"cluster {int(cluster_id)}"


def level_labels(enc: Encoding) -> dict[str, list[str]]:
    """The name of every level of each group-effect site, in index order: gender (Male, Female),
    age group, cluster ('no cluster' for -1). One naming for the plots and the summary."""
    index_to_gender = {i: g for g, i in enc.gender_map.items()}
    return {
        "mu_gender": [GENDER_NAMES.get(index_to_gender.get(i, ""), f"gender {i}") for i in range(enc.n_gender)],
        "mu_age": list(enc.age_levels),
        "mu_cluster": [_cluster_label(c) for c in enc.cluster_levels],
    }


def group_effect_table(draws: Draws, enc: Encoding) -> pd.DataFrame:
    """Posterior mean and 90% interval (5%-95%) of every group effect, in seconds.

    The model works on the standardised finish time, so an effect in seconds is the effect
    times ``enc.y_std`` (the mean cancels: effects are differences). Rows come in the order
    gender (by index), age group (``enc.age_levels``), cluster (``enc.cluster_levels``).
    """
    labels = level_labels(enc)
    rows = []
    for section, (site, names) in zip(SECTIONS, labels.items()):
        flat = draws.flat(site) * enc.y_std
        if flat.ndim != 2 or flat.shape[1] != len(names):
            raise ValueError(
                f"{site} has shape {draws.samples[site].shape[2:]} per draw; "
                f"the encoding has {len(names)} {section} levels"
            )
        p05, p95 = np.percentile(flat, [5, 95], axis=0)
        mean = flat.mean(axis=0)
        rows += [
            {"section": section, "label": name, "mean_sec": float(m), "p05_sec": float(lo), "p95_sec": float(hi)}
            for name, m, lo, hi in zip(names, mean, p05, p95)
        ]
    return pd.DataFrame(rows, columns=["section", "label", "mean_sec", "p05_sec", "p95_sec"])


def group_effect_forest(draws: Draws, enc: Encoding) -> bytes:
    """Forest plot of the group effects in seconds: mean and 90% interval per group."""
    table = group_effect_table(draws, enc)
    # y positions top to bottom, with a header row and a gap before each section
    positions, headers, y = [], [], 0.0
    for section in SECTIONS:
        count = int((table["section"] == section).sum())
        headers.append((y, section, count))
        positions += list(np.arange(y + 1.0, y + 1.0 + count))
        y += 1.0 + count + 0.6
    pos = np.asarray(positions)
    n_lines = y
    fig = new_figure(min(1.2 + 0.22 * n_lines, 40.0))
    ax = fig.add_subplot()
    colors = {"gender": "C0", "age group": "C1", "cluster": "C2"}
    for section in SECTIONS:
        sel = (table["section"] == section).to_numpy()
        sub = table[sel]
        ax.errorbar(
            sub["mean_sec"], pos[sel],
            xerr=[sub["mean_sec"] - sub["p05_sec"], sub["p95_sec"] - sub["mean_sec"]],
            fmt="o", ms=4, lw=1.6, capsize=2, color=colors[section],
        )
    ax.axvline(0.0, color="0.3", lw=1, ls="--")
    ax.set_yticks(pos, table["label"], fontsize=8)
    for y_head, section, count in headers:
        ax.text(
            -0.01, y_head, f"{section} ({count})", transform=ax.get_yaxis_transform(),
            ha="right", va="center", fontsize=9, fontweight="bold",
        )
        ax.axhline(y_head - 0.5, color="0.85", lw=0.8)
    ax.set_ylim(n_lines - 0.2, -0.8)
    ax.grid(axis="x", color="0.9")
    ax.set_xlabel("effect on finish time (s); dot = posterior mean, bar = 90% interval", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    minutes = ax.secondary_xaxis("top", functions=(lambda sec: sec / 60.0, lambda mins: mins * 60.0))
    minutes.set_xlabel("effect (min)", fontsize=8)
    minutes.tick_params(labelsize=8)
    ax.set_title(
        f"Group effects, distance {enc.distance}, relative to the global intercept "
        f"(finish-time sd {enc.y_std / 60:.0f} min)",
        fontsize=10,
    )
    # the group labels (an open vocabulary) and the bold section names at the left: as wide as
    # the widest of them; the minutes axis and the title on top
    fixed_margins(fig, left=_label_margin(fig, table["label"], [f"{s} ({n})" for _, s, n in headers]),
                  right=0.4, top=0.95, bottom=0.55)
    return png(fig)


def _label_margin(fig, labels, headers) -> float:
    """The left margin (inches) that holds the widest tick label (8 pt) and section name (9 pt
    bold), measured by the figure's renderer: at least the 1.45 in that the standard labels need."""
    from matplotlib.font_manager import FontProperties

    renderer = fig.canvas.get_renderer()

    def width(text: str, props: FontProperties) -> float:
        return renderer.get_text_width_height_descent(str(text), props, ismath=False)[0] / fig.dpi

    tick, bold = FontProperties(size=8), FontProperties(size=9, weight="bold")
    widest = max([width(t, tick) + 0.15 for t in labels] + [width(t, bold) + 0.1 for t in headers], default=0.0)
    return max(1.45, widest + 0.1)
