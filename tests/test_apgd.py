"""APGD-CE / APGD-DLR / APGD-T: schedule, losses by hand, closed-form optima, strength."""

import numpy as np
import pytest
import tensorflow as tf

from deat_tf import attacks, models
from deat_tf.attacks import apgd_attack as apgd

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


def test_checkpoints_are_autoattacks():
    # AutoAttack's autopgd_base.py: first window max(int(0.22 N), 1), each next one shorter by
    # max(int(0.03 N), 1) down to max(int(0.06 N), 1). Worked out by hand from that code:
    # N = 100: 22, +19, +16, +13, +10, +7, +6, +6 (the paper's p_j = 0.22, 0.41, ... too).
    assert attacks.apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    # N = 50: windows 11, 10, 9, 8, 7 (the paper's ceil(p_j N) would give 11, 21, 29, 35, ...).
    assert attacks.apgd_checkpoints(50) == [11, 21, 30, 38, 45]
    # N = 10: windows 2, then 1 each; the check at iteration 10 itself changes nothing.
    assert attacks.apgd_checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert attacks.apgd_checkpoints(1) == []
    for steps in range(0, 300, 7):
        checkpoints = attacks.apgd_checkpoints(steps)
        assert checkpoints == sorted(set(checkpoints))
        assert all(0 < checkpoint < steps for checkpoint in checkpoints)


def test_the_start_is_autoattacks_rescaled_draw(rng):
    # AutoAttack: x + eps * t / max|t| with t = 2 U(0, 1) - 1, clipped to [0, 1]: in the
    # interior of the box the largest coordinate of the move is exactly epsilon.
    x = tf.constant(rng.uniform(0.2, 0.8, size=(6, 2, 2, 3)))
    starts = apgd.example_starts(x, 0.1, 3, tf.range(6))
    first, second = np.asarray(starts(0)), np.asarray(starts(1))
    moves = np.abs(first - np.asarray(x)).reshape(6, -1).max(axis=1)
    np.testing.assert_allclose(moves, 0.1, rtol=1e-10)  # up to the 1e-12 of its norm
    assert not np.allclose(first, second)  # every run draws its own start


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


# ----------------------------------------------------------------- the numpy oracle
#
# A line-by-line port, in numpy float64, of AutoAttack's
# `APGDAttack.attack_single_run` (fra31/auto-attack, autoattack/autopgd_base.py, norm
# "Linf", eot_iter 1, with x_init = the start): its checkpoints (n_iter_2, n_iter_min,
# size_decr), momentum 0.75 (1 at the first step), the double projection, the best point
# (strictly higher loss), `check_oscillation` (<= k * rho over the k pairs ending at the
# checkpoint, with the zero-initialised loss history), the condition
# (1 - reduced_last_check) * (loss_best_last_check >= loss_best), and the jump back to
# x_best / grad_best. It shares no code with deat_tf. The model is a small tanh network with
# hand-written gradients, evaluated in float64 on both sides, so only a different rule can
# make the two disagree.

CLASSES = 5
HIDDEN = 10


def mlp(rng):
    return (
        rng.normal(size=(PIXELS, HIDDEN)) * 2.0,
        rng.normal(size=HIDDEN) * 0.5,
        rng.normal(size=(HIDDEN, CLASSES)) * 2.0,
        rng.normal(size=CLASSES) * 0.5,
    )


def mlp_tf(parameters):
    w1, b1, w2, b2 = (tf.constant(p, tf.float64) for p in parameters)
    return lambda images: tf.tanh(tf.reshape(images, [-1, PIXELS]) @ w1 + b1) @ w2 + b2


def reference_loss_and_gradient(parameters, images, labels, loss, targets):
    """Per-example loss (AutoAttack's CE, DLR or targeted DLR) and its input gradient."""
    w1, b1, w2, b2 = parameters
    flat = images.reshape(len(images), -1)
    hidden = np.tanh(flat @ w1 + b1)
    z = hidden @ w2 + b2
    rows = np.arange(len(z))
    d_z = np.zeros_like(z)
    order = np.argsort(z, axis=1)
    top1, top2, top3, top4 = (order[:, -i] for i in (1, 2, 3, 4))
    if loss == "ce":
        shifted = z - z.max(axis=1, keepdims=True)
        probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        value = -np.log(probabilities[rows, labels])
        d_z = probabilities.copy()
        d_z[rows, labels] -= 1.0
    elif loss == "dlr":
        # -(z_y - z_sorted[-2] * ind - z_sorted[-1] * (1 - ind)) / (z_pi1 - z_pi3 + 1e-12)
        other = np.where(top1 == labels, top2, top1)
        numerator = z[rows, labels] - z[rows, other]
        denominator = z[rows, top1] - z[rows, top3] + 1e-12
        value = -numerator / denominator
        for index, weight in (
            (labels, -1.0 / denominator),
            (other, 1.0 / denominator),
            (top1, numerator / denominator**2),
            (top3, -numerator / denominator**2),
        ):
            np.add.at(d_z, (rows, index), weight)
    else:
        # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)
        numerator = z[rows, labels] - z[rows, targets]
        denominator = z[rows, top1] - 0.5 * (z[rows, top3] + z[rows, top4]) + 1e-12
        value = -numerator / denominator
        for index, weight in (
            (labels, -1.0 / denominator),
            (targets, 1.0 / denominator),
            (top1, numerator / denominator**2),
            (top3, -0.5 * numerator / denominator**2),
            (top4, -0.5 * numerator / denominator**2),
        ):
            np.add.at(d_z, (rows, index), weight)
    d_flat = ((d_z @ w2.T) * (1.0 - hidden**2)) @ w1.T
    return value, d_flat.reshape(images.shape), z.argmax(axis=1)


def reference_apgd(parameters, x, y, x_init, eps, n_iter, loss, targets=None, rho=0.75):
    """AutoAttack's attack_single_run; returns (x_best, acc, loss_best, halvings by cause)."""

    def criterion(points):
        return reference_loss_and_gradient(parameters, points, y, loss, targets)

    batch = len(x)
    n_iter_2 = max(int(0.22 * n_iter), 1)
    n_iter_min = max(int(0.06 * n_iter), 1)
    size_decr = max(int(0.03 * n_iter), 1)
    x_adv = np.clip(x_init, 0.0, 1.0)
    x_best = x_adv.copy()
    loss_steps = np.zeros([n_iter, batch])
    loss_indiv, grad, prediction = criterion(x_adv)
    grad_best = grad.copy()
    acc = prediction == y
    loss_best = loss_indiv.copy()
    step_size = 2.0 * eps * np.ones([batch, 1, 1, 1])
    x_adv_old = x_adv.copy()
    k = n_iter_2
    counter3 = 0
    loss_best_last_check = loss_best.copy()
    reduced_last_check = np.ones(batch)
    halvings = {"oscillation": 0, "no_improvement": 0}
    for i in range(n_iter):
        grad2 = x_adv - x_adv_old
        x_adv_old = x_adv.copy()
        a = 0.75 if i > 0 else 1.0
        x_adv_1 = x_adv + step_size * np.sign(grad)
        x_adv_1 = np.clip(np.minimum(np.maximum(x_adv_1, x - eps), x + eps), 0.0, 1.0)
        x_adv_1 = np.clip(
            np.minimum(
                np.maximum(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), x - eps), x + eps
            ),
            0.0,
            1.0,
        )
        x_adv = x_adv_1
        loss_indiv, grad, prediction = criterion(x_adv)
        acc = np.minimum(acc, prediction == y)
        y1 = loss_indiv.copy()
        loss_steps[i] = y1
        improved = y1 > loss_best
        x_best[improved] = x_adv[improved]
        grad_best[improved] = grad[improved]
        loss_best[improved] = y1[improved]
        counter3 += 1
        if counter3 == k:
            t = np.zeros(batch)
            for counter5 in range(k):
                t += loss_steps[i - counter5] > loss_steps[i - counter5 - 1]
            oscillation = (t <= k * rho).astype(np.float64)
            no_improvement = (1.0 - reduced_last_check) * (loss_best_last_check >= loss_best)
            halvings["oscillation"] += int(oscillation.sum())
            halvings["no_improvement"] += int(((no_improvement > 0) & (oscillation == 0)).sum())
            oscillation = np.maximum(oscillation, no_improvement)
            reduced_last_check = oscillation.copy()
            loss_best_last_check = loss_best.copy()
            halve = oscillation > 0
            step_size[halve] /= 2.0
            x_adv[halve] = x_best[halve]
            grad[halve] = grad_best[halve]
            k = max(k - size_decr, n_iter_min)
            counter3 = 0
    return x_best, acc, loss_best, halvings


@pytest.mark.parametrize(
    "loss, steps, epsilon",
    [("ce", 100, 0.08), ("dlr", 100, 0.2), ("dlr-targeted", 100, 0.08), ("ce", 37, 0.08)],
)
def test_apgd_loop_equals_a_port_of_autoattacks_code(rng, loss, steps, epsilon):
    parameters = mlp(rng)
    model = mlp_tf(parameters)
    x = rng.uniform(0.0, 1.0, size=(48, 2, 2, 3))
    z = np.asarray(model(x))
    y = z.argmax(axis=1)  # attacked examples are correctly classified, as in AutoAttack
    targets = np.argsort(z, axis=1)[:, -2] if loss == "dlr-targeted" else None
    x_start = np.asarray(apgd.example_starts(tf.constant(x), epsilon, 0, tf.range(48))(0))
    expected_best, acc, expected_loss, halvings = reference_apgd(
        parameters, x, y, x_start, epsilon, steps, loss, targets
    )
    # The case exercises the rules: the step is halved (for lack of increases everywhere,
    # for lack of improvement alone in the DLR case), some examples are fooled and some not.
    assert halvings["oscillation"] > 20, halvings
    assert halvings["no_improvement"] > 0 or loss != "dlr", halvings
    assert 5 <= (~acc).sum() <= 43, (~acc).sum()
    best, best_loss, fooled = (
        np.asarray(t)
        for t in apgd.apgd_loop(
            model,
            tf.constant(x),
            tf.constant(y),
            tf.constant(x_start),
            epsilon,
            steps,
            "dlr" if loss == "dlr-targeted" else loss,
            None if targets is None else tf.constant(targets),
        )
    )
    assert best.dtype == np.float64
    np.testing.assert_array_equal(fooled, ~acc)
    # Where no iterate is misclassified, the strongest point is AutoAttack's x_best.
    np.testing.assert_allclose(best[acc], expected_best[acc], rtol=0, atol=1e-12)
    np.testing.assert_allclose(best_loss[acc], expected_loss[acc], rtol=1e-10, atol=1e-12)
