"""Schedule rules against hand-computed sequences (docs/algorithm.md sections 2 and 3)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import deat_tf
from deat_tf import models


def tiny_model(method="deat", **kwargs):
    network = models.mnist_cnn(input_shape=(8, 8, 1), num_classes=3)
    model = deat_tf.AdversarialModel(network, method=method, epsilon=0.1, **kwargs)
    model.compile(optimizer="sgd")
    return model


def run_scripted(callback, model, logs_per_epoch, first_epoch=0):
    """Drives the callback as fit would; returns (used counts, next counts, thresholds)."""
    callback.set_model(model)
    callback.on_train_begin()
    used, following, thresholds = [], [], []
    for offset, logs in enumerate(logs_per_epoch):
        logs = dict(logs)
        used.append(model.attack_steps)
        callback.on_epoch_begin(first_epoch + offset)
        callback.on_epoch_end(first_epoch + offset, logs)
        following.append(model.attack_steps)
        assert logs["next_attack_steps"] == following[-1]
        # The count used is the model's own metric; the scheduler does not log it again.
        assert "attack_steps" not in logs
        thresholds.append(logs.get("threshold"))
    return used, following, thresholds


# Hand computation with gamma 1.01, r_max 4:
#  e0: unconditional r 1 -> 2; e1: T = 1.01 * 200 = 202; e2: 202 > 202 is false;
#  e3: 203 > 202 -> T = 205.03, r 3; e4: 100 no; e5: 300 > 205.03 -> T = 303, r 4;
#  e6, e7: r is at r_max, so neither r nor T moves (T ratchets only with r).
MAGNITUDES = [100.0, 200.0, 202.0, 203.0, 100.0, 300.0, 1000.0, 1e6]
EXPECTED_USED = [1, 2, 2, 2, 3, 3, 4, 4]
EXPECTED_NEXT = [2, 2, 2, 3, 3, 4, 4, 4]
EXPECTED_THRESHOLDS = [math.nan, 202.0, 202.0, 205.03, 205.03, 303.0, 303.0, 303.0]


def test_magnitude_rule_matches_the_hand_computed_sequence():
    model = tiny_model("deat")
    used, following, thresholds = run_scripted(
        deat_tf.MagnitudeScheduler(gamma=1.01, max_steps=4, verbose=0),
        model,
        [{"grad_magnitude": value} for value in MAGNITUDES],
    )
    assert used == EXPECTED_USED
    assert following == EXPECTED_NEXT
    np.testing.assert_allclose(thresholds, EXPECTED_THRESHOLDS, rtol=1e-12)
    assert model.schedule_epochs == len(MAGNITUDES)


def test_magnitude_rule_for_pgd_starts_k_at_zero():
    model = tiny_model("pgd", attack_steps=7)
    used, following, _ = run_scripted(
        deat_tf.MagnitudeScheduler(gamma=1.01, max_steps=3, verbose=0),
        model,
        [{"grad_magnitude": value} for value in MAGNITUDES],
    )
    assert used == [0, 1, 1, 1, 2, 2, 3, 3]
    assert following == [1, 1, 1, 2, 2, 3, 3, 3]


def test_magnitude_rule_respects_a_cap_of_one():
    model = tiny_model("deat")
    used, _, _ = run_scripted(
        deat_tf.MagnitudeScheduler(max_steps=1, verbose=0),
        model,
        [{"grad_magnitude": value} for value in (1.0, 2.0, 5.0, 50.0)],
    )
    assert used == [1, 1, 1, 1]


def test_threshold_ratchets_only_when_the_count_rises():
    # Falling magnitudes after the reference never raise r and never move T.
    model = tiny_model("deat")
    _, following, thresholds = run_scripted(
        deat_tf.MagnitudeScheduler(gamma=2.0, max_steps=8, verbose=0),
        model,
        [{"grad_magnitude": value} for value in (5.0, 10.0, 19.0, 9.0, 20.5, 30.0)],
    )
    assert following == [2, 2, 2, 2, 3, 3]
    np.testing.assert_allclose(thresholds, [math.nan, 20.0, 20.0, 20.0, 41.0, 41.0])


def test_periodic_rule_deat_d():
    model = tiny_model("deat")
    used, _, _ = run_scripted(
        deat_tf.PeriodicScheduler(period=3, max_steps=5, verbose=0), model, [{}] * 16
    )
    assert used == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5]


def test_accuracy_rule_deat_p():
    model = tiny_model("deat")
    accuracies = [0.3, 0.5, 0.41, 0.4, 0.9, 0.9]
    used, following, _ = run_scripted(
        deat_tf.AccuracyScheduler(threshold=0.4, max_steps=4, verbose=0),
        model,
        [{"adv_accuracy": value} for value in accuracies],
    )
    assert used == [1, 1, 2, 3, 3, 4]
    assert following == [1, 2, 3, 3, 4, 4]


def test_state_round_trips_through_keras_file_and_checkpoint(tmp_path):
    logs = [{"grad_magnitude": value} for value in MAGNITUDES]
    model = tiny_model("deat")
    run_scripted(deat_tf.MagnitudeScheduler(gamma=1.01, max_steps=4, verbose=0), model, logs[:4])
    assert (model.attack_steps, model.schedule_epochs) == (3, 4)

    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    checkpoint_path = tf.train.Checkpoint(model=model).save(str(tmp_path / "checkpoint"))
    from_checkpoint = tiny_model("deat")
    tf.train.Checkpoint(model=from_checkpoint).restore(
        checkpoint_path
    ).assert_existing_objects_matched()

    for resumed in (restored, from_checkpoint):
        assert resumed.attack_steps == 3
        assert resumed.schedule_epochs == 4
        assert resumed.schedule_threshold == pytest.approx(205.03)
        used, following, thresholds = run_scripted(
            deat_tf.MagnitudeScheduler(gamma=1.01, max_steps=4, verbose=0),
            resumed,
            logs[4:],
            first_epoch=4,
        )
        # The resumed rule continues exactly where the uninterrupted one would be.
        assert used == EXPECTED_USED[4:]
        assert following == EXPECTED_NEXT[4:]
        np.testing.assert_allclose(thresholds, EXPECTED_THRESHOLDS[4:])


def test_schedulers_reject_models_they_cannot_schedule():
    for method in ("free", "fgsm_rs", "none"):
        callback = deat_tf.MagnitudeScheduler()
        callback.set_model(tiny_model(method))
        with pytest.raises(
            ValueError, match="changes the iteration count of methods deat, pgd, trades, mart only"
        ):
            callback.on_train_begin()
    callback = deat_tf.MagnitudeScheduler()
    callback.set_model(keras.Sequential([keras.layers.Dense(1)]))
    with pytest.raises(ValueError, match="needs a deat_tf.AdversarialModel"):
        callback.on_train_begin()


def test_missing_statistic_is_a_clear_error():
    model = tiny_model("deat")
    callback = deat_tf.MagnitudeScheduler(verbose=0)
    callback.set_model(model)
    callback.on_train_begin()
    with pytest.raises(ValueError, match="needs 'grad_magnitude' in the epoch logs"):
        callback.on_epoch_end(0, {"loss": 1.0})


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: deat_tf.MagnitudeScheduler(gamma=0.0), "gamma must be > 0"),
        (lambda: deat_tf.MagnitudeScheduler(gamma=-1.0), "gamma must be > 0"),
        (lambda: deat_tf.MagnitudeScheduler(max_steps=0), "max_steps must be an integer >= 1"),
        (
            lambda: deat_tf.MagnitudeScheduler(max_steps=2, initial_steps=3),
            "initial_steps must be <= max_steps",
        ),
        (lambda: deat_tf.PeriodicScheduler(period=0), "period must be an integer >= 1"),
        (lambda: deat_tf.AccuracyScheduler(threshold=1.5), "threshold must be in \\[0, 1\\]"),
    ],
)
def test_invalid_scheduler_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_callback_config_round_trip():
    # Fields are asserted one by one: comparing get_config() with itself would
    # pass even if get_config dropped a field and the default filled it in.
    callback = deat_tf.MagnitudeScheduler(
        gamma=1.1, max_steps=4, initial_steps=2, monitor="custom_magnitude", verbose=0
    )
    rebuilt = deat_tf.MagnitudeScheduler(**callback.get_config())
    assert (rebuilt.gamma, rebuilt.max_steps, rebuilt.initial_steps) == (1.1, 4, 2)
    assert (rebuilt.monitor, rebuilt.verbose) == ("custom_magnitude", 0)
    periodic = deat_tf.PeriodicScheduler(
        **deat_tf.PeriodicScheduler(period=5, max_steps=7).get_config()
    )
    assert (periodic.period, periodic.max_steps) == (5, 7)
    accuracy = deat_tf.AccuracyScheduler(
        **deat_tf.AccuracyScheduler(threshold=0.25, max_steps=3, monitor="other").get_config()
    )
    assert (accuracy.threshold, accuracy.max_steps, accuracy.monitor) == (0.25, 3, "other")
