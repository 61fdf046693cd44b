"""Diagnostic plots as PNG bytes and the tables behind them (lib/plots.py)."""

from __future__ import annotations

import base64
import io
import struct

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_absolute_error, r2_score

from racedayai_bayes.lib.models.seed.encoding import Encoding
from racedayai_bayes.lib.inference.nuts import Draws
from racedayai_bayes.lib.evaluation.plots import (
    MAX_DRAWN_POINTS,
    SCATTER_MAX_ROWS,
    coverage_by_decile,
    coverage_by_decile_plot,
    effect_caterpillar,
    elpd_difference_plot,
    field_forecast_plot,
    fit_stats,
    png_markdown,
    predicted_vs_observed,
    scale_rank_plot,
)
from racedayai_bayes.lib.evaluation.scores import decile_table
from racedayai_bayes.lib.models.base import Prediction
from racedayai_bayes.lib.models.seed.model import SCALE_SITES
from racedayai_bayes.lib.models.seed.plots import group_effect_forest, group_effect_table

from .conftest import hand_draws

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_PNG_BYTES = 150_000
CHAINS, DRAWS = 2, 300

AGES = ("F18-24", "F25-29", "M18-24", "M25-29", "M30-34")
CLUSTERS = (-1, 0, 3)
ENC = Encoding(
    distance="70.3", age_levels=AGES, cluster_levels=CLUSTERS, y_mean=21_600.0, y_std=3_000.0,
    exp_mean=1.0, exp_std=0.5, default_cluster_idx=1,
)


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height in pixels, read from the IHDR chunk."""
    assert png[:8] == PNG_MAGIC
    assert png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def assert_compact_png(png: bytes, min_width: int = 600, max_width: int = 1000) -> tuple[int, int]:
    from matplotlib.image import imread

    width, height = png_size(png)
    assert 5_000 < len(png) < MAX_PNG_BYTES
    assert min_width <= width <= max_width
    image = imread(io.BytesIO(png), format="png")  # a real decoder reads it whole
    assert image.shape[:2] == (height, width)
    assert image[..., :3].std() > 0.05  # not a blank canvas
    return width, height


def make_draws(seed: int = 0, n_age: int = len(AGES), n_cluster: int = len(CLUSTERS)) -> Draws:
    """Draws shaped for ENC (or for other group counts)."""
    return hand_draws(chains=CHAINS, draws=DRAWS, n_age=n_age, n_cluster=n_cluster, seed=seed)


# ---------------------------------------------------------------- png_markdown


def test_png_markdown_is_a_data_uri_image_that_decodes_to_the_same_bytes():
    png = PNG_MAGIC + b"payload"
    text = png_markdown(png, "rank plot")
    prefix = "![rank plot](data:image/png;base64,"
    assert text.startswith(prefix) and text.endswith(")")
    assert base64.b64decode(text[len(prefix):-1]) == png


def test_png_markdown_keeps_brackets_in_the_alt_text_from_closing_the_link():
    text = png_markdown(b"x", "coverage [70.3]")
    assert text.startswith("![coverage (70.3)](data:")


# ---------------------------------------------------------------- group effects


def test_group_effect_table_labels_sections_in_encoding_order():
    table = group_effect_table(make_draws(), ENC)
    assert list(table.columns) == ["section", "label", "mean_sec", "p05_sec", "p95_sec"]
    assert list(table["section"]) == ["gender"] * 2 + ["age group"] * len(AGES) + ["cluster"] * len(CLUSTERS)
    assert list(table["label"]) == ["Male", "Female", *AGES, "no cluster", "cluster 0", "cluster 3"]
    assert (table["p05_sec"] <= table["mean_sec"]).all() and (table["mean_sec"] <= table["p95_sec"]).all()


def test_group_effect_table_converts_constant_draws_to_exact_seconds():
    draws = make_draws()
    ages = np.array([-0.5, -0.1, 0.0, 0.2, 0.75])
    draws.samples["mu_age"] = np.broadcast_to(ages, (CHAINS, DRAWS, len(AGES))).copy()
    table = group_effect_table(draws, ENC).set_index("label")
    # effects are differences in standardised time: seconds = effect * y_std, no y_mean
    for level, value in zip(AGES, ages):
        assert table.loc[level, "mean_sec"] == pytest.approx(value * ENC.y_std, abs=1e-9)
        assert table.loc[level, "p05_sec"] == pytest.approx(value * ENC.y_std, abs=1e-9)
        assert table.loc[level, "p95_sec"] == pytest.approx(value * ENC.y_std, abs=1e-9)


def test_group_effect_table_interval_is_the_5_and_95_percentiles_over_all_chains():
    draws = make_draws()
    # draws 0..599 spread over two chains: mean 299.5, linear-interpolated percentiles
    draws.samples["mu_gender"][..., 1] = np.arange(CHAINS * DRAWS).reshape(CHAINS, DRAWS) / ENC.y_std
    female = group_effect_table(draws, ENC).set_index("label").loc["Female"]
    assert female["mean_sec"] == pytest.approx(299.5)
    assert female["p05_sec"] == pytest.approx(0.05 * 599)
    assert female["p95_sec"] == pytest.approx(0.95 * 599)


def test_group_effect_table_rejects_draws_that_do_not_match_the_encoding():
    with pytest.raises(ValueError, match="mu_age"):
        group_effect_table(make_draws(n_age=len(AGES) + 1), ENC)


def test_group_effect_forest_grows_with_the_number_of_groups():
    small = group_effect_forest(make_draws(), ENC)
    ages = tuple(f"{s}{a}-{a + 4}" for s in "FM" for a in range(18, 80, 5))
    big_enc = Encoding(
        distance="140.6", age_levels=ages, cluster_levels=(-1, *range(9)), y_mean=45_000.0,
        y_std=5_000.0, exp_mean=1.0, exp_std=0.5, default_cluster_idx=0,
    )
    big = group_effect_forest(make_draws(n_age=len(ages), n_cluster=10), big_enc)
    _, small_h = assert_compact_png(small)
    _, big_h = assert_compact_png(big)
    assert big_h > small_h + 400  # 26 age groups and 10 clusters need more height than 5 and 3


# ---------------------------------------------------------------- rank plot


def test_scale_rank_plot_is_a_compact_png_and_leaves_no_pyplot_figures():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    draws = make_draws()
    png = scale_rank_plot(draws, SCALE_SITES)
    assert_compact_png(png)
    assert plt.get_fignums() == before
    assert scale_rank_plot(draws, SCALE_SITES) == png  # deterministic bytes


def test_scale_rank_plot_draws_the_scales_it_has_and_fails_without_any():
    draws = make_draws()
    only_sigma = Draws({"sigma": draws.samples["sigma"]}, draws.diverging, "test")
    assert_compact_png(scale_rank_plot(only_sigma, SCALE_SITES))
    no_scales = Draws({"mu_global": draws.samples["mu_global"]}, draws.diverging, "test")
    with pytest.raises(ValueError, match="no scale parameter"):
        scale_rank_plot(no_scales, SCALE_SITES)


# ---------------------------------------------------------------- predicted vs observed


def test_fit_stats_match_scikit_learn():
    rng = np.random.default_rng(3)
    observed = rng.normal(20_000, 3_000, 10_000)
    predicted = observed + rng.normal(200, 1_500, observed.size)
    stats = fit_stats(observed, predicted)
    assert stats["mae_sec"] == pytest.approx(mean_absolute_error(observed, predicted), rel=1e-12)
    assert stats["mae_min"] == pytest.approx(stats["mae_sec"] / 60, rel=1e-12)
    assert stats["r2"] == pytest.approx(r2_score(observed, predicted), rel=1e-12)
    assert stats["rows"] == observed.size


def test_fit_stats_on_constant_observations_follows_scikit_learn():
    observed = np.full(4, 100.0)
    assert fit_stats(observed, observed)["r2"] == r2_score(observed, observed) == 1.0
    assert fit_stats(observed, observed + [1, -1, 0, 0])["r2"] == r2_score(observed, observed + [1, -1, 0, 0]) == 0.0


def test_fit_stats_reject_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="rows"):
        fit_stats([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no rows"):
        fit_stats([], [])


def test_predicted_vs_observed_handles_many_rows_and_reports_stats_over_all_of_them(monkeypatch):
    import racedayai_bayes.lib.evaluation.plots as plots

    rng = np.random.default_rng(4)
    n = 500_000
    observed = rng.gamma(20.0, 21_600 / 20, n)
    predicted = 0.7 * observed + 0.3 * 21_600 + rng.normal(0, 1_500, n)
    seen = []
    real = plots.fit_stats
    monkeypatch.setattr(plots, "fit_stats", lambda o, p: seen.append(len(o)) or real(o, p))
    png = predicted_vs_observed(pd.Series(observed), predicted, label="held-out rows, 70.3")
    assert seen == [n]  # the statistics see every row, not the drawn sample
    assert n > MAX_DRAWN_POINTS
    assert_compact_png(png)
    assert predicted_vs_observed(observed, predicted) == predicted_vs_observed(observed, predicted)


@pytest.fixture
def drawn(monkeypatch) -> dict[str, list[int]]:
    """How many points each call of Axes.scatter and Axes.hexbin drew (the real methods still draw)."""
    from matplotlib.axes import Axes

    calls: dict[str, list[int]] = {"scatter": [], "hexbin": []}
    for name in calls:
        real = getattr(Axes, name)

        def record(self, x, y, *args, _real=real, _name=name, **kwargs):
            calls[_name].append(len(x))
            return _real(self, x, y, *args, **kwargs)

        monkeypatch.setattr(Axes, name, record)
    return calls


def test_predicted_vs_observed_draws_a_scatter_for_few_rows(drawn):
    rng = np.random.default_rng(5)
    observed = rng.normal(21_600, 3_000, 300)
    assert_compact_png(predicted_vs_observed(observed, observed + rng.normal(0, 900, 300), label="train"))
    assert drawn == {"scatter": [300], "hexbin": []}  # every row a point, no density


@pytest.mark.parametrize("n", [SCATTER_MAX_ROWS, SCATTER_MAX_ROWS + 1])
def test_predicted_vs_observed_switches_from_scatter_to_hexbin_above_its_limit(drawn, n):
    rng = np.random.default_rng(6)
    observed = rng.normal(21_600, 3_000, n)
    predicted_vs_observed(observed, observed + rng.normal(0, 900, n))
    expected = {"scatter": [n], "hexbin": []} if n <= SCATTER_MAX_ROWS else {"scatter": [], "hexbin": [n]}
    assert drawn == expected


# ---------------------------------------------------------------- coverage by decile


def hand_built_rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20 rows, two per decile (1 h, 2 h, ..., 20 h), with known interval outcomes."""
    hours = np.arange(1.0, 21.0)
    observed = hours * 3600
    p05 = observed - 600
    p95 = observed + 600
    p05[[0, 2]] = observed[[0, 2]] + 1  # rows 1 and 3 h fall below their interval
    p95[[19]] = observed[19] - 1  # row 20 h falls above
    p05[[5]] = observed[5]  # 6 h sits exactly on the lower bound: inside
    p95[[6]] = observed[6]  # 7 h sits exactly on the upper bound: inside
    return observed, p05, p95


def test_coverage_by_decile_on_a_hand_built_example():
    table = coverage_by_decile(*hand_built_rows())
    assert list(table.columns) == ["decile", "lower_h", "upper_h", "rows", "coverage", "below", "above"]
    assert list(table["decile"]) == list(range(1, 11))
    assert list(table["rows"]) == [2] * 10
    # pd.qcut edges of 1..20: 1 + 1.9 k hours
    np.testing.assert_allclose(table["lower_h"], 1 + 1.9 * np.arange(10))
    np.testing.assert_allclose(table["upper_h"], 1 + 1.9 * np.arange(1, 11))
    assert list(table["coverage"]) == [0.5, 0.5] + [1.0] * 7 + [0.5]
    assert list(table["below"]) == [0.5, 0.5] + [0.0] * 8
    assert list(table["above"]) == [0.0] * 9 + [0.5]
    np.testing.assert_allclose(table["coverage"] + table["below"] + table["above"], 1.0)


def test_coverage_by_decile_rows_sum_to_n_and_bounds_are_monotone():
    rng = np.random.default_rng(6)
    observed = rng.gamma(20.0, 21_600 / 20, 12_345)
    centre = observed + rng.normal(0, 1_500, observed.size)
    table = coverage_by_decile(observed, centre - 2_400, centre + 2_400)
    assert table["rows"].sum() == observed.size
    assert table["rows"].between(1234, 1235).all()
    assert (np.diff(table["lower_h"]) > 0).all() and (table["upper_h"] > table["lower_h"]).all()
    np.testing.assert_allclose(table["lower_h"].iloc[1:], table["upper_h"].iloc[:-1])
    assert table["lower_h"].iloc[0] == observed.min() / 3600
    assert table["upper_h"].iloc[-1] == observed.max() / 3600
    overall = np.mean((centre - 2_400 <= observed) & (observed <= centre + 2_400))
    assert np.average(table["coverage"], weights=table["rows"]) == pytest.approx(overall, rel=1e-12)


def test_coverage_by_decile_drops_tied_edges():
    observed = np.array([1.0] * 6 + [2.0, 3.0, 4.0, 5.0]) * 3600
    table = coverage_by_decile(observed, observed - 1, observed + 1)
    assert list(table["decile"]) == [1, 2, 3, 4, 5]
    assert list(table["rows"]) == [6, 1, 1, 1, 1]
    assert (table["coverage"] == 1.0).all()


def test_coverage_by_decile_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="rows"):
        coverage_by_decile([1.0, 2.0], [0.0], [3.0, 3.0])


def test_coverage_by_decile_plot_is_a_compact_deterministic_png():
    table = coverage_by_decile(*hand_built_rows())
    png = coverage_by_decile_plot(table)
    assert_compact_png(png)
    assert coverage_by_decile_plot(table) == png
    assert coverage_by_decile_plot(table, nominal=0.8) != png



def test_calibrated_model_is_flat_by_predicted_decile_but_not_by_observed():
    """Binning by the observed time selects on the noise: the extremes look under-covered
    even when the intervals are exactly right. Binned by the prediction they are flat."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    n = 200_000
    predicted = rng.normal(20_000, 2_700, n)  # R² about 0.55 with noise sd 2,400
    observed = predicted + rng.normal(0, 2_400, n)
    half = norm.ppf(0.95) * 2_400
    by_predicted = coverage_by_decile(observed, predicted - half, predicted + half, predicted_sec=predicted)
    by_observed = coverage_by_decile(observed, predicted - half, predicted + half)
    assert by_predicted.attrs["binned_by"] == "predicted" and by_observed.attrs["binned_by"] == "observed"
    # 20,000 rows a decile: binomial sd 0.002, so 0.01 is 5 sd
    np.testing.assert_allclose(by_predicted["coverage"], 0.9, atol=0.01)
    assert by_observed["coverage"].iloc[[0, -1]].max() < 0.8 < by_observed["coverage"].iloc[4:6].min()


# ---------------------------------------------------------------- fixed margins


def _figures_drawn(monkeypatch) -> list:
    """Every figure the plots below turn into PNG bytes, kept for inspection."""
    from racedayai_bayes.lib.evaluation import plots
    from racedayai_bayes.lib.models.seed import plots as seed_plots

    figures, real = [], plots.png

    def keep(fig):
        figures.append(fig)
        return real(fig)

    monkeypatch.setattr(plots, "png", keep)
    monkeypatch.setattr(seed_plots, "png", keep)
    return figures


def test_plots_with_fixed_margins_keep_every_text_inside_the_image(monkeypatch):
    """The plots place their axes with margins in inches instead of tight_layout: no title,
    label, tick label, legend or annotation may fall outside the image, for the largest
    layouts they draw (five scales of four chains, 36 groups, a hexbin with its colour bar,
    ten deciles with the legend below). A text cut by the image's edge leaves ink in its
    outermost pixels; the texts other than tick labels (whose unused ones Matplotlib keeps
    undrawn) must also lie inside it whole."""
    from matplotlib.image import imread
    from matplotlib.text import Text

    figures = _figures_drawn(monkeypatch)
    rng = np.random.default_rng(0)
    sites = ("sigma_first", "sigma_returning", "tau", "sigma_course", "sigma_cell")
    draws = Draws({s: rng.lognormal(-2.5, 0.1, size=(4, 300)) for s in sites}, np.zeros((4, 300), dtype=bool), "test")
    ages = tuple(f"{s}{a}-{a + 4}" for s in "FM" for a in range(18, 80, 5))
    big_enc = Encoding(distance="140.6", age_levels=ages, cluster_levels=(-1, *range(9)), y_mean=45_000.0,
                       y_std=5_000.0, exp_mean=1.0, exp_std=0.5, default_cluster_idx=0)
    long_ages = ("M40-44", "Physically challenged / handcycle open", "F18-24")  # age groups are an open vocabulary
    long_enc = Encoding(distance="70.3", age_levels=long_ages, cluster_levels=CLUSTERS, y_mean=21_600.0,
                        y_std=3_000.0, exp_mean=1.0, exp_std=0.5, default_cluster_idx=1)
    observed = rng.normal(45_000, 6_000, 20_000)
    predicted = observed + rng.normal(0, 4_000, observed.size)
    pngs = [
        scale_rank_plot(draws, sites),
        group_effect_forest(make_draws(n_age=len(ages), n_cluster=10), big_enc),
        group_effect_forest(make_draws(n_age=len(long_ages)), long_enc),
        predicted_vs_observed(observed, predicted),
        predicted_vs_observed(observed[:500], predicted[:500]),
        coverage_by_decile_plot(coverage_by_decile(observed, predicted - 6_000, predicted + 6_000, predicted)),
        coverage_by_decile_plot(decile_table(observed, Prediction(predicted, np.full(observed.size, 4000.0),
                                                                  predicted - 6_000, predicted, predicted + 6_000),
                                             np.repeat(np.arange(200), 100).astype(str))),
        # every course named, 36 characters each: as many as a full-scale 70.3 (every 2nd named), and few
        effect_caterpillar(rng.normal(0, 0.05, (400, 230)), [f"IRONMAN 70.3 Course Number {i:03d} Westfield" for i in range(230)],
                           lambda e: 360 * e, "Course effects, 70.3: minutes at the mean finish time"),
        effect_caterpillar(rng.normal(0, 0.05, (400, 3)), ["A", "B", "C"], lambda e: 360 * e, "three courses"),
        elpd_difference_plot(pd.DataFrame([
            {"model": m, "against": "forecast", "group": g, "rows": 1000, "elpd_diff": d, "elpd_diff_se": 0.02}
            for m, d in (("seed_profile", 0.1), ("seed_asof", -0.2))
            for g in ("all", "first race", "returning", "known course", "new course")]), not_eligible={"seed_profile"}),
        field_forecast_plot(pd.DataFrame({"bayes_p50": observed[:300], "bayes_p05": observed[:300] - 4000,
                                          "bayes_p95": observed[:300] + 4000, "history_races": np.arange(300) % 3}),
                            "IRONMAN 70.3 West Kestrel 2027"),
    ]
    assert len(figures) == len(pngs)
    for fig, png in zip(figures, pngs):
        image = imread(io.BytesIO(png), format="png")[..., :3]
        frame = np.concatenate([image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3),
                                image[:, :2].reshape(-1, 3), image[:, -2:].reshape(-1, 3)])
        assert frame.min() > 0.99, f"ink at the edge of {fig.texts[0].get_text() if fig.texts else fig.axes[0].get_title()!r}"
        renderer = fig.canvas.get_renderer()
        width, height = fig.canvas.get_width_height()
        every_axes = [*fig.axes, *(child for ax in fig.axes for child in ax.child_axes)]  # the minutes axis of the forest
        ticks = {id(label) for ax in every_axes for axis in (ax.xaxis, ax.yaxis)
                 for tick in axis.get_major_ticks() + axis.get_minor_ticks() for label in (tick.label1, tick.label2)}
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in ticks]
        assert len(texts) >= 3
        for text in texts:
            box = text.get_window_extent(renderer)
            assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1, (
                f"{text.get_text()!r} at {box} is outside the {width} x {height} image")


def test_the_decile_plot_colours_each_decile_as_its_check_judges_it(monkeypatch):
    """Red exactly for the deciles check_coverage_by_decile counts outside the band: with their
    clustered 99% intervals, a decile just outside [0.85, 0.95] but within noise is not red,
    and an empty decile (tied predictions leave one without rows: NaN) passes in both."""
    from matplotlib.colors import to_hex

    from racedayai_bayes.lib.evaluation.diagnostics import check_coverage_by_decile

    figures = _figures_drawn(monkeypatch)
    table = pd.DataFrame({
        "decile": range(1, 6), "lower_h": [4.0, 4.5, 5.0, 5.5, 6.0], "upper_h": [4.5, 5.0, 5.5, 6.0, 6.5],
        "rows": [300, 0, 300, 300, 300], "coverage": [0.96, np.nan, 0.90, 0.70, 0.84],
        "below": [0.02, np.nan, 0.05, 0.2, 0.1], "above": [0.02, np.nan, 0.05, 0.1, 0.06],
        "se": [0.01, np.nan, 0.01, 0.01, 0.001],
    })
    coverage_by_decile_plot(table)
    bars = [p for p in figures[0].axes[0].patches if p.get_width() == pytest.approx(0.7)]
    red = [to_hex(b.get_facecolor()) == to_hex("C3") for b in bars]
    check = check_coverage_by_decile(table)
    assert check.extra["deciles_outside"] == sum(red) == 2  # 0.70 and 0.84 (+- 0.003); not 0.96 (+- 0.026), not the empty one
    assert red == [False, False, False, True, True]
