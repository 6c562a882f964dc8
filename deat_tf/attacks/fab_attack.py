"""FAB: the Fast Adaptive Boundary attack in the L-infinity norm, targeted (FAB-T) or not.

FAB (Croce and Hein, ICML 2020, "Minimally distorted adversarial examples with a
fast adaptive boundary attack") looks for the adversarial example closest to x,
not merely one inside a given ball. AutoAttack's standard version runs its
targeted form, FAB-T, after APGD-CE and APGD-T; its "plus" version adds the
untargeted form with 5 restarts:

    from deat_tf import attacks

    x_adv = attacks.fab_targeted(model, x, y, epsilon=8 / 255)          # AutoAttack's FAB-T
    x_adv = attacks.fab_untargeted(model, x, y, epsilon=8 / 255, restarts=5)
    x_min, norms = attacks.fab_minimal_adversarial(model, x, y, epsilon=8 / 255)

`fab_targeted` and `fab_untargeted` return images inside the epsilon-ball and
[0, 1]: the closest adversarial example found where its L-infinity norm is <=
epsilon, and x itself where the attack failed. `fab_minimal_adversarial`
returns the closest adversarial example found whatever its norm, with that norm
(inf where none was found), so robust accuracy at any radius can be read off
one run.

One FAB iteration, from the iterate x_k, for an example with true class y:

1. Linearise the logit gap g(z) = z_t - z_y at x_k: the decision boundary
   becomes the hyperplane g(x_k) + grad g(x_k) . (z - x_k) = 0. FAB-T uses its
   target t; untargeted FAB takes the gradients of every logit and picks, per
   example, the class t != y whose linearised boundary is closest,
   |g(x_k)| / ||grad g(x_k)||_1 (one gradient per class and iteration).
2. Project both x_k and the original x onto that hyperplane intersected with
   the box [0, 1]^d, exactly, in the L-infinity norm (`box_hyperplane_step`):
   steps d_k and d_0.
3. Step to a convex combination biased towards x, with extrapolation eta:
   x_{k+1} = clip((1 - a)(x_k + eta d_k) + a (x + eta d_0)), where
   a = min(|d_k| / (|d_k| + |d_0|), alpha_max).
4. If x_{k+1} is misclassified, remember it if it is the closest so far, then
   step back towards x: x_{k+1} = x + beta (x_{k+1} - x).

AutoAttack's FAB (`fab_base.py`) stops there, and so do `fab_targeted`,
`fab_untargeted` and the evaluation's `fab`/`fab-t` (`search_steps=0`, the
default). As an explicit option, `search_steps` > 0 adds rounds of the final
search of the original FAB code (`fab_minimal_adversarial` runs
`FAB_ORIGINAL_SEARCH_STEPS` by default): they move the best adversarial example
along the segment towards x, to where the logit gap interpolated linearly
between the two ends changes sign (aiming a hair past it, which the original
does not), which can only shrink the norm.

Restarts and targets are composed by `common.strongest_attack`, like every
other attack: runs go target by target (the most likely wrong class first),
each with all its restarts, and per example the closest adversarial example
found by any run is kept. Where this differs from AutoAttack's code:

- The starts are AutoAttack's: restart 0 of each target starts at x, restart
  i > 0 at x + (epsilon / 2) t / max|t| with t uniform in [-1, 1] per pixel,
  clipped to [0, 1]. (AutoAttack's code writes the radius as
  min(res2, epsilon) / 2, but res2 is reset to 1e10 at the start of every run,
  so it is always epsilon / 2 and no state carries from run to run.) The draw
  comes from the stateless seed (seed + i, example index) (`restart_starts`),
  so a run's result depends only on its example, its seed and its restart,
  not on the other runs, the batch or the replica.
- Restarts run on every example: the reference restarts only the examples no
  earlier run fooled. The result differs only in which successful image is
  kept (here the closest), never in whether an example is fooled.
- The start is checked too: a random restart start that is already
  misclassified counts as found (at its distance, <= epsilon / 2). The
  reference checks only the iterates. This only adds successes, and only for
  random restarts: a run from x, the one run per target of AutoAttack's FAB-T,
  starts at an example that is classified correctly.

As in AutoAttack, an example counts as fooled when it is misclassified as any
class, not only the target. The attacks build their ops inside a `tf.function`
or `strategy.run` (all loops are `tf.while_loop`s); called eagerly, the public
functions run through a cached `tf.function` per model.
"""

import weakref

import tensorflow as tf

from deat_tf import checks, losses
from deat_tf.attacks import common

FAB_STEPS = 100
FAB_TARGET_CLASSES = 9
FAB_ALPHA_MAX = 0.1
FAB_ETA = 1.05
FAB_BETA = 0.9
# AutoAttack's FAB has no final search; the original FAB code runs 3 rounds.
FAB_SEARCH_STEPS = 0
FAB_ORIGINAL_SEARCH_STEPS = 3
# Restart i > 0 starts at this fraction of epsilon from x (the reference's 1/2).
FAB_RESTART_RADIUS = 0.5

# The lower bound on step lengths of the reference: it keeps the bias towards x
# defined when both projections are (almost) zero.
_SHORTEST_STEP = 1e-8
# Keeps the final search's interpolation finite when both logit gaps are zero.
_TINY_GAP = 1e-10
# Keeps the untargeted choice of boundary finite when a gradient is zero (the reference's).
_TINY_NORM = 1e-12
# The final search evaluates this fraction of the remaining segment beyond the
# estimated crossing of the boundary.
_SEARCH_OVERSHOOT = 1e-3


def box_hyperplane_step(points, normals, residuals):
    """The shortest L-infinity step from each point onto a hyperplane, staying in [0, 1].

    Per example, solves min ||d||_inf subject to residual + normal . d = 0 and
    0 <= point + d <= 1. For a radius r, the most a step inside the r-ball and
    the box can change the residual is sum_i |w_i| min(r, room_i), where room_i
    is how far coordinate i can move in the helpful direction before it hits 0
    or 1. That is increasing and piecewise linear in r with breakpoints at the
    rooms, so after sorting the rooms the smallest sufficient r is found on one
    linear piece. Where even the whole box cannot reach the hyperplane, the
    step goes to the box corner that comes closest to it.

    Args:
        points: Float tensor [batch, features] in [0, 1].
        normals: Float tensor [batch, features], the hyperplane normals w.
        residuals: Float tensor [batch], the value w . point - b of each point;
            the hyperplane is where it is zero.

    Returns:
        Float tensor [batch, features], the step d.
    """
    # Each coordinate moves against the sign of the residual's change along it.
    direction = -tf.sign(residuals)[:, None] * tf.sign(normals)
    room = tf.where(direction > 0, 1.0 - points, tf.where(direction < 0, points, 0.0))
    room = tf.maximum(room, 0.0)
    weights = tf.where(direction != 0, tf.abs(normals), 0.0)
    needed = tf.abs(residuals)

    order = tf.argsort(room, axis=-1)
    sorted_room = tf.gather(room, order, batch_dims=1)
    sorted_weights = tf.gather(weights, order, batch_dims=1)
    saturated_before = tf.cumsum(sorted_weights * sorted_room, axis=-1, exclusive=True)
    weight_from = tf.cumsum(sorted_weights, axis=-1, reverse=True)
    # The change reachable with radius room_k: coordinates with smaller rooms
    # move all the way, the others (k included) by room_k.
    reach_at_breakpoints = saturated_before + sorted_room * weight_from
    short = tf.cast(reach_at_breakpoints < needed[:, None], tf.int32)
    piece = tf.reduce_sum(short, axis=-1)
    features = tf.shape(points)[-1]
    feasible = piece < features
    index = tf.minimum(piece, features - 1)[:, None]
    base = tf.gather(saturated_before, index, batch_dims=1)[:, 0]
    slope = tf.gather(weight_from, index, batch_dims=1)[:, 0]
    radius = tf.maximum((needed - base) / tf.maximum(slope, 1e-30), 0.0)
    radius = tf.where(feasible, radius, tf.fill(tf.shape(radius), float("inf")))
    return direction * tf.minimum(radius[:, None], room)


def _flat(images):
    return tf.reshape(images, [tf.shape(images)[0], -1])


def _linf_norm(difference):
    return tf.reduce_max(tf.abs(_flat(difference)), axis=-1)


def _broadcast(per_example, images):
    return tf.reshape(per_example, [-1] + [1] * (images.shape.rank - 1))


def _predictions(logits_fn, images):
    return tf.argmax(logits_fn(images), axis=-1, output_type=tf.int32)


def _final_search(logits_fn, x, labels, adversarial, found, search_steps):
    """Moves each adversarial example towards x along the segment between them.

    Every round puts a point just past where the logit gap (true class against
    the class of the adversarial end), interpolated linearly between the two
    ends, changes sign; that point replaces the clean end if it is still classified
    as the true class and the adversarial end otherwise. Both ends stay on the
    original segment, so the norm of the adversarial end can only shrink.
    """
    if search_steps == 0:
        return adversarial
    clean_end, adversarial_end = x, adversarial
    clean_logits, adversarial_logits = logits_fn(clean_end), logits_fn(adversarial_end)
    adversarial_class = tf.argmax(adversarial_logits, axis=-1, output_type=tf.int32)
    for _ in range(search_steps):
        clean_gap = losses.logit_of(clean_logits, labels) - losses.logit_of(
            clean_logits, adversarial_class
        )
        adversarial_gap = losses.logit_of(adversarial_logits, adversarial_class) - (
            losses.logit_of(adversarial_logits, labels)
        )
        fraction = clean_gap / (clean_gap + adversarial_gap + _TINY_GAP)
        # Outside [0, 1] the linear model is not to be trusted: keep the adversarial end.
        usable = tf.logical_and(fraction >= 0.0, fraction <= 1.0)
        # Aim a little past the estimated crossing: a point exactly on the boundary of
        # a (locally) linear model is classified by rounding error, and a clean
        # verdict there would leave the next round nothing to interpolate.
        fraction = tf.where(usable, fraction + _SEARCH_OVERSHOOT * (1.0 - fraction), 1.0)
        middle = clean_end + _broadcast(fraction, x) * (adversarial_end - clean_end)
        middle_logits = logits_fn(middle)
        middle_class = tf.argmax(middle_logits, axis=-1, output_type=tf.int32)
        still_clean = tf.equal(middle_class, labels)
        clean_end = common.select(still_clean, middle, clean_end)
        clean_logits = tf.where(still_clean[:, None], middle_logits, clean_logits)
        adversarial_end = common.select(still_clean, adversarial_end, middle)
        adversarial_logits = tf.where(still_clean[:, None], adversarial_logits, middle_logits)
        adversarial_class = tf.where(still_clean, adversarial_class, middle_class)
    return common.select(found, adversarial_end, adversarial)


def _linearised_boundary(logits_fn, iterate, labels, target_labels):
    """The gap g = z_t - z_y at the iterate and its gradient (flattened), per example.

    With target labels, t is the target (one gradient). Without, t is the class
    whose linearised boundary is closest, which needs the gradient of every
    logit (one per class).
    """
    if target_labels is not None:
        with tf.GradientTape() as tape:
            tape.watch(iterate)
            logits = tf.cast(logits_fn(iterate), tf.float32)
            gaps = losses.logit_of(logits, target_labels) - losses.logit_of(logits, labels)
            total = tf.reduce_sum(gaps)
        gradient = tape.gradient(total, iterate, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return gaps, _flat(gradient)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(iterate)
        logits = tf.cast(logits_fn(iterate), tf.float32)
        classes = losses.static_classes(logits)
        if classes is None:
            raise ValueError("untargeted FAB needs a model whose number of classes is static.")
        class_totals = [tf.reduce_sum(logits[:, k]) for k in range(classes)]
    gradients = tf.stack(
        [
            _flat(tape.gradient(total, iterate, unconnected_gradients=tf.UnconnectedGradients.ZERO))
            for total in class_totals
        ],
        axis=1,
    )
    del tape
    all_normals = gradients - tf.gather(gradients, labels, batch_dims=1)[:, None, :]
    all_gaps = logits - losses.logit_of(logits, labels)[:, None]
    distances = tf.abs(all_gaps) / (tf.reduce_sum(tf.abs(all_normals), axis=-1) + _TINY_NORM)
    true_class = tf.one_hot(labels, classes, on_value=True, off_value=False)
    distances = tf.where(true_class, float("inf"), distances)
    closest = tf.argmin(distances, axis=-1, output_type=tf.int32)
    return (
        tf.gather(all_gaps, closest, batch_dims=1),
        tf.gather(all_normals, closest, batch_dims=1),
    )


def fab_search(
    logits_fn,
    x,
    labels,
    target_labels,
    start,
    steps,
    alpha_max=FAB_ALPHA_MAX,
    eta=FAB_ETA,
    beta=FAB_BETA,
    search_steps=FAB_SEARCH_STEPS,
):
    """One FAB run: the closest adversarial example it finds, whatever its norm.

    Args:
        logits_fn: Callable mapping images to logits.
        x: Clean images in [0, 1].
        labels: Integer labels [batch].
        target_labels: Integer tensor [batch], the class whose boundary with the
            true class is linearised (FAB-T), or None for untargeted FAB (the
            closest linearised boundary at each iteration; the model's class
            count must be static).
        start: The first iterate, in [0, 1] (x itself, or a random point near it).
        steps: Number of iterations (one gradient, or one per class untargeted,
            and one forward pass each); a Python int or an integer tensor.
        alpha_max: Largest weight of the step from x (0.1 in the paper).
        eta: Extrapolation factor of both projections (1.05).
        beta: Backward step: after a success the iterate shrinks to
            x + beta (x_adv - x) (0.9).
        search_steps: Rounds of the final search along the segment to x (a
            Python int; 0, the default, skips it, as AutoAttack does).

    Returns:
        A tuple (adversarial images, their L-infinity distances to x): per
        example the closest misclassified point found, in [0, 1] but not
        necessarily in any epsilon-ball, or x with distance inf where no
        misclassified point was found. The start counts: a misclassified x
        gives distance 0.
    """
    x = tf.cast(x, tf.float32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    if target_labels is not None:
        target_labels = tf.cast(tf.reshape(target_labels, [-1]), tf.int32)
    start = tf.cast(start, tf.float32)
    steps = tf.cast(steps, tf.int32)
    x_flat = _flat(x)

    def record(candidate, best, best_norm):
        adversarial = tf.not_equal(_predictions(logits_fn, candidate), labels)
        norm = _linf_norm(candidate - x)
        closer = tf.logical_and(adversarial, norm < best_norm)
        best = common.select(closer, candidate, best)
        return adversarial, best, tf.where(closer, norm, best_norm)

    def body(step, iterate, best, best_norm):
        gaps, normals = _linearised_boundary(logits_fn, iterate, labels, target_labels)
        iterate_flat = _flat(iterate)
        # The linearised gap at x: g(x_k) + w . (x - x_k).
        gaps_at_x = gaps + tf.reduce_sum(normals * (x_flat - iterate_flat), axis=-1)
        step_from_iterate = box_hyperplane_step(iterate_flat, normals, gaps)
        step_from_x = box_hyperplane_step(x_flat, normals, gaps_at_x)
        length_from_iterate = tf.maximum(_linf_norm(step_from_iterate), _SHORTEST_STEP)
        length_from_x = tf.maximum(_linf_norm(step_from_x), _SHORTEST_STEP)
        alpha = tf.minimum(length_from_iterate / (length_from_iterate + length_from_x), alpha_max)
        alpha = alpha[:, None]
        moved = (1.0 - alpha) * (iterate_flat + eta * step_from_iterate) + alpha * (
            x_flat + eta * step_from_x
        )
        candidate = tf.reshape(tf.clip_by_value(moved, 0.0, 1.0), tf.shape(x))
        adversarial, best, best_norm = record(candidate, best, best_norm)
        # Having crossed the boundary, restart the approach from a point closer to x.
        backed_off = x + beta * (candidate - x)
        return step + 1, common.select(adversarial, backed_off, candidate), best, best_norm

    _, best, best_norm = record(start, x, tf.fill([tf.shape(x)[0]], float("inf")))
    _, _, best, best_norm = tf.while_loop(
        lambda step, *_: step < steps,
        body,
        [tf.constant(0), start, best, best_norm],
        parallel_iterations=1,
    )
    found = tf.math.is_finite(best_norm)
    best = _final_search(logits_fn, x, labels, best, found, search_steps)
    best_norm = tf.where(found, _linf_norm(best - x), best_norm)
    return best, best_norm


def fab_loop(
    logits_fn,
    x,
    labels,
    target_labels,
    epsilon,
    steps,
    start,
    alpha_max=FAB_ALPHA_MAX,
    eta=FAB_ETA,
    beta=FAB_BETA,
    search_steps=FAB_SEARCH_STEPS,
):
    """One FAB run judged at radius epsilon, in the form of the other attack loops.

    Args:
        logits_fn: Callable mapping images to logits.
        x: Clean images in [0, 1].
        labels: Integer labels [batch].
        target_labels: Integer tensor [batch] of target classes, or None for
            untargeted FAB.
        epsilon: L-infinity radius at which success is judged.
        steps: Number of iterations (a Python int or an integer tensor).
        start: The first iterate, in [0, 1].
        alpha_max: Largest weight of the step from x.
        eta: Extrapolation factor.
        beta: Backward step after a success.
        search_steps: Rounds of the final search (0, AutoAttack's, skips it).

    Returns:
        A tuple (images, scores, misclassified), per example: where the closest
        adversarial example found has L-infinity norm <= epsilon, that example,
        minus its norm, and True; elsewhere x itself, minus the norm of the
        closest adversarial example found (-inf if none), and False. The images
        are inside the epsilon-ball and [0, 1], so `common.strongest_attack`
        can combine runs (a higher score is a closer adversarial example).
    """
    x = tf.cast(x, tf.float32)
    adversarial, norms = fab_search(
        logits_fn, x, labels, target_labels, start, steps, alpha_max, eta, beta, search_steps
    )
    success = norms <= tf.cast(epsilon, tf.float32)
    return common.select(success, adversarial, x), -norms, success


def restart_starts(x, epsilon, seed, example_indices):
    """FAB's restart starts: x for restart 0, a random point at distance epsilon / 2 after.

    Restart i > 0 of an example draws U(-1, 1) per pixel from the stateless seed
    (seed + i, example index), rescales it so that its largest coordinate is
    `FAB_RESTART_RADIUS` * epsilon, adds it to x and clips to [0, 1]. The start
    depends only on the example, so results do not depend on the batch.

    Args:
        x: Clean images [batch, ...].
        epsilon: L-infinity radius.
        seed: Integer seed.
        example_indices: Integer tensor [batch], the examples' positions in the dataset.

    Returns:
        A function restart index -> starting images (for `common.strongest_attack`).
    """
    example_indices = tf.cast(example_indices, tf.int64)
    radius = FAB_RESTART_RADIUS * tf.cast(epsilon, tf.float32)

    def random_point(restart):
        restart_seed = tf.cast(seed, tf.int64) + tf.cast(restart, tf.int64)
        example_seeds = tf.stack(
            [tf.fill(tf.shape(example_indices), restart_seed), example_indices], axis=1
        )
        noise = common.per_example_perturbation(x, example_seeds, 1.0)
        noise = noise / _broadcast(tf.maximum(_linf_norm(noise), _SHORTEST_STEP), x)
        return tf.clip_by_value(x + radius * noise, 0.0, 1.0)

    def start(restart):
        return tf.cond(tf.equal(restart, 0), lambda: x, lambda: random_point(restart))

    return start


def _fab_graph(
    model,
    x,
    y,
    epsilon,
    steps,
    target_classes,
    restarts,
    seed,
    alpha_max,
    eta,
    beta,
    search_steps,
    minimal,
):
    logits_fn = common.logits_function(model)
    x = tf.cast(x, tf.float32)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    targets = None
    if target_classes:
        targets = losses.top_wrong_classes(logits_fn(x), y, target_classes)
    # The public functions key the restarts' draws on the position in the batch.
    start = restart_starts(x, epsilon, seed, tf.range(tf.shape(x)[0]))

    if minimal:

        def loop(x_start, target_labels):
            images, norms = fab_search(
                logits_fn, x, y, target_labels, x_start, steps, alpha_max, eta, beta, search_steps
            )
            return images, -norms, tf.math.is_finite(norms)

        strongest = common.strongest_attack(loop, start, x, restarts, targets)
        return strongest.images, tf.where(strongest.misclassified, -strongest.losses, float("inf"))

    def loop(x_start, target_labels):
        return fab_loop(
            logits_fn,
            x,
            y,
            target_labels,
            epsilon,
            steps,
            x_start,
            alpha_max,
            eta,
            beta,
            search_steps,
        )

    return common.strongest_attack(loop, start, x, restarts, targets).images


_COMPILED_FAB = weakref.WeakKeyDictionary()


def _prepare(
    model, x, y, epsilon, steps, target_classes, restarts, seed, alpha_max, eta, beta, search_steps
):
    epsilon = checks.check_epsilon(epsilon)
    checks.check_count(steps, "steps", 0)
    if target_classes is not None:
        checks.check_count(target_classes, "target_classes", 1)
    checks.check_count(restarts, "restarts", 1)
    checks.check_count(search_steps, "search_steps", 0)
    alpha_max = checks.check_range(alpha_max, "alpha_max", 0.0, 1.0)
    beta = checks.check_range(beta, "beta", 0.0, 1.0, include_low=False)
    eta = checks.check_positive(eta, "eta")
    x = checks.check_image_tensor(x)
    classes = losses.static_classes(common.logits_function(model)(x[:1]))
    if classes is not None and classes < 2:
        raise ValueError(f"FAB needs a model with at least 2 classes, got {classes}.")
    if target_classes is not None and classes is not None:
        target_classes = min(int(target_classes), classes - 1)
    return (
        x,
        tf.convert_to_tensor(y),
        tf.constant(epsilon, tf.float32),
        tf.constant(int(steps), tf.int32),
        0 if target_classes is None else int(target_classes),
        int(restarts),
        tf.constant(int(seed), tf.int64),
        alpha_max,
        eta,
        beta,
        int(search_steps),
    )


def _run(model, arguments, minimal):
    if tf.inside_function():
        return _fab_graph(model, *arguments, minimal)
    return common.compiled_for(_COMPILED_FAB, model, _fab_graph)(model, *arguments, minimal)


def fab_targeted(
    model,
    x,
    y,
    epsilon,
    steps=FAB_STEPS,
    target_classes=FAB_TARGET_CLASSES,
    restarts=1,
    seed=0,
    alpha_max=FAB_ALPHA_MAX,
    eta=FAB_ETA,
    beta=FAB_BETA,
    search_steps=FAB_SEARCH_STEPS,
):
    """FAB-T with AutoAttack's standard settings: adversarial images within epsilon.

    The targets are the `target_classes` highest non-true logits at x; each gets
    `restarts` runs of `fab_search` (the first from x, the others from random
    points at distance epsilon / 2, see `restart_starts`), and per example the
    closest adversarial example over all runs is kept.

    Args:
        model: A Keras model (called with training=False) or a callable returning logits.
        x: Images [batch, height, width, channels] in [0, 1].
        y: Integer labels [batch].
        epsilon: L-infinity radius in [0, 1]: success means an adversarial
            example at distance <= epsilon.
        steps: Iterations per run (100 in AutoAttack), an integer >= 0.
        target_classes: Number of targets >= 1 (9 in AutoAttack), capped at classes - 1.
        restarts: Runs per target >= 1 (1 in AutoAttack's FAB-T).
        seed: Integer seed of the random restarts; an example's draws are keyed
            on (seed + restart, its position in the batch).
        alpha_max: Largest weight of the step from x, in [0, 1].
        eta: Extrapolation factor > 0.
        beta: Backward step after a success, in (0, 1].
        search_steps: Rounds of the final search, >= 0 (0 matches AutoAttack).

    Returns:
        Images with the shape of x, inside the ball and [0, 1]: the closest
        adversarial example found where it lies within epsilon, x elsewhere.

    Raises:
        ValueError: If an argument is out of range (the message names it).
    """
    arguments = _prepare(
        model,
        x,
        y,
        epsilon,
        steps,
        target_classes,
        restarts,
        seed,
        alpha_max,
        eta,
        beta,
        search_steps,
    )
    return tf.stop_gradient(_run(model, arguments, minimal=False))


def fab_untargeted(
    model,
    x,
    y,
    epsilon,
    steps=FAB_STEPS,
    restarts=1,
    seed=0,
    alpha_max=FAB_ALPHA_MAX,
    eta=FAB_ETA,
    beta=FAB_BETA,
    search_steps=FAB_SEARCH_STEPS,
):
    """Untargeted FAB (AutoAttack's "plus" version runs it with 5 restarts).

    Each iteration linearises the closest boundary of any wrong class, which
    takes one gradient per class: with many classes FAB-T is far cheaper.

    Args:
        model: A Keras model (called with training=False) or a callable returning
            logits, with a static number of classes.
        x: Images [batch, height, width, channels] in [0, 1].
        y: Integer labels [batch].
        epsilon: L-infinity radius in [0, 1].
        steps: Iterations per run, an integer >= 0.
        restarts: Runs >= 1 (the first from x, see `restart_starts`).
        seed: Integer seed of the random restarts.
        alpha_max: Largest weight of the step from x, in [0, 1].
        eta: Extrapolation factor > 0.
        beta: Backward step after a success, in (0, 1].
        search_steps: Rounds of the final search, >= 0 (0 matches AutoAttack).

    Returns:
        Images with the shape of x, inside the ball and [0, 1]: the closest
        adversarial example found where it lies within epsilon, x elsewhere.

    Raises:
        ValueError: If an argument is out of range (the message names it).
    """
    arguments = _prepare(
        model, x, y, epsilon, steps, None, restarts, seed, alpha_max, eta, beta, search_steps
    )
    return tf.stop_gradient(_run(model, arguments, minimal=False))


def fab_minimal_adversarial(
    model,
    x,
    y,
    epsilon,
    steps=FAB_STEPS,
    target_classes=FAB_TARGET_CLASSES,
    restarts=1,
    seed=0,
    alpha_max=FAB_ALPHA_MAX,
    eta=FAB_ETA,
    beta=FAB_BETA,
    search_steps=FAB_ORIGINAL_SEARCH_STEPS,
):
    """FAB's closest adversarial examples and their L-infinity norms, at any radius.

    The same runs as `fab_targeted` (or `fab_untargeted` with
    target_classes=None), without the epsilon threshold: robust accuracy at
    radius r is then mean(norms > r) for any r.

    Args:
        model: A Keras model (called with training=False) or a callable returning logits.
        x: Images [batch, height, width, channels] in [0, 1].
        y: Integer labels [batch].
        epsilon: Radius in [0, 1] of the random restarts (they start at distance
            epsilon / 2); unused with restarts=1.
        steps: Iterations per run, an integer >= 0.
        target_classes: Number of targets >= 1, capped at classes - 1; None
            for untargeted FAB.
        restarts: Runs per target >= 1.
        seed: Integer seed of the random restarts.
        alpha_max: Largest weight of the step from x, in [0, 1].
        eta: Extrapolation factor > 0.
        beta: Backward step after a success, in (0, 1].
        search_steps: Rounds of the final search, >= 0 (3, the original FAB
            code's, by default; 0 matches AutoAttack).

    Returns:
        A tuple (images, norms): per example the closest misclassified point
        found (in [0, 1], in no particular ball) and its L-infinity distance to
        x; x and inf where no run found one; x and 0 where x is misclassified.

    Raises:
        ValueError: If an argument is out of range (the message names it).
    """
    arguments = _prepare(
        model,
        x,
        y,
        epsilon,
        steps,
        target_classes,
        restarts,
        seed,
        alpha_max,
        eta,
        beta,
        search_steps,
    )
    images, norms = _run(model, arguments, minimal=True)
    return tf.stop_gradient(images), tf.stop_gradient(norms)


def run_fab(spec, logits_fn, x, labels, epsilon, seed, example_indices, num_classes):
    """An evaluation's `fab-t` or `fab`: `fab_loop` from x, then from `restart_starts`.

    Args: as `deat_tf.attacks.run_fgsm`; FAB-T attacks the `spec.targets(num_classes)`
        most likely wrong classes, untargeted FAB every class at each iteration.

    Returns:
        An `Outcome`.
    """
    targets = common.top_targets(logits_fn, x, labels, spec.targets(num_classes))

    def loop(x_start, target_labels):
        return fab_loop(logits_fn, x, labels, target_labels, epsilon, spec.steps, x_start)

    start = restart_starts(x, epsilon, seed, example_indices)
    return common.outcome_of(common.strongest_attack(loop, start, x, spec.restarts, targets))
