"""How examples become batches: the resumable training stream and evaluation batches.

`datasets.get_pipelines` builds its pipelines from these two, on whatever
source it reads (TFDS, the embedded sample, .npz arrays).
"""

import functools

import tensorflow as tf

from deat_tf import checks

AUTOTUNE = tf.data.AUTOTUNE


def options(deterministic):
    """tf.data options that keep (or free) the element order of parallel maps."""
    settings = tf.data.Options()
    settings.deterministic = bool(deterministic)
    return settings


def epoch_seed(seed, epoch):
    """The shuffle seed of one epoch: a Python int, as `Dataset.shuffle` needs."""
    return int(seed) * 1_000_003 + int(epoch)


def training_stream(
    source, preprocess, batch_size, shuffle_buffer, seed, deterministic, epochs, steps_per_epoch
):
    """A function (initial epoch, part, first minibatch) -> the batches of epochs [initial, epochs).

    `part` = (first, size) keeps examples [first, first + size) of every batch
    (a worker's share of the global batch), dropped before decoding; None
    keeps whole batches. `first_minibatch` = k starts the initial epoch at its
    minibatch k (counted from 0), as a run resumed from a checkpoint inside
    that epoch needs: the skipped examples are read and shuffled but not
    decoded or augmented, and every later example keeps its position, hence
    its augmentation.

    Every epoch is built on its own, from seeds that depend only on (seed,
    epoch): its shuffle order and each example's augmentation (seeded by its
    position in the epoch). So the batches of epoch e are the same whether the
    run started at epoch 0 or resumed at e, which exact resume needs; and each
    epoch has exactly `steps_per_epoch` full batches, as the M+ rule assumes.
    Without `epochs`, an endless stream reshuffled at every pass (not resumable).
    """

    def augment_epoch(dataset, epoch, part, skipped_batches=0):
        def augment(position, example):
            image, label = example
            # A stateless seed is two int64s: (seed, position in the whole run).
            example_seed = tf.stack([tf.constant(seed, tf.int64), epoch * (1 << 32) + position])
            return preprocess(image, example_seed), label

        dataset = dataset.enumerate()
        if skipped_batches:
            # After enumerate: positions, and so augmentation seeds, stay those of the epoch.
            dataset = dataset.skip(skipped_batches * batch_size)
        size = batch_size
        if part is not None:
            first, size = part
            # Drop the rest of each batch before decoding and augmenting it; the
            # kept examples keep their positions, hence their augmentation.
            dataset = dataset.filter(
                lambda position, _: tf.logical_and(
                    position % batch_size >= first, position % batch_size < first + size
                )
            )
        dataset = dataset.map(augment, num_parallel_calls=AUTOTUNE)
        return dataset.batch(size, drop_remainder=True, num_parallel_calls=AUTOTUNE)

    def finish(dataset):
        return dataset.prefetch(AUTOTUNE).with_options(options(deterministic))

    def stream(initial_epoch=0, part=None, first_minibatch=0):
        if part is not None:
            first, size = part
            checks.check_count(first, "part's first example", 0)
            checks.check_count(size, "part's size", 1)
            if first + size > batch_size:
                raise ValueError(
                    f"part ({first}, {size}) reaches past the batch of {batch_size} examples."
                )
        if epochs is None:
            if initial_epoch or first_minibatch:
                raise ValueError(
                    "initial_epoch and first_minibatch need the number of epochs "
                    "(get_pipelines(epochs=...))."
                )
            endless = source.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
            return finish(augment_epoch(endless.repeat(), 0, part))
        checks.check_count(initial_epoch, "initial_epoch", 0)
        if initial_epoch >= epochs:
            raise ValueError(f"initial_epoch must be < epochs ({epochs}), got {initial_epoch}.")
        checks.check_count(first_minibatch, "first_minibatch", 0)
        if first_minibatch >= steps_per_epoch:
            raise ValueError(
                f"first_minibatch must be < steps_per_epoch ({steps_per_epoch}), "
                f"got {first_minibatch}."
            )
        epoch_datasets = []
        for epoch in range(initial_epoch, epochs):
            # Not reshuffled per iteration: the order must not depend on how
            # often the dataset was iterated before (fit peeks at a batch first).
            shuffled = source.shuffle(
                shuffle_buffer, seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False
            )
            one_epoch = shuffled.repeat().take(steps_per_epoch * batch_size)
            skipped = first_minibatch if epoch == initial_epoch else 0
            epoch_datasets.append(augment_epoch(one_epoch, epoch, part, skipped))
        return finish(
            functools.reduce(lambda earlier, later: earlier.concatenate(later), epoch_datasets)
        )

    return stream


def evaluation_batches(dataset, preprocess, batch_size, cache, limit=None):
    """Batches in a fixed order (evaluation order costs nothing and eases comparisons)."""
    if limit is not None:
        dataset = dataset.take(limit)
    dataset = dataset.map(
        lambda image, label: (preprocess(image), label), num_parallel_calls=AUTOTUNE
    )
    if cache:
        dataset = dataset.cache()
    dataset = dataset.batch(batch_size, num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE).with_options(options(True))
