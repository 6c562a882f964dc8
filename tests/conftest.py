"""Test setup shared by every test module.

The CPU is split into two logical devices here, at import time, because
TensorFlow accepts that only before it initialises its devices (the first op or
device listing). Multi-replica tests use the `two_replica_strategy` fixture,
`MirroredStrategy(["CPU:0", "CPU:1"])`; single-device tests use the default
strategy, which places work on CPU:0.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402

from deat_tf import datasets  # noqa: E402


@pytest.fixture(scope="session")
def mnist_sample():
    """The embedded 10k real MNIST digits as float32 images in [0, 1] and int64 labels."""
    return datasets.load_mnist_sample()


@pytest.fixture(scope="session")
def clean_mnist_network(mnist_sample):
    """A small MNIST CNN trained clean for two epochs (fixed weights for attack tests)."""
    from deat_tf import models

    keras.utils.set_random_seed(0)
    network = models.mnist_cnn()
    network.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x_train, y_train = mnist_sample["x_train"], mnist_sample["y_train"]
    network.fit(x_train, y_train, batch_size=100, epochs=2, verbose=0)
    return network


@pytest.fixture
def two_replica_strategy():
    """MirroredStrategy over the two logical CPUs made above (see `distribute.make_strategy`)."""
    from deat_tf import distribute

    return distribute.mirrored_strategy(["CPU:0", "CPU:1"])


@pytest.fixture
def rng():
    return np.random.default_rng(0)
