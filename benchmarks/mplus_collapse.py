"""Does M+DEAT collapse at r = 5 on the twin run's MNIST recipe? deat_tf alone, 20 epochs, per seed.

The recipe of benchmarks/twin_run.py (8,000 embedded digits, batch 100, the
MNIST CNN with init="pytorch", no normalisation, SGD 0.05 momentum 0.9,
coupled L2 5e-4, x0.1 at 50% and 75% of the minibatches, epsilon 0.3, alpha
0.375, uniform start of radius epsilon, gamma 1.01, r_max 8), trained by
deat_tf only over the whole schedule, with deat_tf's default start (clipped
into [0, 1]) or the script's (--noclip_start). The initial weights come from
`keras.utils.set_random_seed(seed)`, the data order from twin_run's
`epoch_order`, the random starts from `AdversarialModel(seed=seed)`.

Per epoch the JSON holds r, the epoch sum M, the mean minibatch loss and
accuracy on the adversarial inputs, the clean accuracy on the 8,000 training
digits, and whether `deat_tf.guards.detect_collapse` fires on the records so
far (loss within 3% of ln 10, accuracy at most 1.5 times chance, after an
epoch with more than twice chance). The run goes on after a collapse, to see
whether the network recovers.

    python benchmarks/mplus_collapse.py --seed=0
    python benchmarks/mplus_collapse.py --seed=0 --noclip_start
    python benchmarks/mplus_collapse.py --seed=0 --learning_rate=0.02

Each run adds its entry (keyed by start, learning rate and seed) to
benchmarks/mplus_collapse.json, rewritten after every epoch.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import json  # noqa: E402

import common  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "benchmarks/mplus_collapse.json", "JSON file the run adds to.")
flags.DEFINE_integer("epochs", 20, "Epochs to train (the schedule spans them all).")
flags.DEFINE_integer("examples", 8000, "Training digits of the embedded sample.")
flags.DEFINE_integer("batch_size", 100, "Minibatch size.")
flags.DEFINE_integer("seed", 0, "Seed of the initial weights, the data order and the starts.")
flags.DEFINE_float("learning_rate", 0.05, "SGD rate before the drops.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 5e-4, "Coupled L2 coefficient.")
flags.DEFINE_float("epsilon", 0.3, "L-infinity radius.")
flags.DEFINE_float("step_size", 0.375, "alpha.")
flags.DEFINE_float("gamma", 1.01, "M+ threshold factor.")
flags.DEFINE_integer("max_replays", 8, "r_max.")
flags.DEFINE_boolean("clip_start", True, "Clip the random start into [0, 1] (deat_tf's default).")

LR_BOUNDARIES = (0.5, 0.75)
NUM_CLASSES = 10


def epoch_order(seed, epoch, examples):
    """The permutation of the training digits in epoch `epoch` (twin_run's order)."""
    import numpy as np

    return np.random.RandomState([seed, epoch]).permutation(examples)


def train(seed, on_epoch=None):
    """Trains M+DEAT on the recipe and returns the record of the run.

    Args:
        seed: Seed of the weights, order and starts.
        on_epoch: Optional callable(record) after every epoch.

    Returns:
        A dict: settings and per-epoch records.
    """
    import keras
    import numpy as np

    import deat_tf
    from deat_tf import datasets, guards, learning_rates, models

    digits = datasets.load_mnist_sample()
    images = digits["x_train"][: FLAGS.examples].astype("float32")
    labels = digits["y_train"][: FLAGS.examples].astype(np.int64)
    steps_per_epoch = FLAGS.examples // FLAGS.batch_size
    keras.utils.set_random_seed(seed)
    network = models.mnist_cnn(init="pytorch")
    model = deat_tf.AdversarialModel(
        network,
        method="deat",
        epsilon=FLAGS.epsilon,
        step_size=FLAGS.step_size,
        l2_weight_decay=FLAGS.weight_decay,
        seed=seed,
        clip_start=FLAGS.clip_start,
    )
    schedule = learning_rates.make_learning_rate(
        "multistep", FLAGS.learning_rate, FLAGS.epochs, steps_per_epoch, LR_BOUNDARIES
    )
    model.compile(optimizer=deat_tf.PyTorchSGD(schedule, momentum=FLAGS.momentum))
    scheduler = deat_tf.MagnitudeScheduler(
        gamma=FLAGS.gamma, max_steps=FLAGS.max_replays, verbose=0
    )
    scheduler.set_model(model)
    scheduler.on_train_begin()
    record = {
        "seed": seed,
        "clip_start": FLAGS.clip_start,
        "learning_rate": FLAGS.learning_rate,
        "epochs": FLAGS.epochs,
        "minibatches_per_epoch": steps_per_epoch,
        "epochs_record": [],
    }
    guard_records = []
    for epoch in range(FLAGS.epochs):
        replays = model.attack_steps
        rate = float(model.optimizer.learning_rate.numpy())
        order = epoch_order(seed, epoch, FLAGS.examples)
        losses, accuracies, magnitude = [], [], 0.0
        started = time.time()
        for index in range(steps_per_epoch):
            chosen = order[index * FLAGS.batch_size : (index + 1) * FLAGS.batch_size]
            logs = model.train_on_batch(images[chosen], labels[chosen], return_dict=True)
            losses.append(float(logs["loss"]))
            accuracies.append(float(logs["adv_accuracy"]))
            magnitude += float(logs["grad_magnitude"])
        seconds = time.time() - started
        scheduler.on_epoch_end(epoch, {"grad_magnitude": magnitude})
        logits = network.predict(images, batch_size=1000, verbose=0)
        clean = float(np.mean(np.argmax(logits, axis=-1) == labels))
        entry = {
            "epoch": epoch,
            "replays": replays,
            "learning_rate": rate,
            "magnitude": magnitude,
            "next_replays": model.attack_steps,
            "loss": float(np.mean(losses)),
            "last_minibatch_loss": losses[-1],
            "adv_accuracy": float(np.mean(accuracies)),
            "train_accuracy": clean,
            "largest_minibatch_loss": max(losses),
            "seconds": seconds,
        }
        # The guard's record: 1-based epochs, the same keys bin/train records.
        guard_records.append(
            {
                "epoch": epoch + 1,
                "loss": entry["loss"],
                "adv_accuracy": entry["adv_accuracy"],
                "train_accuracy": clean,
            }
        )
        entry["collapse"] = guards.detect_collapse(guard_records, NUM_CLASSES)
        record["epochs_record"].append(entry)
        print(
            f"seed {seed} clip_start={FLAGS.clip_start} lr {FLAGS.learning_rate} epoch {epoch}: "
            f"r {replays}, M {magnitude:.6g}, loss {entry['loss']:.4f}, adv acc "
            f"{entry['adv_accuracy']:.3f}, clean acc {clean:.3f}"
            + (f", COLLAPSE: {entry['collapse']}" if entry["collapse"] else ""),
            flush=True,
        )
        if on_epoch is not None:
            on_epoch(record)
    return record


def main(argv):
    del argv
    import tensorflow as tf

    # One thread each: the machine is shared, and a fixed reduction order
    # keeps reruns identical.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    start = "clipped" if FLAGS.clip_start else "unclipped"
    key = f"{start}_start_lr{FLAGS.learning_rate:g}_seed{FLAGS.seed}"
    results = {}
    if os.path.exists(FLAGS.output):
        with open(FLAGS.output) as handle:
            results = json.load(handle)
    results.setdefault("description", __doc__.split("\n\n")[0])
    results.setdefault("runs", {})
    results["machine"] = common.machine_description()

    def save(record):
        results["runs"][key] = {
            "command": "python benchmarks/mplus_collapse.py " + " ".join(sys.argv[1:]),
            **record,
        }
        common.write_json(FLAGS.output, results)

    train(FLAGS.seed, on_epoch=save)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    app.run(main)
