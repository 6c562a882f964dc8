"""The attack suite: a clean pass, one pass per attack, the report (see `deat_tf.evaluation`)."""

import dataclasses
import functools
import time
import zlib

import numpy as np
import tensorflow as tf

from deat_tf import checks, losses
from deat_tf.attacks import kind_of, parse_attacks
from deat_tf.attacks.kinds import with_clean_first
from deat_tf.evaluation.checks import BOUND_TOLERANCE, check_report
from deat_tf.evaluation.inputs import (
    EvaluationData,
    check_model_outputs,
    check_model_strategy,
    from_arrays,
    model_functions,
)

OUTPUTS = ("logits", "probabilities")
# The larger PGD budget first and FGSM last: see the presets in deat_tf.cli.
DEFAULT_ATTACKS = "clean,pgd100,pgd20,cw20,apgd-ce,apgd-t,fgsm"
DEFAULT_BATCH_SIZE = 256


# --------------------------------------------------------------------- evaluation


class AttackSuite:
    """A list of attacks with their settings, checked once; `run` evaluates a model with them.

    Args:
        attacks: A string of names (see the module docstring) or `AttackSpec`s.
        epsilon: L-infinity radius in [0, 1].
        restarts: Restarts of pgdN/cwN names without an xR suffix (string names only).
        step_size: PGD/CW step (string names only; None: 2.5 * epsilon / N).
        seed: Integer seed of the random starts.
        batch_size: Global batch size (split over the replicas).
        outputs: "logits", or "probabilities" (their log is attacked).
        jit_compile: XLA-compile each replica's attack step (not Square's, whose
            loop shrinks to the examples it has not fooled yet).
        cascade: Run each attack only on the examples still robust (correct on
            the clean input and under every earlier attack), as AutoAttack
            does; False runs every attack on every example, for per-attack
            figures (see the module docstring).

    Raises:
        ValueError: For any bad setting, naming it.
    """

    def __init__(
        self,
        attacks,
        epsilon,
        restarts=1,
        step_size=None,
        seed=0,
        batch_size=DEFAULT_BATCH_SIZE,
        outputs="logits",
        jit_compile=False,
        cascade=True,
    ):
        self.epsilon = checks.check_epsilon(epsilon)
        if isinstance(attacks, str):
            attacks = parse_attacks(attacks, restarts=restarts, step_size=step_size)
        # The clean pass comes first: it decides which examples the cascade attacks.
        self.specs = with_clean_first(spec.with_default_step(self.epsilon) for spec in attacks)
        self.seed = checks.check_count(seed, "seed", 0)
        self.batch_size = checks.check_count(batch_size, "batch_size", 1)
        self.outputs = checks.check_choice(outputs, OUTPUTS, "outputs")
        self.jit_compile = bool(jit_compile)
        self.cascade = bool(cascade)

    def _batches(self, data, attacked=None, replicas=1):
        """(index, image, label) batches of the data, or of the examples marked in `attacked`.

        A last batch with fewer examples than `replicas` is padded to one example
        per replica with copies of its last example at index -1 (dropped from the
        results): a replica given an empty batch fails in some CPU convolution
        kernels.
        """
        dataset = data.dataset.enumerate()
        if attacked is not None:
            keep = tf.constant(attacked)
            dataset = dataset.filter(lambda index, pair: tf.gather(keep, index))
        # tf.data autotuning is off: deleting an autotuned iterator at the end of a
        # pass sometimes blocked for seconds (once 39 s), which the attack's time
        # would include. Two batches of prefetch keep the replicas fed.
        options = tf.data.Options()
        options.autotune.enabled = False
        return (
            dataset.map(
                lambda index, pair: (index, pair[0], pair[1]), num_parallel_calls=tf.data.AUTOTUNE
            )
            .batch(self.batch_size)
            .map(functools.partial(_pad_to_replicas, replicas=replicas))
            .prefetch(2)
            .with_options(options)
        )

    def run(self, model, data, strategy=None, progress=None, num_classes=None, return_images=False):
        """Runs every attack over the data and returns the report (a JSON-ready dict).

        Three steps: the clean pass over every example, one pass per attack (under
        the cascade on the examples still robust), then the report and its checks.

        Args:
            model: Keras classifier (called with training=False) or callable, on
                images in [0, 1].
            data: `EvaluationData`, or a tuple (images, labels) of arrays.
            strategy: Optional `tf.distribute.Strategy`; the default strategy otherwise.
            progress: Optional callable receiving one progress line at a time.
            num_classes: The result of `check_model_outputs` when the caller
                already ran it; otherwise the model is checked here.
            return_images: Also return the adversarial images: per example the
                image of the first attack (in list order) that fooled it, the
                clean image where none did or the clean input is misclassified.

        Returns:
            The report: settings, per-attack results, robust accuracy, checks;
            with `return_images`, a tuple (report, float32 images [examples, ...]).

        Raises:
            ValueError: Before any attack, if the model is not a classifier of
                these images (see `check_model_outputs`).
        """
        if isinstance(data, tuple):
            data = from_arrays(*data)
        strategy = strategy or tf.distribute.get_strategy()
        if num_classes is None:
            num_classes = check_model_outputs(model, data, self.outputs)
        check_model_strategy(model, strategy)
        run = _Run(
            suite=self,
            data=data,
            strategy=strategy,
            progress=progress or (lambda line: None),
            num_classes=num_classes,
            return_images=return_images,
            started=time.perf_counter(),
        )
        raw_fn, logits_fn = model_functions(model, self.outputs)
        self._clean_pass(run, raw_fn, logits_fn)
        for position, spec in enumerate(self.specs[1:], 2):
            self._attack_pass(run, spec, logits_fn, position)
        report = self._report(run)
        return (report, run.images) if return_images else report

    def _pass(self, run, spec, replica_fn, position, attacked):
        """Runs one pass over the data (or the `attacked` examples): per-example arrays, seconds."""
        if self.jit_compile and spec.kind.xla:
            replica_fn = tf.function(replica_fn, jit_compile=True, autograph=False)
        if attacked is not None and not attacked.any():
            return None, 0.0
        replicas = run.strategy.num_replicas_in_sync
        distributed = run.strategy.experimental_distribute_dataset(
            self._batches(run.data, attacked, replicas)
        )
        size = run.data.size if attacked is None else int(attacked.sum())
        label = f"[{position}/{len(self.specs)}] {spec.name}"
        return _run_pass(run.strategy, distributed, replica_fn, label, size, run.progress)

    def _clean_pass(self, run, raw_fn, logits_fn):
        """Step 1: every example, unattacked; it sets what the cascade attacks."""
        spec = self.specs[0]
        replica_fn = _clean_step(raw_fn, logits_fn, self.outputs, run.return_images)
        arrays, seconds = self._pass(run, spec, replica_fn, 1, None)
        run.clean = arrays
        run.examples = int(arrays["correct"].shape[0])
        run.robust = arrays["correct"].copy()
        if run.return_images:
            run.images = arrays.pop("x_adv")
        result = _attack_result(spec, arrays, seconds, self, run.num_classes, run.examples)
        run.results.append(result)
        self._report_progress(run, spec, 1, result, seconds, attacked=None)

    def _attack_pass(self, run, spec, logits_fn, position):
        """Step 2, once per attack: the examples still robust (all without the cascade)."""
        replica_fn = _attack_step(
            spec, logits_fn, self.epsilon, self.seed, run.num_classes, run.return_images
        )
        attacked = run.robust if self.cascade else None
        arrays, seconds = self._pass(run, spec, replica_fn, position, attacked)
        correct = np.zeros(run.examples, bool)
        fooled = np.zeros(run.examples, bool)
        if arrays is not None:
            correct[arrays["index"]] = arrays["correct"]
            fooled[arrays["index"]] = ~arrays["correct"]
        run.victims[spec.name] = fooled & run.clean["correct"]
        first = fooled & run.robust
        if run.return_images and first.any():
            where = np.flatnonzero(first[arrays["index"]])
            run.images[arrays["index"][where]] = arrays.pop("x_adv")[where]
        run.robust &= ~fooled
        result = _attack_result(spec, arrays, seconds, self, run.num_classes, run.examples)
        # Under the cascade an attack's accuracy is the robust accuracy so far;
        # without it, the accuracy of this attack alone.
        result["correct"] = int(run.robust.sum() if self.cascade else correct.sum())
        result["accuracy"] = result["correct"] / run.examples
        result["fooled_first"] = int(first.sum())
        run.results.append(result)
        self._report_progress(run, spec, position, result, seconds, attacked)

    def _report_progress(self, run, spec, position, result, seconds, attacked):
        run.progress(
            f"[{position}/{len(self.specs)}] {spec.name}: accuracy {100 * result['accuracy']:.2f}% "
            f"({result['correct']}/{result['examples']}"
            + (f", {result['attacked']} attacked" if attacked is not None else "")
            + f") in {seconds:.1f} s"
        )

    def _report(self, run):
        """Step 3: the report of the passes, with the comparisons and checks."""
        results, clean, robust = run.results, run.clean, run.robust
        self._compare_with_gradient_attacks(results, run.victims)
        report = {
            "epsilon": self.epsilon,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "outputs": self.outputs,
            "replicas": int(run.strategy.num_replicas_in_sync),
            "cascade": self.cascade,
            "examples": run.examples,
            "num_classes": run.num_classes,
            "clean_accuracy": float(clean["correct"].mean()),
            "robust_accuracy": float(robust.mean()),
            "robust_correct": int(robust.sum()),
            "robust_over": [spec.name for spec in self.specs],
            "attacks": results,
            "total_seconds": round(time.perf_counter() - run.started, 3),
            "total_gradient_evaluations": int(
                sum(result["gradient_evaluations"] for result in results)
            ),
            "total_queries": int(sum(result["queries"] for result in results)),
            "zero_gradient_fraction": {
                "ce": float(clean["zero_gradient_ce"].mean()),
                "margin": float(clean["zero_gradient_margin"].mean()),
            },
            "outputs_look_like_probabilities": bool(clean["probability_like"].all()),
        }
        report["checks"] = check_report(report, self.specs)
        report["warnings"] = [
            check["message"] for check in report["checks"] if check["passed"] is False
        ]
        return report

    def _compare_with_gradient_attacks(self, results, victims):
        """Adds to the FGSM and Square results the examples they alone fooled.

        `fooled_beyond_gradient_attacks` counts the examples the attack fooled
        that every gradient-based attack in `compared_with` left correct: all of
        them without the cascade, those that ran before it under the cascade
        (the later ones never saw its victims). FGSM (gradient-based, not
        iterative) is compared with the iterative attacks only, Square (not
        gradient-based) with every gradient-based one. The masking checks of
        `sanity_checks` read them.
        """
        for position, result in enumerate(results):
            kind = kind_of(result["method"])
            if kind.iterative or kind.is_clean:
                continue
            candidates = results[:position] if self.cascade else results
            compared = []
            for other in candidates:
                other_kind = kind_of(other["method"])
                if other is not result and (
                    other_kind.iterative if kind.gradient_based else other_kind.gradient_based
                ):
                    compared.append(other["name"])
            beyond = victims[result["name"]].copy()
            for name in compared:
                beyond &= ~victims[name]
            result["compared_with"] = compared
            result["fooled_beyond_gradient_attacks"] = int(beyond.sum())


@dataclasses.dataclass
class _Run:
    """One `AttackSuite.run`: its inputs and what the passes have found so far."""

    suite: AttackSuite
    data: EvaluationData
    strategy: tf.distribute.Strategy
    progress: object
    num_classes: int
    return_images: bool
    started: float
    results: list = dataclasses.field(default_factory=list)
    clean: dict | None = None
    examples: int = 0
    # Per example: correct on the clean input and under every attack so far.
    robust: np.ndarray | None = None
    # Per attack: the examples correct on the clean input that it fooled.
    victims: dict = dataclasses.field(default_factory=dict)
    images: np.ndarray | None = None


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
    restarts=1,
    step_size=None,
    cascade=True,
):
    """Runs every attack over the data: `AttackSuite(...).run(model, data, ...)` in one call.

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
        restarts: Restarts of pgdN/cwN names (string names only).
        step_size: PGD/CW step (string names only; None: 2.5 * epsilon / N).
        cascade: Attack only the examples still robust (see `AttackSuite`).

    Returns:
        The report: settings, per-attack results, robust accuracy, checks.
    """
    suite = AttackSuite(
        attack_specs,
        epsilon,
        restarts,
        step_size,
        seed,
        batch_size,
        outputs,
        jit_compile,
        cascade,
    )
    return suite.run(model, data, strategy, progress)


def _clean_step(raw_fn, logits_fn, outputs, return_images=False):
    """Per-replica clean pass: correctness plus the masking diagnostics."""

    def step(indices, images, labels):
        x = tf.cast(images, tf.float32)
        y = tf.cast(labels, tf.int32)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            raw = raw_fn(x)
            logits = tf.cast(raw, tf.float32) if outputs == "logits" else logits_fn(x)
            cross_entropy = tf.reduce_sum(losses.per_example_loss(logits, y, "ce"))
            margin = tf.reduce_sum(losses.margin(logits, y))
        zero_ce = _all_zero(tape.gradient(cross_entropy, x), x)
        zero_margin = _all_zero(tape.gradient(margin, x), x)
        del tape
        axes = list(range(1, x.shape.rank))
        raw = tf.cast(raw, tf.float32)
        probability_like = tf.logical_and(
            tf.reduce_all(tf.logical_and(raw >= 0.0, raw <= 1.0), axis=-1),
            tf.abs(tf.reduce_sum(raw, axis=-1) - 1.0) < 1e-3,
        )
        result = {
            "index": indices,
            "correct": _correct(logits, y),
            "zero_gradient_ce": zero_ce,
            "zero_gradient_margin": zero_margin,
            "probability_like": probability_like,
            "deviation": tf.zeros([tf.shape(x)[0]]),
            "lowest": tf.reduce_min(x, axis=axes),
            "highest": tf.reduce_max(x, axis=axes),
            "fooled_by_run": tf.zeros([tf.shape(x)[0], 0], tf.bool),
            "queries": tf.zeros([tf.shape(x)[0]], tf.int32),
        }
        if return_images:
            result["x_adv"] = x
        return result

    return step


def _all_zero(gradient, x):
    """Per example: is the whole input gradient exactly zero (None counts as zero)?"""
    if gradient is None:
        return tf.ones([tf.shape(x)[0]], tf.bool)
    return tf.reduce_all(tf.equal(gradient, 0.0), axis=list(range(1, x.shape.rank)))


def attack_seed(seed, name):
    """The seed of one attack of a list: the suite's seed moved to the attack's own stream.

    AutoAttack draws every attack's random starts afresh; keying the stream on
    the attack's name (not its position) gives each attack of a list its own
    draws, and an attack the same draws whichever list it stands in. Runs add
    their index to this seed, and the streams lie 2**20 seeds apart.

    Args:
        seed: The suite's integer seed >= 0.
        name: The attack's name, e.g. "apgd-ce".

    Returns:
        An int, seed + crc32(name) * 2**20.
    """
    return int(seed) + zlib.crc32(name.lower().encode()) * 2**20


def _attack_step(spec, logits_fn, epsilon, seed, num_classes, return_images=False):
    """Per-replica step of one attack (its kinds row's `run`): images and what they achieve."""
    seed = attack_seed(seed, spec.name)

    def step(indices, images, labels):
        x = tf.cast(images, tf.float32)
        y = tf.cast(labels, tf.int32)
        outcome = spec.kind.run(spec, logits_fn, x, y, epsilon, seed, indices, num_classes)
        x_adv = tf.stop_gradient(outcome.images)
        axes = list(range(1, x.shape.rank))
        result = {
            "index": indices,
            "correct": _correct(logits_fn(x_adv), y),
            "deviation": tf.reduce_max(tf.abs(x_adv - x), axis=axes),
            "lowest": tf.reduce_min(x_adv, axis=axes),
            "highest": tf.reduce_max(x_adv, axis=axes),
            "fooled_by_run": tf.transpose(outcome.fooled_by_run),
            "queries": outcome.queries,
        }
        if return_images:
            result["x_adv"] = x_adv
        return result

    return step


def _correct(logits, labels):
    return tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)


def _pad_to_replicas(index, images, labels, replicas):
    """Pads a batch smaller than `replicas` with copies of its last example at index -1."""
    missing = tf.maximum(replicas - tf.shape(index)[0], 0)
    return (
        tf.concat([index, tf.fill([missing], tf.constant(-1, index.dtype))], 0),
        tf.concat([images, tf.repeat(images[-1:], missing, axis=0)], 0),
        tf.concat([labels, tf.repeat(labels[-1:], missing, axis=0)], 0),
    )


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
        done = sum(int(np.sum(part >= 0)) for part in collected["index"])
        now = time.perf_counter()
        if now - last_report >= 2.0:
            correct = np.concatenate(collected["correct"]).mean()
            total = f"/{size}" if size else ""
            progress(
                f"{label}: {done}{total} examples, {100 * correct:.2f}% of them still correct, "
                f"{now - started:.1f} s"
            )
            last_report = now
    seconds = time.perf_counter() - started
    if not collected:
        raise ValueError("dataset yielded no examples.")
    arrays = {key: np.concatenate(parts) for key, parts in collected.items()}
    real = arrays["index"] >= 0  # padding rows (see _pad_to_replicas) are dropped
    arrays = {key: value[real] for key, value in arrays.items()}
    order = np.argsort(arrays["index"], kind="stable")
    return {key: value[order] for key, value in arrays.items()}, seconds


def _attack_result(spec, arrays, seconds, suite, num_classes, examples):
    """One attack's entry of the report, from its per-example arrays (None: nothing attacked)."""
    attacked = 0 if arrays is None else int(arrays["index"].shape[0])
    if arrays is None:
        fooled = np.zeros((0, spec.runs(num_classes)), bool)
        mismatches, max_deviation, lowest, highest, queries = 0, 0.0, 0.0, 1.0, 0
    else:
        fooled = arrays["fooled_by_run"]
        mismatches = int(np.sum(fooled.any(axis=1) & arrays["correct"])) if fooled.shape[1] else 0
        max_deviation = float(arrays["deviation"].max())
        lowest, highest = float(arrays["lowest"].min()), float(arrays["highest"].max())
        queries = int(arrays["queries"].sum())
    # Accuracy after the first i + 1 runs, from the attack's own bookkeeping; the
    # examples not attacked (under the cascade) were fooled before.
    survivors = (~np.logical_or.accumulate(fooled, axis=1)).sum(axis=0) if fooled.shape[1] else []
    per_example = spec.gradient_evaluations(num_classes)
    epsilon = suite.epsilon
    return {
        "name": spec.name,
        "method": spec.method,
        "loss": spec.loss,
        "steps": spec.steps,
        "restarts": spec.restarts,
        "runs": spec.runs(num_classes),
        "step_size": spec.step_size,
        "target_classes": spec.targets(num_classes),
        "accuracy": float(arrays["correct"].mean()) if arrays is not None else 0.0,
        "correct": int(arrays["correct"].sum()) if arrays is not None else 0,
        "examples": examples,
        "attacked": attacked,
        "accuracy_by_run": [float(count) / examples for count in survivors],
        "reevaluation_mismatches": mismatches,
        "seconds": round(seconds, 3),
        "gradient_evaluations_per_example": per_example,
        "gradient_evaluations": per_example * attacked,
        "queries_per_example": spec.queries(),
        "queries": queries,
        "max_perturbation": max_deviation,
        "min_pixel": lowest,
        "max_pixel": highest,
        "within_bounds": bool(
            max_deviation <= epsilon + BOUND_TOLERANCE
            and lowest >= -BOUND_TOLERANCE
            and highest <= 1.0 + BOUND_TOLERANCE
        ),
    }
