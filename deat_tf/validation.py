"""Validation of `AdversarialModel`: clean and PGD accuracy in `evaluate`.

`evaluate` (and fit's validation) reports loss, accuracy and, with
`validation_attack_steps` > 0, `robust_accuracy` under PGD. A mixed-precision
network is evaluated computing in float32 unless the model's
`evaluation_precision` is "network". Each batch of a
pass starts its attack from its own noise, seeded by (seed, -1 - batch): a
stream that training's (seed, minibatch >= 0) never uses, the same in every
pass, so validation is reproducible for given weights (also after a resume)
and the same for 1 or N replicas.
"""

import keras
import tensorflow as tf

from deat_tf import attacks, checks, distribute, models


class RobustValidation:
    """The evaluation half of `AdversarialModel` (a mixin of `keras.Model`).

    The model provides `network`, `epsilon`, `seed`, `evaluation_precision`,
    `validation_attack_steps`, `validation_step_size`, the metrics
    `_loss_metric`, `_clean_accuracy`, `_robust_accuracy`, `_results()`, and
    `_validation_batches` (a holder of the batch counter, created by the first
    `evaluate`).
    """

    def evaluate(self, *args, **kwargs):
        """`keras.Model.evaluate`, reporting loss, accuracy and robust_accuracy.

        Args:
            *args: Passed to `keras.Model.evaluate`.
            **kwargs: Passed to `keras.Model.evaluate`.

        Returns:
            What `keras.Model.evaluate` returns.
        """
        previous = self._in_evaluation
        self._in_evaluation = True
        self._start_validation_pass()
        try:
            # The test function is traced inside: it keeps the evaluation precision.
            with models.evaluation_precision(self.network, self.evaluation_precision):
                return super().evaluate(*args, **kwargs)
        finally:
            self._in_evaluation = previous

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = checks.check_image_tensor(x, "images")
        batch = None
        if self.validation_attack_steps:
            counter = self._validation_batches.variable
            # Without evaluate() (test_on_batch) there is no pass to count: batch 0.
            batch = tf.constant(0, tf.int64) if counter is None else counter.read_value()
            if counter is not None:
                counter.assign_add(1)
        # A last batch smaller than the replica count leaves a replica no examples
        # (numpy arrays are split as they come); some CPU convolution kernels refuse
        # an empty input, and an empty batch adds nothing to the metrics anyway.
        tf.cond(
            tf.shape(x)[0] > 0,
            lambda: self._validation_batch(x, y, sample_weight, batch),
            lambda: tf.constant(False),
        )
        return self._results()

    def _validation_batch(self, x, y, sample_weight, batch):
        """Updates the validation metrics with one non-empty batch; returns True."""
        logits = self.network(x, training=False)
        loss = self.compute_loss(
            x=x, y=y, y_pred=logits, sample_weight=sample_weight, training=False
        )
        self._loss_metric.update_state(
            distribute.unscale_for_distribution(loss), sample_weight=tf.shape(x)[0]
        )
        self._clean_accuracy.update_state(y, logits, sample_weight=sample_weight)
        if self.validation_attack_steps:
            labels = tf.cast(tf.reshape(y, [-1]), tf.int32)
            x_adv, _, _ = attacks.pgd_search(
                attacks.logits_function(self.network),
                x,
                labels,
                self._validation_start(x, batch),
                self.epsilon,
                self.validation_step_size,
                self.validation_attack_steps,
            )
            robust_logits = self.network(tf.stop_gradient(x_adv), training=False)
            self._robust_accuracy.update_state(y, robust_logits, sample_weight=sample_weight)
        return tf.constant(True)

    def _start_validation_pass(self):
        """Restarts the batch count of the validation attack: each pass draws the same noise."""
        if not self.validation_attack_steps:
            return
        if self._validation_batches.variable is None:
            with self.distribute_strategy.scope():
                self._validation_batches.variable = tf.Variable(
                    tf.constant(0, tf.int64),
                    trainable=False,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                    name="validation_batches",
                )
            # A test function traced before the counter existed would not count.
            self.test_function = None
        else:
            self._validation_batches.variable.assign(0)

    def _validation_start(self, x, batch):
        """The validation attack's uniform start for batch `batch` of an evaluation pass.

        Seeded by (seed, -1 - batch), a stream training's (seed, minibatch >= 0)
        never uses: the noise differs from batch to batch and is the same in
        every pass, so validation is reproducible for given weights (and after
        a resume), and the same for 1 or N replicas.
        """
        seed = tf.stack([tf.constant(self.seed, tf.int64), -1 - tf.cast(batch, tf.int64)])
        return attacks.replica_start(x, self.epsilon, seed)
