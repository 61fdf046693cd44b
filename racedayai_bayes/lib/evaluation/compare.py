"""Every model of a distance side by side on the same held-out rows, and the one to publish.

The rule (``publish: auto``, the default):

1. A model is **eligible** when it passed every check at ERROR level and its features are
   known before the race (``asof``): ``seed_profile`` is always fitted and shown, but its
   score includes the leak of the profile file, so it is never published automatically.
2. The eligible model with the highest held-out ELPD is the best.
3. Last week's published model keeps its place unless the best beats it by more than
   :data:`SWITCH_SE` clustered standard errors of their ELPD difference on the same rows:
   a model is not swapped on noise.
4. If no model is eligible, nothing is published and last week's CSV stays.

``publish: <model>`` forces that model (if it passed its checks), so the notebook's exact
behaviour stays one setting away (``publish: seed_profile``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from racedayai_bayes.lib.data.split import GROUPS
from racedayai_bayes.lib.evaluation.judge import Judged
from racedayai_bayes.lib.evaluation.scores import elpd_difference

PUBLISH_CHOICES = ("auto", "seed_profile", "seed_asof", "forecast")
SWITCH_SE = 2.0


@dataclass
class Decision:
    """What was published for one distance, and why."""

    distance: str
    published: str | None
    reason: str
    previous: str | None  # last week's published model (None: nothing published yet)
    table: pd.DataFrame  # one row per model
    differences: pd.DataFrame  # each model against the published one, overall and by group
    publish: str = "auto"
    judged: dict = field(default_factory=dict, repr=False)  # name -> Judged

    @property
    def changed(self) -> bool:
        return self.previous is not None and self.published is not None and self.published != self.previous

    @property
    def chosen(self) -> Judged | None:
        return self.judged.get(self.published) if self.published else None


def _lpd(j: Judged) -> np.ndarray:
    return j.judged.prediction.log_density


def scores_table(judged: dict[str, Judged]) -> pd.DataFrame:
    rows = []
    for name, j in judged.items():
        s = j.judged.scores
        rows.append({
            "model": name, "asof": j.model.asof, "passed": j.passed,
            "failed_checks": ", ".join(j.failed_checks) or "-",
            "judged_on": j.judged.label, "rows": s.rows, "editions": s.editions,
            "elpd": s.elpd, "elpd_se": s.elpd_se,
            "mae_p50_min": s.mae_p50_sec / 60, "mae_pred_min": s.mae_pred_sec / 60, "r2": s.r2,
            "coverage_90": s.coverage_90, "coverage_se": s.coverage_se,
            "decile_coverage_min": float(s.deciles["coverage"].min()) if len(s.deciles) else np.nan,
            "decile_coverage_max": float(s.deciles["coverage"].max()) if len(s.deciles) else np.nan,
        })
    return pd.DataFrame(rows)


def differences(judged: dict[str, Judged], reference: str, groups: dict[str, np.ndarray]) -> pd.DataFrame:
    """ELPD, MAE and coverage of each model minus the reference model's, on the same rows,
    overall and per group (first race vs returning, known vs new course: ``groups``, the
    split's :attr:`~racedayai_bayes.lib.data.split.Split.groups`, a mask over its rows), with
    clustered SEs."""
    ref = judged[reference]
    positions = ref.judged.positions
    clusters = ref.judged.clusters
    masks = {"all": np.ones(len(positions), dtype=bool)} | {g: m[positions] for g, m in groups.items()}
    out = []
    for name, j in judged.items():
        if name == reference or not np.array_equal(j.judged.positions, positions):
            continue
        for group, mask in masks.items():
            if not mask.any():  # e.g. no new course in the held-out season: nothing to compare
                continue
            d, se, n = elpd_difference(_lpd(j), _lpd(ref), clusters, mask)
            obs = ref.judged.observed[mask]
            mae = np.mean(np.abs(j.judged.prediction.p50[mask] - obs)) - np.mean(np.abs(ref.judged.prediction.p50[mask] - obs)) if n else np.nan
            out.append({"model": name, "against": reference, "group": group, "rows": n,
                        "elpd_diff": d, "elpd_diff_se": se, "mae_p50_diff_min": mae / 60})
    return pd.DataFrame(out, columns=["model", "against", "group", "rows", "elpd_diff", "elpd_diff_se", "mae_p50_diff_min"])


def decide(judged: dict[str, Judged], groups: dict[str, np.ndarray], *,
           publish: str = "auto", previous: str | None = None) -> Decision:
    """The rule of the module docstring. ``groups``: the split's row groups
    (:attr:`~racedayai_bayes.lib.data.split.Split.groups`), the differences' breakdown."""
    if publish not in PUBLISH_CHOICES:
        raise ValueError(f"publish must be one of {', '.join(PUBLISH_CHOICES)}, not {publish!r}")
    distance = next(iter(judged.values())).distance
    table = scores_table(judged)
    elpd = {n: j.judged.scores.elpd for n, j in judged.items()}

    def failed(name):
        return f"{name} failed {', '.join(judged[name].failed_checks)}"

    if publish != "auto":
        if publish not in judged:
            chosen, reason = None, f"publish: {publish} was asked for, but it was not fitted"
        elif not judged[publish].passed:
            chosen, reason = None, f"publish: {publish} was asked for, but {failed(publish)}"
        else:
            chosen, reason = publish, f"publish: {publish} was asked for (run config)"
    else:
        eligible = [n for n, j in judged.items() if j.passed and j.model.asof]
        if not eligible:
            why = "; ".join(failed(n) for n, j in judged.items() if not j.passed) or "no model's features are as of the race"
            chosen, reason = None, f"no eligible model ({why}); nothing published"
        else:
            best = max(eligible, key=lambda n: (np.nan_to_num(elpd[n], nan=-np.inf), -list(judged).index(n)))
            chosen = best
            reason = f"{best} has the highest held-out ELPD ({elpd[best]:.4f} per row) of the eligible models ({', '.join(eligible)})"
            if previous in eligible and previous != best:
                d, se, _ = elpd_difference(_lpd(judged[best]), _lpd(judged[previous]), judged[best].judged.clusters)
                if not d > SWITCH_SE * se:
                    chosen = previous
                    reason = (f"{previous} stays published: {best} beats it by {d:.4f} ELPD per row, "
                              f"not more than {SWITCH_SE:g} clustered standard errors ({SWITCH_SE:g} x {se:.4f})")
                else:
                    reason += f"; it beats last week's {previous} by {d:.4f} ELPD per row (> {SWITCH_SE:g} x {se:.4f})"
            if previous is not None and previous != chosen and previous not in eligible and previous in judged:
                reason += f"; last week's {previous} is not eligible ({failed(previous) if not judged[previous].passed else 'its features are not as of the race'})"
            # a model left out for its features says so, even when it scores better: its score has the leak in it
            leaky = [n for n, j in judged.items() if not j.model.asof and not (n == previous and n != chosen)]
            if leaky:
                one = len(leaky) == 1
                better = [n for n in leaky if np.nan_to_num(elpd[n], nan=-np.inf) > elpd[chosen]]
                reason += (f"; {', '.join(leaky)} {'is' if one else 'are'} not eligible: {'its' if one else 'their'} "
                           "features are not as of the race (computed over every race, the predicted one included)"
                           + (f", so {'its' if one else 'their'} higher held-out ELPD is not a forecast's" if better else ""))
    table["published"] = table["model"] == chosen
    diffs = differences(judged, chosen or next(iter(judged)), groups)
    return Decision(distance=distance, published=chosen, reason=reason, previous=previous, table=table,
                    differences=diffs, publish=publish, judged=dict(judged))


def group_names() -> tuple[str, ...]:
    return ("all", *GROUPS)
