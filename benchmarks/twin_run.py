"""The twin run: deat_tf's M+DEAT against a PyTorch loop that follows the authors' script.

Both sides train the MNIST CNN on the same recipe and are fed the same
things, so that any difference beyond rounding is a difference of the code:

- the same initial weights: PyTorch's default initialization of
  fast_adversarial's `mnist_net` (seeded by --seed), copied into
  `deat_tf.models.mnist_cnn` (kernels transposed, the first dense layer's
  rows reordered from PyTorch's channel-first flattening);
- the same minibatches in the same order: --examples digits of the embedded
  sample, one fixed permutation per epoch, --batch_size per minibatch;
- the same random starts: the uniform noise deat_tf draws for minibatch k
  (stateless, seeded by (seed, k)) is handed to the PyTorch loop as its delta;
- the same optimizer semantics: `deat_tf.PyTorchSGD` with the coupled L2 term
  of `AdversarialModel(l2_weight_decay=...)` against `torch.optim.SGD(momentum,
  weight_decay)`; the rate x0.1 at 50% and 75% of the schedule's minibatches
  (`learning_rates.make_learning_rate("multistep")` against `MultiStepLR`
  stepped once per minibatch);
- the same rule: `deat_tf.MagnitudeScheduler` on deat_tf's epoch sum against
  the script's rule on the PyTorch epoch sum.

The recipe (the authors' CIFAR-10 settings adapted to MNIST): batch 100, SGD
0.05 momentum 0.9, weight decay 5e-4, epsilon 0.3, alpha 0.375, uniform start
of radius epsilon, gamma 1.01, r_max 8. The script does not clip its random
start to [0, 1]; deat_tf follows with `clip_start=False` (the default), and
--clip_start runs deat_tf's library default (clipped) against it instead.

Per minibatch the JSON holds both losses (of the last replay), both
statistics (sum of |input gradient| of the last replay) and the largest
weight difference after that minibatch; per epoch both sums M, the replay
count of the next epoch on each side and the threshold. deat_tf's logged
metrics are float32 (the loss and the statistic are rounded to float32 after
a float64 computation), so in float64 their relative differences stop near
1e-7; the weights are compared in the run's dtype.

    python benchmarks/twin_run.py --dtype=float64 --epochs=4
    python benchmarks/twin_run.py --dtype=float32 --epochs=4

Each run adds its entry (keyed by dtype and clip_start) to
benchmarks/twin_run.json, rewritten after every epoch. Needs PyTorch
(`pip install -e .[twin]`, the CPU build is enough).
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
flags.DEFINE_string("output", "benchmarks/twin_run.json", "JSON file the run adds its entry to.")
flags.DEFINE_enum("dtype", "float64", ["float64", "float32"], "Dtype of both networks.")
flags.DEFINE_integer("epochs", 4, "Epochs to train.")
flags.DEFINE_integer(
    "schedule_epochs",
    None,
    "Epochs the learning-rate schedule spans (its drops at 50% and 75%); default --epochs, so "
    "that the drops fall inside the twin run.",
)
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
flags.DEFINE_boolean(
    "clip_start",
    False,
    "Run deat_tf with its start clipped to [0, 1] (the library default) instead of the "
    "script's unclipped start.",
)

LR_BOUNDARIES = (0.5, 0.75)


def epoch_order(seed, epoch, examples):
    """The permutation of the training digits in epoch `epoch`, shared by both sides."""
    import numpy as np

    return np.random.RandomState([seed, epoch]).permutation(examples)


def build_twins(dtype, seed, schedule_epochs, steps_per_epoch, clip_start):
    """Both networks from the same PyTorch initialization, with their trainers.

    Returns:
        (deat_tf AdversarialModel, its MagnitudeScheduler, ReferenceTrainer,
        MPlusRule, the PyTorch network).
    """
    import keras
    import numpy as np
    import torch
    import torch_reference

    import deat_tf
    from deat_tf import learning_rates, models

    torch.manual_seed(seed)
    torch_network = torch_reference.mnist_net(getattr(torch, dtype))
    keras.config.set_floatx(dtype)
    keras_network = models.mnist_cnn(init="pytorch")
    keras_network.set_weights(torch_reference.torch_weights_as_keras(torch_network))
    model = deat_tf.AdversarialModel(
        keras_network,
        method="deat",
        epsilon=FLAGS.epsilon,
        step_size=FLAGS.step_size,
        l2_weight_decay=FLAGS.weight_decay,
        seed=seed,
        clip_start=clip_start,
    )
    schedule = learning_rates.make_learning_rate(
        "multistep", FLAGS.learning_rate, schedule_epochs, steps_per_epoch, LR_BOUNDARIES
    )
    model.compile(optimizer=deat_tf.PyTorchSGD(schedule, momentum=FLAGS.momentum))
    scheduler = deat_tf.MagnitudeScheduler(
        gamma=FLAGS.gamma, max_steps=FLAGS.max_replays, verbose=0
    )
    scheduler.set_model(model)
    scheduler.on_train_begin()
    total = schedule_epochs * steps_per_epoch
    reference = torch_reference.ReferenceTrainer(
        torch_network,
        FLAGS.learning_rate,
        FLAGS.momentum,
        FLAGS.weight_decay,
        [int(round(fraction * total)) for fraction in LR_BOUNDARIES],
        FLAGS.epsilon,
        FLAGS.step_size,
        # Keras' step schedules return float32 rates whatever the model's dtype.
        learning_rate_dtype=np.float32,
    )
    rule = torch_reference.MPlusRule(FLAGS.gamma, FLAGS.max_replays)
    return model, scheduler, reference, rule, torch_network


def run_twins(dtype, seed, epochs, schedule_epochs, clip_start, on_epoch=None):
    """Trains both sides in lockstep and returns the record of the run.

    Args:
        dtype: "float64" or "float32".
        seed: Seed of the weights, order and starts.
        epochs: Epochs to train.
        schedule_epochs: Epochs the learning-rate schedule spans.
        clip_start: deat_tf's `clip_start`.
        on_epoch: Optional callable(record) after every epoch.

    Returns:
        A dict: settings, per-minibatch and per-epoch records.
    """
    import numpy as np
    import tensorflow as tf
    import torch
    import torch_reference

    from deat_tf import attacks, datasets

    digits = datasets.load_mnist_sample()
    images = digits["x_train"][: FLAGS.examples].astype(dtype)
    labels = digits["y_train"][: FLAGS.examples].astype(np.int64)
    steps_per_epoch = FLAGS.examples // FLAGS.batch_size
    model, scheduler, reference, rule, torch_network = build_twins(
        dtype, seed, schedule_epochs, steps_per_epoch, clip_start
    )
    initial_difference = torch_reference.weight_difference(
        torch_network, model.network.get_weights()
    )
    record = {
        "dtype": dtype,
        "seed": seed,
        "clip_start": clip_start,
        "epochs": epochs,
        "schedule_epochs": schedule_epochs,
        "minibatches_per_epoch": steps_per_epoch,
        "initial_weight_difference": initial_difference[0],
        "minibatches": [],
        "epochs_record": [],
    }
    torch_dtype = getattr(torch, dtype)
    for epoch in range(epochs):
        replays_deat_tf = model.attack_steps
        replays_reference = rule.replays
        order = epoch_order(seed, epoch, FLAGS.examples)
        magnitudes = {"deat_tf": 0.0, "reference": 0.0}
        started = time.time()
        for index in range(steps_per_epoch):
            minibatch = model.minibatches
            chosen = order[index * FLAGS.batch_size : (index + 1) * FLAGS.batch_size]
            x, y = images[chosen], labels[chosen]
            # What deat_tf's AdversarialModel._random_start draws for this minibatch.
            noise = attacks.initial_perturbation(
                x.shape,
                FLAGS.epsilon,
                "uniform",
                FLAGS.epsilon,
                seed=tf.constant([seed, minibatch], tf.int64),
                dtype=dtype,
            ).numpy()
            logs = model.train_on_batch(x, y, return_dict=True)
            rate = float(model.optimizer.learning_rate.numpy())
            loss, magnitude, reference_rate = reference.train_minibatch(
                torch.from_numpy(x.transpose(0, 3, 1, 2)).to(torch_dtype),
                torch.from_numpy(y),
                torch.from_numpy(noise.transpose(0, 3, 1, 2)).to(torch_dtype),
                replays_reference,
            )
            difference, relative = torch_reference.weight_difference(
                torch_network, model.network.get_weights()
            )
            magnitudes["deat_tf"] += float(logs["grad_magnitude"])
            magnitudes["reference"] += magnitude
            record["minibatches"].append(
                {
                    "minibatch": minibatch,
                    "epoch": epoch,
                    "replays": [replays_deat_tf, replays_reference],
                    "learning_rate": [rate, reference_rate],
                    "loss": [float(logs["loss"]), loss],
                    "magnitude": [float(logs["grad_magnitude"]), magnitude],
                    "weight_difference": difference,
                    "relative_weight_difference": relative,
                }
            )
        scheduler.on_epoch_end(epoch, {"grad_magnitude": magnitudes["deat_tf"]})
        rule.end_epoch(epoch, magnitudes["reference"])
        this_epoch = record["minibatches"][-steps_per_epoch:]
        record["epochs_record"].append(
            {
                "epoch": epoch,
                "replays": {"deat_tf": replays_deat_tf, "reference": replays_reference},
                "magnitude": magnitudes,
                "magnitude_relative_difference": abs(
                    magnitudes["deat_tf"] - magnitudes["reference"]
                )
                / magnitudes["reference"],
                "next_replays": {"deat_tf": model.attack_steps, "reference": rule.replays},
                "threshold": {"deat_tf": model.schedule_threshold, "reference": rule.threshold},
                "mean_loss": {
                    "deat_tf": float(np.mean([entry["loss"][0] for entry in this_epoch])),
                    "reference": float(np.mean([entry["loss"][1] for entry in this_epoch])),
                },
                "largest_loss_difference": max(
                    abs(entry["loss"][0] - entry["loss"][1]) for entry in this_epoch
                ),
                "largest_magnitude_relative_difference": max(
                    # A collapsed network (output independent of the input) has M = 0.
                    abs(entry["magnitude"][0] - entry["magnitude"][1])
                    / max(entry["magnitude"][1], 1e-30)
                    for entry in this_epoch
                ),
                "weight_difference_at_end": this_epoch[-1]["weight_difference"],
                "relative_weight_difference_at_end": this_epoch[-1]["relative_weight_difference"],
                "seconds": time.time() - started,
            }
        )
        summary = record["epochs_record"][-1]
        print(
            f"{dtype} clip_start={clip_start} epoch {epoch}: r {replays_deat_tf}/"
            f"{replays_reference}, M {magnitudes['deat_tf']:.9g}/{magnitudes['reference']:.9g}, "
            f"weights {summary['relative_weight_difference_at_end']:.3g} relative, next r "
            f"{model.attack_steps}/{rule.replays}",
            flush=True,
        )
        if on_epoch is not None:
            on_epoch(record)
    return record


def main(argv):
    del argv
    import tensorflow as tf
    import torch

    # One thread each: the machine is shared, and a fixed reduction order
    # keeps reruns identical.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(1)
    key = f"{FLAGS.dtype}_{'clipped' if FLAGS.clip_start else 'unclipped'}_start_seed{FLAGS.seed}"
    results = {}
    if os.path.exists(FLAGS.output):
        with open(FLAGS.output) as handle:
            results = json.load(handle)
    results.setdefault("description", __doc__.split("\n\n")[0])
    results.setdefault("runs", {})
    results["machine"] = common.machine_description()
    results["torch"] = torch.__version__

    def save(record):
        results["runs"][key] = {
            "command": "python benchmarks/twin_run.py " + " ".join(sys.argv[1:]),
            **record,
        }
        common.write_json(FLAGS.output, results)

    run_twins(
        FLAGS.dtype,
        FLAGS.seed,
        FLAGS.epochs,
        FLAGS.schedule_epochs or FLAGS.epochs,
        FLAGS.clip_start,
        on_epoch=save,
    )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    app.run(main)
