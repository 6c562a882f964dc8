"""Auto-PGD (Croce and Hein 2020): APGD-CE, APGD-DLR and the targeted APGD-T.

"Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks": PGD without a step size to tune. Every example starts
at step 2 * epsilon and halves it at fixed checkpoints of the budget when its
progress stalls; steps carry momentum 0.75; a halving jumps back to the best
point seen.

    x_adv = apgd.apgd(model, x, y, epsilon=8 / 255, steps=100)              # APGD-CE
    x_adv = apgd.apgd(model, x, y, epsilon=8 / 255, loss="dlr")             # APGD-DLR
    x_adv = apgd.apgd_targeted(model, x, y, epsilon=8 / 255, steps=100)     # APGD-T

The same functions are reachable as `deat_tf.attacks.apgd` and so on. The
losses (cross-entropy, DLR, targeted DLR) are in `deat_tf.losses`; restarts and
targets are composed by `attacks.strongest_attack`, like every other attack.
"""

import math
import weakref

import tensorflow as tf

from deat_tf import attacks, checks, losses

APGD_MOMENTUM = 0.75
APGD_RHO = 0.75
APGD_TARGET_CLASSES = 9


def apgd_checkpoints(steps):
    """The iterations at which APGD may halve its step size.

    w_j = ceil(p_j * steps) with p_0 = 0, p_1 = 0.22 and
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): checks come closer together
    as the attack proceeds.

    Args:
        steps: The iteration budget (a Python int >= 0).

    Returns:
        A sorted list of distinct ints in (0, steps).
    """
    steps = checks.check_count(steps, "steps", 0)
    previous, current = 0.0, 0.22
    checkpoints = []
    while current < 1.0:
        # The small offset keeps 0.22 * 100 = 22.000000000000004 from rounding up to 23.
        iteration = math.ceil(current * steps - 1e-9)
        if 0 < iteration < steps and (not checkpoints or iteration > checkpoints[-1]):
            checkpoints.append(iteration)
        previous, current = current, current + max(current - previous - 0.03, 0.06)
    return checkpoints


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
    """Runs Auto-PGD for `steps` gradient evaluations from `x_start`.

    Every example has its own step size, starting at 2 * epsilon. Steps mix the
    projected signed-gradient step with the previous move:

        z = project(x_k + eta * sign(grad f(x_k)))
        x_{k+1} = project(x_k + momentum * (z - x_k) + (1 - momentum) * (x_k - x_{k-1}))

    (the first step has no momentum). At each checkpoint of `apgd_checkpoints`
    an example halves its step size and jumps back to the highest-loss point it
    has seen if, since the previous checkpoint, its loss rose in fewer than
    rho * (checkpoint interval) steps, or its step size was not halved at the
    previous checkpoint and its best loss has not improved since.

    Args:
        logits_fn: Callable mapping images to logits.
        x: Clean images in [0, 1].
        labels: Integer labels [batch].
        x_start: The starting iterate, inside the ball and [0, 1].
        epsilon: L-infinity radius.
        steps: Number of gradient evaluations, a Python int (the checkpoints are
            fixed when the graph is built).
        loss: "ce", "dlr" or "cw" (see `losses.attack_objective`).
        target_labels: Optional integer tensor [batch] for a targeted attack.
        momentum: Weight of the new step (0.75 in the paper).
        rho: Fraction of loss increases below which the step size is halved.

    Returns:
        A tuple (strongest iterate per example, its loss, whether any iterate was
        misclassified); strongest means misclassified first, then highest loss.
    """
    steps = checks.check_count(steps, "steps", 0)
    checks.check_choice(loss, losses.APGD_LOSSES, "loss")
    checkpoints = apgd_checkpoints(steps)
    # Per-iteration lookup tables: whether iteration k is a checkpoint and the
    # length of the interval that ends there.
    interval_lengths = [0] * max(steps, 1)
    previous = 0
    for checkpoint in checkpoints:
        interval_lengths[checkpoint] = checkpoint - previous
        previous = checkpoint
    interval_lengths = tf.constant(interval_lengths, tf.float32)

    x = tf.cast(x, tf.float32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    epsilon = tf.cast(epsilon, tf.float32)
    batch = tf.shape(x)[0]

    def broadcast(per_example):
        return tf.reshape(per_example, [-1] + [1] * (x.shape.rank - 1))

    def evaluate(images, with_gradient):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = logits_fn(images)
            objective = losses.attack_objective(logits, labels, loss, target_labels)
            total = tf.reduce_sum(objective)
        gradient = tape.gradient(total, images) if with_gradient else None
        return objective, gradient, attacks.misclassified(logits, labels)

    def body(k, state):
        (
            current,
            previous_iterate,
            step_size,
            previous_loss,
            increases,
            best,
            best_loss,
            best_gradient,
            loss_at_check,
            halved_at_check,
            strongest,
            strongest_loss,
            strongest_misclassified,
        ) = state
        objective, gradient, misclassified = evaluate(current, True)

        stronger = attacks.is_stronger(
            objective, misclassified, strongest_loss, strongest_misclassified
        )
        strongest = attacks.select(stronger, current, strongest)
        strongest_loss = tf.where(stronger, objective, strongest_loss)
        strongest_misclassified = tf.logical_or(strongest_misclassified, misclassified)

        first = tf.equal(k, 0)
        improved = tf.logical_or(first, objective > best_loss)
        best = attacks.select(improved, current, best)
        best_gradient = attacks.select(improved, gradient, best_gradient)
        best_loss = tf.where(improved, objective, best_loss)
        loss_at_check = tf.where(first, best_loss, loss_at_check)
        increases += tf.cast(
            tf.logical_and(tf.logical_not(first), objective > previous_loss), tf.float32
        )

        interval = interval_lengths[k]
        at_checkpoint = interval > 0
        too_few_increases = increases < rho * interval
        stalled = tf.logical_and(tf.logical_not(halved_at_check), loss_at_check >= best_loss)
        halve = tf.logical_and(at_checkpoint, tf.logical_or(too_few_increases, stalled))
        step_size = tf.where(halve, step_size / 2.0, step_size)
        current = attacks.select(halve, best, current)
        gradient = attacks.select(halve, best_gradient, gradient)
        objective = tf.where(halve, best_loss, objective)
        halved_at_check = tf.where(at_checkpoint, halve, halved_at_check)
        loss_at_check = tf.where(at_checkpoint, best_loss, loss_at_check)
        increases = tf.where(at_checkpoint, tf.zeros_like(increases), increases)

        target = attacks.project(current + broadcast(step_size) * tf.sign(gradient), x, epsilon)
        weight = tf.where(first, 1.0, momentum)
        following = attacks.project(
            current + weight * (target - current) + (1.0 - weight) * (current - previous_iterate),
            x,
            epsilon,
        )
        state = (
            following,
            current,
            step_size,
            objective,
            increases,
            best,
            best_loss,
            best_gradient,
            loss_at_check,
            halved_at_check,
            strongest,
            strongest_loss,
            strongest_misclassified,
        )
        return k + 1, state

    per_example_zeros = tf.zeros([batch], tf.float32)
    lowest = tf.fill([batch], tf.float32.min)
    state = (
        x_start,
        x_start,
        tf.fill([batch], 2.0) * epsilon,
        lowest,
        per_example_zeros,
        x_start,
        lowest,
        tf.zeros_like(x_start),
        lowest,
        tf.zeros([batch], tf.bool),
        x_start,
        lowest,
        tf.zeros([batch], tf.bool),
    )
    _, state = tf.while_loop(
        lambda k, _: k < steps, body, [tf.constant(0), state], parallel_iterations=1
    )
    final, strongest, strongest_loss, strongest_misclassified = (
        state[0],
        state[10],
        state[11],
        state[12],
    )
    # The last iterate only needs its loss: the budget stays at `steps` gradients.
    objective, _, misclassified = evaluate(final, False)
    stronger = attacks.is_stronger(
        objective, misclassified, strongest_loss, strongest_misclassified
    )
    return (
        attacks.select(stronger, final, strongest),
        tf.where(stronger, objective, strongest_loss),
        tf.logical_or(strongest_misclassified, misclassified),
    )


def _apgd_graph(model, x, y, epsilon, steps, restarts, seed, loss, random_start, target_labels):
    logits_fn = attacks.logits_function(model)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)

    def loop(x_start, _):
        return apgd_loop(logits_fn, x, y, x_start, epsilon, steps, loss, target_labels)

    start = attacks.batch_starts(x, epsilon, seed, random_start)
    return attacks.strongest_attack(loop, start, x, restarts)[0]


def _apgd_targeted_graph(model, x, y, epsilon, steps, restarts, seed, loss, target_classes):
    logits_fn = attacks.logits_function(model)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    targets = losses.top_wrong_classes(logits_fn(x), y, target_classes)

    def loop(x_start, target_labels):
        return apgd_loop(logits_fn, x, y, x_start, epsilon, steps, loss, target_labels)

    start = attacks.batch_starts(x, epsilon, seed)
    return attacks.strongest_attack(loop, start, x, restarts, targets)[0]


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
        result = attacks.compiled_for(_COMPILED_APGD, model, _apgd_graph)(model, *arguments)
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
    classes = losses.static_classes(attacks.logits_function(model)(x[:1]))
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
        compiled = attacks.compiled_for(_COMPILED_APGD_TARGETED, model, _apgd_targeted_graph)
        result = compiled(model, *arguments)
    return tf.stop_gradient(result)
