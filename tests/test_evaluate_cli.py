"""bin/evaluate end to end on an MNIST model trained here, and its bad-input errors."""

import io
import json
import os
import subprocess
import sys

import keras
import pytest
from keras import layers

import deat_tf
from deat_tf import evaluation, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin", "evaluate")
ATTACKS = "clean,fgsm,pgd5,apgd-ce5,apgd-t2"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, mnist_sample):
    """What bin/train leaves behind: model.keras (AdversarialModel) and network.keras."""
    directory = tmp_path_factory.mktemp("workdir")
    keras.utils.set_random_seed(0)
    model = deat_tf.AdversarialModel(models.mnist_cnn(), method="fgsm_rs", epsilon=0.3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x, y = mnist_sample["x_train"][:4000], mnist_sample["y_train"][:4000]
    model.fit(x, y, batch_size=100, epochs=1, verbose=0)
    model.save(str(directory / "model.keras"))
    model.network.save(str(directory / "network.keras"))
    inputs = keras.Input((28, 28, 1))
    keras.Model(inputs, layers.Conv2D(3, 3, padding="same")(inputs)).save(str(directory / "images.keras"))
    return directory


def run_cli(*arguments):
    environment = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, BIN, *arguments], capture_output=True, text=True, env=environment, timeout=300
    )


def test_cli_evaluates_a_trained_model_and_writes_the_report(workdir):
    output = workdir / "evaluation.json"
    completed = run_cli(
        f"--model={workdir / 'model.keras'}", "--dataset=mnist_sample", "--epsilon=0.3",
        f"--attacks={ATTACKS}", "--n_examples=100", "--batch_size=50", f"--output={output}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    names = [result["name"] for result in report["attacks"]]
    assert names == ATTACKS.split(",")
    assert (report["epsilon"], report["examples"], report["dataset"]) == (0.3, 100, "mnist_sample")
    assert report["model"].endswith("model.keras")
    for result in report["attacks"]:
        assert 0.0 <= result["accuracy"] <= 1.0
        assert report["robust_accuracy"] <= result["accuracy"]
        assert result["within_bounds"] and result["seconds"] > 0
    assert report["robust_over"] == names
    assert {check["name"] for check in report["checks"]} >= {
        "robust_at_most_clean", "monotone_in_budget", "reevaluation_agrees", "within_bounds",
        "zero_gradients", "stronger_than_fgsm", "outputs_are_logits",
    }
    assert report["versions"]["deat_tf"] == deat_tf.__version__
    # The table goes to stdout, progress per attack to stderr.
    assert "robust (all)" in completed.stdout
    assert f"{100 * report['robust_accuracy']:.2f}%" in completed.stdout
    for name in names:
        assert f"] {name}: accuracy" in completed.stderr


def test_network_file_gives_the_same_numbers_as_the_model_file(workdir):
    reports = [
        evaluation.run(
            model=str(workdir / filename), dataset="mnist_sample", epsilon=0.3, attacks="clean,fgsm",
            n_examples=100, stdout=io.StringIO(), stderr=io.StringIO(),
        )
        for filename in ("model.keras", "network.keras")
    ]
    assert reports[0]["attacks"] == [
        {**result, "seconds": reports[0]["attacks"][index]["seconds"]}
        for index, result in enumerate(reports[1]["attacks"])
    ]


def test_cli_bad_input_is_one_line_and_a_failing_exit(workdir):
    # One process for the path from flags to exit status; the other bad inputs
    # are checked in-process below (a TensorFlow start-up costs seconds).
    output = workdir / "never.json"
    completed = run_cli(
        f"--model={workdir / 'model.keras'}", "--dataset=mnist_sample", "--epsilon=0.3",
        f"--output={output}", "--attacks=clean,pgd20,bim7",
    )
    assert completed.returncode != 0
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line == (
        "bin/evaluate: error: --attacks: unknown attack 'bim7'; allowed: "
        + evaluation.ATTACK_NAMES_HELP + "."
    ), completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr
    assert not output.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(model="missing/model.keras"), "--model: no such file 'missing/model.keras'"),
        (dict(model="images.keras"), "--model must output [batch, classes] scores"),
        (dict(epsilon=1.5), "--epsilon must be in [0, 1]"),
        (dict(attacks="pgd20,pgd"), "--attacks: 'pgd' needs a step count"),
        (dict(n_examples=0), "--n_examples must be an integer >= 1"),
        (dict(outputs="probabilities"), "--outputs=probabilities but the model's outputs are not"),
        (dict(dataset="svhn_cropped_typo"), "--dataset: unknown dataset 'svhn_cropped_typo'"),
        (dict(output="no/such/dir/report.json"), "--output: directory"),
    ],
)
def test_bad_input_fails_before_any_work(workdir, flags, message):
    arguments = dict(
        model=str(workdir / "model.keras"), dataset="mnist_sample", epsilon=0.3, attacks="clean,fgsm",
        n_examples=20, output=str(workdir / "bad.json"),
    )
    if "model" in flags and not flags["model"].startswith("missing"):
        flags = dict(flags, model=str(workdir / flags["model"]))
    arguments.update(flags)
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.raises(evaluation.InputError) as error:
        evaluation.run(stdout=stdout, stderr=stderr, **arguments)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    # Nothing ran, printed or written.
    assert stdout.getvalue() == "" and stderr.getvalue() == ""
    assert not (workdir / "bad.json").exists()
