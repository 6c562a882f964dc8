"""The gradient-magnitude statistic M of the M+ rule.

Per minibatch: the L1 norm of the training loss's gradient with respect to
the input at the last replay (deat, free) or the final adversarial example
(pgd, trades, mart, fgsm_rs), summed over pixels, channels and examples, after
multiplying by the per-channel std of the network's input normalisation (the
gradient with respect to the normalised input, as the authors compute it).
Per epoch: the SUM over the epoch's minibatches (`EpochMagnitude`, logged as
`grad_magnitude`).

A minibatch whose input gradient is not finite (an overflow of float16's loss
scaling, which Keras' `LossScaleOptimizer` answers by skipping the update and
lowering the scale) carries no statistic: the epoch sum is then estimated from
the other minibatches, scaled to the epoch's full count, so that epochs with
and without such minibatches stay comparable, as the rule needs.
"""

import keras
import tensorflow as tf


def input_gradient_magnitude(input_gradient, input_std=None):
    """Sum over pixels, channels and examples of |dL/dx * std|, in float32.

    Args:
        input_gradient: The gradient with respect to the input images.
        input_std: Per-channel std of the network's input normalisation (one
            value or one per channel), or None.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: If the std has neither one value nor one per channel.
    """
    gradient = tf.cast(input_gradient, tf.float32)
    if input_std is not None:
        channels = gradient.shape[-1]
        if len(input_std) not in (1, channels):
            raise ValueError(
                f"input_std has {len(input_std)} values but the images have {channels} channels."
            )
        gradient = gradient * tf.constant(input_std, tf.float32)
    return tf.reduce_sum(tf.abs(gradient))


class EpochMagnitude(keras.metrics.Metric):
    """The epoch sum of the minibatch statistics, skipping minibatches without one.

    With every minibatch valid it is their plain sum; otherwise the sum of the
    valid ones times (minibatches / valid minibatches). Under a distribution
    strategy the three sums add up over replicas, which keeps the estimate.

    Args:
        name: The metric's name in the logs.
    """

    def __init__(self, name="grad_magnitude", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.counted = self.add_variable(shape=(), initializer="zeros", name="counted")
        self.seen = self.add_variable(shape=(), initializer="zeros", name="seen")

    def update_state(self, magnitude, valid=True):
        """Adds one minibatch's statistic.

        Args:
            magnitude: The minibatch statistic (`input_gradient_magnitude`).
            valid: Whether its input gradient was finite.
        """
        valid = tf.cast(valid, tf.float32)
        self.total.assign_add(tf.cast(magnitude, tf.float32) * valid)
        self.counted.assign_add(valid)
        self.seen.assign_add(1.0)

    def result(self):
        return self.total * self.seen / tf.maximum(self.counted, 1.0)

    def reset_state(self):
        for variable in (self.total, self.counted, self.seen):
            variable.assign(0.0)
