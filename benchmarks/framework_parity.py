"""Epoch time of `AdversarialModel(method="fgsm_rs")` against a bare Keras FGSM-RS step.

The recipe is Wong et al.'s MNIST FGSM-RS ("Fast is better than free"):
8,000 real MNIST digits of the embedded sample, batch 100, the
conv16-conv32-fc100 network (`models.mnist_cnn`, PyTorch initialization),
Adam with the cyclic learning rate (0 -> 5e-3 -> 0), epsilon 0.3, step 0.375,
a uniform start. Both sides read the same shuffled, batched, prefetched
`tf.data` pipeline and start from the same weights.

- `deat_tf`: `AdversarialModel(network, method="fgsm_rs")` + `fit`, as a user
  writes it: everything it logs (loss, adversarial accuracy, the input-gradient
  magnitude, the step count, the non-finite-gradient count) included.
- `bare_keras`: a `keras.Model` subclass whose `train_step` is the FGSM-RS step
  in the fewest operations Keras allows (uniform start, one input gradient,
  sign step, clip, one update) with a loss and an accuracy metric, written here.

Epochs are interleaved (`fit(initial_epoch=e, epochs=e + 1)` for each side in
turn, the order alternating) so that noise from other jobs hits both alike.
The figure is the median epoch time after the first (which holds tracing);
the ratio is deat_tf / bare Keras, target <= 1.05.

    python benchmarks/framework_parity.py --output=benchmarks/framework_parity.json
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "output", "benchmarks/framework_parity.json", "Where to write the JSON results."
)
flags.DEFINE_integer("epochs", 10, "Epochs per side (the first is not counted).")
flags.DEFINE_integer("examples", 8000, "Training digits of the embedded sample.")
flags.DEFINE_integer("batch_size", 100, "Minibatch size.")
flags.DEFINE_float("epsilon", 0.3, "L-infinity radius.")
flags.DEFINE_float("step_size", 0.375, "FGSM step (1.25 epsilon, Wong et al.'s MNIST setting).")
flags.DEFINE_float("learning_rate", 5e-3, "Peak of the cyclic learning rate.")
flags.DEFINE_boolean("jit_compile", False, "XLA-compile both train steps.")


def bare_keras_model(network, epsilon, step_size):
    """A bare Keras model with the FGSM-RS train step, for reference."""
    import keras
    import tensorflow as tf

    class BareFGSM(keras.Model):
        def __init__(self):
            super().__init__()
            self.network = network
            self.loss_tracker = keras.metrics.Mean(name="loss")
            self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            self.cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        def call(self, inputs, training=False):
            return self.network(inputs, training=training)

        @property
        def metrics(self):
            return [self.loss_tracker, self.accuracy]

        def train_step(self, data):
            x, y = data
            # The same arithmetic as deat_tf's fgsm_rs: start in the ball and
            # [0, 1], one signed step, projection into both.
            x_adv = tf.clip_by_value(
                x + tf.random.uniform(tf.shape(x), -epsilon, epsilon), 0.0, 1.0
            )
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                loss = self.cross_entropy(y, self.network(x_adv, training=True))
            x_adv = x_adv + step_size * tf.sign(tape.gradient(loss, x_adv))
            x_adv = tf.clip_by_value(tf.clip_by_value(x_adv, x - epsilon, x + epsilon), 0.0, 1.0)
            x_adv = tf.stop_gradient(x_adv)
            with tf.GradientTape() as tape:
                logits = self.network(x_adv, training=True)
                loss = self.cross_entropy(y, logits)
            variables = self.network.trainable_variables
            self.optimizer.apply(tape.gradient(loss, variables), variables)
            self.loss_tracker.update_state(loss)
            self.accuracy.update_state(y, logits)
            return {"loss": self.loss_tracker.result(), "accuracy": self.accuracy.result()}

    return BareFGSM()


class EpochTimer:
    """Records the wall time of each epoch of `fit` (callback factory)."""

    def __init__(self):
        import keras

        times = self.times = []

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.start)

        self.callback = Callback()


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    import deat_tf
    from deat_tf import datasets, learning_rates, models

    sample = datasets.load_mnist_sample()
    images = sample["x_train"][: FLAGS.examples]
    labels = sample["y_train"][: FLAGS.examples].astype(np.int32)
    steps_per_epoch = len(images) // FLAGS.batch_size
    dataset = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=0)
        .batch(FLAGS.batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )

    keras.utils.set_random_seed(0)
    reference = models.mnist_cnn(init="pytorch")

    def network_copy():
        network = models.mnist_cnn(init="pytorch")
        network.set_weights(reference.get_weights())
        return network

    def optimizer():
        schedule = learning_rates.TriangularSchedule(
            FLAGS.learning_rate, FLAGS.epochs * steps_per_epoch
        )
        return keras.optimizers.Adam(schedule)

    sides = {
        "deat_tf": deat_tf.AdversarialModel(
            network_copy(),
            method="fgsm_rs",
            epsilon=FLAGS.epsilon,
            step_size=FLAGS.step_size,
        ),
        "bare_keras": bare_keras_model(network_copy(), FLAGS.epsilon, FLAGS.step_size),
    }
    timers = {}
    for name, model in sides.items():
        model.compile(optimizer=optimizer(), jit_compile=FLAGS.jit_compile)
        timers[name] = EpochTimer()
    logs = {name: [] for name in sides}
    started = time.perf_counter()
    for epoch in range(FLAGS.epochs):
        order = list(sides) if epoch % 2 == 0 else list(reversed(sides))
        for name in order:
            history = sides[name].fit(
                dataset,
                initial_epoch=epoch,
                epochs=epoch + 1,
                verbose=0,
                callbacks=[timers[name].callback],
            )
            logs[name].append({key: float(value[-1]) for key, value in history.history.items()})
        print(
            f"epoch {epoch + 1:2d}: "
            + ", ".join(
                f"{name} {timers[name].times[-1]:.3f} s (loss {logs[name][-1]['loss']:.4f})"
                for name in sides
            ),
            flush=True,
        )
    medians = {name: statistics.median(timers[name].times[1:]) for name in sides}
    ratio = medians["deat_tf"] / medians["bare_keras"]
    result = {
        "description": (
            "FGSM-RS on MNIST (Wong et al.'s recipe): median epoch seconds after the first, "
            "AdversarialModel(method='fgsm_rs') + fit vs a bare Keras train_step, interleaved."
        ),
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "examples": len(images),
            "batch_size": FLAGS.batch_size,
            "steps_per_epoch": steps_per_epoch,
            "epochs": FLAGS.epochs,
            "epsilon": FLAGS.epsilon,
            "step_size": FLAGS.step_size,
            "optimizer": "adam",
            "learning_rate": f"cyclic 0 -> {FLAGS.learning_rate} -> 0",
            "network": "mnist_cnn (conv16-conv32-fc100), init pytorch",
            "jit_compile": FLAGS.jit_compile,
        },
        "median_epoch_seconds": medians,
        "images_per_second": {
            name: steps_per_epoch * FLAGS.batch_size / seconds for name, seconds in medians.items()
        },
        "ratio": ratio,
        "target_ratio": 1.05,
        "epoch_seconds": {name: timers[name].times for name in sides},
        "final_logs": {name: logs[name][-1] for name in sides},
        "total_seconds": time.perf_counter() - started,
        "machine": common.machine_description(),
    }
    print(
        f"median epoch: deat_tf {medians['deat_tf']:.3f} s, bare Keras "
        f"{medians['bare_keras']:.3f} s, ratio {ratio:.3f} (target <= 1.05)"
    )
    common.write_json(FLAGS.output, result)


if __name__ == "__main__":
    app.run(main)
