"""The parts every attack is built from: starts, projection, the strongest iterate, restarts.

`deat_tf.attacks` (the package docstring) says how the parts fit together and
which conventions every attack shares.
"""

import contextlib
import typing

import keras
import tensorflow as tf

from deat_tf import checks, losses
from deat_tf.losses import per_example_loss

LOSSES = losses.LOSSES
INITIALIZATIONS = ("uniform", "normal", "bernoulli", "zero")


# ---------------------------------------------------------------------- parts


def as_dtype(value, dtype):
    """A number or tensor as a tensor of `dtype`.

    A Python number becomes a constant of `dtype` directly: `tf.cast` would
    first make it a float32 tensor, so that 0.3 in a float64 computation would
    be float32's 0.30000001.

    Args:
        value: A Python number or a tensor.
        dtype: The dtype wanted.

    Returns:
        A tensor of `dtype`.
    """
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype)
    return tf.cast(value, dtype)


def project(x_adv, x, epsilon):
    """Clips `x_adv` into the epsilon-ball around `x`, then into [0, 1].

    The ball is clipped first: since x is in [0, 1], clipping the result to
    [0, 1] afterwards cannot leave the ball.

    Args:
        x_adv: Candidate adversarial images.
        x: Clean images in [0, 1].
        epsilon: L-infinity radius (scalar).

    Returns:
        The projected images.
    """
    epsilon = as_dtype(epsilon, x.dtype)
    x_adv = tf.clip_by_value(x_adv, x - epsilon, x + epsilon)
    return tf.clip_by_value(x_adv, 0.0, 1.0)


def initial_perturbation(shape, epsilon, kind="uniform", scale=None, seed=None, dtype=tf.float32):
    """Draws a random start inside the epsilon-ball.

    Args:
        shape: Shape of the perturbation (the image batch shape).
        epsilon: L-infinity radius; the draw is clipped to [-epsilon, epsilon].
        kind: "uniform" U(-scale, scale), "normal" scale * N(0, 1), "bernoulli"
            +-scale with equal odds, or "zero".
        scale: Size of the draw; defaults to epsilon.
        seed: Optional stateless seed, an int tensor of shape [2]. Without it the
            global TensorFlow random state is used.
        dtype: Float dtype of the result.

    Returns:
        A perturbation tensor of `shape`.
    """
    checks.check_choice(kind, INITIALIZATIONS, "initialization")
    scale = epsilon if scale is None else scale
    scale = as_dtype(scale, dtype)
    epsilon = as_dtype(epsilon, dtype)
    if kind == "zero":
        return tf.zeros(shape, dtype)
    if kind == "uniform":
        if seed is None:
            noise = tf.random.uniform(shape, -1.0, 1.0, dtype=dtype)
        else:
            noise = tf.random.stateless_uniform(shape, seed, -1.0, 1.0, dtype=dtype)
    elif kind == "normal":
        if seed is None:
            noise = tf.random.normal(shape, dtype=dtype)
        else:
            noise = tf.random.stateless_normal(shape, seed, dtype=dtype)
    else:
        if seed is None:
            bits = tf.random.uniform(shape, 0, 2, dtype=tf.int32)
        else:
            bits = tf.random.stateless_uniform(shape, seed, 0, 2, dtype=tf.int32)
        noise = tf.cast(2 * bits - 1, dtype)
    return tf.clip_by_value(noise * scale, -epsilon, epsilon)


def per_example_perturbation(x, example_seeds, epsilon):
    """A uniform draw in the epsilon-ball with its own stateless seed per example.

    The draw of an example depends only on its seed, not on the batch it sits
    in: an evaluation seeded by example index gives the same result for any
    batch size, batch order or number of replicas.

    Args:
        x: Images [batch, ...]; the draw has their shape.
        example_seeds: Integer tensor [batch, 2], one stateless seed per example.
        epsilon: L-infinity radius.

    Returns:
        A float32 perturbation in [-epsilon, epsilon] with the shape of x.
    """
    image_shape = x.shape[1:]
    if not image_shape.is_fully_defined():
        image_shape = tf.shape(x)[1:]
    epsilon = tf.cast(epsilon, tf.float32)
    noise = tf.map_fn(
        lambda seed: tf.random.stateless_uniform(image_shape, seed, -1.0, 1.0),
        tf.cast(example_seeds, tf.int64),
        fn_output_signature=tf.float32,
    )
    return noise * epsilon


def signed_step(x_adv, gradient, step_size):
    """One ascent step along the sign of the gradient (the L-infinity steepest step)."""
    return x_adv + as_dtype(step_size, x_adv.dtype) * tf.sign(gradient)


def loss_and_gradient(logits_fn, x_adv, labels, loss="ce"):
    """Per-example losses at `x_adv` and the gradient of their sum w.r.t. `x_adv`.

    Args:
        logits_fn: Callable mapping images to logits.
        x_adv: Images at which to evaluate.
        labels: Integer labels [batch].
        loss: Attack loss name or callable (see `losses.per_example_loss`).

    Returns:
        (logits, per-example losses, gradient).
    """
    with tf.GradientTape() as tape:
        tape.watch(x_adv)
        logits = logits_fn(x_adv)
        per_example = per_example_loss(logits, labels, loss)
        total = tf.reduce_sum(per_example)
    return logits, per_example, tape.gradient(total, x_adv)


def misclassified(logits, labels):
    """Per example: does the argmax differ from the label?"""
    return tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)


def is_stronger(new_losses, new_misclassified, best_losses, best_misclassified):
    """Per example: is the new candidate a stronger attack than the best so far?

    Misclassified beats correctly classified; between equals, the higher loss wins.
    """
    return tf.logical_or(
        tf.logical_and(new_misclassified, tf.logical_not(best_misclassified)),
        tf.logical_and(tf.equal(new_misclassified, best_misclassified), new_losses > best_losses),
    )


def select(condition, new, old):
    """Per example (leading axis), `new` where `condition` holds, else `old`."""
    mask = tf.reshape(condition, [-1] + [1] * (new.shape.rank - 1))
    return tf.where(mask, new, old)


# ------------------------------------------------------------------- composer


def replica_start(x, epsilon, seed, kind="uniform", scale=None, clip_to_images=True):
    """A random start for this replica's part of a global batch, the same for any replica count.

    Each replica draws the start of the whole (evenly split) global batch from
    one stateless seed and keeps its own slice, so replicas get different
    noise and 1 or N replicas train on the same starts. The extra draws cost
    little next to a forward pass. The noise is drawn in the dtype of `x`.

    Args:
        x: This replica's clean images.
        epsilon: L-infinity radius.
        seed: Stateless seed, an int64 tensor of shape [2].
        kind: Initialization kind (see `initial_perturbation`).
        scale: Size of the draw (None: epsilon).
        clip_to_images: Whether the start is also clipped into [0, 1]; False
            leaves x + noise as drawn (inside the ball, possibly outside [0, 1]).

    Returns:
        x plus its slice of the noise, projected into the ball (and [0, 1]).
    """
    context = tf.distribute.get_replica_context()
    replicas = 1 if context is None else context.num_replicas_in_sync
    replica = 0 if context is None else context.replica_id_in_sync_group
    local_batch = tf.shape(x)[0]
    shape = tf.concat([[local_batch * replicas], tf.shape(x)[1:]], axis=0)
    noise = initial_perturbation(shape, epsilon, kind, scale, seed=seed, dtype=x.dtype)
    offset = tf.cast(replica, tf.int32) * local_batch
    start = x + noise[offset : offset + local_batch]
    if not clip_to_images:
        # The noise is already inside the ball: only [0, 1] is left out.
        return start
    return project(start, x, epsilon)


def batch_starts(x, epsilon, seed, random_start=True):
    """Starts of each restart, one uniform draw per batch.

    Restart i of seed s draws what a single restart of seed s + i draws.

    Args:
        x: Clean images.
        epsilon: L-infinity radius.
        seed: Integer seed (a Python int or a scalar tensor).
        random_start: If False every restart starts at x.

    Returns:
        A function restart index -> starting images.
    """

    def start(restart):
        if not random_start:
            return x
        restart_seed = tf.stack([tf.cast(seed, tf.int64) + tf.cast(restart, tf.int64), 0])
        noise = initial_perturbation(tf.shape(x), epsilon, "uniform", seed=restart_seed)
        return project(x + noise, x, epsilon)

    return start


def example_starts(x, epsilon, seed, example_indices):
    """Starts of each restart, one uniform draw per example seeded by (seed + restart, index).

    An example's start does not depend on the batch it sits in, so results are
    the same for any batch size, batch order or number of replicas.

    Args:
        x: Clean images [batch, ...].
        epsilon: L-infinity radius.
        seed: Integer seed.
        example_indices: Integer tensor [batch], the examples' positions in the dataset.

    Returns:
        A function restart index -> starting images.
    """
    example_indices = tf.cast(example_indices, tf.int64)

    def start(restart):
        restart_seed = tf.cast(seed, tf.int64) + tf.cast(restart, tf.int64)
        example_seeds = tf.stack(
            [tf.fill(tf.shape(example_indices), restart_seed), example_indices], axis=1
        )
        noise = per_example_perturbation(x, example_seeds, epsilon)
        return project(x + noise, x, epsilon)

    return start


class Strongest(typing.NamedTuple):
    """What a multi-run attack returns, per example.

    Attributes:
        images: The strongest candidate over the runs (misclassified first, then highest loss).
        losses: Its loss.
        misclassified: Whether any run misclassified the example.
        fooled_by_run: Bool [runs, batch]: misclassified by run i.
        spent: What the runs spent, summed (Square's queries); zeros when not counted.
    """

    images: tf.Tensor
    losses: tf.Tensor
    misclassified: tf.Tensor
    fooled_by_run: tf.Tensor
    spent: tf.Tensor


def strongest_over_runs(run, runs, x, counts=False):
    """Calls `run(i)` for i in [0, runs) and keeps, per example, the strongest result.

    The runs share one traced body (a `tf.while_loop`).

    Args:
        run: Callable taking a scalar int32 tensor and returning (candidate
            images, per-example losses, per-example misclassified), followed,
            with `counts`, by a per-example int32 count of what the run spent
            (Square's queries).
        runs: Number of runs >= 1 (a Python int or an int tensor).
        x: The clean images (the shape and dtype of the candidates).
        counts: Whether `run` returns the count; it is summed over the runs.

    Returns:
        A `Strongest`; its `spent` is zero without `counts`.
    """
    batch = tf.shape(x)[0]
    history = tf.TensorArray(tf.bool, size=tf.cast(runs, tf.int32), element_shape=[None])

    def body(index, best, best_losses, best_misclassified, history, spent):
        candidate, candidate_losses, wrong, *count = run(index)
        stronger = is_stronger(candidate_losses, wrong, best_losses, best_misclassified)
        return (
            index + 1,
            select(stronger, candidate, best),
            tf.where(stronger, candidate_losses, best_losses),
            tf.logical_or(best_misclassified, wrong),
            history.write(index, wrong),
            spent + tf.cast(count[0], tf.int32) if counts else spent,
        )

    initial = [
        tf.constant(0),
        x,
        tf.fill([batch], tf.float32.min),
        tf.zeros([batch], tf.bool),
        history,
        tf.zeros([batch], tf.int32),
    ]
    _, best, best_losses, best_misclassified, history, spent = tf.while_loop(
        lambda index, *_: index < runs, body, initial, parallel_iterations=1
    )
    return Strongest(best, best_losses, best_misclassified, history.stack(), spent)


def strongest_attack(loop, start, x, restarts, targets=None, counts=False, fresh_starts=False):
    """Runs `loop` from every restart's start (towards every target) and keeps the strongest.

    This is the one composition of every multi-run attack: PGD, APGD, FAB and
    Square restarts, and the target classes of APGD-T and FAB-T (runs ordered
    target by target, each with all its restarts).

    Args:
        loop: Callable (start, target labels [batch] or None) returning
            (images, per-example losses, per-example misclassified), and with
            `counts` a per-example int32 count of what the run spent.
        start: Callable restart index -> what the loop starts from: start
            images (`batch_starts`, `example_starts`, `fab.restart_starts`), or
            the restart's per-example seeds (`square.restart_seeds`).
        x: The clean images.
        restarts: Restarts per target, >= 1 (Python int or scalar tensor).
        targets: Optional integer tensor [batch, targets] with a static second
            dimension: a targeted attack runs towards each column.
        counts: Whether `loop` returns a count; the sum over runs is returned last.
        fresh_starts: With targets, call `start` with the run index (target *
            restarts + restart), so that every target draws its own starts
            (AutoAttack's APGD-T); otherwise with the restart index, so that
            restart r of every target starts at the same point (FAB-T, whose
            restart 0 is x).

    Returns:
        A `Strongest`; its `spent` is zero without `counts`.
    """
    if targets is None:
        return strongest_over_runs(lambda restart: loop(start(restart), None), restarts, x, counts)

    def run(index):
        target_labels = tf.gather(targets, index // restarts, axis=1)
        return loop(start(index if fresh_starts else index % restarts), target_labels)

    return strongest_over_runs(run, targets.shape[1] * restarts, x, counts)


# ------------------------------------------------------------------- models


def logits_function(model):
    """Returns a callable images -> logits for a Keras model or a plain callable.

    Keras models are called with `training=False` (see the module docstring).
    """
    if isinstance(model, keras.layers.Layer):
        return lambda images: model(images, training=False)
    if callable(model):
        return model
    raise ValueError(f"model must be a Keras model or a callable returning logits, got {model!r}.")


def compiled_for(cache, model, graph_function):
    """The compiled attack for `model`, traced once per model and cached.

    Autograph is off: the attacks use tf.while_loop, not Python control flow on
    tensors, and converting their loops costs seconds of tracing.

    Args:
        cache: A `weakref.WeakKeyDictionary` owned by the attack.
        model: The attacked model (the cache key).
        graph_function: The attack's graph-building function.

    Returns:
        A `tf.function` of `graph_function`.
    """
    try:
        return cache[model]
    except (KeyError, TypeError):
        pass
    compiled = tf.function(graph_function, reduce_retracing=True, autograph=False)
    # Objects without weak references cannot be cached: they are compiled per call.
    with contextlib.suppress(TypeError):
        cache[model] = compiled
    return compiled


# --------------------------------------------------------------- evaluation runs


class Outcome(typing.NamedTuple):
    """What one attack of an evaluation returns for a batch (the `run` of its kinds row).

    Attributes:
        images: The adversarial images, inside the ball and [0, 1].
        fooled_by_run: Bool [runs, batch]: misclassified by run i (the attack's own bookkeeping).
        queries: Int32 [batch]: model queries spent (Square's); zeros for the other attacks.
    """

    images: tf.Tensor
    fooled_by_run: tf.Tensor
    queries: tf.Tensor


def outcome_of(strongest):
    """The `Outcome` of a multi-run attack, from what `strongest_attack` returned."""
    return Outcome(strongest.images, strongest.fooled_by_run, strongest.spent)


def no_queries(x):
    """A zero query count per example of x."""
    return tf.zeros([tf.shape(x)[0]], tf.int32)


def top_targets(logits_fn, x, labels, count):
    """The `count` most likely wrong classes at x, [batch, count]; None when count is 0."""
    return losses.top_wrong_classes(logits_fn(x), labels, count) if count else None
