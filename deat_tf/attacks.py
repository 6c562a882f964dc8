"""L-infinity attacks on image classifiers, as plain TensorFlow functions.

Every attack here works on images in [0, 1] and on any Keras model (called with
`training=False`) or any callable that maps a batch of images to logits:

    x_adv = attacks.pgd(model, x, y, epsilon=8 / 255, step_size=2 / 255, steps=10)
    x_adv = attacks.fgsm(model, x, y, epsilon=8 / 255)

The attacks are composed from small parts that the adversarial train step reuses:

- `initial_perturbation` draws the random start (uniform, normal, Bernoulli or zero);
- `project` clips an iterate into the epsilon-ball around x and into [0, 1];
- `per_example_loss` is the objective ("ce" cross-entropy or "cw" logit margin);
- `pgd_loop` runs signed-gradient ascent steps in a `tf.while_loop`, so the step
  count may be a tensor or a variable and changing it does not retrace.

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
- `pgd` returns, per example, the strongest iterate it saw (misclassified first,
  then highest loss) across steps and restarts, so with the same seed more steps
  or more restarts can never give a weaker attack.

When called eagerly, `pgd` and `fgsm` run through a cached `tf.function` per model;
inside a `tf.function` they build their ops in place.
"""

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
    batch = tf.shape(x)[0]

    def restart_body(restart, best, best_losses, best_misclassified):
        if random_start:
            # Restart i of seed s draws what a single restart of seed s + i draws.
            restart_seed = tf.stack([tf.cast(seed, tf.int64) + tf.cast(restart, tf.int64), 0])
            noise = initial_perturbation(tf.shape(x), epsilon, "uniform", seed=restart_seed)
            start = project(x + noise, x, epsilon)
        else:
            start = x
        candidate, losses, misclassified = pgd_loop(
            logits_fn, x, y, start, epsilon, step_size, steps, loss, keep_best=True
        )
        stronger = _is_stronger(losses, misclassified, best_losses, best_misclassified)
        return (
            restart + 1,
            _select(stronger, candidate, best),
            tf.where(stronger, losses, best_losses),
            tf.logical_or(best_misclassified, misclassified),
        )

    initial = [tf.constant(0), x, tf.fill([batch], tf.float32.min), tf.zeros([batch], tf.bool)]
    _, best, _, _ = tf.while_loop(
        lambda restart, *_: restart < restarts, restart_body, initial, parallel_iterations=1
    )
    return best


_COMPILED_PGD = weakref.WeakKeyDictionary()


def _compiled_for(cache, model, graph_function):
    try:
        return cache[model]
    except (KeyError, TypeError):
        pass
    compiled = tf.function(graph_function, reduce_retracing=True)
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
