"""L-infinity attacks on image classifiers, as plain TensorFlow functions.

Every attack here works on images in [0, 1] and on any Keras model (called with
`training=False`) or any callable that maps a batch of images to logits:

    x_adv = attacks.pgd(model, x, y, epsilon=8 / 255, step_size=2 / 255, steps=10)
    x_adv = attacks.fgsm(model, x, y, epsilon=8 / 255)
    x_adv = attacks.apgd(model, x, y, epsilon=8 / 255, steps=100)             # APGD-CE
    x_adv = attacks.apgd_targeted(model, x, y, epsilon=8 / 255, steps=100)    # APGD-T

The attacks are composed from small parts that the adversarial train step and
the evaluation reuse:

- a start: `initial_perturbation` draws a random start (uniform, normal,
  Bernoulli or zero); `batch_starts` and `example_starts` give the start of
  each restart, seeded per batch or per example;
- `project` clips an iterate into the epsilon-ball around x and into [0, 1];
- a loop: `pgd_loop` runs signed-gradient ascent steps in a `tf.while_loop`
  (so the step count may be a variable and changing it does not retrace) and
  returns the last iterate, as adversarial training needs; `pgd_search` and
  `apgd.apgd_loop` return the strongest iterate they saw;
- `strongest_attack`, the one composer: it runs a loop from the start of every
  restart (and towards every target of a targeted attack) and keeps, per
  example, the strongest result. `pgd`, `apgd`, `apgd_targeted`, the FAB and
  Square attacks (`deat_tf.fab`, `deat_tf.square`) and `deat_tf.evaluation`
  differ only in the loop and the start they give it.

The objectives (cross-entropy, the CW margin, DLR, ...) live in
`deat_tf.losses`; `per_example_loss` and `margin` are re-exported here, and the
Auto-PGD names (`apgd`, `apgd_targeted`, `apgd_loop`, `apgd_checkpoints`,
`dlr_loss`, ...) resolve to `deat_tf.apgd` and `deat_tf.losses`.

Conventions shared by every attack:

- Per-example losses are summed, not averaged, before the gradient: the sign step
  does not care, and the gradient of each example does not shrink with the batch.
- The iterate is the adversarial image itself, clipped to the ball and then to
  [0, 1] after every step, so `x_adv` is inside both sets by construction.
- The result is wrapped in `tf.stop_gradient`: it is data, not part of a graph.
- Keras models are called with `training=False`: BatchNorm uses its moving
  statistics and updates nothing, dropout is off. That is the standard for
  evaluation. The training-time attacks of `AdversarialModel` instead use batch
  statistics without updating the moving ones (see `adversarial_model.py`).
- Searches return, per example, the strongest iterate they saw (misclassified
  first, then highest loss) across steps and restarts, so with the same seed
  more restarts can never give a weaker attack (nor, for `pgd`, more steps).
  Targeted attacks count any misclassification as success, as AutoAttack
  does, so their result need not be classified as the target.

When called eagerly, `pgd`, `apgd` and `apgd_targeted` run through a cached
`tf.function` per model; inside a `tf.function` they build their ops in place.
"""

import contextlib
import weakref

import keras
import tensorflow as tf

from deat_tf import checks, losses
from deat_tf.losses import margin, per_example_loss  # noqa: F401 - part of this module's API

LOSSES = losses.LOSSES
INITIALIZATIONS = ("uniform", "normal", "bernoulli", "zero")

# Names that moved to `deat_tf.apgd` and `deat_tf.losses`; `attacks.NAME` keeps working.
_APGD_NAMES = (
    "APGD_MOMENTUM",
    "APGD_RHO",
    "APGD_TARGET_CLASSES",
    "apgd",
    "apgd_checkpoints",
    "apgd_loop",
    "apgd_targeted",
)
_LOSS_NAMES = (
    "APGD_LOSSES",
    "attack_objective",
    "dlr_loss",
    "targeted_dlr_loss",
    "top_wrong_classes",
)


def __getattr__(name):
    # Resolved lazily: deat_tf.apgd imports this module, so importing it here would be circular.
    if name in _APGD_NAMES:
        from deat_tf import apgd

        return getattr(apgd, name)
    if name in _LOSS_NAMES:
        return getattr(losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_step_size(epsilon, steps):
    """The PGD step used when none is given: 2.5 * epsilon / steps (Madry et al.).

    With that step, `steps` steps can cross the ball and come back part of the way.

    Args:
        epsilon: L-infinity radius.
        steps: Number of attack steps (0 counts as 1).

    Returns:
        The step size as a float.
    """
    return 2.5 * float(epsilon) / max(int(steps), 1)


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


# ---------------------------------------------------------------------- loops


def pgd_loop(
    logits_fn,
    x,
    labels,
    x_start,
    epsilon,
    step_size,
    steps,
    loss="ce",
    steps_after_misclassified=None,
):
    """Runs `steps` projected signed-gradient steps from `x_start`; returns the last iterate.

    This is the attack of adversarial training (PGD-AT, TRADES, MART), which
    trains on the final iterate.

    With `steps_after_misclassified` = tau, an example stops moving once it has
    been misclassified at more than tau of its iterates: before each step, the
    forward that gives the step's gradient also says which examples are
    misclassified at their current iterate (the start included); an example
    takes the step if it is classified correctly there or if this is at most
    its tau-th misclassified iterate. tau = 0 is the PGD training of Wong et
    al.'s MNIST code (only correctly classified examples step), tau > 0 the
    early-stopped PGD of friendly adversarial training (Zhang et al. 2020).
    The check is made at every step, so an example whose classification
    depends on the others' iterates (batch statistics) may step again, as in
    Wong et al.'s code. The last iterate is returned unchecked, and every
    step still runs the whole batch: stopping saves no computation.

    Args:
        logits_fn: Callable mapping images to logits.
        x: Clean images in [0, 1].
        labels: Integer labels [batch].
        x_start: The starting iterate, already inside the ball and [0, 1].
        epsilon: L-infinity radius.
        step_size: Step size alpha.
        steps: Number of steps: a Python int, a tensor or a variable.
        loss: "ce", "cw" or a callable (logits, labels) -> losses [batch].
        steps_after_misclassified: tau, an int >= 0 (Python or tensor), or
            None for every example to take every step.

    Returns:
        The final iterate.
    """
    steps = tf.cast(steps, tf.int32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)

    if steps_after_misclassified is None:

        def body(step, x_adv):
            _, _, gradient = loss_and_gradient(logits_fn, x_adv, labels, loss)
            return step + 1, project(signed_step(x_adv, gradient, step_size), x, epsilon)

        _, x_adv = tf.while_loop(
            lambda step, _: step < steps, body, [tf.constant(0), x_start], parallel_iterations=1
        )
        return x_adv

    allowance = tf.cast(steps_after_misclassified, tf.int32)

    def stopping_body(step, x_adv, misclassified_iterates):
        logits, _, gradient = loss_and_gradient(logits_fn, x_adv, labels, loss)
        wrong = misclassified(logits, labels)
        misclassified_iterates += tf.cast(wrong, tf.int32)
        moving = tf.logical_or(tf.logical_not(wrong), misclassified_iterates <= allowance)
        stepped = project(signed_step(x_adv, gradient, step_size), x, epsilon)
        return step + 1, select(moving, stepped, x_adv), misclassified_iterates

    _, x_adv, _ = tf.while_loop(
        lambda step, *_: step < steps,
        stopping_body,
        [tf.constant(0), x_start, tf.zeros([tf.shape(x)[0]], tf.int32)],
        parallel_iterations=1,
    )
    return x_adv


def pgd_search(logits_fn, x, labels, x_start, epsilon, step_size, steps, loss="ce"):
    """Runs `steps` PGD steps and returns, per example, the strongest iterate seen.

    The final iterate is evaluated too, so the budget is `steps` gradients plus
    one forward.

    Args:
        logits_fn: Callable mapping images to logits.
        x: Clean images in [0, 1].
        labels: Integer labels [batch].
        x_start: The starting iterate, already inside the ball and [0, 1].
        epsilon: L-infinity radius.
        step_size: Step size alpha.
        steps: Number of steps: a Python int, a tensor or a variable.
        loss: "ce" or "cw".

    Returns:
        A tuple (strongest iterate, its per-example loss, whether any iterate
        was misclassified).
    """
    steps = tf.cast(steps, tf.int32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    batch = tf.shape(x)[0]

    def keep(x_adv, logits, per_example, best, best_losses, best_misclassified):
        # Float64 networks give float64 losses; the loop's record stays float32.
        per_example = tf.cast(per_example, best_losses.dtype)
        wrong = misclassified(logits, labels)
        stronger = is_stronger(per_example, wrong, best_losses, best_misclassified)
        return (
            select(stronger, x_adv, best),
            tf.where(stronger, per_example, best_losses),
            tf.logical_or(best_misclassified, wrong),
        )

    def body(step, x_adv, best, best_losses, best_misclassified):
        logits, per_example, gradient = loss_and_gradient(logits_fn, x_adv, labels, loss)
        best, best_losses, best_misclassified = keep(
            x_adv, logits, per_example, best, best_losses, best_misclassified
        )
        x_adv = project(signed_step(x_adv, gradient, step_size), x, epsilon)
        return step + 1, x_adv, best, best_losses, best_misclassified

    initial = [
        tf.constant(0),
        x_start,
        x_start,
        tf.fill([batch], tf.float32.min),
        tf.zeros([batch], tf.bool),
    ]
    _, x_adv, best, best_losses, best_misclassified = tf.while_loop(
        lambda step, *_: step < steps, body, initial, parallel_iterations=1
    )
    logits = logits_fn(x_adv)
    return keep(
        x_adv, logits, per_example_loss(logits, labels, loss), best, best_losses, best_misclassified
    )


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
        A tuple (strongest images, their losses, misclassified by any run, and a
        bool tensor [runs, batch]: misclassified by run i), with the summed
        per-example count last when `counts` is set.
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
    result = (best, best_losses, best_misclassified, history.stack())
    return result + (spent,) if counts else result


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
        A tuple (strongest images, their losses, misclassified by any run, bool
        tensor [runs, batch]: misclassified by run i), with the per-example
        count summed over runs last when `counts` is set.
    """
    if targets is None:
        return strongest_over_runs(lambda restart: loop(start(restart), None), restarts, x, counts)

    def run(index):
        target_labels = tf.gather(targets, index // restarts, axis=1)
        return loop(start(index if fresh_starts else index % restarts), target_labels)

    return strongest_over_runs(run, targets.shape[1] * restarts, x, counts)


# ------------------------------------------------------------------- attacks


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


def _pgd_graph(model, x, y, epsilon, step_size, steps, restarts, seed, loss, random_start):
    logits_fn = logits_function(model)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)

    def loop(x_start, _):
        return pgd_search(logits_fn, x, y, x_start, epsilon, step_size, steps, loss)

    best, _, _, _ = strongest_attack(
        loop, batch_starts(x, epsilon, seed, random_start), x, restarts
    )
    return best


_COMPILED_PGD = weakref.WeakKeyDictionary()


def pgd(model, x, y, epsilon, step_size, steps, restarts=1, loss="ce", random_start=True, seed=0):
    """Projected gradient descent (Madry et al.) in the L-infinity ball.

    Args:
        model: A Keras model (called with training=False) or a callable returning logits.
        x: Images [batch, height, width, channels] in [0, 1].
        y: Integer labels [batch].
        epsilon: L-infinity radius in [0, 1].
        step_size: Step size alpha > 0.
        steps: Number of steps >= 0 (a Python int or an integer tensor/variable).
        restarts: Number of random restarts >= 1; the strongest per example is kept.
        loss: "ce" (cross-entropy) or "cw" (logit margin, as in CW-k evaluations).
        random_start: Start each restart from a uniform draw in the ball (the
            first restart too); if False every restart starts at x.
        seed: Integer seed of the random starts; restart i draws the start that
            a single restart with seed + i draws.

    Returns:
        Adversarial images with the shape of x, inside the ball and [0, 1].
    """
    epsilon = checks.check_epsilon(epsilon)
    step_size = checks.check_positive(step_size, "step_size")
    if not tf.is_tensor(steps) and not isinstance(steps, tf.Variable):
        checks.check_count(steps, "steps", 0)
    checks.check_count(restarts, "restarts", 1)
    checks.check_choice(loss, LOSSES, "loss")
    arguments = (
        checks.check_image_tensor(x),
        tf.convert_to_tensor(y),
        tf.constant(epsilon, tf.float32),
        tf.constant(step_size, tf.float32),
        tf.cast(tf.convert_to_tensor(steps), tf.int32),
        tf.constant(int(restarts), tf.int32),
        tf.constant(int(seed), tf.int64),
    )
    if tf.inside_function():
        result = _pgd_graph(model, *arguments, loss, bool(random_start))
    else:
        compiled = compiled_for(_COMPILED_PGD, model, _pgd_graph)
        result = compiled(model, *arguments, loss, bool(random_start))
    return tf.stop_gradient(result)


def fgsm(model, x, y, epsilon, step_size=None, loss="ce", random_start=False, seed=0):
    """Fast gradient sign method: one signed step, optionally from a random start.

    With `random_start=True` and `step_size=1.25 * epsilon` this is the attack of
    FGSM-RS ("fast" adversarial training, Wong et al. 2020).

    Args:
        model: A Keras model (called with training=False) or a callable returning logits.
        x: Images [batch, height, width, channels] in [0, 1].
        y: Integer labels [batch].
        epsilon: L-infinity radius in [0, 1].
        step_size: Step size; defaults to epsilon.
        loss: "ce" or "cw".
        random_start: Start from a uniform draw in the ball instead of x.
        seed: Integer seed of the random start.

    Returns:
        Adversarial images with the shape of x, inside the ball and [0, 1].
    """
    epsilon = checks.check_epsilon(epsilon)
    step_size = epsilon if step_size is None else checks.check_positive(step_size, "step_size")
    checks.check_choice(loss, LOSSES, "loss")
    x = checks.check_image_tensor(x)
    if epsilon == 0.0:
        return tf.stop_gradient(x)
    start = batch_starts(x, epsilon, int(seed), random_start)(0)
    _, _, gradient = loss_and_gradient(logits_function(model), start, tf.reshape(y, [-1]), loss)
    return tf.stop_gradient(project(signed_step(start, gradient, step_size), x, epsilon))
