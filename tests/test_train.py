"""bin/train end to end: mocked TFDS runs, the MNIST demo, two replicas, XLA, bad input."""

import glob
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from deat_tf import cli, train
from deat_tf import config as config_lib

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN_TRAIN = os.path.join(REPOSITORY, "bin", "train")
BIN_EVALUATE = os.path.join(REPOSITORY, "bin", "evaluate")
CONFIGS = os.path.join(REPOSITORY, "configs")

# Small runs: one epoch of few minibatches, few PGD steps (tracing dominates on CPU).
TINY = (
    "--epochs=1",
    "--steps_per_epoch=3",
    "--validation_attack_steps=2",
    "--test_attack_steps=2",
    "--noprogress_bar",
)


def run_cli(*arguments):
    """Runs bin/train's command in this process; returns 0, or the exit code on bad input."""
    try:
        cli.run_train(list(arguments))
    except SystemExit as exit_:
        return exit_.code
    return 0


def error_line(capsys):
    """The one line bin/train printed on stderr for bad input."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def read_scalars(folder):
    """{tag: [values by epoch]} from the TensorBoard event files in `folder`."""
    scalars = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return scalars


def assert_complete_workdir(workdir, epochs):
    names = set(os.listdir(workdir))
    assert {
        "config.json",
        "summary.json",
        "tensorboard",
        "checkpoints",
        "model.keras",
        "network.keras",
        "best_network.keras",
    } <= names
    assert not [name for name in names if name.startswith(".tmp")]
    assert glob.glob(os.path.join(workdir, "checkpoints", "last", f"ckpt-{epochs}.index"))
    assert glob.glob(os.path.join(workdir, "checkpoints", "best", "ckpt-*.index"))
    with open(os.path.join(workdir, "summary.json")) as stream:
        summary = json.load(stream)
    assert summary["status"] == "finished"
    assert summary["epochs_completed"] == epochs
    for record in summary["epochs"]:
        for field in (
            "attack_steps",
            "grad_magnitude",
            "adv_accuracy",
            "val_accuracy",
            "val_robust_accuracy",
            "learning_rate",
            "train_seconds",
            "seconds",
            "images_per_second",
            "gradient_passes",
        ):
            assert record[field] is not None and math.isfinite(record[field]), field
    assert summary["total_seconds"] > 0 and summary["gradient_passes"] > 0
    assert summary["best_epoch"]["best"] is True
    return summary


# --------------------------------------------------------------- integration


def test_cifar10_recipe_on_mock_tfds_writes_workdir_and_tensorboard(tmp_path):
    workdir = tmp_path / "cifar10"
    with tfds.testing.mock_data(num_examples=24):
        code = run_cli(
            f"--config={CONFIGS}/cifar10_deat.py",
            f"--workdir={workdir}",
            "--model_width=4",
            "--batch_size=8",
            "--validation_size=8",
            "--test_examples=8",
            "--train_accuracy_examples=8",
            "--lr_boundaries=0.5",
            *TINY,
        )
    assert code == 0
    summary = assert_complete_workdir(workdir, epochs=1)
    assert summary["run"]["image_shape"] == [32, 32, 3]
    # M+ rule: r = 1 in epoch 0, raised to 2 after it; one pass per replay.
    assert (
        summary["epochs"][0]["attack_steps"] == 1 and summary["epochs"][0]["next_attack_steps"] == 2
    )
    assert summary["epochs"][0]["gradient_passes"] == 3
    assert summary["test"]["best"]["examples"] == 8
    with open(workdir / "config.json") as stream:
        resolved = json.load(stream)
    assert resolved["dataset"] == "cifar10" and resolved["model_width"] == 4
    assert config_lib.load_file(str(workdir / "config.json")).epsilon == pytest.approx(8 / 255)

    train_scalars = read_scalars(workdir / "tensorboard" / "train")
    for tag in (
        "epoch_loss",
        "epoch_adv_accuracy",
        "epoch_train_accuracy",
        "epoch_grad_magnitude",
        "epoch_attack_steps",
        "epoch_threshold",
        "epoch_learning_rate",
        "epoch_images_per_second",
    ):
        assert len(train_scalars[tag]) == 1, tag
    assert train_scalars["epoch_next_attack_steps"] == [2.0]
    validation_scalars = read_scalars(workdir / "tensorboard" / "validation")
    assert len(validation_scalars["epoch_accuracy"]) == 1
    assert len(validation_scalars["epoch_robust_accuracy"]) == 1

    network = keras.saving.load_model(workdir / "network.keras")
    assert network.output_shape == (None, 10)


def test_imagenet_recipe_on_mock_tfds_with_manual_files(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
        (manual / name).touch()
    workdir = tmp_path / "imagenet"
    with tfds.testing.mock_data(num_examples=8):
        code = run_cli(
            f"--config={CONFIGS}/imagenet_deat.py",
            f"--workdir={workdir}",
            f"--manual_dir={manual}",
            "--image_size=32",
            # ResNet-50's 50 layers take minutes to trace on CPU; tests/test_models.py covers it.
            "--model=preact_resnet18",
            "--model_width=4",
            "--batch_size=4",
            "--validation_size=4",
            "--test_examples=0",
            "--train_accuracy_examples=4",
            "--lr_schedule=constant",
            *TINY,
        )
    assert code == 0
    summary = assert_complete_workdir(workdir, epochs=1)
    assert summary["run"]["image_shape"] == [32, 32, 3]
    assert summary["run"]["num_classes"] == 1000
    assert summary["test"] == {}
    assert read_scalars(workdir / "tensorboard" / "validation")["epoch_robust_accuracy"]


def test_mnist_demo_recipe_raises_robust_validation_accuracy(tmp_path):
    workdir = tmp_path / "demo"
    code = run_cli(
        f"--config={CONFIGS}/mnist_demo.py",
        f"--workdir={workdir}",
        "--epochs=3",
        "--test_examples=200",
        "--noprogress_bar",
    )
    assert code == 0
    summary = assert_complete_workdir(workdir, epochs=3)
    robust = [record["val_robust_accuracy"] for record in summary["epochs"]]
    assert robust[-1] > robust[0] + 0.02, robust
    assert [record["attack_steps"] for record in summary["epochs"]][:2] == [1, 2]
    train_scalars = read_scalars(workdir / "tensorboard" / "train")
    assert train_scalars["epoch_attack_steps"] == [
        record["attack_steps"] for record in summary["epochs"]
    ]
    assert (
        math.isnan(train_scalars["epoch_threshold"][0]) and train_scalars["epoch_threshold"][1] > 0
    )
    for name in ("last", "best"):
        result = summary["test"][name]
        assert result["examples"] == 200 and result["attack"] == "PGD-20"
        assert 0.0 <= result["robust_accuracy"] <= result["accuracy"]
    assert (
        summary["run"]["train_examples"] == 7000 and summary["run"]["validation_examples"] == 1000
    )


def test_two_replica_mirrored_run_through_the_cli(tmp_path):
    workdir = tmp_path / "mirrored"
    code = run_cli(
        f"--config={CONFIGS}/mnist_demo.py",
        f"--workdir={workdir}",
        "--strategy=mirrored",
        "--batch_size=64",
        "--validation_size=128",
        "--test_examples=0",
        "--train_accuracy_examples=0",
        *TINY,
    )
    assert code == 0
    summary = assert_complete_workdir(workdir, epochs=1)
    assert summary["run"]["replicas"] == 2
    assert summary["run"]["per_replica_batch_size"] == 32
    model = keras.saving.load_model(workdir / "model.keras")
    # The scheduler state travels with the model: r was raised after epoch 0.
    assert model.attack_steps == 2 and model.minibatches == 3


def test_epoch_lines_start_their_own_line_below_the_progress_bar(tmp_path, capsys):
    workdir = tmp_path / "bar"
    code = run_cli(
        f"--config={CONFIGS}/mnist_demo.py",
        f"--workdir={workdir}",
        "--batch_size=32",
        "--validation_size=64",
        "--test_examples=0",
        "--train_accuracy_examples=0",
        "--epochs=2",
        "--steps_per_epoch=2",
        "--validation_attack_steps=1",
        "--progress_bar",
    )
    assert code == 0
    output = capsys.readouterr().out
    assert "loss:" in output  # the bar was shown
    epoch_lines = [line for line in output.splitlines() if "epoch " in line and "r=" in line]
    assert len(epoch_lines) == 2, output
    for line in epoch_lines:
        assert line.lstrip("\r").startswith("epoch "), line


def test_jit_compile_trains_the_mnist_cnn_on_cpu(tmp_path):
    config = config_lib.replace(
        config_lib.load_file(os.path.join(CONFIGS, "mnist_demo.py")),
        epochs=1,
        steps_per_epoch=2,
        validation_size=100,
        validation_attack_steps=0,
        test_examples=0,
        train_accuracy_examples=0,
        jit_compile=True,
        progress_bar=False,
    )
    summary = train.train_and_evaluate(config, str(tmp_path / "jit"))
    assert summary["run"]["jit_compile"] is True
    assert math.isfinite(summary["epochs"][0]["loss"])


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("--dataset=svhn",), "dataset must be one of"),
        (("--model=vgg16",), "model must be one of"),
        (("--method=trades-ish",), "method must be one of"),
        (("--epsilon=1.5",), "epsilon must be in [0, 1]"),
        (("--epsilon=-8/255",), "epsilon must be in [0, 1]"),
        (("--batch_size=33", "--strategy=mirrored"), "not divisible by the 2 replicas"),
        (("--dataset=npz:/nonexistent/data.npz",), "does not exist"),
        (("--method=free", "--scheduler=magnitude"), "method free has a fixed count"),
        (
            ("--method=pgd", "--carry_perturbation"),
            "carry_perturbation applies to methods deat, free",
        ),
        (("--lr_schedule=multistep", "--lr_boundaries=0.8,0.5"), "increasing"),
        (("--learning_rate=fast",), "--learning_rate must be a number"),
        (("--learning_rate=0",), "learning_rate must be > 0"),
        (("--momentum=1.0", "--optimizer=sgd"), "momentum must be in [0, 1)"),
        (("--weight_decay=-1e-4",), "l2_weight_decay must be >= 0"),
        (("--gamma=0",), "gamma must be > 0"),
        (
            ("--image_size=16", "--augmentation=random_resized_crop_flip"),
            "image_size must be an integer >= 32",
        ),
        (("--config=configs/no_such_recipe.py",), "does not exist"),
        (("--workdir=",), "workdir is required"),
        (
            ("--jit_compile", "--strategy=mirrored", "--batch_size=64"),
            "jit_compile with 2 CPU replicas",
        ),
        (("--test_attack_steps=-1",), "test_attack_steps must be an integer >= 0"),
        (("--epoch=3",), "Unknown command line flag 'epoch'"),
    ],
)
def test_bad_input_fails_with_one_line_and_no_workdir(tmp_path, capsys, arguments, message):
    workdir = tmp_path / "run"
    code = run_cli(f"--config={CONFIGS}/mnist_demo.py", f"--workdir={workdir}", *arguments)
    assert code == 1
    line = error_line(capsys)
    assert line.startswith("bin/train: error: ") and message in line, line
    assert not workdir.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("split", ["train", "test"])
def test_nan_pixels_in_an_npz_split_stop_the_run_before_any_work(tmp_path, capsys, split):
    images = {"train": np.zeros((300, 28, 28), np.float32), "test": np.zeros((50, 28, 28))}
    images[split][7, 3, 3] = np.nan
    path = tmp_path / "digits.npz"
    np.savez(
        path,
        x_train=images["train"],
        y_train=np.arange(300) % 10,
        x_test=images["test"],
        y_test=np.arange(50) % 10,
    )
    workdir = tmp_path / "run"
    code = run_cli(
        f"--config={CONFIGS}/mnist_demo.py", f"--workdir={workdir}", f"--dataset=npz:{path}"
    )
    assert code == 1
    line = error_line(capsys)
    assert f"npz file {path} x_{split} has 1 non-finite pixels (1 NaN" in line, line
    assert not workdir.exists()


def test_missing_imagenet_tars_say_where_to_put_them(tmp_path, capsys):
    workdir = tmp_path / "run"
    data_dir = tmp_path / "tfds"
    code = run_cli(
        f"--config={CONFIGS}/imagenet_deat.py", f"--workdir={workdir}", f"--data_dir={data_dir}"
    )
    assert code == 1
    line = error_line(capsys)
    assert "ILSVRC2012_img_train.tar" in line
    assert os.path.join(str(data_dir), "downloads", "manual") in line
    assert "manual_dir" in line
    assert not workdir.exists()


@pytest.mark.parametrize("case", ["under_a_file", "not_empty", "read_only_filesystem"])
def test_unusable_workdir_is_rejected_before_anything_is_written(tmp_path, capsys, case):
    if case == "under_a_file":
        (tmp_path / "file").write_text("x")
        workdir, message = tmp_path / "file" / "run", "is not a folder"
    elif case == "not_empty":
        workdir, message = tmp_path / "run", "already holds files"
        workdir.mkdir()
        (workdir / "notes.txt").write_text("earlier run")
    else:
        # /proc refuses new folders even to root, unlike permission bits.
        workdir, message = "/proc/deat_tf_workdir", "is not writable"
        if not os.path.isdir("/proc"):
            pytest.skip("needs Linux /proc")
    code = run_cli(f"--config={CONFIGS}/mnist_demo.py", f"--workdir={workdir}")
    assert code == 1 and message in error_line(capsys)
    if case == "not_empty":
        assert os.listdir(workdir) == ["notes.txt"]
    else:
        assert not os.path.exists(workdir)


def test_script_exits_with_status_1_and_one_line(tmp_path):
    workdir = tmp_path / "run"
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [
            sys.executable,
            BIN_TRAIN,
            f"--config={CONFIGS}/mnist_demo.py",
            f"--workdir={workdir}",
            "--epsilon=2",
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert (
        last_line
        == "bin/train: error: epsilon must be in [0, 1] (images are scaled to [0, 1]), got 2.0."
    )
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


def help_entries(text):
    """{flag name: its entry} of a --help text whose entries start with '  --'."""
    entries = {}
    for chunk in text.split("\n  --")[1:]:
        heading = chunk.split("\n", 1)[0]
        name = heading.split("=", 1)[0].removeprefix("[no]")
        entries[name] = " ".join(chunk.split())
    return entries


def test_help_shows_every_setting_grouped_with_meaning_and_default(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.run_train(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    entries = help_entries(text)
    assert set(entries) == {"config", "workdir", "restart"} | set(config_lib.FIELDS)
    documented = dict(item for _, fields in config_lib.field_documentation() for item in fields)
    for name in config_lib.FIELDS:
        assert " ".join(documented[name].split()) in entries[name], name
        assert "Default: " in entries[name], name
    assert "Default: deat." in entries["method"] and "Default: 0.5,0.8." in entries["lr_boundaries"]
    assert "Default: none." in entries["step_size"] and "Default: true." in entries["download"]
    # Groups, in the documentation's order; none of absl's or TensorFlow's own flags.
    titles = [title for title, _ in config_lib.field_documentation()]
    positions = [text.index(f"\n{title}:\n") for title in ["Run"] + titles]
    assert positions == sorted(positions)
    assert "--tpu" not in text and "logtostderr" not in text and "--flagfile" not in text
    assert "run as a program" in entries["config"]


def test_help_lists_the_allowed_values_the_code_accepts(capsys):
    from deat_tf import (
        adversarial_model,
        attacks,
        datasets,
        distribute,
        learning_rates,
        methods,
        models,
    )

    with pytest.raises(SystemExit):
        cli.run_train(["-h"])
    entries = help_entries(capsys.readouterr().out)
    allowed = {
        "dataset": datasets.TFDS_NAMES + ("mnist_sample", "npz:PATH"),
        "augmentation": datasets.AUGMENTATIONS,
        "model": tuple(models.MODELS),
        "init": models.INITS,
        "method": methods.NAMES,
        "initialization": attacks.INITIALIZATIONS,
        "step_size_rule": adversarial_model.STEP_SIZE_RULES,
        "scheduler": train.SCHEDULERS,
        "attack_batch_norm": adversarial_model.ATTACK_BATCH_NORM,
        "optimizer": train.OPTIMIZERS,
        "lr_schedule": learning_rates.LR_SCHEDULES,
        "strategy": distribute.STRATEGIES,
        "precision": train.PRECISIONS,
    }
    for name, choices in allowed.items():
        words = {word.strip(".,:;()") for word in entries[name].split()}
        missing = [choice for choice in choices if choice not in words]
        assert not missing, (name, missing)


def test_installed_commands_print_their_help_with_status_0():
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for script, expected in ((BIN_TRAIN, "--epsilon=X"), (BIN_EVALUATE, "--attacks=VALUE")):
        result = subprocess.run(
            [sys.executable, script, "--help"],
            capture_output=True,
            text=True,
            env=environment,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: bin/{os.path.basename(script)} ")
        assert expected in result.stdout and "Try --helpfull" not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe",
    [
        "cifar10_pgd7",
        "cifar10_free8",
        "cifar10_free8_carried",
        "cifar10_mplus_pgd",
        "cifar10_mplus_trades",
        "cifar10_mplus_mart",
        "cifar10_fgsm_rs",
        "cifar100_deat",
        "imagenet_free4",
    ],
)
def test_every_recipe_trains_a_tiny_epoch_on_mock_data(tmp_path, recipe):
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
        (manual / name).touch()
    workdir = tmp_path / recipe
    with tfds.testing.mock_data(num_examples=8):
        code = run_cli(
            f"--config={CONFIGS}/{recipe}.py",
            f"--workdir={workdir}",
            f"--manual_dir={manual}",
            "--image_size=32",
            "--model=preact_resnet18",
            "--model_width=2",
            "--batch_size=4",
            "--validation_size=4",
            "--test_examples=4",
            "--train_accuracy_examples=4",
            "--lr_schedule=constant",
            *TINY,
        )
    assert code == 0
    assert_complete_workdir(workdir, epochs=1)
