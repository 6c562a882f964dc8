"""Long runs that survive: signals, kill -9 and resume, mismatched settings, bad checkpoints.

The runs are real `bin/train` processes on the embedded MNIST digits with
`--deterministic`, so an interrupted and resumed run must be bit-identical to
an uninterrupted one: same per-epoch r, threshold, magnitude and loss, same
test accuracy.
"""

import glob
import json
import os
import shutil
import signal
import time

import pytest
import tensorflow as tf
from train_process import start_train

from deat_tf import cli

ARGUMENTS = (
    "--config=configs/mnist_demo.py",
    "--epochs=3",
    "--steps_per_epoch=25",
    "--validation_size=200",
    "--validation_attack_steps=5",
    "--test_examples=200",
    "--train_accuracy_examples=0",
    "--deterministic",
    "--noprogress_bar",
)
# Fields that must be equal bit for bit between an interrupted and an uninterrupted run.
COMPARED = (
    "attack_steps",
    "next_attack_steps",
    "threshold",
    "grad_magnitude",
    "loss",
    "adv_accuracy",
    "val_accuracy",
    "val_robust_accuracy",
    "learning_rate",
    "best",
)


def start(workdir, *extra):
    return start_train(workdir, [*ARGUMENTS, *extra])


def run(workdir, *extra, kill_at=None, delay=0.0, send=signal.SIGKILL, again_at=None):
    """Runs bin/train; with kill_at, sends `send` `delay` s after the line starting with kill_at.

    SIGKILL returns at once; another signal lets the process stop by itself,
    and with `again_at` the signal is sent a second time after that line.
    """
    process = start(workdir, *extra)
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if kill_at is not None and line.startswith(kill_at):
                kill_at = None
                time.sleep(delay)
                process.send_signal(send)
                if send == signal.SIGKILL:
                    process.wait(timeout=60)
                    return -signal.SIGKILL, "".join(output)
            if again_at is not None and line.startswith(again_at):
                again_at = None
                process.send_signal(send)
        return process.wait(timeout=600), "".join(output)
    finally:
        if process.poll() is None:
            process.kill()


def summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as stream:
        return json.load(stream)


def tensorboard_steps(folder, tag):
    steps = []
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return sorted(steps)


def assert_same_run(expected, actual):
    assert actual["status"] == "finished"
    assert len(actual["epochs"]) == len(expected["epochs"]) == 3
    for first, second in zip(expected["epochs"], actual["epochs"]):
        for field in COMPARED:
            assert first.get(field) == second.get(field), (first["epoch"], field)
    for network in ("last", "best"):
        for field in ("accuracy", "robust_accuracy"):
            assert actual["test"][network][field] == expected["test"][network][field]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("runs") / "uninterrupted")
    code, output = run(workdir)
    assert code == 0, output[-3000:]
    return workdir


def test_killed_runs_resume_to_the_same_run_and_fall_back_from_a_corrupted_checkpoint(
    uninterrupted, tmp_path
):
    workdir = str(tmp_path / "killed")
    # Killed right after epoch 1 was saved and printed ...
    code, _ = run(workdir, kill_at="epoch   1/3")
    assert code == -signal.SIGKILL
    assert summary(workdir)["epochs_completed"] == 1
    # ... then resumed, and killed again in the middle of epoch 3.
    code, output = run(workdir, kill_at="epoch   2/3", delay=0.5)
    assert code == -signal.SIGKILL
    assert "resuming" in output and "after epoch 1" in output
    assert summary(workdir)["epochs_completed"] == 2

    # A copy whose newest checkpoint was cut short falls back to epoch 1 ...
    corrupted = str(tmp_path / "corrupted")
    shutil.copytree(workdir, corrupted)
    latest = glob.glob(os.path.join(corrupted, "checkpoints", "last", "ckpt-2.data-*"))
    assert latest
    with open(latest[0], "r+b") as stream:
        stream.truncate(os.path.getsize(latest[0]) // 2)
    code, output = run(corrupted)
    assert code == 0, output[-3000:]
    assert "ckpt-2 is unreadable" in output and "falling back to" in output
    assert "after epoch 1" in output
    assert_same_run(summary(uninterrupted), summary(corrupted))

    # ... and the intact one finishes from epoch 2 with the same command.
    code, output = run(workdir)
    assert code == 0, output[-3000:]
    assert "after epoch 2" in output
    resumed = summary(workdir)
    assert resumed["resumed_at_epochs"] == [1, 2]
    assert_same_run(summary(uninterrupted), resumed)
    # TensorBoard holds every epoch exactly once, whatever the kills interrupted.
    for folder, tag in (("train", "epoch_loss"), ("validation", "epoch_robust_accuracy")):
        assert tensorboard_steps(os.path.join(workdir, "tensorboard", folder), tag) == [0, 1, 2]


def interrupted_line(output):
    return [line for line in output.splitlines() if line.startswith("bin/train: interrupted")]


def test_sigterm_then_a_kill_right_after_a_mid_epoch_checkpoint_resume_to_the_same_run(
    uninterrupted, tmp_path
):
    workdir = str(tmp_path / "preempted")
    # SIGTERM inside epoch 2 (sent on the line of its checkpoint at minibatch 2, so
    # inside the epoch however loaded the machine): the minibatch in progress
    # finishes, its exact position is saved, and the run says so in one line.
    code, output = run(
        workdir,
        "--checkpoint_every_steps=2",
        kill_at="deat_tf: checkpoint at epoch 2, minibatch 2",
        send=signal.SIGTERM,
    )
    assert code == 128 + signal.SIGTERM, output[-3000:]
    (line,) = interrupted_line(output)
    assert line.startswith("bin/train: interrupted at epoch 2, minibatch ")
    assert line.endswith(": rerun the same command to resume")
    minibatch = int(line.split("minibatch ")[1].split(":")[0])
    assert 2 <= minibatch < 25
    assert "Traceback" not in output
    stored = summary(workdir)
    assert stored["status"] == "interrupted" and stored["epochs_completed"] == 1
    assert stored["interrupted"] == {"signal": "SIGTERM", "epoch": 2, "minibatch": minibatch}
    # The same command resumes after that minibatch (none redone); with
    # checkpoints every 10 minibatches it is then killed -9 right after the
    # one at epoch 3, minibatch 10 ...
    code, output = run(
        workdir,
        "--checkpoint_every_steps=10",
        kill_at="deat_tf: checkpoint at epoch 3, minibatch 10",
    )
    assert code == -signal.SIGKILL
    assert f"resuming {workdir} in epoch 2 after minibatch {minibatch} of 25." in output
    assert summary(workdir)["epochs_completed"] == 2
    # ... and the plain command redoes nothing before that checkpoint.
    code, output = run(workdir)
    assert code == 0, output[-3000:]
    assert "in epoch 3 after minibatch 10 of 25" in output
    resumed = summary(workdir)
    assert resumed["resumed_at_epochs"] == [1, 2]
    assert_same_run(summary(uninterrupted), resumed)
    for folder, tag in (("train", "epoch_loss"), ("validation", "epoch_robust_accuracy")):
        assert tensorboard_steps(os.path.join(workdir, "tensorboard", folder), tag) == [0, 1, 2]


# The first SIGINT is sent on the line of the mid-epoch checkpoint at epoch 3,
# minibatch 2: the run is then inside that epoch with 23 minibatches to go, however
# loaded the machine (a fixed delay after the epoch-2 line once landed after the
# epoch had ended).
def test_sigint_stops_with_one_line_and_a_second_signal_stops_at_once(uninterrupted, tmp_path):
    workdir = str(tmp_path / "ctrl_c")
    code, output = run(
        workdir,
        "--checkpoint_every_steps=2",
        kill_at="deat_tf: checkpoint at epoch 3, minibatch 2",
        send=signal.SIGINT,
    )
    assert code == 128 + signal.SIGINT, output[-3000:]
    (line,) = interrupted_line(output)
    assert line.startswith("bin/train: interrupted at epoch 3, minibatch ")
    assert 2 <= int(line.split("minibatch ")[1].split(":")[0]) < 25
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert summary(workdir)["status"] == "interrupted"
    # A second SIGINT, once the first was taken, ends the process at once. The first
    # is sent on the resume line (the handler is installed before it), so the second
    # arrives while the first minibatch, still to be traced, is far from done.
    code, output = run(
        workdir,
        send=signal.SIGINT,
        kill_at="deat_tf: resuming",
        again_at="deat_tf: SIGINT",
    )
    assert code == -signal.SIGINT, output[-3000:]
    assert not interrupted_line(output)
    code, output = run(workdir)
    assert code == 0, output[-3000:]
    assert "in epoch 3 after minibatch" in output
    assert_same_run(summary(uninterrupted), summary(workdir))


def run_in_process(workdir, *extra):
    """bin/train's command in this process (no training happens in these cases)."""
    try:
        cli.run_train([f"--workdir={workdir}", *ARGUMENTS, *extra])
    except SystemExit as exit_:
        return exit_.code
    return 0


def test_finished_run_is_not_trained_again_and_other_settings_are_refused(uninterrupted, capsys):
    before = summary(uninterrupted)
    assert run_in_process(uninterrupted) == 0
    assert "already finished" in capsys.readouterr().out
    assert summary(uninterrupted) == before
    assert run_in_process(uninterrupted, "--epsilon=0.2", "--epochs=4") == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith("bin/train: error: workdir ") and "\n" not in line
    assert "epsilon 0.3 -> 0.2" in line and "epochs 3 -> 4" in line
    # Settings that do not change the computation may differ.
    assert run_in_process(uninterrupted, "--progress_bar") == 0
    assert summary(uninterrupted) == before


def test_restart_starts_over(uninterrupted, tmp_path):
    workdir = str(tmp_path / "restarted")
    shutil.copytree(uninterrupted, workdir)
    assert run_in_process(workdir, "--restart", "--epochs=1", "--nodeterministic") == 0
    assert summary(workdir)["epochs_completed"] == 1
    assert summary(workdir)["resumed_at_epochs"] == []
    assert not glob.glob(os.path.join(workdir, "checkpoints", "last", "ckpt-3.*"))


def test_a_folder_with_other_files_is_not_taken_for_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert run_in_process(str(tmp_path), "--restart") == 1
    assert "holds files that are not a deat_tf run" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_restart_never_touches_a_folder_that_only_has_a_config_json(tmp_path, capsys):
    # A project folder, as a mistyped --workdir=. would find it.
    (tmp_path / "src").mkdir()
    (tmp_path / "config.json").write_text('{"name": "my web app"}')
    (tmp_path / "src" / "main.py").write_text("print('hello')\n")
    (tmp_path / "README.txt").write_text("mine\n")
    for extra in ((), ("--restart",)):
        assert run_in_process(str(tmp_path), *extra) == 1
        line = capsys.readouterr().err.strip()
        assert "not a deat_tf run (README.txt, config.json, src;" in line and "\n" not in line
    assert sorted(os.listdir(tmp_path)) == ["README.txt", "config.json", "src"]
    assert (tmp_path / "config.json").read_text() == '{"name": "my web app"}'
