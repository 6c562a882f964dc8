"""Attacks: bounds, hand-checked losses, monotonic strength, restarts, errors."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from deat_tf import attacks, models
from deat_tf.attacks import pgd_attacks

TOLERANCE = 1e-6


def assert_in_bounds(x_adv, x, epsilon):
    x_adv = np.asarray(x_adv)
    x = np.asarray(x)
    assert x_adv.shape == x.shape
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.abs(x_adv - x).max() <= epsilon + TOLERANCE


def accuracy(network, images, labels):
    logits = network(images, training=False)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


@pytest.fixture(scope="module")
def random_network():
    keras.utils.set_random_seed(3)
    return models.mnist_cnn(input_shape=(8, 8, 3), num_classes=5)


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("epsilon", [0.05, 0.3, 1.0])
def test_pgd_stays_in_ball_and_unit_interval_on_random_data(random_network, rng, loss, epsilon):
    # Values at 0 and 1 exercise the [0, 1] clip on both sides.
    x = rng.choice([0.0, 1.0, 0.5, 0.02, 0.98], size=(16, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 5, size=16)
    x_adv = attacks.pgd(random_network, x, y, epsilon, epsilon / 4, steps=5, restarts=2, loss=loss)
    assert_in_bounds(x_adv, x, epsilon)


def test_attacks_stay_in_bounds_on_real_digits(clean_mnist_network, mnist_sample):
    x = mnist_sample["x_test"][:200]
    y = mnist_sample["y_test"][:200]
    for x_adv in (
        attacks.pgd(clean_mnist_network, x, y, 0.3, 0.05, steps=10),
        attacks.pgd(clean_mnist_network, x, y, 0.3, 0.05, steps=10, loss="cw", random_start=False),
        attacks.fgsm(clean_mnist_network, x, y, 0.3),
        attacks.fgsm(clean_mnist_network, x, y, 0.3, step_size=0.375, random_start=True),
    ):
        assert_in_bounds(x_adv, x, 0.3)
        # MNIST digits are mostly exact 0s and 1s: a real attack must move pixels.
        assert np.abs(np.asarray(x_adv) - x).max() > 0.29


@pytest.mark.parametrize("kind", ["uniform", "normal", "bernoulli", "zero"])
def test_initial_perturbation_is_inside_the_ball(kind):
    noise = attacks.initial_perturbation(
        (64, 4, 4, 3), 0.1, kind, scale=0.5, seed=tf.constant([1, 2])
    )
    noise = np.asarray(noise)
    assert np.abs(noise).max() <= 0.1 + TOLERANCE
    if kind == "zero":
        assert not noise.any()
    else:
        assert np.abs(noise).max() > 0.09
    if kind == "bernoulli":
        np.testing.assert_allclose(np.unique(noise), [-0.1, 0.1], rtol=1e-6)


def test_zero_epsilon_returns_the_input(clean_mnist_network, mnist_sample):
    x = mnist_sample["x_test"][:50]
    y = mnist_sample["y_test"][:50]
    np.testing.assert_array_equal(attacks.pgd(clean_mnist_network, x, y, 0.0, 0.01, steps=5), x)
    np.testing.assert_array_equal(attacks.fgsm(clean_mnist_network, x, y, 0.0), x)


def test_more_steps_and_restarts_never_weaken_the_attack(clean_mnist_network, mnist_sample):
    x = mnist_sample["x_test"][:500]
    y = mnist_sample["y_test"][:500]
    clean = accuracy(clean_mnist_network, x, y)
    results = {}
    for steps, restarts in [(1, 1), (5, 1), (20, 1), (20, 3)]:
        x_adv = attacks.pgd(clean_mnist_network, x, y, 0.3, 0.01, steps=steps, restarts=restarts)
        results[(steps, restarts)] = accuracy(clean_mnist_network, x_adv, y)
    ordered = list(results.values())
    assert clean > 0.9
    assert all(later <= earlier for earlier, later in zip(ordered, ordered[1:])), results
    # A clean-trained MNIST net has almost no robustness at epsilon 0.3.
    assert results[(20, 3)] < 0.2 and results[(20, 3)] < results[(1, 1)], results


def test_restarts_keep_the_per_example_worst_case(clean_mnist_network, mnist_sample):
    x = mnist_sample["x_test"][:300]
    y = mnist_sample["y_test"][:300]
    epsilon, step_size, steps = 0.1, 0.02, 3  # weak, so that restarts disagree

    def fooled_and_loss(x_adv):
        logits = clean_mnist_network(x_adv, training=False)
        fooled = np.argmax(logits, axis=-1) != y
        loss = np.asarray(attacks.per_example_loss(logits, y, "ce"))
        return fooled, loss

    singles = [
        fooled_and_loss(
            attacks.pgd(clean_mnist_network, x, y, epsilon, step_size, steps, seed=seed)
        )
        for seed in range(3)
    ]
    combined_fooled, combined_loss = fooled_and_loss(
        attacks.pgd(clean_mnist_network, x, y, epsilon, step_size, steps, restarts=3, seed=0)
    )
    any_fooled = np.any([fooled for fooled, _ in singles], axis=0)
    assert 0 < any_fooled.sum() < len(y)
    np.testing.assert_array_equal(combined_fooled, any_fooled)
    # Where no restart fools the model, the highest loss among them is kept.
    never = ~any_fooled
    best_single = np.max([loss for _, loss in singles], axis=0)
    np.testing.assert_allclose(combined_loss[never], best_single[never], rtol=1e-4, atol=1e-5)


def test_cw_margin_and_cross_entropy_by_hand():
    logits = tf.constant([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = tf.constant([2, 0, 1])
    # max wrong logit - true logit: (3 - 2), (0 - 5), (0 - 0)
    np.testing.assert_allclose(attacks.per_example_loss(logits, labels, "cw"), [1.0, -5.0, 0.0])
    expected_ce = [
        math.log(math.exp(1) + math.exp(3) + math.exp(2)) - 2.0,
        math.log(math.exp(5) + 1 + math.exp(-1)) - 5.0,
        math.log(3.0),
    ]
    np.testing.assert_allclose(
        attacks.per_example_loss(logits, labels, "ce"), expected_ce, rtol=1e-5
    )


def test_changing_the_step_count_does_not_retrace(rng):
    network = models.mnist_cnn(input_shape=(8, 8, 3), num_classes=5)
    x = rng.uniform(size=(4, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 5, size=4)
    for steps in (1, 3, 7):
        attacks.pgd(network, x, y, 0.1 * steps, 0.02, steps=steps)
    attacks.pgd(network, x, y, 0.1, 0.02, steps=tf.constant(2), restarts=2)
    assert pgd_attacks._COMPILED_PGD[network].experimental_get_tracing_count() == 1


def test_pgd_accepts_a_plain_callable(rng):
    weights = tf.constant(rng.normal(size=(12, 3)).astype(np.float32))

    def linear(images):
        return tf.reshape(images, [-1, 12]) @ weights

    x = rng.uniform(size=(5, 2, 2, 3)).astype(np.float32)
    x_adv = attacks.pgd(linear, x, np.zeros(5, np.int64), 0.2, 0.05, steps=4)
    assert_in_bounds(x_adv, x, 0.2)


def pixels_as_logits(images):
    """Two pixels, two classes: an image is of class 0 while pixel 0 is the brighter."""
    return tf.reshape(images, [-1, 2])


@pytest.mark.parametrize(
    "tau, expected",
    [
        # Every example takes all 5 steps of 0.1: pixel 0 down, pixel 1 up, to the ball's edge.
        (None, [[0.35, 0.6], [0.0, 1.0], [0.1, 1.0]]),
        # Correct at iterates 0-3, misclassified at iterate 4: the 5th step is not taken.
        # Misclassified at the start: never moves. Misclassified after one step: stops there.
        (0, [[0.45, 0.5], [0.2, 0.7], [0.5, 0.6]]),
        # One step from a misclassified iterate, then stop (friendly adversarial training).
        (1, [[0.35, 0.6], [0.1, 0.8], [0.4, 0.7]]),
    ],
)
def test_pgd_loop_stops_an_example_after_its_misclassified_iterates(tau, expected):
    # Class 0 for all; margins pixel 0 - pixel 1 of 0.75, -0.5 and 0.1, each step takes 0.2.
    x = tf.constant([[0.85, 0.1], [0.2, 0.7], [0.6, 0.5]], shape=(3, 1, 1, 2))
    labels = tf.zeros([3], tf.int32)
    x_adv = attacks.pgd_loop(
        pixels_as_logits, x, labels, x, 0.5, 0.1, tf.Variable(5), steps_after_misclassified=tau
    )
    np.testing.assert_allclose(np.reshape(x_adv, (3, 2)), expected, atol=1e-6)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(epsilon=-0.1), "epsilon must be in \\[0, 1\\]"),
        (dict(epsilon=1.5), "epsilon must be in \\[0, 1\\]"),
        (dict(step_size=0.0), "step_size must be > 0"),
        (dict(steps=-1), "steps must be an integer >= 0"),
        (dict(steps=2.5), "steps must be an integer >= 0"),
        (dict(restarts=0), "restarts must be an integer >= 1"),
        (dict(loss="hinge"), "loss must be one of ce, cw"),
    ],
)
def test_invalid_arguments_name_the_argument_and_range(random_network, arguments, message):
    call = dict(epsilon=0.1, step_size=0.01, steps=2)
    call.update(arguments)
    with pytest.raises(ValueError, match=message):
        attacks.pgd(random_network, np.zeros((2, 8, 8, 3), np.float32), np.zeros(2), **call)


def test_non_image_input_is_rejected(random_network):
    with pytest.raises(ValueError, match="4-D batch"):
        attacks.pgd(random_network, np.zeros((2, 8, 8), np.float32), np.zeros(2), 0.1, 0.01, 2)
    with pytest.raises(ValueError, match="4-D batch"):
        attacks.fgsm(random_network, np.zeros((2, 64), np.float32), np.zeros(2), 0.1)
