"""What the benchmarks share: the machine they ran on, atomic JSON, synthetic batches."""

import json
import os
import platform


def machine_description():
    """The machine a benchmark ran on, for its JSON.

    Returns:
        A dict: platform, CPU model and count, load average at the call,
        devices and GPU names as TensorFlow sees them, TF and Keras versions.
    """
    import keras
    import tensorflow as tf

    model = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return {
        "platform": platform.platform(),
        "cpu_model": model or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "devices": [device.device_type for device in tf.config.list_physical_devices()],
        "gpu": [
            tf.config.experimental.get_device_details(gpu).get("device_name", "")
            for gpu in tf.config.list_physical_devices("GPU")
        ],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def write_json(path, results):
    """Writes the results atomically (a reader never sees half a file) and says where.

    Args:
        path: The JSON file; its folder is created if needed.
        results: A JSON-serialisable dict.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(results, handle, indent=2)
    os.replace(temporary, path)
    print(f"\nwrote {path}")


def define_step_timing_flags(output, resnet_width):
    """Defines the flags of the benchmarks that time train steps on synthetic batches.

    Args:
        output: Default JSON path.
        resnet_width: Default first-stage width of PreAct-ResNet18.
    """
    from absl import flags

    flags.DEFINE_string("output", output, "Where to write the JSON results.")
    flags.DEFINE_list("networks", ["mnist_cnn", "preact_resnet18"], "Networks to time.")
    flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds; the median is reported.")
    flags.DEFINE_integer("steps", 3, "Minibatches timed per configuration per round.")
    flags.DEFINE_integer("warmup", 2, "Untimed minibatches per configuration before timing.")
    flags.DEFINE_integer(
        "resnet_width", resnet_width, "First-stage width of PreAct-ResNet18 (the paper's: 64)."
    )


def step_timing_header(flag_values, **settings):
    """The first fields of a step-timing benchmark's JSON: command, date, machine, settings.

    Args:
        flag_values: The parsed flags of `define_step_timing_flags`.
        **settings: Further settings to record.

    Returns:
        A dict.
    """
    import sys
    import time

    return {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_description(),
        "settings": {
            "rounds": flag_values.rounds,
            "steps": flag_values.steps,
            "warmup": flag_values.warmup,
            "resnet_width": flag_values.resnet_width,
            **settings,
        },
    }


def synthetic_setups(networks, resnet_width):
    """One random batch per network, for timing train steps on in-memory data.

    Args:
        networks: Names among "mnist_cnn" (batch 100, epsilon 0.3) and
            "preact_resnet18" (batch 128, epsilon 8/255).
        resnet_width: First-stage width of PreAct-ResNet18.

    Returns:
        {name: (network factory, images, labels, epsilon, batch size)}.

    Raises:
        ValueError: For an unknown network name.
    """
    import numpy as np

    from deat_tf import models

    generator = np.random.default_rng(0)
    setups = {}
    for name in networks:
        if name == "mnist_cnn":
            shape, batch, classes, epsilon = (28, 28, 1), 100, 10, 0.3

            def factory():
                return models.mnist_cnn()

        elif name == "preact_resnet18":
            shape, batch, classes, epsilon = (32, 32, 3), 128, 10, 8 / 255

            def factory():
                return models.preact_resnet18(width=resnet_width)

        else:
            raise ValueError(
                f"--networks: unknown network {name!r}; use mnist_cnn, preact_resnet18."
            )
        images = generator.uniform(size=(batch,) + shape).astype(np.float32)
        labels = generator.integers(0, classes, size=batch).astype(np.int64)
        setups[name] = (factory, images, labels, epsilon, batch)
    return setups
