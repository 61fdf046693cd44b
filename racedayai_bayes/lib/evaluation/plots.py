"""Diagnostic plots as PNG bytes, small enough to embed in asset metadata as markdown.

Every figure is a bare :class:`matplotlib.figure.Figure` drawn on an Agg canvas: pyplot is
never used, so no global figure state is created or leaked, and nothing needs closing.
Fonts and colours are set per call, never through the global rcParams (the text's
rendering for the drawing only: :func:`png`). The same inputs give
the same bytes (subsampling is seeded, and the PNG carries no software/version stamp).
"""

from __future__ import annotations

import base64
import io

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from racedayai_bayes.lib.evaluation.diagnostics import COVERAGE_RANGE, decile_half_widths, deciles_outside, point_metrics
from racedayai_bayes.lib.inference.draws import Draws

DPI = 90
WIDTH_IN = 9.0
MAX_DRAWN_POINTS = 200_000
SCATTER_MAX_ROWS = 5_000
SUBSAMPLE_SEED = 0


def new_figure(height_in: float) -> Figure:
    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


# Text drawn without FreeType's hinting (grid-fitting each glyph to the pixels): the labels
# and ticks are most of a figure's cost, and unhinted they took about a tenth less time (a
# full-scale 70.3 forecast's and seed model's plots: 1.50-1.57 s against 1.54-1.86 s, 4
# alternated pairs, 2026-12-06), slightly softer but as legible at these sizes. Set for the
# drawing only, not in the global rcParams.
_RENDER = {"text.hinting": "none"}


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    with matplotlib.rc_context(_RENDER):
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def png_markdown(png: bytes, alt: str) -> str:
    """A markdown image with the PNG inlined as a base64 data URI."""
    alt = alt.replace("[", "(").replace("]", ")")
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


# ---------------------------------------------------------------- rank plot of scales


def fixed_margins(fig: Figure, *, left: float, right: float, top: float, bottom: float,
                  hspace: float | None = None, wspace: float | None = None) -> None:
    """Place the axes with margins in inches (the figure's height may vary).

    Instead of ``tight_layout``, which measures every text by drawing it once more: a quarter
    to a third of a plot's cost here (measured 2026-12-04). Each plot sizes its margins for
    its fonts and labels (test_lib_plots checks that no text leaves the image).
    """
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, right=1.0 - right / width, top=1.0 - top / height,
                        bottom=bottom / height, hspace=hspace, wspace=wspace)


def scale_rank_plot(draws: Draws, scale_sites) -> bytes:
    """Rank plots of the model's scale parameters ``scale_sites``, one panel each, one row per chain.

    ArviZ's ``plot_rank`` figure: its ranks over all chains (``compute_ranks``), its bins
    (twice Sturges' count) and its layout (each chain's rank density on its own baseline, a
    dashed line at the chain's mean density). Each chain's histogram is one filled step
    outline instead of one bar per bin: ArviZ's bar patches, one Matplotlib artist per bin
    and chain, were the larger part of this figure's cost (measured 2026-12-04).
    """
    from arviz.plots.plot_utils import compute_ranks

    sites = [s for s in scale_sites if s in draws.samples]
    if not sites:
        raise ValueError(f"no scale parameter among the draws' sites {sorted(draws.samples)}")
    ncols = 2 if len(sites) > 1 else 1
    nrows = -(-len(sites) // ncols)
    fig = new_figure(1.0 + 2.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel()[len(sites):]:
        ax.set_visible(False)
    for i, (ax, site) in enumerate(zip(axes.ravel(), sites)):
        values = np.asarray(draws.samples[site], dtype="float64")
        ranks = compute_ranks(values)  # (chains, draws), over all chains
        bins = int(np.ceil(2 * np.log2(values.shape[1])) + 1)
        edges = np.histogram_bin_edges(ranks, bins=bins, range=(0, ranks.size))
        gap = 2.0 / ranks.size  # twice a uniform chain's density: each chain its own row
        for chain, row in enumerate(ranks):
            counts, _ = np.histogram(row, bins=edges)
            density = counts / (counts.sum() * np.diff(edges))
            base = chain * gap
            ax.stairs(base + density, edges, baseline=base, fill=True, color=f"C{chain}")
            ax.axhline(base + density.mean(), color="k", linestyle="--", linewidth=1.0)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_yticks(np.arange(len(ranks)) * gap, [str(c) for c in range(len(ranks))])
        ax.set_ylabel("Chain", fontsize=9)
        ax.set_title(site, fontsize=11)
        ax.tick_params(labelsize=8)
        if i >= len(sites) - ncols:  # the bottom panel of each column
            ax.set_xlabel("Rank (all chains)", fontsize=9)
    fig.suptitle(
        f"Rank plots of the scale parameters ({draws.num_chains} chains x {draws.num_draws} draws): "
        "uniform ranks = chains agree",
        fontsize=11,
    )
    fixed_margins(fig, left=0.6, right=0.2, top=0.75, bottom=0.55, hspace=0.45, wspace=0.2)
    return png(fig)


# ---------------------------------------------------------------- predicted vs observed


def _paired(observed, predicted) -> tuple[np.ndarray, np.ndarray]:
    obs = np.asarray(observed, dtype="float64").ravel()
    pred = np.asarray(predicted, dtype="float64").ravel()
    if obs.shape != pred.shape:
        raise ValueError(f"observed has {obs.size} rows, predicted {pred.size}")
    if obs.size == 0:
        raise ValueError("no rows to compare")
    return obs, pred


def fit_stats(observed, predicted) -> dict[str, float]:
    """MAE (seconds and minutes) and R² of predictions over every row, plus the row count:
    the seed's metrics (:func:`racedayai_bayes.lib.evaluation.diagnostics.point_metrics`)."""
    obs, pred = _paired(observed, predicted)
    stats = point_metrics(obs, pred)
    return {**stats, "mae_min": stats["mae_sec"] / 60.0, "rows": int(obs.size)}


def predicted_vs_observed(observed_sec, predicted_sec, label: str = "held-out rows") -> bytes:
    """Predicted against observed finish time in hours, with MAE and R² over all rows.

    Up to 5,000 rows are drawn as points; more as a hexbin density of a seeded random
    sample of at most 200,000 rows (the statistics still use every row).
    """
    obs, pred = _paired(observed_sec, predicted_sec)
    stats = fit_stats(obs, pred)
    n = obs.size
    drawn = n
    if n > MAX_DRAWN_POINTS:
        keep = np.sort(np.random.default_rng(SUBSAMPLE_SEED).choice(n, MAX_DRAWN_POINTS, replace=False))
        obs, pred = obs[keep], pred[keep]
        drawn = MAX_DRAWN_POINTS
    x, y = obs / 3600.0, pred / 3600.0
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = 0.03 * (hi - lo) if hi > lo else 0.5
    lo, hi = lo - pad, hi + pad

    fig = new_figure(7.5)
    ax = fig.add_subplot()
    if n <= SCATTER_MAX_ROWS:
        ax.scatter(x, y, s=8, alpha=0.35 if n > 500 else 0.7, color="C0", edgecolors="none")
    else:
        hb = ax.hexbin(x, y, gridsize=70, bins="log", mincnt=1, cmap="viridis", extent=(lo, hi, lo, hi), linewidths=0.2)
        cbar = fig.colorbar(hb, ax=ax, shrink=0.85, pad=0.02)
        sample_note = f" (of a {drawn:,}-row sample)" if drawn < n else ""
        cbar.set_label(f"rows per cell{sample_note}, log scale", fontsize=9)
        cbar.ax.tick_params(labelsize=8)
    ax.plot([lo, hi], [lo, hi], color="C3", lw=1.2, ls="--", label="y = x (perfect prediction)")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_axisbelow(True)
    ax.grid(color="0.9")
    ax.set_xlabel("observed finish time (h)", fontsize=10)
    ax.set_ylabel("predicted finish time (h, posterior mean)", fontsize=10)
    ax.tick_params(labelsize=9)
    ax.set_title(f"Predicted vs observed: {label}, {n:,} rows", fontsize=11)
    ax.legend(loc="lower right", fontsize=9)
    ax.text(
        0.03, 0.97, f"MAE {stats['mae_min']:.1f} min\nR² {stats['r2']:.3f}\nover all {n:,} rows",
        transform=ax.transAxes, va="top", ha="left", fontsize=10,
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.9},
    )
    fixed_margins(fig, left=0.8, right=0.3, top=0.45, bottom=0.6)
    return png(fig)


# ---------------------------------------------------------------- coverage by decile


def coverage_by_decile(observed_sec, p05, p95, predicted_sec=None) -> pd.DataFrame:
    """Share of rows inside, below and above their 90% interval, per decile of finish time.

    Pass ``predicted_sec`` to bin by the prediction, which is how calibration should be
    read: binning by the *observed* time selects on the outcome, so even a perfectly
    calibrated model shows under-coverage in the extreme deciles (rows are extreme largely
    because their noise was). Without it, rows are binned by the observed time.

    Deciles come from ``pd.qcut``; tied edges are dropped, so heavily tied data can give
    fewer than 10 bins (numbered 1..k from fastest to slowest). ``lower_h``/``upper_h`` are
    the bin edges in hours; a row lies in (lower, upper], and the first bin includes its
    lower edge. ``table.attrs["binned_by"]`` says which time was binned.
    """
    obs = np.asarray(observed_sec, dtype="float64").ravel()
    lo = np.asarray(p05, dtype="float64").ravel()
    hi = np.asarray(p95, dtype="float64").ravel()
    key = obs if predicted_sec is None else np.asarray(predicted_sec, dtype="float64").ravel()
    if not (obs.shape == lo.shape == hi.shape == key.shape):
        raise ValueError(f"observed, p05, p95 and the binned times have {obs.size}, {lo.size}, {hi.size} and {key.size} rows")
    if obs.size == 0:
        raise ValueError("no rows to evaluate")
    codes, edges = pd.qcut(key, 10, labels=False, retbins=True, duplicates="drop")
    frame = pd.DataFrame(
        {"bin": codes, "inside": (lo <= obs) & (obs <= hi), "below": obs < lo, "above": obs > hi}
    )
    grouped = frame.groupby("bin", sort=True)
    bins = np.arange(len(edges) - 1)
    counts = grouped.size().reindex(bins, fill_value=0)
    shares = grouped[["inside", "below", "above"]].mean().reindex(bins)
    table = pd.DataFrame(
        {
            "decile": bins + 1,
            "lower_h": edges[:-1] / 3600.0,
            "upper_h": edges[1:] / 3600.0,
            "rows": counts.to_numpy().astype("int64"),
            "coverage": shares["inside"].to_numpy(),
            "below": shares["below"].to_numpy(),
            "above": shares["above"].to_numpy(),
        }
    )
    table.attrs["binned_by"] = "observed" if predicted_sec is None else "predicted"
    return table


def _hm(hours: float) -> str:
    """Hours as h:mm (5.92 -> '5:55')."""
    minutes = int(round(float(hours) * 60))
    return f"{minutes // 60}:{minutes % 60:02d}"


def coverage_by_decile_plot(table: pd.DataFrame, nominal: float = 0.9) -> bytes:
    """Bars of 90%-interval coverage per decile of finish time, against the accepted band.

    With the table's clustered standard errors (column ``se``, lib/evaluation/scores.py), each
    bar carries its 99% interval and is coloured by the ``coverage_by_decile`` check's own rule:
    outside the range only when that interval misses it (sampling noise allowed for), so the
    plot and the check agree. Without them, by the bare range."""
    binned_by = table.attrs.get("binned_by", "observed")
    lo_ok, hi_ok = COVERAGE_RANGE
    x = np.arange(len(table))
    cov = table["coverage"].to_numpy(dtype="float64")
    has_se = "se" in table and len(table)
    half = decile_half_widths(table)  # the check's own allowance
    ok = ~deciles_outside(table)  # the check's own rule: an empty decile (NaN) passes
    fig = new_figure(5.4)
    ax = fig.add_subplot()
    ax.axhspan(lo_ok, hi_ok, color="C2", alpha=0.15, label=f"accepted range [{lo_ok:g}, {hi_ok:g}]")
    ax.bar(x, cov, width=0.7, color=np.where(ok, "C0", "C3"), zorder=2)
    if has_se:
        # a share stays within 0..1: the interval is cut there (and stays below the annotations)
        ax.errorbar(x, cov, yerr=[np.minimum(half, cov), np.minimum(half, 1.0 - cov)], fmt="none", ecolor="k",
                    elinewidth=1.0, capsize=3, zorder=3, label="99% interval (clustered by edition)")
    ax.axhline(nominal, color="k", lw=1.2, ls="--", label=f"nominal {nominal:.0%}", zorder=3)
    # annotations sit in a row above 100%, so they never collide with bars or lines
    for xi, row in zip(x, table.itertuples()):
        ax.text(
            xi, 1.01, f"{row.coverage:.1%}\n↓{row.below:.0%} ↑{row.above:.0%}",
            ha="center", va="bottom", fontsize=7, zorder=4,
        )
    ax.set_xticks(
        x,
        [f"{d}\n{_hm(a)}–{_hm(b)}\n{n:,}" for d, a, b, n in zip(table["decile"], table["lower_h"], table["upper_h"], table["rows"])],
        fontsize=7.5,
    )
    bottom = min(0.5, float(np.nanmin(cov)) - 0.05) if len(cov) else 0.5
    ax.set_ylim(max(bottom, 0.0), 1.0 + 0.1 * (1.0 - max(bottom, 0.0)) + 0.03)
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel(f"decile of {binned_by} finish time (number, h:mm, rows); "
                  "↓ / ↑ = share below / above the interval", fontsize=9)
    ax.set_ylabel("share inside the 90% interval", fontsize=9)
    ax.set_title(
        f"Predictive interval coverage by {binned_by} finish time ({int(table['rows'].sum()):,} rows)",
        fontsize=11,
    )
    handles, _labels = ax.get_legend_handles_labels()
    handles += [
        Patch(color="C0", label="decile consistent with the range" if has_se else "decile inside the range"),
        Patch(color="C3", label="decile outside it beyond sampling noise" if has_se else "decile outside the range"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8, frameon=False)
    fixed_margins(fig, left=0.75, right=0.2, top=0.45, bottom=1.6)  # three-line ticks, the axis label and the legend below
    return png(fig)


# ---------------------------------------------------------------- level effects (caterpillar)


MAX_NAMED_LEVELS = 160  # more levels than this: every k-th is named, so that names never overlap


def effect_caterpillar(draws: np.ndarray, labels, to_minutes, title: str, level_name: str = "level") -> bytes:
    """Posterior mean and 90% interval of many level effects, in minutes: one row per level,
    fastest at the top, each named on the axis (up to :data:`MAX_NAMED_LEVELS` levels; beyond
    that every k-th). The figure grows with the number of levels, so that no name overlaps
    another and none leaves the image.

    ``draws`` (S, levels) on the model's scale; ``to_minutes`` maps them to minutes.
    """
    minutes = to_minutes(np.asarray(draws))
    mean = minutes.mean(axis=0)
    lo, hi = np.percentile(minutes, [5, 95], axis=0)
    order = np.argsort(mean)
    n = len(order)
    row_in = 0.13
    fig = new_figure(1.3 + row_in * max(n, 8))
    ax = fig.subplots()
    y = np.arange(n)
    ax.hlines(y, lo[order], hi[order], color="#9ab", linewidth=1.2)
    ax.plot(mean[order], y, "o", color="#1f4e79", markersize=3)
    ax.axvline(0, color="grey", linewidth=0.8)
    step = int(np.ceil(n / MAX_NAMED_LEVELS)) if n else 1
    named = y[::step]
    names = [str(v)[:36] for v in np.asarray(labels, dtype=object)[order][::step]]
    ax.set_yticks(named, names, fontsize=6.5)
    ax.set_ylim(n - 0.5, -0.5)  # fastest at the top
    ax.set_xlabel("effect (minutes at the mean finish time; dot: mean, line: 90% interval)", fontsize=9)
    ordinal = {2: "second", 3: "third"}.get(step, f"{step}th")
    named_all = "each named" if step == 1 else f"every {ordinal} named"
    ax.set_title(f"{title}\n{n} {level_name}s, fastest at the top ({named_all})", fontsize=10)
    ax.set_ylabel(f"{level_name}, fastest at the top", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", color="#eee", linewidth=0.6)
    ax.set_axisbelow(True)
    fixed_margins(fig, left=2.45, right=0.25, top=0.6, bottom=0.55)
    return png(fig)


# ---------------------------------------------------------------- model comparison


def elpd_difference_plot(differences: pd.DataFrame, z: float = 2.0, not_eligible=()) -> bytes:
    """ELPD difference per row of each model against the published one, by group, with
    +-``z`` clustered standard errors: right of 0 the model forecasts better. Models in
    ``not_eligible`` (features not as of the race) are marked so in the legend: their
    score has the leak in it."""
    groups = list(dict.fromkeys(differences["group"]))
    models = list(dict.fromkeys(differences["model"]))
    fig = new_figure(1.2 + 0.45 * len(groups) * max(len(models), 1))
    ax = fig.add_subplot()
    y, ticks, labels = 0.0, [], []
    for g in groups:
        for i, m in enumerate(models):
            row = differences[(differences["group"] == g) & (differences["model"] == m)]
            if row.empty:
                continue
            d, se = float(row["elpd_diff"].iloc[0]), float(row["elpd_diff_se"].iloc[0])
            err = z * se if np.isfinite(se) else 0.0
            name = f"{m} (not eligible: features not as of the race)" if m in not_eligible else m
            ax.errorbar(d, y, xerr=err, fmt="o", color=f"C{i}", capsize=3, label=name if g == groups[0] else None)
            ticks.append(y)
            labels.append(f"{g}: {m} ({int(row['rows'].iloc[0]):,})")
            y -= 1.0
        y -= 0.5
    ax.axvline(0.0, color="k", lw=1)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlabel(f"ELPD difference per row against {differences['against'].iloc[0]} (± {z:g} clustered SE)", fontsize=9)
    ax.set_title("Held-out log predictive density, each model minus the published one", fontsize=11)
    ax.legend(fontsize=8, loc="best")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return png(fig)


# ---------------------------------------------------------------- a race's field


def field_forecast_plot(table: pd.DataFrame, title: str) -> bytes:
    """The field's forecasts: a histogram of the median forecasts (hours), split by whether the
    athlete has history, with the typical 90% interval drawn beside it."""
    p50 = table["bayes_p50"].to_numpy(dtype=float) / 3600
    width = (table["bayes_p95"].to_numpy(dtype=float) - table["bayes_p05"].to_numpy(dtype=float)) / 3600
    known = table["history_races"].to_numpy() > 0
    fig = new_figure(3.8)
    ax = fig.add_subplot()
    bins = np.linspace(np.floor(p50.min() * 4) / 4, np.ceil(p50.max() * 4) / 4 + 0.25, 30)
    ax.hist([p50[known], p50[~known]], bins=bins, stacked=True, color=["C0", "C1"],
            label=[f"with earlier races ({known.sum():,})", f"first race ({(~known).sum():,})"])
    med = float(np.median(p50))
    half = float(np.median(width)) / 2
    top = ax.get_ylim()[1]
    # headroom above the bars: the interval's bar at the top, the legend beneath the title
    ax.set_ylim(0, top * 1.45)
    ax.errorbar([med], [top * 1.08], xerr=[[half], [half]], fmt="o", color="k", capsize=4,
                label=f"median forecast, typical 90% interval ({2 * half * 60:.0f} min)")
    ax.set_xlim(min(bins[0], med - half) - 0.1, max(bins[-1], med + half) + 0.1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # athletes are counted in whole numbers
    ax.set_xlabel("forecast finish time (median, hours)", fontsize=9)
    ax.set_ylabel("athletes", fontsize=9)
    ax.set_title(f"Forecasts of the field: {title} ({len(p50):,} athletes)", fontsize=11)
    ax.legend(fontsize=8, loc="upper right", ncol=3, frameon=False)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    return png(fig)
