"""bin/evaluate end to end on an MNIST model trained here, presets, and its bad-input errors."""

import io
import json
import os
import shutil
import subprocess
import sys

import keras
import pytest
from absl import flags
from keras import layers

import deat_tf
from deat_tf import cli, evaluation, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin", "evaluate")
ATTACKS = "clean,fgsm,pgd5,apgd-ce5,apgd-t2"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, mnist_sample):
    """What bin/train leaves behind: model.keras (AdversarialModel) and network.keras."""
    directory = tmp_path_factory.mktemp("workdir")
    keras.utils.set_random_seed(0)
    # FGSM-RS at epsilon 0.3 from scratch stays at chance for the first epochs; 0.1 learns.
    model = deat_tf.AdversarialModel(models.mnist_cnn(), method="fgsm_rs", epsilon=0.1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x, y = mnist_sample["x_train"][:4000], mnist_sample["y_train"][:4000]
    model.fit(x, y, batch_size=100, epochs=1, verbose=0)
    model.save(str(directory / "model.keras"))
    model.network.save(str(directory / "network.keras"))
    inputs = keras.Input((28, 28, 1))
    keras.Model(inputs, layers.Conv2D(3, 3, padding="same")(inputs)).save(
        str(directory / "images.keras")
    )
    return directory


def run_process(command, *arguments):
    environment = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [*command, *arguments], capture_output=True, text=True, env=environment, timeout=300
    )


def test_cli_evaluates_a_trained_model_and_writes_the_report(workdir):
    output = workdir / "evaluation.json"
    completed = run_process(
        [sys.executable, BIN],
        f"--model={workdir / 'model.keras'}",
        "--dataset=mnist_sample",
        "--epsilon=0.3",
        f"--attacks={ATTACKS}",
        "--n_examples=100",
        "--batch_size=50",
        f"--output={output}",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    results = {result["name"]: result for result in report["attacks"]}
    assert list(results) == ATTACKS.split(",")
    assert (report["epsilon"], report["examples"], report["dataset"]) == (0.3, 100, "mnist_sample")
    assert report["model"].endswith("model.keras")
    # One epoch of FGSM-RS (about 72% clean): every attack at epsilon 0.3 finds
    # examples that the clean input gets right.
    assert results["clean"]["accuracy"] > 0.6
    for name in ("fgsm", "pgd5", "apgd-ce5", "apgd-t2"):
        assert results[name]["accuracy"] < results["clean"]["accuracy"], name
        assert results[name]["within_bounds"]
    assert report["robust_accuracy"] <= min(result["accuracy"] for result in results.values())
    assert report["robust_over"] == list(results)
    assert {check["name"] for check in report["checks"]} == {
        "robust_at_most_clean",
        "robust_at_most_each_attack",
        "monotone_in_budget",
        "reevaluation_agrees",
        "within_bounds",
        "zero_gradients",
        "stronger_than_fgsm",
        "square_adds_little",
        "outputs_are_logits",
    }
    assert not [check for check in report["checks"] if check["passed"] is False], report["checks"]
    assert report["versions"]["deat_tf"] == deat_tf.__version__
    # The table goes to stdout, progress per attack to stderr.
    assert "robust (all)" in completed.stdout
    assert f"{100 * report['robust_accuracy']:.2f}%" in completed.stdout
    for name in results:
        assert f"] {name}: accuracy" in completed.stderr


def test_autoattack_runs_the_standard_list_on_the_examples_still_robust(workdir):
    # At epsilon 0.3 APGD-CE fools (almost) every digit of this weak model, so the later
    # attacks, with AutoAttack's full budgets, cost (almost) nothing: the cascade at work.
    # test_nocascade_attacks_every_example runs FAB-T and Square themselves.
    stdout, stderr = io.StringIO(), io.StringIO()
    report = cli.run_evaluate(
        [
            f"--model={workdir / 'network.keras'}",
            "--dataset=mnist_sample",
            "--epsilon=0.3",
            "--attacks=autoattack",
            "--n_examples=30",
        ],
        stdout=stdout,
        stderr=stderr,
    )
    results = {result["name"]: result for result in report["attacks"]}
    assert list(results) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert report["cascade"] and report["robust_over"] == list(results)
    assert (results["apgd-t"]["runs"], results["fab-t"]["runs"]) == (9, 9)
    assert results["square"]["steps"] == 5000 and results["square"]["gradient_evaluations"] == 0
    names = list(results)
    for previous, name in zip(names, names[1:]):
        # Each attack ran on the examples the ones above it left robust.
        assert results[name]["attacked"] == results[previous]["correct"], name
        assert (
            report["robust_accuracy"] <= results[name]["accuracy"] <= results[previous]["accuracy"]
        )
        assert results[name]["within_bounds"]
        assert f"] {name}: accuracy" in stderr.getvalue()
    assert results["square"]["accuracy"] == report["robust_accuracy"]
    assert report["total_gradient_evaluations"] == sum(
        result["gradient_evaluations_per_example"] * result["attacked"]
        for result in results.values()
    )
    table = stdout.getvalue()
    assert "cascade=on" in table and "5000 queries x 1" in table and "100 x 9 (9 targets)" in table
    assert "gradients" in table and "queries" in table and "seconds" in table


def test_nocascade_attacks_every_example(workdir):
    report = cli.run_evaluate(
        [
            f"--model={workdir / 'network.keras'}",
            "--dataset=mnist_sample",
            "--epsilon=0.1",
            "--attacks=clean,apgd-ce3,fab-t2,square20",
            "--n_examples=20",
            "--nocascade",
        ],
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    assert not report["cascade"]
    for result in report["attacks"]:
        assert result["attacked"] == 20, result["name"]
    square = report["attacks"][-1]
    assert 0 < square["queries"] <= 20 * 20
    assert square["compared_with"] == ["apgd-ce3", "fab-t2"]


def test_network_file_gives_the_same_numbers_as_the_model_file(workdir):
    reports = [
        cli.run_evaluate(
            [
                f"--model={workdir / filename}",
                "--dataset=mnist_sample",
                "--epsilon=0.3",
                "--attacks=clean,fgsm",
                "--n_examples=100",
            ],
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )
        for filename in ("model.keras", "network.keras")
    ]
    assert reports[0]["attacks"] == [
        {**result, "seconds": reports[0]["attacks"][index]["seconds"]}
        for index, result in enumerate(reports[1]["attacks"])
    ]


def test_installed_command_bad_input_is_one_line_and_exit_status_1(workdir):
    # One process for the path from flags to exit status; the other bad inputs
    # are checked in-process below (a TensorFlow start-up costs seconds). The
    # pip-installed console script is used when present (CI installs it).
    installed = shutil.which("deat-evaluate")
    command = [installed] if installed else [sys.executable, BIN]
    output = workdir / "never.json"
    completed = run_process(
        command,
        f"--model={workdir / 'model.keras'}",
        "--dataset=mnist_sample",
        "--epsilon=0.3",
        f"--output={output}",
        "--attacks=clean,pgd20,bim7",
    )
    assert completed.returncode == 1
    last_line = completed.stderr.strip().splitlines()[-1]
    program = "deat-evaluate" if installed else "bin/evaluate"
    assert last_line == (
        f"{program}: error: attacks: unknown attack 'bim7'; allowed: "
        + evaluation.ATTACK_NAMES_HELP
        + "."
    ), completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr
    assert not output.exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--model=missing/model.keras"], "model: no such file 'missing/model.keras'"),
        (["--model=images.keras"], "model must output [batch, classes] scores"),
        (["--epsilon=1.5"], "epsilon must be in [0, 1]"),
        (["--epsilon=-0.1"], "epsilon must be in [0, 1]"),
        (["--attacks=pgd20,pgd"], "attacks: 'pgd' needs a step count"),
        (["--attacks=autoattack,fab-q"], "attacks: unknown attack 'fab-q'; allowed: "),
        (["--attacks=autoattack,square"], "attacks lists 'square' twice"),
        (["--attacks=square0"], "steps and restarts of 'square0' must be >= 1"),
        (["--n_examples=0"], "n_examples must be an integer >= 1"),
        (["--batch_size=0"], "batch_size must be an integer >= 1"),
        (["--restarts=0"], "restarts must be an integer >= 1"),
        (["--step_size=0"], "step_size must be > 0"),
        (["--outputs=softmax"], "outputs must be one of logits, probabilities"),
        (["--outputs=probabilities"], "outputs=probabilities but the model's outputs are not"),
        (["--dataset=svhn_cropped_typo"], "dataset must be one of"),
        (["--dataset=npz:/no/such.npz"], "does not exist"),
        (["--output=no/such/dir/report.json"], "--output: directory"),
        (["--preset=svhn"], "preset must be one of mnist, cifar10, imagenet"),
        (["--epsilon=abc"], "flag --epsilon=abc: must be a number (e.g. 0.03 or 8/255)"),
        (["--dataset="], "--dataset is required"),
        (["--strategy=tpu"], "strategy must be one of auto, mirrored, one_device"),
        (["--strategy=multi_worker"], "strategy must be one of auto, mirrored, one_device; got"),
    ],
)
def test_bad_input_fails_before_any_work(workdir, capsys, arguments, message):
    defaults = {
        "--model": str(workdir / "model.keras"),
        "--dataset": "mnist_sample",
        "--epsilon": "0.3",
        "--attacks": "clean,fgsm",
        "--n_examples": "20",
        "--output": str(workdir / "bad.json"),
    }
    for argument in arguments:
        name, value = argument.split("=", 1)
        if name == "--model" and not value.startswith("missing"):
            value = str(workdir / value)
        defaults[name] = value
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        cli.run_evaluate(
            [f"{name}={value}" for name, value in defaults.items()], stdout=stdout, stderr=stderr
        )
    assert exit_info.value.code == 1
    printed = capsys.readouterr().err.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("bin/evaluate: error: ")
    assert message in printed[0]
    # Nothing ran, printed or written.
    assert stdout.getvalue() == "" and stderr.getvalue() == ""
    assert not (workdir / "bad.json").exists()


def settings(*arguments):
    flag_values = cli.define_evaluate_flags(flags.FlagValues())
    flag_values(["bin/evaluate", *arguments])
    return cli.evaluation_settings(flag_values)


def test_presets_fill_defaults_and_flags_override():
    mnist = settings("--preset=mnist", "--dataset=mnist_sample")
    assert (mnist["epsilon"], mnist["n_examples"], mnist["dataset"]) == (0.3, 10000, "mnist_sample")
    suite = evaluation.AttackSuite(
        mnist["attacks"], mnist["epsilon"], mnist["restarts"], mnist["step_size"]
    )
    pgd = next(spec for spec in suite.specs if spec.name == "pgd50")
    assert (pgd.steps, pgd.restarts, pgd.step_size) == (50, 10, 0.01)
    cifar = settings("--preset=cifar10", "--epsilon=4/255", "--restarts=3")
    assert cifar["dataset"] == "cifar10" and cifar["epsilon"] == 4 / 255 and cifar["restarts"] == 3
    imagenet = settings("--preset=imagenet")
    assert (imagenet["epsilon"], imagenet["n_examples"], imagenet["dataset"]) == (
        4 / 255,
        5000,
        "imagenet2012",
    )
    with pytest.raises(ValueError, match="--epsilon is required"):
        settings("--dataset=mnist_sample")
