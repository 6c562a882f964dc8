"""Stopping cleanly on SIGTERM and SIGINT (preemption, Ctrl-C).

Cloud spot machines and Slurm jobs are stopped with SIGTERM and a short
grace period; Ctrl-C sends SIGINT. While a run trains, `SignalWatch` turns
the first of either into a request: the minibatch in progress finishes, a
checkpoint of that exact position is written (`deat_tf.checkpoints`), the
run's status becomes `interrupted` and `Interrupted` is raised; `bin/train`
prints one line and exits with 128 + the signal's number, as a shell does
for a process the signal ended. A second signal ends the process at once
(the operating system's default action), for when waiting is not wanted;
the checkpoint before stays intact, as every checkpoint is written
atomically.

Under a multi-worker strategy every worker asks the others after every
minibatch (`agree`), so a signal to any of them stops all at the same
minibatch, with one checkpoint.
"""

import os
import signal
import threading

import tensorflow as tf

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """The run stopped on a signal after writing a checkpoint; rerunning resumes it.

    Attributes:
        signal_number: The signal (SIGTERM or SIGINT).
        epoch: The epoch in progress, counted from 1.
        minibatch: Minibatches of that epoch done (None: stopped at the epoch's end).
        exit_status: 128 + signal_number.
    """

    def __init__(self, signal_number, epoch, minibatch=None):
        self.signal_number = int(signal_number)
        self.epoch = epoch
        self.minibatch = minibatch
        self.exit_status = 128 + self.signal_number
        where = (
            f"at epoch {epoch}, minibatch {minibatch}"
            if minibatch is not None
            else f"after epoch {epoch}"
        )
        super().__init__(f"interrupted {where}: rerun the same command to resume")


class SignalWatch:
    """Records the first SIGTERM or SIGINT instead of dying; a second one ends the process.

    Use as a context manager around the work; the handlers are installed only
    in the main thread (Python delivers signals there) and the previous ones
    are put back on exit.

    Attributes:
        received: The first signal's number, or None.
    """

    def __init__(self, signals=SIGNALS):
        self.signals = tuple(signals)
        self.received = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in self.signals:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exception):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}
        return False

    def _handle(self, number, frame):
        if self.received is not None:
            return
        self.received = number
        # The default action for the next one: it ends the process at once.
        for other in self.signals:
            signal.signal(other, signal.SIG_DFL)
        # os.write, not print: a handler may interrupt a print in progress.
        os.write(
            2,
            f"deat_tf: {signal.Signals(number).name} received: stopping after this minibatch "
            "with a checkpoint (send it again to stop at once)\n".encode(),
        )


def agree(strategy, values):
    """The largest of each integer over the workers of a cluster (a collective call).

    Every worker must call it at the same point with the same number of values.

    Args:
        strategy: A multi-worker strategy.
        values: This worker's integers.

    Returns:
        The list of maxima.
    """
    count = len(values)
    local = strategy.run(lambda: tf.constant([list(values)], tf.int64))
    # ReduceOp has no maximum; gathering every replica's row does the same.
    rows = strategy.gather(local, axis=0).numpy().reshape(-1, count)
    return [int(value) for value in rows.max(axis=0)]
