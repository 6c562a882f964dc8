"""Starts `bin/train` as a separate process, for the tests that kill it or run several."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_train(workdir, arguments, environment_changes=None):
    """Starts bin/train on `workdir` with `arguments`; stdout and stderr are one text pipe.

    Args:
        workdir: The --workdir.
        arguments: Further command-line arguments.
        environment_changes: Variables to set (TF_CONFIG is removed unless given here).

    Returns:
        The `subprocess.Popen`.
    """
    environment = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    environment.pop("TF_CONFIG", None)
    environment.update(environment_changes or {})
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "bin", "train"), f"--workdir={workdir}", *arguments],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )
