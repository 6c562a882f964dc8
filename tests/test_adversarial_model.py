"""The adversarial train step: update counts, replay structure, statistic, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import deat_tf
from deat_tf import attacks, models

IMAGE_SHAPE = (8, 8, 1)
CLASSES = 3


@keras.saving.register_keras_serializable(package="deat_tf_tests")
class ForwardCounter(layers.Layer):
    """Identity layer counting training-mode forward passes in a variable.

    The count is a state update like BatchNorm's moving statistics, so it also
    shows which passes update model state and which do not.
    """

    def build(self, input_shape):
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False, name="count")

    def call(self, inputs, training=False):
        if training:
            self.count.assign_add(1.0)
        return inputs


def counting_network(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE_SHAPE)
    hidden = ForwardCounter(name="counter")(inputs)
    hidden = models.Standardize(0.1, 0.5, name="standardize")(hidden)
    hidden = layers.Conv2D(4, 3, activation="relu")(hidden)
    hidden = layers.Flatten()(hidden)
    outputs = layers.Dense(CLASSES)(hidden)
    return keras.Model(inputs, outputs)


def forward_count(model):
    return int(model.network.get_layer("counter").count.numpy())


def toy_data(batches, batch_size=10, seed=0):
    generator = np.random.default_rng(seed)
    x = generator.uniform(size=(batches * batch_size,) + IMAGE_SHAPE).astype(np.float32)
    y = generator.integers(0, CLASSES, size=batches * batch_size).astype(np.int64)
    return x, y


def make_model(method="deat", optimizer=None, network=None, **kwargs):
    kwargs.setdefault("epsilon", 0.1)
    model = deat_tf.AdversarialModel(network or counting_network(), method=method, **kwargs)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.05))
    return model


@pytest.mark.parametrize(
    "method, steps, updates_per_batch, forwards_per_batch",
    [
        ("deat", 3, 3, 3),
        ("free", 2, 2, 2),
        ("pgd", 4, 1, 1),
        ("pgd", 0, 1, 1),
        # The TRADES and MART updates run the network on x and on x_adv.
        ("trades", 3, 1, 2),
        ("mart", 2, 1, 2),
        ("fgsm_rs", None, 1, 1),
        ("none", None, 1, 1),
    ],
)
def test_optimizer_updates_and_training_forwards_per_minibatch(
    method, steps, updates_per_batch, forwards_per_batch
):
    x, y = toy_data(5)
    model = make_model(method, attack_steps=steps)
    history = model.fit(x, y, batch_size=10, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 5 * updates_per_batch
    assert model.minibatches == 5
    # Attack passes run statelessly: only the forwards of updates count.
    assert forward_count(model) == 5 * forwards_per_batch
    expected_steps = {"fgsm_rs": 1, "none": 0}.get(method, steps)
    assert history.history["attack_steps"] == [expected_steps]


def test_changing_the_replay_count_takes_effect_in_the_next_epoch():
    x, y = toy_data(4)
    model = make_model("deat")
    updates = []

    class RecordUpdates(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            updates.append(int(self.model.optimizer.iterations.numpy()))

    scheduler = deat_tf.PeriodicScheduler(period=1, max_steps=3, verbose=0)
    history = model.fit(
        x, y, batch_size=10, epochs=4, callbacks=[scheduler, RecordUpdates()], verbose=0
    )
    # r = 1, 2, 3, 3 replays per minibatch, 4 minibatches per epoch.
    assert np.diff([0] + updates).tolist() == [4, 8, 12, 12]
    assert forward_count(model) == 4 * (1 + 2 + 3 + 3)
    assert history.history["attack_steps"] == [1, 2, 3, 3]


@pytest.mark.numerics
@pytest.mark.parametrize(
    "method, tau", [("pgd", None), ("trades", None), ("mart", None), ("pgd", 0), ("trades", 1)]
)
def test_a_changed_k_reaches_the_attack_loop_without_retracing(method, tau):
    x, y = toy_data(1, batch_size=16, seed=6)

    def make(steps):
        network = counting_network(seed=9)
        return make_model(
            method, network=network, attack_steps=steps, steps_after_misclassified=tau
        )

    models_by_steps = {}
    for steps in (1, 3):
        model = make(steps)
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        models_by_steps[steps] = model
    # Trained with K = 1 for a minibatch, then K = 3: the second minibatch must
    # give what a model built with K = 3 gives from the same weights.
    changed = make(1)
    traces = []
    train_step = changed.train_step

    def counting_train_step(data):
        traces.append(1)  # Python runs only while the step is traced
        return train_step(data)

    changed.train_step = counting_train_step
    changed.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    tracing = len(traces)
    changed.attack_steps = 3
    reference = make(3)
    reference.network.set_weights(changed.network.get_weights())
    reference.optimizer.build(reference.trainable_variables)
    reference._minibatch_counter.assign(1)  # the same random start as the changed model's
    for source, target in zip(changed.optimizer.variables, reference.optimizer.variables):
        target.assign(source)
    changed_history = changed.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    reference_history = reference.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert len(traces) == tracing
    assert changed_history.history["attack_steps"] == [3]
    for key in ("loss", "grad_magnitude"):
        assert changed_history.history[key] == pytest.approx(reference_history.history[key], 1e-5)
    for trained, expected in zip(changed.network.weights, reference.network.weights):
        np.testing.assert_allclose(trained.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)
    # And K matters here: K = 1 and K = 3 give different updates from the same start.
    one, three = models_by_steps[1].network.weights, models_by_steps[3].network.weights
    assert any(not np.allclose(a.numpy(), b.numpy()) for a, b in zip(one, three))


@pytest.mark.parametrize(
    "method, steps, forwards_per_batch",
    [("pgd", 3, 4), ("mart", 2, 4), ("trades", 2, 5), ("fgsm_rs", None, 2)],
)
def test_attack_batch_norm_update_makes_every_attack_forward_a_training_forward(
    method, steps, forwards_per_batch
):
    # pgd: K attack forwards + the update's (PyTorch PGD-AT: 7 + 1 at K = 7); mart:
    # K + clean + adversarial; trades: one clean forward for the KL target too.
    x, y = toy_data(5)
    model = make_model(method, attack_steps=steps, attack_batch_norm="update")
    model.fit(x, y, batch_size=10, epochs=1, verbose=0)
    assert forward_count(model) == 5 * forwards_per_batch
    assert int(model.optimizer.iterations.numpy()) == 5


def batch_norm_network(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE_SHAPE)
    hidden = layers.Conv2D(4, 3)(inputs)
    hidden = layers.ReLU()(layers.BatchNormalization(momentum=0.9, name="bn")(hidden))
    outputs = layers.Dense(CLASSES)(layers.Flatten()(hidden))
    return keras.Model(inputs, outputs)


def test_attack_batch_norm_changes_the_moving_statistics_only():
    x, y = toy_data(3)
    trained = {}
    for mode in ("stateless", "update"):
        model = make_model(
            "pgd", network=batch_norm_network(), attack_steps=3, attack_batch_norm=mode
        )
        model.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0)
        trained[mode] = model.network
    # Attack and update forwards use batch statistics: the weights are the same...
    for stateless, updated in zip(
        trained["stateless"].trainable_variables, trained["update"].trainable_variables
    ):
        np.testing.assert_allclose(updated.numpy(), stateless.numpy(), rtol=1e-5, atol=1e-6)
    # ...but 4 EMA steps per minibatch (0.9^12 left of the start) against 1 (0.9^3).
    variances = {
        mode: network.get_layer("bn").moving_variance.numpy() for mode, network in trained.items()
    }
    assert np.abs(variances["update"] - variances["stateless"]).max() > 0.05


def test_attack_batch_norm_update_is_refused_on_several_replicas(two_replica_strategy):
    with two_replica_strategy.scope():
        with pytest.raises(ValueError, match="attack_batch_norm='update' works on one device only"):
            deat_tf.AdversarialModel(counting_network(), method="pgd", attack_batch_norm="update")
        model = deat_tf.AdversarialModel(counting_network(), method="pgd")
    assert model.attack_batch_norm == "stateless"
    with pytest.raises(ValueError, match="attack_batch_norm must be one of stateless, update"):
        deat_tf.AdversarialModel(counting_network(), attack_batch_norm="pytorch")


def manual_input_gradient(network, images, labels):
    with tf.GradientTape() as tape:
        tape.watch(images)
        logits = network(images, training=True)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        )
    return tape.gradient(loss, images)


def manual_update(network, images, labels, learning_rate):
    with tf.GradientTape() as tape:
        logits = network(images, training=True)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        )
    gradients = tape.gradient(loss, network.trainable_variables)
    for variable, gradient in zip(network.trainable_variables, gradients):
        variable.assign_sub(learning_rate * gradient)


def model_and_reference(method, seed, learning_rate, **kwargs):
    """A model trained by SGD and an identical network to replay its step by hand."""
    model = make_model(
        method,
        optimizer=keras.optimizers.SGD(learning_rate),
        network=counting_network(seed=seed),
        **kwargs,
    )
    reference = counting_network(seed=seed)
    reference.set_weights(model.network.get_weights())
    return model, reference


def assert_step_matches(model, x, y, reference, expected_magnitude):
    history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert history.history["grad_magnitude"][0] == pytest.approx(expected_magnitude, rel=1e-4)
    for trained, expected in zip(model.network.trainable_variables, reference.trainable_variables):
        np.testing.assert_allclose(trained.numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)
    return history


@pytest.mark.numerics
def test_deat_replays_and_grad_magnitude_match_a_hand_computation():
    x, y = toy_data(1, batch_size=16, seed=4)
    epsilon, step_size, learning_rate = 0.1, 0.04, 0.5
    model, reference = model_and_reference(
        "deat",
        7,
        learning_rate,
        attack_steps=3,
        epsilon=epsilon,
        step_size=step_size,
        initialization="zero",
    )
    images, labels = tf.constant(x), tf.constant(y)
    x_adv = images
    for _ in range(3):
        gradient = manual_input_gradient(reference, x_adv, labels)
        manual_update(reference, x_adv, labels, learning_rate)
        last_gradient = gradient
        x_adv = attacks.project(x_adv + step_size * tf.sign(gradient), images, epsilon)
    # The statistic is the gradient w.r.t. the normalised input: times std 0.5.
    assert_step_matches(model, x, y, reference, float(tf.reduce_sum(tf.abs(last_gradient * 0.5))))


@pytest.mark.numerics
@pytest.mark.parametrize("steps_after_misclassified", [None, 0])
def test_pgd_trains_on_the_final_iterate_and_measures_its_gradient(steps_after_misclassified):
    x, y = toy_data(1, batch_size=16, seed=5)
    epsilon, step_size, learning_rate = 0.1, 0.03, 0.5
    model, reference = model_and_reference(
        "pgd",
        8,
        learning_rate,
        attack_steps=2,
        epsilon=epsilon,
        step_size=step_size,
        initialization="zero",
        steps_after_misclassified=steps_after_misclassified,
    )
    images, labels = tf.constant(x), tf.constant(y)
    x_adv = images
    for _ in range(2):
        gradient = manual_input_gradient(reference, x_adv, labels)
        stepped = attacks.project(x_adv + step_size * tf.sign(gradient), images, epsilon)
        # Wong et al.'s MNIST PGD: only the examples classified correctly take the step.
        correct = np.argmax(reference(x_adv, training=True), axis=-1) == y
        assert 0 < correct.sum() < len(y)  # with the stop, some examples stop, others step
        correct |= steps_after_misclassified is None
        x_adv = tf.where(correct[:, None, None, None], stepped, x_adv)
    expected_magnitude = float(
        tf.reduce_sum(tf.abs(manual_input_gradient(reference, x_adv, labels) * 0.5))
    )
    manual_update(reference, x_adv, labels, learning_rate)
    assert_step_matches(model, x, y, reference, expected_magnitude)


def trades_loss(network, x, x_adv, y, beta):
    natural = network(x, training=True)
    adversarial = network(x_adv, training=True)
    cross_entropy = tf.reduce_mean(
        keras.losses.sparse_categorical_crossentropy(y, natural, from_logits=True)
    )
    p = tf.nn.softmax(natural)
    kl = tf.reduce_sum(p * (tf.math.log(p) - tf.nn.log_softmax(adversarial)), axis=-1)
    return cross_entropy + beta * tf.reduce_mean(kl)


def mart_loss(network, x, x_adv, y, beta):
    natural = tf.nn.softmax(network(x, training=True))
    adversarial_logits = network(x_adv, training=True)
    adversarial = tf.nn.softmax(adversarial_logits)
    sorted_classes = tf.argsort(adversarial, axis=-1, direction="DESCENDING")
    wrong = tf.where(
        sorted_classes[:, 0] == tf.cast(y, tf.int32), sorted_classes[:, 1], sorted_classes[:, 0]
    )
    boosted = keras.losses.sparse_categorical_crossentropy(y, adversarial_logits, from_logits=True)
    boosted -= tf.math.log(1.0001 - tf.gather(adversarial, wrong, batch_dims=1) + 1e-12)
    kl = tf.reduce_sum(natural * (tf.math.log(natural) - tf.math.log(adversarial + 1e-12)), axis=-1)
    true_probability = tf.gather(natural, y, batch_dims=1)
    return tf.reduce_mean(boosted) + beta * tf.reduce_mean(kl * (1.0000001 - true_probability))


@pytest.mark.numerics
@pytest.mark.parametrize("method", ["trades", "mart"])
def test_trades_and_mart_match_a_hand_computation(method):
    x, y = toy_data(1, batch_size=16, seed=6)
    epsilon, step_size, learning_rate, beta = 0.1, 0.03, 0.5, 6.0
    model, reference = model_and_reference(
        method, 9, learning_rate, attack_steps=2, epsilon=epsilon, step_size=step_size, beta=beta
    )
    images, labels = tf.constant(x), tf.constant(y)
    # The model's own draw for minibatch 0, so the hand computation starts alike.
    x_adv = model._random_start(images)
    if method == "trades":
        assert np.abs(x_adv - images).max() < 0.01  # 0.001 N(0, 1) start
    natural_probabilities = tf.nn.softmax(reference(images, training=True))
    for _ in range(2):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = reference(x_adv, training=True)
            if method == "trades":
                objective = tf.reduce_sum(
                    natural_probabilities
                    * (tf.math.log(natural_probabilities) - tf.nn.log_softmax(logits))
                )
            else:
                objective = tf.reduce_sum(
                    keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
                )
        x_adv = attacks.project(
            x_adv + step_size * tf.sign(tape.gradient(objective, x_adv)), images, epsilon
        )
    loss_function = trades_loss if method == "trades" else mart_loss
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x_adv)
        loss = loss_function(reference, images, x_adv, labels, beta)
    expected_magnitude = float(tf.reduce_sum(tf.abs(tape.gradient(loss, x_adv) * 0.5)))
    gradients = tape.gradient(loss, reference.trainable_variables)
    for variable, gradient in zip(reference.trainable_variables, gradients):
        variable.assign_sub(learning_rate * gradient)

    history = assert_step_matches(model, x, y, reference, expected_magnitude)
    assert history.history["loss"][0] == pytest.approx(float(loss), rel=1e-4)


def test_grad_magnitude_is_the_epoch_sum_over_minibatches():
    x, y = toy_data(3, batch_size=10)
    model = make_model("deat", attack_steps=2)
    magnitudes = []

    class RecordBatches(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            magnitudes.append(float(logs["grad_magnitude"]))

    history = model.fit(x, y, batch_size=10, epochs=1, callbacks=[RecordBatches()], verbose=0)
    # Batch logs are running sums: increasing, the last equals the epoch value.
    assert magnitudes[0] < magnitudes[1] < magnitudes[2]
    assert history.history["grad_magnitude"][0] == pytest.approx(magnitudes[-1])


@pytest.mark.numerics
def test_learning_rate_schedule_advances_per_minibatch_not_per_replay():
    x, y = toy_data(2)
    # Rate 0.05 up to step 3, then 0. Two minibatches of r = 3 replays are six
    # updates: keyed on minibatches (0, 1) every update trains at 0.05; keyed on
    # updates (0..5), updates 4 and 5 would train at 0.
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([3], [0.05, 0.0])
    model = make_model(
        "deat",
        optimizer=keras.optimizers.SGD(schedule),
        attack_steps=3,
        network=counting_network(seed=4),
        initialization="zero",
    )
    constant = make_model(
        "deat",
        optimizer=keras.optimizers.SGD(0.05),
        attack_steps=3,
        network=counting_network(seed=4),
        initialization="zero",
    )
    for trained in (model, constant):
        trained.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 6 and model.minibatches == 2
    for keyed, expected in zip(model.network.weights, constant.network.weights):
        np.testing.assert_allclose(keyed.numpy(), expected.numpy(), rtol=1e-6, atol=1e-8)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)


@pytest.mark.numerics
def test_coupled_l2_weight_decay_is_added_to_the_gradient_before_momentum():
    x, y = toy_data(2, batch_size=8)
    learning_rate, momentum, decay = 0.1, 0.9, 0.05
    model = make_model(
        "none",
        optimizer=keras.optimizers.SGD(learning_rate, momentum=momentum),
        network=counting_network(seed=2),
        l2_weight_decay=decay,
    )
    reference = counting_network(seed=2)
    reference.set_weights(model.network.get_weights())
    # Two steps by hand, Keras' momentum: m = mu m - lr (g + decay w); w = w + m.
    # Decoupled decay (w = w - lr decay w outside the momentum) differs from the
    # second step on, since the first step's decay then never enters m.
    velocities = [np.zeros_like(v.numpy()) for v in reference.trainable_variables]
    for step in range(2):
        images, labels = x[8 * step : 8 * (step + 1)], y[8 * step : 8 * (step + 1)]
        with tf.GradientTape() as tape:
            logits = reference(tf.constant(images), training=True)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            )
        gradients = tape.gradient(loss, reference.trainable_variables)
        for index, (variable, gradient) in enumerate(zip(reference.trainable_variables, gradients)):
            coupled = gradient.numpy() + decay * variable.numpy()
            velocities[index] = momentum * velocities[index] - learning_rate * coupled
            variable.assign(variable.numpy() + velocities[index])
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for trained, expected in zip(model.network.trainable_variables, reference.trainable_variables):
        np.testing.assert_allclose(trained.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)


def test_carried_perturbation_stays_in_the_ball_and_survives_a_partial_batch():
    x, y = toy_data(3, batch_size=10)
    model = make_model(
        "free", attack_steps=2, carry_perturbation=True, epsilon=0.05, step_size=0.02
    )
    model.fit(x[:25], y[:25], batch_size=10, epochs=2, verbose=0)
    carried = model.carried_perturbation.numpy()
    assert carried.shape == (10,) + IMAGE_SHAPE
    assert np.abs(carried).max() <= 0.05 + 1e-7
    assert np.abs(carried).max() > 0.0


@pytest.mark.numerics
def test_the_perturbation_carries_from_one_minibatch_to_the_next():
    x, y = toy_data(2, batch_size=8, seed=3)
    epsilon, step_size, learning_rate = 0.1, 0.04, 0.5
    model, reference = model_and_reference(
        "free",
        5,
        learning_rate,
        attack_steps=2,
        carry_perturbation=True,
        epsilon=epsilon,
        step_size=step_size,
    )
    # By hand: delta starts at zero and is never reset; each replay steps it
    # from the previous one, across minibatches, clipped to the ball only.
    delta = tf.zeros((8,) + IMAGE_SHAPE)
    for batch in range(2):
        images = tf.constant(x[8 * batch : 8 * (batch + 1)])
        labels = tf.constant(y[8 * batch : 8 * (batch + 1)])
        for _ in range(2):
            x_adv = tf.clip_by_value(images + delta, 0.0, 1.0)
            with tf.GradientTape() as tape:
                tape.watch(delta)
                logits = reference(tf.clip_by_value(images + delta, 0.0, 1.0), training=True)
                loss = tf.reduce_mean(
                    keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
                )
            gradient = tape.gradient(loss, delta)
            manual_update(reference, x_adv, labels, learning_rate)
            delta = tf.clip_by_value(delta + step_size * tf.sign(gradient), -epsilon, epsilon)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(model.carried_perturbation.numpy(), delta.numpy(), atol=1e-6)
    for trained, expected in zip(model.network.trainable_variables, reference.trainable_variables):
        np.testing.assert_allclose(trained.numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)


def test_validation_reports_clean_and_robust_accuracy():
    x, y = toy_data(2)
    model = make_model("deat", validation_attack_steps=3)
    history = model.fit(x, y, batch_size=10, epochs=1, validation_data=(x, y), verbose=0)
    assert {"val_loss", "val_accuracy", "val_robust_accuracy"} <= set(history.history)
    assert {"loss", "adv_accuracy", "grad_magnitude", "attack_steps"} <= set(history.history)
    results = model.evaluate(x, y, batch_size=10, verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy", "robust_accuracy"}
    assert results["robust_accuracy"] <= results["accuracy"]


def validation_model(strategy=None):
    """A model whose validation attack is one tiny step: its result is the random start."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        return make_model(
            "deat", epsilon=0.5, validation_attack_steps=1, validation_step_size=1e-6, seed=3
        )


def test_validation_noise_differs_between_batches_and_repeats_each_pass(two_replica_strategy):
    model = validation_model()
    x, _ = toy_data(1, batch_size=20)
    labels = np.asarray(model.network(x)).argmax(axis=1)
    # Drawn per batch of the pass from (seed, batch): batches differ, a batch repeats.
    images = tf.constant(x)
    first, second = (model._validation_start(images, batch).numpy() for batch in (0, 1))
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(model._validation_start(images, 0).numpy(), first)
    assert np.abs(first - x).max() <= 0.5 + 1e-6 and first.min() >= 0.0 and first.max() <= 1.0

    def robust(images, labels, batch_size=20):
        results = model.evaluate(images, labels, batch_size=batch_size, verbose=0, return_dict=True)
        return results["robust_accuracy"]

    alone = robust(x, labels)
    assert 0.0 < alone < 1.0  # the noise decides some examples
    # Five copies of the same batch: with one noise tensor for every batch (the old
    # behaviour) each copy would score as the first one.
    copies = (np.concatenate([x] * 5), np.concatenate([labels] * 5))
    repeated = robust(*copies)
    assert repeated != alone
    # Every pass starts again from batch 0: the same weights give the same validation.
    assert robust(*copies) == repeated and robust(x, labels) == alone
    history = model.fit(x, labels, epochs=1, batch_size=20, validation_data=copies, verbose=0)
    assert history.history["val_robust_accuracy"][-1] == robust(*copies)
    # Two replicas draw the global batch's noise and keep their slices: the same numbers.
    mirrored = validation_model(two_replica_strategy)
    mirrored.set_weights(model.get_weights())
    mirrored_results = mirrored.evaluate(*copies, batch_size=20, verbose=0, return_dict=True)
    assert mirrored_results["robust_accuracy"] == pytest.approx(robust(*copies))


class RefuseEmpty(layers.Layer):
    """Identity that fails on an empty batch, as some CPU convolution kernels do."""

    def call(self, inputs):
        tf.debugging.assert_positive(tf.shape(inputs)[0], message="empty batch")
        return inputs


def test_validation_of_a_last_batch_smaller_than_the_replica_count(two_replica_strategy):
    # 21 examples in batches of 10: the last batch has 1 example, so with numpy
    # arrays the second replica receives none. It must be skipped, not run.
    x, _ = toy_data(1, batch_size=21, seed=4)

    def refusing_model(strategy):
        with strategy.scope():
            network = counting_network()
            refusing = keras.Sequential([keras.Input(IMAGE_SHAPE), RefuseEmpty(), network])
            model = make_model("deat", network=refusing, epsilon=0.1, validation_attack_steps=2)
        return model

    single = refusing_model(tf.distribute.get_strategy())
    labels = np.asarray(single.network(x)).argmax(axis=1)
    labels[::3] = (labels[::3] + 1) % CLASSES  # some wrong, so accuracy is not trivially 1
    expected = single.evaluate(x, labels, batch_size=10, verbose=0, return_dict=True)
    assert 0.0 < expected["accuracy"] < 1.0
    mirrored = refusing_model(two_replica_strategy)
    mirrored.set_weights(single.get_weights())
    results = mirrored.evaluate(x, labels, batch_size=10, verbose=0, return_dict=True)
    # Every example counted once: the accuracies are counts out of 21.
    assert results["accuracy"] == pytest.approx(expected["accuracy"])
    assert results["robust_accuracy"] == pytest.approx(expected["robust_accuracy"], abs=1 / 21)
    assert results["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    history = mirrored.fit(
        x[:20], labels[:20], batch_size=10, epochs=1, validation_data=(x, labels), verbose=0
    )
    assert len(history.history["val_accuracy"]) == 1


def test_save_and_load_keeps_configuration_weights_and_optimizer(tmp_path):
    x, y = toy_data(2)
    model = make_model(
        "pgd",
        attack_steps=2,
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        l2_weight_decay=1e-3,
        steps_after_misclassified=0,
    )
    model.fit(x, y, batch_size=10, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, deat_tf.AdversarialModel)
    # Field by field: comparing get_config() with itself would pass even if a
    # field were dropped and the constructor's default filled it in.
    assert (loaded.method, loaded.attack_steps, loaded.l2_weight_decay) == ("pgd", 2, 1e-3)
    assert (loaded.epsilon, loaded.step_size) == (0.1, pytest.approx(0.025))
    assert (loaded.initialization, loaded.initialization_scale) == ("uniform", 0.1)
    assert loaded.steps_after_misclassified == 0
    assert len(loaded.network.layers) == len(model.network.layers)
    for saved, restored in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(saved, restored)
    assert int(loaded.optimizer.iterations.numpy()) == 2
    loaded.fit(x, y, batch_size=10, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 4


def test_xla_compiled_train_step_matches_the_graph_one():
    x, y = toy_data(2)
    results = []
    for jit_compile in (False, True):
        model = deat_tf.AdversarialModel(
            counting_network(seed=3),
            method="deat",
            epsilon=0.1,
            attack_steps=2,
            initialization="zero",
        )
        model.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=jit_compile)
        history = model.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0)
        results.append(history.history["grad_magnitude"][0])
    assert results[1] == pytest.approx(results[0], rel=1e-4)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(epsilon=-0.01), "epsilon must be in \\[0, 1\\]"),
        (dict(epsilon=2.0), "epsilon must be in \\[0, 1\\]"),
        (dict(step_size=0.0), "step_size must be > 0"),
        (
            dict(method="trades-ish"),
            "method must be one of deat, free, pgd, trades, mart, fgsm_rs, none",
        ),
        (dict(method="pgd", attack_steps=-1), "attack_steps must be an integer >= 0"),
        (dict(method="deat", attack_steps=0), "attack_steps must be an integer >= 1"),
        (dict(method="fgsm_rs", attack_steps=3), "attack_steps is fixed at 1"),
        (dict(initialization="gaussian"), "initialization must be one of"),
        (
            dict(method="pgd", carry_perturbation=True),
            "carry_perturbation applies to methods deat, free",
        ),
        (dict(l2_weight_decay=-1.0), "l2_weight_decay must be >= 0"),
        (dict(step_size_rule="cosine"), "step_size_rule must be one of"),
        (
            dict(method="free", steps_after_misclassified=0),
            "steps_after_misclassified applies to methods pgd, trades, mart only",
        ),
    ],
)
def test_invalid_constructor_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        deat_tf.AdversarialModel(counting_network(), **arguments)


def test_setting_an_invalid_count_is_rejected():
    model = make_model("deat")
    with pytest.raises(ValueError, match="attack_steps must be an integer >= 1"):
        model.attack_steps = 0


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (
            np.zeros((20, 8, 8), np.float32),
            np.zeros(20, np.int64),
            "images must have shape \\[batch",
        ),
        (
            np.zeros((20, 8, 8, 1), np.uint8),
            np.zeros(20, np.int64),
            "images must be floats in \\[0, 1\\]",
        ),
        (
            np.full((20, 8, 8, 1), 255.0, np.float32),
            np.zeros(20, np.int64),
            "must be scaled to \\[0, 1\\]",
        ),
        (
            np.zeros((20, 8, 8, 1), np.float32),
            np.full(20, 3, np.int64),
            "labels must be classes in \\[0, 2\\]",
        ),
        (
            np.zeros((20, 8, 8, 1), np.float32),
            np.full(20, -1, np.int64),
            "labels must be classes in \\[0, 2\\]",
        ),
        (
            np.zeros((20, 8, 8, 1), np.float32),
            np.zeros(20, np.float32),
            "labels must be integer classes",
        ),
        (
            np.where(np.arange(20)[:, None, None, None] == 4, np.nan, 0.5).astype(np.float32)
            * np.ones((20, 8, 8, 1), np.float32),
            np.zeros(20, np.int64),
            "images has 64 non-finite pixels \\(64 NaN, 0 Inf; the first in example 4\\)",
        ),
    ],
)
def test_bad_training_data_is_rejected_before_any_update(images, labels, message):
    model = make_model("deat")
    weights = [variable.numpy().copy() for variable in model.network.trainable_variables]
    with pytest.raises(ValueError, match=message):
        model.fit(images, labels, batch_size=10, epochs=1, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(10)
    with pytest.raises(ValueError, match=message):
        model.fit(dataset, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 0
    for before, after in zip(weights, model.network.trainable_variables):
        np.testing.assert_array_equal(before, after.numpy())


def test_compile_rejects_extra_metrics():
    model = deat_tf.AdversarialModel(counting_network())
    with pytest.raises(ValueError, match="metrics cannot be passed"):
        model.compile(optimizer="sgd", metrics=["accuracy"])


def test_step_size_rule_max_epsilon_over_steps():
    model = make_model("deat", epsilon=0.1, step_size=0.02, step_size_rule="max_epsilon_over_steps")
    assert [model.replay_step_size(steps) for steps in (1, 2, 4, 8)] == pytest.approx(
        [0.1, 0.05, 0.025, 0.02]
    )
    assert make_model("deat", epsilon=0.1, step_size=0.02).replay_step_size(2) == pytest.approx(
        0.02
    )


def test_pgd_uses_the_step_size_rule_inside_the_graph():
    # K = 2 steps of alpha = max(0.1 / 2, 0.01) = 0.05, not 0.01.
    x, y = toy_data(1, batch_size=16, seed=10)
    epsilon, learning_rate = 0.1, 0.5
    model, reference = model_and_reference(
        "pgd",
        11,
        learning_rate,
        attack_steps=2,
        epsilon=epsilon,
        step_size=0.01,
        step_size_rule="max_epsilon_over_steps",
        initialization="zero",
    )
    images, labels = tf.constant(x), tf.constant(y)
    x_adv = images
    for _ in range(2):
        gradient = manual_input_gradient(reference, x_adv, labels)
        x_adv = attacks.project(x_adv + 0.05 * tf.sign(gradient), images, epsilon)
    expected_magnitude = float(
        tf.reduce_sum(tf.abs(manual_input_gradient(reference, x_adv, labels) * 0.5))
    )
    manual_update(reference, x_adv, labels, learning_rate)
    assert_step_matches(model, x, y, reference, expected_magnitude)


def test_a_loaded_model_keeps_its_schedule_keyed_on_minibatches(tmp_path):
    x, y = toy_data(4)
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([3], [0.05, 0.001])
    model = make_model("deat", optimizer=keras.optimizers.SGD(schedule), attack_steps=3)
    model.fit(x[:20], y[:20], batch_size=10, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    wrapped = loaded.optimizer._learning_rate
    assert isinstance(wrapped, deat_tf.MinibatchSchedule)
    assert wrapped.counter is loaded._minibatch_counter
    # 2 minibatches, 6 updates: keyed on minibatches the rate is still 0.05 (on updates, 0.001).
    assert loaded.minibatches == 2 and int(loaded.optimizer.iterations.numpy()) == 6
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.05)
    loaded.fit(x[20:], y[20:], batch_size=10, epochs=1, verbose=0)
    assert loaded.minibatches == 4 and int(loaded.optimizer.iterations.numpy()) == 12
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.001)


@pytest.mark.numerics
def test_a_resumed_fit_continues_exactly_where_it_stopped(tmp_path):
    x, y = toy_data(3)

    def fresh():
        return make_model(
            "deat",
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
            network=counting_network(seed=1),
            l2_weight_decay=5e-4,
        )

    def scheduler():
        # gamma 0.01: the rule raises r after epoch 0 and again after epoch 2.
        return deat_tf.MagnitudeScheduler(gamma=0.01, max_steps=3, verbose=0)

    uninterrupted = fresh()
    history = uninterrupted.fit(
        x, y, batch_size=10, epochs=4, callbacks=[scheduler()], shuffle=False, verbose=0
    )
    assert history.history["attack_steps"] == [1, 2, 2, 3]
    first = fresh()
    first.fit(x, y, batch_size=10, epochs=2, callbacks=[scheduler()], shuffle=False, verbose=0)
    path = str(tmp_path / "halfway.keras")
    first.save(path)
    resumed = keras.models.load_model(path)
    resumed_history = resumed.fit(
        x,
        y,
        batch_size=10,
        initial_epoch=2,
        epochs=4,
        callbacks=[scheduler()],
        shuffle=False,
        verbose=0,
    )
    assert resumed_history.history["attack_steps"] == [2, 3]
    np.testing.assert_allclose(
        resumed_history.history["grad_magnitude"], history.history["grad_magnitude"][2:], rtol=1e-6
    )
    assert (resumed.attack_steps, resumed.minibatches) == (3, 12)
    assert resumed.schedule_threshold == pytest.approx(uninterrupted.schedule_threshold, rel=1e-6)
    assert int(resumed.optimizer.iterations.numpy()) == int(
        uninterrupted.optimizer.iterations.numpy()
    )
    for trained, expected in zip(resumed.network.weights, uninterrupted.network.weights):
        np.testing.assert_allclose(trained.numpy(), expected.numpy(), rtol=1e-6, atol=1e-8)


INPUT_GRADIENTS = tf.Variable(0.0, trainable=False)


@keras.saving.register_keras_serializable(package="deat_tf_tests")
class InputGradientCounter(layers.Layer):
    """Identity layer (first, before any weight) counting backward passes into the input.

    TensorFlow only runs its backward when a gradient with respect to the
    images is asked for: weight gradients stop at the first weighted layer.
    """

    def call(self, inputs):
        @tf.custom_gradient
        def identity(images):
            def backward(upstream):
                with tf.control_dependencies([INPUT_GRADIENTS.assign_add(1.0)]):
                    return tf.identity(upstream)

            return tf.identity(images), backward

        return identity(inputs)


def input_gradient_counting_network():
    keras.utils.set_random_seed(0)
    inputs = keras.Input(IMAGE_SHAPE)
    hidden = InputGradientCounter()(inputs)
    hidden = layers.Flatten()(hidden)
    return keras.Model(inputs, layers.Dense(CLASSES)(hidden))


@pytest.mark.parametrize(
    "method, track, gradients_per_minibatch",
    [("fgsm_rs", None, 1), ("fgsm_rs", True, 2), ("pgd", None, 3), ("pgd", False, 2)],
)
def test_the_statistic_costs_one_input_gradient_and_is_off_for_fgsm_rs_by_default(
    method, track, gradients_per_minibatch
):
    x, y = toy_data(batches=3)
    model = make_model(
        method,
        network=input_gradient_counting_network(),
        track_magnitude=track,
        **({"attack_steps": 2} if method == "pgd" else {}),
    )
    INPUT_GRADIENTS.assign(0.0)
    history = model.fit(x, y, batch_size=10, epochs=1, verbose=0, shuffle=False)
    # The attack's steps take one input gradient each; M one more at the update.
    assert float(INPUT_GRADIENTS.numpy()) == 3 * gradients_per_minibatch
    tracked = gradients_per_minibatch > (2 if method == "pgd" else 1)
    assert model.track_magnitude == tracked
    assert ("grad_magnitude" in history.history) == tracked
    if tracked:
        assert history.history["grad_magnitude"][0] > 0


def test_no_statistic_for_the_magnitude_scheduler_or_clean_training_is_refused():
    x, y = toy_data(batches=2)
    model = make_model("deat", network=counting_network(), track_magnitude=False)
    weights = model.network.get_weights()
    with pytest.raises(ValueError, match="MagnitudeScheduler reads grad_magnitude"):
        model.fit(
            x, y, batch_size=10, epochs=1, verbose=0, callbacks=[deat_tf.MagnitudeScheduler()]
        )
    for before, after in zip(weights, model.network.get_weights()):
        np.testing.assert_array_equal(before, after)
    with pytest.raises(ValueError, match="method none computes no input gradient"):
        make_model("none", track_magnitude=True)
    with pytest.raises(ValueError, match="track_magnitude must be True, False or None"):
        make_model("deat", track_magnitude="yes")
