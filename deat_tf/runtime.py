"""What `bin/train` and `bin/evaluate` share: the distribution strategy and atomic JSON files."""

import json
import math
import os
import tempfile

import tensorflow as tf

STRATEGIES = ("auto", "mirrored", "one_device")


def make_strategy(name="auto"):
    """The distribution strategy named by a `--strategy` flag.

    Args:
        name: "auto" (MirroredStrategy over all local GPUs when there are
            several, else the default strategy), "mirrored" (all local GPUs,
            or all logical CPUs when there is no GPU) or "one_device" (the
            first GPU, else the CPU).

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: For an unknown name.
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}; got {name!r}.")
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if name == "auto":
        return tf.distribute.MirroredStrategy(gpus) if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        devices = gpus or [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")


def json_ready(value):
    """Turns NaN/inf into None (strict JSON) and numpy scalars into Python numbers."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, value):
    """Writes JSON atomically: a temporary file in the same folder, flushed, then renamed.

    Args:
        path: Destination file; its folder must exist.
        value: A JSON-ready structure (NaN and numpy scalars are converted).
    """
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=folder)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(json_ready(value), stream, indent=2, allow_nan=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
