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
