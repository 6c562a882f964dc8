"""The losses of the weight update, one per `methods.Method.training_loss`.

Each returns the forward of one update: a function mapping the network input
(x_adv, or x + delta for the replays) to (the logits the training metrics
score, the training loss already divided by the replica count, as Keras
losses are). `AdversarialModel._update` differentiates it.
"""

import tensorflow as tf

from deat_tf import distribute, losses


def cross_entropy(model, y, sample_weight):
    """The standard update's forward: the compiled loss on f(images).

    Args:
        model: The `AdversarialModel` (its network and compiled loss).
        y: Labels.
        sample_weight: Per-example weights, or None.

    Returns:
        The forward function.
    """

    def loss_fn(images):
        logits = model.network(images, training=True)
        loss = model.compute_loss(
            x=images, y=y, y_pred=logits, sample_weight=sample_weight, training=True
        )
        return logits, loss

    return loss_fn


def trades(model, x, y, sample_weight):
    """TRADES: CE(f(x), y) + beta * KL(f(x) || f(x_adv)), KL summed over classes, batch mean.

    Args:
        model: The `AdversarialModel` (network, compiled loss, beta).
        x: The clean images.
        y: Labels.
        sample_weight: Per-example weights of the clean term, or None.

    Returns:
        The forward function of x_adv.
    """

    def loss_fn(x_adv):
        natural_logits = model.network(x, training=True)
        adversarial_logits = model.network(x_adv, training=True)
        natural_loss = model.compute_loss(
            x=x, y=y, y_pred=natural_logits, sample_weight=sample_weight, training=True
        )
        natural_probabilities = tf.nn.softmax(tf.cast(natural_logits, tf.float32))
        robust_loss = tf.reduce_mean(
            losses.kl_divergence(natural_probabilities, adversarial_logits)
        )
        return adversarial_logits, natural_loss + model.beta * distribute.per_replica_share(
            robust_loss
        )

    return loss_fn


def mart(model, x, labels):
    """MART: boosted CE on f(x_adv) + beta * KL(f(x) || f(x_adv)) * (1 - p_y(x)).

    Args:
        model: The `AdversarialModel` (network, regularization losses, beta).
        x: The clean images.
        labels: Integer labels [batch].

    Returns:
        The forward function of x_adv.
    """

    def loss_fn(x_adv):
        natural_logits = model.network(x, training=True)
        adversarial_logits = model.network(x_adv, training=True)
        loss = tf.reduce_mean(
            losses.mart_loss(natural_logits, adversarial_logits, labels, model.beta)
        )
        regularization = tf.add_n(model.losses) if model.losses else 0.0
        return adversarial_logits, distribute.per_replica_share(loss + regularization)

    return loss_fn


def forward(name, model, x, y, labels, sample_weight):
    """The forward of the training loss `name` (a `Method.training_loss`).

    Args:
        name: "cross_entropy", "trades" or "mart".
        model: The `AdversarialModel`.
        x: The clean images.
        y: Labels as given to fit.
        labels: Integer labels [batch].
        sample_weight: Per-example weights, or None (MART takes none).

    Returns:
        The forward function.
    """
    if name == "trades":
        return trades(model, x, y, sample_weight)
    if name == "mart":
        return mart(model, x, labels)
    return cross_entropy(model, y, sample_weight)
