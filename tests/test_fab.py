"""FAB: the exact box-hyperplane projection, closed-form minima of linear models, bounds."""

import numpy as np
import pytest
import tensorflow as tf

from deat_tf import losses
from deat_tf.attacks import fab_attack as fab

TOLERANCE = 1e-6
SIDE = 3
PIXELS = SIDE * SIDE


def linear_model(weights, biases):
    """f(x) = x W + b on flattened 3x3x1 images: minimal L-inf adversarials have a closed form."""
    weights = tf.constant(weights, tf.float32)
    biases = tf.constant(biases, tf.float32)
    return lambda images: tf.reshape(images, [-1, PIXELS]) @ weights + biases


def reachable_change(weights, room, radius):
    """The largest decrease of |residual| a step of L-inf norm `radius` can make in the box."""
    return np.sum(np.abs(weights) * np.minimum(radius, room), axis=-1)


def box_distance(points, weights, residuals, iterations=100):
    """Bisection for min ||d||_inf, residual + w . d = 0, point + d in [0, 1] (inf if none)."""
    moving_up = -np.sign(residuals)[:, None] * np.sign(weights) > 0
    room = np.where(moving_up, 1.0 - points, points)
    needed = np.abs(residuals)
    low, high = np.zeros(len(points)), np.ones(len(points))
    for _ in range(iterations):
        middle = (low + high) / 2
        enough = reachable_change(weights, room, middle[:, None]) >= needed
        high = np.where(enough, middle, high)
        low = np.where(enough, low, middle)
    feasible = reachable_change(weights, room, 1.0) >= needed
    return np.where(feasible, high, np.inf)


def minimal_adversarial_distance(weights, biases, x, y):
    """Per example, min over wrong classes k of the L-inf distance to {z_k >= z_y} in the box."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    distances = []
    for k in range(weights.shape[1]):
        normals = (weights[:, k][None, :] - weights[:, y].T).astype(np.float64)
        residuals = np.sum(flat * normals, axis=1) + biases[k] - biases[y]
        distance = box_distance(flat, normals, residuals)
        distances.append(np.where(y == k, np.inf, distance))
    return np.min(distances, axis=0)


def assert_in_bounds(x_adv, x, epsilon):
    x_adv = np.asarray(x_adv)
    assert x_adv.shape == x.shape
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.abs(x_adv - x).max() <= epsilon + TOLERANCE


def test_box_hyperplane_step_is_the_exact_linf_projection(rng):
    # Pixels at 0 and 1 and large residuals make the box bind, and some hyperplanes unreachable.
    points = rng.choice([0.0, 1.0, 0.5, 0.1, 0.9, 0.3], size=(200, 12)).astype(np.float32)
    normals = (rng.normal(size=(200, 12)) * (rng.random((200, 12)) > 0.2)).astype(np.float32)
    residuals = (rng.normal(size=200) * 3).astype(np.float32)
    step = np.asarray(fab.box_hyperplane_step(points, normals, residuals)).astype(np.float64)
    expected = box_distance(points.astype(np.float64), normals, residuals)
    feasible = np.isfinite(expected)
    assert 20 < feasible.sum() < 190  # both cases are exercised
    assert np.all(points + step >= -TOLERANCE) and np.all(points + step <= 1 + TOLERANCE)
    np.testing.assert_allclose(np.abs(step).max(axis=1)[feasible], expected[feasible], atol=1e-5)
    on_plane = residuals + np.sum(normals * step, axis=1)
    np.testing.assert_allclose(on_plane[feasible], 0.0, atol=1e-4)
    # Unreachable: every coordinate goes to the bound that lowers |residual| most.
    corner = np.where(-np.sign(residuals)[:, None] * normals > 0, 1.0, 0.0)
    corner = np.where(normals == 0, points, corner)
    np.testing.assert_allclose((points + step)[~feasible], corner[~feasible], atol=TOLERANCE)


def random_linear_problem(rng, count, values):
    weights = rng.normal(size=(PIXELS, 4)).astype(np.float32)
    biases = rng.normal(size=4).astype(np.float32)
    model = linear_model(weights, biases)
    x = values(count).reshape(count, SIDE, SIDE, 1).astype(np.float32)
    y = np.asarray(model(x)).argmax(axis=1)
    return model, weights, biases, x, y


def test_fab_finds_the_closed_form_minimum_away_from_the_box(rng):
    # Inside [0.3, 0.7] a step up to 0.25 (and FAB's 5% overshoot) cannot meet the box, so
    # the minimal distance is min_k |(w_k - w_y) . x + b_k - b_y| / ||w_k - w_y||_1.
    model, weights, biases, x, y = random_linear_problem(
        rng, 64, lambda count: rng.uniform(0.3, 0.7, size=(count, PIXELS))
    )
    flat = x.reshape(len(x), -1)
    distances = []
    for k in range(4):
        normals = weights[:, k][None, :] - weights[:, y].T
        gaps = np.abs(np.sum(flat * normals, axis=1) + biases[k] - biases[y])
        distances.append(np.where(y == k, np.inf, gaps / np.maximum(np.abs(normals).sum(1), 1e-30)))
    formula = np.min(distances, axis=0)
    interior = formula < 0.25
    assert interior.sum() > 20
    bisection = minimal_adversarial_distance(weights, biases, x, y)
    np.testing.assert_allclose(bisection[interior], formula[interior], rtol=1e-4)
    images, norms = fab.fab_minimal_adversarial(model, x, y, 0.3, steps=10, target_classes=3)
    norms = np.asarray(norms)
    # Never below the minimum (it is a minimum), and the final search lands on it.
    assert np.all(norms[interior] >= formula[interior] - TOLERANCE)
    np.testing.assert_allclose(norms[interior], formula[interior], rtol=1e-3)
    assert np.all(np.asarray(model(images)).argmax(axis=1)[interior] != y[interior])
    assert np.all(np.asarray(images) >= 0.0) and np.all(np.asarray(images) <= 1.0)


def test_untargeted_fab_finds_the_closest_boundary_of_any_class(rng):
    # A linear model's linearisation is exact: picking the closest boundary at every step
    # reaches min over k of |(w_k - w_y) . x + b_k - b_y| / ||w_k - w_y||_1 without targets.
    model, weights, biases, x, y = random_linear_problem(
        rng, 64, lambda count: rng.uniform(0.3, 0.7, size=(count, PIXELS))
    )
    expected = minimal_adversarial_distance(weights, biases, x, y)
    interior = expected < 0.25
    assert interior.sum() > 20
    images, norms = fab.fab_minimal_adversarial(model, x, y, 0.3, steps=10, target_classes=None)
    norms = np.asarray(norms)
    assert np.all(norms[interior] >= expected[interior] - TOLERANCE)
    np.testing.assert_allclose(norms[interior], expected[interior], rtol=1e-3)
    epsilon = float(np.median(expected))
    x_adv = np.asarray(fab.fab_untargeted(model, x, y, epsilon, steps=10, restarts=2))
    assert_in_bounds(x_adv, x, epsilon)
    fooled = np.asarray(model(x_adv)).argmax(axis=1) != y
    np.testing.assert_array_equal(fooled[interior], expected[interior] <= epsilon)


def test_restart_starts_are_at_half_epsilon_and_keyed_by_example(rng):
    x = rng.uniform(0.3, 0.7, size=(6, SIDE, SIDE, 1)).astype(np.float32)
    indices = np.arange(10, 16)
    start = fab.restart_starts(tf.constant(x), 0.2, 3, indices)
    np.testing.assert_array_equal(np.asarray(start(tf.constant(0))), x)
    first, second = (np.asarray(start(tf.constant(restart))) for restart in (1, 2))
    distances = np.abs(first - x).reshape(6, -1).max(axis=1)
    np.testing.assert_allclose(distances, 0.1, rtol=1e-5)
    assert not np.allclose(first, second)
    # An example's draw depends on its seed and index, not on the batch around it.
    alone = fab.restart_starts(tf.constant(x[4:5]), 0.2, 3, indices[4:5])(tf.constant(1))
    np.testing.assert_array_equal(np.asarray(alone)[0], first[4])


def test_fab_finds_the_minimum_when_the_box_binds(rng):
    model, weights, biases, x, y = random_linear_problem(
        rng, 64, lambda count: rng.choice([0.0, 1.0, 0.02, 0.97, 0.5], size=(count, PIXELS))
    )
    expected = minimal_adversarial_distance(weights, biases, x, y)
    images, norms = fab.fab_minimal_adversarial(model, x, y, 0.3, steps=30, target_classes=3)
    norms = np.asarray(norms)
    reachable = np.isfinite(expected)
    assert reachable.sum() > 40
    assert np.all(norms[reachable] >= expected[reachable] - TOLERANCE)
    np.testing.assert_allclose(norms[reachable], expected[reachable], rtol=6e-3)
    # Where the box cannot reach any boundary nothing is found and x comes back.
    assert np.all(np.isinf(norms[~reachable]))
    np.testing.assert_array_equal(np.asarray(images)[~reachable], x[~reachable])


def test_fab_targeted_succeeds_exactly_where_the_minimum_is_within_epsilon(rng):
    model, weights, biases, x, y = random_linear_problem(
        rng, 64, lambda count: rng.uniform(0.0, 1.0, size=(count, PIXELS))
    )
    expected = minimal_adversarial_distance(weights, biases, x, y)
    epsilon = float(np.median(expected[np.isfinite(expected)]))
    x_adv = np.asarray(fab.fab_targeted(model, x, y, epsilon, steps=30, target_classes=3))
    assert_in_bounds(x_adv, x, epsilon)
    fooled = np.asarray(model(x_adv)).argmax(axis=1) != y
    # Off a 1% band around epsilon, success is decided by the closed form.
    clearly_inside, clearly_outside = expected < 0.99 * epsilon, expected > epsilon
    assert clearly_inside.sum() > 20 and clearly_outside.sum() > 20
    assert np.all(fooled[clearly_inside])
    assert not np.any(fooled[clearly_outside])
    np.testing.assert_array_equal(x_adv[~fooled], x[~fooled])


def test_fab_reports_failure_when_epsilon_is_below_the_minimum(rng):
    model, weights, biases, x, y = random_linear_problem(
        rng, 32, lambda count: rng.uniform(0.3, 0.7, size=(count, PIXELS))
    )
    epsilon = 0.9 * float(minimal_adversarial_distance(weights, biases, x, y).min())
    attack = tf.function(
        lambda x, y, targets: fab.fab_loop(model, x, y, targets, epsilon, 20, x), autograph=False
    )
    for rank in range(3):
        targets = losses.top_wrong_classes(model(x), y, 3)[:, rank]
        images, scores, misclassified = (np.asarray(t) for t in attack(x, y, targets))
        assert not misclassified.any()
        np.testing.assert_array_equal(images, x)
        # The score is minus the norm of the closest adversarial found, beyond epsilon.
        assert np.all(scores < -epsilon)
    x_adv = np.asarray(fab.fab_targeted(model, x, y, epsilon, steps=20, target_classes=3))
    np.testing.assert_array_equal(x_adv, x)
    assert np.all(np.asarray(model(x_adv)).argmax(axis=1) == y)


def test_fab_on_a_trained_network_stays_in_bounds_and_search_only_shrinks(
    clean_mnist_network, mnist_sample
):
    x = mnist_sample["x_test"][:16]
    y = mnist_sample["y_test"][:16]
    # epsilon sets the restarts' radius: the same in every call, so the runs are the same.
    epsilon = 0.1
    settings = dict(steps=15, target_classes=2, restarts=2)
    _, raw = fab.fab_minimal_adversarial(
        clean_mnist_network, x, y, epsilon, search_steps=0, **settings
    )
    images, searched = fab.fab_minimal_adversarial(clean_mnist_network, x, y, epsilon, **settings)
    raw, searched, images = np.asarray(raw), np.asarray(searched), np.asarray(images)
    found = np.isfinite(searched)
    assert found.sum() >= 14
    assert np.all(searched[found] <= raw[found] + TOLERANCE)
    predictions = np.asarray(clean_mnist_network(images, training=False)).argmax(axis=1)
    assert np.all(predictions[found] != y[found])
    distances = np.abs(images - x).reshape(16, -1).max(axis=1)
    np.testing.assert_allclose(distances[found], searched[found])
    x_adv = np.asarray(fab.fab_targeted(clean_mnist_network, x, y, epsilon, **settings))
    assert_in_bounds(x_adv, x, epsilon)
    fooled = np.asarray(clean_mnist_network(x_adv, training=False)).argmax(axis=1) != y
    # fab_targeted is AutoAttack's FAB-T: no final search, so exactly the unsearched runs.
    np.testing.assert_array_equal(fooled, raw <= epsilon)


def test_fab_loop_inside_strategy_run_matches_one_replica(rng, two_replica_strategy):
    model, _, _, x, y = random_linear_problem(
        rng, 8, lambda count: rng.uniform(0.0, 1.0, size=(count, PIXELS))
    )
    targets = np.asarray(losses.top_wrong_classes(model(x), y, 1))[:, 0]

    def attack(images, labels, target_labels):
        return fab.fab_loop(model, images, labels, target_labels, 0.2, 10, images)

    single = [np.asarray(t) for t in tf.function(attack, autograph=False)(x, y, targets)]
    strategy = two_replica_strategy
    halves = strategy.experimental_distribute_values_from_function(
        lambda context: tuple(
            tf.constant(a[4 * context.replica_id_in_sync_group :][:4]) for a in (x, y, targets)
        )
    )
    results = strategy.run(tf.function(attack, autograph=False), args=halves)
    for one, distributed in zip(single, results, strict=True):
        parts = strategy.experimental_local_results(distributed)
        joined = np.concatenate([np.asarray(t) for t in parts])
        np.testing.assert_allclose(joined, one, atol=1e-5)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(epsilon=1.5), "epsilon must be in \\[0, 1\\]"),
        (dict(steps=-1), "steps must be an integer >= 0"),
        (dict(target_classes=0), "target_classes must be an integer >= 1"),
        (dict(restarts=0), "restarts must be an integer >= 1"),
        (dict(alpha_max=1.5), "alpha_max must be in \\[0, 1\\]"),
        (dict(beta=0.0), "beta must be in \\(0, 1\\]"),
        (dict(beta=1.5), "beta must be in \\(0, 1\\]"),
        (dict(eta=0.0), "eta must be > 0"),
        (dict(search_steps=-1), "search_steps must be an integer >= 0"),
    ],
)
def test_invalid_arguments_name_the_argument(rng, arguments, message):
    model = linear_model(rng.normal(size=(PIXELS, 3)), np.zeros(3))
    call = dict(epsilon=0.1, steps=2)
    call.update(arguments)
    x = np.zeros((2, SIDE, SIDE, 1), np.float32)
    with pytest.raises(ValueError, match=message):
        fab.fab_targeted(model, x, np.zeros(2, np.int64), **call)
    with pytest.raises(ValueError, match=message):
        fab.fab_minimal_adversarial(model, x, np.zeros(2, np.int64), **call)
