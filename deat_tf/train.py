"""`train_and_evaluate(config, workdir)`: one adversarial training run, start to finish.

    from deat_tf import config, train
    summary = train.train_and_evaluate(config.load_file("configs/mnist_demo.py"), "runs/demo")

What a run does, in order:

1. Checks everything it can before writing anything: the config (choices,
   ranges, scheduler vs method), the workdir (new or empty, writable), the
   replica count (the global batch must split evenly), the dataset (TFDS
   preparation, ImageNet tars, npz arrays) and the model. A problem raises
   `config.ConfigError` with a one-line message and leaves no workdir behind.
2. Builds the network, wraps it in an `AdversarialModel` under the
   distribution strategy, compiles it with the recipe's optimizer and
   minibatch-keyed learning-rate schedule.
3. Trains with `fit`; after every epoch the callbacks, in this order,
   apply the iteration-count scheduler, add timings, learning rate, clean
   training accuracy and gradient passes to the logs, write TensorBoard
   scalars, save the last and (if validation PGD accuracy improved) the best
   checkpoint, then rewrite summary.json and print a one-line summary.
4. Saves the final models, evaluates the last and the best network on the
   test split (clean and PGD), and prints a summary table.

Workdir layout (designed so that resume and multi-worker runs can add to it):

    config.json            the resolved TrainConfig (reload with --config=config.json)
    summary.json           per-epoch records and totals, rewritten after each epoch
    tensorboard/train/     per-epoch training scalars (epoch_* tags)
    tensorboard/validation/
    checkpoints/last/      tf.train.Checkpoint of model and optimizer, every epoch
    checkpoints/best/      the same, at the best validation PGD accuracy
    model.keras            the AdversarialModel after the last epoch (with optimizer state)
    network.keras          the bare classifier of model.keras (logits on [0, 1] images)
    best_network.keras     the bare classifier from the best checkpoint

Every file is written to a temporary name and renamed, so a crash never leaves
a half-written file; TensorFlow writes checkpoints the same way.

Distribution: `batch_size` is the GLOBAL batch. Under MirroredStrategy each of
the N replicas trains on batch_size / N examples per minibatch (batch_size must
be divisible by N), gradients are summed across replicas, and BatchNorm uses
per-replica batch statistics. The learning rate is not rescaled: the recipes'
rates are for their global batch.
"""

import math
import os
import shutil
import sys
import tempfile
import time

import keras
import tensorflow as tf

from deat_tf import attacks
from deat_tf import config as config_lib
from deat_tf import datasets
from deat_tf import learning_rates
from deat_tf import models
from deat_tf import runtime
from deat_tf.adversarial_model import METHODS, REPLAY_METHODS, AdversarialModel
from deat_tf.schedulers import (
    SCHEDULED_METHODS,
    AccuracyScheduler,
    MagnitudeScheduler,
    PeriodicScheduler,
)

ConfigError = config_lib.ConfigError

SCHEDULERS = ("magnitude", "periodic", "accuracy", "none")
OPTIMIZERS = ("sgd", "adam")


# ---------------------------------------------------------------- validation


def _checked(check, *arguments):
    """Runs a validator from `attacks`, turning its ValueError into a ConfigError."""
    try:
        return check(*arguments)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def validate(config):
    """Checks a config without touching the disk or building anything.

    Args:
        config: A `TrainConfig`.

    Raises:
        ConfigError: Naming the offending flag and the accepted values.
    """
    try:
        datasets.parse_name(config.dataset)
        datasets.check_augmentation(config.augmentation)
    except datasets.DatasetError as error:
        raise ConfigError(str(error)) from None
    _checked(attacks.check_choice, config.model, tuple(models.MODELS), "--model")
    _checked(attacks.check_choice, config.method, METHODS, "--method")
    _checked(attacks.check_choice, config.scheduler, SCHEDULERS, "--scheduler")
    _checked(attacks.check_choice, config.strategy, runtime.STRATEGIES, "--strategy")
    _checked(attacks.check_choice, config.optimizer, OPTIMIZERS, "--optimizer")
    _checked(attacks.check_choice, config.lr_schedule, learning_rates.LR_SCHEDULES, "--lr_schedule")
    _checked(attacks.check_epsilon, config.epsilon, "--epsilon")
    for name in ("step_size", "validation_step_size", "test_step_size"):
        if getattr(config, name) is not None:
            _checked(attacks.check_positive, getattr(config, name), f"--{name}")
    for name in ("epochs", "batch_size", "validation_size", "shuffle_buffer"):
        _checked(attacks.check_count, getattr(config, name), f"--{name}", 1)
    for name in ("steps_per_epoch", "evaluation_batch_size", "model_width"):
        if getattr(config, name) is not None:
            _checked(attacks.check_count, getattr(config, name), f"--{name}", 1)
    for name in ("validation_attack_steps", "test_attack_steps", "train_accuracy_examples", "seed"):
        _checked(attacks.check_count, getattr(config, name), f"--{name}", 0)
    if config.test_examples is not None:
        _checked(attacks.check_count, config.test_examples, "--test_examples", 0)
    if config.image_size is not None:
        _checked(attacks.check_count, config.image_size, "--image_size", 32)
    _checked(attacks.check_positive, config.learning_rate, "--learning_rate")
    if not 0.0 <= config.momentum < 1.0:
        raise ConfigError(f"--momentum must be in [0, 1), got {config.momentum}.")
    if not config.weight_decay >= 0.0:
        raise ConfigError(f"--weight_decay must be >= 0, got {config.weight_decay}.")
    if config.scheduler != "none" and config.method not in SCHEDULED_METHODS:
        raise ConfigError(
            f"--scheduler={config.scheduler} changes the iteration count of methods "
            f"{', '.join(SCHEDULED_METHODS)} only; method {config.method} has a fixed count, "
            "so pass --scheduler=none."
        )
    if config.carry_perturbation and config.method not in REPLAY_METHODS:
        raise ConfigError(
            f"--carry_perturbation applies to methods {', '.join(REPLAY_METHODS)} only, "
            f"not {config.method}; pass --nocarry_perturbation."
        )
    make_scheduler(config)


def make_scheduler(config):
    """The iteration-count callback of the config, or None.

    Args:
        config: A `TrainConfig`.

    Returns:
        A `MagnitudeScheduler`, `PeriodicScheduler`, `AccuracyScheduler` or None.
    """
    arguments = {"max_steps": config.max_steps, "initial_steps": config.attack_steps, "verbose": 0}
    try:
        if config.scheduler == "magnitude":
            return MagnitudeScheduler(gamma=config.gamma, **arguments)
        if config.scheduler == "periodic":
            return PeriodicScheduler(period=config.period, **arguments)
        if config.scheduler == "accuracy":
            return AccuracyScheduler(threshold=config.accuracy_threshold, **arguments)
    except ValueError as error:
        raise ConfigError(f"scheduler {config.scheduler}: {error}") from None
    return None


def _nearest_existing(path):
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_workdir(workdir):
    """Checks that `workdir` is new or empty and can be written, creating nothing.

    Args:
        workdir: The output folder.

    Returns:
        The absolute path.

    Raises:
        ConfigError: If it holds files, is not a folder, or cannot be written.
    """
    if not workdir:
        raise ConfigError("--workdir is required: pass --workdir=DIR, a new or empty folder.")
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"--workdir {path} exists and is not a folder; pass a new folder.")
        if os.listdir(path):
            raise ConfigError(
                f"--workdir {path} already holds files (an earlier run?); pass a new --workdir or empty it."
            )
        probe_parent = path
    else:
        probe_parent = _nearest_existing(os.path.dirname(path))
        if not os.path.isdir(probe_parent):
            raise ConfigError(
                f"--workdir {path} cannot be created: {probe_parent} is not a folder; pass another path."
            )
    # Permission bits say little for root or read-only mounts: try it.
    try:
        probe = tempfile.mkdtemp(prefix=".deat_tf_probe_", dir=probe_parent)
        os.rmdir(probe)
    except OSError as error:
        raise ConfigError(
            f"--workdir {path} is not writable (creating a folder in {probe_parent} failed: "
            f"{error.strerror or error}); pass a folder you can write to."
        ) from None
    return path


# ------------------------------------------------------------------- runtime


def make_optimizer(config, steps_per_epoch):
    """The recipe's optimizer; its schedule is keyed on minibatches by `AdversarialModel.compile`.

    Args:
        config: A `TrainConfig`.
        steps_per_epoch: Minibatches per epoch.

    Returns:
        A Keras optimizer.
    """
    try:
        learning_rate = learning_rates.make_learning_rate(
            config.lr_schedule,
            config.learning_rate,
            config.epochs,
            steps_per_epoch,
            boundaries=config.lr_boundaries,
            decay=config.lr_decay,
            peak_fraction=config.lr_peak,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate)
    return keras.optimizers.SGD(learning_rate, momentum=config.momentum, nesterov=config.nesterov)


def gradient_passes_per_minibatch(method, steps):
    """Forward+backward passes one minibatch costs.

    Args:
        method: The training method.
        steps: Its iteration count r or K.

    Returns:
        r for deat/free (one pass per replay), K + 1 for pgd (attack steps and
        the update), K + 2 for trades and mart (their update runs the network
        on x and on x_adv), 2 for fgsm_rs, 1 for clean training.
    """
    if method in REPLAY_METHODS:
        return steps
    if method == "pgd":
        return steps + 1
    if method in ("trades", "mart"):
        return steps + 2
    if method == "fgsm_rs":
        return 2
    return 1


def _evaluation_model(network, config, attack_steps, step_size, strategy):
    """A second AdversarialModel on the same network, for clean / PGD evaluation only."""
    with strategy.scope():
        model = AdversarialModel(
            network,
            method="none",
            epsilon=config.epsilon,
            validation_attack_steps=attack_steps,
            validation_step_size=step_size,
            seed=config.seed,
        )
        model.compile(optimizer="sgd", jit_compile=config.jit_compile)
    return model


# ----------------------------------------------------------------- files


def save_keras(model, path):
    """Saves a `.keras` file atomically (Keras insists on the .keras suffix of the temporary)."""
    folder = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(prefix=".tmp_", suffix=".keras", dir=folder)
    os.close(handle)
    try:
        model.save(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


# ----------------------------------------------------------------- callbacks


class EpochStatistics(keras.callbacks.Callback):
    """Adds lr, timings, throughput, gradient passes and clean train accuracy to the epoch logs.

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
        self._learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self._validation_start = None
        self._epoch_start = time.perf_counter()

    def on_test_begin(self, logs=None):
        if self._epoch_start is not None and self._validation_start is None:
            self._validation_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = time.perf_counter()
        logs = {} if logs is None else logs
        train_end = self._validation_start or end
        train_seconds = train_end - self._epoch_start
        passes = gradient_passes_per_minibatch(self.model.method, self._steps)
        logs["lr"] = self._learning_rate
        logs["train_seconds"] = train_seconds
        logs["validation_seconds"] = end - train_end
        logs["images_per_second"] = self.steps_per_epoch * self.global_batch_size / max(train_seconds, 1e-9)
        logs["gradient_passes"] = float(passes * self.steps_per_epoch)
        if self.train_evaluator is not None:
            evaluator, dataset = self.train_evaluator
            results = evaluator.evaluate(dataset, verbose=0, return_dict=True)
            logs["train_accuracy"] = float(results["accuracy"])
        logs["seconds"] = time.perf_counter() - self._epoch_start
        self._epoch_start = None


class Checkpoints(keras.callbacks.Callback):
    """Saves the last checkpoint every epoch and the best one by validation accuracy.

    The best epoch has the highest `val_robust_accuracy` (PGD on the
    validation split), ties broken by `val_accuracy`; without a PGD
    evaluation, the highest `val_accuracy`.

    Args:
        directory: Folder receiving last/ and best/.
    """

    def __init__(self, directory):
        super().__init__()
        self.directory = directory
        self.best_epoch = None
        self.best_key = None
        self.best_logs = None

    def on_train_begin(self, logs=None):
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)
        self.last = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(self.directory, "last"), max_to_keep=1
        )
        self.best = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(self.directory, "best"), max_to_keep=1
        )

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        self.last.save(checkpoint_number=epoch + 1)
        key = (
            logs.get("val_robust_accuracy", -1.0),
            logs.get("val_accuracy", -1.0),
        )
        if self.best_key is None or key > self.best_key:
            self.best_key = key
            self.best_epoch = epoch
            self.best_logs = dict(logs)
            self.best.save(checkpoint_number=epoch + 1)
        logs["best_epoch"] = float(self.best_epoch + 1)

    @property
    def best_path(self):
        """Path prefix of the best checkpoint."""
        return self.best.latest_checkpoint


EPOCH_FIELDS = (
    "attack_steps",
    "next_attack_steps",
    "grad_magnitude",
    "threshold",
    "loss",
    "adv_accuracy",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_robust_accuracy",
    "lr",
    "train_seconds",
    "validation_seconds",
    "seconds",
    "images_per_second",
    "gradient_passes",
)


class RunSummary(keras.callbacks.Callback):
    """Keeps per-epoch records, rewrites summary.json and prints one line per epoch.

    Args:
        path: summary.json path.
        run: Dict of run facts (dataset sizes, replicas, ...) stored in the summary.
        epochs: Planned epochs.
        count_name: "r" or "K", the name printed for the iteration count.
    """

    def __init__(self, path, run, epochs, count_name):
        super().__init__()
        self.path = path
        self.run = run
        self.epochs = epochs
        self.count_name = count_name
        self.records = []
        self.status = "running"
        self.started = time.perf_counter()
        self.extra = {}

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        record = {"epoch": epoch + 1}
        for field in EPOCH_FIELDS:
            if field in logs:
                record[field] = float(logs[field])
        if "attack_steps" not in record:
            record["attack_steps"] = float(self.model.attack_steps)
        record["best"] = int(logs.get("best_epoch", -1)) == epoch + 1
        self.records.append(record)
        self.write()
        print(self.epoch_line(record), flush=True)

    def epoch_line(self, record):
        """One line: epoch, r/K, magnitude, accuracies, lr, time."""
        parts = [
            f"epoch {record['epoch']:>3}/{self.epochs}",
            f"{self.count_name}={record['attack_steps']:g}",
            f"M={record.get('grad_magnitude', math.nan):.4g}",
        ]
        if math.isfinite(record.get("threshold", math.nan)):
            parts.append(f"T={record['threshold']:.4g}")
        parts.append(f"loss {record.get('loss', math.nan):.4f}")
        parts.append(f"adv_acc {record.get('adv_accuracy', math.nan):.4f}")
        if "train_accuracy" in record:
            parts.append(f"train_acc {record['train_accuracy']:.4f}")
        parts.append(f"val clean {record.get('val_accuracy', math.nan):.4f}")
        if "val_robust_accuracy" in record:
            parts.append(f"robust {record['val_robust_accuracy']:.4f}")
        parts.append(f"lr {record.get('lr', math.nan):.3g}")
        parts.append(
            f"{record.get('seconds', math.nan):.1f}s ({record.get('images_per_second', math.nan):.0f} img/s)"
        )
        if record["best"]:
            parts.append("*best")
        return "  ".join(parts)

    def totals(self):
        """Totals over the epochs recorded so far."""
        return {
            "epochs_completed": len(self.records),
            "total_train_seconds": sum(record.get("train_seconds", 0.0) for record in self.records),
            "total_validation_seconds": sum(record.get("validation_seconds", 0.0) for record in self.records),
            "total_seconds": time.perf_counter() - self.started,
            "gradient_passes": sum(record.get("gradient_passes", 0.0) for record in self.records),
            "attack_steps_sum": sum(record.get("attack_steps", 0.0) for record in self.records),
        }

    def summary(self):
        """The summary.json content."""
        best = [record for record in self.records if record["best"]]
        result = {"status": self.status, "run": self.run, "epochs": self.records}
        result.update(self.totals())
        result["best_epoch"] = best[-1] if best else None
        result.update(self.extra)
        return result

    def write(self):
        """Rewrites summary.json atomically."""
        runtime.write_json(self.path, self.summary())

    def table(self):
        """The final summary table as text."""
        header = (
            f"{'epoch':>5} {self.count_name:>3} {'magnitude':>11} {'adv_acc':>8} "
            f"{'val_clean':>9} {'val_robust':>10} {'seconds':>8}"
        )
        lines = [header, "-" * len(header)]
        for record in self.records:
            lines.append(
                f"{record['epoch']:>5} {record['attack_steps']:>3g} "
                f"{record.get('grad_magnitude', math.nan):>11.4g} "
                f"{record.get('adv_accuracy', math.nan):>8.4f} "
                f"{record.get('val_accuracy', math.nan):>9.4f} "
                f"{record.get('val_robust_accuracy', math.nan):>10.4f} "
                f"{record.get('seconds', math.nan):>8.1f}"
                + ("  *best" if record["best"] else "")
            )
        totals = self.totals()
        lines.append(
            f"total {totals['total_seconds']:.1f}s (training {totals['total_train_seconds']:.1f}s, "
            f"validation {totals['total_validation_seconds']:.1f}s), "
            f"{totals['gradient_passes']:.0f} forward+backward passes over minibatches, "
            f"sum of {self.count_name} over epochs {totals['attack_steps_sum']:g}"
        )
        return "\n".join(lines)


# ---------------------------------------------------------------- the run


def _prepare(config, workdir):
    """Everything that can fail on bad input, before anything is written."""
    validate(config)
    workdir = check_workdir(workdir)
    strategy = runtime.make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(
            f"--batch_size {config.batch_size} is not divisible by the {replicas} replicas of "
            f"--strategy={config.strategy}; batch_size is the global batch (each replica gets "
            f"batch_size / {replicas}), so pass a multiple of {replicas}."
        )
    if config.jit_compile and replicas > 1 and not tf.config.list_logical_devices("GPU"):
        raise ConfigError(
            f"--jit_compile with {replicas} CPU replicas fails in XLA (variables on another device); "
            "pass --nojit_compile or --strategy=one_device."
        )
    try:
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
            test_examples=config.test_examples,
            train_evaluation_examples=config.train_accuracy_examples,
            seed=config.seed,
            deterministic=config.deterministic,
        )
    except datasets.DatasetError as error:
        raise ConfigError(str(error)) from None
    steps_per_epoch = config.steps_per_epoch or pipelines.steps_per_epoch
    if not steps_per_epoch:
        raise ConfigError(
            f"the size of {config.dataset}'s training split is unknown (TFDS split info missing); "
            "pass --steps_per_epoch."
        )
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        try:
            network = models.get_model(
                config.model,
                pipelines.spec.image_shape,
                pipelines.spec.num_classes,
                pipelines.spec.mean,
                pipelines.spec.std,
                width=config.model_width,
            )
            model = AdversarialModel(
                network,
                method=config.method,
                epsilon=config.epsilon,
                step_size=config.step_size,
                attack_steps=config.attack_steps,
                initialization=config.initialization,
                beta=config.beta,
                carry_perturbation=config.carry_perturbation,
                step_size_rule=config.step_size_rule,
                l2_weight_decay=config.weight_decay,
                validation_attack_steps=config.validation_attack_steps,
                validation_step_size=config.validation_step_size,
                seed=config.seed,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None
        model.compile(optimizer=make_optimizer(config, steps_per_epoch), jit_compile=config.jit_compile)
    return workdir, strategy, pipelines, steps_per_epoch, model


def _device_names(strategy):
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:
        # The default strategy places work on the first GPU, else the CPU.
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return [devices[0].name]


def _create_workdir(path):
    """Creates `path`; returns the topmost folder created, for clean-up on early failure."""
    topmost = None
    missing = path
    while not os.path.exists(missing):
        topmost = missing
        missing = os.path.dirname(missing)
    os.makedirs(path, exist_ok=True)
    return topmost


def train_and_evaluate(config, workdir):
    """Trains and evaluates one run; writes everything to `workdir`.

    Args:
        config: A `TrainConfig`.
        workdir: Output folder; new or empty.

    Returns:
        The summary dict (also in workdir/summary.json).

    Raises:
        ConfigError: For bad input, before anything is written.
    """
    workdir, strategy, pipelines, steps_per_epoch, model = _prepare(config, workdir)
    count_name = "r" if config.method in REPLAY_METHODS else "K"
    run = {
        "dataset": config.dataset,
        "image_shape": list(pipelines.spec.image_shape),
        "num_classes": pipelines.spec.num_classes,
        "train_examples": pipelines.train_examples,
        "validation_examples": pipelines.validation_examples,
        "test_examples": pipelines.test_examples,
        "steps_per_epoch": steps_per_epoch,
        "global_batch_size": config.batch_size,
        "replicas": strategy.num_replicas_in_sync,
        "per_replica_batch_size": config.batch_size // strategy.num_replicas_in_sync,
        "devices": _device_names(strategy),
        "model": config.model,
        "parameters": int(sum(math.prod(weight.shape) for weight in model.network.trainable_weights)),
        "method": config.method,
        "iteration_count_name": count_name,
        "validation_attack": f"PGD-{config.validation_attack_steps}" if config.validation_attack_steps else "none",
        "jit_compile": bool(config.jit_compile),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    train_evaluator = None
    if pipelines.train_evaluation is not None:
        train_evaluator = (
            _evaluation_model(model.network, config, 0, None, strategy),
            pipelines.train_evaluation,
        )
    created = _create_workdir(workdir)
    try:
        runtime.write_json(os.path.join(workdir, "config.json"), config.to_dict())
        os.makedirs(os.path.join(workdir, "checkpoints"))
        summary = RunSummary(os.path.join(workdir, "summary.json"), run, config.epochs, count_name)
        summary.write()
    except BaseException:
        # Nothing has trained yet: leave no partial workdir behind.
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"))
    callbacks = [make_scheduler(config)] if config.scheduler != "none" else []
    callbacks += [
        EpochStatistics(steps_per_epoch, config.batch_size, train_evaluator),
        keras.callbacks.TensorBoard(
            log_dir=os.path.join(workdir, "tensorboard"), write_graph=False, update_freq="epoch"
        ),
        checkpoints,
        summary,
    ]
    print(
        f"deat_tf: {config.method} on {config.dataset} ({pipelines.train_examples} train / "
        f"{pipelines.validation_examples} validation examples), {config.model}, epsilon {config.epsilon:.4g}, "
        f"{config.epochs} epochs x {steps_per_epoch} minibatches of {config.batch_size} on "
        f"{strategy.num_replicas_in_sync} replica(s); workdir {workdir}",
        flush=True,
    )
    try:
        model.fit(
            pipelines.train,
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=pipelines.validation,
            callbacks=callbacks,
            shuffle=False,  # the pipeline shuffles
            verbose=1 if config.progress_bar else 0,
        )
        save_keras(model, os.path.join(workdir, "model.keras"))
        save_keras(model.network, os.path.join(workdir, "network.keras"))
        summary.extra["test"] = {}
        # One evaluator for both: the best weights are loaded into the same network, so
        # its traced PGD is reused.
        test_evaluator = _evaluation_model(
            model.network, config, config.test_attack_steps, config.test_step_size, strategy
        )
        if pipelines.test is not None:
            summary.extra["test"]["last"] = _evaluate_test(test_evaluator, config, pipelines)
        # The best weights replace the last ones in memory; model.keras above keeps the last.
        checkpoints.checkpoint.read(checkpoints.best_path).expect_partial()
        save_keras(model.network, os.path.join(workdir, "best_network.keras"))
        if pipelines.test is not None:
            summary.extra["test"]["best"] = _evaluate_test(test_evaluator, config, pipelines)
        summary.status = "finished"
    except BaseException as error:
        summary.status = f"failed: {type(error).__name__}: {error}".splitlines()[0]
        raise
    finally:
        summary.write()
    print(summary.table())
    for name, result in summary.extra.get("test", {}).items():
        print(
            f"test ({name} network, {result['examples']} examples): clean {result['accuracy']:.4f}"
            + (f", {result['attack']} {result['robust_accuracy']:.4f}" if "robust_accuracy" in result else "")
        )
    print(f"workdir: {workdir}", flush=True)
    return summary.summary()


def _evaluate_test(evaluator, config, pipelines):
    """Clean and PGD accuracy of the evaluator's network on the test pipeline."""
    started = time.perf_counter()
    results = evaluator.evaluate(pipelines.test, verbose=0, return_dict=True)
    result = {
        "examples": pipelines.test_examples,
        "accuracy": float(results["accuracy"]),
        "loss": float(results["loss"]),
        "seconds": time.perf_counter() - started,
    }
    if config.test_attack_steps:
        result["robust_accuracy"] = float(results["robust_accuracy"])
        result["attack"] = f"PGD-{config.test_attack_steps}"
        result["attack_step_size"] = evaluator.validation_step_size
        result["epsilon"] = config.epsilon
    return result


def main(flag_values):
    """What `bin/train` runs: config from the flags, then `train_and_evaluate`.

    Args:
        flag_values: Parsed absl `FlagValues` (see `config.define_flags`).

    Returns:
        The summary dict.

    Raises:
        SystemExit: With a one-line message for bad input.
    """
    try:
        config = config_lib.from_flags(flag_values)
        return train_and_evaluate(config, flag_values.workdir)
    except ConfigError as error:
        sys.exit(f"bin/train: error: {error}")
