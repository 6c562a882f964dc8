"""Mid-epoch checkpoints: when `EpochProgress` writes them, and the stop on a signal.

The trigger logic is driven by hand (an injected clock, minibatch ends called
one by one) with the write itself recorded instead of performed: real writes
and real signals are covered by the process tests of test_resume.py.
"""

import math
import signal
import types

import keras
import pytest

from deat_tf import checkpoints, preemption


class Clock:
    """Seconds that advance only when the test says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class RecordingProgress(checkpoints.EpochProgress):
    """EpochProgress whose checkpoint write records the position instead of writing."""

    def save(self):
        self.saved_at = self.clock()
        self.saved.append((self.epoch + 1, self.position))


def progress(clock, steps_per_epoch=10, **options):
    tracker = RecordingProgress(
        checkpoints=None,
        state=types.SimpleNamespace(records=[]),  # RunRecorder's epoch records
        summary_path="summary.json",
        steps_per_epoch=steps_per_epoch,
        clock=clock,
        **options,
    )
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.stop_training = False  # as fit sets it
    tracker.set_model(model)
    return tracker


def train_epoch(tracker, clock, epoch, seconds_per_minibatch, loss=0.5):
    tracker.on_epoch_begin(epoch)
    for batch in range(tracker.steps_per_epoch):
        clock.now += seconds_per_minibatch
        tracker.on_train_batch_end(batch, {"loss": loss})
    tracker.state.records.append({"epoch": epoch + 1})
    tracker.on_epoch_end(epoch)


def test_checkpoints_by_time_are_minutes_apart_and_the_epoch_end_restarts_the_clock():
    clock = Clock()
    tracker = progress(clock, every_minutes=1.0, every_steps=None)
    # 25 s per minibatch: 75 s have passed after minibatch 3, 75 s more after 6, and so
    # on; the last minibatch is left to the epoch-end checkpoint.
    train_epoch(tracker, clock, 0, 25.0)
    assert tracker.saved == [(1, 3), (1, 6), (1, 9)]
    # The epoch-end checkpoint (at 250 s) restarts the count: 3 more minibatches.
    train_epoch(tracker, clock, 1, 25.0)
    assert tracker.saved[3:] == [(2, 3), (2, 6), (2, 9)]
    # Faster minibatches: no checkpoint inside an epoch shorter than the interval.
    train_epoch(tracker, clock, 2, 5.0)
    assert len(tracker.saved) == 6


def test_checkpoints_by_count_and_none_without_an_interval():
    clock = Clock()
    tracker = progress(clock, every_minutes=None, every_steps=4)
    train_epoch(tracker, clock, 0, 1000.0)
    assert tracker.saved == [(1, 4), (1, 8)]
    quiet = progress(clock, every_minutes=None, every_steps=None)
    train_epoch(quiet, clock, 0, 1000.0)
    assert quiet.saved == []


def test_a_signal_stops_after_the_minibatch_in_progress_with_its_checkpoint():
    clock = Clock()
    watch = preemption.SignalWatch(signals=())
    tracker = progress(clock, every_minutes=None, watch=watch)
    tracker.on_epoch_begin(1)
    for batch in range(3):
        tracker.on_train_batch_end(batch, {"loss": 0.5})
    watch.received = signal.SIGTERM  # arrived during minibatch 4
    with pytest.raises(preemption.Interrupted) as raised:
        tracker.on_train_batch_end(3, {"loss": 0.5})
    assert (raised.value.signal_number, raised.value.epoch, raised.value.minibatch) == (
        signal.SIGTERM,
        2,
        4,
    )
    assert tracker.saved == [(2, 4)]


def test_a_signal_during_the_last_minibatch_is_left_to_the_epoch_end():
    clock = Clock()
    watch = preemption.SignalWatch(signals=())
    tracker = progress(clock, steps_per_epoch=3, every_minutes=None, watch=watch)
    tracker.on_epoch_begin(0)
    tracker.on_train_batch_end(0, {"loss": 0.5})
    tracker.on_train_batch_end(1, {"loss": 0.5})
    watch.received = signal.SIGINT
    tracker.on_train_batch_end(2, {"loss": 0.5})  # the epoch-end checkpoint follows
    assert tracker.saved == []
    # ... and once the epoch is recorded (with its checkpoint), the run stops there.
    tracker.state.records.append({"epoch": 1})
    with pytest.raises(preemption.Interrupted) as raised:
        tracker.on_epoch_end(0)
    assert (raised.value.epoch, raised.value.minibatch, raised.value.exit_status) == (
        1,
        None,
        128 + signal.SIGINT,
    )


@pytest.mark.parametrize("loss", [math.nan, math.inf])
def test_no_checkpoint_of_a_non_finite_minibatch(loss):
    # The NaN guard stops such a run: its state must not overwrite a good checkpoint.
    clock = Clock()
    watch = preemption.SignalWatch(signals=())
    tracker = progress(clock, every_minutes=None, every_steps=1, watch=watch)
    tracker.on_epoch_begin(0)
    tracker.on_train_batch_end(0, {"loss": 0.5})
    watch.received = signal.SIGTERM
    tracker.on_train_batch_end(1, {"loss": loss})
    assert tracker.saved == [(1, 1)]
