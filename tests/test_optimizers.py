"""PyTorchSGD: the PyTorch momentum rule across learning-rate drops, saved, mirrored."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import deat_tf
from deat_tf import config as config_lib
from deat_tf import models, train

GRADIENTS = (1.0, 2.0, -1.0, 0.5)


def run_optimizer(optimizer):
    """Applies GRADIENTS to a scalar weight starting at 0; returns the weight after each step."""
    weight = keras.Variable(0.0)
    history = []
    for gradient in GRADIENTS:
        optimizer.apply([tf.constant(gradient)], [weight])
        history.append(float(weight.numpy()))
    return history


def drop_after_two_steps():
    # Steps 0 and 1 at 1.0, steps 2 and 3 at 0.1.
    return keras.optimizers.schedules.PiecewiseConstantDecay([1], [1.0, 0.1])


def test_pytorch_sgd_matches_a_hand_computation_across_a_learning_rate_drop():
    # b <- 0.9 b + g; theta <- theta - lr b, with lr 1, 1, 0.1, 0.1:
    # b = 1, 2.9, 1.61, 1.949; steps 1, 2.9, 0.161, 0.1949.
    expected = [-1.0, -3.9, -4.061, -4.2559]
    weights = run_optimizer(deat_tf.PyTorchSGD(drop_after_two_steps(), momentum=0.9))
    assert weights == pytest.approx(expected, abs=1e-6)
    # Keras' rule carries the old rate in its velocity: v = -1, -2.9, -2.51, -2.309.
    keras_weights = run_optimizer(keras.optimizers.SGD(drop_after_two_steps(), momentum=0.9))
    assert keras_weights == pytest.approx([-1.0, -3.9, -6.41, -8.719], abs=1e-6)


def test_pytorch_sgd_nesterov_and_plain_steps_match_a_hand_computation():
    # Nesterov: theta <- theta - lr (g + 0.9 b) with b updated first:
    # b = 1, 2.9, 1.61, 1.949; directions 1.9, 4.61, 0.449, 2.2541.
    weights = run_optimizer(deat_tf.PyTorchSGD(drop_after_two_steps(), momentum=0.9, nesterov=True))
    assert weights == pytest.approx([-1.9, -6.51, -6.5549, -6.78031], abs=1e-6)
    plain = run_optimizer(deat_tf.PyTorchSGD(drop_after_two_steps()))
    assert plain == pytest.approx([-1.0, -3.0, -2.9, -2.95], abs=1e-6)


def linear_network(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 1))
    outputs = layers.Dense(3)(layers.Flatten()(inputs))
    return keras.Model(inputs, outputs)


def toy_data(examples=16, seed=0):
    generator = np.random.default_rng(seed)
    x = generator.uniform(size=(examples, 4, 4, 1)).astype(np.float32)
    y = generator.integers(0, 3, size=examples).astype(np.int64)
    return x, y


def mnist_shaped_data(examples=16):
    generator = np.random.default_rng(1)
    x = generator.uniform(size=(examples, 28, 28, 1)).astype(np.float32)
    return x, generator.integers(0, 10, size=examples).astype(np.int64)


def test_adversarial_model_with_coupled_l2_follows_pytorch_across_a_drop():
    x, y = toy_data()
    momentum, decay = 0.9, 0.01
    # Minibatch 0 at 0.5, minibatch 1 at 0.05 (schedules are keyed on minibatches).
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.5, 0.05])
    model = deat_tf.AdversarialModel(linear_network(), method="none", l2_weight_decay=decay)
    model.compile(optimizer=deat_tf.PyTorchSGD(schedule, momentum=momentum))
    reference = linear_network()
    buffers = [np.zeros(variable.shape, np.float32) for variable in reference.trainable_variables]
    for minibatch, rate in enumerate((0.5, 0.05)):
        images, labels = x[8 * minibatch : 8 * minibatch + 8], y[8 * minibatch : 8 * minibatch + 8]
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(
                    labels, reference(images, training=True), from_logits=True
                )
            )
        gradients = tape.gradient(loss, reference.trainable_variables)
        for index, (variable, gradient) in enumerate(zip(reference.trainable_variables, gradients)):
            # PyTorch SGD(weight_decay): the L2 term joins the gradient before momentum.
            buffers[index] = momentum * buffers[index] + gradient.numpy() + decay * variable.numpy()
            variable.assign(variable.numpy() - rate * buffers[index])
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for trained, expected in zip(model.network.trainable_variables, reference.trainable_variables):
        np.testing.assert_allclose(trained.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)


def deat_model(strategy, optimizer_momentum=0.9):
    with strategy.scope():
        # The MNIST CNN, as in every mirrored test: TensorFlow keys its CPU all-reduces by
        # an instance number that restarts with each strategy, and a later strategy whose
        # packed gradients have another shape fails ("Shape mismatch in the collective").
        keras.utils.set_random_seed(3)
        model = deat_tf.AdversarialModel(
            models.mnist_cnn(), method="deat", attack_steps=2, epsilon=0.1, l2_weight_decay=1e-3
        )
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.5, 0.05])
        model.compile(optimizer=deat_tf.PyTorchSGD(schedule, momentum=optimizer_momentum))
    return model


def test_pytorch_sgd_gives_the_same_weights_on_one_and_two_replicas(two_replica_strategy):
    x, y = mnist_shaped_data()
    weights = []
    for strategy in (tf.distribute.get_strategy(), two_replica_strategy):
        model = deat_model(strategy)
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        model.fit(dataset, epochs=1, verbose=0)
        assert int(model.optimizer.iterations.numpy()) == 4
        weights.append([variable.numpy() for variable in model.network.trainable_variables])
    for single, mirrored in zip(*weights):
        np.testing.assert_allclose(mirrored, single, rtol=1e-5, atol=1e-6)


def test_a_saved_model_resumes_with_the_pytorch_rule_and_its_buffers(tmp_path):
    x, y = mnist_shaped_data()
    model = deat_model(tf.distribute.get_strategy())
    model.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, deat_tf.PyTorchSGD)
    assert loaded.optimizer.momentum == pytest.approx(0.9)
    model.fit(x[8:], y[8:], batch_size=8, epochs=1, verbose=0)
    loaded.fit(x[8:], y[8:], batch_size=8, epochs=1, verbose=0)
    # Same next steps: the momentum buffers and the minibatch-keyed rate were restored.
    for original, restored in zip(model.network.weights, loaded.network.weights):
        np.testing.assert_allclose(restored.numpy(), original.numpy(), rtol=1e-6, atol=1e-7)


def test_the_config_chooses_the_momentum_rule():
    recipe = config_lib.TrainConfig(optimizer="sgd_pytorch", lr_schedule="constant")
    optimizer = train.make_optimizer(recipe, steps_per_epoch=10)
    assert isinstance(optimizer, deat_tf.PyTorchSGD) and optimizer.momentum == pytest.approx(0.9)
    keras_sgd = train.make_optimizer(config_lib.replace(recipe, optimizer="sgd"), 10)
    assert type(keras_sgd) is keras.optimizers.SGD
    with pytest.raises(ValueError, match="optimizer must be one of sgd, sgd_pytorch, adam"):
        train.make_optimizer(config_lib.replace(recipe, optimizer="sgd_torch"), 10)
