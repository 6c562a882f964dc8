"""Auto-PGD (Croce and Hein 2020): APGD-CE, APGD-DLR and the targeted APGD-T.

"Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks": PGD without a step size to tune. Every example starts
at step 2 * epsilon and halves it at fixed checkpoints of the budget when its
progress stalls; steps carry momentum 0.75; a halving jumps back to the best
point seen.

    x_adv = attacks.apgd(model, x, y, epsilon=8 / 255, steps=100)              # APGD-CE
    x_adv = attacks.apgd(model, x, y, epsilon=8 / 255, loss="dlr")             # APGD-DLR
    x_adv = attacks.apgd_targeted(model, x, y, epsilon=8 / 255, steps=100)     # APGD-T

The public functions are reachable as `deat_tf.attacks.apgd` and so on. The
losses (cross-entropy, DLR, targeted DLR) are in `deat_tf.losses`; restarts and
targets are composed by `common.strongest_attack`, like every other attack.
"""

import typing
import weakref

import tensorflow as tf

from deat_tf import checks, losses
from deat_tf.attacks import common

APGD_MOMENTUM = 0.75
APGD_RHO = 0.75
APGD_TARGET_CLASSES = 9


def apgd_checkpoints(steps):
    """The iterations at which APGD may halve its step size, as AutoAttack computes them.

    The paper's checkpoints are w_j = ceil(p_j * steps) with p_0 = 0, p_1 = 0.22
    and p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06). AutoAttack's code
    (`autopgd_base.py`) computes them in integers: the first window is
    max(int(0.22 N), 1) iterations, and each next one is shorter by
    max(int(0.03 N), 1) down to max(int(0.06 N), 1). For N = 100 both give 22,
    41, 57, 70, 80, 87, 93, 99; for other N they can differ (N = 50: 11, 21, 30,
    38, 45 here, against 11, 21, 29, 35, 40, 44, 47), and this function follows
    the code.

    Args:
        steps: The iteration budget N (a Python int >= 0).

    Returns:
        A sorted list of distinct ints in (0, steps). AutoAttack also checks at
        iteration N itself where a window ends there; that check cannot change
        the result, so it is left out.
    """
    steps = checks.check_count(steps, "steps", 0)
    window = max(int(0.22 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    decrease = max(int(0.03 * steps), 1)
    checkpoints = []
    iteration = window
    while iteration < steps:
        checkpoints.append(iteration)
        window = max(window - decrease, shortest)
        iteration += window
    return checkpoints


def apgd_start(x, noise, epsilon):
    """AutoAttack's APGD start: x + epsilon * t / max|t|, clipped to [0, 1].

    Args:
        x: Clean images [batch, ...] in [0, 1].
        noise: A draw of the shape of x, uniform in a ball around 0 (per example
            only its direction matters: it is rescaled so that its largest
            coordinate has size epsilon, as AutoAttack rescales 2 U(0, 1) - 1).
        epsilon: L-infinity radius.

    Returns:
        The start, inside the ball and [0, 1].
    """
    axes = list(range(1, x.shape.rank))
    noise = tf.cast(noise, x.dtype)
    epsilon = _as_dtype(epsilon, x.dtype)
    largest = tf.reduce_max(tf.abs(noise), axis=axes, keepdims=True)
    # AutoAttack adds 1e-12 to the norm; it only matters for an all-zero draw.
    start = x + epsilon * noise / (largest + 1e-12)
    return common.project(start, x, epsilon)


def _as_dtype(value, dtype):
    # tf.cast of a Python float goes through float32 (0.1 would become 0.10000000149).
    return tf.cast(value, dtype) if tf.is_tensor(value) else tf.constant(value, dtype)


class _LoopState(typing.NamedTuple):
    """APGD's per-example loop state (a NamedTuple: tf.while_loop carries it as is).

    Attributes:
        current: The iterate whose loss and gradient the next iteration computes.
        previous_iterate: The iterate before it (for the momentum term).
        step_size: Per-example step, halved at checkpoints.
        previous_loss: The loss of the iterate before (0 at the start, as
            AutoAttack's zero-initialised loss history).
        increases: Loss increases counted since the last checkpoint.
        best: The highest-loss iterate so far (AutoAttack's x_best).
        best_loss: Its loss.
        best_gradient: Its gradient (the jump back restores both).
        loss_at_check: best_loss at the last checkpoint.
        halved_at_check: Whether the step was halved at the last checkpoint.
        strongest: The strongest iterate (misclassified first, then highest loss).
        strongest_loss: Its loss.
        strongest_misclassified: Whether any iterate so far was misclassified.
    """

    current: tf.Tensor
    previous_iterate: tf.Tensor
    step_size: tf.Tensor
    previous_loss: tf.Tensor
    increases: tf.Tensor
    best: tf.Tensor
    best_loss: tf.Tensor
    best_gradient: tf.Tensor
    loss_at_check: tf.Tensor
    halved_at_check: tf.Tensor
    strongest: tf.Tensor
    strongest_loss: tf.Tensor
    strongest_misclassified: tf.Tensor


def apgd_loop(
    logits_fn,
    x,
    labels,
    x_start,
    epsilon,
    steps,
    loss="ce",
    target_labels=None,
    momentum=APGD_MOMENTUM,
    rho=APGD_RHO,
):
    """Runs Auto-PGD for `steps` steps from `x_start`, rule for rule as AutoAttack's code.

    Every example has its own step size, starting at 2 * epsilon. Steps mix the
    projected signed-gradient step with the previous move:

        z = project(x_k + eta * sign(grad f(x_k)))
        x_{k+1} = project(x_k + momentum * (z - x_k) + (1 - momentum) * (x_k - x_{k-1}))

    (the first step has no momentum). The best point is the iterate with the
    highest loss so far (a strictly higher loss replaces it). At each
    checkpoint of `apgd_checkpoints`, closing a window of k iterations, an
    example halves its step size and jumps back to its best point (and that
    point's gradient) if

    1. its loss rose from one iterate to the next at most rho * k times over
       the k consecutive pairs that end at the checkpoint, or
    2. it did not halve at the previous checkpoint and its best loss has not
       risen since then (never at the first checkpoint).

    Two details follow AutoAttack's `attack_single_run` rather than the paper:
    the first window compares iterate 1 with 0 (the code's zero-initialised
    loss history), not with the loss at the start; and after a jump back the
    next loss is compared with the loss of the iterate that was left, not with
    the best loss.

    The start, iterate 0, is evaluated first; `steps` steps follow, each
    evaluated once: steps + 1 evaluations, as in AutoAttack (the last needs no
    gradient).

    Args:
        logits_fn: Callable mapping images to logits.
        x: Clean images in [0, 1] (float32, or float64 to run in float64).
        labels: Integer labels [batch].
        x_start: The starting iterate, inside the ball and [0, 1].
        epsilon: L-infinity radius.
        steps: Number of steps, a Python int (the checkpoints are fixed when
            the graph is built).
        loss: "ce", "dlr" or "cw" (see `losses.attack_objective`).
        target_labels: Optional integer tensor [batch] for a targeted attack.
        momentum: Weight of the new step (0.75 in the paper).
        rho: Fraction of loss increases at or below which the step size is halved.

    Returns:
        A tuple (strongest iterate per example, its loss, whether any iterate was
        misclassified); strongest means misclassified first, then highest loss.
        An example no iterate misclassifies thus gets AutoAttack's best point.
    """
    steps = checks.check_count(steps, "steps", 0)
    checks.check_choice(loss, losses.APGD_LOSSES, "loss")
    checkpoints = apgd_checkpoints(steps)
    x = tf.convert_to_tensor(x)
    dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
    # Per-iteration lookup tables: whether iteration k is a checkpoint and the
    # length of the window that ends there.
    window_lengths = [0] * max(steps, 1)
    previous = 0
    for checkpoint in checkpoints:
        window_lengths[checkpoint] = checkpoint - previous
        previous = checkpoint
    window_lengths = tf.constant(window_lengths, dtype)
    momentum = tf.constant(momentum, dtype)
    rho = tf.constant(rho, dtype)

    x = tf.cast(x, dtype)
    x_start = tf.cast(x_start, dtype)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    epsilon = _as_dtype(epsilon, dtype)
    batch = tf.shape(x)[0]

    def broadcast(per_example):
        return tf.reshape(per_example, [-1] + [1] * (x.shape.rank - 1))

    def evaluate(images, with_gradient):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = tf.cast(logits_fn(images), dtype)
            objective = losses.attack_objective(logits, labels, loss, target_labels)
            total = tf.reduce_sum(objective)
        gradient = tape.gradient(total, images) if with_gradient else None
        return objective, gradient, common.misclassified(logits, labels)

    def body(k, state):
        current, previous_iterate, step_size = (
            state.current,
            state.previous_iterate,
            state.step_size,
        )
        previous_loss, increases = state.previous_loss, state.increases
        best, best_loss, best_gradient = state.best, state.best_loss, state.best_gradient
        loss_at_check, halved_at_check = state.loss_at_check, state.halved_at_check
        strongest, strongest_loss = state.strongest, state.strongest_loss
        strongest_misclassified = state.strongest_misclassified
        objective, gradient, misclassified = evaluate(current, True)

        stronger = common.is_stronger(
            objective, misclassified, strongest_loss, strongest_misclassified
        )
        strongest = common.select(stronger, current, strongest)
        strongest_loss = tf.where(stronger, objective, strongest_loss)
        strongest_misclassified = tf.logical_or(strongest_misclassified, misclassified)

        first = tf.equal(k, 0)
        improved = tf.logical_or(first, objective > best_loss)
        best = common.select(improved, current, best)
        best_gradient = common.select(improved, gradient, best_gradient)
        best_loss = tf.where(improved, objective, best_loss)
        loss_at_check = tf.where(first, best_loss, loss_at_check)
        increases += tf.cast(
            tf.logical_and(tf.logical_not(first), objective > previous_loss), dtype
        )

        window = window_lengths[k]
        at_checkpoint = window > 0
        too_few_increases = increases <= rho * window
        stalled = tf.logical_and(tf.logical_not(halved_at_check), loss_at_check >= best_loss)
        halve = tf.logical_and(at_checkpoint, tf.logical_or(too_few_increases, stalled))
        step_size = tf.where(halve, step_size / 2.0, step_size)
        # The loss history keeps this iterate's loss even where it jumps back.
        following_loss = tf.where(first, tf.zeros_like(objective), objective)
        current = common.select(halve, best, current)
        gradient = common.select(halve, best_gradient, gradient)
        halved_at_check = tf.where(at_checkpoint, halve, halved_at_check)
        loss_at_check = tf.where(at_checkpoint, best_loss, loss_at_check)
        increases = tf.where(at_checkpoint, tf.zeros_like(increases), increases)

        target = common.project(current + broadcast(step_size) * tf.sign(gradient), x, epsilon)
        weight = tf.where(first, tf.constant(1.0, dtype), momentum)
        following = common.project(
            current + weight * (target - current) + (1.0 - weight) * (current - previous_iterate),
            x,
            epsilon,
        )
        state = _LoopState(
            current=following,
            previous_iterate=current,
            step_size=step_size,
            previous_loss=following_loss,
            increases=increases,
            best=best,
            best_loss=best_loss,
            best_gradient=best_gradient,
            loss_at_check=loss_at_check,
            halved_at_check=halved_at_check,
            strongest=strongest,
            strongest_loss=strongest_loss,
            strongest_misclassified=strongest_misclassified,
        )
        return k + 1, state

    per_example_zeros = tf.zeros([batch], dtype)
    lowest = tf.fill([batch], dtype.min)
    state = _LoopState(
        current=x_start,
        previous_iterate=x_start,
        step_size=tf.fill([batch], tf.constant(2.0, dtype)) * epsilon,
        previous_loss=lowest,
        increases=per_example_zeros,
        best=x_start,
        best_loss=lowest,
        best_gradient=tf.zeros_like(x_start),
        loss_at_check=lowest,
        # As if halved before the start: condition 2 is off at the first checkpoint.
        halved_at_check=tf.ones([batch], tf.bool),
        strongest=x_start,
        strongest_loss=lowest,
        strongest_misclassified=tf.zeros([batch], tf.bool),
    )
    _, state = tf.while_loop(
        lambda k, _: k < steps, body, [tf.constant(0), state], parallel_iterations=1
    )
    final, strongest = state.current, state.strongest
    strongest_loss, strongest_misclassified = state.strongest_loss, state.strongest_misclassified
    # The last iterate only needs its loss: the budget stays at `steps` gradients.
    objective, _, misclassified = evaluate(final, False)
    stronger = common.is_stronger(objective, misclassified, strongest_loss, strongest_misclassified)
    return (
        common.select(stronger, final, strongest),
        tf.where(stronger, objective, strongest_loss),
        tf.logical_or(strongest_misclassified, misclassified),
    )


def batch_starts(x, epsilon, seed, random_start=True):
    """APGD's starts (`apgd_start`), one draw per batch and restart.

    Restart i of seed s draws what a single restart of seed s + i draws.

    Args:
        x: Clean images.
        epsilon: L-infinity radius.
        seed: Integer seed (a Python int or a scalar tensor).
        random_start: If False every restart starts at x.

    Returns:
        A function run index -> starting images.
    """

    def start(run):
        if not random_start:
            return x
        run_seed = tf.stack([tf.cast(seed, tf.int64) + tf.cast(run, tf.int64), 0])
        noise = tf.random.stateless_uniform(tf.shape(x), run_seed, -1.0, 1.0, dtype=x.dtype)
        return apgd_start(x, noise, epsilon)

    return start


def example_starts(x, epsilon, seed, example_indices):
    """APGD's starts (`apgd_start`), one draw per example seeded by (seed + run, index).

    An example's start does not depend on the batch it sits in, so results are
    the same for any batch size, batch order or number of replicas.

    Args:
        x: Clean images [batch, ...].
        epsilon: L-infinity radius.
        seed: Integer seed.
        example_indices: Integer tensor [batch], the examples' positions in the dataset.

    Returns:
        A function run index -> starting images.
    """
    example_indices = tf.cast(example_indices, tf.int64)

    def start(run):
        run_seed = tf.cast(seed, tf.int64) + tf.cast(run, tf.int64)
        example_seeds = tf.stack(
            [tf.fill(tf.shape(example_indices), run_seed), example_indices], axis=1
        )
        return apgd_start(x, common.per_example_perturbation(x, example_seeds, 1.0), epsilon)

    return start


def _apgd_graph(model, x, y, epsilon, steps, restarts, seed, loss, random_start, target_labels):
    logits_fn = common.logits_function(model)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)

    def loop(x_start, _):
        return apgd_loop(logits_fn, x, y, x_start, epsilon, steps, loss, target_labels)

    start = batch_starts(x, epsilon, seed, random_start)
    return common.strongest_attack(loop, start, x, restarts).images


def _apgd_targeted_graph(model, x, y, epsilon, steps, restarts, seed, loss, target_classes):
    logits_fn = common.logits_function(model)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    targets = losses.top_wrong_classes(logits_fn(x), y, target_classes)

    def loop(x_start, target_labels):
        return apgd_loop(logits_fn, x, y, x_start, epsilon, steps, loss, target_labels)

    # AutoAttack draws a new start for every run, target after target.
    start = batch_starts(x, epsilon, seed)
    return common.strongest_attack(loop, start, x, restarts, targets, fresh_starts=True).images


_COMPILED_APGD = weakref.WeakKeyDictionary()
_COMPILED_APGD_TARGETED = weakref.WeakKeyDictionary()


def _check_arguments(x, epsilon, steps, restarts, loss):
    epsilon = checks.check_epsilon(epsilon)
    checks.check_count(steps, "steps", 0)
    checks.check_count(restarts, "restarts", 1)
    checks.check_choice(loss, losses.APGD_LOSSES, "loss")
    return checks.check_image_tensor(x), epsilon


def apgd(
    model,
    x,
    y,
    epsilon,
    steps=100,
    restarts=1,
    loss="ce",
    target_labels=None,
    random_start=True,
    seed=0,
):
    """Auto-PGD: APGD-CE with loss="ce", APGD-DLR with "dlr".

    No step size to tune: each example starts at 2 * epsilon and halves it at
    the checkpoints where progress stalls (see `apgd_loop`).

    Args:
        model: A Keras model (called with training=False) or a callable returning logits.
        x: Images [batch, height, width, channels] in [0, 1].
        y: Integer labels [batch].
        epsilon: L-infinity radius in [0, 1].
        steps: Gradient evaluations per restart (100 in AutoAttack), a Python int.
        restarts: Number of restarts >= 1; the strongest per example is kept.
        loss: "ce", "dlr" or "cw".
        target_labels: Optional integer labels [batch]: attack towards these classes.
        random_start: Start each restart from a uniform draw in the ball.
        seed: Integer seed; restart i draws what a single restart of seed + i draws.

    Returns:
        Adversarial images with the shape of x, inside the ball and [0, 1].
    """
    x, epsilon = _check_arguments(x, epsilon, steps, restarts, loss)
    if target_labels is not None:
        target_labels = tf.cast(tf.reshape(tf.convert_to_tensor(target_labels), [-1]), tf.int32)
    arguments = (
        x,
        tf.convert_to_tensor(y),
        tf.constant(epsilon, tf.float32),
        int(steps),
        tf.constant(int(restarts), tf.int32),
        tf.constant(int(seed), tf.int64),
        loss,
        bool(random_start),
        target_labels,
    )
    if tf.inside_function():
        result = _apgd_graph(model, *arguments)
    else:
        result = common.compiled_for(_COMPILED_APGD, model, _apgd_graph)(model, *arguments)
    return tf.stop_gradient(result)


def apgd_targeted(
    model,
    x,
    y,
    epsilon,
    steps=100,
    target_classes=APGD_TARGET_CLASSES,
    restarts=1,
    loss="dlr",
    seed=0,
):
    """APGD-T: targeted Auto-PGD towards each of the most likely wrong classes.

    The targets are the `target_classes` highest non-true logits at the clean
    input; each gets `restarts` runs of `apgd_loop` with the targeted loss, and
    per example the strongest result over all runs is kept (misclassified first).

    Args:
        model: A Keras model (called with training=False) or a callable returning logits.
        x: Images [batch, height, width, channels] in [0, 1].
        y: Integer labels [batch].
        epsilon: L-infinity radius in [0, 1].
        steps: Gradient evaluations per run, a Python int.
        target_classes: Number of targets >= 1 (9 in AutoAttack), capped at
            classes - 1.
        restarts: Runs per target >= 1.
        loss: "dlr" (targeted DLR, as AutoAttack), "ce" or "cw".
        seed: Integer seed of the random starts.

    Returns:
        Adversarial images with the shape of x, inside the ball and [0, 1].
    """
    x, epsilon = _check_arguments(x, epsilon, steps, restarts, loss)
    checks.check_count(target_classes, "target_classes", 1)
    classes = losses.static_classes(common.logits_function(model)(x[:1]))
    if classes is not None:
        target_classes = min(int(target_classes), classes - 1)
    arguments = (
        x,
        tf.convert_to_tensor(y),
        tf.constant(epsilon, tf.float32),
        int(steps),
        int(restarts),
        tf.constant(int(seed), tf.int64),
        loss,
        int(target_classes),
    )
    if tf.inside_function():
        result = _apgd_targeted_graph(model, *arguments)
    else:
        compiled = common.compiled_for(_COMPILED_APGD_TARGETED, model, _apgd_targeted_graph)
        result = compiled(model, *arguments)
    return tf.stop_gradient(result)


def run_apgd(spec, logits_fn, x, labels, epsilon, seed, example_indices, num_classes):
    """An evaluation's `apgd-ce`, `apgd-dlr` or `apgd-t`: `apgd_loop` from per-example starts.

    Args: as `deat_tf.attacks.run_fgsm`; APGD-T attacks the `spec.targets(num_classes)`
        most likely wrong classes and, as AutoAttack, draws a new start for every target.

    Returns:
        An `Outcome`.
    """
    targets = common.top_targets(logits_fn, x, labels, spec.targets(num_classes))

    def loop(x_start, target_labels):
        return apgd_loop(
            logits_fn, x, labels, x_start, epsilon, spec.steps, spec.loss, target_labels
        )

    start = example_starts(x, epsilon, seed, example_indices)
    strongest = common.strongest_attack(loop, start, x, spec.restarts, targets, fresh_starts=True)
    return common.outcome_of(strongest)
