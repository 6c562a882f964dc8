"""Input pipelines: TFDS datasets, the embedded MNIST sample and users' .npz arrays.

Every pipeline yields `(images, labels)` with float32 images in [0, 1] and
int64 labels, so the attack budget epsilon is in pixel units; normalisation
lives inside the networks (`models.Standardize`), with the constants below.

    pipelines = datasets.get_pipelines("cifar10", batch_size=128, validation_size=1000)
    model.fit(pipelines.train, steps_per_epoch=pipelines.steps_per_epoch,
              validation_data=pipelines.validation, ...)

Dataset names:

- "mnist", "cifar10", "cifar100", "imagenet2012": TensorFlow Datasets. They are
  downloaded and prepared in `data_dir` on first use, except ImageNet, whose
  ILSVRC2012 tars must be put into the TFDS manual directory by hand.
- "mnist_sample": 10,000 real MNIST digits shipped with the package
  (`deat_tf/data/mnist-10k.npz`, provenance in the README beside it), split
  8,000 train / 2,000 test; works offline.
- "npz:PATH": a users' .npz file with keys x_train, y_train, x_test, y_test;
  images uint8 (0-255) or floats in [0, 1], shape [N, H, W] or [N, H, W, C].

The validation split is carved from the END of the training split (the last
`validation_size` examples, never the test split) and used for checkpoint
selection. The training pipeline repeats forever; each epoch is
`steps_per_epoch` full batches, so every epoch has the same number of
minibatches, which the M+ rule assumes when it compares epoch sums. The test
split is read by `evaluation_split`, for `deat_tf.evaluation`.

Augmentations are listed in `deat_tf.preprocessing`; "auto" picks the
dataset's recipe default (in `DATASETS`). Random augmentations use stateless
ops seeded by (seed, position of the example in the training stream), so they
do not depend on how many threads run the map; `deterministic=True` also keeps
the training element order fixed. Evaluation pipelines always keep their order.
"""

import dataclasses
import os
import socket

import numpy as np
import tensorflow as tf

from deat_tf import checks, npz_files, preprocessing, streams
from deat_tf.npz_files import error_text

MNIST_SAMPLE_PATH = os.path.join(os.path.dirname(__file__), "data", "mnist-10k.npz")

# Per-channel mean and std of the training images in [0, 1]; the networks
# standardise with them. MNIST networks train on raw pixels, as the fast-AT papers do.
MNIST_MEAN = (0.0,)
MNIST_STD = (1.0,)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AUGMENTATIONS = ("auto",) + preprocessing.AUGMENTATIONS
IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a recipe needs to know about a dataset.

    Attributes:
        name: TFDS name, "mnist_sample" or "npz".
        num_classes: Number of classes.
        image_shape: Native (height, width, channels); None for variable-size images.
        mean: Per-channel mean of the training images in [0, 1].
        std: Per-channel std of the training images in [0, 1].
        train_examples: Size of the full training split (before carving).
        test_examples: Size of the evaluation split.
        test_split: TFDS split used for the final test evaluation.
        augmentation: Default training augmentation.
        image_size: Default crop size for variable-size images.
    """

    name: str
    num_classes: int
    image_shape: tuple
    mean: tuple
    std: tuple
    train_examples: int
    test_examples: int
    test_split: str = "test"
    augmentation: str = "none"
    image_size: int = None


DATASETS = {
    "mnist": DatasetSpec("mnist", 10, (28, 28, 1), MNIST_MEAN, MNIST_STD, 60_000, 10_000),
    "mnist_sample": DatasetSpec(
        "mnist_sample", 10, (28, 28, 1), MNIST_MEAN, MNIST_STD, 8_000, 2_000
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        10,
        (32, 32, 3),
        CIFAR10_MEAN,
        CIFAR10_STD,
        50_000,
        10_000,
        augmentation="crop_flip",
    ),
    "cifar100": DatasetSpec(
        "cifar100",
        100,
        (32, 32, 3),
        CIFAR100_MEAN,
        CIFAR100_STD,
        50_000,
        10_000,
        augmentation="crop_flip",
    ),
    "imagenet2012": DatasetSpec(
        "imagenet2012",
        1000,
        None,
        IMAGENET_MEAN,
        IMAGENET_STD,
        1_281_167,
        50_000,
        test_split="validation",
        augmentation="random_resized_crop_flip",
        image_size=224,
    ),
}
TFDS_NAMES = ("mnist", "cifar10", "cifar100", "imagenet2012")
DATASET_NAMES = TFDS_NAMES + ("mnist_sample", "npz:PATH")


@dataclasses.dataclass
class Pipelines:
    """The input pipelines of a run and their sizes.

    Attributes:
        train: Dataset of full global batches, augmented and shuffled, from
            epoch 0 (endless when `get_pipelines` got no `epochs`).
        validation: Finite dataset of the carved validation split (not augmented).
        train_evaluation: Finite dataset of the first training examples without
            augmentation (for the clean training accuracy), or None.
        spec: The `DatasetSpec`; its image_shape is the shape the model receives.
        steps_per_epoch: Full batches per epoch over the carved training split,
            or None when the split size is unknown (mocked TFDS data).
        train_examples: Training examples after carving, or None when unknown.
        validation_examples: Examples in the validation split.
        training: Function (initial epoch, part=None, first_minibatch=0) ->
            the training batches from that epoch (and its minibatch) on, the
            same batches a run from epoch 0 would see there; part = (first,
            size) keeps only those examples of each batch.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    train_evaluation: tf.data.Dataset
    spec: DatasetSpec
    steps_per_epoch: int
    train_examples: int
    validation_examples: int
    training: object = dataclasses.field(default=None, repr=False)


def load_mnist_sample(path=MNIST_SAMPLE_PATH):
    """Loads the embedded MNIST sample as float images in [0, 1].

    Args:
        path: The .npz file (keys x_train, y_train, x_test, y_test, uint8).

    Returns:
        A dict with x_train [8000, 28, 28, 1] float32, y_train [8000] int64,
        x_test [2000, 28, 28, 1] float32 and y_test [2000] int64.
    """
    arrays = _mnist_sample_arrays(path)
    for key in ("x_train", "x_test"):
        arrays[key] = arrays[key].astype(np.float32) / 255.0
    return arrays


# ------------------------------------------------------------------ resolving


def parse_name(name):
    """Splits a dataset name into (kind, path).

    Args:
        name: One of `DATASET_NAMES`, with npz:PATH naming a file.

    Returns:
        ("tfds", None), ("mnist_sample", None) or ("npz", PATH).

    Raises:
        ValueError: For an unknown name or an empty npz path.
    """
    if isinstance(name, str) and name.startswith("npz:"):
        path = name[len("npz:") :]
        if not path:
            raise ValueError(
                "dataset npz:PATH needs a file path after 'npz:', e.g. npz:/data/my.npz."
            )
        return "npz", os.path.expanduser(path)
    if name == "mnist_sample":
        return "mnist_sample", None
    if name in TFDS_NAMES:
        return "tfds", None
    raise ValueError(f"dataset must be one of {', '.join(DATASET_NAMES)}; got {name!r}.")


def imagenet_manual_dir(data_dir=None, manual_dir=None):
    """The directory where TFDS looks for the ILSVRC2012 tars.

    Args:
        data_dir: TFDS data directory (None: TFDS default, ~/tensorflow_datasets).
        manual_dir: Explicit manual directory, which wins when given.

    Returns:
        The path as a string.
    """
    if manual_dir:
        return os.path.expanduser(manual_dir)
    import tensorflow_datasets as tfds

    root = os.path.expanduser(data_dir) if data_dir else tfds.core.constants.DATA_DIR
    return os.path.join(root, "downloads", "manual")


def tfds_builder(name, data_dir=None):
    """The TFDS builder of a dataset, checked to be usable before anything is downloaded.

    Besides constructing the builder this reads what preparing it needs first
    (the checksums of its source files, which TFDS finds through its own package
    files), so that a missing dependency of tensorflow-datasets is reported here,
    by name, and not later as a failed download.

    Args:
        name: One of `TFDS_NAMES`.
        data_dir: TFDS data directory (None: TFDS default, ~/tensorflow_datasets).

    Returns:
        The `tfds.core.DatasetBuilder`.

    Raises:
        ValueError: Naming the missing package, or what else TFDS could not do.
    """
    try:
        import tensorflow_datasets as tfds

        builder = tfds.builder(name, data_dir=os.path.expanduser(data_dir) if data_dir else None)
        type(builder).url_infos  # noqa: B018 - the read is the check
    except Exception as error:  # noqa: BLE001 - reported with its cause, in one line
        raise ValueError(_tfds_error(name, "set up", error)) from error
    return builder


def _tfds_error(name, action, error, data_dir=None):
    """One line for a TFDS failure that names its real cause."""
    where = f" in {data_dir}" if data_dir else ""
    missing = _cause(error, ImportError)
    if missing is not None:
        package = getattr(missing, "name", None) or "a package"
        return (
            f"tensorflow-datasets cannot {action} {name}{where}: the Python package {package} "
            f"is not installed ({error_text(missing)}); install it (pip install {package}), "
            "or reinstall deat_tf (pip install -e .), which requires it."
        )
    if _is_network_error(error):
        return (
            f"could not {action} {name}{where}: the download failed ({error_text(error)}); "
            "check network access, or prepare it on another machine and pass --data_dir."
        )
    return f"could not {action} {name}{where} ({error_text(error)})."


def _cause(error, kind):
    """The first exception of type `kind` in the chain of `error`, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _is_network_error(error):
    # requests' and urllib3's errors derive from these builtins or carry their names;
    # a disk error (an OSError too) must not be blamed on the network.
    network = (ConnectionError, TimeoutError, socket.gaierror, socket.timeout)
    seen = set()
    while error is not None and id(error) not in seen:
        kinds = {cls.__name__ for cls in type(error).__mro__}
        if isinstance(error, network) or kinds & _NETWORK_ERROR_NAMES:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


_NETWORK_ERROR_NAMES = {
    "RequestException",
    "ConnectionError",
    "HTTPError",
    "Timeout",
    "NameResolutionError",
    "MaxRetryError",
    "NewConnectionError",
    "DownloadError",
}


def describe(name):
    """The `DatasetSpec` of a dataset, without downloading or preparing anything.

    TFDS datasets are described from `DATASETS`; an npz file is read (cheap)
    and its arrays checked, its mean, std and sizes measured.

    Args:
        name: A dataset name (see `parse_name`).

    Returns:
        The `DatasetSpec`.

    Raises:
        ValueError: For an unknown name or an unusable npz file.
    """
    kind, path = parse_name(name)
    if kind == "npz":
        return _load_npz(path)[1]
    return DATASETS[name]


def prepare(name, data_dir=None, manual_dir=None, download=True):
    """Checks that a dataset can be read, downloading or preparing it if needed.

    Args:
        name: A dataset name (see `parse_name`).
        data_dir: TFDS data directory.
        manual_dir: TFDS manual directory (ImageNet tars).
        download: Whether a missing TFDS dataset may be downloaded and prepared.

    Returns:
        The `DatasetSpec`, with mean/std and sizes measured for npz files.

    Raises:
        ValueError: With a one-line explanation and how to fix it.
    """
    spec = describe(name)
    if parse_name(name)[0] == "tfds":
        _download_and_prepare(name, data_dir, manual_dir, download)
    return spec


def _download_and_prepare(name, data_dir, manual_dir, download):
    builder = tfds_builder(name, data_dir)
    if _is_prepared(builder):
        return
    if name == "imagenet2012":
        folder = imagenet_manual_dir(data_dir, manual_dir)
        missing = [
            file for file in IMAGENET_MANUAL_FILES if not os.path.isfile(os.path.join(folder, file))
        ]
        if missing:
            raise ValueError(
                f"imagenet2012 is not prepared in {builder.data_dir_root} and "
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing from "
                f"{folder}: download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
                "https://image-net.org/ into that folder (or pass manual_dir=FOLDER "
                "holding them); TFDS prepares them on the first run."
            )
    elif not download:
        raise ValueError(
            f"{name} is not prepared in {builder.data_dir_root}; allow the download "
            "(download=true) or pass data_dir=DIR holding a prepared copy."
        )
    import tensorflow_datasets as tfds

    config = tfds.download.DownloadConfig(
        manual_dir=imagenet_manual_dir(data_dir, manual_dir) if name == "imagenet2012" else None
    )
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as error:  # noqa: BLE001 - any failure here is a setup problem
        raise ValueError(
            _tfds_error(name, "download and prepare", error, builder.data_dir_root)
        ) from error


def _is_prepared(builder):
    # is_prepared() warns about a missing dataset_info.json; an absent file already says no.
    if not os.path.isfile(os.path.join(os.fspath(builder.data_dir), "dataset_info.json")):
        return False
    return builder.is_prepared()


def _load_npz(path):
    """Reads and checks a users' .npz file; returns (arrays, spec)."""
    arrays, num_classes = npz_files.load_arrays(path)
    scale = 255.0 if arrays["x_train"].dtype == np.uint8 else 1.0
    pixels = arrays["x_train"].reshape(-1, arrays["x_train"].shape[-1]).astype(np.float64) / scale
    std = np.maximum(pixels.std(axis=0), 1e-3)
    spec = DatasetSpec(
        name="npz",
        num_classes=num_classes,
        image_shape=tuple(int(d) for d in arrays["x_train"].shape[1:]),
        mean=tuple(float(v) for v in pixels.mean(axis=0)),
        std=tuple(float(v) for v in std),
        train_examples=int(arrays["x_train"].shape[0]),
        test_examples=int(arrays["x_test"].shape[0]),
    )
    return arrays, spec


def _mnist_sample_arrays(path=MNIST_SAMPLE_PATH):
    with np.load(path) as stored:
        return {
            "x_train": stored["x_train"][..., None],
            "y_train": stored["y_train"].astype(np.int64),
            "x_test": stored["x_test"][..., None],
            "y_test": stored["y_test"].astype(np.int64),
        }


def _source(name, split, data_dir=None, deterministic=True, seed=0):
    """One split of a dataset as unbatched (image, label) pairs, not yet preprocessed.

    Args:
        name: A dataset name.
        split: "train[:N]"-style TFDS slicing of "train", or "test" (the
            dataset's evaluation split): "train", "train[:-N]", "train[-N:]",
            "train[:N]" or "test".
        data_dir: TFDS data directory.
        deterministic: Keep the element order of TFDS reads fixed.
        seed: File-shuffling seed of the TFDS training read.

    Returns:
        (dataset, number of examples or None when TFDS does not know it).
    """
    kind, path = parse_name(name)
    if kind != "tfds":
        arrays = _mnist_sample_arrays() if kind == "mnist_sample" else _load_npz(path)[0]
        part = "test" if split == "test" else "train"
        images, labels = arrays[f"x_{part}"], arrays[f"y_{part}"]
        selected = slice(None) if split in ("train", "test") else _slice(split)
        images, labels = images[selected], labels[selected]
        return tf.data.Dataset.from_tensor_slices((images, labels)), int(images.shape[0])
    import tensorflow_datasets as tfds

    spec = DATASETS[name]
    builder = tfds_builder(name, data_dir)
    tfds_split = spec.test_split if split == "test" else split
    # ImageNet stays encoded so that the random crop decodes only the window it keeps.
    decoders = {"image": tfds.decode.SkipDecoding()} if name == "imagenet2012" else None
    dataset = builder.as_dataset(
        split=tfds_split,
        shuffle_files=split.startswith("train[:-"),
        decoders=decoders,
        read_config=tfds.ReadConfig(shuffle_seed=seed, options=streams.options(deterministic)),
        as_supervised=True,
    )
    splits = builder.info.splits
    try:
        size = splits[tfds_split].num_examples if splits else None
    except (KeyError, ValueError):
        size = None
    return dataset, size


def _slice(split):
    """The Python slice of "train[:N]", "train[:-N]" or "train[-N:]"."""
    inside = split[split.index("[") + 1 : -1]
    low, high = inside.split(":")
    return slice(int(low) if low else None, int(high) if high else None)


def epoch_steps(spec, validation_size, batch_size, steps_per_epoch=None):
    """Minibatches per epoch, after checking that the validation split leaves a full batch.

    The one place the epoch length is computed: the optimizer's schedule needs
    it before the pipelines exist, and the pipelines cut their epochs by it.

    Args:
        spec: The dataset's `DatasetSpec` (its `train_examples`).
        validation_size: Examples carved for validation, >= 1.
        batch_size: Global batch size.
        steps_per_epoch: A requested epoch length, or None for every full batch
            of the training examples left after carving the validation split.

    Returns:
        The number of minibatches per epoch, >= 1.

    Raises:
        ValueError: Naming validation_size, batch_size or steps_per_epoch.
    """
    check_sizes(spec, validation_size, batch_size)
    if steps_per_epoch is None:
        steps_per_epoch = (spec.train_examples - validation_size) // batch_size
    return checks.check_count(steps_per_epoch, "steps_per_epoch", 1)


def check_sizes(spec, validation_size, batch_size):
    """Checks that carving the validation split leaves at least one full batch.

    Args:
        spec: The dataset's `DatasetSpec` (its `train_examples`).
        validation_size: Examples carved for validation, >= 1.
        batch_size: Global batch size.

    Raises:
        ValueError: Naming validation_size or batch_size.
    """
    checks.check_count(validation_size, "validation_size", 1)
    total = spec.train_examples
    if validation_size >= total:
        raise ValueError(
            f"validation_size {validation_size} leaves no training data: {spec.name} has {total} "
            "training examples; pass a smaller validation_size."
        )
    if total - validation_size < batch_size:
        raise ValueError(
            f"batch_size {batch_size} is larger than the {total - validation_size} training "
            f"examples left after carving {validation_size} for validation; pass a smaller "
            "batch_size."
        )


def resolve_augmentation(spec, augmentation="auto", image_size=None):
    """Resolves "auto" and the crop size of a dataset's augmentation.

    Args:
        spec: The dataset's `DatasetSpec`.
        augmentation: One of `AUGMENTATIONS`.
        image_size: Crop size for variable-size images (ImageNet, default 224).

    Returns:
        (augmentation, image size or None, the spec with the image shape the
        model receives).

    Raises:
        ValueError: For an unknown augmentation or a missing crop size.
    """
    checks.check_choice(augmentation, AUGMENTATIONS, "augmentation")
    if augmentation == "auto":
        augmentation = spec.augmentation
    image_size = image_size or spec.image_size
    if augmentation == "random_resized_crop_flip":
        if not image_size:
            raise ValueError("augmentation random_resized_crop_flip needs image_size (e.g. 224).")
        checks.check_count(image_size, "image_size", 32)
        spec = dataclasses.replace(
            spec, image_shape=(image_size, image_size, 3), image_size=image_size
        )
    elif spec.image_shape is None:
        raise ValueError(
            f"{spec.name} has images of varying size; use augmentation random_resized_crop_flip "
            "(or auto) with image_size."
        )
    return augmentation, image_size, spec


def get_pipelines(
    name,
    batch_size,
    validation_size,
    *,
    data_dir=None,
    manual_dir=None,
    download=True,
    image_size=None,
    augmentation="auto",
    shuffle_buffer=10_000,
    evaluation_batch_size=None,
    train_evaluation_examples=0,
    seed=0,
    deterministic=False,
    epochs=None,
    steps_per_epoch=None,
):
    """Builds the training and validation pipelines of a dataset.

    Args:
        name: A dataset name (see the module docstring).
        batch_size: Global batch size of the training pipeline (full batches only).
        validation_size: Examples carved from the end of the training split.
        data_dir: TFDS data directory.
        manual_dir: TFDS manual directory (ImageNet tars).
        download: Whether a missing TFDS dataset may be downloaded.
        image_size: Crop size for variable-size images (ImageNet, default 224).
        augmentation: One of `AUGMENTATIONS`.
        shuffle_buffer: Shuffle buffer of the training pipeline (examples), >= 1.
        evaluation_batch_size: Batch size of validation (default batch_size).
        train_evaluation_examples: Size of the unaugmented training subset
            (0: no such pipeline).
        seed: Seed of shuffling and augmentation.
        deterministic: Keep the element order of parallel maps fixed.
        epochs: Number of epochs of the run. With it, every epoch is shuffled
            and augmented from its own seeds and `Pipelines.training` can start
            at any epoch (resume); without it the stream is endless.
        steps_per_epoch: Batches per epoch (None: the training examples // batch_size).

    Returns:
        A `Pipelines`.

    Raises:
        ValueError: For unusable names, files or sizes.
    """
    checks.check_count(shuffle_buffer, "shuffle_buffer", 1)
    checks.check_count(train_evaluation_examples, "train_evaluation_examples", 0)
    dataset_spec = describe(name)
    augmentation, image_size, spec = resolve_augmentation(dataset_spec, augmentation, image_size)
    steps_per_epoch = epoch_steps(dataset_spec, validation_size, batch_size, steps_per_epoch)
    if parse_name(name)[0] == "tfds":
        _download_and_prepare(name, data_dir, manual_dir, download)
    evaluation_batch_size = evaluation_batch_size or batch_size
    train_preprocess = preprocessing.training_preprocess(augmentation, image_size)
    evaluation_preprocess = preprocessing.evaluation_preprocess(augmentation, image_size)

    def source(split):
        return _source(name, split, data_dir, deterministic, seed)

    train_source, train_examples = source(f"train[:-{validation_size}]")
    validation_source, _ = source(f"train[-{validation_size}:]")
    if epochs is not None:
        checks.check_count(epochs, "epochs", 1)
    # Decoded 28x28 and 32x32 datasets fit in memory; ImageNet streams from disk
    # (10,000 decoded 224x224 validation images alone would take 6 GB).
    cache = name != "imagenet2012"
    if cache and parse_name(name)[0] == "tfds":
        train_source = train_source.cache()
    training = streams.training_stream(
        train_source,
        train_preprocess,
        batch_size,
        shuffle_buffer,
        seed,
        deterministic,
        epochs,
        steps_per_epoch,
    )
    validation = streams.evaluation_batches(
        validation_source, evaluation_preprocess, evaluation_batch_size, cache=cache
    )
    train_evaluation = None
    if train_evaluation_examples:
        subset, _ = source(f"train[:{train_evaluation_examples}]")
        train_evaluation = streams.evaluation_batches(
            subset, evaluation_preprocess, evaluation_batch_size, cache=cache
        )
    return Pipelines(
        train=training(0),
        validation=validation,
        train_evaluation=train_evaluation,
        spec=spec,
        steps_per_epoch=steps_per_epoch,
        train_examples=train_examples,
        validation_examples=validation_size,
        training=training,
    )


def evaluation_split(
    name, n_examples=None, *, data_dir=None, manual_dir=None, download=True, image_size=None
):
    """The test split of a dataset as unbatched examples, for robust evaluation.

    TFDS "test" ("validation" for ImageNet, resized to image_size * 256/224 and
    centre-cropped to image_size), the sample's 2,000 test digits, or an npz
    file's x_test / y_test (the only keys needed here).

    Args:
        name: A dataset name (see `parse_name`).
        n_examples: Keep the first n examples (None: all).
        data_dir: TFDS data directory.
        manual_dir: TFDS manual directory (ImageNet tars).
        download: Whether a missing TFDS dataset may be downloaded.
        image_size: Crop size for variable-size images (ImageNet, default 224).

    Returns:
        (dataset of (float32 image in [0, 1], int64 label) in a fixed order,
        number of examples or None when TFDS does not know it, number of classes).

    Raises:
        ValueError: For unusable names or files.
    """
    if n_examples is not None:
        checks.check_count(n_examples, "n_examples", 1)
    kind, path = parse_name(name)
    if kind == "npz":
        arrays = npz_files.read_arrays(path, ("x_test", "y_test"))
        images, labels = checks.check_image_arrays(
            arrays["x_test"], arrays["y_test"], f"npz file {path}", array_names=("x_test", "y_test")
        )
        source = tf.data.Dataset.from_tensor_slices((images, labels))
        size, num_classes = images.shape[0], int(labels.max()) + 1
        augmentation, crop = "none", None
    else:
        spec = prepare(name, data_dir=data_dir, manual_dir=manual_dir, download=download)
        augmentation, crop, num_classes = (
            spec.augmentation,
            image_size or spec.image_size,
            spec.num_classes,
        )
        source, size = _source(name, "test", data_dir)
    if n_examples is not None:
        source = source.take(n_examples)
        size = n_examples if size is None else min(size, n_examples)
    preprocess = preprocessing.evaluation_preprocess(augmentation, crop)
    dataset = source.map(
        lambda image, label: (preprocess(image), tf.cast(label, tf.int64)),
        num_parallel_calls=streams.AUTOTUNE,
        deterministic=True,
    )
    return dataset, size, num_classes
