"""Race-day forecasts: a start list in, every athlete's expected finish time out.

The published posterior artifact is all it takes (no input CSVs, no Dagster instance): the
forecast model carries each athlete's as-of summary at two cut points (lib/models/forecast,
``athlete_table``). A race of the artifact's held-out season reads what was known before
that season; a later race reads everything the artifact knew, the held-out season included.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from racedayai_bayes.lib.data import MODEL_DISTANCES
from racedayai_bayes.lib.data.contracts import StartList
from racedayai_bayes.lib.data.frame import course_key

FORECAST_COLUMNS = ("event_name", "event_year", "event_distance", "model", "history_races", "new_course",
                    "bayes_pred", "bayes_std", "bayes_p05", "bayes_p50", "bayes_p95")


class ForecastError(ValueError):
    """A start list that cannot be forecast with this posterior (the message says why)."""


@dataclass
class RaceForecast:
    """One race's forecasts, in start-list order, and what a reader should know about them."""

    table: pd.DataFrame
    model: str
    artifact: str
    distance: str
    event: str
    season: int
    new_course: bool
    without_history: int
    notes: list[str] = field(default_factory=list)


def known_course(event: str, courses) -> tuple[str, str | None]:
    """``event`` as the posterior spells it: itself if the posterior knows it, else the one known
    course that matches it ignoring case and runs of spaces (with a note saying so), else itself
    (a new course). Two known courses that match alike leave it as given."""
    if event in courses:
        return event, None
    key = course_key(event)  # the one matching of a course (frame.course_index)
    matches = [c for c in courses if course_key(c) == key]
    if len(matches) == 1:
        return matches[0], f"race {event!r} read as {matches[0]!r}, the posterior's spelling of that course"
    if matches:
        return event, (f"race {event!r} matches {len(matches)} known courses but for case or spacing "
                       f"({', '.join(repr(m) for m in matches[:3])}); give its exact name to forecast it on one of them")
    return event, None


def _forecast_posterior_hint(artifact) -> str:
    """What to use instead of a seed model's artifact: the newest forecast posterior beside it
    (of the same output folder and distance) that passed its checks, by its full path, or how
    to make one. Said alike by the ``forecast`` command and the ``race_forecasts`` asset, which
    reads the published artifact."""
    from racedayai_bayes.lib.outputs.artifacts import previous_artifact

    newest = None
    parents = artifact.path.parents  # <output>/posterior/<model>/<distance>/<refit>.nc
    if len(parents) > 3 and parents[2].name == "posterior":
        try:
            newest = previous_artifact(parents[3], "forecast", artifact.distance)
        except Exception:  # noqa: BLE001 - only a hint: an unreadable folder or object store gives the general one
            newest = None
    publish = "publish the forecast model (`racedayai-bayes refit --publish forecast`, or run config publish: forecast)"
    if newest is not None:
        return (f"the newest forecast posterior of {artifact.distance} that passed its checks is {newest}: "
                f"give it to `racedayai-bayes forecast --posterior`, or {publish}")
    return f"refit the forecast model and {publish}, or give `racedayai-bayes forecast --posterior` a forecast posterior"


def forecast_start_list(artifact, start: StartList, event: str | None = None, season: int | None = None,
                        draws: int | None = None) -> RaceForecast:
    """Forecast every row of ``start`` at ``event`` in ``season`` with the artifact's model.

    ``event`` and ``season`` default to the start list's own event_name and event_year, and the
    season then to the one after the artifact's latest season. A start list naming another
    distance, a season before the artifact's held-out season, or a model that cannot
    forecast start lists is a :class:`ForecastError`.
    """
    model = artifact.model
    name = f"{start.path}"
    if not hasattr(model, "forecast_rows"):
        raise ForecastError(
            f"{artifact.path} is a posterior of {model.name}, which cannot forecast a start list (it has no "
            f"history of each athlete); {_forecast_posterior_hint(artifact)}"
        )
    distance = start.event.get("event_distance")
    if distance is not None and distance not in MODEL_DISTANCES:
        raise ForecastError(f"{name}: event_distance {distance!r} is not a distance the models forecast; "
                            f"write {' or '.join(MODEL_DISTANCES)}")
    if distance is not None and distance != artifact.distance:
        raise ForecastError(f"{name}: the race is a {distance} race, but {artifact.path} is a posterior of "
                            f"{artifact.distance}; forecast it with the {distance} posterior")
    event = " ".join(str(event or start.event.get("event_name") or "").split())
    if not event:
        raise ForecastError(f"{name}: no race named: give --event, or an event_name column")
    notes = list(start.notes)
    event, spelled = known_course(event, model.encoding.courses)
    if spelled:
        notes.append(spelled)
    latest = model.table_season
    season = int(season if season is not None else start.event.get("event_year", latest + 1))
    problem = model.season_problem(season)
    if problem:
        raise ForecastError(f"{name}: {problem}")
    athletes = start.athletes.assign(event_name=event, event_year=season)
    pred, extra = model.forecast_rows(athletes, draws=draws)
    # the race's columns follow the start list's own; a file that names its race has them
    # already (with the values the forecast used, or overridden by --event / --year)
    table = start.rows.drop(columns=[c for c in ("event_name", "event_year", "event_distance") if c in start.rows])
    table["event_name"] = event
    table["event_year"] = season
    table["event_distance"] = artifact.distance
    table["model"] = model.name
    table["history_races"] = extra["history_races"].astype(np.int64)
    table["new_course"] = extra["new_course"].astype(bool)
    table["bayes_pred"], table["bayes_std"] = pred.pred, pred.std
    table["bayes_p05"], table["bayes_p50"], table["bayes_p95"] = pred.p05, pred.p50, pred.p95
    new_course = bool(table["new_course"].all())
    if new_course:
        folded = [c.casefold() for c in model.encoding.courses]
        near = dict.fromkeys(difflib.get_close_matches(event.casefold(), folded, n=3, cutoff=0.75))
        # the closest first; courses that differ only in case are each listed
        similar = [c for f in near for c, g in zip(model.encoding.courses, folded) if g == f][:3]
        hint = f"; known courses with a similar name: {', '.join(repr(c) for c in similar)}" if similar else ""
        notes.append(f"{event} has no edition before {season} in the posterior: it is forecast as a new course "
                     f"(its effect is a draw from all courses){hint}")
    return RaceForecast(table=table, model=model.name, artifact=str(artifact.path), distance=artifact.distance,
                        event=event, season=season, new_course=new_course,
                        without_history=int((table["history_races"] == 0).sum()), notes=notes)
