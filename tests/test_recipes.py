"""The recipes are the runs they cite: schedules, replays and settings as the reference code."""

import math
import os

import pytest

from deat_tf import config as config_lib
from deat_tf import learning_rates

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load(name):
    return config_lib.load_file(os.path.join(CONFIGS, f"{name}.py"))


def reference_mdeat_rate(epoch):
    """The authors' adjust_learning_rate_mdeat, 0-based epochs."""
    rate = 0.1
    if epoch + 1 >= 10:
        rate = 0.1 * 0.1
    if epoch + 1 >= 17:
        rate = 0.1 * 0.01
    return rate


def reference_free_rate(epoch, replays=4):
    """The authors' (and FREE's) adjust_learning_rate: x0.1 every ceil(30 / m) epochs."""
    return 0.1 * 0.1 ** (epoch // int(math.ceil(30 / replays)))


@pytest.mark.parametrize(
    "name, reference, step_size",
    [
        ("imagenet_deat", reference_mdeat_rate, 6 / 255),
        ("imagenet_free4", reference_free_rate, 4 / 255),
    ],
)
def test_imagenet_learning_rates_change_at_the_reference_minibatches(name, reference, step_size):
    recipe = load(name)
    assert recipe.epochs == 23 and recipe.step_size == pytest.approx(step_size)
    steps_per_epoch = 7
    schedule = learning_rates.make_learning_rate(
        recipe.lr_schedule,
        recipe.learning_rate,
        recipe.epochs,
        steps_per_epoch,
        boundaries=recipe.lr_boundaries,
        decay=recipe.lr_decay,
    )
    for epoch in range(recipe.epochs):
        # The reference sets the rate once per epoch: every minibatch of the epoch has it.
        for minibatch in (epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1):
            assert float(schedule(minibatch)) == pytest.approx(reference(epoch)), (epoch, minibatch)
