"""The run's folder: checking it, creating it, and everything written into it.

    deat_tf_run.json       the marker that makes the folder a deat_tf run (written first)
    config.json            the resolved TrainConfig (reload with --config=config.json)
    summary.json           per-epoch records and totals, rewritten after each epoch
    tensorboard/train/     per-epoch training scalars (epoch_* tags)
    tensorboard/validation/
    checkpoints/last/      the two newest epoch-end checkpoints: model, optimizer slots,
                           M+ state, epoch history (a resumed run starts from here)
    checkpoints/partial/   the two newest checkpoints inside an epoch (every N minibatches
                           or T minutes, and on SIGTERM/SIGINT): the same plus the
                           position and the epoch's metric sums so far
    checkpoints/best/      the same, at the best validation PGD accuracy
    model.keras            the AdversarialModel after the last epoch (with optimizer state)
    network.keras          the bare classifier of model.keras (logits on [0, 1] images)
    best_network.keras     the bare classifier from the best checkpoint

Every file is written to a temporary name in the same folder and renamed, so
a crash never leaves a half-written file; TensorFlow writes checkpoints the
same way (`deat_tf.checkpoints.Checkpoints` writes and reads them).

Only a folder holding the marker is taken for a run: a `config.json` alone
is one of the most common file names there is. A restart removes only the
entries listed in `OUTPUTS` and refuses while others are present, so a
mistyped --workdir never costs files deat_tf did not write.
"""

import errno
import glob
import json
import math
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from deat_tf import guards

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
    "non_finite_gradients",
)


# Settings that do not change what a run computes: a resumed run may change them.
RUNTIME_FIELDS = (
    "progress_bar",
    "data_dir",
    "manual_dir",
    "download",
    "stop_on_collapse",
    "checkpoint_every_steps",
    "checkpoint_every_minutes",
)
FINISHED = "finished"
MARKER = "deat_tf_run.json"
# Every top-level entry a run writes; a restart removes these and nothing else.
OUTPUTS = (
    MARKER,
    "config.json",
    "summary.json",
    "tensorboard",
    "checkpoints",
    "model.keras",
    "network.keras",
    "best_network.keras",
)
# Left by an atomic write or a writability probe that a crash interrupted.
TEMPORARY_PREFIXES = (".tmp_", ".deat_tf_probe_")
MODES = ("new", "resume", "restart", "finished")


def check_workdir(workdir, settings=None, restart=False):
    """Decides what a run does with its workdir, changing nothing on disk.

    A new or empty folder starts a run. A folder holding a run of this
    package (its marker, `MARKER`) resumes it when the settings are the same
    as its config.json, or is reported finished when its summary says so;
    `restart` starts it over, provided the folder holds nothing deat_tf did
    not write.

    Args:
        workdir: The output folder.
        settings: The run's config as a dict (`TrainConfig.to_dict()`), to
            compare with a stored run's config.json; None skips the comparison.
        restart: Start over in a folder that holds an earlier run.

    Returns:
        (absolute path, mode): mode is one of `MODES`.

    Raises:
        ValueError: If the folder cannot be used: not a folder, not writable,
            holding other files (with `restart`: beside a run), or holding a
            run with other settings or an unreadable config.json.
    """
    if not workdir:
        raise ValueError("workdir is required: a new or empty folder for the run's outputs.")
    path = os.path.abspath(os.path.expanduser(workdir))
    mode = "new"
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ValueError(f"workdir {path} exists and is not a folder; pass a new folder.")
        if os.listdir(path):
            mode = _existing_run(path, settings, restart)
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
    return path, mode


def _existing_run(path, settings, restart):
    if not is_run(path):
        listed = _listing(sorted(os.listdir(path)))
        raise ValueError(
            f"workdir {path} already holds files that are not a deat_tf run ({listed}; no "
            f"{MARKER}); pass another --workdir (a new or empty folder)."
        )
    if restart:
        foreign = foreign_entries(path)
        if foreign:
            raise ValueError(
                f"workdir {path} holds a deat_tf run and files deat_tf did not write "
                f"({_listing(foreign)}); --restart removes only the run's own outputs, so move "
                "those elsewhere first, or pass a new workdir."
            )
        return "restart"
    config_path = os.path.join(path, "config.json")
    stored, problem = _read_json_object(config_path)
    if problem is not None:
        # The checkpoints may well be intact: say what is wrong, never "empty it".
        raise ValueError(
            f"workdir {path} holds a deat_tf run whose config.json {problem}, so its settings "
            "cannot be compared with these; put the run's config.json back (its checkpoints "
            "are kept), start it over with --restart (removes only deat_tf's outputs), or "
            "pass a new workdir."
        )
    if settings is not None:
        differences = [
            f"{name} {stored.get(name)!r} -> {value!r}"
            for name, value in settings.items()
            if name not in RUNTIME_FIELDS and stored.get(name) != value
        ]
        if differences:
            raise ValueError(
                f"workdir {path} holds a run with other settings ({'; '.join(differences)}); "
                "rerun with its settings to resume it, pass --restart to start it over, or "
                "pass a new workdir."
            )
    summary = read_summary(path)
    if summary is not None and _is_done(summary.get("status", "")):
        return "finished"
    return "resume"


def is_run(path):
    """Whether the folder `path` holds deat_tf's run marker (see `write_marker`)."""
    marker = _read_json(os.path.join(path, MARKER))
    return isinstance(marker, dict) and marker.get("deat_tf_run") == 1


def write_marker(path):
    """Writes the marker that makes `path` a deat_tf run (before any other output).

    Args:
        path: The run's folder (it exists).
    """
    import deat_tf

    write_json(os.path.join(path, MARKER), {"deat_tf_run": 1, "written_by": deat_tf.__version__})


def foreign_entries(path):
    """The top-level entries of `path` that no run writes, sorted."""
    return sorted(
        name
        for name in os.listdir(path)
        if name not in OUTPUTS and not name.startswith(TEMPORARY_PREFIXES)
    )


def _listing(names, limit=5):
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _read_json_object(path):
    """(the JSON object in `path`, None), or (None, what is wrong with the file)."""
    try:
        with open(path) as stream:
            value = json.load(stream)
    except FileNotFoundError:
        return None, "is missing"
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error})"
    except ValueError as error:
        return None, f"is not valid JSON ({first_line(error)})"
    if not isinstance(value, dict):
        return None, f"holds a JSON {type(value).__name__}, not an object of settings"
    return value, None


def _is_done(status):
    return status == FINISHED or status.startswith("stopped")


def clear_run(path):
    """Removes a run's outputs from its workdir (for a restart), keeping the folder.

    Only the entries a run writes (`OUTPUTS`, and temporary files of
    interrupted writes) are removed; anything else stays.
    """
    for name in os.listdir(path):
        if name not in OUTPUTS and not name.startswith(TEMPORARY_PREFIXES):
            continue
        target = os.path.join(path, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        else:
            os.remove(target)


def _read_json(path):
    try:
        with open(path) as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return None


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


def _current_umask():
    """The process umask (reading it needs setting it; it is put back at once)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _atomic_write(path, suffix, write):
    """Calls write(temporary path) for a temporary file next to `path`, then renames it."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=folder)
    os.close(handle)
    try:
        write(temporary)
        # mkstemp creates the file 0600; the result must be as readable as a plain
        # open(path, "w") would make it (others on a shared filesystem read summaries).
        os.chmod(temporary, 0o666 & ~_current_umask())
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


# ---------------------------------------------------------------- run state


class RunState(tf.train.experimental.PythonState):
    """What a run knows beyond its variables: the epoch records and the best epoch.

    It is saved inside every checkpoint, so weights, optimizer slots, the M+
    state (model variables) and this history are restored together, from one
    atomic save.

    Attributes:
        records: One dict per finished epoch (see `EPOCH_FIELDS`), in order.
        best_key: (validation robust accuracy, validation accuracy) of the best epoch.
        best_epoch: The best epoch, counted from 1, or None.
        resumed_at: Epochs (counted from 0) at which the run was resumed.
        position: Minibatches done in the epoch after the recorded ones: 0 in
            an epoch-end checkpoint, k in one written inside an epoch
            (`deat_tf.checkpoints`).
        partial_metrics: That epoch's training metric values so far (None at
            an epoch end).
    """

    def __init__(self):
        self.records = []
        self.best_key = None
        self.best_epoch = None
        self.resumed_at = []
        self.position = 0
        self.partial_metrics = None

    def serialize(self):
        return json.dumps(
            json_ready(
                {
                    "records": self.records,
                    "best_key": self.best_key,
                    "best_epoch": self.best_epoch,
                    "resumed_at": self.resumed_at,
                    "position": self.position,
                    "partial_metrics": self.partial_metrics,
                }
            )
        )

    def deserialize(self, string_value):
        values = json.loads(string_value)
        self.records = values["records"]
        self.best_key = tuple(values["best_key"]) if values["best_key"] is not None else None
        self.best_epoch = values["best_epoch"]
        self.resumed_at = values["resumed_at"]
        # Absent from checkpoints written before mid-epoch checkpoints existed.
        self.position = values.get("position", 0)
        self.partial_metrics = values.get("partial_metrics")

    @property
    def epochs_done(self):
        """Number of finished epochs."""
        return len(self.records)


def first_line(error):
    """The first line of an error's text (its type's name when empty), at most 200 characters."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]


class RunRecorder(keras.callbacks.Callback):
    """After every epoch: the record, the best epoch, the checkpoints, summary.json, one line.

    Place it after the callbacks that add to the epoch logs (scheduler,
    statistics) and before TensorBoard: the checkpoint is written first, so a
    crash afterwards loses nothing a resumed run cannot rebuild (see
    `complete_tensorboard`). An epoch whose loss or weights are not finite is
    not saved: the last good checkpoint stays the newest.

    The best epoch has the highest `val_robust_accuracy` (PGD on the
    validation split), ties broken by `val_accuracy`; without a PGD
    evaluation, the highest `val_accuracy`. An epoch whose clean validation
    accuracy is at chance level competes on clean accuracy only: a collapsed
    network that predicts one class is as "robust" as it is accurate, and
    must not win over a real one.

    Args:
        checkpoints: The run's `checkpoints.Checkpoints`.
        state: Its `RunState`.
        summary: Its `RunSummary`.
        num_classes: Number of classes (sets the chance level).
        verbose: Print one line per epoch.
    """

    def __init__(self, checkpoints, state, summary, num_classes, verbose=True):
        super().__init__()
        self.checkpoints = checkpoints
        self.state = state
        self.summary = summary
        self.verbose = verbose
        self.chance_level = guards.chance_level(num_classes)
        self.skipped_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        record = {"epoch": epoch + 1}
        # The rate at the epoch's end, the value Keras' TensorBoard logs too.
        logs_with_rate = dict(
            logs,
            learning_rate=float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
        )
        for field in EPOCH_FIELDS:
            if field in logs_with_rate:
                record[field] = float(logs_with_rate[field])
        if not _finite_state(record, self.model):
            self.skipped_epoch = epoch + 1
            return
        clean = logs.get("val_accuracy", -1.0)
        robust = logs.get("val_robust_accuracy", -1.0) if clean > self.chance_level else -1.0
        key = (robust, clean)
        # Put back if the checkpoint cannot be written.
        before = (
            self.state.best_key,
            self.state.best_epoch,
            [earlier["best"] for earlier in self.state.records],
        )
        record["best"] = self.state.best_key is None or key > tuple(self.state.best_key)
        if record["best"]:
            self.state.best_key = key
            self.state.best_epoch = epoch + 1
            for earlier in self.state.records:
                earlier["best"] = False
        self.state.records.append(record)
        try:
            if record["best"]:
                self.checkpoints.best.save(checkpoint_number=epoch + 1)
            self.checkpoints.last.save(checkpoint_number=epoch + 1)
        except (OSError, tf.errors.OpError) as error:
            # The epoch never reached its checkpoint: summary.json must not count it.
            self.state.records.pop()
            self.state.best_key, self.state.best_epoch, flags = before
            for earlier, flag in zip(self.state.records, flags):
                earlier["best"] = flag
            raise WriteFailed(self.summary.path, self.state, error) from error
        try:
            self.summary.write()
        except OSError as error:
            raise WriteFailed(self.summary.path, self.state, error) from error
        if self.verbose:
            print(self.summary.epoch_line(record), flush=True)


def _finite_state(record, model):
    if not math.isfinite(record.get("loss", 0.0)):
        return False
    return all(
        bool(tf.reduce_all(tf.math.is_finite(variable))) for variable in model.trainable_variables
    )


class WriteFailed(OSError):
    """A checkpoint or report could not be written (disk full, workdir unwritable)."""

    def __init__(self, path, state, error):
        folder = os.path.dirname(path)
        last = state.epochs_done
        kept = f"epoch {last}" if last > 0 else "none yet"
        super().__init__(
            f"cannot write to {folder} ({write_error_reason(error)}); the last good checkpoint "
            f"({kept}) is intact: free space or fix the folder, then rerun the same command "
            "to resume."
        )


def write_error_reason(error):
    """The operating system's reason for a failed write, e.g. "No space left on device".

    TensorFlow's save errors start with the op and a long temporary path and
    put the reason at the end, where a first line cut short would lose it.
    """
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    for number in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO):
        if os.strerror(number) in text:
            return os.strerror(number)
    return first_line(error)


class RunSummary:
    """summary.json: the run's facts, per-epoch records, totals, test results and status.

    Args:
        path: summary.json path.
        run: Dict of run facts (dataset sizes, replicas, ...) stored in the summary.
        epochs: Planned epochs.
        count_name: "r" or "K", the name printed for the iteration count.
        state: The `RunState` whose records it reports.
    """

    def __init__(self, path, run, epochs, count_name, state):
        self.path = path
        self.run = run
        self.epochs = epochs
        self.count_name = count_name
        self.state = state
        self.status = "running"
        self.extra = {}

    @property
    def records(self):
        """The epoch records so far."""
        return self.state.records

    def epoch_line(self, record):
        """One line: epoch, r/K, magnitude, accuracies, lr, time."""
        parts = [
            f"epoch {record['epoch']:>3}/{self.epochs}",
            f"{self.count_name}={record.get('attack_steps', math.nan):g}",
        ]
        if "grad_magnitude" in record:
            # Absent when the model does not compute M (track_magnitude).
            parts.append(f"M={record['grad_magnitude']:.4g}")
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
        """Totals over the epochs recorded so far, across interruptions."""
        records = self.records
        return {
            "epochs_completed": len(records),
            "total_train_seconds": sum(record.get("train_seconds", 0.0) for record in records),
            "total_validation_seconds": sum(
                record.get("validation_seconds", 0.0) for record in records
            ),
            "total_seconds": sum(record.get("seconds", 0.0) for record in records),
            "gradient_passes": sum(record.get("gradient_passes", 0.0) for record in records),
            "attack_steps_sum": sum(record.get("attack_steps", 0.0) for record in records),
        }

    def summary(self):
        """The summary.json content."""
        result = {"status": self.status, "run": self.run, "epochs": self.records}
        result.update(self.totals())
        best = [record for record in self.records if record["best"]]
        result["best_epoch"] = best[-1] if best else None
        result["resumed_at_epochs"] = list(self.state.resumed_at)
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
            # M is absent when the model does not compute it (track_magnitude).
            magnitude = record.get("grad_magnitude")
            magnitude = "-" if magnitude is None else f"{magnitude:.4g}"
            lines.append(
                f"{record['epoch']:>5} {record.get('attack_steps', math.nan):>3g} "
                f"{magnitude:>11} "
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


def read_summary(workdir):
    """The summary.json of a workdir, or None when there is none or it is unreadable."""
    return _read_json(os.path.join(workdir, "summary.json"))


def complete_tensorboard(log_dir, records):
    """Writes the epoch scalars of `records` that the event files lack.

    Checkpoints are written before TensorBoard's events, so after a crash
    between the two a resumed run finds an epoch recorded but not plotted;
    this fills it in (with the fields the record keeps), and no epoch is
    ever written twice.

    Args:
        log_dir: The run's tensorboard folder (with train/ and validation/).
        records: The `RunState` records.
    """
    present = _tensorboard_epochs(os.path.join(log_dir, "train"), "epoch_loss")
    missing = [record for record in records if record["epoch"] - 1 not in present]
    if not missing:
        return
    writers = {
        folder: tf.summary.create_file_writer(os.path.join(log_dir, folder))
        for folder in ("train", "validation")
    }
    for record in missing:
        for field, value in record.items():
            if field in ("epoch", "best") or value is None:
                continue
            validation = field.startswith("val_")
            folder, name = ("validation", field[4:]) if validation else ("train", field)
            with writers[folder].as_default():
                tf.summary.scalar(f"epoch_{name}", value, step=record["epoch"] - 1)
    for writer in writers.values():
        writer.close()


def _tensorboard_epochs(folder, tag):
    steps = set()
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                if any(value.tag == tag for value in event.summary.value):
                    steps.add(int(event.step))
        except tf.errors.DataLossError:
            continue  # a file cut short by the crash; its complete events were read
    return steps
