"""Learning-rate schedules of the recipes, as Keras `LearningRateSchedule`s keyed on minibatches.

`AdversarialModel.compile` wraps the optimizer's schedule in `MinibatchSchedule`,
which evaluates it at the number of minibatches trained (not at the optimizer's
update count, which grows r times faster with r replays), so every boundary
here is expressed in minibatches:

- "constant": one value;
- "multistep": multiply by `decay` at fractions of all minibatches (the CIFAR
  recipes: x0.1 at 50% and 80% of training);
- "piecewise": multiply by `decay` at epoch boundaries (ImageNet: epochs 10, 17);
- "cyclic": linear 0 -> peak -> 0 with the peak at `peak_fraction` of training
  (the "fast" recipes of Wong et al.).

In both step schedules the first minibatch of the boundary (minibatch number
`boundary`, counted from 0) is the first at the decayed value.
"""

import keras
from keras import ops

LR_SCHEDULES = ("constant", "multistep", "piecewise", "cyclic")


@keras.saving.register_keras_serializable(package="deat_tf")
class MinibatchSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Evaluates a learning-rate schedule at the minibatch count of a model.

    `AdversarialModel.compile` wraps the optimizer's schedule in this class, so
    that r optimizer updates per minibatch do not advance the schedule r times.

    Args:
        schedule: The wrapped `LearningRateSchedule`, keyed on minibatches.
        counter: The variable holding the number of minibatches trained; without
            it (a freshly deserialised optimizer) the optimizer step is used
            until `AdversarialModel.compile` attaches the model's counter.
    """

    def __init__(self, schedule, counter=None):
        self.schedule = schedule
        self.counter = counter

    def __call__(self, step):
        position = step if self.counter is None else self.counter.value
        return self.schedule(position)

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["schedule"]))


@keras.saving.register_keras_serializable(package="deat_tf")
class TriangularSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` and linear decay back to 0 (cyclic schedule).

    The value at minibatch `step` is the one after that minibatch completes
    (position step + 1), so the first minibatch trains at a small positive rate.

    Args:
        peak: Highest learning rate.
        total_steps: Minibatches in the whole run.
        peak_fraction: Fraction of the run at which the peak is reached, in (0, 1).
    """

    def __init__(self, peak, total_steps, peak_fraction=0.4):
        if not peak > 0:
            raise ValueError(f"peak must be > 0, got {peak}.")
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
        if not 0.0 < peak_fraction < 1.0:
            raise ValueError(f"peak_fraction must be in (0, 1), got {peak_fraction}.")
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.peak_fraction = float(peak_fraction)

    def __call__(self, step):
        position = ops.cast(step, "float32") + 1.0
        peak_step = self.peak_fraction * self.total_steps
        rising = self.peak * position / peak_step
        falling = self.peak * (self.total_steps - position) / (self.total_steps - peak_step)
        return ops.maximum(ops.where(position < peak_step, rising, falling), 0.0)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "peak_fraction": self.peak_fraction,
        }


def make_learning_rate(
    schedule, learning_rate, epochs, steps_per_epoch, boundaries=(), decay=0.1, peak_fraction=0.4
):
    """Builds the learning rate of a recipe.

    Args:
        schedule: One of `LR_SCHEDULES`.
        learning_rate: Base value (peak value for "cyclic").
        epochs: Epochs of the run.
        steps_per_epoch: Minibatches per epoch.
        boundaries: Fractions of the run in (0, 1) for "multistep", epochs in
            (0, epochs) for "piecewise"; increasing.
        decay: Factor applied at each boundary.
        peak_fraction: Peak position of "cyclic".

    Returns:
        A float or a `LearningRateSchedule` keyed on minibatches.

    Raises:
        ValueError: For an unknown schedule or boundaries outside the run.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {schedule!r}.")
    total = epochs * steps_per_epoch
    if schedule == "constant":
        return float(learning_rate)
    if schedule == "cyclic":
        return TriangularSchedule(learning_rate, total, peak_fraction)
    if not boundaries:
        raise ValueError(f"lr_schedule {schedule} needs --lr_boundaries (e.g. 0.5,0.8 or 10,17).")
    if not decay > 0:
        raise ValueError(f"lr_decay must be > 0, got {decay}.")
    if schedule == "multistep":
        if any(not 0.0 < value < 1.0 for value in boundaries):
            raise ValueError(
                "multistep lr_boundaries are fractions of training in (0, 1), got "
                f"{list(boundaries)}."
            )
        minibatches = [int(round(value * total)) for value in boundaries]
    else:
        if any(not 0.0 < value < epochs for value in boundaries):
            raise ValueError(
                f"piecewise lr_boundaries are epochs in (0, {epochs}), got {list(boundaries)}."
            )
        minibatches = [int(round(value * steps_per_epoch)) for value in boundaries]
    if (
        any(later <= earlier for earlier, later in zip(minibatches, minibatches[1:]))
        or minibatches[0] < 1
    ):
        raise ValueError(
            "lr_boundaries must be increasing and fall on distinct minibatches, got "
            f"{list(boundaries)} "
            f"({minibatches} of {total} minibatches)."
        )
    values = [float(learning_rate) * decay**index for index in range(len(minibatches) + 1)]
    # PiecewiseConstantDecay switches after its boundary: minibatch b is the first decayed one.
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [boundary - 1 for boundary in minibatches], values
    )
