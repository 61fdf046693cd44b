"""Held-out rows: the races a posterior is judged on and never fitted to.

Two rules, chosen per refit:

- ``latest_year`` (the default): every race of the latest event year present. This is the
  question people ask of the model each week: how well does last season's fit predict the
  new season?
- ``random_athletes``: every race of a random share of athletes (10% by default). Rows
  without an athlete_hash cannot be grouped by athlete, so each is its own athlete.

``none`` fits every row and judges the posterior in-sample only, as the seed does.

The profile columns (pb_total_sec, total_races) are computed upstream over all of an
athlete's races, held-out ones included (see the data contract): that leak is in the inputs,
not in the split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .encoding import FitError

HOLDOUT_RULES = ("latest_year", "random_athletes", "none")
DEFAULT_HOLDOUT_SHARE = 0.1


@dataclass(frozen=True)
class Split:
    """Fitted and held-out rows of one distance, and how they were chosen."""

    train: pd.DataFrame
    holdout: pd.DataFrame
    rule: str
    description: str
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {
            "rule": self.rule,
            "description": self.description,
            "rows_to_fit": len(self.train),  # the rowwise engine fits a subsample of these
            "rows_held_out": len(self.holdout),
        }


def split_holdout(
    rows: pd.DataFrame, rule: str = "latest_year", share: float = DEFAULT_HOLDOUT_SHARE, seed: int = 0
) -> Split:
    """Split one distance's model-frame rows into fitted and held-out rows by ``rule``.

    When the rule leaves nothing to fit (one event year only) or nothing to hold out, the
    split falls back to fitting every row and says so in ``notes``; the caller judges the
    posterior in-sample then.
    """
    if rule not in HOLDOUT_RULES:
        raise FitError(f"unknown holdout rule {rule!r}; expected one of {', '.join(HOLDOUT_RULES)}")
    if rule == "none":
        return Split(rows, rows.iloc[:0], "none", "no holdout: every row fitted")
    if rule == "latest_year":
        years = pd.to_numeric(rows["event_year"], errors="coerce")
        latest = years.max()
        if pd.isna(latest) or (years < latest).sum() == 0:
            found = "no event year" if pd.isna(latest) else f"only event year {int(latest)}"
            return _fallback(rows, rule, f"the rows hold {found}, so holding out the latest year would leave nothing to fit")
        held = (years == latest).to_numpy()
        description = f"every race of the latest event year, {int(latest)}"
    else:
        if not 0 < share < 1:
            raise FitError(f"holdout share must be between 0 and 1 (exclusive), got {share}")
        held = _random_athletes(rows, share, seed)
        description = f"every race of a random {share:.0%} of athletes (seed {seed})"
    if held.all() or not held.any():
        return _fallback(rows, rule, f"the rule held out {int(held.sum()):,} of {len(rows):,} rows")
    return Split(rows[~held], rows[held], rule, description)


def _random_athletes(rows: pd.DataFrame, share: float, seed: int) -> np.ndarray:
    """True for the rows of a random ``share`` of athletes; anonymous rows count one each.

    An athlete is held out when a keyed hash of (seed, athlete_hash) falls in the lowest
    ``share`` of its range: the choice depends on the athlete alone, so next week's refit,
    with new athletes and races, holds out the same athletes as this week's.
    """
    hashes = rows["athlete_hash"].astype("string")
    named = (hashes.notna() & (hashes != "")).to_numpy()
    key = f"racedayai{seed:07d}"[-16:].rjust(16, "0")  # hash_pandas_object takes a 16-char key
    digest = pd.util.hash_pandas_object(hashes.fillna(""), index=False, hash_key=key).to_numpy()
    held = named & (digest % 1_000_000 < round(share * 1_000_000))
    anonymous = ~named
    # no identity to keep stable: a seeded draw per anonymous row
    held[anonymous] = np.random.default_rng(seed).random(int(anonymous.sum())) < share
    return held


def _fallback(rows: pd.DataFrame, rule: str, why: str) -> Split:
    note = f"holdout rule {rule}: {why}; every row fitted and the checks judge them in-sample"
    return Split(rows, rows.iloc[:0], rule, "no holdout (fallback): every row fitted", (note,))
