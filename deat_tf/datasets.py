"""Input pipelines: TFDS datasets, the embedded MNIST sample and users' .npz arrays.

Every pipeline yields `(images, labels)` with float32 images in [0, 1] and
int64 labels, so the attack budget epsilon is in pixel units; normalisation
lives inside the networks (`models.Standardize`).

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
minibatches, which the M+ rule assumes when it compares epoch sums.

Augmentations (`augmentation`):

- "none": images as they are (MNIST);
- "crop_flip": zero-pad 4 pixels, random crop back to the original size,
  random horizontal flip (the CIFAR recipes);
- "random_resized_crop_flip": a random crop covering 8%-100% of the area with
  aspect ratio 3/4-4/3, resized to `image_size`, random flip (ImageNet
  training). Evaluation then resizes the shorter side to image_size * 256/224
  and takes the central image_size square ("resize 256, center crop 224").
- "auto": the dataset's recipe default (listed in `DATASETS`).

Random augmentations use stateless ops seeded by (seed, position of the
example in the training stream), so they do not depend on how many threads
run the map; `deterministic=True` also keeps the training element order
fixed. Validation and test pipelines always keep their order.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from deat_tf import models

MNIST_SAMPLE_PATH = os.path.join(os.path.dirname(__file__), "data", "mnist-10k.npz")

AUGMENTATIONS = ("auto", "none", "crop_flip", "random_resized_crop_flip")
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")

# ImageNet evaluation resizes to 256 before a 224 crop; other crop sizes keep the ratio.
_IMAGENET_RESIZE_RATIO = 256 / 224
_CROP_PADDING = 4
_RANDOM_CROP_AREA = (0.08, 1.0)
_RANDOM_CROP_ASPECT = (3 / 4, 4 / 3)
_AUTOTUNE = tf.data.AUTOTUNE


class DatasetError(ValueError):
    """A dataset cannot be used as asked (unknown name, missing files, bad arrays)."""


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
    "mnist": DatasetSpec(
        "mnist", 10, (28, 28, 1), models.MNIST_MEAN, models.MNIST_STD, 60_000, 10_000
    ),
    "mnist_sample": DatasetSpec(
        "mnist_sample", 10, (28, 28, 1), models.MNIST_MEAN, models.MNIST_STD, 8_000, 2_000
    ),
    "cifar10": DatasetSpec(
        "cifar10", 10, (32, 32, 3), models.CIFAR10_MEAN, models.CIFAR10_STD, 50_000, 10_000,
        augmentation="crop_flip",
    ),
    "cifar100": DatasetSpec(
        "cifar100", 100, (32, 32, 3), models.CIFAR100_MEAN, models.CIFAR100_STD, 50_000, 10_000,
        augmentation="crop_flip",
    ),
    "imagenet2012": DatasetSpec(
        "imagenet2012", 1000, None, models.IMAGENET_MEAN, models.IMAGENET_STD, 1_281_167, 50_000,
        test_split="validation", augmentation="random_resized_crop_flip", image_size=224,
    ),
}
TFDS_NAMES = ("mnist", "cifar10", "cifar100", "imagenet2012")
DATASET_NAMES = TFDS_NAMES + ("mnist_sample", "npz:PATH")


@dataclasses.dataclass
class Pipelines:
    """The three input pipelines of a run and their sizes.

    Attributes:
        train: Infinite dataset of full global batches, augmented and shuffled.
        validation: Finite dataset of the carved validation split (not augmented).
        test: Finite dataset of the test split (capped at `test_examples`), or None.
        train_evaluation: Finite dataset of the first training examples without
            augmentation (for the clean training accuracy), or None.
        spec: The `DatasetSpec`; its image_shape is the shape the model receives.
        steps_per_epoch: Full batches per epoch over the carved training split,
            or None when the split size is unknown (mocked TFDS data).
        train_examples: Training examples after carving, or None when unknown.
        validation_examples: Examples in the validation split.
        test_examples: Examples in the test pipeline (None when unknown).
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    train_evaluation: tf.data.Dataset
    spec: DatasetSpec
    steps_per_epoch: int
    train_examples: int
    validation_examples: int
    test_examples: int


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
        DatasetError: For an unknown name or an empty npz path.
    """
    if isinstance(name, str) and name.startswith("npz:"):
        path = name[len("npz:"):]
        if not path:
            raise DatasetError("dataset npz:PATH needs a file path after 'npz:', e.g. npz:/data/my.npz.")
        return "npz", os.path.expanduser(path)
    if name == "mnist_sample":
        return "mnist_sample", None
    if name in TFDS_NAMES:
        return "tfds", None
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}.")


def check_augmentation(augmentation):
    """Validates an augmentation name (see the module docstring)."""
    if augmentation not in AUGMENTATIONS:
        raise DatasetError(
            f"unknown augmentation {augmentation!r}; choose one of {', '.join(AUGMENTATIONS)}."
        )
    return augmentation


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


def _tfds_builder(name, data_dir):
    import tensorflow_datasets as tfds

    return tfds.builder(name, data_dir=os.path.expanduser(data_dir) if data_dir else None)


def prepare(name, data_dir=None, manual_dir=None, download=True):
    """Checks that a dataset can be read, downloading or preparing it if needed.

    Call this before creating anything on disk for a run: it is where missing
    files and bad arrays are found.

    Args:
        name: A dataset name (see `parse_name`).
        data_dir: TFDS data directory.
        manual_dir: TFDS manual directory (ImageNet tars).
        download: Whether a missing TFDS dataset may be downloaded and prepared.

    Returns:
        The `DatasetSpec`, with mean/std and sizes measured for npz files.

    Raises:
        DatasetError: With a one-line explanation and how to fix it.
    """
    kind, path = parse_name(name)
    if kind == "mnist_sample":
        return DATASETS["mnist_sample"]
    if kind == "npz":
        return _load_npz(path)[1]
    builder = _tfds_builder(name, data_dir)
    if not _is_prepared(builder):
        if name == "imagenet2012":
            folder = imagenet_manual_dir(data_dir, manual_dir)
            missing = [
                file for file in IMAGENET_MANUAL_FILES if not os.path.isfile(os.path.join(folder, file))
            ]
            if missing:
                raise DatasetError(
                    f"imagenet2012 is not prepared in {builder.data_dir_root} and "
                    f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing from "
                    f"{folder}: download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
                    "https://image-net.org/ into that folder (or pass --manual_dir=FOLDER "
                    "holding them); TFDS prepares them on the first run."
                )
        elif not download:
            raise DatasetError(
                f"{name} is not prepared in {builder.data_dir_root}; allow the download "
                "(--download) or pass --data_dir=DIR holding a prepared copy."
            )
        import tensorflow_datasets as tfds

        config = tfds.download.DownloadConfig(
            manual_dir=imagenet_manual_dir(data_dir, manual_dir) if name == "imagenet2012" else None
        )
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as error:  # noqa: BLE001 - any failure here is a setup problem
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DatasetError(
                f"could not download and prepare {name} in {builder.data_dir_root} "
                f"({type(error).__name__}: {first_line}); check network access, or prepare it "
                "on another machine and pass --data_dir=DIR."
            ) from error
    return DATASETS[name]


def _is_prepared(builder):
    # is_prepared() warns about a missing dataset_info.json; an absent file already says no.
    if not os.path.isfile(os.path.join(os.fspath(builder.data_dir), "dataset_info.json")):
        return False
    return builder.is_prepared()


def check_image_arrays(images, labels, name):
    """Checks in-memory images and labels; returns them in the pipelines' types.

    Args:
        images: Array [N, H, W] or [N, H, W, C], uint8 (0-255) or floats in [0, 1].
        labels: Integer array with N labels >= 0.
        name: What the arrays are, for the error messages (e.g. "npz x_test").

    Returns:
        (images [N, H, W, C] as uint8 or float32, labels [N] as int64).

    Raises:
        DatasetError: For shapes, dtypes or ranges that are not images and labels.
    """
    images = np.asarray(images)
    labels = np.asarray(labels).reshape(-1)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DatasetError(f"{name} images must have shape [N, H, W] or [N, H, W, C], got {images.shape}.")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise DatasetError(f"{name} images must be uint8 (0-255) or floats in [0, 1], got {images.dtype}.")
        if images.size and (images.min() < 0.0 or images.max() > 1.0):
            raise DatasetError(
                f"{name} float images must be scaled to [0, 1], got values in "
                f"[{images.min():.4g}, {images.max():.4g}]; store uint8 images or divide by 255."
            )
        images = images.astype(np.float32)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{name} labels must be integer classes, got {labels.dtype}.")
    if labels.shape[0] != images.shape[0]:
        raise DatasetError(f"{name} has {images.shape[0]} images but {labels.shape[0]} labels.")
    if not images.shape[0]:
        raise DatasetError(f"{name} has no examples.")
    if labels.min() < 0:
        raise DatasetError(f"{name} labels must be >= 0, got {labels.min()}.")
    return images, labels.astype(np.int64)


def _read_npz(path, keys):
    """Reads `keys` from a .npz file, with one-line errors for missing files and keys."""
    if not os.path.isfile(path):
        raise DatasetError(f"npz file {path} does not exist; pass --dataset=npz:PATH to an existing file.")
    try:
        with np.load(path) as stored:
            missing = [key for key in keys if key not in stored.files]
            if missing:
                raise DatasetError(
                    f"npz file {path} has no {', '.join(missing)}; it needs arrays "
                    f"{', '.join(keys)} (images [N, H, W(, C)], integer labels [N])."
                )
            return {key: stored[key] for key in keys}
    except (OSError, ValueError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"cannot read {path} as a .npz file ({error}).") from error


def _load_npz(path):
    """Reads and checks a users' .npz file; returns (arrays, spec)."""
    arrays = _read_npz(path, ARRAY_KEYS)
    for part in ("train", "test"):
        arrays[f"x_{part}"], arrays[f"y_{part}"] = check_image_arrays(
            arrays[f"x_{part}"], arrays[f"y_{part}"], f"npz x_{part}/y_{part}"
        )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DatasetError(
            f"npz x_train and x_test images differ in shape: {arrays['x_train'].shape[1:]} vs "
            f"{arrays['x_test'].shape[1:]}."
        )
    scale = 255.0 if arrays["x_train"].dtype == np.uint8 else 1.0
    pixels = arrays["x_train"].reshape(-1, arrays["x_train"].shape[-1]).astype(np.float64) / scale
    std = np.maximum(pixels.std(axis=0), 1e-3)
    spec = DatasetSpec(
        name="npz",
        num_classes=int(max(arrays["y_train"].max(), arrays["y_test"].max(initial=0))) + 1,
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


# --------------------------------------------------------------- preprocessing


def _to_unit_float(image):
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def _crop_flip(image, seed):
    """CIFAR augmentation: zero-pad 4, random crop to the original size, random flip."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[_CROP_PADDING, _CROP_PADDING], [_CROP_PADDING, _CROP_PADDING], [0, 0]])
    crop_seed, flip_seed = _split_seed(seed)
    cropped = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)


def _split_seed(seed):
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    return seeds[0], seeds[1]


def _sample_crop_window(image_shape, seed):
    """A random crop box (offset_y, offset_x, height, width) of 8%-100% area, aspect 3/4-4/3."""
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=whole_image,
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=_RANDOM_CROP_ASPECT,
        area_range=_RANDOM_CROP_AREA,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def _random_resized_crop_flip(image, seed, image_size):
    """ImageNet training augmentation on an encoded JPEG or a decoded image."""
    crop_seed, flip_seed = _split_seed(seed)
    if image.dtype == tf.string:
        window = _sample_crop_window(tf.image.extract_jpeg_shape(image), crop_seed)
        image = tf.image.decode_and_crop_jpeg(image, window, channels=3)
    else:
        window = _sample_crop_window(tf.shape(image), crop_seed)
        image = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], -1])
    image = tf.image.resize(_to_unit_float(image), [image_size, image_size], antialias=True)
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return tf.clip_by_value(image, 0.0, 1.0)


def _resize_center_crop(image, image_size):
    """ImageNet evaluation: shorter side to image_size * 256/224, central square crop."""
    if image.dtype == tf.string:
        image = tf.io.decode_jpeg(image, channels=3)
    resize = int(round(image_size * _IMAGENET_RESIZE_RATIO))
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(_to_unit_float(image), new_shape, antialias=True)
    offset = (new_shape - image_size) // 2
    image = tf.slice(image, [offset[0], offset[1], 0], [image_size, image_size, -1])
    return tf.clip_by_value(image, 0.0, 1.0)


def _training_preprocess(augmentation, image_size):
    def preprocess(image, seed):
        if augmentation == "crop_flip":
            return _to_unit_float(_crop_flip(image, seed))
        if augmentation == "random_resized_crop_flip":
            return _random_resized_crop_flip(image, seed, image_size)
        return _evaluation_preprocess(augmentation, image_size)(image)

    return preprocess


def _evaluation_preprocess(augmentation, image_size):
    def preprocess(image):
        if augmentation == "random_resized_crop_flip":
            return _resize_center_crop(image, image_size)
        if image.dtype == tf.string:
            image = tf.io.decode_image(image, channels=3, expand_animations=False)
        return _to_unit_float(image)

    return preprocess


# ------------------------------------------------------------------ pipelines


def _options(deterministic):
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    return options


def _training_pipeline(dataset, preprocess, batch_size, shuffle_buffer, seed, deterministic, cache):
    if cache:
        dataset = dataset.cache()
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat()
    # The position in the endless stream seeds each example's augmentation, so
    # the random crops do not depend on thread scheduling.
    dataset = dataset.enumerate()

    def augment(position, example):
        image, label = example
        example_seed = tf.stack([tf.constant(seed, tf.int64), position])
        return preprocess(image, example_seed), label

    dataset = dataset.map(augment, num_parallel_calls=_AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True, num_parallel_calls=_AUTOTUNE)
    return dataset.prefetch(_AUTOTUNE).with_options(_options(deterministic))


def _evaluation_pipeline(dataset, preprocess, batch_size, cache, limit=None):
    """Batches in a fixed order (evaluation order costs nothing and eases comparisons)."""
    if limit is not None:
        dataset = dataset.take(limit)
    dataset = dataset.map(
        lambda image, label: (preprocess(image), label), num_parallel_calls=_AUTOTUNE
    )
    if cache:
        dataset = dataset.cache()
    dataset = dataset.batch(batch_size, num_parallel_calls=_AUTOTUNE)
    return dataset.prefetch(_AUTOTUNE).with_options(_options(True))


def _check_sizes(name, train_examples, validation_size, batch_size):
    if validation_size < 1:
        raise DatasetError(
            f"validation_size must be >= 1 (the validation split picks the best checkpoint), got {validation_size}."
        )
    if train_examples is not None and validation_size >= train_examples:
        raise DatasetError(
            f"validation_size {validation_size} leaves no training data: {name} has {train_examples} "
            "training examples; pass a smaller --validation_size."
        )
    if train_examples is not None and train_examples - validation_size < batch_size:
        raise DatasetError(
            f"batch_size {batch_size} is larger than the {train_examples - validation_size} training "
            f"examples left after carving {validation_size} for validation; pass a smaller --batch_size."
        )


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
    test_examples=None,
    train_evaluation_examples=0,
    seed=0,
    deterministic=False,
):
    """Builds the training, validation and test pipelines of a dataset.

    Args:
        name: A dataset name (see the module docstring).
        batch_size: Global batch size of the training pipeline (full batches only).
        validation_size: Examples carved from the end of the training split.
        data_dir: TFDS data directory.
        manual_dir: TFDS manual directory (ImageNet tars).
        download: Whether a missing TFDS dataset may be downloaded.
        image_size: Crop size for variable-size images (ImageNet, default 224).
        augmentation: One of `AUGMENTATIONS`.
        shuffle_buffer: Shuffle buffer of the training pipeline (examples).
        evaluation_batch_size: Batch size of validation and test (default batch_size).
        test_examples: Cap on the test examples (None: all; 0: no test pipeline).
        train_evaluation_examples: Size of the unaugmented training subset
            (0: no such pipeline).
        seed: Seed of shuffling and augmentation.
        deterministic: Keep the element order of parallel maps fixed.

    Returns:
        A `Pipelines`.

    Raises:
        DatasetError: For unusable names, files or sizes.
    """
    spec = prepare(name, data_dir=data_dir, manual_dir=manual_dir, download=download)
    augmentation = check_augmentation(augmentation)
    if augmentation == "auto":
        augmentation = spec.augmentation
    image_size = image_size or spec.image_size
    if augmentation == "random_resized_crop_flip":
        if not image_size:
            raise DatasetError("augmentation random_resized_crop_flip needs --image_size (e.g. 224).")
        spec = dataclasses.replace(spec, image_shape=(image_size, image_size, 3), image_size=image_size)
    elif spec.image_shape is None:
        raise DatasetError(
            f"{name} has images of varying size; use --augmentation=random_resized_crop_flip "
            "(or auto) with --image_size."
        )
    evaluation_batch_size = evaluation_batch_size or batch_size
    if train_evaluation_examples < 0:
        raise DatasetError(f"train_evaluation_examples must be >= 0, got {train_evaluation_examples}.")
    if shuffle_buffer < 1:
        raise DatasetError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}.")
    train_preprocess = _training_preprocess(augmentation, image_size)
    evaluation_preprocess = _evaluation_preprocess(augmentation, image_size)
    kind, path = parse_name(name)

    if kind in ("npz", "mnist_sample"):
        arrays = _mnist_sample_arrays() if kind == "mnist_sample" else _load_npz(path)[0]
        total = arrays["x_train"].shape[0]
        _check_sizes(name, total, validation_size, batch_size)
        keep = total - validation_size
        train_source = tf.data.Dataset.from_tensor_slices((arrays["x_train"][:keep], arrays["y_train"][:keep]))
        validation_source = tf.data.Dataset.from_tensor_slices(
            (arrays["x_train"][keep:], arrays["y_train"][keep:])
        )
        test_source = tf.data.Dataset.from_tensor_slices((arrays["x_test"], arrays["y_test"]))
        test_total = arrays["x_test"].shape[0]
        train_evaluation_source = train_source
        train_examples, cache = keep, False
    else:
        builder = _tfds_builder(name, data_dir)
        splits = builder.info.splits
        total = splits["train"].num_examples if "train" in splits else None
        test_total = splits[spec.test_split].num_examples if spec.test_split in splits else None
        _check_sizes(name, total, validation_size, batch_size)
        train_examples = None if total is None else total - validation_size
        train_source, validation_source, test_source, train_evaluation_source = _tfds_sources(
            builder, name, spec, validation_size, train_evaluation_examples, seed, deterministic
        )
        # Decoded 28x28 and 32x32 datasets fit in memory; ImageNet streams from disk.
        cache = name != "imagenet2012"

    # Decoded validation images are small except ImageNet's (10,000 x 224 x 224 x 3 floats is 6 GB).
    cache_evaluation = name != "imagenet2012"
    train = _training_pipeline(
        train_source, train_preprocess, batch_size, shuffle_buffer, seed, deterministic, cache
    )
    validation = _evaluation_pipeline(
        validation_source, evaluation_preprocess, evaluation_batch_size, cache=cache_evaluation
    )
    test = None
    if test_examples != 0:
        test = _evaluation_pipeline(
            test_source, evaluation_preprocess, evaluation_batch_size,
            cache=False, limit=test_examples,
        )
        if test_total is not None and test_examples is not None:
            test_total = min(test_total, test_examples)
        elif test_total is None:
            test_total = test_examples
    train_evaluation = None
    if train_evaluation_examples:
        train_evaluation = _evaluation_pipeline(
            train_evaluation_source, evaluation_preprocess, evaluation_batch_size,
            cache=cache_evaluation, limit=train_evaluation_examples,
        )
    return Pipelines(
        train=train,
        validation=validation,
        test=test,
        train_evaluation=train_evaluation,
        spec=spec,
        steps_per_epoch=None if train_examples is None else train_examples // batch_size,
        train_examples=train_examples,
        validation_examples=validation_size,
        test_examples=test_total if test is not None else 0,
    )


def _tfds_sources(builder, name, spec, validation_size, train_evaluation_examples, seed, deterministic):
    """(train, validation, test, train subset) datasets of (image, label) from a TFDS builder."""
    import tensorflow_datasets as tfds

    read_config = tfds.ReadConfig(shuffle_seed=seed, options=_options(deterministic))
    # ImageNet stays encoded so that the random crop decodes only the window it keeps.
    decoders = {"image": tfds.decode.SkipDecoding()} if name == "imagenet2012" else None

    def load(split, shuffle_files):
        return builder.as_dataset(
            split=split, shuffle_files=shuffle_files, decoders=decoders, read_config=read_config,
            as_supervised=True,
        )

    train = load(f"train[:-{validation_size}]", shuffle_files=True)
    validation = load(f"train[-{validation_size}:]", shuffle_files=False)
    test = load(spec.test_split, shuffle_files=False)
    subset = load(f"train[:{max(train_evaluation_examples, 1)}]", shuffle_files=False)
    return train, validation, test, subset


def evaluation_split(name, n_examples=None, *, data_dir=None, manual_dir=None, download=True, image_size=None):
    """The test split of a dataset as unbatched examples, for robust evaluation.

    The split and preprocessing are those of `get_pipelines`' test pipeline:
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
        DatasetError: For unusable names or files.
    """
    kind, path = parse_name(name)
    if kind == "npz":
        arrays = _read_npz(path, ("x_test", "y_test"))
        images, labels = check_image_arrays(arrays["x_test"], arrays["y_test"], "npz x_test/y_test")
        source = tf.data.Dataset.from_tensor_slices((images, labels))
        size, num_classes = images.shape[0], int(labels.max()) + 1
        augmentation, crop = "none", None
    else:
        spec = prepare(name, data_dir=data_dir, manual_dir=manual_dir, download=download)
        augmentation, crop, num_classes = spec.augmentation, image_size or spec.image_size, spec.num_classes
        if kind == "mnist_sample":
            arrays = _mnist_sample_arrays()
            source = tf.data.Dataset.from_tensor_slices((arrays["x_test"], arrays["y_test"]))
            size = arrays["x_test"].shape[0]
        else:
            import tensorflow_datasets as tfds

            builder = _tfds_builder(name, data_dir)
            decoders = {"image": tfds.decode.SkipDecoding()} if name == "imagenet2012" else None
            source = builder.as_dataset(
                split=spec.test_split, shuffle_files=False, decoders=decoders, as_supervised=True
            )
            splits = builder.info.splits
            size = splits[spec.test_split].num_examples if spec.test_split in splits else None
    if n_examples is not None:
        source = source.take(n_examples)
        size = n_examples if size is None else min(size, n_examples)
    preprocess = _evaluation_preprocess(augmentation, crop)
    dataset = source.map(
        lambda image, label: (preprocess(image), tf.cast(label, tf.int64)),
        num_parallel_calls=_AUTOTUNE,
        deterministic=True,
    )
    return dataset, size, num_classes
