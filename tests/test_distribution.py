"""One replica versus MirroredStrategy over two logical CPUs: the same numbers.

The comparison runs few minibatches (2 epochs of 3, with the iteration count
raised in between). The networks without BatchNorm compute in float64: the
distribution logic is the same as in float32, but rounding falls from about
1e-7 to about 1e-16 at its source, so the sign steps of the attack, which turn
rounding into whole steps when a gradient entry is near zero, cannot differ
between one device and two on any CPU. Measured on an AMD CPU: weights within
1e-6 of their scale (float32 had differed by 6.9e-5 on an Intel AVX-512 CPU).
Losses, perturbations and the statistic stay float32, so some rounding of
that size remains: each weight tensor is compared against a rounding control
measured in the same run, a single-device run whose weights start 1e-7 (float32
rounding) apart, allowed ten times its drift; the control itself must drift
below 1e-5 of the weights' scale, far under what a bug moves: dropping the
per-replica share of the L2 term, or of the TRADES/MART loss terms, moves the
weights by about 1e-4 of their scale and fails (checked by removing
`per_replica_share` from the TRADES and MART losses). The logged values are
float32 metrics summed over replicas in another order, compared at 1e-4 (a
missing share doubles them). BatchNorm networks stay float32 (see below).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import deat_tf
from deat_tf import models

TOLERANCE = 1e-5
METRIC_TOLERANCE = 1e-4
# BatchNorm's gradient subtracts batch means, a cancellation that turns the
# different summation order of two replicas into differences of about 1e-6 of
# the weights' scale after one update, 1e-4 after a few: its cases compare at
# 1e-3, which still catches a network whose replicas normalise differently.
BATCH_NORM_TOLERANCE = 1e-3


def assert_close(actual, expected, message, tolerance=TOLERANCE):
    """Equal within `tolerance` of the tensor's scale (near-zero entries round freely)."""
    expected = np.asarray(expected, np.float64)
    scale = max(float(np.abs(expected).max()), 1e-12)
    np.testing.assert_allclose(
        actual, expected, rtol=tolerance, atol=tolerance * scale, err_msg=message
    )


def batch_norm_network(synchronized=False):
    """A small conv net with (per-replica) BatchNorm."""
    inputs = keras.Input((28, 28, 1))
    # No bias before BatchNorm: its gradient is zero, its value only rounding noise.
    hidden = layers.Conv2D(8, 4, strides=2, padding="same", use_bias=False)(inputs)
    hidden = layers.BatchNormalization(momentum=0.9, epsilon=1e-3, synchronized=synchronized)(
        hidden
    )
    hidden = layers.ReLU()(hidden)
    hidden = layers.Flatten()(hidden)
    return keras.Model(inputs, layers.Dense(10)(hidden))


def train(strategy, method, mnist_sample, carry=False, network="cnn", nudge=0.0):
    batch_norm = network != "cnn"
    with strategy.scope():
        keras.utils.set_random_seed(1)
        options = {}
        if method == "trades":
            # TRADES starts 0.001 from x, where the KL gradient is so small that its
            # sign is float rounding: a wider start keeps the comparison meaningful
            # (at 0.05 the sign steps still followed rounding from run to run).
            options["initialization_scale"] = 0.2
        if batch_norm:
            classifier = batch_norm_network(synchronized=network == "synchronized_batch_norm")
            # Each replica normalises its own half batch. Global batches made of
            # one half twice, from a zero start, give one device the same batch
            # statistics as each replica, so the two runs must still agree.
            options["initialization"] = "zero"
        else:
            # float64: the distribution logic is the same, rounding falls to ~1e-16.
            previous = keras.config.dtype_policy()
            keras.config.set_dtype_policy("float64")
            try:
                classifier = models.mnist_cnn()
            finally:
                keras.config.set_dtype_policy(previous)
        model = deat_tf.AdversarialModel(
            classifier,
            method=method,
            epsilon=0.3,
            carry_perturbation=carry,
            l2_weight_decay=5e-4,
            **options,
        )
        # BatchNorm nets at a large rate amplify rounding from update to update.
        learning_rate = 0.01 if batch_norm else 0.05
        model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9))
        for weight in classifier.trainable_weights:
            # The rounding control: a relative change far above float64 rounding (1e-16).
            weight.assign(weight * (1.0 + nudge))
    images, labels = mnist_sample["x_train"][:192], mnist_sample["y_train"][:192]
    if batch_norm:
        halves = [slice(32 * index, 32 * (index + 1)) for index in range(6)]
        images = np.concatenate([np.concatenate([images[half]] * 2) for half in halves])
        labels = np.concatenate([np.concatenate([labels[half]] * 2) for half in halves])
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(64)
    # The rule raises the count after epoch 0, so epoch 1 runs with the new count.
    # With BatchNorm the count stays at its start (r = 1, K = 0 then 1): a signed
    # step on gradients that BatchNorm's centring leaves near zero follows float
    # rounding, which differs between one device and two.
    max_steps = 1 if batch_norm else 4
    scheduler = deat_tf.MagnitudeScheduler(gamma=0.5, max_steps=max_steps, verbose=0)
    history = model.fit(dataset, epochs=2, callbacks=[scheduler], verbose=0)
    return history.history, model


@pytest.mark.numerics
@pytest.mark.parametrize(
    "method, carry, network",
    [
        ("deat", False, "cnn"),
        ("pgd", False, "cnn"),
        ("deat", True, "cnn"),
        ("trades", False, "cnn"),
        ("mart", False, "cnn"),
        ("deat", False, "batch_norm"),
        ("pgd", False, "batch_norm"),
    ],
    ids=["deat", "pgd", "deat-carried", "trades", "mart", "deat-batch-norm", "pgd-batch-norm"],
)
def test_two_replicas_match_one_replica(mnist_sample, two_replica_strategy, method, carry, network):
    single_history, single = train(
        tf.distribute.get_strategy(), method, mnist_sample, carry, network
    )
    mirrored_history, mirrored = train(two_replica_strategy, method, mnist_sample, carry, network)
    assert mirrored.distribute_strategy.num_replicas_in_sync == 2
    if network == "cnn":
        # The count must actually change within the run for this test to mean much.
        assert single_history["attack_steps"][1] > single_history["attack_steps"][0]
    assert mirrored_history["attack_steps"] == single_history["attack_steps"]
    assert mirrored.attack_steps == single.attack_steps
    tolerance = TOLERANCE if network == "cnn" else BATCH_NORM_TOLERANCE
    # The logged values are float32 metrics: summed over two replicas, they round differently.
    logged = METRIC_TOLERANCE if network == "cnn" else BATCH_NORM_TOLERANCE
    assert mirrored.schedule_threshold == pytest.approx(single.schedule_threshold, rel=logged)
    for key in ("loss", "adv_accuracy", "grad_magnitude"):
        assert_close(mirrored_history[key], single_history[key], key, logged)
    assert int(mirrored.optimizer.iterations.numpy()) == int(single.optimizer.iterations.numpy())
    if network == "cnn":
        # How far a change of 1e-12 of every weight, far above float64 rounding, carries by
        # the end (the attack's sign steps can turn it into whole steps): the mirrored run,
        # which differs from the single one only by rounding, must stay within a few times
        # that, and a bug (about 1e-4 of the weights' scale) far beyond it.
        _, control = train(
            tf.distribute.get_strategy(), method, mnist_sample, carry, network, nudge=1e-7
        )
    for index, (expected, actual) in enumerate(
        zip(single.network.weights, mirrored.network.weights)
    ):
        # BatchNorm moving statistics included: only the update's forward moves them.
        if network == "cnn":
            expected = expected.numpy()
            scale = float(np.abs(expected).max())
            drift = float(np.abs(control.network.weights[index].numpy() - expected).max())
            assert drift < 1e-5 * scale, f"the control drifts too far to catch a bug: {drift}"
            allowed = max(10 * drift, 1e-7 * scale)
            np.testing.assert_allclose(actual.numpy(), expected, rtol=0, atol=allowed)
        else:
            assert_close(actual.numpy(), expected.numpy(), expected.path, tolerance)


def test_replicas_take_their_slices_of_the_single_replica_random_start(two_replica_strategy):
    images = tf.random.stateless_uniform((8, 4, 4, 1), [3, 4])
    single = deat_tf.AdversarialModel(models.mnist_cnn(input_shape=(4, 4, 1)), epsilon=0.3, seed=5)
    expected = single._random_start(images).numpy()
    strategy = two_replica_strategy
    with strategy.scope():
        mirrored = deat_tf.AdversarialModel(
            models.mnist_cnn(input_shape=(4, 4, 1)), epsilon=0.3, seed=5
        )
    halves = strategy.experimental_distribute_values_from_function(
        lambda context: images[
            4 * context.replica_id_in_sync_group : 4 * (context.replica_id_in_sync_group + 1)
        ]
    )
    starts = strategy.experimental_local_results(
        strategy.run(tf.function(mirrored._random_start), (halves,))
    )
    np.testing.assert_array_equal(np.concatenate([start.numpy() for start in starts]), expected)
    assert not np.array_equal(starts[0].numpy() - images[:4], starts[1].numpy() - images[4:])


def test_synchronized_batch_norm_is_refused_where_the_attack_loop_cannot_synchronise(
    mnist_sample, two_replica_strategy
):
    with pytest.raises(
        ValueError, match="this method runs its attack in a loop that cannot synchronise"
    ):
        train(two_replica_strategy, "pgd", mnist_sample, network="synchronized_batch_norm")


@pytest.mark.parametrize("method", ["deat", "trades"])
def test_a_last_minibatch_smaller_than_the_replica_count_trains(
    mnist_sample, two_replica_strategy, method
):
    # 21 examples in minibatches of 10: the last has 1 example for 2 replicas. Without
    # padding one replica trains on an empty batch (a TRADES loss of 0 / 0 = NaN there,
    # and some CPU convolution kernels refuse empty inputs).
    images, labels = mnist_sample["x_train"][:31], mnist_sample["y_train"][:31]
    for data, options in (
        ((images[:21], labels[:21]), {}),
        # validation_split keeps the last 10 for validation: again 21 to train on.
        ((images, labels), {"validation_split": 10 / 31}),
    ):
        with two_replica_strategy.scope():
            keras.utils.set_random_seed(0)
            model = deat_tf.AdversarialModel(
                models.mnist_cnn(), method=method, epsilon=0.3, attack_steps=2
            )
            model.compile(optimizer=keras.optimizers.SGD(0.01))
        history = model.fit(*data, batch_size=10, epochs=1, verbose=0, **options).history
        assert np.isfinite(history["loss"]).all(), history
        assert model.minibatches == 3
        if options:
            assert len(history["val_loss"]) == 1
        for weight in model.network.get_weights():
            assert np.isfinite(weight).all()
