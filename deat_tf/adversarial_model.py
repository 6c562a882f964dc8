"""`AdversarialModel`: a Keras model whose `train_step` trains on adversarial examples.

Wrap any classifier network that maps images in [0, 1] to logits:

    model = deat_tf.AdversarialModel(network, method="deat", epsilon=8 / 255)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    model.fit(dataset, epochs=50, callbacks=[deat_tf.MagnitudeScheduler()])

Methods (ALGORITHM.md sections 1, 4 and 5):

- "deat": FREE-style replays. Each minibatch starts from a random perturbation
  and is replayed `attack_steps` (r) times; every replay is ONE forward and ONE
  backward pass in training mode, whose gradients move the perturbation one
  signed step and the weights one optimizer update. A callback (usually
  `MagnitudeScheduler`) raises r between epochs.
- "free": the same loop with a fixed replay count m (FREE-m, Shafahi et al.).
- "pgd": `attack_steps` (K) PGD steps from a uniform random start, then one
  update on the result (Madry et al.). K = 0 trains on the random start.
- "fgsm_rs": a uniform random start, one FGSM step, one update (Wong et al.).
- "trades": K-step PGD on KL(f(x) || f(x_adv)) from x + 0.001 N(0, 1), then one
  update on CE(f(x), y) + beta KL(f(x) || f(x_adv)) (Zhang et al. 2019).
- "mart": K-step CE PGD, then one update on the boosted CE of f(x_adv) plus
  beta KL(f(x) || f(x_adv)) (1 - p_y(x)) (Wang et al. 2020).
- "none": clean training, the baseline for cost ratios.

"pgd", "trades" and "mart" with `MagnitudeScheduler` are M+PGD, M+TRADES and
M+MART: K starts at 0 and rises by the same rule as r.

How one minibatch flows, for "deat" with r replays:

    x_adv = project(x + initial_perturbation)              # fresh each minibatch
    repeat r times:
        loss = CE(network(x_adv, training=True), y)        # forward
        g_theta, g_x = gradients of loss                   # one backward
        x_adv = project(x_adv + step_size * sign(g_x))     # attack step
        optimizer.apply(g_theta)                           # one update per replay
    grad_magnitude += sum |g_x * input_std|                # from the last replay

Design choices worth knowing:

- The replay count r is a Python int baked into the traced step: an optimizer
  update inside TF control flow fails under `MirroredStrategy`. Setting
  `model.attack_steps` rebuilds the train function (one retrace per change).
  For "pgd" the K-step attack has no updates, so it runs in a `tf.while_loop`
  reading K from a variable: changing K does not retrace.
- The attack passes of "pgd" and "fgsm_rs" run the network in training mode
  (batch statistics, like the training forward they attack) through
  `stateless_call`, so they do not update BatchNorm moving statistics; only
  the forward of the parameter update does. Replays of "deat"/"free" are
  training forwards and update them, as in the reference code.
- Learning-rate schedules are evaluated at the minibatch count, not at
  `optimizer.iterations`: with r replays the optimizer makes r updates per
  minibatch, and milestones are defined in minibatches (ALGORITHM.md section 1).
- `l2_weight_decay` is PyTorch-style coupled L2 (added to the gradient before
  momentum), the regularisation the published recipes use.
- `grad_magnitude` is the epoch SUM of the L1 norm of the loss gradient w.r.t.
  the input at the last replay / final adversarial example, multiplied by the
  per-channel std of the network's input normalisation (the gradient w.r.t.
  the normalised input, as in the authors' code).
- Random starts depend on (seed, minibatch count) only: every replica draws
  the start of the global batch and takes its slice, so training with 1 or N
  replicas sees the same starts.
- The schedule state (iteration count, threshold, epochs seen) and the
  minibatch count are variables of this model, so they are saved and restored
  with it (`.keras` files and checkpoints).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from deat_tf import attacks
from deat_tf.models import find_input_std

METHODS = ("deat", "free", "pgd", "trades", "mart", "fgsm_rs", "none")
REPLAY_METHODS = ("deat", "free")
ATTACK_THEN_UPDATE_METHODS = ("pgd", "trades", "mart")
STEP_SIZE_RULES = ("constant", "max_epsilon_over_steps")

_DEFAULT_ATTACK_STEPS = {"deat": 1, "free": 8, "pgd": 7, "trades": 10, "mart": 10, "fgsm_rs": 1, "none": 0}
_MINIMUM_ATTACK_STEPS = {"deat": 1, "free": 1, "pgd": 0, "trades": 0, "mart": 0}
# TRADES starts its attack next to x, as in its reference code.
_TRADES_INITIALIZATION = ("normal", 0.001)


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


class _CarriedPerturbation:
    """Holds the FREE perturbation buffer outside Keras tracking.

    It is per replica, transient and sized by the batch, so it must not become
    a model weight (that would break loading into a fresh model).
    """

    def __init__(self):
        self.variable = None


@keras.saving.register_keras_serializable(package="deat_tf")
class AdversarialModel(keras.Model):
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
            "bernoulli" or "zero". Defaults to "uniform" ("normal" for trades).
        initialization_scale: Size tau of the random start; defaults to epsilon
            (0.001 for trades).
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
        carry_perturbation=False,
        step_size_rule="constant",
        l2_weight_decay=0.0,
        input_std="auto",
        validation_attack_steps=0,
        validation_step_size=None,
        beta=6.0,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(network, keras.layers.Layer):
            raise ValueError(f"network must be a Keras model returning logits, got {network!r}.")
        self.method = attacks.check_choice(method, METHODS, "method")
        self.epsilon = attacks.check_epsilon(epsilon)
        self.step_size = self._resolve_step_size(step_size)
        if initialization is None:
            initialization = _TRADES_INITIALIZATION[0] if self.method == "trades" else "uniform"
        self.initialization = attacks.check_choice(
            initialization, attacks.INITIALIZATIONS, "initialization"
        )
        if initialization_scale is None:
            initialization_scale = _TRADES_INITIALIZATION[1] if self.method == "trades" else self.epsilon
        else:
            initialization_scale = attacks.check_positive(initialization_scale, "initialization_scale")
        self.initialization_scale = float(initialization_scale)
        self.beta = float(beta)
        if not self.beta >= 0.0:
            raise ValueError(f"beta must be >= 0, got {beta}.")
        if carry_perturbation and method not in REPLAY_METHODS:
            raise ValueError(
                f"carry_perturbation applies to methods {', '.join(REPLAY_METHODS)} only, "
                f"got method={method!r}."
            )
        self.carry_perturbation = bool(carry_perturbation)
        self.step_size_rule = attacks.check_choice(step_size_rule, STEP_SIZE_RULES, "step_size_rule")
        self.l2_weight_decay = float(l2_weight_decay)
        if not self.l2_weight_decay >= 0.0:
            raise ValueError(f"l2_weight_decay must be >= 0, got {l2_weight_decay}.")
        self.input_std_setting = input_std
        self._input_std = self._resolve_input_std(network, input_std)
        self.validation_attack_steps = attacks.check_count(
            validation_attack_steps, "validation_attack_steps", 0
        )
        if validation_step_size is None:
            validation_step_size = 2.5 * self.epsilon / max(self.validation_attack_steps, 1)
        self.validation_step_size = float(validation_step_size)
        if self.validation_attack_steps and self.epsilon > 0:
            attacks.check_positive(validation_step_size, "validation_step_size")
        self.seed = attacks.check_count(seed, "seed", 0)
        self.network = network

        initial_steps = self._check_attack_steps(
            _DEFAULT_ATTACK_STEPS[self.method] if attack_steps is None else attack_steps
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
        self._carried = _CarriedPerturbation()
        self._in_evaluation = False

        self._loss_metric = keras.metrics.Mean(name="loss")
        self._adversarial_accuracy = keras.metrics.SparseCategoricalAccuracy(name="adv_accuracy")
        self._grad_magnitude = keras.metrics.Sum(name="grad_magnitude")
        self._attack_steps_metric = keras.metrics.Mean(name="attack_steps")
        self._clean_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self._robust_accuracy = keras.metrics.SparseCategoricalAccuracy(name="robust_accuracy")
        if network.built:
            self.built = True

    # ----------------------------------------------------------------- settings

    def _resolve_step_size(self, step_size):
        if step_size is None:
            fraction = 0.25 if self.method in ATTACK_THEN_UPDATE_METHODS else 1.25
            return fraction * self.epsilon
        if self.epsilon == 0.0 and float(step_size) == 0.0:
            return 0.0
        return attacks.check_positive(step_size, "step_size")

    @staticmethod
    def _resolve_input_std(network, input_std):
        if isinstance(input_std, str):
            if input_std != "auto":
                raise ValueError(f"input_std must be 'auto', a number or a sequence, got {input_std!r}.")
            found = find_input_std(network)
            return None if found is None else tuple(found)
        if input_std is None:
            return None
        values = (input_std,) if isinstance(input_std, (int, float)) else tuple(input_std)
        if not values or any(float(value) <= 0 for value in values):
            raise ValueError(f"input_std must be > 0 for every channel, got {input_std!r}.")
        return tuple(float(value) for value in values)

    def _check_attack_steps(self, value):
        if self.method == "fgsm_rs" or self.method == "none":
            fixed = _DEFAULT_ATTACK_STEPS[self.method]
            if isinstance(value, bool) or value != fixed:
                raise ValueError(
                    f"attack_steps is fixed at {fixed} for method {self.method!r}, got {value!r}."
                )
            return fixed
        return attacks.check_count(value, "attack_steps", _MINIMUM_ATTACK_STEPS[self.method])

    @property
    def attack_steps(self):
        """The iteration count: replays r (deat, free) or attack steps K (pgd, trades, mart).

        Setting it between epochs takes effect from the next minibatch; for
        deat/free it rebuilds the train function.
        """
        return int(self._attack_steps_variable.numpy())

    @attack_steps.setter
    def attack_steps(self, value):
        value = self._check_attack_steps(value)
        self._attack_steps_variable.assign(value)
        if self.method in REPLAY_METHODS and self.train_function is not None:
            if value != self._traced_steps:
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

    def replay_step_size(self, steps):
        """The attack step size used with `steps` iterations.

        Args:
            steps: The iteration count r or K (a Python int).

        Returns:
            alpha as a float: constant, or max(epsilon / steps, alpha).
        """
        if self.step_size_rule == "max_epsilon_over_steps" and steps > 0:
            return max(self.epsilon / steps, self.step_size)
        return self.step_size

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
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        schedule = getattr(self.optimizer, "_learning_rate", None)
        if isinstance(schedule, MinibatchSchedule):
            schedule.counter = self._minibatch_counter
        elif isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            self.optimizer.learning_rate = MinibatchSchedule(schedule, self._minibatch_counter)

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
        return [
            self._loss_metric,
            self._adversarial_accuracy,
            self._grad_magnitude,
            self._attack_steps_metric,
        ]

    def _results(self):
        return {metric.name: metric.result() for metric in self.metrics}

    def evaluate(self, *args, **kwargs):
        previous = self._in_evaluation
        self._in_evaluation = True
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._in_evaluation = previous

    # -------------------------------------------------------------------- calls

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def build(self, input_shape):
        if not self.network.built:
            self.network.build(input_shape)
        self.built = True

    def make_train_function(self, force=False):
        steps = self.attack_steps
        if self.method in REPLAY_METHODS and steps != self._traced_steps:
            force = True
        self._traced_steps = steps
        return super().make_train_function(force=force)

    def fit(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.fit`, after checking the data (before any update).

        Images must be a float batch [batch, height, width, channels] in [0, 1]
        and labels integers in [0, classes). Arrays are checked whole; for a
        `tf.data.Dataset` the first batch is checked, which runs the pipeline up
        to that batch once more (for a large shuffle buffer, a one-off cost of
        filling it).
        """
        batch = _peek_batch(x, y, batch_size)
        if batch is not None:
            images, labels, global_batch = batch
            _check_batch(images, labels, self._num_classes(images))
            if self.carry_perturbation:
                self._prepare_carried_perturbation(global_batch, images.shape[1:])
        elif self.carry_perturbation and self._carried.variable is None:
            raise ValueError(
                "carry_perturbation needs fit() to receive a tf.data.Dataset or arrays, so "
                "that the perturbation buffer can be sized from the batch."
            )
        return super().fit(x, y, batch_size=batch_size, **kwargs)

    def _num_classes(self, images):
        outputs = getattr(self.network, "outputs", None)
        if outputs:
            classes = outputs[0].shape[-1]
        else:
            classes = self.network(images[:1], training=False).shape[-1]
        return classes

    def _prepare_carried_perturbation(self, global_batch, image_shape):
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

    # --------------------------------------------------------------- train step

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = _as_images(x)
        labels = tf.cast(tf.reshape(y, [-1]), tf.int32)
        if self.method in REPLAY_METHODS:
            steps, logits, loss, input_gradient = self._replay_step(x, y, labels, sample_weight)
        elif self.method in ATTACK_THEN_UPDATE_METHODS:
            steps, logits, loss, input_gradient = self._attack_then_update_step(x, y, labels, sample_weight)
        elif self.method == "fgsm_rs":
            steps, logits, loss, input_gradient = self._fgsm_step(x, y, labels, sample_weight)
        else:
            steps = 0
            logits, loss, _ = self._update(_identity, x, self._cross_entropy_forward(y, sample_weight), False)
            input_gradient = None

        batch_size = tf.shape(x)[0]
        self._loss_metric.update_state(_unscale_for_distribution(loss), sample_weight=batch_size)
        self._adversarial_accuracy.update_state(y, logits, sample_weight=sample_weight)
        if input_gradient is None:
            self._grad_magnitude.update_state(0.0)
        else:
            self._grad_magnitude.update_state(self._magnitude(input_gradient))
        self._attack_steps_metric.update_state(tf.cast(steps, tf.float32))
        self._minibatch_counter.assign_add(1)
        return self._results()

    def _magnitude(self, input_gradient):
        """Sum over pixels, channels and examples of |dL/dx * std| (float32)."""
        gradient = tf.cast(input_gradient, tf.float32)
        if self._input_std is not None:
            channels = gradient.shape[-1]
            if len(self._input_std) not in (1, channels):
                raise ValueError(
                    f"input_std has {len(self._input_std)} values but the images have "
                    f"{channels} channels."
                )
            gradient = gradient * tf.constant(self._input_std, tf.float32)
        return tf.reduce_sum(tf.abs(gradient))

    def _random_start(self, x):
        """The random start of this minibatch, the same for any number of replicas.

        Each replica draws the start of the whole (evenly split) global batch
        from one seed per minibatch and keeps its own slice, so replicas get
        different noise and 1 or N replicas train on the same starts. The extra
        draws cost little next to a forward pass.
        """
        context = tf.distribute.get_replica_context()
        replicas = 1 if context is None else context.num_replicas_in_sync
        replica = 0 if context is None else context.replica_id_in_sync_group
        seed = tf.stack(
            [tf.constant(self.seed, tf.int64), tf.cast(self._minibatch_counter.value, tf.int64)]
        )
        local_batch = tf.shape(x)[0]
        shape = tf.concat([[local_batch * replicas], tf.shape(x)[1:]], axis=0)
        noise = attacks.initial_perturbation(
            shape, self.epsilon, self.initialization, self.initialization_scale, seed=seed
        )
        offset = tf.cast(replica, tf.int32) * local_batch
        return attacks.project(x + noise[offset : offset + local_batch], x, self.epsilon)

    def _cross_entropy_forward(self, y, sample_weight):
        """The forward of the standard update: compiled loss on f(images)."""

        def forward(images):
            logits = self.network(images, training=True)
            loss = self.compute_loss(
                x=images, y=y, y_pred=logits, sample_weight=sample_weight, training=True
            )
            return logits, loss

        return forward

    def _update(self, to_images, watched, forward, want_input_gradient):
        """One forward and one backward in training mode, then one optimizer update.

        Args:
            to_images: Maps the watched tensor to the network input.
            watched: The tensor whose gradient is returned (x_adv or the carried delta).
            forward: Maps network input to (logits to score, training loss); the
                loss is already divided by the replica count, as Keras losses are.
            want_input_gradient: Whether to differentiate w.r.t. `watched` too.

        Returns:
            (logits, loss, gradient w.r.t. watched or None).
        """
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            if want_input_gradient:
                tape.watch(watched)
            logits, loss = forward(to_images(watched))
            scaled_loss = self.optimizer.scale_loss(loss)
        targets = list(variables) + ([watched] if want_input_gradient else [])
        gradients = tape.gradient(scaled_loss, targets)
        # Loss scaling (mixed precision) multiplies every gradient by the scale.
        loss_scale = tf.cast(self.optimizer.scale_loss(tf.constant(1.0)), tf.float32)
        input_gradient = None
        if want_input_gradient:
            input_gradient = tf.cast(gradients.pop(), tf.float32) / loss_scale
            input_gradient = tf.where(
                tf.math.is_finite(input_gradient), input_gradient, tf.zeros_like(input_gradient)
            )
        if self.l2_weight_decay:
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            # Gradients are summed over replicas, so each adds its share of the L2 term.
            coefficient = self.l2_weight_decay / replicas
            gradients = [
                gradient + tf.cast(coefficient * loss_scale, gradient.dtype) * tf.cast(variable, gradient.dtype)
                for gradient, variable in zip(gradients, variables)
            ]
        self.optimizer.apply(gradients, variables)
        return logits, loss, input_gradient

    def _replay_step(self, x, y, labels, sample_weight):
        replays = self._traced_steps if self._traced_steps is not None else self.attack_steps
        step_size = self.replay_step_size(replays)
        if self.carry_perturbation:
            buffer = self._carried.variable
            if buffer is None:
                raise ValueError("carry_perturbation: call fit() so the perturbation buffer is created.")
            batch = tf.shape(x)[0]
            stored = tf.convert_to_tensor(buffer)
            delta = stored[:batch]
            watched = delta
            to_images = lambda delta: tf.clip_by_value(x + delta, 0.0, 1.0)  # noqa: E731
        else:
            watched = self._random_start(x)
            to_images = _identity
        forward = self._cross_entropy_forward(y, sample_weight)
        for replay in range(replays):
            logits, loss, gradient = self._update(to_images, watched, forward, True)
            if self.carry_perturbation:
                watched = tf.clip_by_value(
                    watched + step_size * tf.sign(gradient), -self.epsilon, self.epsilon
                )
            elif replay + 1 < replays:
                watched = attacks.project(attacks.signed_step(watched, gradient, step_size), x, self.epsilon)
        if self.carry_perturbation:
            buffer.assign(tf.concat([watched, stored[batch:]], axis=0))
        return replays, logits, loss, gradient

    def _attack_logits_function(self):
        """Training-mode forward that leaves BatchNorm moving statistics untouched."""
        network = self.network
        trainable = [variable.value for variable in network.trainable_variables]
        non_trainable = [variable.value for variable in network.non_trainable_variables]

        def logits_fn(images):
            logits, _ = network.stateless_call(trainable, non_trainable, images, training=True)
            return logits

        return logits_fn

    def _attack_then_update_step(self, x, y, labels, sample_weight):
        """pgd, trades, mart: a K-step attack without updates, then one update."""
        steps = tf.convert_to_tensor(self._attack_steps_variable.value)
        step_size = tf.constant(self.step_size, tf.float32)
        if self.step_size_rule == "max_epsilon_over_steps":
            step_size = tf.maximum(
                self.epsilon / tf.cast(tf.maximum(steps, 1), tf.float32), step_size
            )
        attack_logits = self._attack_logits_function()
        if self.method == "trades":
            natural_probabilities = tf.stop_gradient(tf.nn.softmax(tf.cast(attack_logits(x), tf.float32)))
            attack_loss = lambda logits, _: _kl_divergence(natural_probabilities, logits)  # noqa: E731
            forward = self._trades_forward(x, y, sample_weight)
        elif self.method == "mart":
            attack_loss = "ce"
            forward = self._mart_forward(x, labels)
        else:
            attack_loss = "ce"
            forward = self._cross_entropy_forward(y, sample_weight)
        start = self._random_start(x)
        x_adv = attacks.pgd_loop(attack_logits, x, labels, start, self.epsilon, step_size, steps, attack_loss)
        x_adv = tf.stop_gradient(x_adv)
        logits, loss, gradient = self._update(_identity, x_adv, forward, True)
        return steps, logits, loss, gradient

    def _trades_forward(self, x, y, sample_weight):
        """CE(f(x), y) + beta * KL(f(x) || f(x_adv)), KL summed over classes, batch mean."""

        def forward(x_adv):
            natural_logits = self.network(x, training=True)
            adversarial_logits = self.network(x_adv, training=True)
            natural_loss = self.compute_loss(
                x=x, y=y, y_pred=natural_logits, sample_weight=sample_weight, training=True
            )
            natural_probabilities = tf.nn.softmax(tf.cast(natural_logits, tf.float32))
            robust_loss = tf.reduce_mean(_kl_divergence(natural_probabilities, adversarial_logits))
            return adversarial_logits, natural_loss + self.beta * _per_replica_share(robust_loss)

        return forward

    def _mart_forward(self, x, labels):
        """MART: boosted CE on f(x_adv) + beta * KL(f(x) || f(x_adv)) * (1 - p_y(x))."""

        def forward(x_adv):
            natural_logits = tf.cast(self.network(x, training=True), tf.float32)
            adversarial_logits = self.network(x_adv, training=True)
            logits = tf.cast(adversarial_logits, tf.float32)
            adversarial_probabilities = tf.nn.softmax(logits)
            # The most likely wrong class under attack.
            top_two = tf.math.top_k(adversarial_probabilities, k=2).indices
            wrong = tf.where(tf.equal(top_two[:, 0], labels), top_two[:, 1], top_two[:, 0])
            wrong_probability = tf.gather(adversarial_probabilities, wrong, batch_dims=1)
            boosted_cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=logits
            ) - tf.math.log(1.0001 - wrong_probability + 1e-12)
            natural_probabilities = tf.nn.softmax(natural_logits)
            true_probability = tf.gather(natural_probabilities, labels, batch_dims=1)
            robust = _kl_divergence(natural_probabilities, logits) * (1.0000001 - true_probability)
            loss = tf.reduce_mean(boosted_cross_entropy) + self.beta * tf.reduce_mean(robust)
            regularization = tf.add_n(self.losses) if self.losses else 0.0
            return adversarial_logits, _per_replica_share(loss + regularization)

        return forward

    def _fgsm_step(self, x, y, labels, sample_weight):
        start = self._random_start(x)
        _, _, gradient = attacks.loss_and_gradient(self._attack_logits_function(), start, labels, "ce")
        x_adv = tf.stop_gradient(
            attacks.project(attacks.signed_step(start, gradient, self.step_size), x, self.epsilon)
        )
        logits, loss, gradient = self._update(
            _identity, x_adv, self._cross_entropy_forward(y, sample_weight), True
        )
        return 1, logits, loss, gradient

    # ---------------------------------------------------------------- test step

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = _as_images(x)
        logits = self.network(x, training=False)
        loss = self.compute_loss(x=x, y=y, y_pred=logits, sample_weight=sample_weight, training=False)
        self._loss_metric.update_state(_unscale_for_distribution(loss), sample_weight=tf.shape(x)[0])
        self._clean_accuracy.update_state(y, logits, sample_weight=sample_weight)
        if self.validation_attack_steps:
            labels = tf.cast(tf.reshape(y, [-1]), tf.int32)
            x_adv = attacks.pgd(
                self.network,
                x,
                labels,
                self.epsilon,
                max(self.validation_step_size, 1e-12),
                self.validation_attack_steps,
                seed=self.seed,
            )
            robust_logits = self.network(x_adv, training=False)
            self._robust_accuracy.update_state(y, robust_logits, sample_weight=sample_weight)
        return self._results()

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
            "carry_perturbation": self.carry_perturbation,
            "step_size_rule": self.step_size_rule,
            "l2_weight_decay": self.l2_weight_decay,
            "input_std": self.input_std_setting,
            "validation_attack_steps": self.validation_attack_steps,
            "validation_step_size": self.validation_step_size,
            "beta": self.beta,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(
            config.pop("network"), custom_objects=custom_objects
        )
        return cls(network, **config)


def _identity(images):
    return images


def _kl_divergence(probabilities, logits):
    """Per-example KL(p || softmax(logits)), summed over classes."""
    log_q = tf.nn.log_softmax(tf.cast(logits, tf.float32))
    return tf.reduce_sum(tf.math.xlogy(probabilities, probabilities) - probabilities * log_q, axis=-1)


def _per_replica_share(loss):
    """Divides a batch-mean loss by the replica count, as Keras losses do,
    so that gradients summed over replicas are those of the global mean."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss


def _unscale_for_distribution(loss):
    """Keras losses divide by the replica count; the logged loss should not."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss * tf.cast(replicas, loss.dtype) if replicas > 1 else loss


def _as_images(x):
    if isinstance(x, (dict, list, tuple)):
        raise ValueError("AdversarialModel expects a single image tensor as input, not a structure.")
    if x.shape.rank is not None and x.shape.rank != 4:
        raise ValueError(
            f"images must be a 4-D batch [batch, height, width, channels], got shape {x.shape}."
        )
    if not x.dtype.is_floating:
        raise ValueError(
            f"images must be floats scaled to [0, 1], got dtype {x.dtype.name} "
            "(convert with tf.cast(images, tf.float32) / 255)."
        )
    return tf.cast(x, tf.float32)


def _peek_batch(x, y, batch_size):
    """Returns (images, labels, global batch size) for checking, or None if x is opaque.

    Arrays are returned whole (cheap to check fully); a dataset gives its first batch.
    """
    if isinstance(x, tf.data.Dataset):
        for element in x.take(1):
            images, labels, _ = keras.utils.unpack_x_y_sample_weight(element)
            if labels is None:
                raise ValueError("the dataset must yield (images, labels) pairs.")
            images = np.asarray(images)
            return images, np.asarray(labels), images.shape[0] if images.ndim else 0
        raise ValueError("the training dataset is empty.")
    if isinstance(x, (np.ndarray, tf.Tensor)):
        if y is None:
            raise ValueError("y (labels) is required when x is an array of images.")
        images = np.asarray(x)
        # Keras' default batch size for arrays is 32.
        return images, np.asarray(y), min(batch_size or 32, images.shape[0] if images.ndim else 0)
    return None


def _check_batch(images, labels, num_classes):
    if images.ndim != 4:
        raise ValueError(
            f"x must be a 4-D batch of images [batch, height, width, channels], got shape "
            f"{images.shape}."
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"x must hold floats scaled to [0, 1], got dtype {images.dtype} "
            "(divide uint8 images by 255)."
        )
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"x must be scaled to [0, 1] (epsilon is in pixel units), got values in "
            f"[{low:.4g}, {high:.4g}]."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"y must hold integer class labels, got dtype {labels.dtype}.")
    flat = labels.reshape(-1)
    if flat.shape[0] != images.shape[0]:
        raise ValueError(
            f"y must hold one label per image: {images.shape[0]} images, labels of shape "
            f"{labels.shape}."
        )
    if num_classes is not None and flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        raise ValueError(
            f"y must be class labels in [0, {num_classes - 1}] (the network has {num_classes} "
            f"outputs), got values in [{flat.min()}, {flat.max()}]."
        )
