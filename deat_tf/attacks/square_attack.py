"""Square attack: score-based random search in the L-infinity ball, no gradients.

Square (Andriushchenko, Croce, Flammarion and Hein, ECCV 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search") only reads the
model's logits, so gradient masking (non-differentiable preprocessing, shattered
or vanishing gradients) does not blunt it. It closes AutoAttack's standard run:

    from deat_tf import attacks

    x_adv = attacks.square(model, x, y, epsilon=8 / 255)                # 5,000 queries
    x_adv = attacks.square(model, x, y, epsilon=0.3, queries=1000, restarts=2, seed=1)

For batch-independent results, give every example its own stateless seed, for
example its index in the data set:

    seeds = tf.stack([tf.fill([n], 0), tf.range(start, start + n)], axis=1)
    x_adv = attacks.square(model, x, y, 8 / 255, example_seeds=seeds)

The attack minimises the margin z_y - max_{j != y} z_j of each example, with
AutoAttack's settings (`autoattack.py` builds its `SquareAttack` with
p_init = 0.8, n_queries = 5000 and resc_schedule=False):

1. Start from vertical stripes: each column of each channel moves by +epsilon
   or -epsilon (clipped to [0, 1]); that is one query.
2. Each of the `queries` iterations that follow draws a square window of side
   s at a random position (its corner in [0, h - s) x [0, w - s), the first
   position only where s covers the image) and a random sign per channel, sets
   the window of the current best image to x +- epsilon (clipped to [0, 1]),
   and keeps the proposal if it lowers the margin or brings it to <= 0.
3. The window covers a fraction p of the image: p starts at `p_init` and
   halves after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000,
   counted as they are (at 5,000 queries p ends at p_init / 128, a 3 x 3
   window on a 32 x 32 image). `rescale_schedule=True` maps the iteration to
   a 10,000-query budget first (the standalone attack's default in the paper's
   code, not AutoAttack's).
4. An example stops once its margin is <= 0 (ties count, as in AutoAttack).

Where this still differs from AutoAttack's code, and why:

- Each example draws its own window position and signs, as in the paper,
  where AutoAttack's code shares one draw across the batch: per-example draws
  make an example's result independent of the other examples in its batch
  (batch size, replicas, the cascade's subsets).
- Restarts are composed by `common.strongest_attack`, like every other
  attack: restart r runs on every example, with the seeds (first + r, second)
  (`restart_seeds`), and per example the strongest result is kept (the
  misclassified one with the highest margin). AutoAttack's code restarts only
  the examples no earlier restart fooled; here those are attacked again, which
  changes which successful image is kept but not whether an example is fooled,
  and costs the queries until the new success (counted in the query total).
  AutoAttack's lists run Square once.

An example stops as soon as its margin is <= 0: it spends no more queries and
its proposals are no longer computed (the loop evaluates only the examples
still robust). Examples misclassified at x (by argmax) are not attacked at all
(x comes back). `square_loop` also returns the number of queries each example
used: the stripes and at most `queries` proposals, the clean evaluation at x
not counted.

Randomness is stateless and per example: every draw of an example is a hash of
its seed pair and the iteration, so its result does not depend on the other
examples in the batch (nor on their number, order or replica). The attacks
build their ops inside a `tf.function` or `strategy.run` (all loops are
`tf.while_loop`s); called eagerly, `square` runs through a cached `tf.function`
per model.
"""

import weakref

import tensorflow as tf

from deat_tf import checks, losses
from deat_tf.attacks import common

SQUARE_QUERIES = 5000
SQUARE_P_INIT = 0.8

# The schedule of the paper (`p_selection` in AutoAttack's square.py): p halves
# after each of these iterations.
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_SCHEDULE_BUDGET = 10000


def p_schedule(iteration, queries, p_init=SQUARE_P_INIT, rescale_schedule=False):
    """The fraction p of the image that the window of an iteration covers.

    Args:
        iteration: The index of the random-search iteration, from 0 (the
            stripes are not counted); a Python int or an integer tensor of
            any shape.
        queries: The number of iterations (used only with `rescale_schedule`).
        p_init: p at the first iterations.
        rescale_schedule: Map the iteration to a 10,000-query budget first,
            int(iteration * 10000 / queries); False (AutoAttack's setting) uses
            the iteration as it is.

    Returns:
        A float32 tensor shaped like `iteration`: p_init halved once per
        threshold of `_P_HALVINGS` that the (possibly rescaled) iteration exceeds.
    """
    iteration = tf.cast(iteration, tf.int64)
    if rescale_schedule:
        iteration = tf.math.floordiv(iteration * _SCHEDULE_BUDGET, tf.cast(queries, tf.int64))
    passed = iteration[..., None] > tf.constant(_P_HALVINGS, tf.int64)
    halvings = tf.reduce_sum(tf.cast(passed, tf.float32), axis=-1)
    return tf.cast(p_init, tf.float32) * tf.pow(0.5, halvings)


def window_side(p, height, width):
    """The side of a square covering a fraction p of a height x width image.

    round(sqrt(p * height * width)), at least 1 and at most min(height, width).
    """
    area = tf.cast(height, tf.float32) * tf.cast(width, tf.float32)
    side = tf.cast(tf.round(tf.sqrt(p * area)), tf.int32)
    shorter = tf.minimum(tf.cast(height, tf.int32), tf.cast(width, tf.int32))
    return tf.clip_by_value(side, 1, shorter)


def _xor_shift(values, bits):
    shifted = tf.bitwise.right_shift(values, tf.constant(bits, tf.uint32))
    return tf.bitwise.bitwise_xor(values, shifted)


def _mix(values):
    """A bijective avalanche mix of uint32 values (the finaliser of MurmurHash3)."""
    values = _xor_shift(values, 16) * tf.constant(0x85EBCA6B, tf.uint32)
    values = _xor_shift(values, 13) * tf.constant(0xC2B2AE35, tf.uint32)
    return _xor_shift(values, 16)


def _halves(seeds):
    """The low and high 32 bits of int64 seeds, as uint32."""
    seeds = tf.cast(seeds, tf.int64)
    low = tf.cast(tf.bitwise.bitwise_and(seeds, 0xFFFFFFFF), tf.uint32)
    high = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(seeds, 32), 0xFFFFFFFF), tf.uint32)
    return low, high


def random_bits(example_seeds, stream, count):
    """`count` pseudo-random uint32 words per example, from its seed pair and a stream.

    A counter-based generator: word j of stream s of an example is a hash of
    (seed pair, s, j), computed for all examples at once. Stateless random ops
    take one seed per op, so they could not give each example of a batch its
    own stream without a per-example loop.

    Args:
        example_seeds: Integer tensor [batch, 2].
        stream: Integer scalar: one stream per use (iteration).
        count: Number of words per example (a scalar).

    Returns:
        uint32 tensor [batch, count].
    """
    first_low, first_high = _halves(example_seeds[:, 0])
    second_low, second_high = _halves(example_seeds[:, 1])
    key = _mix(first_low + tf.constant(0x9E3779B9, tf.uint32))
    for part in (first_high, second_low, second_high):
        key = _mix(tf.bitwise.bitwise_xor(key, part) + tf.constant(0x7F4A7C15, tf.uint32))
    stream_low, stream_high = _halves(tf.reshape(stream, [1]))
    key = _mix(tf.bitwise.bitwise_xor(key, stream_low))
    key = _mix(tf.bitwise.bitwise_xor(key, stream_high) + tf.constant(0x85EBCA77, tf.uint32))
    counters = tf.cast(tf.range(tf.cast(count, tf.int32)), tf.uint32)
    words = _mix(counters * tf.constant(0x27D4EB2F, tf.uint32) + tf.constant(0x165667B1, tf.uint32))
    return _mix(tf.bitwise.bitwise_xor(key[:, None], words[None, :]))


def _unit_interval(bits):
    # The top 24 bits fill a float32 mantissa exactly: values in [0, 1).
    return tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.float32) / 16777216.0


def _signs(bits):
    top = tf.bitwise.right_shift(bits, tf.constant(31, tf.uint32))
    return 2.0 * tf.cast(top, tf.float32) - 1.0


def _uniform_int(bits, bound):
    """Integers in [0, bound) from uniform bits, per example (bound: int32 tensor)."""
    bound = tf.cast(bound, tf.float32)
    return tf.cast(tf.minimum(tf.floor(_unit_interval(bits) * bound), bound - 1.0), tf.int32)


def default_example_seeds(batch, seed=0):
    """Seed pairs (seed, position in the batch), one per example.

    With these, an example's result depends on its position in the batch; pass
    seeds keyed by data-set index to `square` for results independent of
    batching.
    """
    positions = tf.range(tf.cast(batch, tf.int64), dtype=tf.int64)
    return tf.stack([tf.fill(tf.shape(positions), tf.cast(seed, tf.int64)), positions], axis=1)


def _stripes(x, example_seeds, epsilon):
    """The first query: columns of x moved by +-epsilon, one sign per column and channel."""
    width, channels = tf.shape(x)[2], tf.shape(x)[3]
    bits = random_bits(example_seeds, tf.constant(0, tf.int64), width * channels)
    signs = tf.reshape(_signs(bits), [-1, 1, width, channels])
    return tf.clip_by_value(x + epsilon * signs, 0.0, 1.0)


def _judge(logits_fn, images, labels):
    """Per example: the score max_{j != y} z_j - z_y and whether it is >= 0.

    AutoAttack's Square stops on a margin z_y - max_{j != y} z_j <= 0, ties
    included, so a score >= 0 counts as a success here.
    """
    logits = tf.cast(logits_fn(images), tf.float32)
    scores = losses.margin(logits, labels)
    return scores, scores >= 0.0


def square_loop(
    logits_fn,
    x,
    labels,
    epsilon,
    queries,
    example_seeds,
    p_init=SQUARE_P_INIT,
    rescale_schedule=False,
):
    """Runs the Square attack: the stripes, then `queries` random-search iterations.

    Args:
        logits_fn: Callable mapping images to logits (never differentiated).
        x: Clean images [batch, height, width, channels] in [0, 1].
        labels: Integer labels [batch].
        epsilon: L-infinity radius.
        queries: Random-search iterations after the stripes, >= 1 (AutoAttack's
            n_queries; a Python int or an integer tensor): an example spends at
            most queries + 1 evaluations.
        example_seeds: Integer tensor [batch, 2], one stateless seed pair per
            example (see `default_example_seeds`).
        p_init: Initial fraction of the image covered by a window, in (0, 1].
        rescale_schedule: A Python bool: rescale the p schedule to a
            10,000-query budget (see `p_schedule`); False is AutoAttack's.

    Returns:
        A tuple (images, scores, successes, queries used), per example: the
        best image found (inside the ball and [0, 1]), its score
        max_{j != y} z_j - z_y (higher is stronger), whether the score reached
        >= 0 (misclassified, or tied with another class), and the int32 number
        of queries spent, which is <= queries + 1 and stops growing at the
        first success: what `common.strongest_attack` combines, with
        counts=True. One more evaluation, at x itself, comes first and is not
        counted: an example misclassified there (by argmax) is returned as x
        with 0 queries.
    """
    x = tf.cast(x, tf.float32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    epsilon = tf.cast(epsilon, tf.float32)
    queries = tf.cast(queries, tf.int32)
    example_seeds = tf.cast(example_seeds, tf.int64)
    height, width, channels = tf.shape(x)[1], tf.shape(x)[2], tf.shape(x)[3]

    # Examples misclassified at x (by argmax, as AutoAttack picks the examples
    # to attack) are done before the search starts (no query spent).
    clean_logits = tf.cast(logits_fn(x), tf.float32)
    scores = losses.margin(clean_logits, labels)
    fooled = common.misclassified(clean_logits, labels)
    best = x
    used = tf.zeros_like(labels)
    attacked = tf.where(tf.logical_not(fooled))
    stripes = _stripes(tf.gather_nd(x, attacked), tf.gather_nd(example_seeds, attacked), epsilon)
    stripe_scores, stripe_fooled = _judge(logits_fn, stripes, tf.gather_nd(labels, attacked))
    best = tf.tensor_scatter_nd_update(best, attacked, stripes)
    scores = tf.tensor_scatter_nd_update(scores, attacked, stripe_scores)
    fooled = tf.tensor_scatter_nd_update(fooled, attacked, stripe_fooled)
    used = tf.tensor_scatter_nd_update(used, attacked, tf.ones_like(attacked[:, 0], tf.int32))

    def body(iteration, best, scores, fooled, used):
        # Only the examples still classified correctly are proposed and queried.
        active = tf.where(tf.logical_not(fooled))
        x_active = tf.gather_nd(x, active)
        best_active = tf.gather_nd(best, active)
        side = window_side(p_schedule(iteration, queries, p_init, rescale_schedule), height, width)
        bits = random_bits(
            tf.gather_nd(example_seeds, active), tf.cast(iteration, tf.int64) + 1, channels + 2
        )
        # AutoAttack draws the corner in [0, h - s): the last possible position
        # (the window touching the last row or column) is never drawn, unless s
        # covers the whole side, where the corner is 0.
        top = _uniform_int(bits[:, 0], tf.maximum(height - side, 1))
        left = _uniform_int(bits[:, 1], tf.maximum(width - side, 1))
        signs = _signs(bits[:, 2:])[:, None, None, :]
        rows = tf.range(height)[None, :, None, None]
        columns = tf.range(width)[None, None, :, None]
        top, left = top[:, None, None, None], left[:, None, None, None]
        inside = tf.logical_and(
            tf.logical_and(rows >= top, rows < top + side),
            tf.logical_and(columns >= left, columns < left + side),
        )
        corner = tf.clip_by_value(x_active + epsilon * signs, 0.0, 1.0)
        proposal = tf.where(inside, corner, best_active)
        proposal_scores, proposal_fooled = _judge(logits_fn, proposal, tf.gather_nd(labels, active))
        accept = tf.logical_or(proposal_scores > tf.gather_nd(scores, active), proposal_fooled)
        best = tf.tensor_scatter_nd_update(
            best, active, common.select(accept, proposal, best_active)
        )
        scores = tf.tensor_scatter_nd_update(
            scores, active, tf.where(accept, proposal_scores, tf.gather_nd(scores, active))
        )
        fooled = tf.tensor_scatter_nd_update(fooled, active, proposal_fooled)
        used = tf.tensor_scatter_nd_add(used, active, tf.ones_like(active[:, 0], tf.int32))
        return iteration + 1, best, scores, fooled, used

    def more(iteration, best, scores, fooled, used):
        return tf.logical_and(iteration < queries, tf.logical_not(tf.reduce_all(fooled)))

    _, best, scores, fooled, used = tf.while_loop(
        more, body, [tf.constant(0), best, scores, fooled, used], parallel_iterations=1
    )
    return best, scores, fooled, used


def restart_seeds(example_seeds):
    """The per-example seeds of each restart: restart r uses (first + r, second).

    Restart r of seed s therefore draws what a single run of seed s + r draws,
    as with the random starts of the other attacks.

    Args:
        example_seeds: Integer tensor [batch, 2], the seeds of restart 0.

    Returns:
        A function restart index -> seeds [batch, 2] (for `common.strongest_attack`).
    """
    example_seeds = tf.cast(example_seeds, tf.int64)

    def start(restart):
        return example_seeds + tf.stack([tf.cast(restart, tf.int64), tf.constant(0, tf.int64)])

    return start


def _square_graph(
    model, x, y, epsilon, queries, p_init, restarts, example_seeds, rescale_schedule=False
):
    logits_fn = common.logits_function(model)
    x = tf.cast(x, tf.float32)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)

    def loop(seeds, _):
        return square_loop(logits_fn, x, y, epsilon, queries, seeds, p_init, rescale_schedule)

    strongest = common.strongest_attack(
        loop, restart_seeds(example_seeds), x, restarts, counts=True
    )
    return strongest.images, strongest.spent


_COMPILED_SQUARE = weakref.WeakKeyDictionary()


def check_p_init(p_init):
    """Validates the initial window fraction: a number in (0, 1]."""
    return checks.check_range(p_init, "p_init", 0.0, 1.0, include_low=False)


def square(
    model,
    x,
    y,
    epsilon,
    queries=SQUARE_QUERIES,
    p_init=SQUARE_P_INIT,
    restarts=1,
    seed=0,
    example_seeds=None,
    rescale_schedule=False,
):
    """The L-infinity Square attack with the margin loss (AutoAttack's settings by default).

    Args:
        model: A Keras model (called with training=False) or a callable returning logits.
        x: Images [batch, height, width, channels] in [0, 1].
        y: Integer labels [batch].
        epsilon: L-infinity radius in [0, 1].
        queries: Random-search iterations per example and restart after the
            stripes, >= 1 (AutoAttack's n_queries, 5,000).
        p_init: Initial fraction of the image covered by a window, in (0, 1].
        restarts: Runs >= 1, composed by `common.strongest_attack`: per example
            the strongest result of any run is kept.
        seed: Integer seed of `default_example_seeds`, used without `example_seeds`.
        example_seeds: Optional integer tensor [batch, 2], one seed pair per
            example; restart r adds r to the first (`restart_seeds`).
        rescale_schedule: Rescale the p schedule to a 10,000-query budget
            (`p_schedule`); False, AutoAttack's setting, halves p at the raw
            iterations.

    Returns:
        Adversarial images with the shape of x, inside the ball and [0, 1]: per
        example the misclassified image with the highest margin any restart
        found, or the highest-margin image where none was misclassified.

    Raises:
        ValueError: If an argument is out of range (the message names it).
    """
    epsilon = checks.check_epsilon(epsilon)
    checks.check_count(queries, "queries", 1)
    p_init = check_p_init(p_init)
    checks.check_count(restarts, "restarts", 1)
    x = checks.check_image_tensor(x)
    if example_seeds is None:
        example_seeds = default_example_seeds(tf.shape(x)[0], int(seed))
    example_seeds = tf.convert_to_tensor(example_seeds)
    if example_seeds.shape.rank is not None and (
        example_seeds.shape.rank != 2 or example_seeds.shape[-1] not in (None, 2)
    ):
        raise ValueError(f"example_seeds must have shape [batch, 2], got {example_seeds.shape}.")
    arguments = (
        x,
        tf.convert_to_tensor(y),
        tf.constant(epsilon, tf.float32),
        tf.constant(int(queries), tf.int32),
        p_init,
        tf.constant(int(restarts), tf.int32),
        tf.cast(example_seeds, tf.int64),
        bool(rescale_schedule),
    )
    if tf.inside_function():
        result, _ = _square_graph(model, *arguments)
    else:
        compiled = common.compiled_for(_COMPILED_SQUARE, model, _square_graph)
        result, _ = compiled(model, *arguments)
    return tf.stop_gradient(result)


def run_square(spec, logits_fn, x, labels, epsilon, seed, example_indices, num_classes):
    """An evaluation's `square`: `square_loop` with the example seeds (seed, index).

    Args: as `deat_tf.attacks.run_fgsm`; `spec.steps` is the query budget after the stripes.

    Returns:
        An `Outcome` with the queries each example spent.
    """
    seeds = tf.stack(
        [
            tf.fill(tf.shape(example_indices), tf.cast(seed, tf.int64)),
            tf.cast(example_indices, tf.int64),
        ],
        axis=1,
    )

    def loop(restart_seeds, _):
        return square_loop(logits_fn, x, labels, epsilon, spec.steps, restart_seeds)

    strongest = common.strongest_attack(loop, restart_seeds(seeds), x, spec.restarts, counts=True)
    return common.outcome_of(strongest)
