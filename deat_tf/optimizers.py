"""SGD with PyTorch's momentum rule, for the recipes that reproduce PyTorch runs.

Keras' SGD keeps the learning rate inside its momentum buffer,

    v <- mu v - lr g;      theta <- theta + v,

PyTorch's keeps it outside,

    b <- mu b + g;         theta <- theta - lr b.

At a constant learning rate the two give the same weights (v = -lr b). When
the rate changes they do not: after a x0.1 drop, Keras' velocity still holds
the steps taken at the old rate, so its first update is about nine times
PyTorch's and the excess decays only as mu^t; each drop is spread over about
20 updates instead of taking effect at once. `PyTorchSGD` is Keras' SGD with
PyTorch's update; everything else (learning-rate schedules, serialisation,
distribution, loss scaling) is Keras'.

Weight decay stays outside the optimizer: `AdversarialModel(l2_weight_decay=...)`
adds the coupled L2 term to the gradient before `apply`, which is where
PyTorch's `SGD(weight_decay=...)` adds it, so the buffer sees g + wd theta.
"""

import keras
from keras import ops

from deat_tf import models
from deat_tf.learning_rates import MinibatchSchedule


def with_loss_scaling(optimizer, network):
    """The optimizer, wrapped in dynamic loss scaling if the network computes in float16.

    Keras adds the wrapper by itself only when the compiled model's own dtype
    policy is mixed_float16; the layers of the network are what matters.

    Args:
        optimizer: A Keras optimizer.
        network: The model whose gradients the optimizer applies.

    Returns:
        The optimizer, or a `keras.optimizers.LossScaleOptimizer` around it.
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    if any(
        getattr(layer, "compute_dtype", None) == "float16" for layer in models.all_layers(network)
    ):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def key_on_minibatches(optimizer, counter):
    """Makes the optimizer's learning-rate schedule read `counter` instead of its step.

    Args:
        optimizer: A compiled Keras optimizer (or a `LossScaleOptimizer`).
        counter: The variable counting minibatches (`AdversarialModel`'s).
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    # Keras has no public getter for an optimizer's schedule object.
    schedule = getattr(inner, "_learning_rate", None)
    if isinstance(schedule, MinibatchSchedule):
        schedule.counter = counter
    elif isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        inner.learning_rate = MinibatchSchedule(schedule, counter)


@keras.saving.register_keras_serializable(package="deat_tf")
class PyTorchSGD(keras.optimizers.SGD):
    """Stochastic gradient descent with PyTorch's momentum (and Nesterov) update.

    Per variable, with gradient g and momentum mu (dampening 0, as PyTorch's
    default):

        b <- mu b + g                      (b starts at 0, so b_1 = g)
        theta <- theta - lr * b            (nesterov: theta - lr * (g + mu b))

    Args:
        learning_rate: A float or a `LearningRateSchedule`.
        momentum: Float in [0, 1].
        nesterov: Whether to use Nesterov momentum.
        name: Optimizer name.
        **kwargs: Passed to `keras.optimizers.SGD` (e.g. loss_scale_factor).
    """

    def __init__(
        self, learning_rate=0.01, momentum=0.0, nesterov=False, name="pytorch_sgd", **kwargs
    ):
        super().__init__(
            learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, name=name, **kwargs
        )

    def update_step(self, gradient, variable, learning_rate):
        """Applies one PyTorch-style step to `variable`."""
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(gradient, learning_rate))
            return
        buffer = self.momentums[self._get_variable_index(variable)]
        # Made in the variable's dtype from the Python float: ops.cast would
        # round it to float32 first (0.9 -> 0.89999998), a deviation from
        # PyTorch's update in float64.
        momentum = ops.convert_to_tensor(self.momentum, variable.dtype)
        self.assign(buffer, ops.add(ops.multiply(buffer, momentum), gradient))
        if self.nesterov:
            direction = ops.add(gradient, ops.multiply(buffer, momentum))
        else:
            direction = buffer
        self.assign_sub(variable, ops.multiply(direction, learning_rate))
