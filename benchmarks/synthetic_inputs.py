"""Synthetic training inputs for the pipeline benchmarks: generated JPEGs, CIFAR-shaped arrays.

`benchmarks/input_pipeline.py` and `benchmarks/gpu.py` time deat_tf's own
training stream (`streams.training_stream` with `preprocessing`'s
augmentations, as `datasets.get_pipelines` builds it) on these sources, so that
no dataset has to be downloaded:

- ImageNet-sized JPEGs (`write_jpeg_records`): images of the common ImageNet
  sizes with smooth structure, texture and noise, encoded at quality 90 to
  about ImageNet's mean file size (about 110 KB), in TFRecord files of
  `tf.train.Example`s as TFDS writes them;
- CIFAR-shaped uint8 arrays in memory (`cifar_source`), as TFDS CIFAR is
  after its `cache()`.
"""

import os
import resource
import time

IMAGE_SIZE = 224
# (height, width) of the generated JPEGs: the most common ImageNet training sizes.
JPEG_SHAPES = ((375, 500), (500, 375), (333, 500), (400, 500))
# Amplitudes (0-255 scale) of the generated images' components: a smooth field
# over a few cells, texture at two scales and pixel noise. Tuned so that quality
# 90 gives about ImageNet's mean file size (about 110 KB for about 500x375):
# flat images decode faster and pure noise slower than photographs.
JPEG_COMPONENTS = ((4, 90.0), (16, 40.0), (64, 25.0), (None, 26.0))


def natural_image(generator, height, width):
    """A uint8 image with smooth structure, texture and noise (see JPEG_COMPONENTS)."""
    import numpy as np
    import tensorflow as tf

    image = np.full((height, width, 3), 120.0, np.float32)
    for cells, amplitude in JPEG_COMPONENTS:
        if cells is None:
            image += amplitude * generator.standard_normal((height, width, 3), np.float32)
            continue
        grid = generator.standard_normal((1, max(2, cells * height // width), cells, 3), np.float32)
        image += amplitude * tf.image.resize(grid, [height, width], method="bicubic")[0].numpy()
    return np.clip(image, 0, 255).astype(np.uint8)


def write_jpeg_records(directory, count, quality, shards):
    """Writes generated JPEGs as TFRecord shards of tf.train.Examples, as TFDS stores them.

    Args:
        directory: Folder of the shards.
        count: Number of JPEGs.
        quality: JPEG quality.
        shards: Number of TFRecord files.

    Returns:
        (list of file paths, statistics of the JPEGs as a dict).
    """
    import numpy as np
    import tensorflow as tf

    generator = np.random.default_rng(0)
    paths = [
        os.path.join(directory, f"train.tfrecord-{shard:05d}-of-{shards:05d}")
        for shard in range(shards)
    ]
    writers = [tf.io.TFRecordWriter(path) for path in paths]
    sizes, pixels = [], []
    for index in range(count):
        height, width = JPEG_SHAPES[index % len(JPEG_SHAPES)]
        image = natural_image(generator, height, width)
        encoded = tf.io.encode_jpeg(image, quality=quality).numpy()
        sizes.append(len(encoded))
        pixels.append(height * width)
        example = tf.train.Example(
            features=tf.train.Features(
                feature={
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[index % 1000])),
                }
            )
        )
        writers[index % len(writers)].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    statistics = {
        "files": len(paths),
        "images": count,
        "quality": quality,
        "shapes": [list(shape) for shape in JPEG_SHAPES],
        "mean_bytes": float(np.mean(sizes)),
        "mean_pixels": float(np.mean(pixels)),
        "bits_per_pixel": float(8 * np.sum(sizes) / np.sum(pixels)),
    }
    return paths, statistics


def imagenet_source(paths):
    """(encoded JPEG, label) pairs read from TFRecord files, as TFDS' SkipDecoding yields them."""
    import tensorflow as tf

    features = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        return example["image"], example["label"]

    files = tf.data.Dataset.from_tensor_slices(paths)
    records = files.interleave(
        tf.data.TFRecordDataset, cycle_length=len(paths), num_parallel_calls=tf.data.AUTOTUNE
    )
    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def cifar_source(count):
    """`count` uint8 32x32x3 images and int64 labels from memory, as TFDS CIFAR after `cache()`."""
    import numpy as np
    import tensorflow as tf

    generator = np.random.default_rng(1)
    images = generator.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    labels = generator.integers(0, 10, size=count).astype(np.int64)
    return tf.data.Dataset.from_tensor_slices((images, labels))


def training_pipeline(source, augmentation, batch_size, shuffle_buffer):
    """The endless training stream `datasets.get_pipelines` builds around a source."""
    from deat_tf import preprocessing, streams

    stream = streams.training_stream(
        source,
        preprocessing.training_preprocess(augmentation, IMAGE_SIZE),
        batch_size,
        shuffle_buffer,
        seed=0,
        deterministic=False,
        epochs=None,
        steps_per_epoch=None,
    )
    return stream(0)


def with_threads(dataset, threads):
    """The dataset on a private pool of `threads` threads, no intra-op parallelism (None: defaults).

    The pool runs the parallel map and batch; with intra-op parallelism 1 an
    op inside the map (decode, resize) stays on its calling thread, so the
    pool size is the number of cores the pipeline uses.
    """
    import tensorflow as tf

    if threads is None:
        return dataset
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def cpu_seconds():
    """User + system CPU time of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_batches(iterator, batches, batch_size):
    """Wall and CPU seconds of the next `batches` batches of a started iterator.

    Returns:
        {"images", "wall_seconds", "cpu_seconds"}.
    """
    wall_start, cpu_start = time.perf_counter(), cpu_seconds()
    for _ in range(batches):
        images, _ = next(iterator)
    # The batch arrives as a host tensor; touching it ensures it is complete.
    images.numpy()
    wall, cpu = time.perf_counter() - wall_start, cpu_seconds() - cpu_start
    return {"images": batches * batch_size, "wall_seconds": wall, "cpu_seconds": cpu}
