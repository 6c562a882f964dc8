"""Robust evaluation: run a list of attacks over a dataset and report what survives.

The pieces, in the order `bin/evaluate` uses them:

    specs = evaluation.parse_attacks("clean,fgsm,pgd20,cw20,apgd-ce,apgd-t", epsilon=0.3)
    data = evaluation.load_data("mnist_sample", n_examples=1000)
    report = evaluation.evaluate(network, data, specs, epsilon=0.3, seed=0)
    print(evaluation.format_table(report))
    evaluation.write_report(report, "report.json")

or all of it, with the flags' validation and the presets, in one call:

    evaluation.run(model="workdir/model.keras", dataset="mnist_sample", preset="mnist")

Attack names (comma-separated, each at most once):

- `clean`: no attack. Always measured, listed or not, because "robust" means
  correct on the clean input and under every attack run.
- `fgsm`: one signed step of size epsilon from x (no random start).
- `pgdN`, `cwN`: N steps of PGD on the cross-entropy or on the CW logit
  margin, from a uniform random start, `--restarts` times; `pgd50x10` names
  the restarts explicitly. Step size `--step_size`, else 2.5 * epsilon / N.
- `apgd-ce`, `apgd-dlr`, `apgd-t`: Auto-PGD (Croce and Hein 2020) on the
  cross-entropy, on the DLR loss, and targeted DLR towards each of the 9 most
  likely wrong classes. 100 steps and one run (per target) unless named, as in
  `apgd-ce50` or `apgd-t100x2`. No step size: it adapts per example.

What the report holds (`evaluate` returns it, `write_report` writes it as JSON):
per attack the accuracy, the accuracy after each run (restart, or target x
restart for apgd-t), the time, the number of input-gradient evaluations and the
largest perturbation found; the worst-case robust accuracy; and the sanity
checks below, each with `passed` and a message, failures also in `warnings`.

Sanity checks (they flag, they do not stop the evaluation):

- every attack's accuracy and the robust accuracy are <= the clean accuracy;
- accuracy does not rise when the same attack gets more steps or restarts
  (by more than 0.5 points when the step size differs too);
- every adversarial image is inside the epsilon-ball around x and in [0, 1];
- an example an attack fooled stays fooled when its image is evaluated again
  (a randomized model breaks this, and needs an EOT attack);
- few clean inputs have an input gradient that is exactly zero (masking);
- no iterative attack leaves more examples correct than FGSM (masking);
- with `outputs="logits"`, the outputs do not look like probabilities.

Design choices:

- The network is called with `training=False` (BatchNorm moving statistics,
  no dropout), as everywhere in `attacks.py`.
- Accuracy under an attack comes from running the network again on the images
  the attack returns, not from the attack's own bookkeeping.
- Each example's random start is drawn from the stateless seed
  (seed + restart, example index), and every attack loss is per example, so
  results do not depend on the batch size, the batch order or the number of
  replicas: a `MirroredStrategy` run gives the single-device numbers.
- Under a strategy each attack is one `strategy.run` per global batch; the
  per-example results of the replicas are gathered on the host by index.
"""

import dataclasses
import json
import os
import re
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from deat_tf import attacks as attack_lib
from deat_tf import datasets
from deat_tf import runtime

OUTPUTS = ("logits", "probabilities")
ATTACK_NAMES_HELP = (
    "clean, fgsm, pgdN, cwN (N steps, e.g. pgd20; pgd50x10 for 10 restarts), "
    "apgd-ce, apgd-dlr, apgd-t (optionally with steps and restarts, e.g. apgd-ce50, apgd-t100x2)"
)
DEFAULT_ATTACKS = "clean,fgsm,pgd20,pgd100,cw20,apgd-ce,apgd-t"
DEFAULT_BATCH_SIZE = 256
APGD_DEFAULT_STEPS = 100

# An example counts as masked when its whole input gradient is exactly zero;
# more than this fraction of such examples is flagged.
ZERO_GRADIENT_LIMIT = 0.01
# Accuracy may rise this much with more steps when the step size changes too.
MONOTONE_TOLERANCE = 0.005
# Projections compute x +- epsilon in float32; allow its rounding.
BOUND_TOLERANCE = 1e-6

PRESETS = {
    "mnist": {
        "dataset": "mnist",
        "epsilon": 0.3,
        "n_examples": 10000,
        "attacks": "clean,fgsm,pgd50,cw50,apgd-ce,apgd-t",
        "restarts": 10,
        "step_size": 0.01,
    },
    "cifar10": {
        "dataset": "cifar10",
        "epsilon": 8 / 255,
        "n_examples": 10000,
        "attacks": DEFAULT_ATTACKS,
        "restarts": 1,
        "step_size": 2 / 255,
    },
    "imagenet": {
        "dataset": "imagenet2012",
        "epsilon": 4 / 255,
        "n_examples": 5000,
        "attacks": "clean,fgsm,pgd10,pgd50,apgd-ce,apgd-t",
        "restarts": 1,
        "step_size": 1 / 255,
    },
}

class InputError(ValueError):
    """A bad flag or argument, reported as one line before any work is done."""


# ------------------------------------------------------------------------ attacks


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of an evaluation, resolved from its name.

    Attributes:
        name: The name as given, e.g. "pgd20".
        method: "clean", "fgsm", "pgd", "apgd" or "apgd-t".
        loss: "ce", "cw" or "dlr" ("" for clean).
        steps: Gradient evaluations per run.
        restarts: Random restarts (per target for apgd-t).
        step_size: Step of fgsm/pgd; None for APGD, whose step adapts.
        target_classes: Targets of apgd-t (capped at classes - 1 when run).
    """

    name: str
    method: str
    loss: str = ""
    steps: int = 0
    restarts: int = 1
    step_size: float | None = None
    target_classes: int = 0

    def runs(self, num_classes):
        """Number of attack runs per example (restarts, times targets for apgd-t)."""
        if self.method == "apgd-t":
            return self.restarts * min(self.target_classes, num_classes - 1)
        return self.restarts if self.method in ("pgd", "apgd") else 1

    def gradient_evaluations(self, num_classes):
        """Input-gradient evaluations per example."""
        if self.method == "clean":
            return 0
        if self.method == "fgsm":
            return 1
        return self.steps * self.runs(num_classes)

    def budget_key(self):
        """Attacks with equal keys differ only in steps, restarts and step size."""
        return (self.method, self.loss)


_ATTACK_PATTERN = re.compile(
    r"^(?P<base>clean|fgsm|pgd|cw|apgd-ce|apgd-dlr|apgd-t)(?P<steps>\d+)?(?:x(?P<restarts>\d+))?$"
)


def parse_attacks(names, epsilon, restarts=1, step_size=None):
    """Resolves a comma-separated list of attack names into `AttackSpec`s.

    Args:
        names: E.g. "clean,fgsm,pgd20,cw20,apgd-ce,apgd-t" (see the module docstring).
        epsilon: L-infinity radius; sets the default PGD step 2.5 * epsilon / steps.
        restarts: Restarts of pgdN/cwN names without an explicit xR suffix.
        step_size: PGD/CW step size; None for the default rule.

    Returns:
        A list of `AttackSpec`, "clean" first (added when not listed).

    Raises:
        InputError: For an unknown or repeated name, or a bad count.
    """
    epsilon = _checked(attack_lib.check_epsilon, epsilon, "--epsilon")
    restarts = _checked(attack_lib.check_count, restarts, "--restarts", 1)
    if step_size is not None:
        step_size = _checked(attack_lib.check_positive, step_size, "--step_size")
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",")]
    names = [name for name in names if name]
    if not names:
        raise InputError(f"--attacks is empty; allowed names: {ATTACK_NAMES_HELP}.")
    specs = []
    for name in names:
        match = _ATTACK_PATTERN.match(name.lower())
        if match is None:
            raise InputError(f"--attacks: unknown attack {name!r}; allowed: {ATTACK_NAMES_HELP}.")
        specs.append(_spec_from_match(name, match, epsilon, restarts, step_size))
    seen = set()
    for spec in specs:
        if spec.name in seen:
            raise InputError(f"--attacks lists {spec.name!r} twice.")
        seen.add(spec.name)
    if "clean" not in seen:
        specs.insert(0, AttackSpec("clean", "clean"))
    else:
        specs.sort(key=lambda spec: spec.method != "clean")
    return specs


def _spec_from_match(name, match, epsilon, default_restarts, step_size):
    base, steps, restarts = match.group("base"), match.group("steps"), match.group("restarts")
    if base in ("clean", "fgsm"):
        if steps or restarts:
            raise InputError(f"--attacks: {base!r} takes no step count; got {name!r}.")
        if base == "clean":
            return AttackSpec(name, "clean")
        return AttackSpec(name, "fgsm", "ce", 1, 1, epsilon)
    if base in ("pgd", "cw"):
        if not steps:
            raise InputError(f"--attacks: {base!r} needs a step count, e.g. {base}20; got {name!r}.")
        steps = int(steps)
        runs = int(restarts) if restarts else default_restarts
        if steps < 1 or runs < 1:
            raise InputError(f"--attacks: steps and restarts of {name!r} must be >= 1.")
        step = step_size if step_size is not None else 2.5 * epsilon / steps
        return AttackSpec(name, "pgd", "ce" if base == "pgd" else "cw", steps, runs, step)
    steps = int(steps) if steps else APGD_DEFAULT_STEPS
    runs = int(restarts) if restarts else 1
    if steps < 1 or runs < 1:
        raise InputError(f"--attacks: steps and restarts of {name!r} must be >= 1.")
    if base == "apgd-t":
        return AttackSpec(
            name, "apgd-t", "dlr", steps, runs, None, attack_lib.APGD_TARGET_CLASSES
        )
    return AttackSpec(name, "apgd", base.split("-")[1], steps, runs, None)


def _checked(check, value, flag, *arguments):
    """Runs an attacks.py validator, naming the flag in the error."""
    try:
        return check(value, flag, *arguments)
    except ValueError as error:
        raise InputError(str(error)) from None


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class EvaluationData:
    """Evaluation examples: a dataset of unbatched (image, label) pairs.

    Attributes:
        name: Where they come from (the --dataset value).
        dataset: `tf.data.Dataset` of (float32 image [height, width, channels]
            in [0, 1], int64 label), in a fixed order.
        size: Number of examples, or None when unknown before reading.
        label_count: Largest label + 1 (or the dataset's class count), if known.
    """

    name: str
    dataset: tf.data.Dataset
    size: int | None
    label_count: int | None = None


def from_arrays(images, labels, name="arrays"):
    """Wraps in-memory arrays as `EvaluationData` after checking them.

    Args:
        images: Array [n, height, width, channels] (or [n, height, width]) of
            floats in [0, 1] or uint8.
        labels: Integer array [n].
        name: Label for the report.

    Returns:
        `EvaluationData`.

    Raises:
        InputError: For shapes, dtypes or ranges that are not images and labels.
    """
    try:
        images, labels = datasets.check_image_arrays(images, labels, name)
    except datasets.DatasetError as error:
        raise InputError(str(error)) from None
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return EvaluationData(name, dataset, int(images.shape[0]), int(labels.max()) + 1)


def load_data(name, n_examples=None, data_dir=None, manual_dir=None):
    """Loads the evaluation split of a dataset as `EvaluationData`.

    Args:
        name: "mnist_sample" (the embedded 2,000 test digits), "npz:PATH" (keys
            x_test and y_test), or a TFDS name: mnist, cifar10, cifar100 (split
            "test") or imagenet2012 (split "validation", resize 256 / centre
            crop 224). The split and preprocessing are those of the test
            pipeline of `bin/train` (`datasets.evaluation_split`).
        n_examples: Keep the first n examples (all when None).
        data_dir: TFDS data directory.
        manual_dir: TFDS manual directory holding the ILSVRC2012 tars.

    Returns:
        `EvaluationData`.

    Raises:
        InputError: For an unknown dataset or one that cannot be read.
    """
    if n_examples is not None:
        n_examples = _checked(attack_lib.check_count, n_examples, "--n_examples", 1)
    if not name:
        raise InputError("--dataset is required: mnist_sample, npz:PATH or a TFDS name.")
    try:
        dataset, size, num_classes = datasets.evaluation_split(
            name, n_examples, data_dir=data_dir, manual_dir=manual_dir
        )
    except datasets.DatasetError as error:
        raise InputError(f"--dataset={name}: {error}") from None
    return EvaluationData(name, dataset, size, num_classes)


def _first_line(error):
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


# -------------------------------------------------------------------------- model


def load_classifier(path, strategy=None):
    """Loads a `.keras` classifier; for an `AdversarialModel` returns its network.

    Args:
        path: A `.keras` file written by `bin/train` (model.keras or
            network.keras) or any Keras classifier on [0, 1] images.
        strategy: Optional `tf.distribute.Strategy`; the model is loaded under
            its scope so that its variables are mirrored.

    Returns:
        The Keras model to attack.

    Raises:
        InputError: If the file is missing or is not a loadable Keras model.
    """
    if not path:
        raise InputError("--model is required: a .keras file (e.g. WORKDIR/model.keras).")
    if not os.path.isfile(path):
        raise InputError(f"--model: no such file {path!r}.")
    if not path.endswith(".keras"):
        raise InputError(f"--model must be a .keras file, got {path!r}.")
    # Registers AdversarialModel, Standardize and MinibatchSchedule for deserialisation.
    import deat_tf  # noqa: F401
    from deat_tf.adversarial_model import AdversarialModel

    strategy = strategy or tf.distribute.get_strategy()
    try:
        with strategy.scope():
            model = keras.saving.load_model(path, compile=False)
    except Exception as error:
        raise InputError(f"--model: cannot load {path!r} as a Keras model: {_first_line(error)}") from None
    if isinstance(model, AdversarialModel):
        return model.network
    return model


def _model_functions(model, outputs):
    """Returns (raw outputs function, logits function) of the model."""
    raw = attack_lib.logits_function(model)
    if outputs == "logits":
        return raw, raw

    def log_probabilities(images):
        probabilities = tf.cast(raw(images), tf.float32)
        # log(0) would be -inf; the floor keeps losses finite (their gradient is
        # then zero, which the zero-gradient check reports).
        return tf.math.log(tf.maximum(probabilities, np.finfo(np.float32).tiny))

    return raw, log_probabilities


def check_model_outputs(model, data, outputs="logits"):
    """Calls the model on two examples and checks it is a classifier on these images.

    Args:
        model: Keras model or callable.
        data: `EvaluationData`.
        outputs: "logits" or "probabilities".

    Returns:
        The number of classes.

    Raises:
        InputError: If the model rejects the images, or its output is not
            [batch, classes] with classes >= 2, or probabilities do not sum to 1.
    """
    images, labels = next(iter(data.dataset.batch(2)))
    raw, _ = _model_functions(model, outputs)
    try:
        result = raw(images)
    except Exception as error:
        raise InputError(
            f"--model does not accept the --dataset images of shape "
            f"{tuple(images.shape[1:])}: {_first_line(error)}"
        ) from None
    if isinstance(result, (list, tuple, dict)) or not hasattr(result, "shape"):
        raise InputError("--model must return one [batch, classes] tensor, got a structure.")
    result = np.asarray(result)
    if result.ndim != 2 or result.shape[0] != images.shape[0] or result.shape[1] < 2:
        raise InputError(
            f"--model must output [batch, classes] scores (classes >= 2); for a batch of "
            f"{images.shape[0]} it returned shape {result.shape}."
        )
    num_classes = int(result.shape[1])
    if outputs == "probabilities":
        sums = result.sum(axis=1)
        if result.min() < -1e-6 or np.abs(sums - 1.0).max() > 1e-3:
            raise InputError(
                "--outputs=probabilities but the model's outputs are not probabilities "
                f"(row sums {np.round(sums, 4).tolist()}); use --outputs=logits."
            )
    label_count = data.label_count or int(np.max(labels)) + 1
    if label_count > num_classes:
        raise InputError(
            f"--dataset has label {label_count - 1} but --model has only {num_classes} outputs."
        )
    return num_classes


# --------------------------------------------------------------------- evaluation


def evaluate(
    model,
    data,
    attack_specs,
    epsilon,
    seed=0,
    batch_size=DEFAULT_BATCH_SIZE,
    outputs="logits",
    strategy=None,
    progress=None,
    jit_compile=False,
):
    """Runs every attack over the data and returns the report (a JSON-ready dict).

    Args:
        model: Keras classifier (called with training=False) or callable, on
            images in [0, 1].
        data: `EvaluationData`, or a tuple (images, labels) of arrays.
        attack_specs: List of `AttackSpec` (see `parse_attacks`), or a string of names.
        epsilon: L-infinity radius in [0, 1].
        seed: Integer seed of the random starts.
        batch_size: Global batch size (split over the replicas).
        outputs: "logits", or "probabilities" (their log is attacked).
        strategy: Optional `tf.distribute.Strategy`; the default strategy otherwise.
        progress: Optional callable receiving one progress line at a time.
        jit_compile: XLA-compile each replica's attack step.

    Returns:
        The report: settings, per-attack results, robust accuracy, checks.
    """
    epsilon = _checked(attack_lib.check_epsilon, epsilon, "epsilon")
    seed = _checked(attack_lib.check_count, seed, "seed", 0)
    batch_size = _checked(attack_lib.check_count, batch_size, "batch_size", 1)
    _checked(attack_lib.check_choice, outputs, OUTPUTS, "outputs")
    if isinstance(data, tuple):
        data = from_arrays(*data)
    if isinstance(attack_specs, str):
        attack_specs = parse_attacks(attack_specs, epsilon)
    if not any(spec.method == "clean" for spec in attack_specs):
        attack_specs = [AttackSpec("clean", "clean")] + list(attack_specs)
    strategy = strategy or tf.distribute.get_strategy()
    num_classes = check_model_outputs(model, data, outputs)
    raw_fn, logits_fn = _model_functions(model, outputs)
    progress = progress or (lambda line: None)

    # tf.data autotuning is off: deleting an autotuned iterator at the end of a
    # pass sometimes blocked for seconds (once 39 s), which the attack's time
    # would include. Two batches of prefetch keep the replicas fed.
    options = tf.data.Options()
    options.autotune.enabled = False
    batches = (
        data.dataset.enumerate()
        .map(lambda index, pair: (index, pair[0], pair[1]), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(2)
        .with_options(options)
    )
    distributed = strategy.experimental_distribute_dataset(batches)
    settings = {"epsilon": epsilon, "seed": seed, "num_classes": num_classes}

    results = []
    per_example = {}
    started = time.perf_counter()
    for position, spec in enumerate(attack_specs):
        label = f"[{position + 1}/{len(attack_specs)}] {spec.name}"
        if spec.method == "clean":
            replica_fn = _clean_step(raw_fn, logits_fn, outputs)
        else:
            replica_fn = _attack_step(spec, logits_fn, settings)
        if jit_compile:
            replica_fn = tf.function(replica_fn, jit_compile=True, autograph=False)
        arrays, seconds = _run_pass(strategy, distributed, replica_fn, label, data.size, progress)
        per_example[spec.name] = arrays
        results.append(_attack_result(spec, arrays, seconds, epsilon, num_classes))
        progress(
            f"{label}: accuracy {100 * results[-1]['accuracy']:.2f}% "
            f"({results[-1]['correct']}/{results[-1]['examples']}) in {seconds:.1f} s"
        )

    clean = per_example[next(spec.name for spec in attack_specs if spec.method == "clean")]
    robust = np.ones_like(clean["correct"])
    for arrays in per_example.values():
        robust &= arrays["correct"]
    examples = int(robust.shape[0])
    report = {
        "epsilon": epsilon,
        "seed": seed,
        "batch_size": batch_size,
        "outputs": outputs,
        "replicas": int(strategy.num_replicas_in_sync),
        "examples": examples,
        "num_classes": num_classes,
        "clean_accuracy": float(clean["correct"].mean()),
        "robust_accuracy": float(robust.mean()),
        "robust_correct": int(robust.sum()),
        "robust_over": [spec.name for spec in attack_specs],
        "attacks": results,
        "total_seconds": round(time.perf_counter() - started, 3),
        "total_gradient_evaluations": int(sum(result["gradient_evaluations"] for result in results)),
        "zero_gradient_fraction": {
            "ce": float(clean["zero_gradient_ce"].mean()),
            "margin": float(clean["zero_gradient_margin"].mean()),
        },
        "outputs_look_like_probabilities": bool(clean["probability_like"].all()),
    }
    report["checks"] = sanity_checks(report, attack_specs)
    report["warnings"] = [check["message"] for check in report["checks"] if check["passed"] is False]
    return report


def _clean_step(raw_fn, logits_fn, outputs):
    """Per-replica clean pass: correctness plus the masking diagnostics."""

    def step(indices, images, labels):
        x = tf.cast(images, tf.float32)
        y = tf.cast(labels, tf.int32)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            raw = raw_fn(x)
            logits = tf.cast(raw, tf.float32) if outputs == "logits" else logits_fn(x)
            cross_entropy = tf.reduce_sum(attack_lib.per_example_loss(logits, y, "ce"))
            margin = tf.reduce_sum(attack_lib.margin(logits, y))
        zero_ce = _all_zero(tape.gradient(cross_entropy, x), x)
        zero_margin = _all_zero(tape.gradient(margin, x), x)
        del tape
        axes = list(range(1, x.shape.rank))
        raw = tf.cast(raw, tf.float32)
        probability_like = tf.logical_and(
            tf.reduce_all(tf.logical_and(raw >= 0.0, raw <= 1.0), axis=-1),
            tf.abs(tf.reduce_sum(raw, axis=-1) - 1.0) < 1e-3,
        )
        return {
            "index": indices,
            "correct": _correct(logits, y),
            "zero_gradient_ce": zero_ce,
            "zero_gradient_margin": zero_margin,
            "probability_like": probability_like,
            "deviation": tf.zeros([tf.shape(x)[0]]),
            "lowest": tf.reduce_min(x, axis=axes),
            "highest": tf.reduce_max(x, axis=axes),
            "fooled_by_run": tf.zeros([tf.shape(x)[0], 0], tf.bool),
        }

    return step


def _all_zero(gradient, x):
    """Per example: is the whole input gradient exactly zero (None counts as zero)?"""
    if gradient is None:
        return tf.ones([tf.shape(x)[0]], tf.bool)
    return tf.reduce_all(tf.equal(gradient, 0.0), axis=list(range(1, x.shape.rank)))


def _attack_step(spec, logits_fn, settings):
    """Per-replica step of one attack: adversarial images and what they achieve."""
    epsilon, seed, num_classes = settings["epsilon"], settings["seed"], settings["num_classes"]

    def step(indices, images, labels):
        x = tf.cast(images, tf.float32)
        y = tf.cast(labels, tf.int32)

        def start(restart):
            example_seeds = tf.stack(
                [tf.fill(tf.shape(indices), seed + tf.cast(restart, tf.int64)), indices], axis=1
            )
            noise = attack_lib.per_example_perturbation(x, example_seeds, epsilon)
            return attack_lib.project(x + noise, x, epsilon)

        if spec.method == "fgsm":
            x_adv = attack_lib.fgsm(logits_fn, x, y, epsilon, spec.step_size, spec.loss)
            history = tf.not_equal(tf.argmax(logits_fn(x_adv), axis=-1, output_type=tf.int32), y)[None]
        else:
            if spec.method == "pgd":

                def run(restart):
                    return attack_lib.pgd_loop(
                        logits_fn, x, y, start(restart), epsilon, spec.step_size, spec.steps,
                        spec.loss, keep_best=True,
                    )

            elif spec.method == "apgd":

                def run(restart):
                    return attack_lib.apgd_loop(
                        logits_fn, x, y, start(restart), epsilon, spec.steps, spec.loss
                    )

            else:
                targets = attack_lib.top_wrong_classes(
                    logits_fn(x), y, min(spec.target_classes, num_classes - 1)
                )

                def run(index):
                    # Run index = target rank * restarts + restart.
                    target_labels = tf.gather(targets, index // spec.restarts, axis=1)
                    return attack_lib.apgd_loop(
                        logits_fn, x, y, start(index % spec.restarts), epsilon, spec.steps,
                        spec.loss, target_labels,
                    )

            x_adv, _, _, history = attack_lib.strongest_over_runs(run, spec.runs(num_classes), x)
        x_adv = tf.stop_gradient(x_adv)
        axes = list(range(1, x.shape.rank))
        return {
            "index": indices,
            "correct": _correct(logits_fn(x_adv), y),
            "deviation": tf.reduce_max(tf.abs(x_adv - x), axis=axes),
            "lowest": tf.reduce_min(x_adv, axis=axes),
            "highest": tf.reduce_max(x_adv, axis=axes),
            "fooled_by_run": tf.transpose(history),
        }

    return step


def _correct(logits, labels):
    return tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)


def _run_pass(strategy, distributed, replica_fn, label, size, progress):
    """Runs `replica_fn` on every batch; returns per-example arrays in index order."""
    started = time.perf_counter()
    # Traced once for the dataset's element spec (batch dimension unknown), so
    # the last, smaller batch does not trace the attack again.
    # The attack code has no Python control flow on tensors: skipping autograph
    # cuts tracing from seconds to a fraction.
    compiled = tf.function(lambda batch: strategy.run(replica_fn, args=batch), autograph=False)
    compiled = compiled.get_concrete_function(distributed.element_spec)
    collected = {}
    done = 0
    last_report = started
    for batch in distributed:
        outputs = compiled(batch)
        for key, value in outputs.items():
            parts = [np.asarray(part) for part in strategy.experimental_local_results(value)]
            collected.setdefault(key, []).extend(parts)
        done = sum(part.shape[0] for part in collected["index"])
        now = time.perf_counter()
        if now - last_report >= 2.0:
            correct = np.concatenate(collected["correct"]).mean()
            total = f"/{size}" if size else ""
            progress(
                f"{label}: {done}{total} examples, accuracy so far {100 * correct:.2f}%, "
                f"{now - started:.1f} s"
            )
            last_report = now
    seconds = time.perf_counter() - started
    if not collected:
        raise InputError("--dataset yielded no examples.")
    arrays = {key: np.concatenate(parts) for key, parts in collected.items()}
    order = np.argsort(arrays.pop("index"), kind="stable")
    return {key: value[order] for key, value in arrays.items()}, seconds


def _attack_result(spec, arrays, seconds, epsilon, num_classes):
    examples = int(arrays["correct"].shape[0])
    fooled = arrays["fooled_by_run"]
    mismatches = int(np.sum(fooled.any(axis=1) & arrays["correct"])) if fooled.shape[1] else 0
    # Accuracy after the first i + 1 runs, from the attack's own bookkeeping.
    by_run = (~np.logical_or.accumulate(fooled, axis=1)).mean(axis=0) if fooled.shape[1] else []
    per_example = spec.gradient_evaluations(num_classes)
    max_deviation = float(arrays["deviation"].max())
    lowest, highest = float(arrays["lowest"].min()), float(arrays["highest"].max())
    return {
        "name": spec.name,
        "method": spec.method,
        "loss": spec.loss,
        "steps": spec.steps,
        "restarts": spec.restarts,
        "runs": spec.runs(num_classes),
        "step_size": spec.step_size,
        "target_classes": (
            min(spec.target_classes, num_classes - 1) if spec.method == "apgd-t" else 0
        ),
        "accuracy": float(arrays["correct"].mean()),
        "correct": int(arrays["correct"].sum()),
        "examples": examples,
        "accuracy_by_run": [float(value) for value in by_run],
        "reevaluation_mismatches": mismatches,
        "seconds": round(seconds, 3),
        "gradient_evaluations_per_example": per_example,
        "gradient_evaluations": per_example * examples,
        "max_perturbation": max_deviation,
        "min_pixel": lowest,
        "max_pixel": highest,
        "within_bounds": bool(
            max_deviation <= epsilon + BOUND_TOLERANCE
            and lowest >= -BOUND_TOLERANCE
            and highest <= 1.0 + BOUND_TOLERANCE
        ),
    }


# ------------------------------------------------------------------------- checks


def sanity_checks(report, attack_specs):
    """The checks that flag a suspicious evaluation.

    Args:
        report: The report built by `evaluate` (without checks).
        attack_specs: The `AttackSpec`s it ran, in order.

    Returns:
        A list of {"name", "passed" (True, False, or None when not applicable),
        "message"}.
    """
    checks = []
    results = {result["name"]: result for result in report["attacks"]}
    clean = report["clean_accuracy"]

    above_clean = [
        name for name, result in results.items() if result["accuracy"] > clean
    ]
    if report["robust_accuracy"] > clean:
        above_clean.append("robust")
    checks.append(_check(
        "robust_at_most_clean",
        not above_clean,
        f"accuracy above the clean {100 * clean:.2f}% under: {', '.join(above_clean)}"
        if above_clean else "every attack's accuracy and the robust accuracy are <= clean",
    ))

    rising, compared = [], 0
    for weaker in attack_specs:
        for stronger in attack_specs:
            if (
                weaker is stronger
                or weaker.method in ("clean", "fgsm")
                or weaker.budget_key() != stronger.budget_key()
                or stronger.steps < weaker.steps
                or stronger.restarts < weaker.restarts
            ):
                continue
            compared += 1
            # With one step size the larger budget replays the smaller one's
            # iterates (same seeds), so any rise is a bug; across step sizes
            # allow sampling noise.
            tolerance = 0.0 if stronger.step_size == weaker.step_size else MONOTONE_TOLERANCE
            if results[stronger.name]["accuracy"] > results[weaker.name]["accuracy"] + tolerance:
                rising.append(
                    f"{stronger.name} {100 * results[stronger.name]['accuracy']:.2f}% > "
                    f"{weaker.name} {100 * results[weaker.name]['accuracy']:.2f}%"
                )
    if rising:
        message = "accuracy rose with more steps or restarts: " + "; ".join(rising)
    elif compared:
        message = f"no accuracy rise with more steps or restarts ({compared} pairs compared)"
    else:
        message = (
            "skipped: no two attacks differ only in budget (see accuracy_by_run for restarts)"
        )
    checks.append(_check("monotone_in_budget", not rising if compared else None, message))

    # The attack's own bookkeeping must agree with a fresh evaluation of the
    # images it returns; if not, the model's outputs change from call to call
    # (a randomized defence), and a single attack pass overstates robustness.
    mismatched = {
        name: result["reevaluation_mismatches"]
        for name, result in results.items()
        if result.get("reevaluation_mismatches")
    }
    checks.append(_check(
        "reevaluation_agrees",
        not mismatched,
        "examples fooled during the attack are classified correctly when evaluated again ("
        + ", ".join(f"{name}: {count}" for name, count in mismatched.items())
        + "): the model is randomized or non-deterministic; use an EOT attack"
        if mismatched else "every example an attack fooled stays fooled when evaluated again",
    ))

    outside = [name for name, result in results.items() if not result["within_bounds"]]
    checks.append(_check(
        "within_bounds",
        not outside,
        "adversarial images outside the epsilon-ball or [0, 1] under: " + ", ".join(outside)
        if outside else f"every adversarial image is within epsilon={report['epsilon']:.6g} and [0, 1]",
    ))

    zero = report["zero_gradient_fraction"]
    worst = max(zero.values())
    checks.append(_check(
        "zero_gradients",
        worst <= ZERO_GRADIENT_LIMIT,
        f"{100 * zero['ce']:.2f}% (cross-entropy) and {100 * zero['margin']:.2f}% (margin) of "
        f"clean inputs have an all-zero input gradient"
        + (f" (limit {100 * ZERO_GRADIENT_LIMIT:.0f}%): a sign of gradient masking"
           if worst > ZERO_GRADIENT_LIMIT else ""),
    ))

    fgsm = [result for result in results.values() if result["method"] == "fgsm"]
    if fgsm:
        fgsm_accuracy = fgsm[0]["accuracy"]
        weaker_than_fgsm = [
            f"{name} {100 * result['accuracy']:.2f}%"
            for name, result in results.items()
            if result["method"] in ("pgd", "apgd", "apgd-t") and result["accuracy"] > fgsm_accuracy
        ]
        checks.append(_check(
            "stronger_than_fgsm",
            not weaker_than_fgsm,
            f"iterative attacks leave more examples correct than FGSM ({100 * fgsm_accuracy:.2f}%): "
            + ", ".join(weaker_than_fgsm) + ": a sign of gradient masking"
            if weaker_than_fgsm else "every iterative attack is at least as strong as FGSM",
        ))
    else:
        checks.append(_check("stronger_than_fgsm", None, "skipped: fgsm was not run"))

    if report["outputs"] == "logits":
        looks = report["outputs_look_like_probabilities"]
        checks.append(_check(
            "outputs_are_logits",
            not looks,
            "every output row is in [0, 1] and sums to 1: the model seems to output "
            "probabilities; rerun with --outputs=probabilities"
            if looks else "outputs are not probabilities",
        ))
    return checks


def _check(name, passed, message):
    return {"name": name, "passed": passed, "message": message}


# ------------------------------------------------------------------------- output


def format_table(report):
    """The report as a text table: one row per attack, then robust accuracy and checks."""
    header = ("attack", "loss", "steps x runs", "step", "accuracy", "grads/ex", "seconds")
    rows = []
    for result in report["attacks"]:
        if result["method"] == "clean":
            budget, step = "-", "-"
        elif result["method"] == "fgsm":
            budget, step = "1", f"{result['step_size']:.4g}"
        else:
            budget = f"{result['steps']} x {result['runs']}"
            if result["method"] == "apgd-t":
                budget += f" ({result['target_classes']} targets)"
            step = "adaptive" if result["step_size"] is None else f"{result['step_size']:.4g}"
        rows.append((
            result["name"],
            result["loss"] or "-",
            budget,
            step,
            f"{100 * result['accuracy']:.2f}%",
            str(result["gradient_evaluations_per_example"]),
            f"{result['seconds']:.1f}",
        ))
    total_gradients = sum(result["gradient_evaluations_per_example"] for result in report["attacks"])
    rows.append((
        "robust (all)",
        "",
        "",
        "",
        f"{100 * report['robust_accuracy']:.2f}%",
        str(total_gradients),
        f"{report['total_seconds']:.1f}",
    ))
    widths = [max(len(row[column]) for row in rows + [header]) for column in range(len(header))]

    def line(row):
        cells = [
            cell.ljust(width) if column < 4 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    lines = [
        f"epsilon={report['epsilon']:.6g}  examples={report['examples']}  seed={report['seed']}"
        f"  replicas={report['replicas']}",
        line(header),
        "  ".join("-" * width for width in widths),
    ]
    lines += [line(row) for row in rows[:-1]]
    lines.append("  ".join("-" * width for width in widths))
    lines.append(line(rows[-1]))
    failed = [check for check in report["checks"] if check["passed"] is False]
    passed = sum(check["passed"] is True for check in report["checks"])
    skipped = sum(check["passed"] is None for check in report["checks"])
    summary = f"sanity checks: {passed} passed, {len(failed)} flagged"
    lines.append(summary + (f", {skipped} skipped" if skipped else ""))
    lines += [f"WARNING {check['name']}: {check['message']}" for check in failed]
    return "\n".join(lines)


def write_report(report, path):
    """Writes the report as JSON atomically: a temporary file, then a rename.

    Args:
        report: The dict from `evaluate`.
        path: Destination file; its directory must exist.
    """
    runtime.write_json(path, report)


def _check_output_path(path):
    if not path:
        return None
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InputError(f"--output: directory {directory!r} does not exist.")
    if not os.access(directory, os.W_OK):
        raise InputError(f"--output: directory {directory!r} is not writable.")
    if os.path.isdir(path):
        raise InputError(f"--output must be a file path, got the directory {path!r}.")
    return path


# ---------------------------------------------------------------------- command


def resolve_settings(
    model=None,
    dataset=None,
    epsilon=None,
    attacks=None,
    n_examples=None,
    batch_size=None,
    seed=0,
    preset=None,
    restarts=None,
    step_size=None,
    output=None,
    outputs="logits",
    data_dir=None,
    manual_dir=None,
    strategy="auto",
    jit_compile=False,
):
    """Applies the preset and validates every setting, before any work.

    Arguments are the flags of `bin/evaluate`; None means "not given", so that
    explicit values override the preset's.

    Returns:
        A dict of settings with every default filled in and `attack_specs`.

    Raises:
        InputError: Naming the flag and the allowed values.
    """
    if preset is not None:
        _checked(attack_lib.check_choice, preset, tuple(PRESETS), "--preset")
        defaults = PRESETS[preset]
    else:
        defaults = {}
    dataset = dataset if dataset is not None else defaults.get("dataset")
    epsilon = epsilon if epsilon is not None else defaults.get("epsilon")
    attacks = attacks if attacks is not None else defaults.get("attacks", DEFAULT_ATTACKS)
    n_examples = n_examples if n_examples is not None else defaults.get("n_examples")
    restarts = restarts if restarts is not None else defaults.get("restarts", 1)
    step_size = step_size if step_size is not None else defaults.get("step_size")
    batch_size = batch_size if batch_size is not None else DEFAULT_BATCH_SIZE

    if epsilon is None:
        raise InputError("--epsilon is required (a number in [0, 1]) unless --preset sets it "
                         f"({', '.join(PRESETS)}).")
    epsilon = _checked(attack_lib.check_epsilon, epsilon, "--epsilon")
    if not dataset:
        raise InputError("--dataset is required: mnist_sample, npz:PATH or a TFDS name "
                         "(mnist, cifar10, cifar100, imagenet2012), unless --preset sets it.")
    if n_examples is not None:
        n_examples = _checked(attack_lib.check_count, n_examples, "--n_examples", 1)
    batch_size = _checked(attack_lib.check_count, batch_size, "--batch_size", 1)
    seed = _checked(attack_lib.check_count, seed, "--seed", 0)
    _checked(attack_lib.check_choice, outputs, OUTPUTS, "--outputs")
    _checked(attack_lib.check_choice, strategy, runtime.STRATEGIES, "--strategy")
    specs = parse_attacks(attacks, epsilon, restarts, step_size)
    try:
        kind, path = datasets.parse_name(dataset)
    except datasets.DatasetError as error:
        raise InputError(f"--dataset: {error}") from None
    if kind == "npz" and not os.path.isfile(path):
        raise InputError(f"--dataset={dataset}: no such file {path!r}.")
    if not model:
        raise InputError("--model is required: a .keras file (e.g. WORKDIR/model.keras).")
    if not os.path.isfile(model):
        raise InputError(f"--model: no such file {model!r}.")
    if not model.endswith(".keras"):
        raise InputError(f"--model must be a .keras file, got {model!r}.")
    output = _check_output_path(output)
    return {
        "model": model,
        "dataset": dataset,
        "epsilon": epsilon,
        "attacks": ",".join(spec.name for spec in specs),
        "attack_specs": specs,
        "n_examples": n_examples,
        "batch_size": batch_size,
        "seed": seed,
        "preset": preset,
        "restarts": restarts,
        "step_size": step_size,
        "output": output,
        "outputs": outputs,
        "data_dir": data_dir,
        "manual_dir": manual_dir,
        "strategy": strategy,
        "jit_compile": bool(jit_compile),
    }


def run(stdout=None, stderr=None, **flags):
    """The whole of `bin/evaluate`: validate, load, attack, print, write.

    Args:
        stdout: Stream for the table (sys.stdout by default).
        stderr: Stream for progress lines (sys.stderr by default).
        **flags: The flags, as accepted by `resolve_settings`.

    Returns:
        The report dict.

    Raises:
        InputError: For bad input, before any attack runs; nothing is written.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    settings = resolve_settings(**flags)
    data = load_data(
        settings["dataset"], settings["n_examples"], settings["data_dir"], settings["manual_dir"]
    )
    strategy = runtime.make_strategy(settings["strategy"])
    model = load_classifier(settings["model"], strategy)

    def progress(line):
        print(line, file=stderr, flush=True)

    report = evaluate(
        model,
        data,
        settings["attack_specs"],
        settings["epsilon"],
        seed=settings["seed"],
        batch_size=settings["batch_size"],
        outputs=settings["outputs"],
        strategy=strategy,
        progress=progress,
        jit_compile=settings["jit_compile"],
    )
    report = {
        "model": settings["model"],
        "dataset": settings["dataset"],
        "preset": settings["preset"],
        "n_examples": settings["n_examples"],
        **report,
        "versions": _versions(),
    }
    print(format_table(report), file=stdout, flush=True)
    if settings["output"]:
        write_report(report, settings["output"])
        print(f"report written to {settings['output']}", file=stdout, flush=True)
    return report


def _versions():
    import deat_tf

    return {
        "deat_tf": deat_tf.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": sys.version.split()[0],
    }


__all__ = [
    "AttackSpec",
    "EvaluationData",
    "InputError",
    "PRESETS",
    "check_model_outputs",
    "evaluate",
    "format_table",
    "from_arrays",
    "load_classifier",
    "load_data",
    "parse_attacks",
    "resolve_settings",
    "run",
    "sanity_checks",
    "write_report",
]
