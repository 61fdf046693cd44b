"""The local instance's compute-log manager (racedayai_bayes/compute_logs.py): each step's
stdout and stderr are captured in files, as by Dagster's local manager, and every byte also
reaches the streams the step process had, its last lines included."""

import subprocess
import sys
import textwrap

import dagster as dg

from racedayai_bayes.compute_logs import MirroredComputeLogManager

# A "step" in a process of its own, whose stdout and stderr are pipes (as a step process's
# are the refit command's): it writes through Python, through the file descriptors and from
# a child process, and its last writes come just before the capture ends, well within one
# polling interval of the mirror.
STEP = textwrap.dedent("""
    import os, subprocess, sys
    from racedayai_bayes.compute_logs import MirroredComputeLogManager

    manager = MirroredComputeLogManager(base_dir=sys.argv[1])
    print("before the step")
    with manager.capture_logs(["run", "compute_logs", "step"]):
        print("python stdout")
        sys.stderr.write("python stderr\\n")
        subprocess.run([sys.executable, "-c", "import sys; print('child stdout'); sys.stderr.write('child stderr\\\\n')"], check=True)
        for i in range(2000):
            os.write(1, b"burst %d\\n" % i)
        os.write(2, b"STEP_FAILURE, the last line\\n")
    print("after the step")
""")


def _step(tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", STEP, str(tmp_path / "storage")], capture_output=True, text=True, timeout=120)


def test_every_line_a_step_writes_reaches_its_streams_and_its_capture_files(tmp_path):
    proc = _step(tmp_path)
    assert proc.returncode == 0, proc.stderr
    burst = "".join(f"burst {i}\n" for i in range(2000))
    # the streams the process had: everything, in order, the last line included
    assert proc.stdout == "before the step\npython stdout\nchild stdout\n" + burst + "after the step\n"
    assert proc.stderr == "python stderr\nchild stderr\nSTEP_FAILURE, the last line\n"
    # the capture files the UI shows: the step's own output only, and the completion marker
    folder = tmp_path / "storage" / "run" / "compute_logs"
    assert (folder / "step.out").read_text() == "python stdout\nchild stdout\n" + burst
    assert (folder / "step.err").read_text() == "python stderr\nchild stderr\nSTEP_FAILURE, the last line\n"
    assert (folder / "step.complete").exists()


def test_the_project_instance_uses_it_under_dagster_home_storage(dagster_home):
    instance = dg.DagsterInstance.get()
    try:
        manager = instance.compute_log_manager
        assert isinstance(manager, MirroredComputeLogManager)
        assert manager._base_dir == str(dagster_home / "storage")  # where Dagster's default local manager keeps them
    finally:
        instance.dispose()
