"""Argument checks shared by the library: each raises `ValueError` naming the argument.

The function or constructor that owns an argument calls one of these once;
nothing re-checks the value downstream. Messages name the argument as the
caller spells it (`epsilon must be in [0, 1] ...`); the command-line tools add
their own prefix (`bin/train: error: ...`), and since every flag has the name
of the argument it sets, the message reads right in both places.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf


def check_epsilon(epsilon, name="epsilon"):
    """Validates an L-infinity radius for images in [0, 1].

    Args:
        epsilon: The radius (a Python number).
        name: The argument name used in the error message.

    Returns:
        The radius as a float.

    Raises:
        ValueError: If the radius is not a number in [0, 1].
    """
    value = _number(epsilon, name, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (images are scaled to [0, 1]), got {value}.")
    return value


def check_positive(value, name):
    """Validates a strictly positive number such as a step size.

    Args:
        value: The number to check.
        name: The argument name used in the error message.

    Returns:
        The number as a float.

    Raises:
        ValueError: If the number is not > 0.
    """
    number = _number(value, name, "a number > 0")
    if not number > 0.0:
        raise ValueError(f"{name} must be > 0, got {number}.")
    return number


def check_nonnegative(value, name):
    """Validates a number >= 0 such as a weight-decay coefficient.

    Args:
        value: The number to check.
        name: The argument name used in the error message.

    Returns:
        The number as a float.

    Raises:
        ValueError: If the number is not >= 0.
    """
    number = _number(value, name, "a number >= 0")
    if not number >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {number}.")
    return number


def check_range(value, name, low, high, include_high=True, include_low=True):
    """Validates a number in [low, high] (open at either end on request).

    Args:
        value: The number to check.
        name: The argument name used in the error message.
        low: Smallest allowed value.
        high: Largest allowed value.
        include_high: Whether `high` itself is allowed.
        include_low: Whether `low` itself is allowed.

    Returns:
        The number as a float.

    Raises:
        ValueError: If the number is outside the range.
    """
    interval = f"{'[' if include_low else '('}{low:g}, {high:g}{']' if include_high else ')'}"
    number = _number(value, name, f"a number in {interval}")
    above_low = low <= number if include_low else low < number
    below_high = number <= high if include_high else number < high
    inside = above_low and below_high
    if not inside:
        raise ValueError(f"{name} must be in {interval}, got {number}.")
    return number


def check_count(value, name, minimum=0):
    """Validates an integer count such as a number of steps or restarts.

    Args:
        value: The count to check.
        name: The argument name used in the error message.
        minimum: The smallest allowed value.

    Returns:
        The count as an int.

    Raises:
        ValueError: If the count is not an integer >= minimum.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    count = int(value)
    if count < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {count}.")
    return count


def check_choice(value, choices, name):
    """Validates a name against the allowed choices.

    Args:
        value: The name to check.
        choices: The allowed names.
        name: The argument name used in the error message.

    Returns:
        The name.

    Raises:
        ValueError: If the name is not one of `choices`.
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")
    return value


def _number(value, name, expected):
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {expected}, got {value!r}.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {expected}, got {value!r}.") from None


def check_image_arrays(
    images, labels, name, allow_uint8=True, num_classes=None, array_names=("images", "labels")
):
    """Checks in-memory images and labels; returns them in the pipelines' types.

    Float images must be finite: a NaN passes every comparison with 0 and 1, and
    one NaN pixel zeroes the input gradients of its batch and poisons the weights.

    Args:
        images: Array [N, H, W, C] (or [N, H, W] when `allow_uint8`), uint8
            (0-255, when `allow_uint8`) or floats in [0, 1].
        labels: Integer array with N labels >= 0.
        name: What the arrays are, for the error messages (e.g. "npz file
            data.npz"); each message starts with it.
        allow_uint8: Whether uint8 images and 3-D arrays (no channel axis) are
            accepted; a network's input must be 4-D floats.
        num_classes: If given, labels must be < num_classes.
        array_names: What the messages call the images and the labels (e.g.
            ("x_train", "y_train")).

    Returns:
        (images [N, H, W, C] as uint8 or float32, labels [N] as int64).

    Raises:
        ValueError: For shapes, dtypes or ranges that are not images and labels.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    images_name, labels_name = array_names
    if allow_uint8 and images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        expected = (
            "[N, H, W] or [N, H, W, C]" if allow_uint8 else "[batch, height, width, channels]"
        )
        raise ValueError(f"{name} {images_name} must have shape {expected}, got {images.shape}.")
    if images.dtype != np.uint8 or not allow_uint8:
        if not np.issubdtype(images.dtype, np.floating):
            expected = "uint8 (0-255) or floats in [0, 1]" if allow_uint8 else "floats in [0, 1]"
            raise ValueError(
                f"{name} {images_name} must be {expected}, got {images.dtype} "
                "(divide uint8 images by 255)."
            )
        finite = np.isfinite(images)
        if not finite.all():
            bad = images[~finite]
            first = int(np.argmin(finite.reshape(finite.shape[0], -1).all(axis=1)))
            raise ValueError(
                f"{name} {images_name} has {bad.size} non-finite pixels "
                f"({int(np.isnan(bad).sum())} NaN, {int(np.isinf(bad).sum())} Inf; the first "
                f"in example {first}); images must be finite values in [0, 1]."
            )
        if images.size and (images.min() < 0.0 or images.max() > 1.0):
            raise ValueError(
                f"{name} {images_name} must be scaled to [0, 1] (epsilon is in pixel units), got "
                f"values in [{images.min():.4g}, {images.max():.4g}]; divide uint8 images by 255."
            )
        images = images.astype(np.float32)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} {labels_name} must be integer classes, got {labels.dtype}.")
    labels = labels.reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{name} has {images.shape[0]} {images_name} but {labels.shape[0]} {labels_name}."
        )
    if not images.shape[0]:
        raise ValueError(f"{name} {images_name} has no examples.")
    if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
        allowed = ">= 0" if num_classes is None else f"in [0, {num_classes - 1}]"
        raise ValueError(
            f"{name} {labels_name} must be classes {allowed}, got values in "
            f"[{labels.min()}, {labels.max()}]."
        )
    return images, labels.astype(np.int64)


def check_image_tensor(images, name="x"):
    """Checks a symbolic or eager image batch and returns it as float32.

    Args:
        images: Tensor [batch, height, width, channels] of floats in [0, 1].
        name: The argument name used in the error message.

    Returns:
        The batch as a float32 tensor.

    Raises:
        ValueError: If it is a structure, not 4-D, or not floating point.
    """
    if isinstance(images, (dict, list, tuple)):
        raise ValueError(f"{name} must be a single image tensor, not a {type(images).__name__}.")
    images = tf.convert_to_tensor(images)
    if images.shape.rank is not None and images.shape.rank != 4:
        raise ValueError(
            f"{name} must be a 4-D batch of images [batch, height, width, channels], "
            f"got shape {images.shape}."
        )
    if not images.dtype.is_floating:
        raise ValueError(
            f"{name} must hold floats scaled to [0, 1], got dtype {images.dtype.name} "
            "(convert with tf.cast(images, tf.float32) / 255)."
        )
    return tf.cast(images, tf.float32)


def peek_training_batch(x, y, batch_size):
    """What `fit` will train on, for checking before any update.

    Arrays are returned whole (cheap to check fully); a dataset gives its first batch.

    Args:
        x: `fit`'s x: a `tf.data.Dataset` of (images, labels), an array, or
            anything else (a generator, a Keras data adapter).
        y: `fit`'s y (labels when x is an array).
        batch_size: `fit`'s batch_size.

    Returns:
        (images, labels, global batch size) as numpy, or None when x cannot be
        peeked at without consuming it.

    Raises:
        ValueError: For a dataset without labels or without elements, or arrays without y.
    """
    if isinstance(x, tf.data.Dataset):
        for element in x.take(1):
            images, labels, _ = keras.utils.unpack_x_y_sample_weight(element)
            if labels is None:
                raise ValueError("the dataset must yield (images, labels) pairs.")
            images = np.asarray(images)
            return images, np.asarray(labels), images.shape[0] if images.ndim else 0
        raise ValueError("the training dataset is empty.")
    if isinstance(x, (np.ndarray, tf.Tensor)):
        if y is None:
            raise ValueError("y (labels) is required when x is an array of images.")
        images = np.asarray(x)
        # Keras' default batch size for arrays is 32.
        return images, np.asarray(y), min(batch_size or 32, images.shape[0] if images.ndim else 0)
    return None
