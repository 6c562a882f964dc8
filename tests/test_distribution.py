"""One replica versus MirroredStrategy over two logical CPUs: same numbers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import deat_tf
from deat_tf import models

from conftest import two_replica_strategy


def train(strategy, method, mnist_sample, carry=False):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        network = models.mnist_cnn()
        model = deat_tf.AdversarialModel(
            network,
            method=method,
            epsilon=0.3,
            initialization="zero",  # random starts differ per replica by design
            carry_perturbation=carry,
            l2_weight_decay=5e-4,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    dataset = tf.data.Dataset.from_tensor_slices(
        (mnist_sample["x_train"][:400], mnist_sample["y_train"][:400])
    ).batch(100)
    # gamma 0.5 makes the rule raise the count after epoch 2 as well as after epoch 0.
    scheduler = deat_tf.MagnitudeScheduler(gamma=0.5, max_steps=4, verbose=0)
    history = model.fit(dataset, epochs=3, callbacks=[scheduler], verbose=0)
    return history.history, model


@pytest.mark.parametrize(
    "method, carry", [("deat", False), ("pgd", False), ("deat", True)], ids=["deat", "pgd", "deat-carried"]
)
def test_two_replicas_match_one_replica(mnist_sample, method, carry):
    single_history, single = train(tf.distribute.get_strategy(), method, mnist_sample, carry)
    mirrored_history, mirrored = train(two_replica_strategy(), method, mnist_sample, carry)
    assert mirrored.distribute_strategy.num_replicas_in_sync == 2
    # The count must actually change within the run for this test to mean anything.
    assert single_history["attack_steps"][-1] > single_history["attack_steps"][0]
    assert mirrored_history["attack_steps"] == single_history["attack_steps"]
    for key in ("loss", "adv_accuracy", "grad_magnitude"):
        np.testing.assert_allclose(mirrored_history[key], single_history[key], rtol=2e-3, atol=1e-4, err_msg=key)
    assert int(mirrored.optimizer.iterations.numpy()) == int(single.optimizer.iterations.numpy())
    for a, b in zip(single.network.get_weights(), mirrored.network.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_random_starts_differ_between_replicas():
    strategy = two_replica_strategy()
    with strategy.scope():
        model = deat_tf.AdversarialModel(models.mnist_cnn(), epsilon=0.3)
    seeds = strategy.experimental_local_results(strategy.run(tf.function(model._step_seed)))
    assert not np.array_equal(seeds[0].numpy(), seeds[1].numpy())
