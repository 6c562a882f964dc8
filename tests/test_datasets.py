"""Input pipelines: carving, ranges, augmentations, determinism, npz files, ImageNet checks."""

import socket
import subprocess
import sys

import numpy as np
import pytest
import requests
import tensorflow as tf
import tensorflow_datasets as tfds

from deat_tf import datasets, preprocessing


def first_batch(dataset):
    images, labels = next(iter(dataset))
    return images.numpy(), labels.numpy()


def all_examples(dataset):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


def test_mnist_sample_validation_is_the_end_of_the_training_split(mnist_sample):
    pipelines = datasets.get_pipelines("mnist_sample", 100, 1000, train_evaluation_examples=50)
    assert pipelines.steps_per_epoch == 70
    assert (pipelines.train_examples, pipelines.validation_examples) == (7000, 1000)
    validation_images, validation_labels = all_examples(pipelines.validation)
    np.testing.assert_allclose(validation_images, mnist_sample["x_train"][7000:], atol=1e-6)
    np.testing.assert_array_equal(validation_labels, mnist_sample["y_train"][7000:])
    test, size, _ = datasets.evaluation_split("mnist_sample", n_examples=300)
    test_images, _ = all_examples(test.batch(100))
    assert size == 300
    np.testing.assert_allclose(test_images, mnist_sample["x_test"][:300], atol=1e-6)
    subset_images, _ = all_examples(pipelines.train_evaluation)
    np.testing.assert_allclose(subset_images, mnist_sample["x_train"][:50], atol=1e-6)

    images, labels = first_batch(pipelines.train)
    assert images.shape == (100, 28, 28, 1) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and labels.dtype == np.int64
    # No validation digit is ever trained on: compare raw pixels of a few training batches.
    validation_keys = {image.tobytes() for image in validation_images}
    for images, _ in pipelines.train.take(5):
        assert not validation_keys & {image.tobytes() for image in images.numpy()}


def test_training_pipeline_is_reproducible_with_a_seed():
    def batches(seed):
        pipelines = datasets.get_pipelines("mnist_sample", 64, 500, seed=seed, deterministic=True)
        return [labels.numpy() for _, labels in pipelines.train.take(3)]

    first, again, other = batches(1), batches(1), batches(2)
    for left, right in zip(first, again):
        np.testing.assert_array_equal(left, right)
    assert any((left != right).any() for left, right in zip(first, other))


def test_cifar_crop_flip_changes_training_images_only():
    with tfds.testing.mock_data(num_examples=16):
        pipelines = datasets.get_pipelines(
            "cifar10",
            16,
            4,
            shuffle_buffer=1,
            seed=0,
            train_evaluation_examples=16,
            deterministic=True,
        )
        augmented, _ = first_batch(pipelines.train)
        plain, _ = all_examples(pipelines.train_evaluation)
    assert pipelines.spec.num_classes == 10
    # Mocked TFDS data has no split sizes: the real CIFAR-10 size sets the epoch length.
    assert pipelines.steps_per_epoch == (50_000 - 4) // 16
    assert augmented.shape == (16, 32, 32, 3)
    assert augmented.min() >= 0.0 and augmented.max() <= 1.0
    # Mock examples are random pixels: a shifted or flipped crop differs from the original.
    assert not np.allclose(augmented, plain[: len(augmented)])
    # Zero padding shows up as black borders in some crops.
    assert (augmented[:, :4] == 0).all(axis=(1, 2, 3)).any() or (augmented[:, :, :4] == 0).all(
        axis=(1, 2, 3)
    ).any()


def test_imagenet_crops_to_the_configured_size(tmp_path):
    for name in datasets.IMAGENET_MANUAL_FILES:
        (tmp_path / name).touch()
    with tfds.testing.mock_data(num_examples=6):
        pipelines = datasets.get_pipelines(
            "imagenet2012", 3, 3, image_size=48, manual_dir=str(tmp_path)
        )
        train_images, _ = first_batch(pipelines.train)
        test, _, _ = datasets.evaluation_split(
            "imagenet2012", 3, manual_dir=str(tmp_path), image_size=48
        )
        test_images, test_labels = all_examples(test.batch(3))
    assert pipelines.spec.image_shape == (48, 48, 3) and pipelines.spec.num_classes == 1000
    assert train_images.shape == (3, 48, 48, 3) and test_images.shape == (3, 48, 48, 3)
    for images in (train_images, test_images):
        assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 1.0
    assert test_labels.max() < 1000


def test_resize_center_crop_keeps_the_middle_of_the_image():
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 140:160] = 255  # a white stripe in the middle
    cropped = preprocessing.resize_center_crop(tf.constant(image), 56).numpy()
    # Shorter side 100 -> 64, width 300 -> 192, then the central 56 x 56.
    assert cropped.shape == (56, 56, 3)
    assert cropped[:, 28].min() > 0.9 and cropped[:, 0].max() < 0.1


@pytest.mark.parametrize("name", datasets.TFDS_NAMES)
def test_every_supported_tfds_builder_can_be_set_up_from_the_install(tmp_path, name):
    # Not mocked: the real builder, and the checksums of its source files that
    # preparing reads first (this fails on an install missing a TFDS dependency).
    # Nothing is downloaded.
    builder = datasets.tfds_builder(name, data_dir=str(tmp_path))
    assert type(builder).url_infos
    spec = datasets.DATASETS[name]
    assert builder.info.features["label"].num_classes == spec.num_classes
    image_shape = builder.info.features["image"].shape
    assert image_shape == (spec.image_shape or (None, None, 3))
    assert not any(tmp_path.rglob("*.gz")) and not any(tmp_path.rglob("*.tar"))


def test_a_missing_tfds_dependency_is_named_and_not_blamed_on_the_network(tmp_path):
    # A fresh interpreter in which importing importlib_resources fails, as on an
    # install without it; the real TFDS code then hits the ImportError.
    script = (
        "import sys; sys.modules['importlib_resources'] = None\n"
        "from deat_tf import datasets\n"
        "try:\n"
        f"    datasets.prepare('mnist', data_dir={str(tmp_path)!r})\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    line = result.stdout.strip()
    assert "the Python package importlib_resources is not installed" in line, result
    assert "network" not in line and "\n" not in line


@pytest.mark.parametrize(
    "error, expected, network",
    [
        (OSError(28, "No space left on device"), "[Errno 28] No space left on device", False),
        (ConnectionError("connection refused"), "the download failed", True),
        (socket.gaierror(-2, "Name or service not known"), "check network access", True),
        # What TFDS raises offline, after its retries (seen on this machine without network).
        (requests.exceptions.ConnectionError("Max retries exceeded"), "the download failed", True),
        (RuntimeError("checksum mismatch"), "(RuntimeError: checksum mismatch).", False),
    ],
)
def test_tfds_failures_name_their_cause(error, expected, network):
    line = datasets._tfds_error("cifar10", "download and prepare", error, "/data")
    assert line.startswith("could not download and prepare cifar10 in /data")
    assert expected in line
    assert ("network" in line) == network


def test_missing_imagenet_tars_raise_with_the_manual_folder(tmp_path):
    with pytest.raises(ValueError) as raised:
        datasets.prepare("imagenet2012", data_dir=str(tmp_path / "tfds"))
    message = str(raised.value)
    assert str(tmp_path / "tfds" / "downloads" / "manual") in message
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert "\n" not in message


def test_npz_arrays_of_uint8_digits(tmp_path, mnist_sample):
    path = tmp_path / "digits.npz"
    x_train = (mnist_sample["x_train"][:300, ..., 0] * 255).round().astype(np.uint8)
    np.savez(
        path,
        x_train=x_train,
        y_train=mnist_sample["y_train"][:300].astype(np.uint8),
        x_test=(mnist_sample["x_test"][:50, ..., 0] * 255).round().astype(np.uint8),
        y_test=mnist_sample["y_test"][:50],
    )
    pipelines = datasets.get_pipelines(f"npz:{path}", 50, 100)
    assert pipelines.spec.image_shape == (28, 28, 1)
    assert pipelines.spec.num_classes == 10
    assert pipelines.spec.mean[0] == pytest.approx(x_train.mean() / 255, rel=1e-4)
    assert (pipelines.train_examples, pipelines.steps_per_epoch) == (200, 4)
    images, _ = first_batch(pipelines.train)
    assert images.shape == (50, 28, 28, 1) and images.max() <= 1.0


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x_train": np.zeros((4, 8, 8))}, "has no y_train, x_test, y_test"),
        (
            {
                "x_train": np.full((4, 8, 8), 2.0),
                "y_train": np.zeros(4, int),
                "x_test": np.zeros((2, 8, 8)),
                "y_test": np.zeros(2, int),
            },
            "x_train must be scaled to [0, 1]",
        ),
        (
            {
                "x_train": np.zeros((4, 8, 8)),
                "y_train": np.zeros(3, int),
                "x_test": np.zeros((2, 8, 8)),
                "y_test": np.zeros(2, int),
            },
            "has 4 x_train but 3 y_train",
        ),
        (
            {
                "x_train": np.zeros((4, 8, 8)),
                "y_train": np.zeros(4),
                "x_test": np.zeros((2, 8, 8)),
                "y_test": np.zeros(2, int),
            },
            "y_train must be integer classes",
        ),
    ],
)
def test_bad_npz_files_are_explained(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=None) as raised:
        datasets.prepare(f"npz:{path}")
    assert message in str(raised.value)


def _digits(train=None, test=None, **overrides):
    """A valid npz content (4 classes, every one trained on), with arrays replaced."""
    arrays = {
        "x_train": np.zeros((8, 6, 6), np.float32),
        "y_train": np.arange(8) % 4,
        "x_test": np.zeros((4, 6, 6), np.float32),
        "y_test": np.arange(4),
    }
    arrays.update(overrides)
    return arrays


def _with_pixel(value, key):
    images = np.zeros((8 if key == "x_train" else 4, 6, 6), np.float32)
    images[3, 2, 1] = value
    return {key: images}


@pytest.mark.parametrize(
    "arrays, message",
    [
        (_digits(**_with_pixel(np.nan, "x_train")), "x_train has 1 non-finite pixels (1 NaN"),
        (_digits(**_with_pixel(np.nan, "x_test")), "x_test has 1 non-finite pixels (1 NaN"),
        (_digits(**_with_pixel(np.inf, "x_test")), "x_test has 1 non-finite pixels (0 NaN, 1 Inf"),
        (_digits(y_train=np.array([0, 1, 2, 3, 0, 1, 2, 1000])), "no example of 996 classes"),
        (_digits(y_train=np.array([0, 1, 2, 3, 0, 1, 2, -1])), "y_train must be classes >= 0"),
        (_digits(y_test=np.array([0, 1, 2, 4])), "y_test has label 4 that y_train never has"),
        (_digits(y_test=np.zeros(3, int)), "has 4 x_test but 3 y_test"),
    ],
)
def test_bad_npz_arrays_get_one_line_naming_the_file_and_the_array(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError) as raised:
        datasets.prepare(f"npz:{path}")
    text = str(raised.value)
    assert message in text and str(path) in text and "\n" not in text


def test_a_valid_npz_gets_max_label_plus_one_classes(tmp_path):
    # The reference for the bad cases above: the same arrays unchanged are accepted.
    path = tmp_path / "good.npz"
    np.savez(path, **_digits())
    assert datasets.prepare(f"npz:{path}").num_classes == 4


def _truncated(path):
    np.savez(path, **_digits())
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _npy_named_npz(path):
    with open(path, "wb") as stream:
        np.save(stream, np.zeros((4, 6, 6)))


def _text(path):
    path.write_text("x_train,y_train\n0,1\n")


def _object_member(path):
    np.savez(path, **_digits(y_test=np.array([{"label": 1}] * 4, dtype=object)))


@pytest.mark.parametrize(
    "write, message",
    [
        (_truncated, "is damaged or truncated"),
        (_npy_named_npz, "is a single .npy array, not a .npz archive"),
        (_text, "is not a .npz archive"),
        (_object_member, "array y_test holds Python objects"),
    ],
)
def test_files_that_are_not_npz_archives_get_one_line_and_no_unpickling_hint(
    tmp_path, write, message
):
    path = tmp_path / "data.npz"
    write(path)
    with pytest.raises(ValueError) as raised:
        datasets.prepare(f"npz:{path}")
    text = str(raised.value)
    assert message in text and str(path) in text and "\n" not in text
    assert "allow_pickle" not in text and "unsafe" not in text
    # The evaluation reader goes through the same checks.
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        datasets.evaluation_split(f"npz:{path}")


def test_a_folder_given_as_npz_file_is_called_a_folder(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        datasets.prepare(f"npz:{tmp_path}")


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "svhn",
            "dataset must be one of mnist, cifar10, cifar100, imagenet2012, mnist_sample, "
            "npz:PATH; got 'svhn'",
        ),
        ("npz:", "needs a file path"),
        ("npz:/no/such.npz", "does not exist"),
    ],
)
def test_unknown_or_missing_datasets_are_explained(name, message):
    with pytest.raises(ValueError) as raised:
        datasets.prepare(name)
    assert message in str(raised.value)


def test_sizes_that_leave_no_training_data_are_rejected():
    with pytest.raises(ValueError, match="leaves no training data"):
        datasets.get_pipelines("mnist_sample", 100, 8000)
    with pytest.raises(ValueError, match="larger than the 50 training examples"):
        datasets.get_pipelines("mnist_sample", 100, 7950)
    with pytest.raises(ValueError, match="augmentation must be one of auto, none, crop_flip"):
        datasets.get_pipelines("mnist_sample", 100, 100, augmentation="mixup")
    with pytest.raises(ValueError, match="shuffle_buffer must be an integer >= 1"):
        datasets.get_pipelines("mnist_sample", 100, 100, shuffle_buffer=0)


def test_evaluation_split_is_the_sample_test_split(mnist_sample):
    dataset, size, classes = datasets.evaluation_split("mnist_sample", n_examples=50)
    images, labels = next(iter(dataset.batch(50)))
    assert (size, classes) == (50, 10)
    np.testing.assert_allclose(images.numpy(), mnist_sample["x_test"][:50], atol=1e-6)
    np.testing.assert_array_equal(labels.numpy(), mnist_sample["y_test"][:50])


def test_evaluation_split_of_an_npz_file_needs_only_the_test_arrays(tmp_path):
    path = tmp_path / "test_only.npz"
    np.savez(path, x_test=np.full((3, 4, 4), 255, np.uint8), y_test=np.array([0, 4, 1]))
    dataset, size, classes = datasets.evaluation_split(f"npz:{path}")
    images, labels = next(iter(dataset.batch(10)))
    assert (size, classes) == (3, 5) and images.shape == (3, 4, 4, 1)
    assert float(tf.reduce_min(images)) == 1.0 and labels.numpy().tolist() == [0, 4, 1]


def test_an_epoch_is_the_same_batches_whenever_the_stream_starts_or_is_read():
    def labels(dataset, count):
        return [batch.numpy() for _, batch in dataset.take(count)]

    pipelines = datasets.get_pipelines(
        "mnist_sample", 100, 500, epochs=4, steps_per_epoch=30, deterministic=True
    )
    # Reading the first batch (as fit's data check does) must not change the order.
    labels(pipelines.train, 1)
    full = labels(pipelines.training(0), 4 * 30)
    assert len(full) == 120
    resumed = labels(pipelines.training(2), 100)
    assert len(resumed) == 60  # the stream ends with the run
    for expected, actual in zip(full[60:], resumed):
        np.testing.assert_array_equal(expected, actual)
    # Epochs are shuffled differently, and a pass is one epoch long.
    assert not all((a == b).all() for a, b in zip(full[:30], full[30:60]))
    assert sorted(np.concatenate(full[:30]).tolist()) != sorted(
        np.concatenate(full[30:60]).tolist()
    )
    with pytest.raises(ValueError, match="initial_epoch must be < epochs \\(4\\)"):
        pipelines.training(4)


def test_parts_of_a_batch_are_that_batch_augmented_alike():
    # Workers of a cluster each read their part of every global batch: together
    # the parts must be the batch a single process reads, augmentation included.
    with tfds.testing.mock_data(num_examples=40):
        pipelines = datasets.get_pipelines(
            "cifar10", 8, 4, epochs=2, steps_per_epoch=3, seed=5, deterministic=True
        )
        whole = [batch for batch in pipelines.training(1)]
        parts = [
            [batch for batch in pipelines.training(1, (first, size))]
            for first, size in ((0, 3), (3, 5))
        ]
        with pytest.raises(ValueError, match="part \\(6, 3\\) reaches past the batch of 8"):
            pipelines.training(0, (6, 3))
    assert len(whole) == 3 and [len(part) for part in parts] == [3, 3]
    for index, (images, labels) in enumerate(whole):
        np.testing.assert_array_equal(
            images.numpy(), np.concatenate([part[index][0].numpy() for part in parts])
        )
        np.testing.assert_array_equal(
            labels.numpy(), np.concatenate([part[index][1].numpy() for part in parts])
        )
    assert parts[0][0][0].shape == (3, 32, 32, 3)


def test_readme_names_for_the_embedded_digits_work_after_import_deat_tf(mnist_sample):
    import deat_tf

    digits = deat_tf.datasets.load_mnist_sample()
    assert {key: value.shape for key, value in digits.items()} == {
        "x_train": (8000, 28, 28, 1),
        "y_train": (8000,),
        "x_test": (2000, 28, 28, 1),
        "y_test": (2000,),
    }
    np.testing.assert_array_equal(digits["y_test"], mnist_sample["y_test"])
    assert deat_tf.evaluation.AttackSuite and deat_tf.evaluation.evaluate


def test_a_stream_started_inside_an_epoch_is_the_rest_of_that_epoch_augmented_alike():
    # A run resumed from a mid-epoch checkpoint must see exactly the batches,
    # augmentation included, that the uninterrupted run saw from there on.
    with tfds.testing.mock_data(num_examples=40):
        pipelines = datasets.get_pipelines(
            "cifar10", 8, 4, epochs=3, steps_per_epoch=4, seed=5, deterministic=True
        )
        whole = [batch for batch in pipelines.training(1)]
        resumed = [batch for batch in pipelines.training(1, first_minibatch=3)]
        part = [batch for batch in pipelines.training(1, (3, 5), first_minibatch=1)]
        with pytest.raises(ValueError, match="first_minibatch must be < steps_per_epoch \\(4\\)"):
            pipelines.training(1, first_minibatch=4)
    assert len(whole) == 8 and len(resumed) == 5 and len(part) == 7
    for expected, actual in zip(whole[3:], resumed):
        np.testing.assert_array_equal(expected[0].numpy(), actual[0].numpy())
        np.testing.assert_array_equal(expected[1].numpy(), actual[1].numpy())
    for expected, actual in zip(whole[1:], part):
        np.testing.assert_array_equal(expected[0].numpy()[3:], actual[0].numpy())
    # The augmentation is not the identity here, so equal images mean equal seeds.
    assert not np.array_equal(whole[3][0].numpy(), whole[4][0].numpy())
