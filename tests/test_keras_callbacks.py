"""AdversarialModel with Keras' own fault tolerance and standard callbacks.

A restore that assigns the model's variables after the train function was traced
(`BackupAndRestore`, `load_weights`, `tf.train.Checkpoint.restore`) must not leave
the traced replay count in force: the model trains with the count its variables
hold.
"""

import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import deat_tf
from deat_tf import models

IMAGE_SHAPE = (6, 6, 1)
CLASSES = 3


def small_network(seed=1):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE_SHAPE)
    hidden = models.Standardize(0.1, 0.5, name="standardize")(inputs)
    hidden = layers.Conv2D(4, 3, activation="relu")(hidden)
    hidden = layers.Flatten()(hidden)
    outputs = layers.Dense(CLASSES)(hidden)
    return keras.Model(inputs, outputs)


def toy_data(examples=30, seed=0):
    generator = np.random.default_rng(seed)
    x = generator.uniform(size=(examples,) + IMAGE_SHAPE).astype(np.float32)
    y = generator.integers(0, CLASSES, size=examples).astype(np.int64)
    return x, y


def fresh_model(**kwargs):
    kwargs.setdefault("epsilon", 0.1)
    model = deat_tf.AdversarialModel(small_network(), method="deat", **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return model


def scheduler():
    # gamma 0.01: the rule raises r after epoch 0 and again after epoch 2 (the magnitude grows).
    return deat_tf.MagnitudeScheduler(gamma=0.01, max_steps=3, verbose=0)


class CrashAt(keras.callbacks.Callback):
    """Raises in the middle of one epoch, as a crash would."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.current, batch) == (self.epoch, self.batch):
            raise RuntimeError("simulated crash")


class RecordCounts(keras.callbacks.Callback):
    """The optimizer updates of every epoch."""

    def __init__(self):
        super().__init__()
        self.updates = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = int(self.model.optimizer.iterations.numpy())

    def on_epoch_end(self, epoch, logs=None):
        self.updates.append(int(self.model.optimizer.iterations.numpy()) - self.start)


def test_backup_and_restore_resumes_at_the_restored_replay_count(tmp_path):
    x, y = toy_data()
    epochs = 5
    uninterrupted = fresh_model()
    history = uninterrupted.fit(
        x, y, batch_size=10, epochs=epochs, callbacks=[scheduler()], shuffle=False, verbose=0
    )
    counts = history.history["attack_steps"]
    # The test needs a rise in the resumed epochs and a count other than 1 when it resumes.
    assert counts == [1, 2, 2, 3, 3], counts

    backup = str(tmp_path / "backup")
    crashed = fresh_model()
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit(
            x,
            y,
            batch_size=10,
            epochs=epochs,
            callbacks=[scheduler(), keras.callbacks.BackupAndRestore(backup), CrashAt(2, 1)],
            shuffle=False,
            verbose=0,
        )
    # A new process: a fresh model, traced at r = 1, restored by the callback to r = 2.
    resumed = fresh_model()
    recorder = RecordCounts()
    resumed_history = resumed.fit(
        x,
        y,
        batch_size=10,
        epochs=epochs,
        callbacks=[scheduler(), keras.callbacks.BackupAndRestore(backup), recorder],
        shuffle=False,
        verbose=0,
    )
    assert resumed_history.history["attack_steps"] == counts[2:]
    # r optimizer updates per minibatch, 3 minibatches per epoch: the replays really ran r times.
    assert recorder.updates == [3 * count for count in counts[2:]]
    assert resumed.attack_steps == uninterrupted.attack_steps
    assert resumed.schedule_threshold == pytest.approx(uninterrupted.schedule_threshold, rel=1e-5)
    np.testing.assert_allclose(
        resumed_history.history["grad_magnitude"], history.history["grad_magnitude"][2:], rtol=1e-5
    )
    assert int(resumed.optimizer.iterations.numpy()) == int(
        uninterrupted.optimizer.iterations.numpy()
    )


@pytest.mark.parametrize("restore", ["load_weights", "checkpoint"])
def test_a_restore_between_fits_trains_with_the_restored_count(tmp_path, restore):
    x, y = toy_data()
    source = fresh_model(attack_steps=3)
    source.fit(x, y, batch_size=10, epochs=1, verbose=0)
    model = fresh_model(attack_steps=1)
    model.fit(x, y, batch_size=10, epochs=1, verbose=0)  # traced at r = 1
    if restore == "load_weights":
        path = str(tmp_path / "source.weights.h5")
        source.save_weights(path)
        model.load_weights(path)
    else:
        prefix = tf.train.Checkpoint(model=source).save(str(tmp_path / "checkpoint"))
        tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    assert model.attack_steps == 3
    before = int(model.optimizer.iterations.numpy())
    history = model.fit(x, y, batch_size=10, epochs=1, verbose=0)
    assert history.history["attack_steps"] == [3]
    assert int(model.optimizer.iterations.numpy()) - before == 3 * 3


def test_a_callback_that_restores_the_count_mid_fit_takes_effect_next_epoch(tmp_path):
    # Any callback that assigns the variable (not the property) between epochs.
    x, y = toy_data()
    model = fresh_model(attack_steps=1)

    class AssignVariable(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model._attack_steps_variable.assign(2)

    history = model.fit(x, y, batch_size=10, epochs=2, callbacks=[AssignVariable()], verbose=0)
    assert history.history["attack_steps"] == [1, 2]


def validation_model():
    return fresh_model(validation_attack_steps=2)


def test_standard_keras_callbacks_with_numpy_and_validation_split(tmp_path):
    x, y = toy_data(60)
    model = validation_model()
    best_path = str(tmp_path / "best.keras")
    log_path = str(tmp_path / "log.csv")
    monitor = dict(monitor="val_robust_accuracy", mode="max")
    recorder = RecordCounts()
    callbacks = [
        scheduler(),
        recorder,
        keras.callbacks.ModelCheckpoint(best_path, save_best_only=True, **monitor),
        keras.callbacks.EarlyStopping(patience=10, restore_best_weights=True, **monitor),
        keras.callbacks.CSVLogger(log_path),
        keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=1, min_lr=1e-4, **monitor),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.TensorBoard(str(tmp_path / "tensorboard")),
    ]
    history = model.fit(
        x,
        y,
        batch_size=10,
        epochs=4,
        validation_split=0.25,
        callbacks=callbacks,
        shuffle=False,
        verbose=0,
    )
    logs = history.history
    assert len(logs["val_robust_accuracy"]) == 4
    assert logs["attack_steps"] == [1, 2, 2, 3]
    # validation_split keeps the last 15 examples for validation: 45 / 10 -> 5 minibatches of
    # r updates each.
    assert recorder.updates == [5 * count for count in logs["attack_steps"]]

    # ModelCheckpoint kept the epoch of the best robust accuracy, EarlyStopping restored it.
    best_epoch = int(np.argmax(logs["val_robust_accuracy"]))
    saved = keras.models.load_model(best_path)
    assert isinstance(saved, deat_tf.AdversarialModel)
    for kept, restored in zip(saved.network.weights, model.network.weights):
        np.testing.assert_array_equal(kept.numpy(), restored.numpy())
    # set_weights restores every variable of the model, its counters included.
    assert model.minibatches == 5 * (best_epoch + 1)
    # The validation noise repeats every pass, so the restored network scores its epoch's figures.
    scores = model.evaluate(x[45:], y[45:], batch_size=10, verbose=0, return_dict=True)
    assert scores["accuracy"] == pytest.approx(logs["val_accuracy"][best_epoch], abs=1e-6)
    assert scores["robust_accuracy"] == pytest.approx(
        logs["val_robust_accuracy"][best_epoch], abs=1e-6
    )

    with open(log_path) as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    assert [float(row["attack_steps"]) for row in rows] == [1, 2, 2, 3]
    assert "val_robust_accuracy" in rows[0]
    assert os.listdir(str(tmp_path / "tensorboard"))
    assert "learning_rate" in logs


def test_terminate_on_nan_stops_an_adversarial_fit():
    x, y = toy_data()
    model = fresh_model()

    class Poison(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                # Every variable, not just the first kernel: oneDNN's fused convolution and
                # ReLU maps NaN to 0 on some CPUs, which hides a poisoned first layer.
                for variable in self.model.network.trainable_variables:
                    variable.assign(tf.fill(variable.shape, float("nan")))

    model.fit(
        x,
        y,
        batch_size=10,
        epochs=3,
        callbacks=[Poison(), keras.callbacks.TerminateOnNaN()],
        shuffle=False,
        verbose=0,
    )
    # Stopped at the first minibatch whose loss was NaN: the second of epoch 0.
    assert model.minibatches == 2
