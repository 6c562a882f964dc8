"""The run's folder: checking it, creating it, and everything written into it.

    config.json            the resolved TrainConfig (reload with --config=config.json)
    summary.json           per-epoch records and totals, rewritten after each epoch
    tensorboard/train/     per-epoch training scalars (epoch_* tags)
    tensorboard/validation/
    checkpoints/last/      tf.train.Checkpoint of model and optimizer, every epoch
    checkpoints/best/      the same, at the best validation PGD accuracy
    model.keras            the AdversarialModel after the last epoch (with optimizer state)
    network.keras          the bare classifier of model.keras (logits on [0, 1] images)
    best_network.keras     the bare classifier from the best checkpoint

Every file is written to a temporary name in the same folder and renamed, so
a crash never leaves a half-written file; TensorFlow writes checkpoints the
same way.
"""

import json
import math
import os
import tempfile
import time

import keras
import tensorflow as tf

# What summary.json keeps of each epoch's logs, in this order.
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
    "learning_rate",
    "train_seconds",
    "validation_seconds",
    "seconds",
    "images_per_second",
    "gradient_passes",
)


def check_workdir(workdir):
    """Checks that `workdir` is new or empty and can be written, creating nothing.

    Args:
        workdir: The output folder.

    Returns:
        The absolute path.

    Raises:
        ValueError: If it holds files, is not a folder, or cannot be written.
    """
    if not workdir:
        raise ValueError("workdir is required: a new or empty folder for the run's outputs.")
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ValueError(f"workdir {path} exists and is not a folder; pass a new folder.")
        if os.listdir(path):
            raise ValueError(
                f"workdir {path} already holds files (an earlier run?); pass a new workdir "
                "or empty it."
            )
        probe_parent = path
    else:
        probe_parent = _nearest_existing(os.path.dirname(path))
        if not os.path.isdir(probe_parent):
            raise ValueError(
                f"workdir {path} cannot be created: {probe_parent} is not a folder; "
                "pass another path."
            )
    # Permission bits say little for root or read-only mounts: try it.
    try:
        probe = tempfile.mkdtemp(prefix=".deat_tf_probe_", dir=probe_parent)
        os.rmdir(probe)
    except OSError as error:
        raise ValueError(
            f"workdir {path} is not writable (creating a folder in {probe_parent} failed: "
            f"{error.strerror or error}); pass a folder you can write to."
        ) from None
    return path


def _nearest_existing(path):
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def create_workdir(path):
    """Creates `path`; returns the topmost folder created, for clean-up on early failure."""
    topmost = None
    missing = path
    while not os.path.exists(missing):
        topmost = missing
        missing = os.path.dirname(missing)
    os.makedirs(path, exist_ok=True)
    return topmost


# ---------------------------------------------------------------- atomic files


def json_ready(value):
    """Turns NaN/inf into None (strict JSON) and numpy scalars into Python numbers."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _atomic_write(path, suffix, write):
    """Calls write(temporary path) for a temporary file next to `path`, then renames it."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=folder)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_json(path, value):
    """Writes JSON atomically: a temporary file in the same folder, flushed, then renamed.

    Args:
        path: Destination file; its folder must exist.
        value: A JSON-ready structure (NaN and numpy scalars are converted).
    """

    def write(temporary):
        with open(temporary, "w") as stream:
            json.dump(json_ready(value), stream, indent=2, allow_nan=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())

    _atomic_write(path, ".json", write)


def save_keras(model, path):
    """Saves a `.keras` file atomically (Keras insists on the .keras suffix of the temporary).

    Args:
        model: The Keras model.
        path: Destination file.
    """
    _atomic_write(path, ".keras", model.save)


# ------------------------------------------------------------------ callbacks


class Checkpoints(keras.callbacks.Callback):
    """Saves the last checkpoint every epoch and the best one by validation accuracy.

    The best epoch has the highest `val_robust_accuracy` (PGD on the
    validation split), ties broken by `val_accuracy`; without a PGD
    evaluation, the highest `val_accuracy`. Keras' `ModelCheckpoint` takes one
    monitored value, not this pair, and `tf.train.Checkpoint` also saves the
    optimizer slots that a resumed run needs.

    Args:
        directory: Folder receiving last/ and best/.
    """

    def __init__(self, directory):
        super().__init__()
        self.directory = directory
        self.best_epoch = None
        self.best_key = None

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
        key = (logs.get("val_robust_accuracy", -1.0), logs.get("val_accuracy", -1.0))
        if self.best_key is None or key > self.best_key:
            self.best_key = key
            self.best_epoch = epoch
            self.best.save(checkpoint_number=epoch + 1)
        logs["best_epoch"] = float(self.best_epoch + 1)

    @property
    def best_path(self):
        """Path prefix of the best checkpoint."""
        return self.best.latest_checkpoint


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
        logs = dict(logs or {})
        # The rate at the epoch's end, the value Keras' TensorBoard logs too.
        logs["learning_rate"] = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        )
        record = {"epoch": epoch + 1}
        for field in EPOCH_FIELDS:
            if field in logs:
                record[field] = float(logs[field])
        record["best"] = int(logs.get("best_epoch", -1)) == epoch + 1
        self.records.append(record)
        self.write()
        print(self.epoch_line(record), flush=True)

    def epoch_line(self, record):
        """One line: epoch, r/K, magnitude, accuracies, lr, time."""
        parts = [
            f"epoch {record['epoch']:>3}/{self.epochs}",
            f"{self.count_name}={record.get('attack_steps', math.nan):g}",
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
        parts.append(f"lr {record.get('learning_rate', math.nan):.3g}")
        parts.append(
            f"{record.get('seconds', math.nan):.1f}s "
            f"({record.get('images_per_second', math.nan):.0f} img/s)"
        )
        if record["best"]:
            parts.append("*best")
        return "  ".join(parts)

    def totals(self):
        """Totals over the epochs recorded so far."""
        return {
            "epochs_completed": len(self.records),
            "total_train_seconds": sum(record.get("train_seconds", 0.0) for record in self.records),
            "total_validation_seconds": sum(
                record.get("validation_seconds", 0.0) for record in self.records
            ),
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
        write_json(self.path, self.summary())

    def table(self):
        """The final summary table as text."""
        header = (
            f"{'epoch':>5} {self.count_name:>3} {'magnitude':>11} {'adv_acc':>8} "
            f"{'val_clean':>9} {'val_robust':>10} {'seconds':>8}"
        )
        lines = [header, "-" * len(header)]
        for record in self.records:
            lines.append(
                f"{record['epoch']:>5} {record.get('attack_steps', math.nan):>3g} "
                f"{record.get('grad_magnitude', math.nan):>11.4g} "
                f"{record.get('adv_accuracy', math.nan):>8.4f} "
                f"{record.get('val_accuracy', math.nan):>9.4f} "
                f"{record.get('val_robust_accuracy', math.nan):>10.4f} "
                f"{record.get('seconds', math.nan):>8.1f}" + ("  *best" if record["best"] else "")
            )
        totals = self.totals()
        lines.append(
            f"total {totals['total_seconds']:.1f}s (training {totals['total_train_seconds']:.1f}s, "
            f"validation {totals['total_validation_seconds']:.1f}s), "
            f"{totals['gradient_passes']:.0f} forward+backward passes over minibatches, "
            f"sum of {self.count_name} over epochs {totals['attack_steps_sum']:g}"
        )
        return "\n".join(lines)
