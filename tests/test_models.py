"""Model registry: shapes, normalisation inside the network, parameter counts, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deat_tf import models


@pytest.mark.parametrize(
    "name, input_shape, classes, width",
    [
        ("mnist_cnn", (28, 28, 1), 10, None),
        ("preact_resnet18", (32, 32, 3), 100, 4),
        ("wide_resnet34_10", (32, 32, 3), 10, 1),
        ("resnet50", (64, 64, 3), 1000, 2),
    ],
)
def test_registry_builds_logit_networks_with_the_dataset_statistics(
    name, input_shape, classes, width
):
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.15)
    network = models.get_model(
        name, input_shape, classes, mean[: input_shape[-1]], std[: input_shape[-1]], width
    )
    images = np.random.default_rng(0).uniform(size=(2,) + input_shape).astype(np.float32)
    logits = network(images, training=False)
    assert logits.shape == (2, classes)
    if name != "mnist_cnn":
        assert models.find_input_std(network) == std[: input_shape[-1]]


def test_resnet50_trains_one_step_at_a_small_size():
    network = models.get_model(
        "resnet50", (32, 32, 3), 5, models.IMAGENET_MEAN, models.IMAGENET_STD, width=2
    )
    images = tf.random.uniform((4, 32, 32, 3))
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(
            tf.constant([0, 1, 2, 3]), network(images, training=True), from_logits=True
        )
    gradients = tape.gradient(loss, network.trainable_variables)
    assert all(gradient is not None for gradient in gradients)


def trainable_parameters(network):
    return sum(int(np.prod(weight.shape)) for weight in network.trainable_weights)


def test_full_size_parameter_counts_match_the_reference_implementations():
    # torchvision's resnet50() and the TRADES WideResNet(depth=34, widen_factor=10).
    resnet = models.get_model(
        "resnet50", (224, 224, 3), 1000, models.IMAGENET_MEAN, models.IMAGENET_STD
    )
    assert trainable_parameters(resnet) == 25_557_032
    wide = models.get_model(
        "wide_resnet34_10", (32, 32, 3), 10, models.CIFAR10_MEAN, models.CIFAR10_STD
    )
    assert trainable_parameters(wide) == 46_160_474


def test_strided_resnet_convolutions_pad_symmetrically():
    network = models.resnet50(input_shape=(224, 224, 3), width=2)
    assert network.get_layer("stem_conv_pad").padding == ((3, 3), (3, 3))
    assert network.get_layer("stem_conv").output.shape[1:3] == (112, 112)
    assert network.get_layer("pool").input.shape[1:3] == (7, 7)


def test_network_round_trips_through_a_keras_file(tmp_path):
    network = models.get_model(
        "preact_resnet18", (32, 32, 3), 10, models.CIFAR10_MEAN, models.CIFAR10_STD, 4
    )
    images = np.random.default_rng(1).uniform(size=(3, 32, 32, 3)).astype(np.float32)
    path = tmp_path / "network.keras"
    network.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored(images), network(images), atol=1e-5)


@pytest.mark.parametrize(
    "name, width, message",
    [
        ("vgg16", None, "model must be one of mnist_cnn, preact_resnet18"),
        ("mnist_cnn", 4, "fixed width"),
        ("preact_resnet18", 0, "model_width must be an integer >= 1"),
    ],
)
def test_bad_model_requests_are_explained(name, width, message):
    with pytest.raises(ValueError, match=message):
        models.get_model(name, (32, 32, 3), 10, width=width)


def test_wide_resnet_rejects_an_impossible_depth():
    with pytest.raises(ValueError, match="6n \\+ 4"):
        models.wide_resnet34_10(depth=33)


def test_preact_resnet18_projects_the_raw_block_input():
    # The DEAT / fast-AT preact_resnet.py: shortcut = self.shortcut(x), not of BN-ReLU(x).
    network = models.preact_resnet18(width=4)
    for stage in (2, 3, 4):
        shortcut = network.get_layer(f"stage{stage}_block1_shortcut")
        block_input = network.get_layer(f"stage{stage - 1}_block2_add").output
        assert shortcut.input is block_input, stage
        assert shortcut.input is not network.get_layer(f"stage{stage}_block1_relu1").output


def test_wide_resnet_projects_the_activated_block_input():
    # The TRADES wideresnet.py: convShortcut(x) after x = relu1(bn1(x)).
    network = models.wide_resnet34_10(depth=10, widen_factor=2)
    for stage in (1, 2, 3):
        shortcut = network.get_layer(f"stage{stage}_block1_shortcut")
        assert shortcut.input is network.get_layer(f"stage{stage}_block1_relu1").output, stage
