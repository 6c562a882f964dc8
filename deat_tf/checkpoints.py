"""The run's checkpoints (`Checkpoints`: last, partial, best) and the ones inside an epoch.

An epoch of the ImageNet recipe lasts about 1.5 hours; with checkpoints at
epoch ends only, a preemption costs up to that much. `EpochProgress` writes
a checkpoint every `every_steps` minibatches and/or every `every_minutes`
minutes into checkpoints/partial/ (numbered by minibatches trained), and one
at the minibatch where a SIGTERM or SIGINT arrived. Besides everything an
epoch-end checkpoint holds (weights, optimizer slots, the M+ state, the
history), it holds the position in the epoch and the epoch's metric sums so
far (the partial M sum, loss, accuracies, counts), which `RunState` carries.

A resumed run starts the epoch at the next minibatch: the same remaining
batches and augmentation (`streams.training_stream`), the same random starts
(seeded by the minibatch count, a model variable), and the metric sums put
back before its first minibatch. So the epoch's M, the M+ decision and every
logged figure equal an uninterrupted run's (bit for bit under
`--deterministic`). `--steps_per_epoch` is no substitute: it changes what the
M+ rule sums.
"""

import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from deat_tf import distribute, preemption
from deat_tf import workdir as workdir_lib

# The default interval: a preempted long epoch loses at most this much work.
DEFAULT_EVERY_MINUTES = 30.0


def metric_state(model):
    """The training metrics' variables as JSON-ready values, by metric name.

    Args:
        model: The `AdversarialModel` (training metrics).

    Returns:
        {metric name: [each variable's value as a (nested) list or number]};
        float32 values survive JSON exactly (a float64 holds each of them).
    """
    return {
        metric.name: [np.asarray(variable.numpy()).tolist() for variable in metric.variables]
        for metric in model.metrics
    }


def restore_metric_state(model, values):
    """Puts back the values `metric_state` returned (after Keras reset the metrics).

    Args:
        model: The `AdversarialModel`.
        values: The dict from `metric_state`.

    Raises:
        ValueError: If the stored metrics are not this model's.
    """
    metrics = {metric.name: metric for metric in model.metrics}
    if sorted(metrics) != sorted(values):
        raise ValueError(
            f"the checkpoint's epoch metrics ({', '.join(sorted(values))}) are not this "
            f"model's ({', '.join(sorted(metrics))})."
        )
    for name, stored in values.items():
        for variable, value in zip(metrics[name].variables, stored):
            variable.assign(np.asarray(value, dtype=variable.dtype))


class EpochProgress(keras.callbacks.Callback):
    """Mid-epoch checkpoints at an interval, and the stop at the next minibatch on a signal.

    Place it after `workdir.RunRecorder` and the guards: a signal during the
    last minibatch or the validation stops the run after the epoch-end
    checkpoint instead.

    Args:
        checkpoints: The run's `Checkpoints` (its `partial` manager).
        state: The `workdir.RunState` saved with them.
        summary_path: summary.json's path (for the message of a failed write).
        steps_per_epoch: Minibatches per epoch.
        every_steps: Write a checkpoint after every this many minibatches of
            an epoch (None: not by count).
        every_minutes: ... and/or when this many minutes passed since the
            last checkpoint (None: not by time).
        watch: The `preemption.SignalWatch`, or None.
        first_minibatch: Minibatches of the first epoch already done (a
            resumed run); its metric sums are taken from `state.partial_metrics`.
        clock: Seconds, monotonic (tests pass their own).
        say: Callable receiving a line after each mid-epoch checkpoint, or None.
    """

    def __init__(
        self,
        checkpoints,
        state,
        summary_path,
        steps_per_epoch,
        every_steps=None,
        every_minutes=DEFAULT_EVERY_MINUTES,
        watch=None,
        first_minibatch=0,
        clock=time.monotonic,
        say=None,
    ):
        super().__init__()
        self.checkpoints = checkpoints
        self.state = state
        self.summary_path = summary_path
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.every_seconds = None if every_minutes is None else 60.0 * every_minutes
        self.watch = watch
        self.clock = clock
        self.say = say
        self.start_at = first_minibatch
        self.pending_metrics = state.partial_metrics if first_minibatch else None
        self.epoch = 0
        self.position = 0
        self.saved_at = clock()
        self.saved = []  # (epoch from 1, minibatch) of each mid-epoch checkpoint

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.position, self.start_at = self.start_at, 0
        if self.pending_metrics is not None:
            # Keras has just reset the metrics; the epoch's sums so far come back.
            restore_metric_state(self.model, self.pending_metrics)
            self.pending_metrics = None

    def on_train_batch_end(self, batch, logs=None):
        self.position += 1
        if self.position >= self.steps_per_epoch:
            return  # the epoch-end checkpoint follows (on a signal, on_epoch_end stops)
        signal_number = self.watch.received if self.watch is not None else None
        signal_number = signal_number or 0
        by_time = self.every_seconds is not None and (
            self.clock() - self.saved_at >= self.every_seconds
        )
        if distribute.is_multi_worker(self.model.distribute_strategy):
            # Workers decide together, so that all save (a collective) and stop alike.
            signal_number, by_time = preemption.agree(
                self.model.distribute_strategy, [signal_number, int(by_time)]
            )
        by_count = bool(self.every_steps) and self.position % self.every_steps == 0
        loss = float(np.ravel((logs or {}).get("loss", 0.0))[0])
        healthy = math.isfinite(loss) and not self.model.stop_training
        if healthy and (signal_number or by_time or by_count):
            self.save()
        if signal_number and healthy:
            raise preemption.Interrupted(signal_number, self.epoch + 1, self.position)

    def on_epoch_end(self, epoch, logs=None):
        self.saved_at = self.clock()
        signal_number = self.watch.received if self.watch is not None else None
        if distribute.is_multi_worker(self.model.distribute_strategy):
            (signal_number,) = preemption.agree(
                self.model.distribute_strategy, [signal_number or 0]
            )
        recorded = self.state.records and self.state.records[-1]["epoch"] == epoch + 1
        if signal_number and recorded:
            raise preemption.Interrupted(signal_number, epoch + 1)

    def save(self):
        """Writes a checkpoint of the current position into checkpoints/partial/."""
        self.state.position = self.position
        self.state.partial_metrics = metric_state(self.model)
        try:
            self.checkpoints.partial.save(checkpoint_number=self.model.minibatches)
        except (OSError, tf.errors.OpError) as error:
            raise workdir_lib.WriteFailed(self.summary_path, self.state, error) from error
        finally:
            # Epoch-end checkpoints hold no position.
            self.state.position = 0
            self.state.partial_metrics = None
        self.saved_at = self.clock()
        self.saved.append((self.epoch + 1, self.position))
        if self.say is not None:
            self.say(f"deat_tf: checkpoint at epoch {self.epoch + 1}, minibatch {self.position}")


class Checkpoints:
    """The run's checkpoints: checkpoints/last (epoch ends), partial (inside epochs), best.

    Each holds the model (with the M+ state in its variables), the optimizer
    with its slots, the `RunState` and, for FREE's carried perturbation, its
    buffer. Two of each are kept, so that a truncated or corrupted latest
    checkpoint falls back to the one before. `last` and `best` are numbered
    by epoch, `partial` by minibatches trained (`deat_tf.checkpoints`).
    `tf.train.CheckpointManager` writes atomically (data first, then the index
    of checkpoints). Keras' `BackupAndRestore` saves weights and the epoch
    only, not the history or the best epoch this run needs, and
    `ModelCheckpoint` monitors one value where the best epoch is chosen on
    two (robust, then clean accuracy).

    Args:
        directory: The folder receiving last/, partial/ and best/.
        model: The `AdversarialModel` (compiled, optimizer built).
        state: The `RunState`.
        extra: Other trackables to save, by name (e.g. the carried perturbation).
        restore_directory: Where `restore_latest` looks (default `directory`): a
            worker that is not the chief saves apart but resumes from the chief's.
        steps_per_epoch: Minibatches per epoch, to order `partial` checkpoints
            among `last` ones (None: no partial checkpoints are read).
    """

    def __init__(
        self, directory, model, state, extra=None, restore_directory=None, steps_per_epoch=None
    ):
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=model.optimizer, run=state, **(extra or {})
        )
        self.restore_root = restore_directory or directory
        self.steps_per_epoch = steps_per_epoch
        for name in ("last", "partial", "best"):
            manager = tf.train.CheckpointManager(
                self.checkpoint, os.path.join(directory, name), max_to_keep=2
            )
            setattr(self, name, manager)

    def _stored(self, name):
        """The checkpoint paths of last/partial/best in the restore folder, oldest first."""
        manager = getattr(self, name)
        folder = os.path.join(self.restore_root, name)
        if folder == manager.directory:
            return list(manager.checkpoints)
        listed = tf.train.get_checkpoint_state(folder)
        return list(listed.all_model_checkpoint_paths) if listed else []

    def restore_latest(self, warn=print):
        """Restores the newest readable checkpoint; returns its path or None.

        The newest position comes first, whether an epoch end (last) or a
        minibatch inside an epoch (partial); when none of those can be read,
        the best checkpoints are tried, and the epochs after the one restored
        are trained again.

        Args:
            warn: Callable receiving a warning line when a checkpoint is skipped.

        Raises:
            ValueError: If checkpoints exist and none of them can be read.
        """
        last = self._stored("last")
        if self.steps_per_epoch:
            # Positions in minibatches: epoch E ends at E * steps_per_epoch.
            positioned = [(_number(path) * self.steps_per_epoch, path) for path in last]
            positioned += [(_number(path), path) for path in self._stored("partial")]
            ordered = [path for _, path in sorted(positioned, key=lambda item: -item[0])]
        else:
            ordered = list(reversed(last))
        best = list(reversed(self._stored("best")))
        candidates = ordered + best
        for index, path in enumerate(candidates):
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            # A truncated file fails in the reader in several ways (OpError,
            # IndexError, ValueError); any failure means: try the previous one.
            except Exception as error:  # noqa: BLE001
                following = candidates[index + 1] if index + 1 < len(candidates) else None
                if following is None:
                    then = "no older one left."
                elif following in best and path not in best:
                    then = (
                        f"none of the latest is readable: falling back to the best checkpoint "
                        f"{following} (the epochs after it are trained again)."
                    )
                else:
                    then = f"falling back to {following}."
                reason = workdir_lib.first_line(error)
                warn(f"warning: checkpoint {path} is unreadable ({reason}); {then}")
                continue
            return path
        if candidates:
            raise ValueError(
                f"no readable checkpoint in {self.restore_root} (last, partial or best); "
                "restore the folder from a backup, or start the run over with --restart."
            )
        return None

    def best_checkpoint(self, epoch):
        """The path of the `best` checkpoint saved at `epoch` (counted from 1), or None."""
        for path in self.best.checkpoints:
            if path.endswith(f"-{epoch}"):
                return path
        return None


def _number(path):
    """The number N of a checkpoint path ending in ckpt-N."""
    return int(path.rsplit("-", 1)[1])
