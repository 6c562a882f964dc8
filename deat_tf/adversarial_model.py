"""`AdversarialModel`: a Keras model whose `train_step` trains on adversarial examples.

Wrap any classifier network that maps images in [0, 1] to logits:

    model = deat_tf.AdversarialModel(network, method="deat", epsilon=8 / 255)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    model.fit(dataset, epochs=50, callbacks=[deat_tf.MagnitudeScheduler()])

The methods and their defaults are rows of `deat_tf.methods`. One minibatch of
"deat" with r replays:

    x_adv = project(x + initial_perturbation)              # fresh each minibatch
    repeat r times:
        loss = CE(network(x_adv, training=True), y)        # forward
        g_theta, g_x = gradients of loss                   # one backward
        x_adv = project(x_adv + step_size * sign(g_x))     # attack step
        optimizer.apply(g_theta)                           # one update per replay
    grad_magnitude += sum |g_x * input_std|                # from the last replay

"pgd", "trades" and "mart" run `attacks.pgd_loop` for K steps (no updates;
no BatchNorm updates unless `attack_batch_norm="update"`), then one update
whose backward also gives g_x.
README.md ("Design decisions that change results") explains the choices that
matter: unrolled replays, learning rates keyed on minibatches, coupled L2,
BatchNorm during attacks, distribution; docs/algorithm.md the algorithm.
"""

import math
import typing

import keras
import numpy as np
import tensorflow as tf

from deat_tf import (
    attacks,
    checks,
    distribute,
    losses,
    magnitude,
    methods,
    models,
    optimizers,
    training_losses,
    validation,
)

METHODS = methods.NAMES
STEP_SIZE_RULES = ("constant", "max_epsilon_over_steps")
ATTACK_BATCH_NORM = ("stateless", "update")


class _Untracked:
    """Holds a variable outside Keras tracking, so that it never becomes a model weight.

    Used for FREE's carried perturbation (per replica, transient, sized by the
    batch) and the validation pass's batch counter: as weights they would break
    loading a saved model into a fresh one. Checkpoints of bin/train save the
    carried perturbation explicitly (`carried_perturbation`).
    """

    def __init__(self):
        self.variable = None


class _Update(typing.NamedTuple):
    """What one forward+backward+update returns (`AdversarialModel._update`).

    Attributes:
        logits: The logits scored by the training metrics.
        loss: The training loss (already divided by the replica count).
        input_gradient: The gradient w.r.t. the attack input, or None.
        gradient_finite: Whether that gradient was finite before its
            non-finite values were zeroed.
    """

    logits: tf.Tensor
    loss: tf.Tensor
    input_gradient: tf.Tensor | None
    gradient_finite: tf.Tensor


@keras.saving.register_keras_serializable(package="deat_tf")
class AdversarialModel(validation.RobustValidation, keras.Model):
    """Adversarial training around a classifier network (see the module docstring).

    Args:
        network: A Keras model mapping images in [0, 1] to logits.
        method: One of "deat", "free", "pgd", "trades", "mart", "fgsm_rs", "none".
        epsilon: L-infinity radius in [0, 1] (8/255 for CIFAR, 0.3 for MNIST).
        step_size: Attack step alpha > 0. Defaults to 1.25 * epsilon for
            deat/free/fgsm_rs (10/255 at epsilon 8/255) and epsilon / 4 for
            pgd/trades/mart (2/255 at 8/255).
        attack_steps: Replays r (deat, free) or attack steps K (pgd, trades,
            mart). Defaults: deat 1, free 8, pgd 7, trades and mart 10; fgsm_rs
            is always 1 and none always 0.
        initialization: Random start of the perturbation: "uniform", "normal",
            "bernoulli" or "zero". Defaults to the method's (`deat_tf.methods`).
        initialization_scale: Size tau of the random start; defaults to the
            method's (epsilon, or 0.001 for trades and mart).
        clip_start: Whether the random start is clipped into [0, 1] before the
            first forward (True). False trains the first replay or attack step
            on x + delta as drawn, as the authors' M+DEAT script does; every
            later iterate is projected into the ball and [0, 1] either way.
            Without effect on the carried perturbation, whose forward always
            clips.
        carry_perturbation: deat/free only. Keep one perturbation buffer that
            carries over from minibatch to minibatch, clipped to [-epsilon,
            epsilon] only (original FREE, the ImageNet recipe); it starts at zero.
            Otherwise a fresh random start per minibatch (the CIFAR recipe).
        step_size_rule: "constant", or "max_epsilon_over_steps" for
            alpha = max(epsilon / steps, step_size) recomputed when the count changes.
        l2_weight_decay: Coupled L2 coefficient >= 0 added to every gradient
            (PyTorch SGD weight_decay; 5e-4 in the CIFAR recipes).
        input_std: Per-channel std by which the input gradient is multiplied in
            `grad_magnitude`: "auto" reads it from the network's `Standardize`
            layer (1 without one), or a number or sequence.
        validation_attack_steps: If > 0, `evaluate` (and fit's validation) also
            reports `robust_accuracy` under PGD with this many steps.
        validation_step_size: Step of that PGD; defaults to 2.5 * epsilon / steps.
        beta: Weight >= 0 of the KL term of trades and mart (6 in their recipes).
        seed: Integer seed of the random starts.
        attack_batch_norm: BatchNorm in the attack passes of pgd, trades, mart
            and fgsm_rs, which always use batch statistics (training mode):
            "stateless" leaves the moving statistics to the update's forward;
            "update" lets every attack forward update them, as PyTorch's
            train-mode forwards do in the reference code. "update" works on one
            device only (a moving-statistics update inside the attack loop is
            a cross-replica synchronisation point). Training itself is the same
            under both; only the moving statistics, hence the inference-mode
            network, differ (README.md, "Design decisions that change results").
        steps_after_misclassified: pgd, trades, mart only. None: every example
            takes all K attack steps. tau >= 0: an example stops moving once it
            has been misclassified at more than tau of its iterates (0: Wong et
            al.'s MNIST PGD training; tau > 0: friendly adversarial training);
            see `attacks.pgd_loop`.
        track_magnitude: Whether to compute and log `grad_magnitude` (M).
            None: yes for deat, free, pgd, trades and mart; no for fgsm_rs,
            where M would cost an input gradient at every update and no
            scheduler reads it, and none.
        evaluation_precision: "float32" (default): `evaluate` and fit's
            validation run a mixed-precision network's layers in float32 on
            the same weights, as the reference code evaluates a float32 copy;
            "network": in the network's own policy (16 bits).
        **kwargs: Passed to `keras.Model` (e.g. name).
    """

    def __init__(
        self,
        network,
        method="deat",
        epsilon=8 / 255,
        step_size=None,
        attack_steps=None,
        initialization=None,
        initialization_scale=None,
        clip_start=True,
        carry_perturbation=False,
        step_size_rule="constant",
        l2_weight_decay=0.0,
        input_std="auto",
        validation_attack_steps=0,
        validation_step_size=None,
        beta=6.0,
        seed=0,
        attack_batch_norm="stateless",
        steps_after_misclassified=None,
        track_magnitude=None,
        evaluation_precision="float32",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(network, keras.layers.Layer):
            raise ValueError(f"network must be a Keras model returning logits, got {network!r}.")
        self._method = methods.get(method)
        self.method = self._method.name
        self.epsilon = checks.check_epsilon(epsilon)
        self.step_size = self._method.step_size(step_size, self.epsilon)
        self.initialization = checks.check_choice(
            initialization or self._method.initialization, attacks.INITIALIZATIONS, "initialization"
        )
        if initialization_scale is None:
            initialization_scale = self._method.initialization_scale or self.epsilon
        else:
            initialization_scale = checks.check_positive(
                initialization_scale, "initialization_scale"
            )
        self.initialization_scale = float(initialization_scale)
        if not isinstance(clip_start, bool):
            raise ValueError(f"clip_start must be True or False, got {clip_start!r}.")
        self.clip_start = clip_start
        self.beta = checks.check_nonnegative(beta, "beta")
        methods.check_carry(carry_perturbation, self.method)
        self.carry_perturbation = bool(carry_perturbation)
        self.step_size_rule = checks.check_choice(step_size_rule, STEP_SIZE_RULES, "step_size_rule")
        self.l2_weight_decay = checks.check_nonnegative(l2_weight_decay, "l2_weight_decay")
        self.input_std_setting = input_std
        self._input_std = models.resolve_input_std(network, input_std)
        self.validation_attack_steps = checks.check_count(
            validation_attack_steps, "validation_attack_steps", 0
        )
        if validation_step_size is None:
            validation_step_size = attacks.default_step_size(
                self.epsilon, self.validation_attack_steps
            )
        elif self.validation_attack_steps and self.epsilon > 0:
            checks.check_positive(validation_step_size, "validation_step_size")
        self.validation_step_size = float(validation_step_size)
        self.seed = checks.check_count(seed, "seed", 0)
        self.attack_batch_norm = checks.check_choice(
            attack_batch_norm, ATTACK_BATCH_NORM, "attack_batch_norm"
        )
        distribute.check_attack_batch_norm(
            network, self._method.family, self.attack_batch_norm, tf.distribute.get_strategy()
        )
        self.steps_after_misclassified = methods.check_steps_after_misclassified(
            steps_after_misclassified, self.method
        )
        self.track_magnitude = methods.track_magnitude(track_magnitude, self.method)
        self.evaluation_precision = checks.check_choice(
            evaluation_precision, models.EVALUATION_PRECISIONS, "evaluation_precision"
        )
        self.network = network

        initial_steps = self._method.check_steps(
            self._method.default_steps if attack_steps is None else attack_steps
        )
        self._attack_steps_variable = keras.Variable(
            initial_steps, dtype="int32", trainable=False, name="attack_steps"
        )
        self._minibatch_counter = keras.Variable(
            0, dtype="int64", trainable=False, aggregation="only_first_replica", name="minibatches"
        )
        self._schedule_threshold = keras.Variable(
            float("nan"), dtype="float64", trainable=False, name="schedule_threshold"
        )
        self._schedule_epochs = keras.Variable(
            0, dtype="int64", trainable=False, name="schedule_epochs"
        )
        self._traced_steps = None
        self._carried = _Untracked()
        self._validation_batches = _Untracked()
        self._in_evaluation = False

        self._loss_metric = keras.metrics.Mean(name="loss")
        self._adversarial_accuracy = keras.metrics.SparseCategoricalAccuracy(name="adv_accuracy")
        self._grad_magnitude = magnitude.EpochMagnitude(name="grad_magnitude")
        self._attack_steps_metric = keras.metrics.Mean(name="attack_steps")
        self._non_finite_gradients = keras.metrics.Sum(name="non_finite_gradients")
        self._clean_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self._robust_accuracy = keras.metrics.SparseCategoricalAccuracy(name="robust_accuracy")
        if network.built:
            self.built = True

    # ----------------------------------------------------------------- settings

    @property
    def attack_steps(self):
        """The iteration count: replays r (deat, free) or attack steps K (pgd, trades, mart).

        Setting it between epochs takes effect from the next minibatch; for
        deat/free it rebuilds the train function.
        """
        return int(self._attack_steps_variable.numpy())

    @attack_steps.setter
    def attack_steps(self, value):
        value = self._method.check_steps(value)
        self._attack_steps_variable.assign(value)
        traced = self.train_function is not None and value != self._traced_steps
        if self._method.replays and traced:
            self.make_train_function(force=True)

    @property
    def minibatches(self):
        """Number of minibatches trained so far (the key of learning-rate schedules)."""
        return int(self._minibatch_counter.numpy())

    @property
    def schedule_threshold(self):
        """The M+ threshold T, or None before the reference epoch sets it."""
        value = float(self._schedule_threshold.numpy())
        return None if math.isnan(value) else value

    @schedule_threshold.setter
    def schedule_threshold(self, value):
        self._schedule_threshold.assign(float("nan") if value is None else float(value))

    @property
    def schedule_epochs(self):
        """Number of epochs the iteration-count scheduler has processed."""
        return int(self._schedule_epochs.numpy())

    @schedule_epochs.setter
    def schedule_epochs(self, value):
        self._schedule_epochs.assign(int(value))

    def attack_step_size(self, steps):
        """The attack step size used with `steps` iterations (every method's one rule).

        Args:
            steps: The iteration count r or K: a Python int (replays, unrolled at
                trace time) or an integer tensor (the attack loop's K).

        Returns:
            alpha: constant, or max(epsilon / steps, alpha) under
            "max_epsilon_over_steps" (a float for an int, else a float32 tensor).
        """
        if self.step_size_rule != "max_epsilon_over_steps":
            return self.step_size
        if isinstance(steps, int):
            return max(self.epsilon / steps, self.step_size) if steps > 0 else self.step_size
        # K = 0 runs no step: any value serves, and the division stays finite.
        count = tf.cast(tf.maximum(steps, 1), tf.float32)
        return tf.maximum(self.epsilon / count, tf.constant(self.step_size, tf.float32))

    def replay_step_size(self, steps):
        """The attack step size used with `steps` iterations (see `attack_step_size`).

        Args:
            steps: The iteration count r or K (a Python int).

        Returns:
            alpha as a float: constant, or max(epsilon / steps, alpha).
        """
        return self.attack_step_size(int(steps))

    # ------------------------------------------------------------------ compile

    def compile(self, optimizer="sgd", loss=None, metrics=None, **kwargs):
        """Configures training; the loss defaults to cross-entropy on logits.

        Args:
            optimizer: A Keras optimizer or its name. A `LearningRateSchedule`
                learning rate is evaluated per minibatch (see `MinibatchSchedule`).
            loss: Training loss on logits; defaults to sparse categorical
                cross-entropy with `from_logits=True`.
            metrics: Not supported: the model tracks its own metrics.
            **kwargs: Passed to `keras.Model.compile` (e.g. jit_compile).
        """
        if metrics:
            raise ValueError(
                "metrics cannot be passed to AdversarialModel.compile: it tracks loss, "
                "adv_accuracy, grad_magnitude, attack_steps (training) and loss, accuracy, "
                "robust_accuracy (evaluation) itself."
            )
        kwargs.pop("weighted_metrics", None)
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        optimizer = optimizers.with_loss_scaling(keras.optimizers.get(optimizer), self.network)
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        optimizers.key_on_minibatches(self.optimizer, self._minibatch_counter)

    def compile_from_config(self, config):
        """Recompiles from a saved compile config (used when loading a `.keras` file)."""
        config = keras.saving.deserialize_keras_object(config)
        config = {key: value for key, value in config.items() if value is not None}
        config.pop("metrics", None)
        config.pop("weighted_metrics", None)
        self.compile(**config)
        if self.built:
            # Optimizer variables must exist before the saved ones are loaded into them.
            self.optimizer.build(self.trainable_variables)

    # ------------------------------------------------------------------ metrics

    @property
    def metrics(self):
        if not hasattr(self, "_robust_accuracy"):
            return super().metrics
        if self._in_evaluation:
            evaluation = [self._loss_metric, self._clean_accuracy]
            if self.validation_attack_steps:
                evaluation.append(self._robust_accuracy)
            return evaluation
        training = [self._loss_metric, self._adversarial_accuracy]
        if self.track_magnitude:
            training.append(self._grad_magnitude)
        return training + [self._attack_steps_metric, self._non_finite_gradients]

    def _results(self):
        results = {metric.name: metric.result() for metric in self.metrics}
        if distribute.is_multi_worker(self.distribute_strategy):
            # Keras averages a step's logs over workers along axis 0, which a
            # scalar lacks (keras-team/keras#20585); the values are equal on
            # every worker, so a 1-vector averages to the same scalar.
            results = {name: tf.reshape(value, [1]) for name, value in results.items()}
        return results

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and distribute.is_multi_worker(self.distribute_strategy):
            # Keras builds from a first batch averaged over workers, which fails
            # for per-replica values under MultiWorkerMirroredStrategy
            # (keras-team/keras#20585); the build needs only one replica's shapes.
            for _, _, batches in iterator:
                data_batch = distribute.first_replica_values(
                    self.distribute_strategy, next(batches)
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # -------------------------------------------------------------------- calls

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def build(self, input_shape):
        if not self.network.built:
            self.network.build(input_shape)
        self.built = True

    def make_train_function(self, force=False):
        distribute.check_attack_batch_norm(
            self.network, self._method.family, self.attack_batch_norm, self.distribute_strategy
        )
        steps = self.attack_steps
        if self._method.replays and steps != self._traced_steps:
            force = True
        self._traced_steps = steps
        return super().make_train_function(force=force)

    def fit(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.fit`, after checking the data (before any update).

        Images must be a float batch [batch, height, width, channels] of finite
        values in [0, 1] (no NaN or Inf) and labels integers in [0, classes).
        Arrays are checked whole; for a
        `tf.data.Dataset` the first batch is checked, which runs the pipeline up
        to that batch once more (for a large shuffle buffer, a one-off cost of
        filling it).
        """
        batch = checks.peek_training_batch(x, y, batch_size)
        if batch is not None:
            images, labels, global_batch = batch
            checks.check_image_arrays(
                images,
                labels,
                "fit(x, y)",
                allow_uint8=False,
                num_classes=self._num_classes(images),
            )
            if self.carry_perturbation:
                self.prepare_carried_perturbation(global_batch, images.shape[1:])
        elif self.carry_perturbation and self._carried.variable is None:
            raise ValueError(
                "carry_perturbation needs fit() to receive a tf.data.Dataset or arrays, so "
                "that the perturbation buffer can be sized from the batch."
            )
        if self._method.replays:
            kwargs["callbacks"] = _with_count_check(kwargs.get("callbacks"), self)
        if batch is not None and isinstance(x, (np.ndarray, tf.Tensor)):
            x, y, kwargs = distribute.fill_every_replica(
                x, y, batch[2], self.distribute_strategy.num_replicas_in_sync, kwargs
            )
        return super().fit(x, y, batch_size=batch_size, **kwargs)

    def retrace_if_the_count_changed(self):
        """Rebuilds the train function when `attack_steps` differs from the traced count.

        The replays are unrolled at trace time, so a restore that assigns the
        count variable directly (`keras.callbacks.BackupAndRestore`,
        `load_weights`, `tf.train.Checkpoint.restore`) would otherwise leave
        the traced count in force. `fit` calls it at the start of training and
        of every epoch, after the callbacks given to it.

        Returns:
            True when the train function was rebuilt.
        """
        if not self._method.replays or self.train_function is None:
            return False
        if self.attack_steps == self._traced_steps:
            return False
        self.make_train_function(force=True)
        return True

    def _num_classes(self, images):
        outputs = getattr(self.network, "outputs", None)
        if outputs:
            classes = outputs[0].shape[-1]
        else:
            classes = self.network(images[:1], training=False).shape[-1]
        return classes

    def prepare_carried_perturbation(self, global_batch, image_shape):
        """Creates the carried perturbation buffer (carry_perturbation only), zero.

        `fit` calls it from its first batch; call it yourself to restore the
        buffer from a checkpoint before training (see `carried_perturbation`).

        Args:
            global_batch: Examples per minibatch over all replicas.
            image_shape: (height, width, channels) of the images.
        """
        replicas = self.distribute_strategy.num_replicas_in_sync
        shape = (int(math.ceil(global_batch / replicas)),) + tuple(int(d) for d in image_shape)
        variable = self._carried.variable
        if variable is not None and tuple(variable.shape) == shape:
            return
        with self.distribute_strategy.scope():
            self._carried.variable = tf.Variable(
                tf.zeros(shape, tf.float32),
                trainable=False,
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                name="carried_perturbation",
            )
        self.train_function = None

    @property
    def carried_perturbation(self):
        """The carried perturbation buffer (one per replica), or None before it exists."""
        return self._carried.variable

    # --------------------------------------------------------------- train step

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        images = checks.check_image_tensor(x, "images")
        # A float64 network (the twin run against PyTorch in benchmarks/) trains
        # on float64 images; every other one on float32.
        x = tf.cast(x, tf.float64) if self.network.compute_dtype == "float64" else images
        labels = tf.cast(tf.reshape(y, [-1]), tf.int32)
        step = {
            "replay": self._replay_step,
            "attack_then_update": self._attack_then_update_step,
            "single_step": self._single_step,
            "clean": self._clean_step,
        }[self._method.family]
        steps, update = step(x, y, labels, sample_weight)
        logits, loss = update.logits, update.loss
        input_gradient, gradient_finite = update.input_gradient, update.gradient_finite

        batch_size = tf.shape(x)[0]
        self._loss_metric.update_state(
            distribute.unscale_for_distribution(loss), sample_weight=batch_size
        )
        self._adversarial_accuracy.update_state(y, logits, sample_weight=sample_weight)
        if self.track_magnitude:
            self._grad_magnitude.update_state(
                magnitude.input_gradient_magnitude(input_gradient, self._input_std),
                valid=gradient_finite,
            )
        self._attack_steps_metric.update_state(tf.cast(steps, tf.float32))
        self._minibatch_counter.assign_add(1)
        return self._results()

    def _random_start(self, x):
        """The random start of this minibatch, seeded by (seed, minibatch count).

        The same for any number of replicas (see `attacks.replica_start`).
        """
        seed = tf.stack(
            [tf.constant(self.seed, tf.int64), tf.cast(self._minibatch_counter.value, tf.int64)]
        )
        return attacks.replica_start(
            x,
            self.epsilon,
            seed,
            self.initialization,
            self.initialization_scale,
            clip_to_images=self.clip_start,
        )

    def _update(self, to_images, attack_input, loss_fn, want_input_gradient):
        """One forward and one backward in training mode, then one optimizer update.

        Args:
            to_images: Maps the attack input to the network input.
            attack_input: The tensor whose gradient is returned (x_adv or the carried delta).
            loss_fn: Maps network input to (logits to score, training loss); the
                loss is already divided by the replica count, as Keras losses are.
            want_input_gradient: Whether to differentiate w.r.t. `attack_input` too.

        Returns:
            An `_Update`.
        """
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            if want_input_gradient:
                tape.watch(attack_input)
            logits, loss = loss_fn(to_images(attack_input))
            scaled_loss = self.optimizer.scale_loss(loss)
        targets = list(variables) + ([attack_input] if want_input_gradient else [])
        gradients = tape.gradient(scaled_loss, targets)
        # Loss scaling (mixed precision) multiplies every gradient by the scale.
        loss_scale = tf.cast(self.optimizer.scale_loss(tf.constant(1.0)), tf.float32)
        input_gradient, finite_gradient = None, tf.constant(True)
        if want_input_gradient:
            input_gradient = gradients.pop()
            input_gradient = input_gradient / tf.cast(loss_scale, input_gradient.dtype)
            # A non-finite value would make the sign step NaN and poison x_adv:
            # it is zeroed, and counted so that guards.NonFiniteGuard can warn.
            finite = tf.math.is_finite(input_gradient)
            self._non_finite_gradients.update_state(
                tf.reduce_sum(tf.cast(tf.logical_not(finite), tf.float32))
            )
            input_gradient = tf.where(finite, input_gradient, tf.zeros_like(input_gradient))
            finite_gradient = tf.reduce_all(finite)
        if self.l2_weight_decay:
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            # Gradients are summed over replicas, so each adds its share of the L2 term.
            coefficient = self.l2_weight_decay / replicas
            # The coefficient is made from the Python float in the gradient's
            # dtype (tf.cast would round it to float32 first), so that a float64
            # network gets exactly PyTorch's term.
            gradients = [
                gradient
                + tf.constant(coefficient, gradient.dtype)
                * tf.cast(loss_scale, gradient.dtype)
                * tf.cast(variable, gradient.dtype)
                for gradient, variable in zip(gradients, variables)
            ]
        self.optimizer.apply(gradients, variables)
        return _Update(logits, loss, input_gradient, finite_gradient)

    def _replay_step(self, x, y, labels, sample_weight):
        """deat, free: r replays, each one update of the weights and one step of delta."""
        replays = self._traced_steps if self._traced_steps is not None else self.attack_steps
        step_size = self.attack_step_size(replays)
        if self.carry_perturbation:
            buffer = self._carried.variable
            if buffer is None:
                raise ValueError(
                    "carry_perturbation: call fit() so the perturbation buffer is created."
                )
            batch = tf.shape(x)[0]
            # The buffer is float32; a float64 network attacks in float64.
            stored = tf.cast(tf.convert_to_tensor(buffer), x.dtype)
            attack_input = stored[:batch]

            def to_images(delta):
                return tf.clip_by_value(x + delta, 0.0, 1.0)

        else:
            attack_input = self._random_start(x)
            to_images = _identity
        loss_fn = training_losses.cross_entropy(self, y, sample_weight)
        for replay in range(replays):
            update = self._update(to_images, attack_input, loss_fn, True)
            gradient = update.input_gradient
            if self.carry_perturbation:
                attack_input = tf.clip_by_value(
                    attack_input + step_size * tf.sign(gradient), -self.epsilon, self.epsilon
                )
            elif replay + 1 < replays:
                attack_input = attacks.project(
                    attacks.signed_step(attack_input, gradient, step_size), x, self.epsilon
                )
        if self.carry_perturbation:
            buffer.assign(tf.cast(tf.concat([attack_input, stored[batch:]], axis=0), buffer.dtype))
        return replays, update

    def _attack_logits_function(self):
        """The attack's training-mode forward: batch statistics, moving statistics per
        `attack_batch_norm` (untouched, or updated by every call)."""
        network = self.network
        if self.attack_batch_norm == "update":
            # One device only (checked when the train function is made).
            def updating_logits_fn(images):
                return network(images, training=True)

            return updating_logits_fn
        trainable = [variable.value for variable in network.trainable_variables]
        non_trainable = [variable.value for variable in network.non_trainable_variables]

        def logits_fn(images):
            logits, _ = network.stateless_call(trainable, non_trainable, images, training=True)
            return logits

        return logits_fn

    def _attack_then_update_step(self, x, y, labels, sample_weight):
        """pgd, trades, mart: a K-step attack without updates, then one update."""
        steps = tf.convert_to_tensor(self._attack_steps_variable.value)
        step_size = tf.cast(self.attack_step_size(steps), tf.float32)
        attack_logits = self._attack_logits_function()
        training_loss = self._method.training_loss
        loss_fn = training_losses.forward(training_loss, self, x, y, labels, sample_weight)
        if training_loss == "trades":
            natural_probabilities = tf.stop_gradient(
                tf.nn.softmax(tf.cast(attack_logits(x), tf.float32))
            )

            def attack_loss(logits, _):
                return losses.kl_divergence(natural_probabilities, logits)

        else:
            attack_loss = "ce"
        start = self._random_start(x)
        x_adv = attacks.pgd_loop(
            attack_logits,
            x,
            labels,
            start,
            self.epsilon,
            step_size,
            steps,
            attack_loss,
            self.steps_after_misclassified,
        )
        x_adv = tf.stop_gradient(x_adv)
        return steps, self._update(_identity, x_adv, loss_fn, self.track_magnitude)

    def _single_step(self, x, y, labels, sample_weight):
        """fgsm_rs: one signed step from the random start, then one update."""
        start = self._random_start(x)
        _, _, gradient = attacks.loss_and_gradient(
            self._attack_logits_function(), start, labels, "ce"
        )
        x_adv = tf.stop_gradient(
            attacks.project(attacks.signed_step(start, gradient, self.step_size), x, self.epsilon)
        )
        return 1, self._update(
            _identity,
            x_adv,
            training_losses.cross_entropy(self, y, sample_weight),
            self.track_magnitude,
        )

    def _clean_step(self, x, y, labels, sample_weight):
        """none: ordinary training, the baseline for cost ratios."""
        return 0, self._update(
            _identity, x, training_losses.cross_entropy(self, y, sample_weight), False
        )

    # ------------------------------------------------------------ serialization

    def get_config(self):
        return {
            "name": self.name,
            "network": keras.saving.serialize_keras_object(self.network),
            "method": self.method,
            "epsilon": self.epsilon,
            "step_size": self.step_size,
            "attack_steps": self.attack_steps,
            "initialization": self.initialization,
            "initialization_scale": self.initialization_scale,
            "clip_start": self.clip_start,
            "carry_perturbation": self.carry_perturbation,
            "step_size_rule": self.step_size_rule,
            "l2_weight_decay": self.l2_weight_decay,
            "input_std": self.input_std_setting,
            "validation_attack_steps": self.validation_attack_steps,
            "validation_step_size": self.validation_step_size,
            "beta": self.beta,
            "seed": self.seed,
            "attack_batch_norm": self.attack_batch_norm,
            "steps_after_misclassified": self.steps_after_misclassified,
            "track_magnitude": self.track_magnitude,
            "evaluation_precision": self.evaluation_precision,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(
            config.pop("network"), custom_objects=custom_objects
        )
        return cls(network, **config)


class _TrainWithTheHeldCount(keras.callbacks.Callback):
    """Runs after every other callback: retraces when a restore changed the count."""

    def on_train_begin(self, logs=None):
        self.model.retrace_if_the_count_changed()

    def on_epoch_begin(self, epoch, logs=None):
        self.model.retrace_if_the_count_changed()


def _with_count_check(callbacks, model):
    """The callbacks given to fit, followed by the count check (last, so after any restore)."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        if not any(isinstance(each, _TrainWithTheHeldCount) for each in callbacks.callbacks):
            check = _TrainWithTheHeldCount()
            check.set_model(model)
            callbacks.callbacks.append(check)
        return callbacks
    callbacks = [] if callbacks is None else list(callbacks)
    if not any(isinstance(each, _TrainWithTheHeldCount) for each in callbacks):
        callbacks.append(_TrainWithTheHeldCount())
    return callbacks


def _identity(images):
    return images
