"""Cost of one adversarial minibatch relative to the gradient passes it makes.

For each network, times one minibatch of

- `deat` with r = 1, 2, 4, 8 replays, divided by r x the time of `none`;
- `pgd` with K = 1, 7, 10 steps, divided by (K + 1) x the time of `none`;

where `none` is a clean training step of the same network and batch. A ratio of
1.0 means the method costs exactly its forward+backward passes; the target is
<= 1.10. Configurations are interleaved (round-robin) after a warm-up so that
machine noise hits all of them alike, and each figure is the median over rounds.

    python benchmarks/step_efficiency.py --output=benchmarks/step_efficiency.json

The train function Keras builds for `fit` is called directly on an in-memory
batch, so the figures hold the whole train step (attack, updates, metrics) but
not the input pipeline or callbacks.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
common.define_step_timing_flags("benchmarks/step_efficiency.json", resnet_width=64)
flags.DEFINE_boolean("jit_compile", False, "XLA-compile the train steps.")

REPLAYS = (1, 2, 4, 8)
PGD_STEPS = (1, 7, 10)


def make_step(factory, images, labels, epsilon, method, steps):
    """Returns a callable running one compiled train step, and its pass count."""
    import keras
    import tensorflow as tf

    import deat_tf

    model = deat_tf.AdversarialModel(factory(), method=method, epsilon=epsilon, attack_steps=steps)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=FLAGS.jit_compile)
    # fit() sizes buffers and checks data; one tiny fit also builds the optimizer.
    model.fit(images, labels, batch_size=len(images), epochs=1, verbose=0)
    iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
    train_function = model.train_function

    def step():
        logs = train_function(iterator)
        # Reading a value waits for the step to finish (matters on GPU).
        return float(logs["loss"])

    passes = 1 if method == "none" else steps if method == "deat" else steps + 1
    return step, passes


def time_network(name, setup):
    factory, images, labels, epsilon, batch = setup
    configurations = [("none", None)]
    configurations += [("deat", r) for r in REPLAYS]
    configurations += [("pgd", k) for k in PGD_STEPS]
    steps = {}
    for method, count in configurations:
        step, passes = make_step(factory, images, labels, epsilon, method, count)
        for _ in range(FLAGS.warmup):
            step()
        steps[(method, count)] = (step, passes)
    samples = {key: [] for key in steps}
    for round_index in range(FLAGS.rounds):
        for key, (step, _) in steps.items():
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                step()
            samples[key].append((time.perf_counter() - start) / FLAGS.steps)
        print(f"{name}: round {round_index + 1}/{FLAGS.rounds} done", flush=True)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    clean = medians[("none", None)]
    rows = []
    for (method, count), (_, passes) in steps.items():
        rows.append(
            {
                "method": method,
                "count": count,
                "passes": passes,
                "seconds_per_minibatch": medians[(method, count)],
                "ratio": medians[(method, count)] / (passes * clean),
                "samples": samples[(method, count)],
            }
        )
    return {"network": name, "batch_size": batch, "rows": rows}


def main(argv):
    del argv
    import tensorflow as tf

    # Every configuration builds its own train function; TF warns about that.
    tf.get_logger().setLevel("ERROR")

    results = {
        **common.step_timing_header(FLAGS, jit_compile=FLAGS.jit_compile),
        "networks": [],
    }
    for name, setup in common.synthetic_setups(FLAGS.networks, FLAGS.resnet_width).items():
        results["networks"].append(time_network(name, setup))
    print(f"\n{'network':<16} {'method':<6} {'count':>5} {'ms/minibatch':>13} {'ratio':>6}")
    for network in results["networks"]:
        for row in network["rows"]:
            count = "-" if row["count"] is None else row["count"]
            print(
                f"{network['network']:<16} {row['method']:<6} {count:>5} "
                f"{1000 * row['seconds_per_minibatch']:>13.1f} {row['ratio']:>6.2f}"
            )
    common.write_json(FLAGS.output, results)


if __name__ == "__main__":
    app.run(main)
