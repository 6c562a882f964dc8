"""Datasets: the embedded offline MNIST sample.

The package ships 10,000 real MNIST digits (`deat_tf/data/mnist-10k.npz`, see
the README beside it for provenance), so demos and tests run without a network.
"""

import os

import numpy as np

MNIST_SAMPLE_PATH = os.path.join(os.path.dirname(__file__), "data", "mnist-10k.npz")


def load_mnist_sample(path=MNIST_SAMPLE_PATH):
    """Loads the embedded MNIST sample as float images in [0, 1].

    Args:
        path: The .npz file (keys x_train, y_train, x_test, y_test, uint8).

    Returns:
        A dict with x_train [8000, 28, 28, 1] float32, y_train [8000] int64,
        x_test [2000, 28, 28, 1] float32 and y_test [2000] int64.
    """
    with np.load(path) as arrays:
        return {
            "x_train": arrays["x_train"][..., None].astype(np.float32) / 255.0,
            "y_train": arrays["y_train"].astype(np.int64),
            "x_test": arrays["x_test"][..., None].astype(np.float32) / 255.0,
            "y_test": arrays["y_test"].astype(np.int64),
        }
