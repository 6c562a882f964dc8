"""Float64 training follows PyTorch's arithmetic exactly; the script's unclipped start.

benchmarks/twin_run.py trains deat_tf and a PyTorch loop written after the
authors' M+DEAT script side by side in float64; these tests pin the
deviations it found, each a Python constant that reached a float64
computation through float32 (tf.cast / ops.cast of a Python float makes a
float32 tensor first), and the `clip_start` option that reproduces the
script's random start. The expected values are hand computations in Python
floats (IEEE float64); the tolerances are far below the float32 rounding
each deviation caused (a relative 1e-8) and far above float64 rounding, so
fused multiply-adds or another CPU cannot move a test across them.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import deat_tf
from deat_tf import attacks, models


@pytest.fixture
def float64():
    # Both: a global dtype policy set by an earlier test outranks floatx.
    previous, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(previous)
    keras.config.set_dtype_policy(previous_policy)


@pytest.mark.numerics
def test_pytorch_sgd_momentum_is_exact_in_float64(float64):
    # PyTorch: b <- 0.9 b + g; theta <- theta - lr b. With momentum rounded to
    # float32 (0.89999998) the third weight is off by about 1e-8.
    optimizer = deat_tf.PyTorchSGD(0.1, momentum=0.9)
    weight = keras.Variable(np.float64(0.0))
    buffer, expected = 0.0, 0.0
    for gradient in (1.0, 2.0, -1.0, 0.5):
        optimizer.apply([tf.constant(gradient, tf.float64)], [weight])
        buffer = 0.9 * buffer + gradient
        expected -= 0.1 * buffer
        assert float(weight.numpy()) == pytest.approx(expected, rel=1e-13, abs=1e-15)


@pytest.mark.numerics
def test_coupled_l2_is_exact_in_float64(float64):
    # One update theta <- theta - lr (g + wd theta); large weights make the L2
    # term dominate, so that wd rounded to float32 (5.0000002e-4) moves the
    # result by about 1e-9 against a float64 error near 1e-14.
    inputs = keras.Input((1, 3, 1))
    flat = keras.layers.Flatten()(inputs)
    network = keras.Model(inputs, keras.layers.Dense(2, name="logits")(flat))
    network.set_weights([np.full((3, 2), 100.0), np.full((2,), -50.0)])
    model = deat_tf.AdversarialModel(network, method="none", l2_weight_decay=5e-4)
    model.compile(optimizer=deat_tf.PyTorchSGD(0.1))
    images = np.linspace(0.0, 1.0, 12).reshape(4, 1, 3, 1)
    labels = np.array([0, 1, 1, 0])
    before = network.get_weights()
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
            labels, network(images, training=True)
        )
    gradients = [gradient.numpy() for gradient in tape.gradient(loss, network.trainable_variables)]
    model.train_on_batch(images, labels)
    for weight, start, gradient in zip(network.get_weights(), before, gradients):
        assert weight.dtype == np.float64
        np.testing.assert_allclose(
            weight, start - 0.1 * (gradient + 5e-4 * start), rtol=0, atol=1e-11
        )


@pytest.mark.numerics
def test_projection_and_start_keep_epsilon_in_float64(float64):
    # 0.5 + 0.3 in float64; float32's 0.3 would give 0.80000001192.
    x = tf.fill([1, 2, 2, 1], tf.constant(0.5, tf.float64))
    projected = attacks.project(x + 1.0, x, 0.3)
    np.testing.assert_allclose(projected.numpy(), 0.5 + 0.3, rtol=0, atol=1e-15)
    noise = attacks.initial_perturbation(
        [1, 2, 2, 1], 0.3, "bernoulli", seed=tf.constant([0, 0], tf.int64), dtype=tf.float64
    )
    np.testing.assert_allclose(np.abs(noise.numpy()), 0.3, rtol=0, atol=1e-15)


def test_a_float64_network_trains_in_float64(float64):
    network = models.mnist_cnn(init="pytorch")
    assert network.get_layer("logits").compute_dtype == "float64"
    model = deat_tf.AdversarialModel(
        network, method="deat", epsilon=0.3, attack_steps=2, l2_weight_decay=5e-4
    )
    model.compile(optimizer=deat_tf.PyTorchSGD(0.05, momentum=0.9))
    images = np.random.RandomState(0).uniform(size=(4, 28, 28, 1))
    logs = model.train_on_batch(images, np.arange(4), return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["grad_magnitude"] > 0
    assert all(weight.dtype == np.float64 for weight in network.get_weights())


def test_mixed_precision_logits_stay_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        network = models.mnist_cnn()
    finally:
        keras.config.set_dtype_policy(previous)
    assert network.get_layer("logits").compute_dtype == "float32"
    assert network.get_layer("conv1").compute_dtype == "float16"


def test_clip_start_false_keeps_the_start_as_drawn():
    # Black digits: the clipped start is >= 0, the script's unclipped one is
    # x + U(-0.3, 0.3), about half of it negative.
    x = tf.zeros([8, 28, 28, 1])
    seed = tf.constant([0, 3], tf.int64)
    clipped = attacks.replica_start(x, 0.3, seed).numpy()
    unclipped = attacks.replica_start(x, 0.3, seed, clip_to_images=False).numpy()
    assert clipped.min() == 0.0
    assert -0.3 <= unclipped.min() < -0.29 and unclipped.max() <= 0.3
    np.testing.assert_array_equal(np.maximum(unclipped, 0.0), clipped)
    network = models.mnist_cnn()
    model = deat_tf.AdversarialModel(network, epsilon=0.3, clip_start=False)
    assert model._random_start(x).numpy().min() < 0
    assert deat_tf.AdversarialModel(network, epsilon=0.3)._random_start(x).numpy().min() == 0
    restored = deat_tf.AdversarialModel.from_config(model.get_config())
    assert restored.clip_start is False


def test_clip_start_must_be_a_bool():
    with pytest.raises(ValueError, match="clip_start"):
        deat_tf.AdversarialModel(models.mnist_cnn(), clip_start="no")
