"""APGD-CE / APGD-DLR / APGD-T: schedule, losses by hand, closed-form optima, strength."""

import numpy as np
import pytest
import tensorflow as tf

from deat_tf import attacks, models

TOLERANCE = 1e-6
PIXELS = 12


def assert_in_bounds(x_adv, x, epsilon):
    x_adv = np.asarray(x_adv)
    assert x_adv.shape == x.shape
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.abs(x_adv - x).max() <= epsilon + TOLERANCE


def linear_model(weights, biases):
    """f(x) = x W + b on flattened 2x2x3 images: L-inf optima have a closed form."""
    weights = tf.constant(weights, tf.float32)
    biases = tf.constant(biases, tf.float32)
    return lambda images: tf.reshape(images, [-1, PIXELS]) @ weights + biases


def corner(x, direction, epsilon):
    """The L-inf maximiser of a linear objective with gradient `direction`, in [0, 1]."""
    flat = x.reshape(len(x), -1) + epsilon * np.sign(direction)
    return np.clip(flat, 0.0, 1.0).reshape(x.shape)


def images(rng, count):
    # Exact 0s and 1s exercise the [0, 1] clip of the closed form.
    return rng.choice([0.0, 1.0, 0.5, 0.3, 0.7], size=(count, 2, 2, 3)).astype(np.float32)


def test_checkpoints_follow_the_paper():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 for 100 iterations.
    assert attacks.apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert attacks.apgd_checkpoints(10) == [3, 5, 6, 7, 8, 9]
    assert attacks.apgd_checkpoints(1) == []
    for steps in range(0, 300, 7):
        checkpoints = attacks.apgd_checkpoints(steps)
        assert checkpoints == sorted(set(checkpoints))
        assert all(0 < checkpoint < steps for checkpoint in checkpoints)


def test_dlr_losses_and_targets_by_hand():
    logits = tf.constant([[4.0, 1.0, 2.0, 0.0], [0.0, 3.0, 1.0, 2.0]])
    labels = tf.constant([0, 2])
    # Untargeted: (max wrong - true) / (top1 - top3).
    np.testing.assert_allclose(
        attacks.dlr_loss(logits, labels), [(2 - 4) / (4 - 1), (3 - 1) / (3 - 1)], rtol=1e-6
    )
    # Targeted: (z_t - z_y) / (top1 - (top3 + top4) / 2).
    targets = tf.constant([3, 1])
    np.testing.assert_allclose(
        attacks.targeted_dlr_loss(logits, labels, targets),
        [(0 - 4) / (4 - 0.5), (3 - 1) / (3 - 0.5)],
        rtol=1e-6,
    )
    np.testing.assert_array_equal(
        attacks.top_wrong_classes(logits, labels, 3), [[2, 1, 3], [1, 3, 0]]
    )
    np.testing.assert_allclose(
        attacks.attack_objective(logits, labels, "cw", targets), [-4.0, 2.0], rtol=1e-6
    )


def test_dlr_needs_enough_classes():
    with pytest.raises(ValueError, match="at least 3 classes"):
        attacks.dlr_loss(tf.zeros([2, 2]), tf.zeros([2], tf.int32))
    with pytest.raises(ValueError, match="at least 4 classes"):
        attacks.targeted_dlr_loss(tf.zeros([2, 3]), tf.zeros([2], tf.int32), tf.ones([2], tf.int32))


@pytest.mark.parametrize("epsilon", [0.1, 0.3])
def test_every_attack_reaches_the_closed_form_optimum_of_a_two_class_linear_model(rng, epsilon):
    # For two classes the margin z_other - z_y is linear in x, and cross-entropy
    # grows with it: both are maximised at the corner x + eps * sign(w_other - w_y).
    weights = rng.normal(size=(PIXELS, 2)).astype(np.float32)
    model = linear_model(weights, [0.3, -0.2])
    x = images(rng, 32)
    y = rng.integers(0, 2, size=32)
    direction = (weights[:, 1 - y] - weights[:, y]).T
    optimum = corner(x, direction, epsilon)
    results = {
        "fgsm": attacks.fgsm(model, x, y, epsilon),
        "pgd-ce": attacks.pgd(model, x, y, epsilon, epsilon / 4, steps=10),
        "pgd-cw": attacks.pgd(model, x, y, epsilon, epsilon / 4, steps=10, loss="cw"),
        "apgd-ce": attacks.apgd(model, x, y, epsilon, steps=10),
        "apgd-cw": attacks.apgd(model, x, y, epsilon, steps=10, loss="cw"),
    }
    for name, x_adv in results.items():
        np.testing.assert_allclose(x_adv, optimum, atol=TOLERANCE, err_msg=name)


def test_apgd_dlr_reaches_the_optimum_where_dlr_is_monotone(rng):
    # Logits (s, -s, -K, -K) with s = w.x + c: for y = 0 the DLR loss
    # -2s / (|s| + K) and the targeted DLR towards class 1 both decrease with s,
    # so the optimum is the corner that minimises s.
    w = rng.normal(size=PIXELS).astype(np.float32)
    weights = np.stack([w, -w, np.zeros_like(w), np.zeros_like(w)], axis=1)
    model = linear_model(weights, [0.1, -0.1, -50.0, -50.0])
    x = images(rng, 16)
    y = np.zeros(16, np.int64)
    optimum = corner(x, np.tile(-w, (16, 1)), 0.2)
    untargeted = attacks.apgd(model, x, y, 0.2, steps=10, loss="dlr")
    targeted = attacks.apgd(model, x, y, 0.2, steps=10, loss="dlr", target_labels=np.ones(16))
    np.testing.assert_allclose(untargeted, optimum, atol=TOLERANCE)
    np.testing.assert_allclose(targeted, optimum, atol=TOLERANCE)


def test_targeted_attack_reaches_the_stated_class_where_the_closed_form_says_it_can(rng):
    weights = rng.normal(size=(PIXELS, 10)).astype(np.float32)
    biases = rng.normal(size=10).astype(np.float32)
    model = linear_model(weights, biases)
    x = images(rng, 64)
    clean_logits = np.asarray(model(x))
    y = clean_logits.argmax(axis=1)
    targets = np.asarray(attacks.top_wrong_classes(clean_logits, y, 2))
    reached_any = 0
    for rank in range(2):
        target = targets[:, rank]
        # z_t - z_y is linear: its maximiser is a corner, and where that corner is
        # classified as t the targeted attack must end there.
        optimum = corner(x, (weights[:, target] - weights[:, y]).T, 0.15)
        reachable = np.asarray(model(optimum)).argmax(axis=1) == target
        x_adv = np.asarray(
            attacks.apgd(model, x, y, 0.15, steps=20, loss="cw", target_labels=target)
        )
        np.testing.assert_allclose(x_adv[reachable], optimum[reachable], atol=TOLERANCE)
        np.testing.assert_array_equal(
            np.asarray(model(x_adv)).argmax(axis=1)[reachable], target[reachable]
        )
        reached_any += reachable.sum()
    assert reached_any > 10


def test_targeted_dlr_pushes_towards_its_own_target(rng):
    weights = rng.normal(size=(PIXELS, 10)).astype(np.float32)
    model = linear_model(weights, rng.normal(size=10).astype(np.float32))
    x = images(rng, 64)
    clean_logits = np.asarray(model(x))
    y = clean_logits.argmax(axis=1)
    targets = np.asarray(attacks.top_wrong_classes(clean_logits, y, 3))
    rows = np.arange(len(x))
    gains = np.zeros((3, 3))  # gains[attacked towards i, gap of target j]
    for i in range(3):
        x_adv = attacks.apgd(model, x, y, 0.1, 20, loss="dlr", target_labels=targets[:, i])
        logits = np.asarray(model(x_adv))
        for j in range(3):
            gains[i, j] = np.mean(logits[rows, targets[:, j]] - logits[rows, y])
    for j in range(3):
        assert gains[j, j] == gains[:, j].max(), gains


def test_apgd_targeted_uses_the_top_wrong_classes(rng):
    weights = rng.normal(size=(PIXELS, 10)).astype(np.float32)
    model = linear_model(weights, rng.normal(size=10).astype(np.float32))
    x = images(rng, 16)
    y = np.asarray(model(x)).argmax(axis=1)
    first_target = np.asarray(attacks.top_wrong_classes(model(x), y, 1))[:, 0]
    one_target = attacks.apgd_targeted(model, x, y, 0.1, steps=10, target_classes=1, loss="cw")
    direct = attacks.apgd(model, x, y, 0.1, steps=10, loss="cw", target_labels=first_target)
    np.testing.assert_allclose(one_target, direct, atol=TOLERANCE)


@pytest.fixture(scope="module")
def random_network():
    import keras

    keras.utils.set_random_seed(5)
    return models.mnist_cnn(input_shape=(8, 8, 3), num_classes=10)


@pytest.mark.parametrize("epsilon", [0.05, 0.3, 1.0])
def test_apgd_attacks_stay_in_the_ball_and_unit_interval(random_network, rng, epsilon):
    x = rng.choice([0.0, 1.0, 0.5, 0.02, 0.98], size=(16, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=16)
    for x_adv in (
        attacks.apgd(random_network, x, y, epsilon, steps=6, restarts=2),
        attacks.apgd(random_network, x, y, epsilon, steps=6, loss="dlr"),
        attacks.apgd_targeted(random_network, x, y, epsilon, steps=4, target_classes=3),
        attacks.apgd(random_network, x, y, epsilon, steps=0),
    ):
        assert_in_bounds(x_adv, x, epsilon)


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(clean_mnist_network, mnist_sample):
    # Epsilon 0.15 leaves a clean-trained net a few percent robust, so the attacks differ.
    x = mnist_sample["x_test"][:300]
    y = mnist_sample["y_test"][:300]
    epsilon, steps = 0.15, 20

    def accuracy(x_adv):
        return np.mean(np.argmax(clean_mnist_network(x_adv, training=False), axis=-1) == y)

    pgd = [
        accuracy(
            attacks.pgd(clean_mnist_network, x, y, epsilon, 2.5 * epsilon / steps, steps, seed=seed)
        )
        for seed in range(3)
    ]
    apgd = [
        accuracy(attacks.apgd(clean_mnist_network, x, y, epsilon, steps, seed=seed))
        for seed in range(3)
    ]
    assert np.mean(apgd) <= np.mean(pgd), (apgd, pgd)
    assert np.mean(pgd) < accuracy(x)


def test_restarts_keep_the_per_example_worst_case(clean_mnist_network, mnist_sample):
    x = mnist_sample["x_test"][:200]
    y = mnist_sample["y_test"][:200]

    def fooled(x_adv):
        return np.argmax(clean_mnist_network(x_adv, training=False), axis=-1) != y

    singles = [
        fooled(attacks.apgd(clean_mnist_network, x, y, 0.08, 3, seed=seed)) for seed in range(3)
    ]
    combined = fooled(attacks.apgd(clean_mnist_network, x, y, 0.08, 3, restarts=3, seed=0))
    np.testing.assert_array_equal(combined, np.any(singles, axis=0))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(epsilon=1.5), "epsilon must be in \\[0, 1\\]"),
        (dict(steps=-1), "steps must be an integer >= 0"),
        (dict(restarts=0), "restarts must be an integer >= 1"),
        (dict(loss="hinge"), "loss must be one of ce, dlr, cw"),
    ],
)
def test_invalid_arguments_name_the_argument(random_network, arguments, message):
    call = dict(epsilon=0.1, steps=2)
    call.update(arguments)
    with pytest.raises(ValueError, match=message):
        attacks.apgd(random_network, np.zeros((2, 8, 8, 3), np.float32), np.zeros(2), **call)


def reference_apgd(loss_and_gradient, x, start, epsilon, steps, momentum=0.75, rho=0.75):
    """Auto-PGD as the paper describes it, in numpy, for one example.

    Returns (strongest iterate, its loss, the step sizes after each iteration).
    """
    checkpoints = attacks.apgd_checkpoints(steps)
    intervals = dict(zip(checkpoints, np.diff([0] + checkpoints)))

    def project(point):
        return np.clip(np.clip(point, x - epsilon, x + epsilon), 0.0, 1.0)

    current, previous, step = start.copy(), start.copy(), 2.0 * epsilon
    strongest, strongest_loss = start.copy(), -np.inf
    best, best_loss, best_gradient = start.copy(), -np.inf, None
    previous_loss, increases, loss_at_check, halved_at_check = -np.inf, 0, None, False
    steps_taken = []
    for k in range(steps):
        loss, gradient = loss_and_gradient(current)
        if loss > strongest_loss:
            strongest, strongest_loss = current.copy(), loss
        if k == 0 or loss > best_loss:
            best, best_loss, best_gradient = current.copy(), loss, gradient
        if k == 0:
            loss_at_check = best_loss
        elif loss > previous_loss:
            increases += 1
        if k in intervals:
            stalled = not halved_at_check and loss_at_check >= best_loss
            halve = increases < rho * intervals[k] or stalled
            if halve:
                step /= 2.0
                current, gradient, loss = best.copy(), best_gradient, best_loss
            halved_at_check, loss_at_check, increases = halve, best_loss, 0
        target = project(current + step * np.sign(gradient))
        weight = 1.0 if k == 0 else momentum
        following = project(
            current + weight * (target - current) + (1.0 - weight) * (current - previous)
        )
        previous, current, previous_loss = current, following, loss
        steps_taken.append(step)
    loss, _ = loss_and_gradient(current)
    if loss > strongest_loss:
        strongest, strongest_loss = current, loss
    return strongest, strongest_loss, steps_taken


def test_apgd_halves_its_step_and_uses_momentum_as_the_paper_describes():
    # The wrong-class logit peaks inside the ball, at `centre`: a signed step of
    # 2 epsilon overshoots it, so only the halvings at the checkpoints (and the
    # momentum that averages the zig-zag) bring the iterate close to the peak.
    x = np.array([0.5, 0.4, 0.6], np.float64)
    centre = np.array([0.56, 0.31, 0.6 + 0.013], np.float64)
    sharpness, offset = 40.0, -1.0

    def numpy_loss_and_gradient(point):
        wrong = offset - sharpness * np.sum((point - centre) ** 2)
        loss = np.log1p(np.exp(wrong))  # cross-entropy of class 0 whose logit is 0
        gradient = (1.0 / (1.0 + np.exp(-wrong))) * (-2.0 * sharpness * (point - centre))
        return loss, gradient

    def logits_fn(images):
        flat = tf.reshape(tf.cast(images, tf.float64), [-1, 3])
        wrong = offset - sharpness * tf.reduce_sum((flat - centre) ** 2, axis=1)
        return tf.cast(tf.stack([tf.zeros_like(wrong), wrong], axis=1), tf.float32)

    epsilon, steps = 0.12, 30
    expected, expected_loss, step_sizes = reference_apgd(
        numpy_loss_and_gradient, x, x.copy(), epsilon, steps
    )
    # The case exercises the adaptive logic: the step was halved several times.
    assert step_sizes[-1] <= epsilon / 4
    best, loss, fooled = attacks.apgd_loop(
        logits_fn,
        tf.constant(x.reshape(1, 1, 1, 3), tf.float32),
        tf.constant([0]),
        tf.constant(x.reshape(1, 1, 1, 3), tf.float32),
        epsilon,
        steps,
    )
    np.testing.assert_allclose(np.asarray(best).reshape(3), expected, atol=2e-5)
    assert float(loss[0]) == pytest.approx(expected_loss, rel=1e-4)
    assert not bool(fooled[0])
    # Closer to the peak than any fixed 2-epsilon signed step could land.
    assert np.abs(np.asarray(best).reshape(3) - centre).max() < 0.02
