"""Guards for long runs: stop on non-finite values, detect a collapse or a catastrophic overfit.

- `NonFiniteGuard` stops training at the first minibatch whose loss is NaN or
  infinite, names the epoch and minibatch, and warns after an epoch in which
  the train step had to zero non-finite input gradients (the
  `non_finite_gradients` metric of `AdversarialModel`).
- `detect_collapse`: the training loss sits at ln(classes) with chance
  accuracy, after the model had been better. Free-style training at a high
  learning rate can fall into this state and stay there (observed on MNIST
  M+DEAT at lr 0.05 once r reached 5).
- `detect_catastrophic_overfit`: the validation robust accuracy drops to a
  fraction of its best while the training accuracy on adversarial inputs
  holds or rises: the failure of single-step methods (FGSM-RS) that Wong et
  al. stop early on.
- `CollapseGuard` applies both detectors after every epoch, warns, and by
  default stops the run (the best checkpoint is kept and evaluated).

The detectors are pure functions of the epoch records, so they are tested on
scripted histories as well as on real runs.
"""

import math

import keras
import numpy as np

# A collapsed network predicts (almost) the class frequencies: its loss is
# within this fraction of ln(classes).
COLLAPSE_LOSS_TOLERANCE = 0.03
# ... and its accuracy is at most this multiple of chance (`chance_level`): an
# accuracy up to there is no better than chance, here and in the epoch lines.
CHANCE_LEVEL_FACTOR = 1.5
# The model "had been better" when an earlier epoch's accuracy exceeded this
# multiple of chance.
BETTER_ACCURACY_FACTOR = 2.0
# Catastrophic overfit: validation robust accuracy below this fraction of its
# best, and at least this far (absolute) below it ...
OVERFIT_FRACTION = 0.5
OVERFIT_DROP = 0.2
# ... after the best had reached at least this much.
OVERFIT_MINIMUM_BEST = 0.1


class TrainingStopped(RuntimeError):
    """Training ended on a guard: the message says why, where, and what was kept."""


def chance_level(num_classes):
    """The accuracy up to which a classifier of `num_classes` classes is no better than chance.

    Args:
        num_classes: Number of classes (at least 1 is assumed).

    Returns:
        `CHANCE_LEVEL_FACTOR` / num_classes.
    """
    return CHANCE_LEVEL_FACTOR / max(int(num_classes), 1)


def _accuracy(record):
    """The clean training accuracy if measured, else the accuracy on adversarial inputs."""
    value = record.get("train_accuracy")
    if value is None or not math.isfinite(value):
        value = record.get("adv_accuracy")
    return value


def detect_collapse(records, num_classes):
    """Whether the last epoch shows a collapse to chance after a better start.

    Args:
        records: Epoch records in order (dicts with loss and accuracies).
        num_classes: Number of classes.

    Returns:
        A one-line explanation, or None.
    """
    if len(records) < 2 or num_classes < 2:
        return None
    last = records[-1]
    chance_loss = math.log(num_classes)
    chance = 1.0 / num_classes
    loss, accuracy = last.get("loss"), _accuracy(last)
    if loss is None or accuracy is None or not math.isfinite(loss):
        return None
    at_chance = abs(
        loss - chance_loss
    ) <= COLLAPSE_LOSS_TOLERANCE * chance_loss and accuracy <= chance_level(num_classes)
    if not at_chance:
        return None
    earlier = [_accuracy(record) for record in records[:-1]]
    best = max((value for value in earlier if value is not None), default=0.0)
    if best <= BETTER_ACCURACY_FACTOR * chance:
        return None
    return (
        f"collapse at epoch {last['epoch']}: training loss {loss:.4f} is ln({num_classes}) = "
        f"{chance_loss:.4f} and accuracy {accuracy:.4f} is chance, after {best:.4f} earlier"
    )


def detect_catastrophic_overfit(records):
    """Whether the last epoch lost its validation robustness while training accuracy held.

    Args:
        records: Epoch records in order (with val_robust_accuracy and adv_accuracy).

    Returns:
        A one-line explanation, or None.
    """
    robust = [record.get("val_robust_accuracy") for record in records]
    if len(records) < 2 or any(value is None for value in robust):
        return None
    best_index = int(np.argmax(robust[:-1]))
    best, current = robust[best_index], robust[-1]
    if best < OVERFIT_MINIMUM_BEST:
        return None
    if current > OVERFIT_FRACTION * best or current > best - OVERFIT_DROP:
        return None
    training_then = records[best_index].get("adv_accuracy", math.nan)
    training_now = records[-1].get("adv_accuracy", math.nan)
    if not training_now >= training_then:
        return None
    return (
        f"catastrophic overfit at epoch {records[-1]['epoch']}: validation robust accuracy "
        f"{current:.4f}, down from {best:.4f} at epoch {records[best_index]['epoch']}, while "
        f"training accuracy on adversarial inputs went {training_then:.4f} -> {training_now:.4f}"
    )


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and warns about zeroed gradients.

    After `fit` returns, `failure` holds the one-line reason (or None). The
    epoch-end checkpoint of a failed epoch is skipped by `workdir.RunRecorder`,
    so the last good checkpoint stays the newest.

    Args:
        warn: Callable receiving warning lines.
    """

    def __init__(self, warn=print):
        super().__init__()
        self.warn = warn
        self.failure = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.failure is not None:
            return
        loss = float(loss)
        if not math.isfinite(loss):
            # Keras logs the running mean, which turns non-finite at the first bad minibatch.
            self.failure = (
                f"non-finite loss ({loss}) at epoch {self._epoch + 1}, minibatch {batch + 1}"
            )
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        zeroed = (logs or {}).get("non_finite_gradients", 0.0)
        if zeroed and math.isfinite(zeroed) and self.failure is None:
            self.warn(
                f"warning: epoch {epoch + 1}: {int(zeroed)} non-finite input-gradient values were "
                "set to zero before the attack step (the loss stayed finite); a sign of overflow"
            )


class CollapseGuard(keras.callbacks.Callback):
    """Warns on a collapse or a catastrophic overfit and, by default, stops the run.

    Place it after `workdir.RunRecorder`, whose records it reads, so the
    epoch is saved before the run stops; the best checkpoint is the one a
    stopped run evaluates.

    Args:
        records: The list of epoch records the recorder appends to.
        num_classes: Number of classes.
        stop: Stop training when a detector fires (else only warn).
        warn: Callable receiving warning lines.
    """

    def __init__(self, records, num_classes, stop=True, warn=print):
        super().__init__()
        self.records = records
        self.num_classes = num_classes
        self.stop = stop
        self.warn = warn
        self.reason = None

    def on_epoch_end(self, epoch, logs=None):
        if not self.records or self.records[-1]["epoch"] != epoch + 1:
            return  # the epoch was not recorded (non-finite): NonFiniteGuard reports it
        reason = detect_collapse(self.records, self.num_classes) or detect_catastrophic_overfit(
            self.records
        )
        if reason is None:
            return
        if self.stop:
            self.reason = reason
            self.model.stop_training = True
            self.warn(f"warning: {reason}; stopping (the best checkpoint is kept).")
        else:
            self.warn(f"warning: {reason}; training goes on (stop_on_collapse is off).")
