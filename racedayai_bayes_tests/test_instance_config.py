"""The project's dagster.yaml, loaded as the instance (fast; test_defs_concurrency.py runs it).

The run queue is configured in the `concurrency:` block; the daemon reads its limits through
`DagsterInstance.get_concurrency_config()`, so that is what these tests read too.
"""

import dagster as dg
import yaml

from racedayai_bayes.defs.schedules import DISTANCE_TAG

from .conftest import REPO

PER_DISTANCE = [
    {"key": DISTANCE_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
    {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
]


def test_run_queue_holds_two_runs_and_one_refit_per_distance(dagster_home):
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 2
        assert queue.tag_concurrency_limits == PER_DISTANCE


def test_no_concurrency_pools_are_configured(dagster_home):
    """Each run fits one posterior, so the run limits already cap concurrent fits at two."""
    with dg.DagsterInstance.get() as instance:
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit is None and pools.pool_granularity is None


def test_tick_retention(dagster_home):
    with dg.DagsterInstance.get() as instance:
        retention = instance.get_settings("retention")
    assert retention["schedule"] == {"purge_after_days": 365}
    assert retention["sensor"] == {"purge_after_days": {"skipped": 7, "failure": 30, "success": 365}}


def test_config_uses_the_concurrency_block_not_the_legacy_run_queue():
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert "run_queue" not in config and "run_coordinator" not in config
    assert config["concurrency"]["runs"]["tag_concurrency_limits"] == PER_DISTANCE


def test_deploy_instance_has_the_same_run_limits():
    local = yaml.safe_load((REPO / "dagster.yaml").read_text())
    deploy = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    assert deploy["concurrency"]["runs"] == local["concurrency"]["runs"]
    assert deploy["retention"] == local["retention"]


def test_the_report_warns_when_the_temporary_folder_is_nearly_full(monkeypatch):
    # the disk-full failure of a CI run (2026-12-05) showed as 'disk I/O error' deep in SQLite
    import collections
    import shutil

    from . import conftest

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(100e9, 99e9, 0.9e9))
    header = conftest.pytest_report_header(None)
    assert header.startswith("WARNING: 0.9 GB free") and "No space left on device" in header
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(100e9, 50e9, 50e9))
    assert conftest.pytest_report_header(None) is None
