"""Keras callbacks that change the attack iteration count between epochs.

All three act on `AdversarialModel.attack_steps`: the replay count r for
method "deat", the attack step count K for "pgd", "trades" and "mart". Their state lives in the
model (`attack_steps`, `schedule_threshold`, `schedule_epochs`), so it is saved
and restored with the model or a checkpoint; a resumed fit continues the rule
where it stopped instead of starting over.

- `MagnitudeScheduler`: the M+ rule (docs/algorithm.md), driven by the
  epoch sum of the input-gradient magnitude (`grad_magnitude` in the logs).
- `PeriodicScheduler`: DEAT-d, one more iteration every `period` epochs.
- `AccuracyScheduler`: DEAT-p, one more iteration when the training accuracy
  on adversarial inputs exceeds a threshold.

The count used in an epoch is logged by the model itself (the `attack_steps`
metric); the schedulers add `next_attack_steps`, and `MagnitudeScheduler` also
`threshold` (NaN until the reference epoch sets it). Place them before
`TensorBoard` in the callback list so that it records these values.
"""

import math

import keras

from deat_tf import checks, methods
from deat_tf.adversarial_model import AdversarialModel

SCHEDULED_METHODS = methods.SCHEDULED


class IterationScheduler(keras.callbacks.Callback):
    """Base class: applies `next_steps` after every epoch and logs the counts.

    Args:
        max_steps: Cap on the iteration count (>= 1).
        initial_steps: Count for the first epoch; defaults to 1 for deat (r) and
            0 for pgd, trades and mart (K), as the M+ recipes start.
        verbose: 1 prints a line whenever the count changes.
    """

    def __init__(self, max_steps, initial_steps=None, verbose=1):
        super().__init__()
        self.max_steps = checks.check_count(max_steps, "max_steps", 1)
        if initial_steps is not None:
            checks.check_count(initial_steps, "initial_steps", 0)
            if initial_steps > self.max_steps:
                raise ValueError(
                    f"initial_steps must be <= max_steps ({self.max_steps}), got {initial_steps}."
                )
        self.initial_steps = initial_steps
        self.verbose = verbose

    def initial_count(self, model):
        """The count of epoch 0 for this model's method."""
        if self.initial_steps is not None:
            return self.initial_steps
        return methods.get(model.method).scheduled_start

    def on_train_begin(self, logs=None):
        model = self.model
        if not isinstance(model, AdversarialModel):
            raise ValueError(
                f"{type(self).__name__} needs a deat_tf.AdversarialModel, "
                f"got {type(model).__name__}."
            )
        methods.check_scheduler(type(self).__name__, model.method)
        if model.schedule_epochs == 0:
            model.schedule_threshold = None
            model.attack_steps = self.initial_count(model)

    def next_steps(self, epoch_index, steps, logs):
        """Returns the count for the next epoch.

        Args:
            epoch_index: Index e of the epoch that just ended, counted from 0 over
                the whole schedule (resumes included).
            steps: The count used during that epoch.
            logs: The epoch logs.

        Returns:
            The iteration count for epoch e + 1.
        """
        raise NotImplementedError

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        model = self.model
        epoch_index = model.schedule_epochs
        steps = model.attack_steps
        new_steps = self.next_steps(epoch_index, steps, logs)
        model.schedule_epochs = epoch_index + 1
        logs["next_attack_steps"] = float(new_steps)
        self.add_logs(logs)
        if new_steps != steps:
            model.attack_steps = new_steps
            if self.verbose:
                print(
                    f"{type(self).__name__}: attack_steps {steps} -> {new_steps} after epoch "
                    f"{epoch + 1}{self.describe(logs)}",
                    flush=True,
                )

    def add_logs(self, logs):
        """Lets subclasses record their own state in the epoch logs."""

    def describe(self, logs):
        """Extra text for the verbose line."""
        return ""

    def get_config(self):
        return {
            "max_steps": self.max_steps,
            "initial_steps": self.initial_steps,
            "verbose": self.verbose,
        }


def _read_log(logs, key, scheduler):
    if key not in logs:
        raise ValueError(
            f"{scheduler} needs '{key}' in the epoch logs (an AdversarialModel logs it); "
            f"got keys {sorted(logs)}."
        )
    return float(logs[key])


class MagnitudeScheduler(IterationScheduler):
    """The M+ rule: more iterations when the gradient magnitude grows.

    With M_e the epoch sum of the input-gradient magnitude, e counted from 0:
    after epoch 0 the count rises by one unconditionally; after epoch 1 the
    threshold T is set to gamma * M_1; after every later epoch, if M_e > T and
    the count is below `max_steps`, then T = gamma * M_e and the count rises by
    one. T moves only when the count rises; the count never falls.

    Usage: `model.fit(dataset, epochs=..., callbacks=[MagnitudeScheduler()])`.

    Args:
        gamma: Threshold factor > 0 (1.01 for CIFAR, 1.1 or 1.01 for ImageNet).
        max_steps: Cap r_max or K_max (8 for CIFAR DEAT, 4 ImageNet, 7 M+PGD).
        initial_steps: Count of epoch 0 (default 1 for deat, else 0).
        monitor: Log key of the epoch magnitude.
        verbose: 1 prints a line whenever the count changes.
    """

    def __init__(
        self, gamma=1.01, max_steps=8, initial_steps=None, monitor="grad_magnitude", verbose=1
    ):
        super().__init__(max_steps, initial_steps, verbose)
        self.gamma = checks.check_positive(gamma, "gamma")
        self.monitor = monitor

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.monitor == "grad_magnitude" and not self.model.track_magnitude:
            raise ValueError(
                "MagnitudeScheduler reads grad_magnitude, which this model does not compute: "
                "build it with AdversarialModel(track_magnitude=True)."
            )

    def next_steps(self, epoch_index, steps, logs):
        magnitude = _read_log(logs, self.monitor, type(self).__name__)
        if epoch_index == 0:
            return min(steps + 1, self.max_steps)
        if epoch_index == 1:
            self.model.schedule_threshold = self.gamma * magnitude
            return steps
        threshold = self.model.schedule_threshold
        if threshold is not None and magnitude > threshold and steps < self.max_steps:
            self.model.schedule_threshold = self.gamma * magnitude
            return steps + 1
        return steps

    def add_logs(self, logs):
        threshold = self.model.schedule_threshold
        logs["threshold"] = math.nan if threshold is None else threshold

    def describe(self, logs):
        magnitude = logs.get(self.monitor, math.nan)
        return f" ({self.monitor} {magnitude:.6g}, threshold {logs['threshold']:.6g})"

    def get_config(self):
        config = super().get_config()
        config.update({"gamma": self.gamma, "monitor": self.monitor})
        return config


class PeriodicScheduler(IterationScheduler):
    """DEAT-d: count(e) = min(initial + floor(e / period), max_steps).

    Args:
        period: Epochs per increase d (>= 1; 3 in the paper).
        max_steps: Cap (5 in the paper).
        initial_steps: Count of epoch 0 (default 1 for deat, else 0).
        verbose: 1 prints a line whenever the count changes.
    """

    def __init__(self, period=3, max_steps=5, initial_steps=None, verbose=1):
        super().__init__(max_steps, initial_steps, verbose)
        self.period = checks.check_count(period, "period", 1)

    def count_at(self, epoch_index):
        """The count of epoch `epoch_index` under this schedule."""
        return min(self.initial_count(self.model) + epoch_index // self.period, self.max_steps)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.model.attack_steps = self.count_at(self.model.schedule_epochs)

    def next_steps(self, epoch_index, steps, logs):
        return self.count_at(epoch_index + 1)

    def get_config(self):
        config = super().get_config()
        config["period"] = self.period
        return config


class AccuracyScheduler(IterationScheduler):
    """DEAT-p: one more iteration when adversarial training accuracy exceeds a threshold.

    Args:
        threshold: Accuracy p in [0, 1] above which the count rises (0.4 in the paper).
        max_steps: Cap (4 in the paper).
        initial_steps: Count of epoch 0 (default 1 for deat, else 0).
        monitor: Log key of the accuracy on the adversarial inputs of the last replay.
        verbose: 1 prints a line whenever the count changes.
    """

    def __init__(
        self, threshold=0.4, max_steps=4, initial_steps=None, monitor="adv_accuracy", verbose=1
    ):
        super().__init__(max_steps, initial_steps, verbose)
        self.threshold = checks.check_range(threshold, "threshold", 0.0, 1.0)
        self.monitor = monitor

    def next_steps(self, epoch_index, steps, logs):
        accuracy = _read_log(logs, self.monitor, type(self).__name__)
        if accuracy > self.threshold and steps < self.max_steps:
            return steps + 1
        return steps

    def describe(self, logs):
        return f" ({self.monitor} {logs.get(self.monitor, math.nan):.4f} > {self.threshold})"

    def get_config(self):
        config = super().get_config()
        config.update({"threshold": self.threshold, "monitor": self.monitor})
        return config
