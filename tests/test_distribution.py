"""One replica versus MirroredStrategy over two logical CPUs: same numbers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import deat_tf
from deat_tf import models


def train(strategy, method, mnist_sample, carry=False):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        network = models.mnist_cnn()
        model = deat_tf.AdversarialModel(
            network,
            method=method,
            epsilon=0.3,
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
    "method, carry",
    [("deat", False), ("pgd", False), ("deat", True), ("trades", False), ("mart", False)],
    ids=["deat", "pgd", "deat-carried", "trades", "mart"],
)
def test_two_replicas_match_one_replica(mnist_sample, two_replica_strategy, method, carry):
    single_history, single = train(tf.distribute.get_strategy(), method, mnist_sample, carry)
    mirrored_history, mirrored = train(two_replica_strategy, method, mnist_sample, carry)
    assert mirrored.distribute_strategy.num_replicas_in_sync == 2
    # The count must actually change within the run for this test to mean anything.
    assert single_history["attack_steps"][-1] > single_history["attack_steps"][0]
    assert mirrored_history["attack_steps"] == single_history["attack_steps"]
    for key in ("loss", "adv_accuracy", "grad_magnitude"):
        np.testing.assert_allclose(
            mirrored_history[key], single_history[key], rtol=2e-3, atol=1e-4, err_msg=key
        )
    assert int(mirrored.optimizer.iterations.numpy()) == int(single.optimizer.iterations.numpy())
    for a, b in zip(single.network.get_weights(), mirrored.network.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_replicas_take_their_slices_of_the_single_replica_random_start(two_replica_strategy):
    images = tf.random.stateless_uniform((8, 4, 4, 1), [3, 4])
    single = deat_tf.AdversarialModel(models.mnist_cnn(input_shape=(4, 4, 1)), epsilon=0.3, seed=5)
    expected = single._random_start(images).numpy()
    strategy = two_replica_strategy
    with strategy.scope():
        mirrored = deat_tf.AdversarialModel(
            models.mnist_cnn(input_shape=(4, 4, 1)), epsilon=0.3, seed=5
        )
    halves = strategy.experimental_distribute_values_from_function(
        lambda context: images[
            4 * context.replica_id_in_sync_group : 4 * (context.replica_id_in_sync_group + 1)
        ]
    )
    starts = strategy.experimental_local_results(
        strategy.run(tf.function(mirrored._random_start), (halves,))
    )
    np.testing.assert_array_equal(np.concatenate([start.numpy() for start in starts]), expected)
    assert not np.array_equal(starts[0].numpy() - images[:4], starts[1].numpy() - images[4:])
