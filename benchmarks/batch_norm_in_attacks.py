"""Does letting the training attacks update BatchNorm's moving statistics change the results?

The reference PyTorch code runs every attack forward in training mode, and
each one updates BatchNorm's running statistics; deat_tf's default
(`AdversarialModel(attack_batch_norm="stateless")`) leaves them to the
update's forward. Both use batch statistics during training, so the weights
are the same; only the moving statistics, and with them the inference-mode
network every test number comes from, differ.

For each method and seed this trains a narrow PreAct-ResNet18 twice from the
same start, once per mode, on real MNIST digits of the embedded sample, checks
that the weights agree, and evaluates the inference-mode network (clean and
PGD accuracy through `deat_tf.evaluation`):

    python benchmarks/batch_norm_in_attacks.py --output=benchmarks/batch_norm_in_attacks.json

The defaults (PGD-7 and MART-10, one seed, 4 epochs on 2,000 digits at
epsilon 0.2, 500 test digits) take about 25 minutes on 2 CPU cores. Settings
per method are written to the JSON next to the results.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "output", "benchmarks/batch_norm_in_attacks.json", "Where to write the JSON results."
)
flags.DEFINE_list("methods", ["pgd", "mart"], "Training methods to compare.")
flags.DEFINE_integer("seeds", 1, "Seeds per method (each trains two networks).")
flags.DEFINE_integer("first_seed", 0, "Seeds are first_seed, first_seed + 1, ...")
flags.DEFINE_integer("epochs", 4, "Training epochs.")
flags.DEFINE_integer("train_examples", 2000, "Training digits of the sample's 8,000.")
flags.DEFINE_integer("test_examples", 500, "Test digits of the sample's 2,000.")
flags.DEFINE_integer("width", 8, "First-stage width of the PreAct-ResNet18 (64 is the paper's).")
flags.DEFINE_float(
    "epsilon", 0.2, "L-infinity radius (0.2: the narrow network learns within minutes on CPU)."
)
flags.DEFINE_integer("test_attack_steps", 20, "PGD steps of the evaluation.")

BATCH_SIZE = 100
# Attack steps and step sizes: PGD-7 and MART-10 at 2.5 epsilon / K, FGSM-RS at 1.25 epsilon.
METHOD_SETTINGS = {
    "pgd": {"attack_steps": 7, "step_size_factor": 2.5 / 7},
    "mart": {"attack_steps": 10, "step_size_factor": 2.5 / 10},
    "trades": {"attack_steps": 10, "step_size_factor": 2.5 / 10},
    "fgsm_rs": {"attack_steps": None, "step_size_factor": 1.25},
}


def train_network(method, seed, attack_batch_norm, x_train, y_train):
    """Trains one network; returns it, the training seconds and the settings used."""
    import keras

    import deat_tf
    from deat_tf import models

    settings = METHOD_SETTINGS[method]
    keras.utils.set_random_seed(seed)
    network = models.preact_resnet18(
        input_shape=x_train.shape[1:],
        num_classes=10,
        mean=(0.1307,),
        std=(0.3081,),
        width=FLAGS.width,
        init="pytorch",
    )
    model = deat_tf.AdversarialModel(
        network,
        method=method,
        epsilon=FLAGS.epsilon,
        step_size=settings["step_size_factor"] * FLAGS.epsilon,
        attack_steps=settings["attack_steps"],
        l2_weight_decay=5e-4,
        seed=seed,
        attack_batch_norm=attack_batch_norm,
    )
    steps = FLAGS.epochs * (len(x_train) // BATCH_SIZE)
    schedule = deat_tf.learning_rates.make_learning_rate(
        "cyclic", 0.1, FLAGS.epochs, len(x_train) // BATCH_SIZE, peak_fraction=0.4
    )
    model.compile(optimizer=deat_tf.PyTorchSGD(schedule, momentum=0.9))
    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        batch_size=BATCH_SIZE,
        epochs=FLAGS.epochs,
        shuffle=True,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    used = {
        "method": method,
        "network": f"preact_resnet18 width {FLAGS.width}, init pytorch",
        "epsilon": FLAGS.epsilon,
        "step_size": model.step_size,
        "attack_steps": model.attack_steps,
        "initialization": f"{model.initialization} (scale {model.initialization_scale:g})",
        "optimizer": "PyTorchSGD momentum 0.9, cyclic lr 0 -> 0.1 -> 0 (peak at 40%)",
        "l2_weight_decay": 5e-4,
        "epochs": FLAGS.epochs,
        "minibatches": steps,
        "batch_size": BATCH_SIZE,
        "train_examples": len(x_train),
    }
    return network, seconds, used


def main(argv):
    del argv
    import keras
    import numpy as np

    from deat_tf import datasets, evaluation

    unknown = [name for name in FLAGS.methods if name not in METHOD_SETTINGS]
    if unknown:
        raise app.UsageError(
            f"--methods: unknown method {unknown[0]!r}; use {list(METHOD_SETTINGS)}."
        )
    sample = datasets.load_mnist_sample()
    x_train = sample["x_train"][: FLAGS.train_examples]
    y_train = sample["y_train"][: FLAGS.train_examples]
    test = (sample["x_test"][: FLAGS.test_examples], sample["y_test"][: FLAGS.test_examples])
    attack = f"pgd{FLAGS.test_attack_steps}"
    results = []
    for method in FLAGS.methods:
        for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds):
            networks, row = {}, {"method": method, "seed": seed}
            for mode in ("stateless", "update"):
                network, seconds, used = train_network(method, seed, mode, x_train, y_train)
                report = evaluation.evaluate(
                    network, test, f"clean,{attack}", FLAGS.epsilon, seed=seed, batch_size=500
                )
                row[mode] = {
                    "clean_accuracy": report["clean_accuracy"],
                    "robust_accuracy": report["robust_accuracy"],
                    "train_seconds": seconds,
                }
                row["settings"] = used
                networks[mode] = network
                print(
                    f"{method} seed {seed} {mode:9s}: clean {report['clean_accuracy']:.4f} "
                    f"{attack} {report['robust_accuracy']:.4f} ({seconds:.0f} s)",
                    flush=True,
                )
            row["max_weight_difference"] = float(
                max(
                    np.abs(a.numpy() - b.numpy()).max()
                    for a, b in zip(
                        networks["stateless"].trainable_variables,
                        networks["update"].trainable_variables,
                    )
                )
            )
            moving = [
                (layer.moving_variance.numpy(), other.moving_variance.numpy())
                for layer, other in zip(networks["stateless"].layers, networks["update"].layers)
                if isinstance(layer, keras.layers.BatchNormalization)
            ]
            row["median_moving_variance_ratio_update_over_stateless"] = float(
                np.median(np.concatenate([updated / stateless for stateless, updated in moving]))
            )
            for key in ("clean_accuracy", "robust_accuracy"):
                row[f"{key}_difference_update_minus_stateless"] = (
                    row["update"][key] - row["stateless"][key]
                )
            results.append(row)
    output = {
        "description": (
            "Inference-mode accuracy of networks trained with attack_batch_norm='stateless' "
            "(deat_tf's default) and 'update' (the reference code's behaviour) from the same "
            f"start; evaluation: clean and {attack.upper()} (step 2.5 epsilon / steps, one "
            f"restart) on the first {FLAGS.test_examples} test digits of the MNIST sample."
        ),
        "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "results": results,
        "machine": common.machine_description(),
    }
    common.write_json(FLAGS.output, output)


if __name__ == "__main__":
    app.run(main)
