"""Plain-text renderings of posterior results for metadata (markdown tables)."""

from __future__ import annotations

import pandas as pd


def markdown_table(frame: pd.DataFrame, floatfmt: str = "{:.4g}", index: bool = True) -> str:
    frame = frame.reset_index() if index else frame
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = [
        "| " + " | ".join(floatfmt.format(v) if isinstance(v, float) else str(v) for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([head, rule, *rows])


def analysis_markdown(analysis: dict) -> str:
    """The seed's section 4 as markdown: gender effects (seconds) and coefficients, 95% intervals."""
    gender = pd.DataFrame(analysis["gender_effect_sec"]).T
    coefs = pd.DataFrame(analysis["coefficients"]).T
    return (
        "**Gender effects (seconds)**\n\n"
        + markdown_table(gender.rename_axis("gender"), "{:.0f}")
        + "\n\n**Coefficients**\n\n"
        + markdown_table(coefs.rename_axis("parameter"), "{:.4f}")
    )


def evaluation_markdown(post) -> str:
    """The seed's in-sample metrics beside the held-out ones, as a markdown table."""
    columns = {"in-sample (the notebook's)": post.in_sample}
    if post.holdout is not None:
        columns["held-out"] = post.holdout
    rows = {
        "MAE (min)": lambda m: f"{m['mae_sec'] / 60:.2f}",
        "R²": lambda m: f"{m['r2']:.4f}",
        "90% interval coverage": lambda m: f"{m['coverage_90']:.3f}",
        "mean predictive sd (min)": lambda m: f"{m['mean_pred_sd_sec'] / 60:.2f}",
        "rows evaluated": lambda m: f"{m['rows']:,}",
    }
    table = pd.DataFrame(
        {label: [fmt(ev.metrics) for fmt in rows.values()] for label, ev in columns.items() if ev is not None},
        index=pd.Index(list(rows), name="metric"),
    )
    split = post.split or {}
    caption = f"Holdout: {split.get('description', 'none')} ({split.get('rows_held_out', 0):,} rows held out)."
    return markdown_table(table) + "\n\n" + caption


def posterior_plots(post) -> dict[str, str]:
    """The diagnostic plots of a posterior as markdown images, keyed by metadata name."""
    from . import plots

    judged = post.judged
    label = f"{judged.label} rows"
    table = plots.coverage_by_decile(judged.observed, judged.p05, judged.p95, predicted_sec=judged.mean)
    images = {
        "plot_scale_ranks": (plots.scale_rank_plot(post.draws), f"rank plots of the scale parameters, {post.distance}"),
        "plot_group_effects": (plots.group_effect_forest(post.draws, post.encoding), f"group effects in seconds, {post.distance}"),
        "plot_predicted_vs_observed": (plots.predicted_vs_observed(judged.observed, judged.mean, label=label), f"predicted vs observed, {label}"),
        "plot_coverage_by_decile": (plots.coverage_by_decile_plot(table), f"90% interval coverage by decile of predicted finish time, {label}"),
    }
    return {name: plots.png_markdown(png, alt) for name, (png, alt) in images.items()}
