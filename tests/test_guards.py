"""Guards of long runs: non-finite values, collapse, catastrophic overfit, unwritable outputs."""

import errno
import glob
import json
import math
import os

import tensorflow as tf

from deat_tf import cli, guards

SMALL_RUN = (
    "--config=configs/mnist_demo.py",
    "--steps_per_epoch=20",
    "--validation_size=200",
    "--validation_attack_steps=3",
    "--test_examples=100",
    "--train_accuracy_examples=0",
    "--noprogress_bar",
)


def run(workdir, *extra):
    try:
        cli.run_train([f"--workdir={workdir}", *SMALL_RUN, *extra])
    except SystemExit as exit_:
        return exit_.code
    return 0


def summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as stream:
        return json.load(stream)


def record(epoch, loss, accuracy, robust=None, adversarial=None):
    values = {"epoch": epoch, "loss": loss, "train_accuracy": accuracy}
    if robust is not None:
        values["val_robust_accuracy"] = robust
    values["adv_accuracy"] = accuracy if adversarial is None else adversarial
    return values


# --------------------------------------------------------------- scripted logs

LN10 = math.log(10)


def test_collapse_is_chance_loss_and_accuracy_after_a_better_start():
    better, collapsed = record(1, 0.9, 0.8), record(2, LN10 * 1.01, 0.11)
    assert "collapse at epoch 2" in guards.detect_collapse([better, collapsed], 10)
    # Never better than chance: a slow start, not a collapse.
    assert guards.detect_collapse([record(1, 2.31, 0.12), collapsed], 10) is None
    # Loss at ln(10) but accuracy above chance, or chance accuracy with a lower loss.
    assert guards.detect_collapse([better, record(2, LN10, 0.3)], 10) is None
    assert guards.detect_collapse([better, record(2, 2.0, 0.1)], 10) is None
    # One epoch says nothing; the clean accuracy wins over the adversarial one.
    assert guards.detect_collapse([collapsed], 10) is None
    strong_attack = dict(record(2, LN10, 0.9), adv_accuracy=0.1)
    assert guards.detect_collapse([better, strong_attack], 10) is None


def test_catastrophic_overfit_is_lost_robustness_while_training_accuracy_holds():
    history = [record(1, 1.0, 0.5, robust=0.30, adversarial=0.40)]
    history.append(record(2, 0.8, 0.6, robust=0.42, adversarial=0.45))
    overfit = record(3, 0.3, 0.9, robust=0.02, adversarial=0.85)
    message = guards.detect_catastrophic_overfit(history + [overfit])
    assert "catastrophic overfit at epoch 3" in message and "0.4200" in message
    # Robust accuracy fell but so did training accuracy: divergence, not overfit.
    falling = record(3, 1.5, 0.3, robust=0.02, adversarial=0.2)
    assert guards.detect_catastrophic_overfit(history + [falling]) is None
    # A small dip is noise.
    assert guards.detect_catastrophic_overfit(history + [record(3, 0.8, 0.6, 0.35, 0.5)]) is None
    # Without a validation attack there is nothing to judge.
    assert guards.detect_catastrophic_overfit([record(1, 1, 0.5), record(2, 1, 0.5)]) is None


# ------------------------------------------------------------------- real runs


def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    workdir = tmp_path / "diverged"
    # SGD at 0.05 for epoch 1, then 1e9: the weights overflow during epoch 2.
    code = run(
        workdir,
        "--epochs=3",
        "--optimizer=sgd",
        "--learning_rate=0.05",
        "--lr_schedule=piecewise",
        "--lr_boundaries=1",
        "--lr_decay=1e10",
        "--weight_decay=0",
    )
    assert code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("bin/train: error: training stopped: non-finite loss")
    assert "at epoch 2, minibatch " in line and "the last good checkpoint is epoch 1" in line
    stored = summary(workdir)
    assert stored["status"].startswith("failed: training stopped: non-finite loss")
    assert stored["epochs_completed"] == 1
    assert not (workdir / "model.keras").exists()
    # The newest checkpoint is epoch 1's, and it loads with finite weights.
    last = tf.train.latest_checkpoint(str(workdir / "checkpoints" / "last"))
    assert last.endswith("ckpt-1")
    reader = tf.train.load_checkpoint(last)
    shapes = reader.get_variable_to_shape_map()
    weights = [name for name, shape in shapes.items() if shape]  # scalars hold the M+ state
    assert len(weights) >= 8  # the network's kernels and biases, and their optimizer slots
    for name in weights:
        assert math.isfinite(float(abs(reader.get_tensor(name)).max())), name


def test_a_real_collapse_stops_the_run_and_keeps_the_best_network(tmp_path, capsys, monkeypatch):
    workdir = tmp_path / "collapsed"

    # A collapse forced at the start of 0-based epoch 2, the same on every CPU: every
    # weight and every momentum slot set to zero. The hidden ReLUs are then dead, so only
    # the logits' bias learns: the network predicts the class frequencies, a loss of about
    # ln(10) at chance accuracy, as a real collapse does.
    def collapse_at_epoch_2(callback, epoch, logs=None):
        if epoch == 2:
            slots = [slot for slot in callback.model.optimizer.variables if slot.shape.rank]
            for weight in callback.model.network.weights + slots:
                weight.assign(tf.zeros_like(weight))

    monkeypatch.setattr(guards.CollapseGuard, "on_epoch_begin", collapse_at_epoch_2)
    collapsing = (
        "--epochs=6",
        "--scheduler=none",
        "--optimizer=sgd",
        "--learning_rate=0.05",
        "--weight_decay=0",
    )
    assert run(workdir, *collapsing) == 0
    stored = summary(workdir)
    assert stored["status"].startswith("stopped: collapse at epoch 3"), stored["status"]
    assert stored["epochs_completed"] == 3
    assert "warning: collapse at epoch 3" in capsys.readouterr().err
    assert stored["best_epoch"]["epoch"] in (1, 2), stored["best_epoch"]  # 1-based, as the status
    # The best network (before the collapse) is what the test evaluates, far above chance.
    assert stored["test"]["best"]["accuracy"] > 0.5
    assert stored["test"]["last"]["accuracy"] < 0.2
    assert (workdir / "best_network.keras").exists()
    # A stopped run counts as done: the same command does not train it again.
    assert run(workdir, *collapsing) == 0
    assert "already finished" in capsys.readouterr().out


def test_a_full_disk_stops_with_one_line_and_the_last_good_checkpoint_intact(
    tmp_path, capsys, monkeypatch
):
    saves = []
    original = tf.train.CheckpointManager.save

    def save(manager, *arguments, **keywords):
        saves.append(manager.directory)
        if sum("last" in directory for directory in saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(manager, *arguments, **keywords)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    workdir = tmp_path / "full"
    assert run(workdir, "--epochs=3") == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"bin/train: error: cannot write to {workdir}")
    assert "No space left on device" in line and "the last good checkpoint (epoch 1)" in line
    assert summary(workdir)["status"].startswith("failed: cannot write")
    assert glob.glob(str(workdir / "checkpoints" / "last" / "ckpt-1.index"))
    assert not glob.glob(str(workdir / "checkpoints" / "last" / "ckpt-2.*"))
