"""Model registry: shapes, normalisation inside the network, parameter counts, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

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


def fans(kernel):
    """(fan_in, fan_out) as PyTorch and Keras count them: channels times kernel area."""
    receptive = int(np.prod(kernel.shape[:-2])) if kernel.ndim == 4 else 1
    return kernel.shape[-2] * receptive, kernel.shape[-1] * receptive


def assert_uniform(values, bound, what):
    values = np.ravel(values)
    assert np.abs(values).max() <= bound * (1 + 1e-6), what
    # U(-b, b) has variance b^2 / 3; a sample variance has relative std sqrt(0.8 / n).
    assert values.var() == pytest.approx(bound**2 / 3, rel=5 * np.sqrt(0.8 / values.size)), what


def assert_untruncated_normal(values, std, what):
    values = np.ravel(values)
    assert abs(values.mean()) < 5 * std / np.sqrt(values.size), what
    assert values.var() == pytest.approx(std**2, rel=5 * np.sqrt(2 / values.size)), what
    if values.size > 2000:
        # Keras' truncated normals stop at 2.3 std; PyTorch's normal_ does not.
        assert np.abs(values).max() > 2.5 * std, what


PYTORCH_INITS = {
    # network: (convolution kernels, dense bias), per the reference code.
    "mnist_cnn": ("default", "default"),
    "preact_resnet18": ("default", "default"),
    "wide_resnet34_10": ("kaiming_normal_fan_out", "zeros"),
    "resnet50": ("kaiming_normal_fan_out", "default"),
}


def assert_pytorch_initialization(network, name):
    convolutions, dense_bias = PYTORCH_INITS[name]
    checked = set()
    for layer in network.layers:
        if isinstance(layer, layers.Conv2D):
            fan_in, fan_out = fans(layer.kernel.numpy())
            if convolutions == "default":
                # kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
                assert_uniform(layer.kernel.numpy(), 1 / np.sqrt(fan_in), layer.name)
            else:
                assert_untruncated_normal(layer.kernel.numpy(), np.sqrt(2 / fan_out), layer.name)
            if layer.use_bias:
                assert_uniform(layer.bias.numpy(), 1 / np.sqrt(fan_in), layer.name)
            checked.add("convolution")
        elif isinstance(layer, layers.Dense):
            fan_in, _ = fans(layer.kernel.numpy())
            assert_uniform(layer.kernel.numpy(), 1 / np.sqrt(fan_in), layer.name)
            if dense_bias == "zeros":
                np.testing.assert_array_equal(layer.bias.numpy(), 0.0)
            else:
                assert_uniform(layer.bias.numpy(), 1 / np.sqrt(fan_in), layer.name)
            checked.add("dense")
        elif isinstance(layer, layers.BatchNormalization):
            np.testing.assert_array_equal(layer.gamma.numpy(), 1.0)
            np.testing.assert_array_equal(layer.beta.numpy(), 0.0)
            checked.add("batch_norm")
    assert {"convolution", "dense"} <= checked


@pytest.mark.parametrize(
    "name, input_shape, width",
    [
        ("mnist_cnn", (28, 28, 1), None),
        ("preact_resnet18", (32, 32, 3), 8),
        ("wide_resnet34_10", (32, 32, 3), 2),
        ("resnet50", (32, 32, 3), 4),
    ],
)
def test_pytorch_init_draws_every_layer_like_the_reference_network(name, input_shape, width):
    keras.utils.set_random_seed(0)
    network = models.get_model(name, input_shape, 10, width=width, init="pytorch")
    assert_pytorch_initialization(network, name)


def test_init_reaches_the_network_through_the_config_and_keras_stays_the_default():
    from deat_tf import cli, train
    from deat_tf import config as config_lib

    recipe = config_lib.TrainConfig(model="preact_resnet18", model_width=8, dataset="mnist_sample")
    assert recipe.init == "keras"
    input_spec, steps = train.input_plan(recipe)
    default = train.build_model(recipe, input_spec, steps).network
    stem = default.get_layer("stem_conv").kernel.numpy()
    # Keras' He normal: variance 2 / fan_in, six times PyTorch's 1 / (3 fan_in).
    assert stem.var() == pytest.approx(2 / fans(stem)[0], rel=0.5)
    changed = config_lib.replace(recipe, init=cli.parse_value("init", "pytorch"))
    network = train.build_model(changed, input_spec, steps).network
    assert_pytorch_initialization(network, "preact_resnet18")
    with pytest.raises(ValueError, match="init must be one of keras, pytorch; got 'torch'"):
        models.get_model("mnist_cnn", (28, 28, 1), 10, init="torch")
