"""The forecast model behind the model interface: fit, predict, diagnose, store, reload.

Fitting one distance (the maths is in ``model.py``, ``editions.py``, ``marginal.py`` and
``predict.py`` of this package):

1. encode the training rows (levels and standardised as-of covariates, ``design.py``);
2. first pass: the day offset of each training edition, and the day's sd (``editions.py``);
3. the pattern statistics of y minus the offsets (``marginal.py``): one sparse pass;
4. Laplace fit and independence Metropolis-Hastings over the six scales
   (lib/inference/imh.py), with one exact draw of the coefficients per kept draw.

Every training row with a course is fitted, none is subsampled; rows without an
event_name cannot be placed on a course and are left out of the fit (and counted).
"""

from __future__ import annotations

import json
import time
import warnings
import weakref
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from racedayai_bayes.lib.data.frame import MODEL_DISTANCES
from racedayai_bayes.lib.data.history import (
    HISTORY_COLUMNS,
    LEVEL_COLUMNS,
    SEASON_COLUMNS,
    as_of_athletes,
    athlete_codes,
    athlete_runs,
    earlier_season_sums,
    first_appearance,
    history_columns_in_chunks,
    index_in,
    season_sums,
)
from racedayai_bayes.lib.errors import FitError
from racedayai_bayes.lib.inference import imh
from racedayai_bayes.lib.inference.draws import Draws
from racedayai_bayes.lib.models.base import FittedModel, Model, ModelEntry, Prediction, ProgressFn
from racedayai_bayes.lib.models.forecast import design as fdesign
from racedayai_bayes.lib.models.forecast import editions, marginal
from racedayai_bayes.lib.models.forecast.predict import (
    PopulationDraws,
    linear_part,
    observation_weights,
    predictive,
)

NAME = "forecast"
DEFAULT_SEEDS = {"70.3": 42, "140.6": 99}
SCALE_SITES = marginal.SCALES
# tau_other is sampled only when at least this many athletes of its class (the other
# distance's level known at their first finish here) have two or more training rows, which
# tell their level's spread from the race-to-race noise; with fewer it would be barely more
# than its prior, which the independence sampler's proposal (a t fitted at the mode) covers
# poorly (r_hat 1.03 and bulk ESS 133 on a 400-athlete world), so it is tied to tau: one
# athlete scale for everyone, as before it existed. Measured 2026-12-06 with the default
# settings on the test world (racedayai_bayes_tests/forecast_world.py, 6 seeds each): with
# 42-60 such athletes every scale passes (max r_hat 1.0086, min bulk ESS 830), with 89-106 and
# 172-202 as well (1.0072, 880); with 21-30 (150-athlete worlds) 3 of 6 fits fail, on other
# scales too. 458 (140.6) and 704 (70.3) such athletes in the demo world, 17,156 and 26,392 in
# the full one.
MIN_TAU_OTHER_ATHLETES = 200


@dataclass(frozen=True)
class ForecastSettings:
    """Sampler and prediction settings of the forecast model."""

    num_chains: int = 4
    # kept draws per chain. With 300, a sampler that mixes perfectly fails the r_hat <= 1.01
    # check by chance alone in about a quarter of refits (the max of 14 rank-normalised split
    # r_hats over 4 chains: 8 of 30 seeds on the demo's 70.3, median max 1.0069; the
    # full-scale bench saw 1.009), and its min bulk ESS came down to 425 against the 400 of
    # its check. With 600: 0 of 30, max 1.0080, min ESS 929 (2026-12-05). The predictions
    # use ``predictive_draws`` of them, so only the sampler's time grows.
    num_samples: int = 600
    num_warmup: int = 25  # steps per chain before keeping draws
    proposal_df: float = 7.0
    proposal_inflate: float = 1.0
    # proposal steps per batch of density evaluations (x chains per call). 16 x 4 chains = 64
    # thetas, fewer than the Laplace fit's one batch (2d^2 + 1 = 73 at six scales; at five,
    # with tau_other tied, 51, and the sampler's first batch grows the workspace once): the
    # workspace its factors fill (60 MB at 70.3) serves the sampler too. With 64 steps, 256
    # factors (210 MB) were fresh memory, which on this VM cost the 70.3 sampler 2 s of system
    # time (6.7-7.2 s against 4.6-4.9 s in one process, 2 alternated pairs; side by side on the
    # two cores, 7.0-7.5 s against 5.3-5.9 s; the same draws to 1.4e-13, the batched products'
    # rounding, 2026-12-07)
    batch: int = 16
    adapt: int = 256  # pilot draws that re-centre the proposal on importance-weighted moments
    seed: int | None = None
    predictive_draws: int = 200  # population draws (thinned) behind each forecast

    def seed_for(self, distance: str) -> int:
        return self.seed if self.seed is not None else DEFAULT_SEEDS.get(distance, 0)


def last_forecast_season() -> int:
    """The latest season a forecast may be for: two seasons ahead of today's, one past the
    latest a results file may hold (contracts.last_plausible_season)."""
    from racedayai_bayes.lib.data.contracts import last_plausible_season

    return last_plausible_season() + 1


def _athlete_ids(rows: pd.DataFrame) -> np.ndarray:
    """0, 1, ... per athlete in order of first appearance; each row without an athlete_hash is
    an athlete of its own (numbered after the others)."""
    codes = first_appearance(athlete_codes(rows))
    anon = codes < 0
    if anon.any():  # a row without an athlete_hash is its own athlete
        codes = np.where(anon, codes.max(initial=-1) + np.cumsum(anon), codes)
    return codes


def _onehot(design: fdesign.ForecastDesign, enc: fdesign.ForecastEncoding) -> list[np.ndarray]:
    sl = enc.slices
    return [
        sl["gender"].start + design.gender,
        np.where(design.cell >= 0, sl["cell"].start + design.cell, -1),
        np.where(design.course >= 0, sl["course"].start + design.course, -1),
    ]


class _Batch:
    """A batch evaluation, indexable per theta: what an exact draw of b needs."""

    def __init__(self, ev: marginal.Evaluation):
        self.ev = ev

    def __getitem__(self, i):
        return self.ev.upper[i], self.ev.v[i]


def _copy(payload):
    return tuple(np.array(a, copy=True) for a in payload)


def _draw_b(payload, rng):
    return marginal.draw_b(*payload, rng)


@dataclass
class ScalePosterior:
    """Exact draws of the scales (SCALE_SITES) and of the coefficients given them."""

    scales: np.ndarray  # (chains, draws, len(SCALE_SITES))
    b: np.ndarray  # (chains, draws, K)
    accepted: np.ndarray  # (chains, draws)
    info: dict


def sample_posterior(stats: marginal.PatternStats, start: np.ndarray, settings: ForecastSettings, seed: int,
                     progress: ProgressFn = None, label: str = "forecast", tie_tau_other: bool = False) -> ScalePosterior:
    """Laplace fit from ``start`` (log scales), then the independence sampler with one exact
    draw of the coefficients per kept draw: exact draws of p(scales, b | y) (given the
    edition offsets already taken out of y).

    With ``tie_tau_other``, tau_other is tau (one athlete scale for every athlete): the
    sampler draws the other scales only, and each draw's tau_other is its tau.
    """
    say = progress or (lambda _m: None)
    s = settings
    tau, other = marginal.TAU_INDEX
    free = [i for i in range(len(SCALE_SITES)) if not (tie_tau_other and i == other)]

    def full(theta):  # the free scales' thetas (B, free) -> every scale's (B, len(SCALE_SITES))
        if not tie_tau_other:
            return theta
        out = np.empty((len(theta), len(SCALE_SITES)))
        out[:, free] = theta
        out[:, other] = out[:, tau]
        return out

    # every evaluation writes its factors to the same memory: a kept factor is copied out
    # (``_copy``) before the next evaluation (lib/inference/imh.independence_mh)
    workspace = marginal.Workspace()

    def log_posterior(theta):  # the prior on the free scales only: a tied one is not a parameter
        theta = np.atleast_2d(theta)
        ev = marginal.evaluate(stats, full(theta), workspace)
        return ev.log_lik + marginal.log_prior(theta), ev

    def log_post(theta):
        return log_posterior(theta)[0]

    t0 = time.perf_counter()
    lap = imh.laplace(log_post, np.asarray(start, dtype=np.float64)[free], 0.1)
    mode = full(lap.mode[None, :])[0]
    say(f"{label}: Laplace mode " + ", ".join(
        f"{n}={v:.4g}" for n, v in zip(SCALE_SITES, np.exp(mode))) + (" (tied to tau)" if tie_tau_other else "")
        + f" ({lap.evaluations} evaluations, {time.perf_counter() - t0:.1f} s)")

    def target(theta):
        lp, ev = log_posterior(theta)
        return lp, _Batch(ev)

    proposal = imh.MultivariateT(lap.mode, s.proposal_inflate**2 * lap.cov, s.proposal_df)
    result = imh.independence_mh(
        target, proposal, chains=s.num_chains, draws=s.num_samples, warmup=s.num_warmup, seed=seed,
        draw_fn=_draw_b, copy_fn=_copy, batch=s.batch, adapt=s.adapt, progress=say,
    )
    b = np.array([[result.extra[c][t] for t in range(s.num_samples)] for c in range(s.num_chains)])
    chains, draws = result.draws.shape[:2]
    scales = np.exp(full(result.draws.reshape(chains * draws, -1))).reshape(chains, draws, len(SCALE_SITES))
    info = {
        "laplace_mode": dict(zip(SCALE_SITES, np.exp(mode).tolist())),
        "tau_other_tied": bool(tie_tau_other),
        "laplace_evaluations": lap.evaluations, "acceptance": result.acceptance,
        "pareto_khat": imh.pareto_khat(result.log_weights),
        "evaluations": result.evaluations + lap.evaluations, "sampling_s": result.info["wall_s"],
    }
    return ScalePosterior(scales=scales, b=b, accepted=result.accepted, info=info)


class ForecastModel(Model):
    name = NAME
    asof = True

    def __init__(self, settings: ForecastSettings | None = None):
        self.settings = settings or ForecastSettings()

    def fit(self, train: pd.DataFrame, distance: str, progress: ProgressFn = None) -> FittedForecast:
        say = progress or (lambda _m: None)
        s = self.settings
        t0 = time.perf_counter()
        notes = []
        placed = train["event_name"].notna().to_numpy()
        if not placed.all():
            notes.append(f"{int((~placed).sum()):,} training rows without an event_name are not fitted (no course to place them on)")
            train = train.loc[placed].reset_index(drop=True)
        if len(train) < 10:
            raise FitError(f"distance {distance}: {len(train)} training rows with a course; the forecast model needs at least 10")
        enc, design = fdesign.fit_encoding_and_design(train, distance)
        y = np.log(train["total_sec"].to_numpy(dtype=np.float64)) - enc.y_center
        if not np.std(y) > 1e-6:
            raise FitError(f"distance {distance}: every training finish time is the same ({len(train):,} rows); "
                           "the forecast model has no spread to estimate its scales from")
        if design.first.all():
            raise FitError(f"distance {distance}: every training race ({len(train):,} rows) is an athlete's first; "
                           "the forecast model needs returning athletes to tell an athlete's level from race-to-race noise")
        season = design.season
        ed_codes, ed_keys = pd.factorize(pd.Series(design.course * 10_000 + season), sort=True)
        ed_course = np.asarray(ed_keys) // 10_000
        ed_season = np.asarray(ed_keys) % 10_000
        first = editions.first_pass(y, design.cell, ed_codes, ed_course)
        enc = fdesign.ForecastEncoding(**{**asdict(enc), "day_sd": first.day_sd})
        say(f"forecast {distance}: first pass in {time.perf_counter() - t0:.1f} s: day sd {first.day_sd:.4f} "
            f"over {len(ed_course):,} editions ({first.sweeps} sweeps)")

        t1 = time.perf_counter()
        data = marginal.FitData(
            y=y - first.offsets[ed_codes],
            # X as its parts: the statistics read them a pass at a time, never as one matrix
            x=marginal.DesignParts(np.column_stack(_onehot(design, enc)), design.z, enc.num_columns),
            first=design.first,
            athlete=_athlete_ids(train),
            block_slices=enc.slices,
            other_known=design.other_known,
        )
        # the statistics need FitData only, and the sampler the statistics only: the row-level
        # arrays (hundreds of MB at full scale) go as soon as they are used, which lowers the
        # step's peak memory (the covariates, design.z, stay in FitData's parts until ``del data``)
        del design, y, ed_codes, season
        stats = marginal.pattern_stats(data)
        t_stats = time.perf_counter() - t1
        num_athletes = int(data.athlete.max()) + 1 if len(data.athlete) else 0  # ids are 0..m-1 (_athlete_ids)
        del data
        # athletes of tau_other's class with two or more training rows (MIN_TAU_OTHER_ATHLETES)
        repeat = (stats.pat_n.sum(axis=1) >= 2) & (stats.pat_class == 1)
        other_athletes = int(stats.pat_count[repeat].sum())
        tie = other_athletes < MIN_TAU_OTHER_ATHLETES
        if tie:
            notes.append(f"tau_other is tau: {other_athletes:,} athletes whose other-distance level was known at their "
                         f"first finish here have two or more training races (fewer than {MIN_TAU_OTHER_ATHLETES}), "
                         "too few to tell their own athlete scale")
        say(f"forecast {distance}: statistics of {len(train):,} rows, {num_athletes:,} athletes, "
            f"{len(stats.pat_count)} history patterns, {enc.num_columns} coefficients in {t_stats:.1f} s")

        start = np.log([0.07, 0.07, 0.11, max(first.scales["course"], 0.01), 0.05, 0.08])  # in SCALE_SITES' order
        seed = s.seed_for(distance)
        posterior = sample_posterior(stats, start, s, seed, progress=say, label=f"forecast {distance}", tie_tau_other=tie)
        if not (np.all(np.isfinite(posterior.scales)) and np.all(posterior.scales < 10.0)):
            # a log-time sd of 10 is a factor of e^10: the posterior was not found, and its
            # forecasts would be meaningless; a data problem, said as one
            raise FitError(f"distance {distance}: the forecast model's scales did not settle (largest draw "
                           f"{float(np.nanmax(posterior.scales)):.3g} on the log scale; proposal acceptance "
                           f"{posterior.info['acceptance']:.2f}); the training rows cannot identify them")
        info = {
            "rows": len(train), "athletes": num_athletes,
            "history_patterns": int(len(stats.pat_count)), "coefficients": enc.num_columns,
            "tau_other_athletes": other_athletes,
            "editions": int(len(ed_course)), "first_pass": {"sigma_eta": first.sigma, **first.scales, "sweeps": first.sweeps},
            **posterior.info, "stats_s": t_stats, "wall_s": time.perf_counter() - t0, "seed": seed,
            "settings": {**asdict(s), "seed": seed},
        }
        say(f"forecast {distance}: {s.num_chains} x {s.num_samples} draws, acceptance {info['acceptance']:.2f}, "
            f"PSIS k-hat {info['pareto_khat']:.2f}, {info['wall_s']:.1f} s in all")
        return FittedForecast(
            distance=str(distance), encoding=enc, scales=posterior.scales, b=posterior.b,
            accepted=posterior.accepted,
            offsets=pd.DataFrame({"course": ed_course, "season": ed_season, "offset": first.offsets}),
            info=info, notes=notes,
        )


@dataclass
class FittedForecast(FittedModel):
    distance: str
    encoding: fdesign.ForecastEncoding
    scales: np.ndarray  # (chains, draws, len(SCALE_SITES))
    b: np.ndarray  # (chains, draws, K)
    accepted: np.ndarray  # (chains, draws)
    offsets: pd.DataFrame  # course index, season, day offset of every training edition
    info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    name: str = NAME
    asof: bool = True
    athletes: pd.DataFrame | None = None  # the artifact's athlete table (see athlete_table)
    predict_columns = ("athlete_hash", "gender", "age_group", "event_name", "event_year")
    predicts_every_row_when_judged = True  # its rows' preparation (_prepared) is most of a forecast's cost
    # (weak reference to a frame, its rows' encoding and readings): see _prepared
    _prepared_for: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_prepared_for"] = None  # a cache of this process's frames, not part of the posterior
        return state

    def __setstate__(self, state: dict) -> None:
        # a posterior stored (pickled between steps) before tau_other existed: see with_every_scale
        state = dict(state)
        state["scales"] = with_every_scale(state["scales"])
        self.__dict__.update(state)

    # ------------------------------------------------------------------ posterior

    @property
    def num_chains(self) -> int:
        return self.b.shape[0]

    def population(self, max_draws: int | None = None) -> PopulationDraws:
        """Evenly thinned draws of the population parameters (chains stacked)."""
        total = self.b.shape[0] * self.b.shape[1]
        count = min(max_draws or self.settings.get("predictive_draws", 200), total)
        pick = np.unique(np.linspace(0, total - 1, count).round().astype(int))
        return PopulationDraws(scales=self.scales.reshape(total, -1)[pick], b=self.b.reshape(total, -1)[pick])

    @property
    def b_mean(self) -> np.ndarray:
        return self.b.reshape(-1, self.b.shape[-1]).mean(axis=0)

    @property
    def scales_mean(self) -> np.ndarray:
        return self.scales.reshape(-1, self.scales.shape[-1]).mean(axis=0)

    # ------------------------------------------------------------------ forecasts

    def _offsets(self, design: fdesign.ForecastDesign) -> tuple[np.ndarray, np.ndarray]:
        """Day offset of each row's edition, and whether the fit estimated one."""
        table = pd.Series(self.offsets["offset"].to_numpy(),
                          index=self.offsets["course"].to_numpy() * 10_000 + self.offsets["season"].to_numpy())
        key = np.where(design.course >= 0, design.course * 10_000 + design.season, -1)
        pos = table.index.get_indexer(key)
        known = pos >= 0
        return np.where(known, table.to_numpy()[np.maximum(pos, 0)], 0.0), known

    def _prepared(self, frame: pd.DataFrame) -> tuple:
        """(design, w r, w, A, W) of every row of ``frame``: its encoding, its readings of the
        athletes' levels and its as-of summaries. Judging forecasts the split's rows several
        times and the artifact's athlete table reads them again, so they are computed once per
        frame object and kept while that frame lives (frames are never changed in place here).
        """
        cached = self._prepared_for
        if cached is not None and cached[0]() is frame and cached[1][0] is not None:
            return cached[1]
        design = fdesign.encode(frame, self.encoding)
        offset, known = self._offsets(design)
        y = np.log(frame["total_sec"].to_numpy(dtype=np.float64)) - self.encoding.y_center
        r = y - offset - linear_part(design, self.encoding, self.b_mean, forecast=False)
        w = observation_weights(design, self.scales_mean, self.encoding.day_sd, known)
        wr = w * r
        sums = earlier_season_sums(athlete_codes(frame), frame["event_year"].to_numpy(dtype=np.int64), {"a": wr, "w": w})
        value = (design, wr, w, sums["a"], sums["w"])
        self._prepared_for = (weakref.ref(frame), value)
        return value

    def observations(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(w r, w) of every row as a reading of its athlete's level (predict.py's docstring)."""
        cached = self._prepared_for
        if cached is not None and cached[0]() is frame:
            return cached[1][1], cached[1][2]
        _, wr, w, _, _ = self._prepared(frame)
        return wr, w

    def _forget_encoding(self, frame: pd.DataFrame) -> None:
        """Keep only the readings of ``frame``'s rows, not their encoding (hundreds of MB at
        full scale): the athlete table, the last user of a split in a posterior step, needs
        the readings alone. A later forecast of those rows encodes them again."""
        cached = self._prepared_for
        if cached is not None and cached[0]() is frame:
            self._prepared_for = (cached[0], (None, *cached[1][1:]))

    def athlete_summaries(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Each row's as-of summary (A, W): the athlete's finishes of strictly earlier seasons."""
        _, _, _, a, w = self._prepared(frame)
        return a, w

    def athlete_scale(self, design: fdesign.ForecastDesign) -> np.ndarray:
        """Each row's athlete scale at its posterior mean: tau_other where the other distance's
        level was known at the athlete's first finish here, tau elsewhere (marginal.py)."""
        mean = self.scales_mean
        return np.where(design.other_known, mean[SCALE_SITES.index("tau_other")], mean[SCALE_SITES.index("tau")])

    def forecast(self, design: fdesign.ForecastDesign, athlete_a: np.ndarray, athlete_w: np.ndarray,
                 log_time: np.ndarray | None = None, progress: ProgressFn = None) -> dict[str, np.ndarray]:
        return predictive(design, self.encoding, self.population(), athlete_a, athlete_w,
                          self.athlete_scale(design), log_time=log_time, progress=progress)

    def predict(self, frame: pd.DataFrame, rows: np.ndarray | None = None, *, log_density: bool = False,
                progress: ProgressFn = None) -> Prediction:
        design, _, _, a, w = self._prepared(frame)
        # the observed times only, not every column of the rows (a take of the whole frame)
        total = frame["total_sec"].to_numpy(dtype=np.float64) if log_density else None
        if rows is not None:
            rows = np.asarray(rows)
            design = _take(design, rows)
            a, w = a[rows], w[rows]
            total = total[rows] if total is not None else None
        log_time = np.log(total) if total is not None else None
        out = self.forecast(design, a, w, log_time, progress)
        return Prediction(out["mean"], out["sd"], out["p05"], out["p50"], out["p95"], out.get("log_density"))

    # ------------------------------------------------------------------ forecasts from the artifact alone

    def athlete_table(self, split, seasons: pd.DataFrame) -> pd.DataFrame:
        """Each athlete's as-of summary at two cut points, for forecasts without the pipeline.

        ``before``: everything known before the split's held-out season (or, without one, the
        latest season); ``through``: everything up to and including it. Per cut, the
        athlete's (A, W) at this distance (predict.py) and the as-of history of
        lib/data/history.py. The numbers are the ones the pipeline's own forecasts of that
        season use, bit for bit: the same sums in the same order.
        """
        rows = split.rows
        season = int(split.season) if split.season is not None else int(rows["event_year"].max())
        # the season table is sorted by athlete, then season (history.season_table): each
        # athlete's seasons are one run of rows, and the athletes come in hash order
        stale = [c for c in SEASON_COLUMNS if c not in seasons.columns]
        if stale:  # a table of an older version: its athletes' history would be incomplete
            raise ValueError(f"the athlete season table has no column {', '.join(stale)}, which the as-of history "
                             f"reads: it was {fdesign.STALE_HINT}")
        # the table's athletes: those with a start by ``season`` (a later season's debutant is
        # not in it). The season table itself is not cut to those seasons: a copy of the
        # seasons up to the held-out one (most of the table, 250 MB at full scale, when the
        # season before the latest is held out), and the running totals of an athlete's
        # seasons up to a cut are the same numbers whatever follows them (as_of_athletes checks
        # that each athlete's seasons are in order)
        new_athlete = athlete_runs(seasons["athlete_hash"])
        row_athlete = np.cumsum(new_athlete) - 1  # each season row's athlete, in table order
        known = np.zeros(int(new_athlete.sum()), dtype=bool)
        known[row_athlete[(seasons["event_year"] <= season).to_numpy()]] = True
        first_row = new_athlete.copy()
        first_row[new_athlete] = known  # the first row of each athlete the table holds
        athletes = seasons["athlete_hash"].astype("string")[first_row].reset_index(drop=True)
        athlete_of = (np.cumsum(known) - 1)[row_athlete]  # each season row's athlete, into ``athletes``
        k = len(athletes)
        wr, w = self.observations(rows)
        self._forget_encoding(rows)
        # each athlete's sums at a cut are what a real race in that season gets: the running
        # totals of its rows' seasons before the cut (rows without an athlete, or of an
        # athlete the table does not know, are in no athlete's sums)
        sums = season_sums(index_in(rows["athlete_hash"], athletes), rows["event_year"].to_numpy(dtype=np.int64),
                           {"a": wr, "w": w})
        own_is_1 = self.distance == MODEL_DISTANCES[1]
        columns = {"athlete_hash": athletes}
        cuts = (("before", season), ("through", season + 1))
        # each cut's totals straight into per-athlete arrays (at full scale ~10 MB each, 15
        # columns and two cuts), each cut's dropped once its history columns are made
        as_of = as_of_athletes(seasons, *(at for _, at in cuts), athlete_of=athlete_of, athletes=k,
                               new_athlete=new_athlete)
        for cut, at in cuts:
            cum = as_of.pop(0)
            per_athlete = sums.before(k, at) if sums is not None else {"a": np.zeros(k), "w": np.zeros(k)}
            columns[f"{cut}_a"] = per_athlete["a"]
            columns[f"{cut}_w"] = per_athlete["w"]
            for name, values in history_columns_in_chunks(cum, own_is_1).items():
                columns[f"{cut}_{name}"] = values
            del cum
        table = pd.DataFrame(columns, copy=False)  # one array per column, none copied
        table.attrs["season"] = season
        # False when the split held out no season (random athletes, none): the fit then saw
        # ``season``'s own races, and only later seasons can be forecast honestly (kept in
        # info, which the artifact stores; first_forecast_season)
        self.info["split_season_held_out"] = split.season is not None
        return table

    def artifact_tables(self, split, seasons: pd.DataFrame) -> dict[str, pd.DataFrame]:
        return {"athletes": self.athlete_table(split, seasons)}

    def attach_tables(self, tables: dict[str, pd.DataFrame]) -> None:
        self.athletes = tables.get("athletes")

    @property
    def table_season(self) -> int:
        """The season the athlete table's ``before`` cut stops at: the held-out season."""
        if self.athletes is None:
            raise ValueError("this posterior has no athlete table: forecasts need an artifact written with one")
        return int(self.info.get("table_season", self.athletes.attrs.get("season")))

    @property
    def first_forecast_season(self) -> int:
        """The earliest season this posterior can forecast without having seen its results: the
        held-out season, or the one after the table's season when the split held out none
        (none, random_athletes, or the one-season fallback: its fit saw every season up to the
        table's). Kept in ``info`` when the athlete table is made; for an artifact written
        before that, load() reads it from the split stored with it (every artifact has one)."""
        return self.table_season if self.info.get("split_season_held_out", True) else self.table_season + 1

    def season_problem(self, season: int) -> str | None:
        """Why ``season`` cannot be forecast honestly with this posterior, or None: one rule for
        a start list's race and for ``predict``'s rows."""
        first, latest = self.first_forecast_season, self.table_season
        if season < first:
            what = f"{first}, the posterior's held-out season" if first == latest else \
                f"{first}: the posterior held out no season, and its fit saw every season up to {latest}"
            return (f"season {season} is before {what}; it knows that season's results, so it cannot forecast it "
                    f"honestly (use {first} or later)")
        if season > last_forecast_season():
            return (f"season {season} is after {last_forecast_season()}; a forecast reads the athletes' history as "
                    "it is now, so it goes at most two seasons ahead (a typo?)")
        return None

    def rows_with_history(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """Standalone rows (athlete_hash, gender, age_group, event_name, event_year) with their
        as-of history and (A, W) from the athlete table: the held-out season's rows read the
        ``before`` cut, later seasons the ``through`` cut. An athlete the table does not know
        has no history (a first race)."""
        season = self.table_season
        years = frame["event_year"].astype("Int64")
        if years.isna().any():
            raise ValueError(f"{int(years.isna().sum()):,} rows have no event_year; a forecast needs the race's season")
        for season_, count in years.value_counts(sort=False).sort_index().items():
            problem = self.season_problem(int(season_))
            if problem:
                raise ValueError(f"{int(count):,} rows are of season {int(season_)}: {problem}")
        table = self.athletes.set_index("athlete_hash")
        pos = table.index.get_indexer(frame["athlete_hash"].astype(object).where(frame["athlete_hash"].notna(), None))
        found = pos >= 0
        later = (years > season).to_numpy()
        out = frame.copy()
        values = {}
        take = np.maximum(pos, 0)
        for col in ("a", "w", *HISTORY_COLUMNS):
            empty = np.nan if col in LEVEL_COLUMNS else 0.0
            if table.empty or f"before_{col}" not in table.columns:
                # a table read for athletes it does not know: nobody has history; or one
                # stored before the column existed (its encoding does not read it)
                before = through = np.full(len(frame), empty)
            else:
                before = table[f"before_{col}"].to_numpy()[take]
                through = table[f"through_{col}"].to_numpy()[take]
            values[col] = np.where(found, np.where(later, through, before), empty)
        for col in HISTORY_COLUMNS:
            out[col] = values[col].astype(np.int32) if col.startswith("hist_") and col not in LEVEL_COLUMNS else values[col]
        out["event_year"] = years
        return out, values["a"], values["w"]

    def forecast_rows(self, frame: pd.DataFrame, *, draws: int | None = None) -> tuple[Prediction, dict]:
        """Forecasts of standalone rows from the athlete table (:meth:`rows_with_history`),
        and per row ``history_races`` (earlier starts at either distance) and ``new_course``."""
        rows, a, w = self.rows_with_history(frame)
        design = fdesign.encode(rows, self.encoding)
        log_time = None
        if "total_sec" in rows and rows["total_sec"].notna().any():
            log_time = np.log(rows["total_sec"].to_numpy(dtype=np.float64, na_value=np.nan))
        out = predictive(design, self.encoding, self.population(draws), a, w, self.athlete_scale(design),
                         log_time=log_time)
        pred = Prediction(out["mean"], out["sd"], out["p05"], out["p50"], out["p95"], out.get("log_density"))
        return pred, {"history_races": rows["hist_starts"].to_numpy(), "new_course": design.new_course}

    def predict_rows(self, frame: pd.DataFrame, *, draws: int | None = None, seed: int | None = None) -> Prediction:
        return self.forecast_rows(frame, draws=draws)[0]

    # ------------------------------------------------------------------ judging and showing

    def _draws(self) -> Draws:
        """The sampled scalars as Draws (chains, draws): the scales and the fixed coefficients."""
        enc = self.encoding
        sl = enc.slices
        samples = {site: self.scales[..., i] for i, site in enumerate(SCALE_SITES)}
        for i, g in enumerate(enc.genders):
            samples[f"gender_{g}"] = self.b[..., sl["gender"].start + i]
        for i, c in enumerate(enc.covariates):
            samples[f"slope_{c}"] = self.b[..., sl["slope"].start + i]
        return Draws(samples=samples, diverging=np.zeros(self.accepted.shape, dtype=bool), engine="laplace-imh",
                     info=self.info)

    summary_scale = ("log finish time: the scales are sds of log time; the gender intercepts are relative to the "
                     "training mean log time; the slopes per sd of their covariate")

    def summary(self) -> pd.DataFrame:
        from racedayai_bayes.lib.evaluation.diagnostics import summary_table

        return self._memo("summary", lambda: summary_table(self._draws())).copy()

    def diagnostics(self) -> list:
        from racedayai_bayes.lib.evaluation import diagnostics as dx

        table = self.summary()
        return [dx.check_rhat(table), dx.check_ess(table), dx.check_proposal(self.info.get("pareto_khat", float("nan")),
                                                                               self.info.get("acceptance", float("nan")))]

    def plots(self) -> dict[str, tuple[bytes, str]]:
        from racedayai_bayes.lib.evaluation import plots

        draws = self._draws()
        return {
            "plot_scale_ranks": (plots.scale_rank_plot(draws, SCALE_SITES), f"rank plots of the forecast model's scales, {self.distance}"),
            "plot_course_effects": (
                plots.effect_caterpillar(
                    self.b[..., self.encoding.slices["course"]].reshape(-1, len(self.encoding.courses)),
                    self.encoding.courses,
                    lambda e: np.exp(self.encoding.y_center) * np.expm1(e) / 60.0,
                    f"Course effects, {self.distance}: minutes at the mean finish time", level_name="course",
                ),
                f"course effects in minutes, {self.distance}",
            ),
        }

    def posterior_means(self) -> dict[str, float]:
        means = {name: float(np.mean(v)) for name, v in self._draws().samples.items()}
        means["day_sd"] = float(self.encoding.day_sd)
        means["mean_log_time"] = float(self.encoding.y_center)
        return means

    # ------------------------------------------------------------------ artifacts

    def inference_data(self):
        import arviz as az

        enc = self.encoding
        sl = enc.slices
        posterior = {site: self.scales[..., i] for i, site in enumerate(SCALE_SITES)}
        for block in ("gender", "cell", "course", "slope"):
            posterior[block] = self.b[..., sl[block]]
        coords = {"gender": list(enc.genders), "cell": list(enc.cells), "course": list(enc.courses),
                  "covariate": list(enc.covariates)}
        dims = {"gender": ["gender"], "cell": ["cell"], "course": ["course"], "slope": ["covariate"]}
        attrs = {
            "racedayai_model": NAME,
            "racedayai_distance": self.distance,
            "racedayai_encoding": enc.to_json(),
            "racedayai_offsets": json.dumps({k: self.offsets[k].tolist() for k in ("course", "season", "offset")}),
            "racedayai_model_info": json.dumps(self.info, default=float),
            "racedayai_model_notes": json.dumps(self.notes),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return az.from_dict(posterior=posterior, sample_stats={"accepted": self.accepted},
                                coords=coords, dims=dims, attrs=attrs)


def _take(design: fdesign.ForecastDesign, rows: np.ndarray) -> fdesign.ForecastDesign:
    return fdesign.ForecastDesign(**{k: getattr(design, k)[rows] for k in design.__dataclass_fields__})


def with_every_scale(scales: np.ndarray) -> np.ndarray:
    """Draws of the scales (..., len(SCALE_SITES)); draws of a posterior made before tau_other
    existed (its last column) had one athlete scale for every athlete: its tau is both
    classes', which gives the forecasts it gave then."""
    scales = np.asarray(scales)
    if scales.shape[-1] == len(SCALE_SITES) - 1:  # tau_other, the last, is missing
        tau = scales[..., SCALE_SITES.index("tau")]
        return np.concatenate([scales, tau[..., None]], axis=-1)
    return scales


def load(idata, attrs: dict) -> FittedForecast:
    enc = fdesign.ForecastEncoding.from_json(attrs["racedayai_encoding"])
    post = idata.posterior
    names = [s for s in SCALE_SITES if s != "tau_other" or s in post]  # any other one missing: a KeyError
    scales = with_every_scale(np.stack([np.asarray(post[s].values) for s in names], axis=-1))
    chains, draws = scales.shape[:2]
    b = np.concatenate([
        np.asarray(post["gender"].values),
        np.asarray(post["cell"].values).reshape(chains, draws, -1), np.asarray(post["course"].values).reshape(chains, draws, -1),
        np.asarray(post["slope"].values),
    ], axis=-1)
    off = json.loads(attrs["racedayai_offsets"])
    info = json.loads(attrs.get("racedayai_model_info", "{}"))
    split = json.loads(attrs.get("racedayai_split", "{}"))
    if "season" in split:  # an artifact written before info kept it: the split it was fitted on tells
        info.setdefault("split_season_held_out", split["season"] is not None)
    return FittedForecast(
        distance=str(attrs["racedayai_distance"]), encoding=enc, scales=scales, b=b,
        accepted=np.asarray(idata.sample_stats["accepted"].values, dtype=bool),
        offsets=pd.DataFrame(off), info=info,
        notes=json.loads(attrs.get("racedayai_model_notes", "[]")),
    )


ENTRY = ModelEntry(
    build=lambda **settings: ForecastModel(ForecastSettings(**settings)),
    load=load,
    description="course, day and athlete effects from earlier seasons only; noise by first race vs returning",
    asof=True,
    sampler_checks=("rhat", "ess", "proposal"),
    needs_seasons=True,
    forecasts_start_lists=True,
)
