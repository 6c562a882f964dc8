"""Images per second of the train step with and without XLA, and whether XLA changes the numbers.

For each network, builds the train step of

- `none` (clean training, for reference), `deat` with r = 1, 2, 4 replays and
  `pgd` with K = 1, 7 steps,

twice: with `compile(jit_compile=False)` (a TensorFlow graph) and with
`compile(jit_compile=True)` (Keras wraps the whole step in one XLA cluster,
attack loops, replays, optimizer updates and metrics included). The two
models of a pair start from the same weights and see the same batch and seed.
Their first steps are compared twice: with a zero start of the perturbation,
where only XLA's arithmetic differs, so `loss` and `grad_magnitude` must agree
within `--tolerance` (1e-4, relative); and with the method's random start,
which XLA draws differently from the same stateless seed
(tensorflow/tensorflow#117644), so that difference is a different draw, not
an error. Then the steps are timed like
`benchmarks/step_efficiency.py`: the train function Keras builds for `fit` is
called on an in-memory batch, all configurations interleaved round-robin after
warm-up, medians over rounds; the ratio is jit / no-jit images per second.

    python benchmarks/xla.py --output=benchmarks/xla.json

The script runs unchanged on a GPU (TensorFlow places the steps there; each
step ends by reading the loss, which waits for the device).
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
common.define_step_timing_flags("benchmarks/xla.json", resnet_width=16)
flags.DEFINE_float("tolerance", 1e-4, "Largest relative difference jit / no-jit allowed.")

CONFIGURATIONS = (("none", None), ("deat", 1), ("deat", 2), ("deat", 4), ("pgd", 1), ("pgd", 7))


def relative_difference(first, second):
    """max |first - second| / max |first| (0 when both are zero)."""
    import numpy as np

    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    scale = np.max(np.abs(first))
    difference = np.max(np.abs(first - second))
    return float(difference / scale) if scale > 0 else float(difference)


def first_step(factory, initial_weights, images, labels, epsilon, method, count, options):
    """Builds one model from `initial_weights` and runs its first step through `fit`.

    Returns:
        (the model, its network, {"loss", "grad_magnitude", "weights"} after that step).
    """
    import keras

    import deat_tf

    network = factory()
    network.set_weights(initial_weights)
    model = deat_tf.AdversarialModel(
        network,
        method=method,
        epsilon=epsilon,
        attack_steps=count,
        initialization=options["initialization"],
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=options["jit_compile"]
    )
    if bool(model.jit_compile) != options["jit_compile"]:
        # Keras may turn XLA off for a model it cannot compile; the figures would lie.
        raise RuntimeError(f"{method} {count}: Keras set jit_compile={model.jit_compile}.")
    # One fit over the one batch builds the step and the optimizer; it is the compared step.
    history = model.fit(images, labels, batch_size=len(images), epochs=1, verbose=0)
    record = {
        "loss": history.history["loss"][0],
        # Clean training computes no M (track_magnitude): 0 for the comparisons.
        "grad_magnitude": history.history.get("grad_magnitude", [0.0])[0],
        "weights": [weight.numpy() for weight in network.weights],
    }
    return model, network, record


def rerun_first_step(model, network, weights, images, labels):
    """Runs a built model's first step again from `weights`, without rebuilding it.

    Resets what the first step changed: the weights, SGD's momentum and
    iteration count, the minibatch counter (it seeds the random start and keys
    the learning rate; private, hence read here only) and the metrics.

    Returns:
        {"loss", "grad_magnitude", "weights"} after the step, as `first_step`.
    """
    import tensorflow as tf

    network.set_weights(weights)
    for momentum in model.optimizer.momentums:
        momentum.assign(tf.zeros_like(momentum))
    model.optimizer.iterations.assign(0)
    model._minibatch_counter.assign(0)
    model.reset_metrics()
    logs = model.train_function(iter(tf.data.Dataset.from_tensors((images, labels))))
    return {
        "loss": float(logs["loss"]),
        "grad_magnitude": float(logs.get("grad_magnitude", 0.0)),
        "weights": [weight.numpy() for weight in network.weights],
    }


def rounding_perturbation(weights):
    """The weights times (1 + 1e-7 N(0, 1)): about one float32 rounding (2^-23 = 1.2e-7)."""
    import numpy as np

    generator = np.random.default_rng(1)
    return [
        (weight * (1 + 1e-7 * generator.standard_normal(weight.shape))).astype(weight.dtype)
        for weight in weights
    ]


def compare(graph, compiled):
    """Relative differences of two first steps (see `first_step`)."""
    comparison = {
        "loss": [graph["loss"], compiled["loss"]],
        "grad_magnitude": [graph["grad_magnitude"], compiled["grad_magnitude"]],
        "loss_relative_difference": relative_difference(graph["loss"], compiled["loss"]),
        "grad_magnitude_relative_difference": relative_difference(
            graph["grad_magnitude"], compiled["grad_magnitude"]
        ),
        # Per variable max |difference| / max |weight|, the largest over variables.
        "weights_relative_difference": max(
            relative_difference(first, second)
            for first, second in zip(graph["weights"], compiled["weights"])
        ),
    }
    comparison["within_tolerance"] = all(
        comparison[key] <= FLAGS.tolerance
        for key in ("loss_relative_difference", "grad_magnitude_relative_difference")
    )
    return comparison


def make_pair(factory, images, labels, epsilon, method, count):
    """The no-jit and jit train steps of one configuration, and their first-step comparisons.

    From the same weights, batch and seed:

    - "zero_start": no-jit against jit with a zero start of the perturbation,
      so XLA's arithmetic is the only difference;
    - "rounding_control": no-jit against no-jit from weights moved by about
      one float32 rounding (`rounding_perturbation`), zero start: how far any
      reordering of float32 arithmetic moves this step's figures; sign steps
      and several updates amplify differences, so this is the scale of the
      zero-start difference to expect from XLA's arithmetic;
    - "random_start": no-jit against jit with the method's random start (the
      timed models). XLA draws other numbers than TensorFlow's kernels from
      the same stateless seed (tensorflow/tensorflow#117644), so this measures
      a different draw, not an error.

    Returns:
        ({False: step, True: step}, {comparison name: comparison}).
    """
    import tensorflow as tf

    initial_weights = factory().get_weights()
    steps, records = {}, {"random_start": {}, "zero_start": {}}

    def build(**settings):
        return first_step(
            factory, initial_weights, images, labels, epsilon, method, count, settings
        )

    for jit_compile in (False, True):
        model, _, records["random_start"][jit_compile] = build(
            initialization=None, jit_compile=jit_compile
        )
        zero_model, zero_network, records["zero_start"][jit_compile] = build(
            initialization="zero", jit_compile=jit_compile
        )
        if not jit_compile:
            # Rerunning from the same weights must repeat the step exactly, or the control lies.
            repeated = rerun_first_step(zero_model, zero_network, initial_weights, images, labels)
            perturbed = rerun_first_step(
                zero_model, zero_network, rounding_perturbation(initial_weights), images, labels
            )
        iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())

        def step(train_function=model.train_function, iterator=iterator):
            # Reading a value waits for the step to finish (matters on GPU).
            return float(train_function(iterator)["loss"])

        steps[jit_compile] = step
    comparisons = {start: compare(pair[False], pair[True]) for start, pair in records.items()}
    graph = records["zero_start"][False]
    comparisons["rounding_control"] = compare(graph, perturbed)
    comparisons["rounding_control"]["rerun_relative_difference"] = compare(graph, repeated)[
        "grad_magnitude_relative_difference"
    ]
    return steps, comparisons


def time_network(name, setup):
    factory, images, labels, epsilon, batch = setup
    steps, comparisons = {}, {}
    for method, count in CONFIGURATIONS:
        start = time.perf_counter()
        pair, comparisons[(method, count)] = make_pair(
            factory, images, labels, epsilon, method, count
        )
        for jit_compile, step in pair.items():
            for _ in range(FLAGS.warmup):
                step()
            steps[(method, count, jit_compile)] = step
        differences = {
            start: comparison["grad_magnitude_relative_difference"]
            for start, comparison in comparisons[(method, count)].items()
        }
        print(
            f"{name} {method} {count}: built and warmed up in {time.perf_counter() - start:.0f} s; "
            f"grad_magnitude jit / no-jit relative difference {differences['zero_start']:.1e} "
            f"(zero start), {differences['rounding_control']:.1e} (no-jit rounding control), "
            f"{differences['random_start']:.1e} (random start)",
            flush=True,
        )
    samples = {key: [] for key in steps}
    for round_index in range(FLAGS.rounds):
        for key, step in steps.items():
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                step()
            samples[key].append((time.perf_counter() - start) / FLAGS.steps)
        print(f"{name}: round {round_index + 1}/{FLAGS.rounds} done", flush=True)
    rows = []
    for method, count in CONFIGURATIONS:
        graph = statistics.median(samples[(method, count, False)])
        compiled = statistics.median(samples[(method, count, True)])
        # Per-round ratios: the two steps of a round ran back to back, under the same load.
        round_ratios = [
            without / with_
            for without, with_ in zip(
                samples[(method, count, False)], samples[(method, count, True)]
            )
        ]
        rows.append(
            {
                "method": method,
                "count": count,
                "images_per_second": batch / graph,
                "images_per_second_jit": batch / compiled,
                "ratio_jit_over_no_jit": graph / compiled,
                "median_round_ratio": statistics.median(round_ratios),
                "seconds_per_minibatch": samples[(method, count, False)],
                "seconds_per_minibatch_jit": samples[(method, count, True)],
                "first_step_zero_start": comparisons[(method, count)]["zero_start"],
                "first_step_rounding_control": comparisons[(method, count)]["rounding_control"],
                "first_step_random_start": comparisons[(method, count)]["random_start"],
            }
        )
    return {"network": name, "batch_size": batch, "rows": rows}


def main(argv):
    del argv
    import tensorflow as tf

    # Every configuration builds its own train function; TF warns about that.
    tf.get_logger().setLevel("ERROR")
    results = {
        "description": (
            "Train-step images per second with compile(jit_compile=False) and True, the ratio "
            "jit / no-jit, and the first step's relative differences (loss, grad_magnitude, "
            "weights) from the same weights, batch and seed."
        ),
        **common.step_timing_header(
            FLAGS,
            tolerance=FLAGS.tolerance,
            optimizer="keras SGD 0.01 momentum 0.9",
            data="one random batch in [0, 1] with random labels, repeated",
        ),
        "networks": [],
    }
    for name, setup in common.synthetic_setups(FLAGS.networks, FLAGS.resnet_width).items():
        results["networks"].append(time_network(name, setup))
    print(
        f"\n{'network':<16} {'method':<6} {'count':>5} {'img/s':>8} {'img/s jit':>10} "
        f"{'ratio':>6} {'M diff zero start':>18} {'rounding control':>17} {'random start':>13}"
    )
    for network in results["networks"]:
        for row in network["rows"]:
            count = "-" if row["count"] is None else row["count"]
            differences = [
                row[key]["grad_magnitude_relative_difference"]
                for key in (
                    "first_step_zero_start",
                    "first_step_rounding_control",
                    "first_step_random_start",
                )
            ]
            print(
                f"{network['network']:<16} {row['method']:<6} {count:>5} "
                f"{row['images_per_second']:>8.0f} {row['images_per_second_jit']:>10.0f} "
                f"{row['ratio_jit_over_no_jit']:>6.2f} "
                f"{differences[0]:>18.1e} {differences[1]:>17.1e} {differences[2]:>13.1e}"
            )
    common.write_json(FLAGS.output, results)


if __name__ == "__main__":
    app.run(main)
