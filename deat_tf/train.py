"""`train_and_evaluate(config, workdir)`: one adversarial training run, start to finish.

    from deat_tf import config, train
    summary = train.train_and_evaluate(config.load_file("configs/mnist_demo.py"), "runs/demo")

What a run does, in order:

1. `prepare` checks everything before writing anything: the config's types
   and cross-field rules (when it was built), the workdir (new or empty,
   writable), the replica count (the global batch must split evenly), then it
   builds the network, the `AdversarialModel`, the optimizer and the
   scheduler, each of which checks its own arguments, and only then the input
   pipelines (TFDS preparation, ImageNet tars, npz arrays). A problem raises
   `ValueError` with a one-line message and leaves no workdir behind.
2. `Run.execute` trains with `fit`; after every epoch the callbacks, in this
   order, apply the iteration-count scheduler, add timings, clean training
   accuracy and gradient passes to the logs, write TensorBoard scalars, save
   the last and (if validation PGD accuracy improved) the best checkpoint,
   then rewrite summary.json and print a one-line summary.
3. It saves the final models and evaluates the last and the best network on
   the test split through `deat_tf.evaluation` (clean and PGD), the code
   `bin/evaluate` runs, so the two tools report comparable numbers.

The workdir layout is described in `deat_tf.workdir`.

Distribution: `batch_size` is the GLOBAL batch. Under MirroredStrategy each of
the N replicas trains on batch_size / N examples per minibatch (batch_size must
be divisible by N), gradients are summed across replicas, and BatchNorm uses
per-replica batch statistics. The learning rate is not rescaled: the recipes'
rates are for their global batch.
"""

import contextlib
import dataclasses
import functools
import math
import os
import shutil
import signal
import sys
import tempfile
import time

import keras
import tensorflow as tf

from deat_tf import checkpoints as checkpoints_lib
from deat_tf import (
    checks,
    datasets,
    distribute,
    evaluation,
    guards,
    learning_rates,
    methods,
    models,
    optimizers,
    preemption,
)
from deat_tf import workdir as workdir_lib
from deat_tf.adversarial_model import AdversarialModel
from deat_tf.schedulers import AccuracyScheduler, MagnitudeScheduler, PeriodicScheduler

SCHEDULERS = ("magnitude", "periodic", "accuracy", "none")
OPTIMIZERS = ("sgd", "sgd_pytorch", "adam")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def make_scheduler(config):
    """The iteration-count callback of the config, or None.

    Args:
        config: A `TrainConfig`.

    Returns:
        A `MagnitudeScheduler`, `PeriodicScheduler`, `AccuracyScheduler` or None.

    Raises:
        ValueError: For an unknown scheduler or bad scheduler settings.
    """
    checks.check_choice(config.scheduler, SCHEDULERS, "scheduler")
    arguments = {"max_steps": config.max_steps, "initial_steps": config.attack_steps, "verbose": 0}
    if config.scheduler == "magnitude":
        return MagnitudeScheduler(gamma=config.gamma, **arguments)
    if config.scheduler == "periodic":
        return PeriodicScheduler(period=config.period, **arguments)
    if config.scheduler == "accuracy":
        return AccuracyScheduler(threshold=config.accuracy_threshold, **arguments)
    return None


def make_optimizer(config, steps_per_epoch):
    """The recipe's optimizer; its schedule is keyed on minibatches by `AdversarialModel.compile`.

    Args:
        config: A `TrainConfig`.
        steps_per_epoch: Minibatches per epoch.

    Returns:
        A Keras optimizer: Adam, Keras' SGD ("sgd") or SGD with PyTorch's
        momentum rule ("sgd_pytorch", `optimizers.PyTorchSGD`).

    Raises:
        ValueError: For an unknown optimizer or schedule, or bad settings.
    """
    checks.check_choice(config.optimizer, OPTIMIZERS, "optimizer")
    checks.check_count(config.epochs, "epochs", 1)
    learning_rate = learning_rates.make_learning_rate(
        config.lr_schedule,
        checks.check_positive(config.learning_rate, "learning_rate"),
        config.epochs,
        steps_per_epoch,
        boundaries=config.lr_boundaries,
        decay=config.lr_decay,
        peak_fraction=config.lr_peak,
    )
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate)
    momentum = checks.check_range(config.momentum, "momentum", 0.0, 1.0, include_high=False)
    if config.optimizer == "sgd_pytorch":
        return optimizers.PyTorchSGD(learning_rate, momentum=momentum, nesterov=config.nesterov)
    return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=config.nesterov)


class EpochStatistics(keras.callbacks.Callback):
    """Adds timings, throughput, gradient passes and clean train accuracy to the epoch logs.

    Place it after the iteration-count scheduler and before TensorBoard.

    Args:
        steps_per_epoch: Minibatches per epoch.
        global_batch_size: Examples per minibatch over all replicas.
        train_evaluator: Optional (model, dataset) whose clean accuracy is
            logged as `train_accuracy`.
    """

    def __init__(self, steps_per_epoch, global_batch_size, train_evaluator=None):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.global_batch_size = global_batch_size
        self.train_evaluator = train_evaluator
        self._epoch_start = None
        self._validation_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._steps = self.model.attack_steps
        self._validation_start = None
        self._batches = 0
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        # Fewer than steps_per_epoch in an epoch resumed inside.
        self._batches += 1

    def on_test_begin(self, logs=None):
        if self._epoch_start is not None and self._validation_start is None:
            self._validation_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = time.perf_counter()
        logs = {} if logs is None else logs
        train_end = self._validation_start or end
        train_seconds = train_end - self._epoch_start
        passes = methods.get(self.model.method).passes_per_minibatch(self._steps)
        logs["train_seconds"] = train_seconds
        logs["validation_seconds"] = end - train_end
        logs["images_per_second"] = (
            self._batches * self.global_batch_size / max(train_seconds, 1e-9)
        )
        logs["gradient_passes"] = float(passes * self.steps_per_epoch)
        if self.train_evaluator is not None:
            evaluator, dataset = self.train_evaluator
            results = evaluator.evaluate(dataset, verbose=0, return_dict=True)
            logs["train_accuracy"] = float(results["accuracy"])
        logs["seconds"] = time.perf_counter() - self._epoch_start
        self._epoch_start = None


@dataclasses.dataclass
class Run:
    """A prepared run: everything built and checked, nothing written yet.

    Attributes:
        config: The `TrainConfig`.
        workdir: Absolute path of the output folder.
        mode: "new", "resume" (the workdir holds an unfinished run with the
            same settings), "restart" (start over in it) or "finished"
            (nothing to do; the other attributes are None).
        strategy: The distribution strategy.
        pipelines: The `datasets.Pipelines`.
        steps_per_epoch: Minibatches per epoch.
        model: The compiled `AdversarialModel`.
        scheduler: The iteration-count callback, or None.
    """

    config: object
    workdir: str
    mode: str
    strategy: tf.distribute.Strategy = None
    pipelines: datasets.Pipelines = None
    steps_per_epoch: int = None
    model: AdversarialModel = None
    scheduler: keras.callbacks.Callback = None

    def execute(self):
        """Trains, saves and evaluates; returns the summary dict (also in summary.json)."""
        return _execute(self)


def prepare(config, workdir, restart=False):
    """Checks and builds everything a run needs, before anything is downloaded or written.

    Args:
        config: A `TrainConfig`.
        workdir: Output folder: new or empty, or holding an unfinished run with
            the same settings (which is then resumed).
        restart: Start over in a workdir that holds an earlier run.

    Returns:
        A `Run`.

    Raises:
        ValueError: For bad input, naming the setting and what it accepts.
    """
    workdir, mode = workdir_lib.check_workdir(workdir, config.to_dict(), restart)
    if mode == "finished" and config.strategy != "multi_worker":
        return Run(config, workdir, mode)
    strategy = distribute.make_strategy(config.strategy)
    distribute.check_workers_agree(
        strategy, workdir_lib.MODES.index(mode), "whether the workdir's run is new or done"
    )
    if mode == "finished":
        return Run(config, workdir, mode)
    if config.deterministic:
        # Bit-identical reruns and resumes need deterministic kernels too, not
        # only a fixed input order (the same as TF_DETERMINISTIC_OPS=1).
        tf.config.experimental.enable_op_determinism()
    replicas = strategy.num_replicas_in_sync
    checks.check_count(config.batch_size, "batch_size", 1)
    if config.batch_size % replicas:
        raise ValueError(
            f"batch_size {config.batch_size} is not divisible by the {replicas} replicas of "
            f"strategy {config.strategy}; batch_size is the global batch (each replica gets "
            f"batch_size / {replicas}), so pass a multiple of {replicas}."
        )
    if config.jit_compile and replicas > 1 and not tf.config.list_logical_devices("GPU"):
        raise ValueError(
            f"jit_compile with {replicas} CPU replicas fails in XLA (variables on another "
            "device); turn jit_compile off or use strategy one_device."
        )
    _check_checkpoint_interval(config)
    input_spec, steps_per_epoch = input_plan(config)
    scheduler = make_scheduler(config)
    with strategy.scope():
        model = build_model(config, input_spec, steps_per_epoch)
    _check_evaluation_settings(config)
    pipelines = datasets.get_pipelines(
        config.dataset,
        config.batch_size,
        config.validation_size,
        data_dir=config.data_dir,
        manual_dir=config.manual_dir,
        download=config.download,
        image_size=config.image_size,
        augmentation=config.augmentation,
        shuffle_buffer=config.shuffle_buffer,
        evaluation_batch_size=config.evaluation_batch_size,
        train_evaluation_examples=config.train_accuracy_examples,
        seed=config.seed,
        deterministic=config.deterministic,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
    )
    return Run(config, workdir, mode, strategy, pipelines, steps_per_epoch, model, scheduler)


def input_plan(config):
    """What the network receives and how many minibatches an epoch has, without reading data.

    Args:
        config: A `TrainConfig`.

    Returns:
        (the `DatasetSpec` with the image shape the network receives, minibatches per epoch).

    Raises:
        ValueError: For an unknown dataset or augmentation, or bad sizes.
    """
    spec = datasets.describe(config.dataset)
    _, _, input_spec = datasets.resolve_augmentation(spec, config.augmentation, config.image_size)
    steps_per_epoch = datasets.epoch_steps(
        spec, config.validation_size, config.batch_size, config.steps_per_epoch or None
    )
    return input_spec, steps_per_epoch


def build_model(config, input_spec, steps_per_epoch):
    """The compiled `AdversarialModel` of a config (call it under the strategy's scope).

    Args:
        config: A `TrainConfig`.
        input_spec: The `DatasetSpec` of what the network receives (`input_plan`).
        steps_per_epoch: Minibatches per epoch (for the learning-rate schedule).

    Returns:
        The compiled model; every setting was checked by the code that owns it.

    Raises:
        ValueError: For a bad setting, naming it.
    """
    keras.utils.set_random_seed(config.seed)
    checks.check_choice(config.precision, PRECISIONS, "precision")
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        network = models.get_model(
            config.model,
            input_spec.image_shape,
            input_spec.num_classes,
            input_spec.mean,
            input_spec.std,
            width=config.model_width,
            init=config.init,
        )
    finally:
        # The policy belongs to this network; it must not leak into later models.
        keras.config.set_dtype_policy(previous_policy)
    model = AdversarialModel(
        network,
        method=config.method,
        epsilon=config.epsilon,
        step_size=config.step_size,
        attack_steps=config.attack_steps,
        initialization=config.initialization,
        beta=config.beta,
        carry_perturbation=config.carry_perturbation,
        clip_start=config.clip_start,
        step_size_rule=config.step_size_rule,
        l2_weight_decay=config.weight_decay,
        validation_attack_steps=config.validation_attack_steps,
        validation_step_size=config.validation_step_size,
        seed=config.seed,
        attack_batch_norm=config.attack_batch_norm,
        steps_after_misclassified=config.steps_after_misclassified,
        track_magnitude=config.track_magnitude,
        evaluation_precision=config.evaluation_precision,
    )
    model.compile(optimizer=make_optimizer(config, steps_per_epoch), jit_compile=config.jit_compile)
    return model


def _check_checkpoint_interval(config):
    """The interval of checkpoints inside an epoch (`deat_tf.checkpoints`)."""
    if config.checkpoint_every_steps is not None:
        checks.check_count(config.checkpoint_every_steps, "checkpoint_every_steps", 1)
    if config.checkpoint_every_minutes is not None:
        checks.check_positive(config.checkpoint_every_minutes, "checkpoint_every_minutes")


def _check_evaluation_settings(config):
    """The final test's settings, checked by the evaluation that will run them."""
    if config.evaluation_batch_size is not None:
        checks.check_count(config.evaluation_batch_size, "evaluation_batch_size", 1)
    if config.test_examples is not None:
        checks.check_count(config.test_examples, "test_examples", 0)
    checks.check_count(config.test_attack_steps, "test_attack_steps", 0)
    if config.test_step_size is not None:
        checks.check_positive(config.test_step_size, "test_step_size")


def train_and_evaluate(config, workdir, restart=False):
    """Trains and evaluates one run; writes everything to `workdir`.

    Running it again on the same workdir with the same config resumes an
    interrupted run at its last finished epoch, and returns a finished run's
    summary without training.

    Args:
        config: A `TrainConfig`.
        workdir: Output folder (see `prepare`).
        restart: Start over in a workdir that holds an earlier run.

    Returns:
        The summary dict (also in workdir/summary.json).

    Raises:
        ValueError: For bad input, before anything is written.
        guards.TrainingStopped: When a guard stopped training (non-finite
            values) or an output could not be written.
    """
    return prepare(config, workdir, restart).execute()


def _run_facts(run):
    config, strategy, pipelines = run.config, run.strategy, run.pipelines
    return {
        "dataset": config.dataset,
        "image_shape": list(pipelines.spec.image_shape),
        "num_classes": pipelines.spec.num_classes,
        "train_examples": pipelines.train_examples,
        "validation_examples": pipelines.validation_examples,
        "steps_per_epoch": run.steps_per_epoch,
        "global_batch_size": config.batch_size,
        "replicas": strategy.num_replicas_in_sync,
        "workers": distribute.worker_count(strategy),
        "per_replica_batch_size": config.batch_size // strategy.num_replicas_in_sync,
        "devices": distribute.device_names(strategy),
        "model": config.model,
        "parameters": int(
            sum(math.prod(weight.shape) for weight in run.model.network.trainable_weights)
        ),
        "method": config.method,
        "iteration_count_name": methods.get(config.method).count_symbol,
        "validation_attack": (
            f"PGD-{config.validation_attack_steps}" if config.validation_attack_steps else "none"
        ),
        "jit_compile": bool(config.jit_compile),
        "precision": config.precision,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def _clean_evaluator(network, config, strategy):
    """A second AdversarialModel on the same network, for clean accuracy with Keras' evaluate."""
    with strategy.scope():
        model = AdversarialModel(network, method="none", epsilon=config.epsilon, seed=config.seed)
        model.compile(optimizer="sgd", jit_compile=config.jit_compile)
    return model


def _execute(run):
    if run.mode == "finished":
        stored = workdir_lib.read_summary(run.workdir)
        print(
            f"deat_tf: the run in {run.workdir} already finished ({stored['status']}, "
            f"{stored['epochs_completed']} epochs); nothing to do (restart trains it again).",
            flush=True,
        )
        return stored
    # From here on, SIGTERM and SIGINT stop at the next minibatch with a checkpoint.
    with preemption.SignalWatch() as watch:
        return _train_and_finish(run, watch)


def _train_and_finish(run, watch):
    config, workdir, model, pipelines = run.config, run.workdir, run.model, run.pipelines
    count_name = methods.get(config.method).count_symbol
    chief = distribute.is_chief(run.strategy)
    # Every worker of a cluster saves (checkpoints may need all of them), but only
    # the chief into the workdir: the others write to a folder of their own that
    # is deleted at the end, as Keras' multi-worker guide does.
    outputs = workdir if chief else tempfile.mkdtemp(prefix="deat_tf_worker_")
    if run.mode == "restart" and chief:
        workdir_lib.clear_run(workdir)
    created = workdir_lib.create_workdir(workdir) if chief else None
    state = workdir_lib.RunState()
    checkpoints = _checkpoints(run, state, outputs)
    initial_epoch, first_minibatch = 0, 0
    if run.mode == "resume":
        try:
            restored = checkpoints.restore_latest(warn=_warn)
        except ValueError as error:
            raise guards.TrainingStopped(str(error)) from error
        if restored:
            initial_epoch, first_minibatch = state.epochs_done, state.position
            state.resumed_at.append(initial_epoch)
    distribute.check_workers_agree(
        run.strategy,
        initial_epoch * run.steps_per_epoch + first_minibatch,
        "the minibatch the run resumes after",
    )
    if first_minibatch:
        _say(
            chief,
            f"deat_tf: resuming {workdir} in epoch {initial_epoch + 1} after minibatch "
            f"{first_minibatch} of {run.steps_per_epoch}.",
        )
    elif initial_epoch:
        _say(chief, f"deat_tf: resuming {workdir} after epoch {initial_epoch}.")
    if initial_epoch:
        workdir_lib.complete_tensorboard(os.path.join(outputs, "tensorboard"), state.records)
    summary = workdir_lib.RunSummary(
        os.path.join(outputs, "summary.json"), _run_facts(run), config.epochs, count_name, state
    )
    try:
        # The marker first: whatever else exists, the folder is then a run.
        workdir_lib.write_marker(outputs)
        workdir_lib.write_json(os.path.join(outputs, "config.json"), config.to_dict())
        os.makedirs(os.path.join(outputs, "checkpoints"), exist_ok=True)
        summary.write()
    except BaseException:
        # Nothing has trained yet: leave no partial workdir behind.
        if created:
            shutil.rmtree(created, ignore_errors=True)
        elif run.mode != "resume" and chief:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(outputs, workdir_lib.MARKER))
        raise
    train_evaluator = None
    if pipelines.train_evaluation is not None:
        train_evaluator = (
            _clean_evaluator(model.network, config, run.strategy),
            pipelines.train_evaluation,
        )
    non_finite = guards.NonFiniteGuard(warn=_warn)
    recorder = workdir_lib.RunRecorder(
        checkpoints, state, summary, pipelines.spec.num_classes, verbose=chief
    )
    collapse = guards.CollapseGuard(
        state.records, pipelines.spec.num_classes, stop=config.stop_on_collapse, warn=_warn
    )
    progress = checkpoints_lib.EpochProgress(
        checkpoints,
        state,
        summary.path,
        run.steps_per_epoch,
        every_steps=config.checkpoint_every_steps,
        every_minutes=config.checkpoint_every_minutes,
        watch=watch,
        first_minibatch=first_minibatch,
        say=functools.partial(_say, chief),
    )
    # The order matters: the scheduler and the statistics add to the epoch
    # logs, the recorder saves the epoch, then the guards read it, and a
    # signal stops the run only once the epoch is saved.
    callbacks = [run.scheduler] if run.scheduler is not None else []
    if config.progress_bar:
        # Keras appends its own bar last, so the epoch's line (and any guard's warning)
        # would print before the bar ends its line; first in the list, it ends it first.
        callbacks.insert(0, keras.callbacks.ProgbarLogger())
    callbacks += [
        EpochStatistics(run.steps_per_epoch, config.batch_size, train_evaluator),
        non_finite,
        recorder,
        collapse,
        progress,
    ]

    def fit(first_epoch, end_epoch, skipped):
        model.fit(
            distribute.training_input(
                run.strategy,
                functools.partial(pipelines.training, first_epoch, first_minibatch=skipped),
                config.batch_size,
            ),
            initial_epoch=first_epoch,
            epochs=end_epoch,
            steps_per_epoch=run.steps_per_epoch - skipped,
            validation_data=pipelines.validation,
            # TensorBoard closes its writers when a fit ends: one per fit.
            callbacks=callbacks
            + [
                keras.callbacks.TensorBoard(
                    log_dir=os.path.join(outputs, "tensorboard"),
                    write_graph=False,
                    update_freq="epoch",
                )
            ],
            shuffle=False,  # the pipeline shuffles
            verbose=1 if config.progress_bar else 0,
        )

    _say(
        chief,
        f"deat_tf: {config.method} on {config.dataset} ({pipelines.train_examples} train / "
        f"{pipelines.validation_examples} validation examples), {config.model}, "
        f"epsilon {config.epsilon:.4g}, {config.epochs} epochs x {run.steps_per_epoch} "
        f"minibatches of {config.batch_size} on {run.strategy.num_replicas_in_sync} "
        f"replica(s); workdir {workdir}",
    )
    try:
        if initial_epoch < config.epochs:
            if first_minibatch:
                # The rest of the interrupted epoch is a fit of its own (Keras
                # counts the same minibatches in every epoch of a fit).
                fit(initial_epoch, initial_epoch + 1, first_minibatch)
                if not model.stop_training and initial_epoch + 1 < config.epochs:
                    fit(initial_epoch + 1, config.epochs, 0)
            else:
                fit(initial_epoch, config.epochs, 0)
        failure = non_finite.failure or (
            recorder.skipped_epoch and f"non-finite weights after epoch {recorder.skipped_epoch}"
        )
        if failure:
            kept = state.epochs_done
            raise guards.TrainingStopped(
                f"training stopped: {failure}; the last good checkpoint is "
                + (
                    f"epoch {kept} in {os.path.join(workdir, 'checkpoints', 'last')}"
                    if kept
                    else "none"
                )
                + "; lower the learning rate or check the data, then start over (restart)."
            )
        _stop_if_signalled(watch, run.strategy, state)
        if chief:
            _finish(run, summary, state, checkpoints, watch)
        summary.status = f"stopped: {collapse.reason}" if collapse.reason else workdir_lib.FINISHED
    except preemption.Interrupted as interruption:
        summary.status = "interrupted"
        summary.extra["interrupted"] = {
            "signal": signal.Signals(interruption.signal_number).name,
            "epoch": interruption.epoch,
            "minibatch": interruption.minibatch,
        }
        raise
    except workdir_lib.WriteFailed as error:
        summary.status = f"failed: {error}"
        raise guards.TrainingStopped(str(error)) from error
    except guards.TrainingStopped as error:
        summary.status = f"failed: {error}"
        raise
    except BaseException as error:
        summary.status = f"failed: {type(error).__name__}: {error}".splitlines()[0]
        raise
    finally:
        with contextlib.suppress(OSError):
            summary.write()
        if not chief:
            shutil.rmtree(outputs, ignore_errors=True)
    if not chief:
        return summary.summary()
    print(summary.table())
    for name, result in summary.extra.get("test", {}).items():
        print(
            f"test ({name} network, {result['examples']} examples): clean {result['accuracy']:.4f}"
            + (
                f", {result['attack']} {result['robust_accuracy']:.4f}"
                if "robust_accuracy" in result
                else ""
            )
        )
    print(f"workdir: {workdir}", flush=True)
    return summary.summary()


def _stop_if_signalled(watch, strategy, state):
    """Raises `Interrupted` after the last epoch when a signal came (all workers agree)."""
    signal_number = watch.received or 0
    if distribute.is_multi_worker(strategy):
        (signal_number,) = preemption.agree(strategy, [signal_number])
    if signal_number:
        raise preemption.Interrupted(signal_number, state.epochs_done)


def _warn(line):
    print(line, file=sys.stderr, flush=True)


def _say(chief, line):
    """Prints a line of the run's progress; only the chief of a cluster speaks."""
    if chief:
        print(line, flush=True)


def _checkpoints(run, state, outputs):
    """The run's `Checkpoints`, with every variable they restore already created.

    They save into `outputs` and restore from the workdir, which differ on the
    workers of a cluster that are not the chief.
    """
    model = run.model
    extra = {}
    with run.strategy.scope():
        # Optimizer slots are created lazily; a restore needs them to exist.
        model.optimizer.build(model.trainable_variables)
        if model.carry_perturbation:
            model.prepare_carried_perturbation(
                run.config.batch_size, run.pipelines.spec.image_shape
            )
            extra["carried_perturbation"] = model.carried_perturbation
    return checkpoints_lib.Checkpoints(
        os.path.join(outputs, "checkpoints"),
        model,
        state,
        extra,
        restore_directory=os.path.join(run.workdir, "checkpoints"),
        steps_per_epoch=run.steps_per_epoch,
    )


def _finish(run, summary, state, checkpoints, watch=None):
    """Saves the final models and evaluates the last and the best network on the test split.

    A signal stops it between its steps; a rerun then does them all again.
    """
    config, workdir, model = run.config, run.workdir, run.model
    try:
        workdir_lib.save_keras(model, os.path.join(workdir, "model.keras"))
        workdir_lib.save_keras(model.network, os.path.join(workdir, "network.keras"))
    except OSError as error:
        raise workdir_lib.WriteFailed(summary.path, state, error) from error
    summary.extra["test"] = {}
    test_data = _test_data(config)
    if test_data is not None:
        summary.extra["test"]["last"] = _evaluate_test(model.network, test_data, config, run)
        if watch is not None and watch.received:
            raise preemption.Interrupted(watch.received, state.epochs_done)
    # The best weights replace the last ones in memory; model.keras above keeps the last.
    # Reading the checkpoint also reads its history: the run's own is put back.
    history = state.serialize()
    checkpoints.checkpoint.read(checkpoints.best_checkpoint(state.best_epoch)).expect_partial()
    state.deserialize(history)
    try:
        workdir_lib.save_keras(model.network, os.path.join(workdir, "best_network.keras"))
    except OSError as error:
        raise workdir_lib.WriteFailed(summary.path, state, error) from error
    if test_data is not None:
        summary.extra["test"]["best"] = _evaluate_test(model.network, test_data, config, run)


def _test_data(config):
    if config.test_examples == 0:
        return None
    return evaluation.load_data(
        config.dataset,
        n_examples=config.test_examples,
        data_dir=config.data_dir,
        manual_dir=config.manual_dir,
        image_size=config.image_size,
    )


def _evaluate_test(network, data, config, run):
    """Clean and PGD accuracy of the network on the test split, through `deat_tf.evaluation`."""
    attacks = ["clean"]
    if config.test_attack_steps:
        attacks.append(f"pgd{config.test_attack_steps}")
    with models.evaluation_precision(network, config.evaluation_precision):
        report = evaluation.evaluate(
            network,
            data,
            ",".join(attacks),
            config.epsilon,
            step_size=config.test_step_size,
            seed=config.seed,
            batch_size=config.evaluation_batch_size or config.batch_size,
            # Only the chief of a cluster evaluates: on its own devices, since the
            # other workers do not join this evaluation's all-reduces.
            strategy=None if distribute.is_multi_worker(run.strategy) else run.strategy,
        )
    result = {
        "examples": report["examples"],
        "precision": config.evaluation_precision,
        "accuracy": report["clean_accuracy"],
        "seconds": report["total_seconds"],
        "warnings": report["warnings"],
    }
    if config.test_attack_steps:
        pgd = report["attacks"][-1]
        result["robust_accuracy"] = pgd["accuracy"]
        result["attack"] = f"PGD-{config.test_attack_steps}"
        result["attack_step_size"] = pgd["step_size"]
        result["epsilon"] = config.epsilon
    return result
