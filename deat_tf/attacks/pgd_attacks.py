"""FGSM, PGD and CW: signed-gradient ascent in the L-infinity ball.

    x_adv = attacks.pgd(model, x, y, epsilon=8 / 255, step_size=2 / 255, steps=10)
    x_adv = attacks.pgd(model, x, y, epsilon=8 / 255, step_size=2 / 255, steps=20, loss="cw")
    x_adv = attacks.fgsm(model, x, y, epsilon=8 / 255)

`pgd_loop` returns the last iterate (what adversarial training trains on);
`pgd_search` the strongest iterate it saw (what an evaluation needs).
"""

import weakref

import tensorflow as tf

from deat_tf import checks
from deat_tf.attacks.common import (
    LOSSES,
    Outcome,
    batch_starts,
    compiled_for,
    example_starts,
    is_stronger,
    logits_function,
    loss_and_gradient,
    misclassified,
    no_queries,
    outcome_of,
    per_example_loss,
    project,
    select,
    signed_step,
    strongest_attack,
)


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


def _pgd_graph(model, x, y, epsilon, step_size, steps, restarts, seed, loss, random_start):
    logits_fn = logits_function(model)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)

    def loop(x_start, _):
        return pgd_search(logits_fn, x, y, x_start, epsilon, step_size, steps, loss)

    return strongest_attack(loop, batch_starts(x, epsilon, seed, random_start), x, restarts).images


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


def run_fgsm(spec, logits_fn, x, labels, epsilon, seed, example_indices, num_classes):
    """An evaluation's `fgsm`: one signed step of `spec.step_size` from x (no random start).

    Args:
        spec: The `AttackSpec`.
        logits_fn: Callable images -> logits.
        x: Clean images [batch, ...].
        labels: Int32 labels [batch].
        epsilon: L-infinity radius.
        seed: The attack's seed (unused: FGSM draws nothing).
        example_indices: The examples' positions in the dataset (unused).
        num_classes: Classes of the model (unused).

    Returns:
        An `Outcome`.
    """
    images = fgsm(logits_fn, x, labels, epsilon, spec.step_size, spec.loss)
    return Outcome(images, misclassified(logits_fn(images), labels)[None], no_queries(x))


def run_pgd(spec, logits_fn, x, labels, epsilon, seed, example_indices, num_classes):
    """An evaluation's `pgdN` or `cwN`: `pgd_search` from per-example starts, `spec.restarts` times.

    Args: as `run_fgsm`; each example's starts come from (seed + restart, its index).

    Returns:
        An `Outcome`.
    """

    def loop(x_start, _):
        return pgd_search(
            logits_fn, x, labels, x_start, epsilon, spec.step_size, spec.steps, spec.loss
        )

    start = example_starts(x, epsilon, seed, example_indices)
    return outcome_of(strongest_attack(loop, start, x, spec.restarts))
