"""Real data: M+DEAT on the embedded MNIST digits makes the network robust."""

import keras
import numpy as np
import tensorflow as tf

import deat_tf
from deat_tf import attacks, models

EPSILON = 0.3


def pgd20_accuracy(network, images, labels):
    x_adv = attacks.pgd(network, images, labels, EPSILON, 2.5 * EPSILON / 20, steps=20)
    return float(np.mean(np.argmax(network(x_adv, training=False), axis=-1) == labels))


def expected_counts(magnitudes, gamma, max_steps):
    """The M+ rule of docs/algorithm.md, written out independently of the callback."""
    counts, steps, threshold = [], 1, None
    for epoch, magnitude in enumerate(magnitudes):
        counts.append(steps)
        if epoch == 0:
            steps = min(steps + 1, max_steps)
        elif epoch == 1:
            threshold = gamma * magnitude
        elif magnitude > threshold and steps < max_steps:
            threshold, steps = gamma * magnitude, steps + 1
    return counts


def test_m_plus_deat_raises_pgd_accuracy_far_above_clean_training(
    mnist_sample, clean_mnist_network
):
    keras.utils.set_random_seed(0)
    dataset = (
        tf.data.Dataset.from_tensor_slices((mnist_sample["x_train"], mnist_sample["y_train"]))
        .shuffle(8000, seed=0)
        .batch(100)
        .prefetch(2)
    )
    model = deat_tf.AdversarialModel(
        models.mnist_cnn(), method="deat", epsilon=EPSILON, step_size=1.25 * EPSILON
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    history = model.fit(
        dataset,
        epochs=5,
        callbacks=[deat_tf.MagnitudeScheduler(gamma=1.01, max_steps=8)],
        verbose=0,
    ).history

    images, labels = mnist_sample["x_test"][:1000], mnist_sample["y_test"][:1000]
    clean_trained = pgd20_accuracy(clean_mnist_network, images, labels)
    robust_trained = pgd20_accuracy(model.network, images, labels)
    clean_accuracy = float(np.mean(np.argmax(model.network(images), axis=-1) == labels))
    print(
        f"M+DEAT r per epoch {history['attack_steps']}, grad_magnitude "
        f"{np.round(history['grad_magnitude'], 1).tolist()}, clean {clean_accuracy:.3f}, "
        f"PGD-20 {robust_trained:.3f} vs clean-trained PGD-20 {clean_trained:.3f}"
    )

    assert clean_accuracy > 0.9
    assert clean_trained < 0.05
    assert robust_trained > 0.3 and robust_trained > clean_trained + 0.25
    # r rises, and exactly as the rule dictates from the logged magnitudes.
    counts = [int(value) for value in history["attack_steps"]]
    assert counts == expected_counts(history["grad_magnitude"], 1.01, 8)
    assert counts[0] == 1 and max(counts) >= 3
