"""L-infinity attacks on image classifiers, as plain TensorFlow functions.

Every attack here works on images in [0, 1] and on any Keras model (called with
`training=False`) or any callable that maps a batch of images to logits:

    x_adv = attacks.pgd(model, x, y, epsilon=8 / 255, step_size=2 / 255, steps=10)
    x_adv = attacks.fgsm(model, x, y, epsilon=8 / 255)
    x_adv = attacks.apgd(model, x, y, epsilon=8 / 255, steps=100)             # APGD-CE
    x_adv = attacks.apgd_targeted(model, x, y, epsilon=8 / 255, steps=100)    # APGD-T

The attacks are composed from small parts that the adversarial train step reuses:

- `initial_perturbation` draws the random start (uniform, normal, Bernoulli or zero);
- `project` clips an iterate into the epsilon-ball around x and into [0, 1];
- `per_example_loss` is the objective ("ce" cross-entropy or "cw" logit margin);
- `pgd_loop` runs signed-gradient ascent steps in a `tf.while_loop`, so the step
  count may be a tensor or a variable and changing it does not retrace;
- `apgd_loop` runs Auto-PGD (Croce and Hein 2020): per-example step sizes that
  halve at fixed checkpoints when progress stalls, momentum 0.75, and jumps back
  to the best point; `attack_objective` gives its losses (cross-entropy, DLR,
  targeted DLR) and `top_wrong_classes` the targets of APGD-T;
- `strongest_over_runs` keeps the per-example worst case over restarts or targets;
- `per_example_perturbation` draws a random start from one seed per example, so
  that a result does not depend on how examples are batched.

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
- `pgd` and `apgd` return, per example, the strongest iterate they saw
  (misclassified first, then highest loss) across steps and restarts, so with
  the same seed more restarts can never give a weaker attack (nor, for `pgd`,
  more steps). APGD-T counts any misclassification as success, as AutoAttack
  does, so its result need not be classified as the target.

When called eagerly, `pgd`, `apgd` and `apgd_targeted` run through a cached
`tf.function` per model; inside a `tf.function` they build their ops in place.
"""

import math
import numbers
import weakref

import keras
import tensorflow as tf

LOSSES = ("ce", "cw")
INITIALIZATIONS = ("uniform", "normal", "bernoulli", "zero")


def check_epsilon(epsilon, name="epsilon"):
    """Validates an L-infinity radius for images in [0, 1].

    Args:
        epsilon: The radius (a Python number).
        name: The argument or flag name used in the error message.

    Returns:
        The radius as a float.

    Raises:
        ValueError: If the radius is not a number in [0, 1].
    """
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {epsilon!r}.") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{name} must be in [0, 1] (images are scaled to [0, 1]), got {value}."
        )
    return value


def check_positive(value, name):
    """Validates a strictly positive number such as a step size.

    Args:
        value: The number to check.
        name: The argument or flag name used in the error message.

    Returns:
        The number as a float.

    Raises:
        ValueError: If the number is not > 0.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number > 0, got {value!r}.") from None
    if not number > 0.0:
        raise ValueError(f"{name} must be > 0, got {number}.")
    return number


def check_count(value, name, minimum=0):
    """Validates an integer count such as a number of steps or restarts.

    Args:
        value: The count to check.
        name: The argument or flag name used in the error message.
        minimum: The smallest allowed value.

    Returns:
        The count as an int.

    Raises:
        ValueError: If the count is not an integer >= minimum.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    count = int(value)
    if count < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {count}.")
    return count


def check_choice(value, choices, name):
    """Validates a name against the allowed choices.

    Args:
        value: The name to check.
        choices: The allowed names.
        name: The argument or flag name used in the error message.

    Returns:
        The name.

    Raises:
        ValueError: If the name is not one of `choices`.
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")
    return value


def per_example_loss(logits, labels, loss="ce"):
    """The attack objective for each example, to be maximised.

    Args:
        logits: Float tensor [batch, classes].
        labels: Integer tensor [batch] of true classes.
        loss: "ce" for softmax cross-entropy, "cw" for the Carlini-Wagner
            margin max_{j != y} z_j - z_y (no confidence clamp, so its gradient
            never vanishes), or a callable (logits, labels) -> losses [batch].

    Returns:
        Float tensor [batch].
    """
    if callable(loss):
        return loss(logits, labels)
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    if loss == "ce":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    if loss == "cw":
        return margin(logits, labels)
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}.")


def margin(logits, labels):
    """The largest wrong logit minus the true logit, per example.

    Args:
        logits: Float tensor [batch, classes].
        labels: Integer tensor [batch].

    Returns:
        Float tensor [batch]; positive exactly where the example is misclassified
        (ties aside).
    """
    num_classes = tf.shape(logits)[-1]
    true_mask = tf.one_hot(labels, num_classes, on_value=True, off_value=False)
    true_logit = tf.reduce_sum(tf.where(true_mask, logits, tf.zeros_like(logits)), axis=-1)
    wrong_logits = tf.where(true_mask, tf.fill(tf.shape(logits), logits.dtype.min), logits)
    return tf.reduce_max(wrong_logits, axis=-1) - true_logit


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
    epsilon = tf.cast(epsilon, x.dtype)
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
    scale = epsilon if scale is None else scale
    scale = tf.cast(scale, dtype)
    epsilon = tf.cast(epsilon, dtype)
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
    elif kind == "bernoulli":
        if seed is None:
            bits = tf.random.uniform(shape, 0, 2, dtype=tf.int32)
        else:
            bits = tf.random.stateless_uniform(shape, seed, 0, 2, dtype=tf.int32)
        noise = tf.cast(2 * bits - 1, dtype)
    else:
        raise ValueError(
            f"initialization must be one of {', '.join(INITIALIZATIONS)}; got {kind!r}."
        )
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
    return x_adv + tf.cast(step_size, x_adv.dtype) * tf.sign(gradient)


def loss_and_gradient(logits_fn, x_adv, labels, loss="ce"):
    """Per-example losses at `x_adv` and the gradient of their sum w.r.t. `x_adv`.

    Args:
        logits_fn: Callable mapping images to logits.
        x_adv: Images at which to evaluate.
        labels: Integer labels [batch].
        loss: Attack loss name.

    Returns:
        (logits, per-example losses, gradient).
    """
    with tf.GradientTape() as tape:
        tape.watch(x_adv)
        logits = logits_fn(x_adv)
        losses = per_example_loss(logits, labels, loss)
        total = tf.reduce_sum(losses)
    return logits, losses, tape.gradient(total, x_adv)


def _is_stronger(losses, misclassified, best_losses, best_misclassified):
    """Per example: is the new candidate a stronger attack than the best so far?"""
    return tf.logical_or(
        tf.logical_and(misclassified, tf.logical_not(best_misclassified)),
        tf.logical_and(tf.equal(misclassified, best_misclassified), losses > best_losses),
    )


def _select(condition, new, old):
    mask = tf.reshape(condition, [-1] + [1] * (new.shape.rank - 1))
    return tf.where(mask, new, old)


def pgd_loop(logits_fn, x, labels, x_start, epsilon, step_size, steps, loss="ce", keep_best=False):
    """Runs `steps` projected signed-gradient steps from `x_start`.

    Args:
        logits_fn: Callable mapping images to logits.
        x: Clean images in [0, 1].
        labels: Integer labels [batch].
        x_start: The starting iterate, already inside the ball and [0, 1].
        epsilon: L-infinity radius.
        step_size: Step size alpha.
        steps: Number of steps: a Python int, a tensor or a variable.
        loss: "ce" or "cw".
        keep_best: If True, also evaluate the final iterate and return, per
            example, the strongest iterate seen with its score; if False return
            the final iterate (as adversarial training does).

    Returns:
        If keep_best is False: the final iterate. Otherwise a tuple
        (best iterate, its per-example loss, whether it is misclassified).
    """
    steps = tf.cast(steps, tf.int32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    batch = tf.shape(x)[0]

    if not keep_best:

        def body(step, x_adv):
            _, _, gradient = loss_and_gradient(logits_fn, x_adv, labels, loss)
            return step + 1, project(signed_step(x_adv, gradient, step_size), x, epsilon)

        _, x_adv = tf.while_loop(
            lambda step, _: step < steps, body, [tf.constant(0), x_start], parallel_iterations=1
        )
        return x_adv

    def body_best(step, x_adv, best, best_losses, best_misclassified):
        logits, losses, gradient = loss_and_gradient(logits_fn, x_adv, labels, loss)
        misclassified = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
        stronger = _is_stronger(losses, misclassified, best_losses, best_misclassified)
        best = _select(stronger, x_adv, best)
        best_losses = tf.where(stronger, losses, best_losses)
        best_misclassified = tf.logical_or(best_misclassified, misclassified)
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
        lambda step, *_: step < steps, body_best, initial, parallel_iterations=1
    )
    logits = logits_fn(x_adv)
    losses = per_example_loss(logits, labels, loss)
    misclassified = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
    stronger = _is_stronger(losses, misclassified, best_losses, best_misclassified)
    best = _select(stronger, x_adv, best)
    best_losses = tf.where(stronger, losses, best_losses)
    return best, best_losses, tf.logical_or(best_misclassified, misclassified)


def logits_function(model):
    """Returns a callable images -> logits for a Keras model or a plain callable.

    Keras models are called with `training=False` (see the module docstring).
    """
    if isinstance(model, keras.layers.Layer):
        return lambda images: model(images, training=False)
    if callable(model):
        return model
    raise ValueError(f"model must be a Keras model or a callable returning logits, got {model!r}.")


def _check_images(x, name="x"):
    if x.shape.rank is not None and x.shape.rank != 4:
        raise ValueError(
            f"{name} must be a 4-D batch of images [batch, height, width, channels], "
            f"got shape {x.shape}."
        )


def _pgd_graph(model, x, y, epsilon, step_size, steps, restarts, seed, loss, random_start):
    logits_fn = logits_function(model)
    x = tf.cast(x, tf.float32)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)

    def run(restart):
        start = _restart_start(x, epsilon, seed, restart, random_start)
        return pgd_loop(logits_fn, x, y, start, epsilon, step_size, steps, loss, keep_best=True)

    best, _, _, _ = strongest_over_runs(run, restarts, x)
    return best


_COMPILED_PGD = weakref.WeakKeyDictionary()


def _compiled_for(cache, model, graph_function):
    """The compiled attack for `model`, traced once per model and cached.

    Autograph is off: the attacks use tf.while_loop, not Python control flow on
    tensors, and converting their loops costs seconds of tracing.
    """
    try:
        return cache[model]
    except (KeyError, TypeError):
        pass
    compiled = tf.function(graph_function, reduce_retracing=True, autograph=False)
    try:
        cache[model] = compiled
    except TypeError:
        pass  # Objects without weak references are compiled per call.
    return compiled


def pgd(
    model,
    x,
    y,
    epsilon,
    step_size,
    steps,
    restarts=1,
    loss="ce",
    random_start=True,
    seed=0,
):
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
    epsilon = check_epsilon(epsilon)
    step_size = check_positive(step_size, "step_size")
    if not tf.is_tensor(steps) and not isinstance(steps, tf.Variable):
        check_count(steps, "steps", 0)
    check_count(restarts, "restarts", 1)
    check_choice(loss, LOSSES, "loss")
    x = tf.convert_to_tensor(x)
    _check_images(x)
    arguments = (
        tf.convert_to_tensor(x, tf.float32),
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
        compiled = _compiled_for(_COMPILED_PGD, model, _pgd_graph)
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
    epsilon = check_epsilon(epsilon)
    step_size = epsilon if step_size is None else check_positive(step_size, "step_size")
    if epsilon == 0.0:
        return tf.stop_gradient(tf.convert_to_tensor(x, tf.float32))
    check_choice(loss, LOSSES, "loss")
    x = tf.convert_to_tensor(x, tf.float32)
    _check_images(x)
    logits_fn = logits_function(model)
    start = x
    if random_start:
        seed_pair = tf.constant([int(seed), 0], tf.int64)
        start = project(x + initial_perturbation(tf.shape(x), epsilon, seed=seed_pair), x, epsilon)
    _, _, gradient = loss_and_gradient(logits_fn, start, tf.reshape(y, [-1]), loss)
    return tf.stop_gradient(project(signed_step(start, gradient, step_size), x, epsilon))


# --------------------------------------------------------------------------------------
# Auto-PGD (Croce and Hein 2020, "Reliable evaluation of adversarial robustness with an
# ensemble of diverse parameter-free attacks"): APGD-CE, APGD-DLR and the targeted APGD-T.

APGD_LOSSES = ("ce", "dlr", "cw")
APGD_MOMENTUM = 0.75
APGD_RHO = 0.75
APGD_TARGET_CLASSES = 9

# Keeps the DLR ratio finite when the top logits tie (the paper's constant).
_DLR_TINY = 1e-12


def _static_classes(logits):
    return logits.shape[-1] if logits.shape.rank is not None else None


def dlr_loss(logits, labels):
    """The difference-of-logits-ratio loss, per example, to be maximised.

    DLR = -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3), where z_pi1 >= z_pi2 >= ...
    are the sorted logits. The ratio does not change when the logits are shifted
    or scaled, so it is not fooled by a network that saturates its softmax.

    Args:
        logits: Float tensor [batch, classes], classes >= 3.
        labels: Integer tensor [batch] of true classes.

    Returns:
        Float tensor [batch]; positive exactly where the example is misclassified.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    classes = _static_classes(logits)
    if classes is not None and classes < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, the model has {classes}.")
    top = tf.math.top_k(logits, k=3).values
    return margin(logits, labels) / (top[:, 0] - top[:, 2] + _DLR_TINY)


def targeted_dlr_loss(logits, labels, target_labels):
    """The targeted DLR loss of APGD-T, per example, to be maximised.

    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) for true class y and target t.

    Args:
        logits: Float tensor [batch, classes], classes >= 4.
        labels: Integer tensor [batch] of true classes.
        target_labels: Integer tensor [batch] of target classes.

    Returns:
        Float tensor [batch].
    """
    logits = tf.cast(logits, tf.float32)
    classes = _static_classes(logits)
    if classes is not None and classes < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, the model has {classes}.")
    top = tf.math.top_k(logits, k=4).values
    gap = _logit_of(logits, target_labels) - _logit_of(logits, labels)
    return gap / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_TINY)


def _logit_of(logits, classes):
    classes = tf.cast(tf.reshape(classes, [-1]), tf.int32)
    return tf.gather(logits, classes, axis=1, batch_dims=1)


def attack_objective(logits, labels, loss="ce", target_labels=None):
    """The per-example objective of APGD, untargeted or targeted, to be maximised.

    Args:
        logits: Float tensor [batch, classes].
        labels: Integer tensor [batch] of true classes.
        loss: "ce", "dlr" or "cw".
        target_labels: Optional integer tensor [batch]. Without it the loss pushes
            away from the true class; with it, towards the target: -CE(z, t),
            the targeted DLR, or the logit gap z_t - z_y.

    Returns:
        Float tensor [batch].
    """
    if target_labels is None:
        if loss == "dlr":
            return dlr_loss(logits, labels)
        return per_example_loss(logits, labels, check_choice(loss, APGD_LOSSES, "loss"))
    logits = tf.cast(logits, tf.float32)
    if loss == "ce":
        targets = tf.cast(tf.reshape(target_labels, [-1]), tf.int32)
        return -tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    if loss == "dlr":
        return targeted_dlr_loss(logits, labels, target_labels)
    if loss == "cw":
        return _logit_of(logits, target_labels) - _logit_of(logits, labels)
    raise ValueError(f"loss must be one of {', '.join(APGD_LOSSES)}; got {loss!r}.")


def top_wrong_classes(logits, labels, count):
    """The `count` classes with the highest logits other than the true class.

    These are the targets of APGD-T, computed once at the clean input.

    Args:
        logits: Float tensor [batch, classes].
        labels: Integer tensor [batch].
        count: Number of classes to return, at most classes - 1.

    Returns:
        Integer tensor [batch, count], the most likely wrong class first.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    true_mask = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
    wrong = tf.where(true_mask, tf.fill(tf.shape(logits), -float("inf")), logits)
    return tf.math.top_k(wrong, k=count).indices


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
    steps = check_count(steps, "steps", 0)
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
        loss: "ce", "dlr" or "cw" (see `attack_objective`).
        target_labels: Optional integer tensor [batch] for a targeted attack.
        momentum: Weight of the new step (0.75 in the paper).
        rho: Fraction of loss increases below which the step size is halved.

    Returns:
        A tuple (strongest iterate per example, its loss, whether any iterate was
        misclassified); strongest means misclassified first, then highest loss.
    """
    steps = check_count(steps, "steps", 0)
    check_choice(loss, APGD_LOSSES, "loss")
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
            losses = attack_objective(logits, labels, loss, target_labels)
            total = tf.reduce_sum(losses)
        gradient = tape.gradient(total, images) if with_gradient else None
        misclassified = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
        return losses, gradient, misclassified

    def body(k, state):
        (current, previous_iterate, step_size, previous_loss, increases, best, best_loss,
         best_gradient, loss_at_check, halved_at_check, strongest, strongest_loss,
         strongest_misclassified) = state
        losses, gradient, misclassified = evaluate(current, True)

        stronger = _is_stronger(losses, misclassified, strongest_loss, strongest_misclassified)
        strongest = _select(stronger, current, strongest)
        strongest_loss = tf.where(stronger, losses, strongest_loss)
        strongest_misclassified = tf.logical_or(strongest_misclassified, misclassified)

        first = tf.equal(k, 0)
        improved = tf.logical_or(first, losses > best_loss)
        best = _select(improved, current, best)
        best_gradient = _select(improved, gradient, best_gradient)
        best_loss = tf.where(improved, losses, best_loss)
        loss_at_check = tf.where(first, best_loss, loss_at_check)
        increases += tf.cast(tf.logical_and(tf.logical_not(first), losses > previous_loss), tf.float32)

        interval = interval_lengths[k]
        at_checkpoint = interval > 0
        too_few_increases = increases < rho * interval
        stalled = tf.logical_and(tf.logical_not(halved_at_check), loss_at_check >= best_loss)
        halve = tf.logical_and(at_checkpoint, tf.logical_or(too_few_increases, stalled))
        step_size = tf.where(halve, step_size / 2.0, step_size)
        current = _select(halve, best, current)
        gradient = _select(halve, best_gradient, gradient)
        losses = tf.where(halve, best_loss, losses)
        halved_at_check = tf.where(at_checkpoint, halve, halved_at_check)
        loss_at_check = tf.where(at_checkpoint, best_loss, loss_at_check)
        increases = tf.where(at_checkpoint, tf.zeros_like(increases), increases)

        target = project(current + broadcast(step_size) * tf.sign(gradient), x, epsilon)
        weight = tf.where(first, 1.0, momentum)
        following = project(
            current + weight * (target - current) + (1.0 - weight) * (current - previous_iterate),
            x,
            epsilon,
        )
        state = (following, current, step_size, losses, increases, best, best_loss,
                 best_gradient, loss_at_check, halved_at_check, strongest, strongest_loss,
                 strongest_misclassified)
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
        state[0], state[10], state[11], state[12]
    )
    # The last iterate only needs its loss: the budget stays at `steps` gradients.
    losses, _, misclassified = evaluate(final, False)
    stronger = _is_stronger(losses, misclassified, strongest_loss, strongest_misclassified)
    return (
        _select(stronger, final, strongest),
        tf.where(stronger, losses, strongest_loss),
        tf.logical_or(strongest_misclassified, misclassified),
    )


def strongest_over_runs(run, runs, x):
    """Calls `run(i)` for i in [0, runs) and keeps, per example, the strongest result.

    Restarts and the targets of APGD-T are runs; `run` returns what `pgd_loop`
    (keep_best=True) and `apgd_loop` return. The runs share one traced body.

    Args:
        run: Callable taking a scalar int32 tensor and returning (candidate
            images, per-example losses, per-example misclassified).
        runs: Number of runs >= 1 (a Python int or an int tensor).
        x: The clean images (the shape and dtype of the candidates).

    Returns:
        A tuple (strongest images, their losses, misclassified by any run, and a
        bool tensor [runs, batch]: misclassified by run i).
    """
    batch = tf.shape(x)[0]
    history = tf.TensorArray(tf.bool, size=tf.cast(runs, tf.int32), element_shape=[None])

    def body(index, best, best_losses, best_misclassified, history):
        candidate, losses, misclassified = run(index)
        stronger = _is_stronger(losses, misclassified, best_losses, best_misclassified)
        return (
            index + 1,
            _select(stronger, candidate, best),
            tf.where(stronger, losses, best_losses),
            tf.logical_or(best_misclassified, misclassified),
            history.write(index, misclassified),
        )

    initial = [tf.constant(0), x, tf.fill([batch], tf.float32.min), tf.zeros([batch], tf.bool), history]
    _, best, best_losses, best_misclassified, history = tf.while_loop(
        lambda index, *_: index < runs, body, initial, parallel_iterations=1
    )
    return best, best_losses, best_misclassified, history.stack()


def _restart_start(x, epsilon, seed, restart, random_start):
    if not random_start:
        return x
    # Restart i of seed s draws what a single restart of seed s + i draws.
    restart_seed = tf.stack([tf.cast(seed, tf.int64) + tf.cast(restart, tf.int64), 0])
    noise = initial_perturbation(tf.shape(x), epsilon, "uniform", seed=restart_seed)
    return project(x + noise, x, epsilon)


def _apgd_graph(model, x, y, epsilon, steps, restarts, seed, loss, random_start, target_labels):
    logits_fn = logits_function(model)
    x = tf.cast(x, tf.float32)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)

    def run(restart):
        start = _restart_start(x, epsilon, seed, restart, random_start)
        return apgd_loop(logits_fn, x, y, start, epsilon, steps, loss, target_labels)

    best, _, _, _ = strongest_over_runs(run, restarts, x)
    return best


def _apgd_targeted_graph(model, x, y, epsilon, steps, restarts, seed, loss, target_classes):
    logits_fn = logits_function(model)
    x = tf.cast(x, tf.float32)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    targets = top_wrong_classes(logits_fn(x), y, target_classes)

    def run(index):
        # Run index = target rank * restarts + restart.
        target_labels = tf.gather(targets, index // restarts, axis=1)
        start = _restart_start(x, epsilon, seed, index % restarts, True)
        return apgd_loop(logits_fn, x, y, start, epsilon, steps, loss, target_labels)

    best, _, _, _ = strongest_over_runs(run, target_classes * restarts, x)
    return best


_COMPILED_APGD = weakref.WeakKeyDictionary()
_COMPILED_APGD_TARGETED = weakref.WeakKeyDictionary()


def _check_apgd_arguments(x, epsilon, steps, restarts, loss):
    epsilon = check_epsilon(epsilon)
    check_count(steps, "steps", 0)
    check_count(restarts, "restarts", 1)
    check_choice(loss, APGD_LOSSES, "loss")
    x = tf.convert_to_tensor(x, tf.float32)
    _check_images(x)
    return x, epsilon


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
    """Auto-PGD (Croce and Hein 2020): APGD-CE with loss="ce", APGD-DLR with "dlr".

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
    x, epsilon = _check_apgd_arguments(x, epsilon, steps, restarts, loss)
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
        result = _compiled_for(_COMPILED_APGD, model, _apgd_graph)(model, *arguments)
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
    x, epsilon = _check_apgd_arguments(x, epsilon, steps, restarts, loss)
    check_count(target_classes, "target_classes", 1)
    classes = _static_classes(logits_function(model)(x[:1]))
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
        compiled = _compiled_for(_COMPILED_APGD_TARGETED, model, _apgd_targeted_graph)
        result = compiled(model, *arguments)
    return tf.stop_gradient(result)
