"""Helpers of the end-to-end UI test: a `dagster dev` process and a small GraphQL client.

`dagster dev` starts the webserver, the daemon and a code server; it runs in its own process
group (session) so that teardown can stop all of them, and the run workers they start, at once.
"""


import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from racedayai_bayes.cli import LOG_FOLDER

REPO = Path(__file__).resolve().parents[1]
WORKSPACE = REPO / "workspace.yaml"
LOCATION = "racedayai_bayes"
REPOSITORY = "__repository__"  # the repository Dagster makes of a module's Definitions

STARTUP_TIMEOUT_S = 120
RUN_TIMEOUT_S = 300  # one refit
PREVIOUS_REFIT_LOG = "refit-20261201T000000Z.log"


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, details: Callable[[], str] = str) -> object:
    """Poll `condition` until it returns something truthy; fail after `timeout_s` seconds.

    `details` is called on timeout; its text (for example a log tail) goes into the failure message.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{details()}", pytrace=False)
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def stop_group(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """Stop `proc` (started with start_new_session) and everything in its process group.

    SIGTERM to dagster dev alone lets it shut its webserver, daemon and code servers down in
    order; whatever is left after `grace_s` (run workers, a hung child) gets SIGKILL.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


class GraphQLError(AssertionError):
    pass


@dataclass
class DagsterDev:
    """A running `dagster dev`: its base URL, log file and a GraphQL client."""

    proc: subprocess.Popen
    url: str
    log_path: Path
    home: Path | None = None

    def graphql(self, query: str, variables: dict | None = None, timeout_s: float = 60) -> dict:
        resp = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout_s)
        resp.raise_for_status()
        body = resp.json()
        if body.get("errors"):
            raise GraphQLError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def log_tail(self) -> str:
        return f"--- tail of dagster dev's output ({self.log_path}) ---\n{tail(self.log_path)}"


_WORKSPACE_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def _location_loaded(dev: DagsterDev) -> bool:
    if dev.proc.poll() is not None:
        pytest.fail(f"dagster dev exited with code {dev.proc.returncode}\n{dev.log_tail()}", pytrace=False)
    try:
        data = dev.graphql(_WORKSPACE_QUERY, timeout_s=10)
    except (requests.RequestException, GraphQLError):
        return False  # the webserver is not up yet
    for entry in data["workspaceOrError"].get("locationEntries", []):
        if entry["name"] == LOCATION and entry["loadStatus"] == "LOADED":
            loaded = entry["locationOrLoadError"]
            if loaded["__typename"] != "RepositoryLocation":
                pytest.fail(f"code location {LOCATION} failed to load: {loaded.get('message')}", pytrace=False)
            return True
    return False


def _prepare_instance(home: Path) -> None:
    """Create the SQLite storages before dagster dev's processes race to create them."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
        instance.all_instigator_state()


@contextmanager
def run_dagster_dev(folder: Path, inputs: Path) -> Iterator[DagsterDev]:
    """Run `dagster dev` on a fresh instance under `folder`, reading `inputs`; stop it on exit."""
    home = folder / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    _prepare_instance(home)
    # a refit log from before the UI started: it must still be there once the UI has run
    (home / LOG_FOLDER).mkdir()
    (home / LOG_FOLDER / PREVIOUS_REFIT_LOG).write_text("a refit before the UI\n")
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RACEDAYAI_INPUT_DIR": str(inputs),
        "RACEDAYAI_OUTPUT_DIR": str(folder / "outputs"),
        "JAX_PLATFORMS": "cpu",
    }
    env.pop("RACEDAYAI_ALERT_WEBHOOK", None)  # never post alerts from a test
    log_path = folder / "dagster-dev.log"
    cmd = [str(Path(sys.executable).with_name("dagster")), "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(WORKSPACE)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    dev = DagsterDev(proc=proc, url=f"http://127.0.0.1:{port}", log_path=log_path, home=home)
    try:
        wait_for(lambda: _location_loaded(dev), STARTUP_TIMEOUT_S, "dagster dev to serve the code location", dev.log_tail)
        yield dev
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def dagster_dev(small_inputs, tmp_path_factory) -> Iterator[DagsterDev]:
    """`dagster dev` on a fresh instance reading the small synthetic inputs, for one test module."""
    with run_dagster_dev(tmp_path_factory.mktemp("dagster_dev"), small_inputs) as dev:
        yield dev


# --- launching runs and following them ---------------------------------------------------

_LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""

_RUN_STATUS = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } ... on Error { message } }
}
"""

_RUN_LOGS = """
query RunLogs($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    ... on EventConnection { events { __typename ... on MessageEvent { level message } } }
    ... on Error { message }
  }
}
"""

FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def launch_run(dev: DagsterDev, job: str, run_config: dict, tags: dict[str, str]) -> str:
    """Launch `job` of the code location through the GraphQL API; return the run id."""
    params = {
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "jobName": job},
        "runConfigData": run_config,
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
    }
    result = dev.graphql(_LAUNCH_RUN, {"executionParams": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", f"launchRun failed: {result}"
    return result["run"]["runId"]


def run_status(dev: DagsterDev, run_id: str) -> str:
    result = dev.graphql(_RUN_STATUS, {"runId": run_id})["runOrError"]
    assert result["__typename"] == "Run", f"run {run_id}: {result}"
    return result["status"]


def run_messages(dev: DagsterDev, run_id: str) -> str:
    """The run's event log, one `LEVEL message` line per event."""
    logs = dev.graphql(_RUN_LOGS, {"runId": run_id})["logsForRun"]
    if "events" not in logs:
        return f"(no event log: {logs})"
    return "\n".join(f"{e.get('level', '')} {e['__typename']}: {e.get('message', '')}" for e in logs["events"])


def wait_for_runs(dev: DagsterDev, run_ids: list[str], timeout_s: float = RUN_TIMEOUT_S) -> dict[str, str]:
    """Poll until every run has finished; return their final statuses."""
    statuses: dict[str, str] = {}

    def all_finished() -> bool:
        statuses.update({run_id: run_status(dev, run_id) for run_id in run_ids})
        return all(s in FINISHED for s in statuses.values())

    wait_for(all_finished, timeout_s, "the runs to finish", lambda: f"last statuses: {statuses}\n{dev.log_tail()}")
    return statuses


# --- the browser ---------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; `make system-deps` installs it
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SKIP_ENV = "RACEDAYAI_SKIP_E2E"


def require_chromium() -> None:
    """Skip if RACEDAYAI_SKIP_E2E=1; otherwise fail (never skip silently) if Chromium is missing."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} not found: the UI test drives Debian's Chromium. Run `make system-deps` "
            f"(or set {SKIP_ENV}=1 to skip the end-to-end tests)",
            pytrace=False,
        )


@contextmanager
def chromium_context(profile_dir: Path, viewport: dict[str, int]):
    """A headless Chromium (the system's, never a Playwright download) with a fresh profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, viewport=viewport
        )
        # dagster dev greets a new browser with a "Join the Dagster community" dialog that
        # covers the page; mark it as dismissed, as clicking its Skip button would.
        context.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
        try:
            yield context
        finally:
            context.close()
