"""The workdir: checking it, atomic JSON and .keras writes."""

import glob
import json
import os

import keras
import pytest

from deat_tf import checkpoints as checkpoints_lib
from deat_tf import models, workdir


def test_write_json_never_leaves_a_half_written_file(tmp_path):
    path = str(tmp_path / "summary.json")
    workdir.write_json(path, {"status": "running", "value": float("nan")})
    with open(path) as stream:
        assert json.load(stream) == {"status": "running", "value": None}
    with pytest.raises(TypeError):
        workdir.write_json(path, {"status": "finished", "bad": object()})
    with open(path) as stream:
        assert json.load(stream)["status"] == "running"
    assert os.listdir(tmp_path) == ["summary.json"]


def test_save_keras_replaces_the_file_only_when_the_save_succeeds(tmp_path):
    path = str(tmp_path / "network.keras")
    network = models.mnist_cnn()
    workdir.save_keras(network, path)
    assert keras.saving.load_model(path).count_params() == network.count_params()

    class Unsavable:
        def save(self, temporary):
            with open(temporary, "w") as stream:
                stream.write("half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        workdir.save_keras(Unsavable(), path)
    assert keras.saving.load_model(path).count_params() == network.count_params()
    assert os.listdir(tmp_path) == ["network.keras"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_writes_get_the_mode_a_plain_write_would(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as stream:
            stream.write("reference: the mode open() gives under this umask")
        workdir.write_json(str(tmp_path / "summary.json"), {"status": "finished"})
        workdir.save_keras(models.mnist_cnn(), str(tmp_path / "network.keras"))
    finally:
        os.umask(previous)
    expected = os.stat(tmp_path / "plain.txt").st_mode & 0o777
    assert expected == 0o666 & ~umask
    for name in ("summary.json", "network.keras"):
        assert oct(os.stat(tmp_path / name).st_mode & 0o777) == oct(expected), name


def test_check_workdir_accepts_new_and_empty_folders_and_runs_only(tmp_path):
    new = str(tmp_path / "new" / "run")
    assert workdir.check_workdir(new) == (new, "new")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "empty").mkdir()
    assert workdir.check_workdir(str(tmp_path / "empty")) == (str(tmp_path / "empty"), "new")
    (tmp_path / "empty" / "file").write_text("x")
    with pytest.raises(ValueError, match="holds files that are not a deat_tf run"):
        workdir.check_workdir(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="workdir is required"):
        workdir.check_workdir("")


def tiny_model():
    import deat_tf

    model = deat_tf.AdversarialModel(models.mnist_cnn(input_shape=(8, 8, 1), num_classes=10))
    model.compile(optimizer="sgd")
    model.optimizer.build(model.trainable_variables)
    return model


def recording_run(tmp_path, epochs):
    """A RunRecorder on a tiny model, with its state and checkpoints."""
    model = tiny_model()
    state = workdir.RunState()
    checkpoints = checkpoints_lib.Checkpoints(str(tmp_path / "checkpoints"), model, state)
    summary = workdir.RunSummary(str(tmp_path / "summary.json"), {}, epochs, "r", state)
    recorder = workdir.RunRecorder(checkpoints, state, summary, num_classes=10)
    recorder.set_model(model)
    return state, checkpoints, recorder


def test_best_epoch_is_robust_then_clean_accuracy_and_never_a_chance_level_network(tmp_path):
    state, checkpoints, recorder = recording_run(tmp_path, epochs=5)
    epochs = [
        {"loss": 1.0, "val_robust_accuracy": 0.10, "val_accuracy": 0.80},
        {"loss": 1.0, "val_robust_accuracy": 0.30, "val_accuracy": 0.70},  # more robust: best
        {"loss": 1.0, "val_robust_accuracy": 0.30, "val_accuracy": 0.75},  # tie, cleaner: best
        # A collapsed network predicting one class: as robust as accurate, at chance.
        {"loss": 2.3, "val_robust_accuracy": 0.14, "val_accuracy": 0.14},
        {"loss": 1.0, "val_robust_accuracy": 0.29, "val_accuracy": 0.90},
    ]
    for epoch, logs in enumerate(epochs):
        recorder.on_epoch_end(epoch, dict(logs))
    assert state.best_epoch == 3
    assert [record["best"] for record in state.records] == [False, False, True, False, False]
    assert checkpoints.best_checkpoint(3) is not None
    assert json.loads((tmp_path / "summary.json").read_text())["best_epoch"]["epoch"] == 3
    # The newest two epochs are kept as `last`, the newest two bests as `best`.
    assert [path[-6:] for path in checkpoints.last.checkpoints] == ["ckpt-4", "ckpt-5"]
    assert [path[-6:] for path in checkpoints.best.checkpoints] == ["ckpt-2", "ckpt-3"]


def test_an_epoch_with_non_finite_loss_is_not_saved(tmp_path):
    state, checkpoints, recorder = recording_run(tmp_path, epochs=2)
    recorder.on_epoch_end(0, {"loss": 1.0, "val_accuracy": 0.5})
    recorder.on_epoch_end(1, {"loss": float("nan"), "val_accuracy": 0.5})
    assert recorder.skipped_epoch == 2 and state.epochs_done == 1
    assert [path[-6:] for path in checkpoints.last.checkpoints] == ["ckpt-1"]


def truncate(path_prefix):
    for data in glob.glob(path_prefix + ".data-*"):
        with open(data, "r+b") as stream:
            stream.truncate(os.path.getsize(data) // 2)


def test_with_both_last_checkpoints_unreadable_the_best_one_is_restored(tmp_path):
    state, checkpoints, recorder = recording_run(tmp_path, epochs=4)
    for epoch, robust in enumerate((0.2, 0.4, 0.3, 0.1)):  # best: epoch 2
        recorder.on_epoch_end(
            epoch, {"loss": 1.0, "val_robust_accuracy": robust, "val_accuracy": 0.9}
        )
    assert [path[-6:] for path in checkpoints.last.checkpoints] == ["ckpt-3", "ckpt-4"]
    for path in checkpoints.last.checkpoints:
        truncate(path)
    state.records = []  # as in a new process, before the restore
    warnings = []
    restored = checkpoints.restore_latest(warn=warnings.append)
    assert restored == checkpoints.best_checkpoint(2)
    assert state.epochs_done == 2  # the epochs after it are trained again
    assert len(warnings) == 2 and all(line.startswith("warning: checkpoint ") for line in warnings)
    assert "falling back to the best checkpoint" in warnings[1]
    # With the best ones unreadable too: one line saying what to do, no traceback.
    for path in checkpoints.best.checkpoints:
        truncate(path)
    with pytest.raises(ValueError, match=r"no readable checkpoint in .* \(last, partial or best\)"):
        checkpoints.restore_latest(warn=warnings.append)


def test_workdir_modes_follow_the_stored_run(tmp_path):
    settings = {"epochs": 3, "epsilon": 0.3, "progress_bar": True}
    run = tmp_path / "run"
    assert workdir.check_workdir(str(run), settings) == (str(run), "new")
    run.mkdir()
    workdir.write_marker(str(run))
    workdir.write_json(str(run / "config.json"), settings)
    workdir.write_json(str(run / "summary.json"), {"status": "running"})
    assert workdir.check_workdir(str(run), settings)[1] == "resume"
    # A setting that does not change the computation may differ; others may not.
    assert workdir.check_workdir(str(run), dict(settings, progress_bar=False))[1] == "resume"
    with pytest.raises(ValueError, match="other settings \\(epsilon 0.3 -> 0.2\\)"):
        workdir.check_workdir(str(run), dict(settings, epsilon=0.2))
    assert workdir.check_workdir(str(run), dict(settings, epsilon=0.2), restart=True)[1] == (
        "restart"
    )
    for status in ("finished", "stopped: collapse at epoch 3"):
        workdir.write_json(str(run / "summary.json"), {"status": status})
        assert workdir.check_workdir(str(run), settings)[1] == "finished"
    workdir.clear_run(str(run))
    assert os.listdir(run) == []


def test_missing_epochs_are_added_to_tensorboard_and_none_twice(tmp_path):
    import tensorflow as tf

    log_dir = tmp_path / "tensorboard"
    writer = tf.summary.create_file_writer(str(log_dir / "train"))
    with writer.as_default():
        tf.summary.scalar("epoch_loss", 1.0, step=0)
    writer.close()
    records = [
        {"epoch": 1, "loss": 1.0, "val_accuracy": 0.5, "best": True},
        {"epoch": 2, "loss": 0.8, "val_accuracy": 0.6, "best": False},
    ]
    workdir.complete_tensorboard(str(log_dir), records)
    workdir.complete_tensorboard(str(log_dir), records)  # idempotent
    assert workdir._tensorboard_epochs(str(log_dir / "train"), "epoch_loss") == {0, 1}
    assert workdir._tensorboard_epochs(str(log_dir / "validation"), "epoch_accuracy") == {1}


def test_the_summary_shows_no_magnitude_for_a_model_that_does_not_compute_it(tmp_path):
    state = workdir.RunState()
    state.records.extend(
        [
            {"epoch": 1, "attack_steps": 1, "loss": 2.0, "best": True},
            {"epoch": 2, "attack_steps": 2, "loss": 1.5, "grad_magnitude": 12.5, "best": False},
        ]
    )
    summary = workdir.RunSummary(str(tmp_path / "summary.json"), {}, 2, "K", state)
    untracked, tracked = summary.table().splitlines()[2:4]
    assert untracked.split()[2] == "-" and tracked.split()[2] == "12.5"
    assert "M=" not in summary.epoch_line(state.records[0])
    assert "M=12.5" in summary.epoch_line(state.records[1])


def project_folder(tmp_path):
    """A folder that is not a run but holds a config.json, as many projects do."""
    folder = tmp_path / "project"
    (folder / "src").mkdir(parents=True)
    (folder / "config.json").write_text('{"name": "my web app"}')
    (folder / "src" / "main.py").write_text("print('hello')\n")
    (folder / "README.txt").write_text("mine\n")
    return folder


def test_a_config_json_without_the_marker_is_not_a_run_even_with_restart(tmp_path):
    folder = project_folder(tmp_path)
    for restart in (False, True):
        with pytest.raises(ValueError, match="not a deat_tf run") as raised:
            workdir.check_workdir(str(folder), {"epochs": 3}, restart=restart)
        message = str(raised.value)
        assert "README.txt, config.json, src" in message and "deat_tf_run.json" in message
        assert "empty it" not in message and "restart" not in message
    assert sorted(os.listdir(folder)) == ["README.txt", "config.json", "src"]


def test_restart_refuses_files_deat_tf_did_not_write_and_removes_only_its_own(tmp_path):
    folder = project_folder(tmp_path)
    workdir.write_marker(str(folder))
    (folder / "checkpoints" / "last").mkdir(parents=True)
    (folder / ".tmp_half.json").write_text("{")
    with pytest.raises(ValueError, match=r"files deat_tf did not write \(README.txt, src\)"):
        workdir.check_workdir(str(folder), {"epochs": 3}, restart=True)
    workdir.clear_run(str(folder))
    assert sorted(os.listdir(folder)) == ["README.txt", "src"]
    assert (folder / "src" / "main.py").read_text() == "print('hello')\n"


def test_a_run_with_a_broken_config_json_is_named_as_such(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    workdir.write_marker(str(run))
    (run / "checkpoints").mkdir()
    cases = {None: "is missing", "{": "is not valid JSON", "[1, 2]": "holds a JSON list"}
    for content, expected in cases.items():
        if content is not None:
            (run / "config.json").write_text(content)
        with pytest.raises(ValueError, match=expected) as raised:
            workdir.check_workdir(str(run), {"epochs": 3})
        message = str(raised.value)
        assert "holds a deat_tf run whose config.json" in message
        assert "checkpoints are kept" in message and "empty" not in message
    # Starting over is still possible: only the marker and checkpoints/ are outputs here.
    assert workdir.check_workdir(str(run), {"epochs": 3}, restart=True)[1] == "restart"


def test_a_full_disk_keeps_its_reason_and_the_summary_counts_only_saved_epochs(tmp_path):
    import tensorflow as tf

    state, checkpoints, recorder = recording_run(tmp_path, epochs=3)
    recorder.on_epoch_end(0, {"loss": 1.0, "val_accuracy": 0.5})
    # The shape of TensorFlow's SaveV2 error on a full disk: the op, a long
    # temporary path (past any first-200-characters cut), the reason last.
    message = (
        "{{function_node __wrapped__SaveV2_dtypes_12_device_/job:localhost/replica:0/task:0/"
        "device:CPU:0}} " + str(tmp_path / ("x" * 150)) + "/ckpt-2_temp/part-00000-of-00001"
        ".data-00000-of-00001.tempstate5163861405337226040; No space left on device [Op:SaveV2]"
    )

    def full_disk(**_):
        raise tf.errors.ResourceExhaustedError(None, None, message)

    checkpoints.last.save = full_disk
    with pytest.raises(workdir.WriteFailed) as raised:
        recorder.on_epoch_end(1, {"loss": 0.5, "val_accuracy": 0.9})  # would be the best
    assert "(No space left on device)" in str(raised.value)
    assert "the last good checkpoint (epoch 1) is intact" in str(raised.value)
    assert state.epochs_done == 1 and state.best_epoch == 1
    assert [record["best"] for record in state.records] == [True]
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["epochs_completed"] == 1 and written["best_epoch"]["epoch"] == 1
