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
        momentum = ops.cast(self.momentum, variable.dtype)
        self.assign(buffer, ops.add(ops.multiply(buffer, momentum), gradient))
        if self.nesterov:
            direction = ops.add(gradient, ops.multiply(buffer, momentum))
        else:
            direction = buffer
        self.assign_sub(variable, ops.multiply(direction, learning_rate))
