"""End to end, as a person uses it: `dagster dev`, a refit of each distance, then the UI in a browser.

The module starts `dagster dev` on a fresh instance reading small synthetic inputs, launches
the refit job once per distance through the GraphQL API (the queued run coordinator and the
daemon run them), and then looks at the UI in headless Chromium: the asset graph with every
model, the two partitions of the published model, and the checks of a model and of the
published model. Screenshots go to each test's tmp_path; with
RACEDAYAI_SAVE_SCREENSHOTS=1 the graph and the checks are also written to docs/ for the README.
"""


import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from racedayai_bayes.cli import LOG_FOLDER
from racedayai_bayes.defs.schedules import DISTANCE_TAG, REFIT_JOB

from .conftest import FRAME_ASSETS, MODEL_ASSETS, REFIT_ASSETS, REPO, refit_config
from .e2e_support import (
    PREVIOUS_REFIT_LOG,
    DagsterDev,
    chromium_context,
    dagster_dev,  # noqa: F401  (a fixture)
    launch_run,
    require_chromium,
    run_messages,
    wait_for_runs,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DISTANCES = ("70.3", "140.6")
ASSETS = (*FRAME_ASSETS, *REFIT_ASSETS)
# checks that must pass on the small world (the WARN ones may warn on so few rows)
MODEL_CHECKS = ("rhat_max", "ess_bulk_min", "proposal_khat", "predictive_coverage")
PUBLISH_CHECKS = ("publishable", "published_coverage")
UI_TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1600, "height": 1000}
GRAPH_VIEWPORT = {"width": 2400, "height": 1500}
SAVE_ENV = "RACEDAYAI_SAVE_SCREENSHOTS"


@pytest.fixture(scope="module", autouse=True)
def _chromium_present():
    require_chromium()  # before starting anything


@pytest.fixture(scope="module")
def refit_runs(dagster_dev: DagsterDev) -> dict[str, str]:
    """Refit both distances at once through the run queue, tagged as the weekly schedule tags them.

    Both runs are launched before either is awaited, as the schedule does. The checks are
    partitioned by distance, so each partition keeps its own check status in the UI even
    when the runs interleave. Returns {distance: run id}.
    """
    run_config = refit_config()
    run_ids = {
        distance: launch_run(dagster_dev, REFIT_JOB, run_config, {"dagster/partition": distance, DISTANCE_TAG: distance})
        for distance in DISTANCES
    }
    statuses = wait_for_runs(dagster_dev, list(run_ids.values()))
    for distance, run_id in run_ids.items():
        if statuses[run_id] != "SUCCESS":
            log = run_messages(dagster_dev, run_id)[-8000:]
            pytest.fail(f"the refit of {distance} ended {statuses[run_id]}; its event log:\n{log}", pytrace=False)
    return run_ids


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium_context(tmp_path_factory.mktemp("chromium-profile"), VIEWPORT) as context:
        yield context


@pytest.fixture
def page(browser, refit_runs, tmp_path):
    """A browser tab, opened once both refits have succeeded."""
    page = browser.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    yield page
    if not page.is_closed():
        page.screenshot(path=tmp_path / "last-page.png")  # what the page showed, also on failure
        page.close()


def shows(locator) -> None:
    expect(locator).to_be_visible(timeout=UI_TIMEOUT_MS)


def screenshot(page, tmp_path: Path, name: str, docs_name: str | None = None) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=path)
    if docs_name and os.environ.get(SAVE_ENV) == "1":
        shutil.copy(path, REPO / "docs" / docs_name)


def graph_button(page, icon: str):
    """A button of the asset graph, named by its icon (the navigation bar has one named alike)."""
    return page.locator("button:not(nav *)").filter(has=page.get_by_role("img", name=icon, exact=True))


_RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status tags { key value } assetMaterializations { assetKey { path } partition } }
    ... on Error { message }
  }
}
"""


def test_refit_runs_succeed(dagster_dev, refit_runs):
    """Each distance's run, as the instance recorded it: succeeded, tagged and partitioned as
    launched, and it materialised every model, the published one and the predictions of its own distance only."""
    assert len(set(refit_runs.values())) == len(DISTANCES)
    for distance, run_id in refit_runs.items():
        run = dagster_dev.graphql(_RUN, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        assert run["status"] == "SUCCESS"
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert tags["dagster/partition"] == distance and tags[DISTANCE_TAG] == distance
        partitions = {
            "/".join(m["assetKey"]["path"]): m["partition"] for m in run["assetMaterializations"]
        }
        for asset in (*MODEL_ASSETS, "holdout_split", "published_model", "bayesian_predictions"):
            assert partitions[asset] == distance, asset


def test_the_ui_leaves_the_refit_logs_where_they_are(dagster_dev, refit_runs):
    """`racedayai-bayes refit` keeps its logs in $DAGSTER_HOME/refit_logs/. They once lived in
    logs/, Dagster's telemetry cache, which `dagster dev` moves to .logs_queue/ and empties
    as it starts (in about 25 s here), telemetry disabled or not: every refit log vanished."""
    log = dagster_dev.home / LOG_FOLDER / PREVIOUS_REFIT_LOG
    assert log.read_text() == "a refit before the UI\n"


def test_asset_graph_shows_every_asset(page, dagster_dev, tmp_path):
    # Below about 0.6 zoom the graph draws minimal nodes, whose names are cut short
    # ("clust…_assignments"); fitted into 1600 px the whole graph is drawn that small.
    page.set_viewport_size(GRAPH_VIEWPORT)
    page.goto(f"{dagster_dev.url}/asset-groups")  # Lineage: the global asset graph, groups collapsed
    shows(page.get_by_text("outputs", exact=True).first)
    # make room for the graph, then open the groups; the graph zooms to fit as it opens them
    hide_navigation = page.get_by_role("button", name="Hide navigation")
    if hide_navigation.is_visible():  # the browser profile remembers it hidden
        hide_navigation.click()
    graph_button(page, "panel_show_right").click()  # the group tree beside the graph
    graph_button(page, "settings").click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")
    for asset in ASSETS:
        shows(page.get_by_text(asset, exact=True).first)
    shows(page.get_by_text("100% filled").first)  # the partitioned assets' partitions
    screenshot(page, tmp_path, "asset-graph", "ui-asset-graph.png")


def test_published_model_partitions_materialised(page, dagster_dev, refit_runs, tmp_path):
    page.goto(f"{dagster_dev.url}/assets/published_model?view=partitions")
    shows(page.get_by_text(f"Materialized ({len(DISTANCES)})"))
    shows(page.get_by_text("Missing (0)"))
    shows(page.get_by_text("Failed (0)"))
    screenshot(page, tmp_path, "posterior-partitions")
    for distance in DISTANCES:
        page.get_by_text(distance, exact=True).first.click()
        # the partition's latest materialisation links to the run launched for it
        shows(page.get_by_role("link", name=refit_runs[distance][:8], exact=True))
        shows(page.get_by_text("Materialized", exact=True).first)
        screenshot(page, tmp_path, f"published-partition-{distance}")


@pytest.mark.parametrize("asset, checks, docs_name", [
    ("posterior_forecast", MODEL_CHECKS, None),
    ("published_model", PUBLISH_CHECKS, "ui-checks.png"),
])
def test_checks_passed(page, dagster_dev, tmp_path, asset, checks, docs_name):
    page.goto(f"{dagster_dev.url}/assets/{asset}?view=checks")
    for check in checks:
        # each row of the check list: the check's name (its title) and its latest status
        row = page.get_by_title(check, exact=True).locator("xpath=..")
        shows(row)
        shows(row.get_by_text("Succeeded", exact=True))
    screenshot(page, tmp_path, f"{asset}-checks", docs_name)
    for check in checks:
        # its execution history: one passed evaluation per distance, none failed
        page.get_by_title(check, exact=True).click()
        page.get_by_role("tab", name="Execution history").click()
        evaluations = page.get_by_role("row").filter(has_text=re.compile(r"Passed|Failed"))
        expect(evaluations).to_have_count(len(DISTANCES), timeout=UI_TIMEOUT_MS)
        expect(evaluations.filter(has_text="Passed")).to_have_count(len(DISTANCES), timeout=UI_TIMEOUT_MS)
        screenshot(page, tmp_path, f"check-{check}-history")
