"""Robustness against training cost on real MNIST digits: M+DEAT, FREE-m, PGD-40, PGD-7, FGSM-RS.

The claim of DEAT is that M+DEAT reaches the robustness of fixed-count
methods with fewer gradient passes. This trains the MNIST CNN (`mnist_cnn`)
on the digits embedded in the package (`--dataset=mnist_sample`: 7,000 for
training, 1,000 held out, 2,000 test digits) against epsilon = 0.3 with each
method, for several seeds, through `deat_tf.train.train_and_evaluate` (the
code of bin/train), and reports for the network after the last epoch:

- gradient passes: forward+backward passes over minibatches, as the runs log
  them (r per minibatch for DEAT/FREE, K + 1 for PGD, 2 for FGSM-RS);
- wall time of the training epochs (the run's `total_train_seconds`);
- clean accuracy and robust accuracy under PGD-50 with 10 restarts, step
  0.01 (the customary MNIST evaluation), through `deat_tf.evaluation`.

Every method shares the optimizer, schedule, batch and epochs (Wong et al.'s
MNIST setting: Adam, cyclic learning rate 0 -> 5e-3 -> 0 peaking at 40%,
batch 100) and the network's PyTorch initialization, so that only the attack
differs; the settings per method are written to the JSON.

The PGD-40 and PGD-7 attacks stop moving an example at its first
misclassified iterate (`steps_after_misclassified=0`), as the PGD training of
Wong et al.'s MNIST code does. Without that stop, PGD training from scratch
stays at chance in this setting (the network's ReLUs die and it outputs a
constant); `--pgd_steps_after_misclassified=none` runs that variant.

Every method trains for the same number of epochs, the protocol of the DEAT
paper and of Wong et al.: the claim is robustness at a lower cost for the same
training, and the cost is what the figure's axis measures. An equal budget of
gradient passes would give PGD-40 (41 passes per minibatch, 2,870 per epoch)
less than one epoch where M+DEAT (1 to 8 per minibatch) trains ten: a
different question (robustness per pass), with a different learning-rate
schedule for each method.

    python benchmarks/mnist_efficiency.py                # 3 seeds, 10 epochs, 2,000 test digits
    python benchmarks/mnist_efficiency.py --quick        # 1 seed, 2 epochs, 200 test digits

Results go to benchmarks/mnist_efficiency.json and, with matplotlib installed
(`pip install -e .[bench]`), a figure of accuracy against gradient passes to
benchmarks/mnist_efficiency.png (with --quick: mnist_efficiency_quick.json and
.png). Run it alone on the machine: the times are wall times.
"""

import contextlib
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "benchmarks/mnist_efficiency.json", "Where to write the JSON.")
flags.DEFINE_string(
    "figure", "benchmarks/mnist_efficiency.png", "Where to draw the figure (needs matplotlib)."
)
flags.DEFINE_list(
    "methods", ["mdeat", "free", "pgd40", "pgd7", "fgsm_rs"], "Methods to train (see METHODS)."
)
flags.DEFINE_integer("seeds", 3, "Seeds per method.")
flags.DEFINE_integer("epochs", 10, "Training epochs of every method.")
flags.DEFINE_integer("free_replays", 8, "Replays m of FREE-m.")
flags.DEFINE_string(
    "pgd_steps_after_misclassified",
    "0",
    "Early stop tau of the PGD-40 and PGD-7 attacks (steps_after_misclassified): 0 stops an "
    "example at its first misclassified iterate, as Wong et al.'s MNIST PGD training; none "
    "attacks every example for all K steps.",
)
flags.DEFINE_integer("test_examples", 2000, "Test digits evaluated (of the sample's 2,000).")
flags.DEFINE_integer("restarts", 10, "Restarts of the PGD-50 evaluation.")
flags.DEFINE_string(
    "workdir_root", None, "Keep each run's workdir under this folder (default: a temporary one)."
)
flags.DEFINE_enum("init", "pytorch", ["keras", "pytorch"], "Initialization of the network.")
flags.DEFINE_boolean("quick", False, "1 seed, 2 epochs, 200 test digits: a check that it runs.")

EPSILON = 0.3
EVALUATION_STEPS = 50
EVALUATION_STEP_SIZE = 0.01

# The attack of each method; everything else is COMMON_SETTINGS.
METHODS = {
    "mdeat": {
        "label": "M+DEAT",
        "settings": {
            "method": "deat",
            "step_size": 0.375,
            "scheduler": "magnitude",
            "gamma": 1.0,
            "max_steps": 8,
        },
        "note": "r from 1, M+ rule (gamma 1.0, the short recipes' value) up to 8; uniform "
        "start, alpha 0.375 (1.25 epsilon), as configs/mnist_demo.py",
    },
    "free": {
        "label": "FREE-{m}",
        "settings": {"method": "free", "step_size": 0.375, "scheduler": "none"},
        "note": "m fixed replays with M+DEAT's start and alpha, so that only the schedule of "
        "r differs",
    },
    "pgd40": {
        "label": "PGD-40",
        "settings": {
            "method": "pgd",
            "attack_steps": 40,
            "step_size": 0.01,
            "scheduler": "none",
            "steps_after_misclassified": 0,
        },
        "note": "Madry et al.'s MNIST attack, 40 steps of 0.01 from a uniform start, as Wong "
        "et al.'s MNIST PGD training runs it: an example stops at its first misclassified "
        "iterate",
    },
    "pgd7": {
        "label": "PGD-7",
        "settings": {
            "method": "pgd",
            "attack_steps": 7,
            "step_size": 2.5 * EPSILON / 7,
            "scheduler": "none",
            "steps_after_misclassified": 0,
        },
        "note": "7 steps of 2.5 epsilon / 7 from a uniform start; an example stops at its "
        "first misclassified iterate, as in Wong et al.'s MNIST PGD training",
    },
    "fgsm_rs": {
        "label": "FGSM-RS",
        "settings": {"method": "fgsm_rs", "step_size": 0.375, "scheduler": "none"},
        "note": "Wong et al.'s MNIST setting: uniform start, one step of 0.375 (1.25 epsilon)",
    },
}


def common_settings(epochs, seed):
    """The settings every method shares (a dict of TrainConfig fields)."""
    return {
        "dataset": "mnist_sample",
        "validation_size": 1000,
        "augmentation": "none",
        "model": "mnist_cnn",
        "init": FLAGS.init,
        "epsilon": EPSILON,
        "epochs": epochs,
        "batch_size": 100,
        "optimizer": "adam",
        "learning_rate": 5e-3,
        "weight_decay": 0.0,
        "lr_schedule": "cyclic",
        "lr_peak": 0.4,
        # Validation is clean only and the final test is done here: the run's own
        # checks would only add time to compare.
        "validation_attack_steps": 0,
        "test_examples": 0,
        "train_accuracy_examples": 0,
        "progress_bar": False,
        "seed": seed,
    }


def pgd_early_stop():
    """tau of the PGD baselines from --pgd_steps_after_misclassified (None for none)."""
    text = FLAGS.pgd_steps_after_misclassified.strip().lower()
    if text == "none":
        return None
    if not text.isdigit():
        raise app.UsageError(
            "--pgd_steps_after_misclassified must be an integer >= 0 or none, "
            f"got {FLAGS.pgd_steps_after_misclassified!r}."
        )
    return int(text)


def describe_pgd_early_stop(tau):
    """What the PGD baselines' attack does with early stop tau, for the JSON."""
    if tau is None:
        return "every example takes all K steps (--pgd_steps_after_misclassified=none)."
    if tau == 0:
        return (
            "an example stops moving at its first misclassified iterate, the random start "
            "included (steps_after_misclassified=0), as in Wong et al.'s MNIST PGD training."
        )
    return (
        f"an example stops moving once it has been misclassified at more than {tau} of its "
        f"iterates (steps_after_misclassified={tau}, friendly adversarial training's tau)."
    )


def method_settings(name):
    """The TrainConfig fields of one method, with the flags that change them applied."""
    settings = dict(METHODS[name]["settings"])
    if name == "free":
        settings["attack_steps"] = FLAGS.free_replays
    if "steps_after_misclassified" in settings:
        settings["steps_after_misclassified"] = pgd_early_stop()
    return settings


def label(name):
    return METHODS[name]["label"].format(m=FLAGS.free_replays)


def train_one(name, seed, epochs, workdir):
    """Trains one run with bin/train's code; returns its summary (stdout goes to a log)."""
    from deat_tf import config as config_lib
    from deat_tf import train

    recipe = config_lib.replace(
        config_lib.TrainConfig(), **common_settings(epochs, seed), **method_settings(name)
    )
    log_path = workdir + ".log"
    with open(log_path, "w") as log, contextlib.redirect_stdout(log):
        summary = train.train_and_evaluate(recipe, workdir)
    return summary, recipe


def evaluate_one(workdir, data, seed):
    """Clean and PGD-50 x restarts accuracy of the run's last network."""
    import keras

    from deat_tf import evaluation

    network = keras.saving.load_model(os.path.join(workdir, "network.keras"))
    report = evaluation.evaluate(
        network,
        data,
        f"clean,pgd{EVALUATION_STEPS}",
        EPSILON,
        seed=seed,
        batch_size=500,
        restarts=FLAGS.restarts,
        step_size=EVALUATION_STEP_SIZE,
    )
    return report


def mean_and_std(values):
    values = list(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": spread, "n": len(values)}


def draw(results, path, title):
    """Accuracy against gradient passes, one marker per run; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.ticker
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    colours = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, runs) in enumerate(results.items()):
        colour = colours[index % len(colours)]
        passes = [run["gradient_passes"] for run in runs]
        axes.scatter(
            passes, [run["robust_accuracy"] for run in runs], color=colour, label=label(name)
        )
        axes.scatter(
            passes,
            [run["clean_accuracy"] for run in runs],
            edgecolors=colour,
            facecolors="none",
        )
    axes.set_xscale("log")
    # Plain numbers at 1, 2, 5 x 10^k; the log axis' own minor labels would overlap.
    axes.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_xlabel("gradient passes (forward+backward over minibatches)")
    axes.set_ylabel("accuracy (filled: PGD-50 x 10, hollow: clean)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return True


def main(argv):
    del argv
    # TensorFlow's checkpointing logs every save at INFO, as bin/train keeps it quiet.
    logging.set_verbosity(logging.WARNING)
    if FLAGS.quick:
        FLAGS.seeds, FLAGS.epochs, FLAGS.test_examples = 1, 2, 200
        # Keep the full run's file names for the full run.
        for flag in ("output", "figure"):
            if not FLAGS[flag].present:
                stem, extension = os.path.splitext(FLAGS[flag].value)
                FLAGS[flag].value = f"{stem}_quick{extension}"
    unknown = [name for name in FLAGS.methods if name not in METHODS]
    if unknown:
        raise app.UsageError(f"--methods: unknown method {unknown[0]!r}; use {list(METHODS)}.")
    for flag in ("seeds", "epochs", "test_examples", "restarts", "free_replays"):
        if getattr(FLAGS, flag) < 1:
            raise app.UsageError(f"--{flag} must be >= 1, got {getattr(FLAGS, flag)}.")
    pgd_early_stop()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "matplotlib is not installed: the JSON will be written but no figure. "
            "Install it with pip install -e .[bench] (or pip install matplotlib).",
            file=sys.stderr,
            flush=True,
        )

    from deat_tf import evaluation

    data = evaluation.load_data("mnist_sample", n_examples=FLAGS.test_examples)
    root = FLAGS.workdir_root or tempfile.mkdtemp(prefix="mnist_efficiency_")
    os.makedirs(root, exist_ok=True)
    started = time.perf_counter()
    results, settings = {}, {}
    try:
        for name in FLAGS.methods:
            results[name] = []
            for seed in range(FLAGS.seeds):
                workdir = os.path.join(root, f"{name}_seed{seed}")
                summary, recipe = train_one(name, seed, FLAGS.epochs, workdir)
                evaluation_start = time.perf_counter()
                report = evaluate_one(workdir, data, seed)
                run = {
                    "seed": seed,
                    "gradient_passes": summary["gradient_passes"],
                    "train_seconds": summary["total_train_seconds"],
                    "run_seconds": summary["total_seconds"],
                    "attack_steps_per_epoch": [
                        int(record["attack_steps"]) for record in summary["epochs"]
                    ],
                    "clean_accuracy": report["clean_accuracy"],
                    "robust_accuracy": report["robust_accuracy"],
                    "evaluation_seconds": time.perf_counter() - evaluation_start,
                    "evaluation_warnings": report["warnings"],
                }
                results[name].append(run)
                settings[name] = {
                    "label": label(name),
                    "note": METHODS[name]["note"],
                    **method_settings(name),
                    "step_size": recipe.step_size,
                }
                print(
                    f"{label(name):8s} seed {seed}: {run['gradient_passes']:8.0f} passes, "
                    f"{run['train_seconds']:7.1f} s, clean {run['clean_accuracy']:.4f}, "
                    f"PGD-{EVALUATION_STEPS}x{FLAGS.restarts} {run['robust_accuracy']:.4f}, "
                    f"r/K per epoch {run['attack_steps_per_epoch']}",
                    flush=True,
                )
    finally:
        if FLAGS.workdir_root is None:
            shutil.rmtree(root, ignore_errors=True)
    summary_rows = {
        name: {
            key: mean_and_std(run[key] for run in runs)
            for key in ("gradient_passes", "train_seconds", "clean_accuracy", "robust_accuracy")
        }
        for name, runs in results.items()
    }
    output = {
        "description": (
            "mnist_cnn on the embedded MNIST sample (7,000 training digits), epsilon 0.3; "
            f"network after the last epoch; clean and PGD-{EVALUATION_STEPS} x {FLAGS.restarts} "
            f"restarts (step {EVALUATION_STEP_SIZE}) accuracy on the first {FLAGS.test_examples} "
            "test digits; robust_accuracy counts examples correct clean and under the attack."
        ),
        "protocol": (
            "every method trains the same epochs with the same optimizer, learning-rate "
            "schedule, batch and initialization; only the attack differs, and the cost is "
            "reported as gradient passes and training seconds. PGD baselines: "
            + describe_pgd_early_stop(pgd_early_stop())
        ),
        "quick": FLAGS.quick,
        "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "total_seconds": time.perf_counter() - started,
        "common_settings": {
            key: value
            for key, value in common_settings(FLAGS.epochs, None).items()
            if key != "seed"
        },
        "method_settings": settings,
        "summary": summary_rows,
        "runs": results,
        "machine": common.machine_description(),
    }
    common.write_json(FLAGS.output, output)
    title = f"MNIST sample, mnist_cnn, eps 0.3, {FLAGS.epochs} epochs, {FLAGS.seeds} seed(s)" + (
        " (quick)" if FLAGS.quick else ""
    )
    if draw(results, FLAGS.figure, title):
        print(f"figure written to {FLAGS.figure}")
    else:
        print(
            "no figure: matplotlib is not installed (pip install -e .[bench]).",
            file=sys.stderr,
        )


if __name__ == "__main__":
    app.run(main)
