"""Plain-text and image renderings of judged posteriors and comparisons, for asset metadata."""

from __future__ import annotations

import numpy as np
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


def _fmt_pm(value: float, se: float, digits: int = 3) -> str:
    return f"{value:.{digits}f} ± {se:.{digits}f}" if np.isfinite(se) else f"{value:.{digits}f}"


def evaluation_markdown(judged) -> str:
    """In-sample (the notebook's rows) beside held-out scores, as a markdown table."""
    columns = {"in-sample (the notebook's)": judged.in_sample}
    if judged.holdout is not None:
        columns["held-out"] = judged.holdout
    rows = {
        "MAE of bayes_p50 (min)": lambda s: f"{s.mae_p50_sec / 60:.2f}",
        "MAE of bayes_pred (min)": lambda s: f"{s.mae_pred_sec / 60:.2f}",
        "R²": lambda s: f"{s.r2:.4f}",
        "90% interval coverage (± SE)": lambda s: _fmt_pm(s.coverage_90, s.coverage_se),
        "ELPD per row (± SE)": lambda s: _fmt_pm(s.elpd, s.elpd_se, 4),
        "rows / editions": lambda s: f"{s.rows:,} / {s.editions:,}",
    }
    table = pd.DataFrame(
        {label: [fmt(ev.scores) for fmt in rows.values()] for label, ev in columns.items()},
        index=pd.Index(list(rows), name="metric"),
    )
    split = judged.split or {}
    caption = (f"Holdout: {split.get('description', 'none')} ({split.get('rows_held_out', 0):,} rows held out). "
               "Standard errors are clustered by edition (rows of one race day are not independent).")
    return markdown_table(table) + "\n\n" + caption


def judged_plots(judged) -> dict[str, str]:
    """The model's own plots and the harness's predictive plots, as markdown images."""
    from racedayai_bayes.lib.evaluation import plots

    ev = judged.judged
    label = f"{ev.label} rows"
    images = dict(judged.model.plots())
    images["plot_predicted_vs_observed"] = (
        plots.predicted_vs_observed(ev.observed, ev.prediction.pred, label=label), f"predicted vs observed, {label}")
    if len(ev.scores.deciles):
        images["plot_coverage_by_decile"] = (
            plots.coverage_by_decile_plot(ev.scores.deciles),
            f"90% interval coverage by decile of predicted finish time, {label}")
    return {name: plots.png_markdown(png, alt) for name, (png, alt) in images.items()}


def comparison_markdown(decision) -> str:
    """Every model's held-out scores side by side, and which one was published, and why."""
    t = decision.table.copy()
    shown = pd.DataFrame({
        "model": t["model"],
        "published": np.where(t["published"], "**yes**", ""),
        "as of the race": np.where(t["asof"], "yes", "no (leaks the outcome)"),
        "checks": np.where(t["passed"], "pass", "FAIL: " + t["failed_checks"]),
        "ELPD per row": [_fmt_pm(e, s, 4) for e, s in zip(t["elpd"], t["elpd_se"])],
        "MAE p50 (min)": t["mae_p50_min"].map("{:.2f}".format),
        "MAE pred (min)": t["mae_pred_min"].map("{:.2f}".format),
        "R²": t["r2"].map("{:.3f}".format),
        "90% coverage": [_fmt_pm(c, s) for c, s in zip(t["coverage_90"], t["coverage_se"])],
        "decile coverage": [f"{a:.3f}–{b:.3f}" for a, b in zip(t["decile_coverage_min"], t["decile_coverage_max"])],
    })
    rows = int(t["rows"].iloc[0]) if len(t) else 0
    editions = int(t["editions"].iloc[0]) if len(t) else 0
    return (markdown_table(shown, index=False) + f"\n\nJudged on {rows:,} {t['judged_on'].iloc[0] if len(t) else ''} rows "
            f"in {editions:,} editions; ± is one standard error clustered by edition.\n\n**Published:** "
            f"{decision.published or 'nothing'}. {decision.reason}.")


def differences_markdown(decision) -> str:
    """ELPD and MAE differences against the published model, overall and by group, with SEs."""
    d = decision.differences
    if d.empty:
        return "no other model to compare with"
    shown = pd.DataFrame({
        "model": d["model"], "against": d["against"], "group": d["group"], "rows": d["rows"].map("{:,}".format),
        "ELPD difference per row": [_fmt_pm(e, s, 4) for e, s in zip(d["elpd_diff"], d["elpd_diff_se"])],
        "in SEs": [f"{e / s:+.1f}" if np.isfinite(s) and s > 0 else "-" for e, s in zip(d["elpd_diff"], d["elpd_diff_se"])],
        "MAE p50 difference (min)": d["mae_p50_diff_min"].map("{:+.2f}".format),
    })
    return markdown_table(shown, index=False) + "\n\nPositive ELPD differences favour the model over the one it is compared against."
