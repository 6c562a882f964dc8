"""Per-example losses: the objectives attacks maximise and the TRADES/MART training losses.

Every function takes logits [batch, classes] (any float dtype; computed in
float32) and integer labels [batch], and returns one value per example. Attack
objectives are to be MAXIMISED; attacks sum them over the batch before taking
the gradient, so an example's gradient does not shrink with the batch size.
"""

import tensorflow as tf

from deat_tf import checks

LOSSES = ("ce", "cw")
APGD_LOSSES = ("ce", "dlr", "cw")

# Keeps the DLR ratio finite when the top logits tie (the paper's constant).
_DLR_TINY = 1e-12


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
    logits = _attack_precision(logits)
    labels = _labels(labels)
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
    labels = _labels(labels)
    num_classes = tf.shape(logits)[-1]
    true_mask = tf.one_hot(labels, num_classes, on_value=True, off_value=False)
    true_logit = tf.reduce_sum(tf.where(true_mask, logits, tf.zeros_like(logits)), axis=-1)
    wrong_logits = tf.where(true_mask, tf.fill(tf.shape(logits), logits.dtype.min), logits)
    return tf.reduce_max(wrong_logits, axis=-1) - true_logit


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
    logits = _attack_precision(logits)
    classes = static_classes(logits)
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
    logits = _attack_precision(logits)
    classes = static_classes(logits)
    if classes is not None and classes < 4:
        raise ValueError(
            f"the targeted DLR loss needs at least 4 classes, the model has {classes}."
        )
    top = tf.math.top_k(logits, k=4).values
    gap = logit_of(logits, target_labels) - logit_of(logits, labels)
    return gap / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_TINY)


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
    checks.check_choice(loss, APGD_LOSSES, "loss")
    if target_labels is None:
        if loss == "dlr":
            return dlr_loss(logits, labels)
        return per_example_loss(logits, labels, loss)
    logits = _attack_precision(logits)
    if loss == "ce":
        return -tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=_labels(target_labels), logits=logits
        )
    if loss == "dlr":
        return targeted_dlr_loss(logits, labels, target_labels)
    return logit_of(logits, target_labels) - logit_of(logits, labels)


def top_wrong_classes(logits, labels, count):
    """The `count` classes with the highest logits other than the true class.

    These are the targets of the targeted attacks, computed once at the clean input.

    Args:
        logits: Float tensor [batch, classes].
        labels: Integer tensor [batch].
        count: Number of classes to return, at most classes - 1.

    Returns:
        Integer tensor [batch, count], the most likely wrong class first.
    """
    logits = tf.cast(logits, tf.float32)
    true_mask = tf.one_hot(_labels(labels), tf.shape(logits)[-1], on_value=True, off_value=False)
    wrong = tf.where(true_mask, tf.fill(tf.shape(logits), -float("inf")), logits)
    return tf.math.top_k(wrong, k=count).indices


def kl_divergence(probabilities, logits):
    """Per-example KL(p || softmax(logits)), summed over classes.

    Args:
        probabilities: Float tensor [batch, classes], rows summing to 1.
        logits: Float tensor [batch, classes].

    Returns:
        Float32 tensor [batch].
    """
    log_q = tf.nn.log_softmax(tf.cast(logits, tf.float32))
    return tf.reduce_sum(
        tf.math.xlogy(probabilities, probabilities) - probabilities * log_q, axis=-1
    )


def mart_loss(natural_logits, adversarial_logits, labels, beta):
    """The MART training loss (Wang et al. 2020), per example.

    Boosted cross-entropy of f(x_adv), CE - log(1 - max_{j != y} p_j(x_adv)),
    plus beta * KL(f(x) || f(x_adv)) * (1 - p_y(x)), with the small constants of
    the reference code. The gradient flows through both branches.

    Args:
        natural_logits: Logits of the clean images [batch, classes].
        adversarial_logits: Logits of the adversarial images [batch, classes].
        labels: Integer tensor [batch].
        beta: Weight of the KL term.

    Returns:
        Float32 tensor [batch].
    """
    labels = _labels(labels)
    logits = tf.cast(adversarial_logits, tf.float32)
    adversarial_probabilities = tf.nn.softmax(logits)
    # The most likely wrong class under attack.
    top_two = tf.math.top_k(adversarial_probabilities, k=2).indices
    wrong = tf.where(tf.equal(top_two[:, 0], labels), top_two[:, 1], top_two[:, 0])
    wrong_probability = tf.gather(adversarial_probabilities, wrong, batch_dims=1)
    boosted_cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=logits
    ) - tf.math.log(1.0001 - wrong_probability + 1e-12)
    natural_probabilities = tf.nn.softmax(tf.cast(natural_logits, tf.float32))
    true_probability = tf.gather(natural_probabilities, labels, batch_dims=1)
    robust = kl_divergence(natural_probabilities, logits) * (1.0000001 - true_probability)
    return boosted_cross_entropy + beta * robust


def logit_of(logits, classes):
    """The logit of the given class for each example: [batch]."""
    return tf.gather(logits, _labels(classes), axis=1, batch_dims=1)


def static_classes(logits):
    """The number of classes if it is known when the graph is built, else None."""
    return logits.shape[-1] if logits.shape.rank is not None else None


def _attack_precision(logits):
    """Logits in float32 (16-bit ones are widened), or float64 where they already are."""
    return logits if logits.dtype == tf.float64 else tf.cast(logits, tf.float32)


def _labels(labels):
    return tf.cast(tf.reshape(labels, [-1]), tf.int32)
