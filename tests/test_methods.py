"""The method rows: the defaults each training method starts from."""

import numpy as np
import pytest
import tensorflow as tf

import deat_tf
from deat_tf import methods, models


@pytest.mark.parametrize("method", ["trades", "mart"])
def test_trades_and_mart_attacks_start_next_to_the_clean_image(method):
    row = methods.get(method)
    assert (row.initialization, row.initialization_scale) == ("normal", 0.001)
    network = models.mnist_cnn(input_shape=(8, 8, 1), num_classes=3)
    model = deat_tf.AdversarialModel(network, method=method, epsilon=8 / 255)
    # Mid-grey images: the [0, 1] clip cannot shrink the draw.
    images = tf.fill((64, 8, 8, 1), 0.5)
    start = model._random_start(images).numpy() - 0.5
    # 0.001 N(0, 1): a standard deviation of 0.001, far inside the 8/255 ball; a
    # U(-epsilon, epsilon) start would have a standard deviation of about 0.018.
    assert start.std() == pytest.approx(0.001, rel=0.05)
    assert np.abs(start).max() < 0.006


def test_pgd_and_replay_methods_start_anywhere_in_the_ball():
    for method in ("pgd", "deat", "free", "fgsm_rs"):
        row = methods.get(method)
        assert (row.initialization, row.initialization_scale) == ("uniform", None), method


@pytest.mark.parametrize(
    "value, method, message",
    [
        (-1, "pgd", "steps_after_misclassified must be an integer >= 0, got -1"),
        (True, "mart", "steps_after_misclassified must be an integer >= 0, got True"),
        (1.5, "trades", "steps_after_misclassified must be an integer >= 0, got 1.5"),
        (0, "deat", "steps_after_misclassified applies to methods pgd, trades, mart only"),
        (0, "fgsm_rs", "steps_after_misclassified applies to methods pgd, trades, mart only"),
    ],
)
def test_a_bad_early_stop_is_rejected_naming_the_argument(value, method, message):
    with pytest.raises(ValueError, match=message):
        methods.check_steps_after_misclassified(value, method)
    assert methods.check_steps_after_misclassified(None, method) is None
    assert methods.check_steps_after_misclassified(2, "pgd") == 2
