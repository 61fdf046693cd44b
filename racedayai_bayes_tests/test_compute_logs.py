"""The local instance's compute-log manager (racedayai_bayes/compute_logs.py): each step's
stdout and stderr are captured in files, as by Dagster's local manager, and every byte also
reaches the streams the step process had, while the step runs and its last lines included."""

import io
import os
import select
import shutil
import subprocess
import sys
import textwrap
import time

import dagster as dg
import pytest

from dagster._core.instance.ref import InstanceRef

from racedayai_bayes.compute_logs import CLOSE_WAIT_S, MirroredComputeLogManager, line_pieces

from .conftest import REPO

# A "step" in a process of its own, whose stdout and stderr are pipes (as a step process's
# are the refit command's): it writes through Python, through the file descriptors and from
# a child process, and its last writes come just before the capture ends, well within one
# polling interval of the mirror.
STEP = textwrap.dedent("""
    import os, subprocess, sys
    from racedayai_bayes.compute_logs import MirroredComputeLogManager

    manager = MirroredComputeLogManager(base_dir=sys.argv[1])
    print("before the step", flush=True)
    with manager.capture_logs(["run", "compute_logs", "step"]):
        print("python stdout", flush=True)
        sys.stderr.write("python stderr\\n")
        subprocess.run([sys.executable, "-c", "import sys; print('child stdout'); sys.stderr.write('child stderr\\\\n')"], check=True)
        for i in range(2000):
            os.write(1, b"burst %d\\n" % i)
        os.write(1, b"a last line without its newline")
        os.write(2, b"STEP_FAILURE, the last line\\n")
    print("after the step", flush=True)
""")

# A step that waits, inside its capture, until its test has read its first line from the
# step process's own stdout: the line was copied while the step still ran.
LIVE = textwrap.dedent("""
    import os, sys
    from racedayai_bayes.compute_logs import MirroredComputeLogManager

    manager = MirroredComputeLogManager(base_dir=sys.argv[1])
    with manager.capture_logs(["run", "compute_logs", "live"]):
        os.write(1, b"while the step runs\\n")
        sys.stdin.readline()  # the test answers once it has read that line
        os.write(1, b"at its end\\n")
""")


def _run(script: str, tmp_path, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, str(tmp_path / "storage")], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=120)


def test_every_line_a_step_writes_reaches_its_streams_and_its_capture_files(tmp_path):
    proc = _run(STEP, tmp_path)
    assert proc.returncode == 0, proc.stderr
    burst = "".join(f"burst {i}\n" for i in range(2000))
    last = "a last line without its newline"
    # the streams the process had: everything, in order, the last lines included
    assert proc.stdout == "before the step\npython stdout\nchild stdout\n" + burst + last + "after the step\n"
    assert proc.stderr == "python stderr\nchild stderr\nSTEP_FAILURE, the last line\n"
    # the capture files the UI shows: the step's own output only, and the completion marker
    folder = tmp_path / "storage" / "run" / "compute_logs"
    assert (folder / "step.out").read_text() == "python stdout\nchild stdout\n" + burst + last
    assert (folder / "step.err").read_text() == "python stderr\nchild stderr\nSTEP_FAILURE, the last line\n"
    assert (folder / "step.complete").exists()


def test_a_step_s_lines_are_copied_while_it_runs(tmp_path):
    with subprocess.Popen([sys.executable, "-c", LIVE, str(tmp_path / "storage")], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        try:
            # the step waits for us: its line can only come from a copy made while it runs
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready, "no line from the step within 60 s of its start"
            assert proc.stdout.readline() == b"while the step runs\n"
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            assert proc.stdout.read() == b"at its end\n"
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_a_stream_nobody_reads_any_more_does_not_stop_the_step(tmp_path):
    """The step's stdout is a pipe whose reader has gone: the copy stops, the step ends
    normally and its capture file holds everything."""
    script = STEP.replace('print("before the step", flush=True)', "").replace('print("after the step", flush=True)', "")
    read_end, write_end = os.pipe()
    os.close(read_end)
    started = time.monotonic()
    try:
        proc = _run(script, tmp_path, stdout=write_end)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    # the other stream was copied as usual, and nothing waited for the dead one's reader
    assert proc.stderr == "python stderr\nchild stderr\nSTEP_FAILURE, the last line\n"
    assert time.monotonic() - started < CLOSE_WAIT_S
    assert (tmp_path / "storage" / "run" / "compute_logs" / "step.out").read_text().endswith("burst 1999\na last line without its newline")
    assert (tmp_path / "storage" / "run" / "compute_logs" / "step.complete").exists()


def test_a_stream_without_a_descriptor_is_left_alone(tmp_path, monkeypatch):
    """As Dagster's manager does: a stream with no file descriptor (a test's capture) is not
    redirected, and the capture is still marked complete."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    manager = MirroredComputeLogManager(base_dir=str(tmp_path))
    with manager.capture_logs(["run", "compute_logs", "step"]):
        print("to the stream")
    assert out.getvalue() == "to the stream\n" and (tmp_path / "run" / "compute_logs" / "step.complete").exists()


@pytest.mark.parametrize(("data", "pieces", "rest"), [
    (b"", [], b""),
    (b"no newline yet", [], b"no newline yet"),
    (b"a\nbb\nccc", [b"a\nbb\n"], b"ccc"),
    (b"a\n" * 3000 + b"x", [b"a\n" * 2048, b"a\n" * 952], b"x"),
    (b"a\n" + b"y" * 5000 + b"\nb\n", [b"a\n", b"y" * 5000 + b"\n", b"b\n"], b""),
])
def test_lines_are_written_whole_in_pieces_a_pipe_never_mixes(data, pieces, rest):
    assert line_pieces(data) == (pieces, rest)


def test_the_project_instance_keeps_the_captures_under_its_storage_folder(dagster_home):
    instance = dg.DagsterInstance.get()
    try:
        manager = instance.compute_log_manager
        assert isinstance(manager, MirroredComputeLogManager)
        assert manager._base_dir == str(dagster_home / "storage")  # where Dagster's default local manager keeps them
    finally:
        instance.dispose()


def test_an_instance_of_another_folder_keeps_its_own_captures(tmp_path, monkeypatch):
    """Dagster's commands run without DAGSTER_HOME on a temporary instance configured by the
    dagster.yaml of the current folder: its captures go under its own root, as Dagster's
    default manager's do, whatever DAGSTER_HOME says."""
    config = tmp_path / "config"
    config.mkdir()
    shutil.copy(REPO / "dagster.yaml", config / "dagster.yaml")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    root = tmp_path / "instance"
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(root), config_dir=str(config)))
    try:
        assert isinstance(instance.compute_log_manager, MirroredComputeLogManager)
        assert instance.compute_log_manager._base_dir == str(root / "storage")
    finally:
        instance.dispose()
