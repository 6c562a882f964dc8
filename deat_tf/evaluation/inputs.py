"""What an evaluation attacks: the examples (`EvaluationData`) and the classifier.

`load_data` reads a dataset's test split with the preprocessing of bin/train
(`datasets.evaluation_split`); `load_classifier` loads a `.keras` file written
by bin/train or any Keras classifier; `check_model_outputs` and
`check_model_strategy` refuse, before any attack runs, a model that is not a
classifier of these images or whose variables a strategy cannot use. The
names are also reachable from `deat_tf.evaluation`.
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from deat_tf import attacks, checks, datasets, models


@dataclasses.dataclass
class EvaluationData:
    """Evaluation examples: a dataset of unbatched (image, label) pairs.

    Attributes:
        name: Where they come from (the dataset name).
        dataset: `tf.data.Dataset` of (float32 image [height, width, channels]
            in [0, 1], int64 label), in a fixed order.
        size: Number of examples, or None when unknown before reading.
        label_count: Largest label + 1 (or the dataset's class count), if known.
    """

    name: str
    dataset: tf.data.Dataset
    size: int | None
    label_count: int | None = None


def from_arrays(images, labels, name="arrays"):
    """Wraps in-memory arrays as `EvaluationData` after checking them.

    Args:
        images: Array [n, height, width, channels] (or [n, height, width]) of
            floats in [0, 1] or uint8.
        labels: Integer array [n].
        name: Label for the report.

    Returns:
        `EvaluationData`.

    Raises:
        ValueError: For shapes, dtypes or ranges that are not images and labels.
    """
    images, labels = checks.check_image_arrays(images, labels, name)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return EvaluationData(name, dataset, int(images.shape[0]), int(labels.max()) + 1)


def load_data(name, n_examples=None, data_dir=None, manual_dir=None, image_size=None):
    """Loads the evaluation split of a dataset as `EvaluationData`.

    Args:
        name: "mnist_sample" (the embedded 2,000 test digits), "npz:PATH" (keys
            x_test and y_test), or a TFDS name: mnist, cifar10, cifar100 (split
            "test") or imagenet2012 (split "validation", resize 256 / centre
            crop 224). See `datasets.evaluation_split`.
        n_examples: Keep the first n examples (all when None).
        data_dir: TFDS data directory.
        manual_dir: TFDS manual directory holding the ILSVRC2012 tars.
        image_size: Crop size for ImageNet (None: 224).

    Returns:
        `EvaluationData`.

    Raises:
        ValueError: For an unknown dataset or one that cannot be read.
    """
    if not name:
        raise ValueError("dataset is required: mnist_sample, npz:PATH or a TFDS name.")
    dataset, size, num_classes = datasets.evaluation_split(
        name, n_examples, data_dir=data_dir, manual_dir=manual_dir, image_size=image_size
    )
    return EvaluationData(name, dataset, size, num_classes)


def _first_line(error):
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def load_classifier(path, strategy=None, precision="float32"):
    """Loads a `.keras` classifier; for an `AdversarialModel` returns its network.

    Args:
        path: A `.keras` file written by `bin/train` (model.keras or
            network.keras) or any Keras classifier on [0, 1] images.
        strategy: Optional `tf.distribute.Strategy`; the model is loaded under
            its scope so that its variables are mirrored.
        precision: "float32" (default): a mixed-precision network's layers
            compute in float32 on its float32 weights, as the reference code
            attacks a float32 copy; "network": its saved policy (16 bits).

    Returns:
        The Keras model to attack.

    Raises:
        ValueError: If the file is missing or is not a loadable Keras model.
    """
    checks.check_choice(precision, models.EVALUATION_PRECISIONS, "evaluation_precision")
    if not path:
        raise ValueError("model is required: a .keras file (e.g. WORKDIR/model.keras).")
    if not os.path.isfile(path):
        raise ValueError(f"model: no such file {path!r}.")
    if not path.endswith(".keras"):
        raise ValueError(f"model must be a .keras file, got {path!r}.")
    # Imported here: adversarial_model imports the attack modules this module sits beside.
    from deat_tf.adversarial_model import AdversarialModel

    strategy = strategy or tf.distribute.get_strategy()
    try:
        with strategy.scope():
            model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - any failure means the file is not a model
        raise ValueError(
            f"model: cannot load {path!r} as a Keras model: {_first_line(error)}"
        ) from None
    if isinstance(model, AdversarialModel):
        model = model.network
    if precision == "float32":
        models.compute_in_float32(model)
    return model


def model_functions(model, outputs):
    """Returns (raw outputs function, logits function) of the model."""
    raw = attacks.logits_function(model)
    if outputs == "logits":
        return raw, raw

    def log_probabilities(images):
        probabilities = tf.cast(raw(images), tf.float32)
        # log(0) would be -inf; the floor keeps losses finite (their gradient is
        # then zero, which the zero-gradient check reports).
        return tf.math.log(tf.maximum(probabilities, np.finfo(np.float32).tiny))

    return raw, log_probabilities


def check_model_outputs(model, data, outputs="logits"):
    """Calls the model on two examples and checks it is a classifier on these images.

    Args:
        model: Keras model or callable.
        data: `EvaluationData`.
        outputs: "logits" or "probabilities".

    Returns:
        The number of classes.

    Raises:
        ValueError: If the model rejects the images, or its output is not
            [batch, classes] with classes >= 2, or probabilities do not sum to 1.
    """
    images, labels = next(iter(data.dataset.batch(2)))
    raw, _ = model_functions(model, outputs)
    try:
        result = raw(images)
    except Exception as error:
        raise ValueError(
            f"model does not accept the dataset images of shape "
            f"{tuple(images.shape[1:])}: {_first_line(error)}"
        ) from None
    if isinstance(result, (list, tuple, dict)) or not hasattr(result, "shape"):
        raise ValueError("model must return one [batch, classes] tensor, got a structure.")
    result = np.asarray(result)
    if result.ndim != 2 or result.shape[0] != images.shape[0] or result.shape[1] < 2:
        raise ValueError(
            f"model must output [batch, classes] scores (classes >= 2); for a batch of "
            f"{images.shape[0]} it returned shape {result.shape}."
        )
    num_classes = int(result.shape[1])
    if outputs == "probabilities":
        sums = result.sum(axis=1)
        if result.min() < -1e-6 or np.abs(sums - 1.0).max() > 1e-3:
            raise ValueError(
                "outputs=probabilities but the model's outputs are not probabilities "
                f"(row sums {np.round(sums, 4).tolist()}); use outputs=logits."
            )
    label_count = data.label_count or int(np.max(labels)) + 1
    if label_count > num_classes:
        raise ValueError(
            f"dataset has label {label_count - 1} but model has only {num_classes} outputs."
        )
    return num_classes


def check_model_strategy(model, strategy):
    """Checks that a Keras model's variables belong to the strategy when it has several replicas.

    Variables created outside `strategy.scope()` stay on one device: every
    replica would read them from there (slow on several GPUs), and inside some
    attack loops (Square's) TensorFlow refuses the cross-device access.

    Args:
        model: Keras model or callable (callables are not checked).
        strategy: The `tf.distribute.Strategy` of the evaluation.

    Raises:
        ValueError: If the strategy has several replicas and a variable of the
            model is not a distributed variable.
    """
    if strategy.num_replicas_in_sync < 2 or not isinstance(model, keras.layers.Layer):
        return
    local = [
        variable.path
        for variable in model.variables
        if not isinstance(getattr(variable, "value", variable), tf.distribute.DistributedValues)
    ]
    if local:
        raise ValueError(
            f"model: {len(local)} variables (e.g. {local[0]}) were not created under the "
            f"strategy's scope; with {strategy.num_replicas_in_sync} replicas build or load the "
            "model inside strategy.scope() (load_classifier(path, strategy) does)."
        )
