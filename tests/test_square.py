"""Square attack: schedule, the optimum of a linear model, query counts, seeds, gradient masking."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deat_tf import attacks
from deat_tf.attacks import square_attack as square

TOLERANCE = 1e-6
SIDE = 4
CHANNELS = 2
PIXELS = SIDE * SIDE * CHANNELS


def assert_in_bounds(x_adv, x, epsilon):
    x_adv = np.asarray(x_adv)
    assert x_adv.shape == x.shape
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.abs(x_adv - x).max() <= epsilon + TOLERANCE


def linear_model(weights, biases):
    weights = tf.constant(weights, tf.float32)
    biases = tf.constant(biases, tf.float32)
    return lambda images: tf.reshape(images, [-1, PIXELS]) @ weights + biases


def seeds_for(indices, seed=0):
    """Seed pairs keyed by example index, so that batching does not matter."""
    indices = np.asarray(indices, np.int64)
    return np.stack([np.full_like(indices, seed), indices], axis=1)


def compiled_loop(model, epsilon, queries):
    return tf.function(
        lambda x, y, seeds: square.square_loop(model, x, y, epsilon, queries, seeds),
        autograph=False,
        reduce_retracing=True,
    )


# AutoAttack's Square (`p_selection` in its square.py, called with the raw iteration because
# autoattack.py builds the attack with resc_schedule=False): p = p_init up to iteration 10,
# p_init / 2 for 10 < it <= 50, / 4 up to 200, / 8 up to 500, / 16 up to 1000, / 32 up to
# 2000, / 64 up to 4000, / 128 up to 6000, / 256 up to 8000, / 512 beyond. Written out by
# hand from that code, not computed with deat_tf.
REFERENCE_P = {
    0: 0.8,
    10: 0.8,
    11: 0.4,
    50: 0.4,
    51: 0.2,
    200: 0.2,
    201: 0.1,
    500: 0.1,
    501: 0.05,
    1000: 0.05,
    1001: 0.025,
    2000: 0.025,
    2001: 0.0125,
    4000: 0.0125,
    4001: 0.00625,
    4999: 0.00625,
}
# The window side max(round(sqrt(p * h * w)), 1) over AutoAttack's 5,000 iterations on a
# 32 x 32 image, with the number of iterations at each side: 29 x 11, 20 x 40, 14 x 150,
# 10 x 300, 7 x 500, 5 x 1000, 4 x 2000, 3 x 999 (p_init / 128 from iteration 4001 on).
REFERENCE_SIDES_32 = {29: 11, 20: 40, 14: 150, 10: 300, 7: 500, 5: 1000, 4: 2000, 3: 999}


def test_p_schedule_is_autoattacks_at_5000_queries():
    iterations = sorted(REFERENCE_P)
    p = np.asarray(square.p_schedule(iterations, square.SQUARE_QUERIES))
    np.testing.assert_allclose(p, [REFERENCE_P[i] for i in iterations], rtol=1e-6)
    # The budget does not move the thresholds (no rescaling).
    np.testing.assert_allclose(square.p_schedule([10, 11], 300), [0.8, 0.4], rtol=1e-6)
    assert square.SQUARE_QUERIES == 5000 and square.SQUARE_P_INIT == 0.8


def test_window_sides_over_autoattacks_5000_queries():
    sides = np.asarray(square.window_side(square.p_schedule(np.arange(5000), 5000), 32, 32))
    values, counts = np.unique(sides, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == REFERENCE_SIDES_32
    # An MNIST digit: round(sqrt(0.8 * 784)) = 25 first, round(sqrt(0.8 / 128 * 784)) = 2 last.
    assert int(square.window_side(0.8, 28, 28)) == 25
    assert int(square.window_side(0.8 / 128, 28, 28)) == 2
    assert int(square.window_side(0.8 / 512, 28, 28)) == 1
    assert int(square.window_side(1.0, 28, 20)) == 20


def test_the_rescaled_schedule_is_an_option():
    # The paper code's standalone default: iteration * 10000 / queries, rounded down.
    rescaled = square.p_schedule([5, 6, 4001], 5000, rescale_schedule=True)
    np.testing.assert_allclose(rescaled, [0.8, 0.4, 0.8 / 512], rtol=1e-6)
    np.testing.assert_allclose(
        square.p_schedule([0, 1], 300, p_init=0.5, rescale_schedule=True), [0.5, 0.25]
    )


def test_random_bits_depend_only_on_the_example_seed_and_stream():
    seeds = seeds_for([3, 1, 4, 1, 5])
    bits = np.asarray(square.random_bits(seeds, tf.constant(7, tf.int64), 64))
    np.testing.assert_array_equal(bits[1], bits[3])  # same seed, same words
    np.testing.assert_array_equal(bits[2], np.asarray(square.random_bits(seeds[2:3], 7, 64))[0])
    assert len(np.unique(bits)) > 0.99 * 4 * 64
    other_stream = np.asarray(square.random_bits(seeds, tf.constant(8, tf.int64), 64))
    assert not np.any(other_stream == bits)
    # Top bits are close to fair coins.
    assert abs((bits >> 31).mean() - 0.5) < 0.06


def test_square_reaches_the_optimum_of_a_two_class_linear_model(rng):
    # The margin z_other - z_y of a two-class linear model is linear, so its maximum over the
    # ball and the box is the corner x + eps * sign(w_other - w_y), clipped: Square must fool
    # exactly the examples whose corner is misclassified, and end on the corner elsewhere.
    # AutoAttack's windows never reach the last row or column (only the stripes and
    # whole-image windows do), so the model ignores those pixels.
    reachable = np.ones((SIDE, SIDE, CHANNELS), np.float32)
    reachable[-1], reachable[:, -1] = 0.0, 0.0
    weights = rng.normal(size=(PIXELS, 2)).astype(np.float32) * reachable.reshape(PIXELS, 1)
    model = linear_model(weights, [0.4, -0.4])
    x = rng.choice([0.0, 1.0, 0.5, 0.3, 0.7], size=(48, SIDE, SIDE, CHANNELS)).astype(np.float32)
    y = np.asarray(model(x)).argmax(axis=1)
    epsilon, queries = 0.2, 1000
    direction = (weights[:, 1 - y] - weights[:, y]).T
    corner = np.clip(x.reshape(48, -1) + epsilon * np.sign(direction), 0, 1).reshape(x.shape)
    corner_fooled = np.asarray(model(corner)).argmax(axis=1) != y
    assert 10 < corner_fooled.sum() < 38
    images, scores, fooled, used = (
        np.asarray(t) for t in compiled_loop(model, epsilon, queries)(x, y, seeds_for(range(48)))
    )
    assert_in_bounds(images, x, epsilon)
    np.testing.assert_array_equal(fooled, corner_fooled)
    np.testing.assert_allclose(
        (images * reachable)[~fooled], (corner * reachable)[~fooled], atol=TOLERANCE
    )
    logits = np.asarray(model(images))
    rows = np.arange(48)
    np.testing.assert_allclose(scores, logits[rows, 1 - y] - logits[rows, y], atol=1e-5)
    # Robust examples spend the stripes and every proposal; fooled ones stop at their first
    # success.
    assert np.all(used[~fooled] == queries + 1)
    assert np.all(used[fooled] <= queries) and np.all(used >= 1)


def test_square_fools_a_trained_network_within_the_budget(clean_mnist_network, mnist_sample):
    x = mnist_sample["x_test"][:50]
    y = mnist_sample["y_test"][:50]
    logits_fn = attacks.logits_function(clean_mnist_network)
    epsilon, queries = 0.3, 300
    loop = compiled_loop(logits_fn, epsilon, queries)
    images, _, fooled, used = (np.asarray(t) for t in loop(x, y, seeds_for(range(50))))
    assert_in_bounds(images, x, epsilon)
    predictions = np.asarray(clean_mnist_network(images, training=False)).argmax(axis=1)
    np.testing.assert_array_equal(fooled, predictions != y)
    clean_correct = np.asarray(clean_mnist_network(x, training=False)).argmax(axis=1) == y
    assert fooled[clean_correct].mean() >= 0.9
    # Digits misclassified at x are returned untouched, without a query.
    assert np.all(used <= queries + 1) and np.all(used[~clean_correct] == 0)
    np.testing.assert_array_equal(images[~clean_correct], x[~clean_correct])
    assert np.median(used[fooled]) < queries / 4  # fooled examples stop spending queries
    # The public function runs the same search from the same seeds.
    public = square.square(clean_mnist_network, x, y, epsilon, queries, seed=0)
    np.testing.assert_array_equal(np.asarray(public), images)


def test_results_are_deterministic_and_independent_of_the_batch(clean_mnist_network, mnist_sample):
    # epsilon 0.1 leaves part of the digits robust, so some examples run the full budget.
    x = mnist_sample["x_test"][100:124]
    y = mnist_sample["y_test"][100:124]
    loop = compiled_loop(attacks.logits_function(clean_mnist_network), 0.1, 150)
    whole = [np.asarray(t) for t in loop(x, y, seeds_for(range(100, 124)))]
    again = [np.asarray(t) for t in loop(x, y, seeds_for(range(100, 124)))]
    for first, second in zip(whole, again, strict=True):
        np.testing.assert_array_equal(first, second)
    assert 0 < whole[2].sum() < 24
    subset = np.array([17, 3, 9, 22, 0, 11])
    part = [np.asarray(t) for t in loop(x[subset], y[subset], seeds_for(100 + subset))]
    names = ("images", "scores", "fooled", "queries")
    for name, full, alone in zip(names, whole, part, strict=True):
        if name == "scores":  # the network's float sums may differ with the batch size
            np.testing.assert_allclose(alone, full[subset], atol=1e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(alone, full[subset], err_msg=name)
    # Other seeds give other searches.
    moved = [np.asarray(t) for t in loop(x, y, seeds_for(range(100, 124), seed=1))]
    assert not np.array_equal(moved[0], whole[0])


def test_restarts_only_add_successes_and_use_the_next_seeds(rng):
    weights = rng.normal(size=(PIXELS, 3)).astype(np.float32)
    model = linear_model(weights, [0.5, 0.0, -0.5])
    x = rng.uniform(size=(32, SIDE, SIDE, CHANNELS)).astype(np.float32)
    y = np.asarray(model(x)).argmax(axis=1)

    def fooled(x_adv):
        return np.asarray(model(x_adv)).argmax(axis=1) != y

    one = square.square(model, x, y, 0.3, queries=10, seed=3)
    next_seed = square.square(model, x, y, 0.3, queries=10, seed=4)
    three = square.square(model, x, y, 0.3, queries=10, restarts=3, seed=3)
    assert_in_bounds(three, x, 0.3)
    # Restart r of seed 3 is the single run of seed 3 + r: its successes are kept.
    assert np.all(fooled(three)[fooled(one) | fooled(next_seed)])
    assert fooled(three).sum() > max(fooled(one).sum(), fooled(next_seed).sum())


def test_restart_queries_are_summed_over_the_runs(rng):
    weights = rng.normal(size=(PIXELS, 3)).astype(np.float32)
    model = linear_model(weights, [0.5, 0.0, -0.5])
    x = rng.uniform(size=(16, SIDE, SIDE, CHANNELS)).astype(np.float32)
    y = np.asarray(model(x)).argmax(axis=1)
    seeds = seeds_for(range(16))
    loop = compiled_loop(model, 0.05, 20)
    per_restart = [np.asarray(loop(x, y, seeds + [restart, 0])[3]) for restart in range(2)]
    graph = tf.function(square._square_graph, autograph=False)
    _, used = graph(model, x, y, 0.05, 20, square.SQUARE_P_INIT, 2, seeds)
    np.testing.assert_array_equal(np.asarray(used), per_restart[0] + per_restart[1])


def test_windows_never_touch_the_last_row_or_column(rng):
    # AutoAttack draws the window corner in [0, h - s): with 1 x 1 windows (p_init = 1/16 of
    # a 4 x 4 image) the last row and the last column keep the stripes' values, while the
    # other pixels move. The bias keeps every example robust, so all proposals are made.
    weights = rng.normal(size=(PIXELS, 2)).astype(np.float32)
    model = linear_model(weights, [100.0, -100.0])
    x = rng.uniform(0.3, 0.7, size=(8, SIDE, SIDE, CHANNELS)).astype(np.float32)
    y = np.zeros(8, np.int64)
    seeds = seeds_for(range(8))
    loop = tf.function(
        lambda x, y, seeds: square.square_loop(model, x, y, 0.1, 200, seeds, p_init=1.0 / 16),
        autograph=False,
    )
    images, _, fooled, used = (np.asarray(t) for t in loop(x, y, seeds))
    assert not fooled.any() and np.all(used == 201)
    stripes = np.asarray(square._stripes(tf.constant(x), tf.constant(seeds), 0.1))
    np.testing.assert_allclose(images[:, -1], stripes[:, -1], atol=TOLERANCE)
    np.testing.assert_allclose(images[:, :, -1], stripes[:, :, -1], atol=TOLERANCE)
    assert np.any(np.abs(images[:, :-1, :-1] - stripes[:, :-1, :-1]) > 0.1)


def test_the_stripes_are_the_first_query_and_a_tie_stops_the_search(rng):
    x = rng.uniform(0.3, 0.7, size=(6, SIDE, SIDE, CHANNELS)).astype(np.float32)
    epsilon = 0.1
    stripes = np.asarray(square._stripes(tf.constant(x), tf.constant(seeds_for(range(6))), epsilon))
    # Vertical stripes: every pixel moves by +-epsilon, one sign per column and channel.
    delta = stripes - x
    np.testing.assert_allclose(np.abs(delta), epsilon, atol=TOLERANCE)
    np.testing.assert_allclose(delta, np.broadcast_to(delta[:, :1], delta.shape), atol=TOLERANCE)

    # Constant logits: argmax is class 0, so label 0 is attacked, and the margin 0 after the
    # stripes counts as a success (AutoAttack stops on margin <= 0): one query.
    def tied(images):
        return tf.zeros([tf.shape(images)[0], 3])

    images, scores, fooled, used = (
        np.asarray(t)
        for t in square.square_loop(tied, x, np.zeros(6), epsilon, 50, seeds_for(range(6)))
    )
    assert fooled.all() and np.all(used == 1) and np.all(scores == 0.0)
    np.testing.assert_allclose(images, stripes, atol=TOLERANCE)
    # Label 1 is misclassified at x (argmax 0): not attacked, no query.
    _, _, fooled, used = square.square_loop(tied, x, np.ones(6), epsilon, 50, seeds_for(range(6)))
    assert np.all(np.asarray(used) == 0)


class Quantize(keras.layers.Layer):
    """Rounds pixels to multiples of 1/2 and passes back a zero gradient (gradient masking)."""

    def call(self, images):
        return tf.stop_gradient(tf.round(images * 2.0) / 2.0) + 0.0 * images


def test_square_beats_pgd_on_a_gradient_masked_network(clean_mnist_network, mnist_sample):
    masked = keras.Sequential([keras.Input((28, 28, 1)), Quantize(), clean_mnist_network])
    x = mnist_sample["x_test"][:40]
    y = mnist_sample["y_test"][:40]
    with tf.GradientTape() as tape:
        images = tf.constant(x)
        tape.watch(images)
        loss = tf.reduce_sum(masked(images, training=False))
    assert not np.any(np.asarray(tape.gradient(loss, images)))  # the gradient really is masked

    def fooled(x_adv):
        return np.asarray(masked(x_adv, training=False)).argmax(axis=1) != y

    epsilon = 0.3
    x_pgd = attacks.pgd(masked, x, y, epsilon, step_size=0.1, steps=10)
    x_square = square.square(masked, x, y, epsilon, queries=200)
    assert_in_bounds(x_square, x, epsilon)
    assert fooled(x_square).mean() >= fooled(x_pgd).mean() + 0.3, (
        fooled(x_square).mean(),
        fooled(x_pgd).mean(),
    )


def test_square_loop_inside_strategy_run_matches_one_replica(rng, two_replica_strategy):
    weights = rng.normal(size=(PIXELS, 3)).astype(np.float32)
    model = linear_model(weights, [0.2, 0.0, -0.2])
    x = rng.uniform(size=(8, SIDE, SIDE, CHANNELS)).astype(np.float32)
    y = np.asarray(model(x)).argmax(axis=1)
    seeds = seeds_for(range(8))
    loop = compiled_loop(model, 0.05, 30)
    single = [np.asarray(t) for t in loop(x, y, seeds)]
    strategy = two_replica_strategy
    halves = strategy.experimental_distribute_values_from_function(
        lambda context: tuple(
            tf.constant(a[4 * context.replica_id_in_sync_group :][:4]) for a in (x, y, seeds)
        )
    )
    results = strategy.run(loop, args=halves)
    for one, distributed in zip(single, results, strict=True):
        parts = strategy.experimental_local_results(distributed)
        joined = np.concatenate([np.asarray(t) for t in parts])
        np.testing.assert_allclose(joined, one, atol=1e-6)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(epsilon=-0.1), "epsilon must be in \\[0, 1\\]"),
        (dict(queries=0), "queries must be an integer >= 1"),
        (dict(restarts=0), "restarts must be an integer >= 1"),
        (dict(p_init=0.0), "p_init must be in \\(0, 1\\]"),
        (dict(p_init=1.5), "p_init must be in \\(0, 1\\]"),
        (dict(example_seeds=np.zeros((2, 3), np.int64)), "example_seeds must have shape"),
    ],
)
def test_invalid_arguments_name_the_argument(rng, arguments, message):
    model = linear_model(rng.normal(size=(PIXELS, 3)), np.zeros(3))
    call = dict(epsilon=0.1, queries=2)
    call.update(arguments)
    with pytest.raises(ValueError, match=message):
        square.square(model, np.zeros((2, SIDE, SIDE, CHANNELS), np.float32), np.zeros(2), **call)
