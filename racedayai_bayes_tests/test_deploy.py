"""deploy/dagster.yaml: the code location on PostgreSQL storage with the Kubernetes run launcher.

A real PostgreSQL server (the Debian package; `make system-deps` installs it) is started in
a temporary folder for these tests. No Kubernetes cluster is available, so no pod is ever
launched; the run launcher is built from the real configuration with one honest change:
`load_incluster_config: true` reads a service-account token that exists only inside a
cluster, so the test's copy loads a dummy kubeconfig instead (`load_incluster_config: false`,
`kubeconfig_file`), whose API server address refuses connections. Every other setting is
the file's own.

Stored asset values go to memory://, fsspec's in-process object store, standing in for
s3:// or gs://: runs in different pods share nothing but Postgres and the store.
"""

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from upath import UPath

from racedayai_bayes.definitions import defs
from racedayai_bayes.defs.resources import STORAGE_DIR_ENV, PipelinePaths
from racedayai_bayes.defs.schedules import DISTANCE_TAG, REFIT_JOB

from .conftest import REPO, pipeline_resources

DEPLOY_YAML = REPO / "deploy" / "dagster.yaml"
PG_USER, PG_PASSWORD, PG_DB = "racedayai", "s3cret-for-tests", "dagster"
LAUNCHER_ENV = {
    "RACEDAYAI_IMAGE": "registry.example.com/racedayai-bayes:test",
    "RACEDAYAI_ALERT_WEBHOOK": "",
}
DUMMY_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
  - name: no-cluster
    cluster: {server: "https://127.0.0.1:9"}
users:
  - name: no-user
    user: {token: not-a-real-token}
contexts:
  - name: no-cluster
    context: {cluster: no-cluster, user: no-user, namespace: racedayai}
current-context: no-cluster
"""


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        message = "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): run `make system-deps`"
        if os.environ.get("RACEDAYAI_SKIP_E2E") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1 in a temporary folder; yields its connection settings.

    Postgres refuses to run as root, so under root the server runs as the `postgres` OS user
    (the owner of the temporary folder, which lives outside root's private pytest folder).
    """
    bin_dir = _postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="racedayai-pg-"))
    data, log, password_file = folder / "data", folder / "server.log", folder / "password"
    password_file.write_text(PG_PASSWORD + "\n")
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        owner = pwd.getpwnam("postgres")
        for path in (folder, password_file):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def run(*args: str) -> None:
        out = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        server_log = log.read_text() if log.exists() else ""
        assert out.returncode == 0, f"{args[0]} failed:\n{out.stdout}\n{out.stderr}\n{server_log}"

    try:
        run(
            str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={password_file}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync",
        )
        port = _free_port()
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
        try:
            import psycopg2

            settings = {"host": "127.0.0.1", "port": port, "user": PG_USER, "password": PG_PASSWORD}
            with contextlib.closing(psycopg2.connect(dbname="postgres", **settings)) as conn:
                conn.autocommit = True
                conn.cursor().execute(f"CREATE DATABASE {PG_DB}")
            yield {**settings, "dbname": PG_DB}
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def store():
    """A memory:// folder standing in for s3://bucket/racedayai."""
    root = UPath(f"memory://racedayai-deploy-{uuid.uuid4().hex}")
    yield root
    if root.exists():
        root.fs.rm(root.path, recursive=True)


@pytest.fixture(scope="module")
def deploy_env(postgres, store, small_inputs) -> dict[str, str]:
    """The environment variables deploy/dagster.yaml and the code location read."""
    return {
        "DAGSTER_PG_USERNAME": postgres["user"],
        "DAGSTER_PG_PASSWORD": postgres["password"],
        "DAGSTER_PG_HOST": postgres["host"],
        "DAGSTER_PG_PORT": str(postgres["port"]),
        "DAGSTER_PG_DB": postgres["dbname"],
        "RACEDAYAI_INPUT_DIR": str(small_inputs),
        "RACEDAYAI_OUTPUT_DIR": str(store / "outputs"),
        STORAGE_DIR_ENV: str(store / "storage"),
        "RACEDAYAI_START_LISTS_DIR": str(small_inputs.parent / "start_lists"),  # local: the sensor lists it
        **LAUNCHER_ENV,
    }


@pytest.fixture(scope="module")
def deploy_home(tmp_path_factory) -> Path:
    """A DAGSTER_HOME holding deploy/dagster.yaml, with the cluster login swapped (see above)."""
    home = tmp_path_factory.mktemp("deploy_home")
    config = yaml.safe_load(DEPLOY_YAML.read_text())
    launcher = config["run_launcher"]["config"]
    assert launcher["load_incluster_config"] is True
    (home / "kubeconfig").write_text(DUMMY_KUBECONFIG)
    launcher.update(load_incluster_config=False, kubeconfig_file=str(home / "kubeconfig"))
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return home


@pytest.fixture
def instance(deploy_home, deploy_env, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(deploy_home))
    for key, value in deploy_env.items():
        monkeypatch.setenv(key, value)
    with dg.DagsterInstance.get() as instance:
        yield instance


def test_instance_uses_postgres_storage_and_the_kubernetes_launcher(instance):
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert instance.run_storage.postgres_url.startswith("postgresql+psycopg2://")

    launcher = instance.run_launcher
    assert isinstance(launcher, K8sRunLauncher)
    assert launcher.resources == {
        "requests": {"cpu": "2", "memory": "6Gi"},
        "limits": {"cpu": "2", "memory": "6Gi"},
    }
    assert launcher.job_namespace == "racedayai"
    assert launcher.service_account_name == "racedayai-dagster"
    assert launcher.job_image == LAUNCHER_ENV["RACEDAYAI_IMAGE"]
    assert {"RACEDAYAI_INPUT_DIR", "RACEDAYAI_OUTPUT_DIR", "RACEDAYAI_START_LISTS_DIR",
            "RACEDAYAI_ALERT_WEBHOOK"} <= set(launcher.env_vars)
    assert launcher.postgres_password_secret == "racedayai-postgresql"

    queue = instance.get_concurrency_config().run_queue_config
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert queue.max_concurrent_runs == 2
    assert {(limit["key"], limit["limit"]) for limit in queue.tag_concurrency_limits} == {
        (DISTANCE_TAG, 1), ("dagster/partition", 1)
    }
    assert instance.run_monitoring_enabled


def test_dagster_definitions_validate_with_the_deploy_instance(deploy_home, deploy_env):
    env = {**os.environ, **deploy_env, "DAGSTER_HOME": str(deploy_home), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "racedayai_bayes.definitions"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "validation successful" in (out.stdout + out.stderr).lower()


def test_a_refit_run_record_is_stored_in_postgres(instance, postgres):
    job = defs.resolve_job_def(REFIT_JOB)
    tags = {"dagster/partition": "70.3", DISTANCE_TAG: "70.3"}
    run = instance.create_run_for_job(job, tags=tags)

    import psycopg2

    with contextlib.closing(psycopg2.connect(**postgres)) as conn, conn.cursor() as cur:
        cur.execute("SELECT pipeline_name, status FROM runs WHERE run_id = %s", (run.run_id,))
        assert cur.fetchall() == [(REFIT_JOB, "NOT_STARTED")]
    stored = instance.get_run_by_id(run.run_id)
    assert stored.tags[DISTANCE_TAG] == "70.3" and stored.status == dg.DagsterRunStatus.NOT_STARTED
    instance.delete_run(run.run_id)


def test_runs_share_stored_values_through_the_object_store(instance, postgres, store, small_inputs):
    """Two runs, as two pods would run them: they share only Postgres and the object store.

    The first run reads the inputs and builds the model frame; the second rebuilds the
    model frame from the three inputs the first run stored (RACEDAYAI_STORAGE_DIR).
    """
    resources = pipeline_resources(small_inputs, store / "outputs")  # stored values: RACEDAYAI_STORAGE_DIR
    inputs = ["athlete_race", "athlete_profile", "cluster_assignments"]
    first = dg.materialize(list(defs.assets), selection=[*inputs, "model_frame"], resources=resources, instance=instance)
    second = dg.materialize(list(defs.assets), selection=["model_frame"], resources=resources, instance=instance)
    assert first.success and second.success

    import psycopg2

    with contextlib.closing(psycopg2.connect(**postgres)) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, status FROM runs WHERE run_id IN %s", ((first.run_id, second.run_id),))
        assert dict(cur.fetchall()) == {first.run_id: "SUCCESS", second.run_id: "SUCCESS"}
    latest = instance.get_latest_materialization_event(dg.AssetKey("model_frame"))
    assert latest.run_id == second.run_id

    storage = store / "storage"
    assert sorted(p.name for p in storage.iterdir()) == sorted(f"{name}.pkl" for name in [*inputs, "model_frame"])
    pd.testing.assert_frame_equal(second.output_for_node("model_frame", "model_frame"), first.output_for_node("model_frame", "model_frame"))
    # the second run loaded its three inputs from the store (it did not read the CSVs)
    events = instance.all_logs(second.run_id, of_type=dg.DagsterEventType.LOADED_INPUT)
    loaded = [e.dagster_event.event_specific_data for e in events]
    assert sorted((d.input_name, d.manager_key) for d in loaded) == [(name, "io_manager") for name in sorted(inputs)]


def test_paths_write_outputs_to_a_url_and_read_inputs_locally(tmp_path):
    paths = PipelinePaths(input_dir=str(tmp_path), output_dir="s3://bucket/racedayai")
    assert paths.output_file("bayesian_predictions_70.3.csv") == UPath("s3://bucket/racedayai/bayesian_predictions_70.3.csv")
    assert paths.input_file("athlete_race.csv") == tmp_path / "athlete_race.csv"
    local = PipelinePaths(input_dir=f"file://{tmp_path}", output_dir=str(tmp_path / "out"))
    assert local.output_file("x.csv") == tmp_path / "out" / "x.csv"
    assert local.input_file("athlete_race.csv") == tmp_path / "athlete_race.csv"
    with pytest.raises(ValueError, match="input_dir must be a local folder"):
        PipelinePaths(input_dir="s3://bucket/cleaned", output_dir=str(tmp_path)).input_file("athlete_race.csv")


def test_helm_values_say_what_deploy_dagster_yaml_says():
    instance = yaml.safe_load(DEPLOY_YAML.read_text())
    values = yaml.safe_load((REPO / "deploy" / "values.yaml").read_text())
    launcher = instance["run_launcher"]["config"]
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert values["runLauncher"]["type"] == instance["run_launcher"]["class"] == "K8sRunLauncher"
    assert k8s["resources"] == launcher["resources"]
    assert k8s["jobNamespace"] == launcher["job_namespace"]
    assert values["global"]["serviceAccountName"] == launcher["service_account_name"]
    assert values["global"]["postgresqlSecretName"] == launcher["postgres_password_secret"]
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    runs = instance["concurrency"]["runs"]
    assert (queue["maxConcurrentRuns"], queue["tagConcurrencyLimits"]) == (runs["max_concurrent_runs"], runs["tag_concurrency_limits"])
    assert values["postgresql"]["postgresqlScheme"] == instance["storage"]["postgres"]["postgres_db"]["scheme"]
    (code,) = values["dagster-user-deployments"]["deployments"]
    assert code["dagsterApiGrpcArgs"] == ["--module-name", "racedayai_bayes.definitions"]
