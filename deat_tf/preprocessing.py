"""Image preprocessing of the input pipelines: scaling, the recipes' augmentations, ImageNet crops.

Every function works on one example (`tf.data` maps them) and returns float32
images in [0, 1]. Random augmentations take a stateless seed (an int tensor of
shape [2]) so that they do not depend on thread scheduling.

- "none": images as they are (MNIST);
- "crop_flip": zero-pad 4 pixels, random crop back to the original size,
  random horizontal flip (the CIFAR recipes);
- "random_resized_crop_flip": a random crop covering 8%-100% of the area with
  aspect ratio 3/4-4/3, resized to `image_size`, random flip (ImageNet
  training). Evaluation then resizes the shorter side to image_size * 256/224
  and takes the central image_size square ("resize 256, center crop 224").
"""

import tensorflow as tf

AUGMENTATIONS = ("none", "crop_flip", "random_resized_crop_flip")

# ImageNet evaluation resizes to 256 before a 224 crop; other crop sizes keep the ratio.
IMAGENET_RESIZE_RATIO = 256 / 224
_CROP_PADDING = 4
_RANDOM_CROP_AREA = (0.08, 1.0)
_RANDOM_CROP_ASPECT = (3 / 4, 4 / 3)


def to_unit_float(image):
    """uint8 0-255 to float32 0-1; floats are cast."""
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def crop_flip(image, seed):
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


def random_resized_crop_flip(image, seed, image_size):
    """ImageNet training augmentation on an encoded JPEG or a decoded image."""
    crop_seed, flip_seed = _split_seed(seed)
    if image.dtype == tf.string:
        window = _sample_crop_window(tf.image.extract_jpeg_shape(image), crop_seed)
        image = tf.image.decode_and_crop_jpeg(image, window, channels=3)
    else:
        window = _sample_crop_window(tf.shape(image), crop_seed)
        image = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], -1])
    image = tf.image.resize(to_unit_float(image), [image_size, image_size], antialias=True)
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return tf.clip_by_value(image, 0.0, 1.0)


def resize_center_crop(image, image_size):
    """ImageNet evaluation: shorter side to image_size * 256/224, central square crop."""
    if image.dtype == tf.string:
        image = tf.io.decode_jpeg(image, channels=3)
    resize = int(round(image_size * IMAGENET_RESIZE_RATIO))
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(to_unit_float(image), new_shape, antialias=True)
    offset = (new_shape - image_size) // 2
    image = tf.slice(image, [offset[0], offset[1], 0], [image_size, image_size, -1])
    return tf.clip_by_value(image, 0.0, 1.0)


def training_preprocess(augmentation, image_size):
    """The training map of an augmentation: (image, seed) -> float image in [0, 1].

    Args:
        augmentation: One of `AUGMENTATIONS`.
        image_size: Output size of "random_resized_crop_flip".

    Returns:
        A function (image, stateless seed) -> image.
    """

    def preprocess(image, seed):
        if augmentation == "crop_flip":
            return to_unit_float(crop_flip(image, seed))
        if augmentation == "random_resized_crop_flip":
            return random_resized_crop_flip(image, seed, image_size)
        return evaluation_preprocess(augmentation, image_size)(image)

    return preprocess


def evaluation_preprocess(augmentation, image_size):
    """The evaluation map of an augmentation: image -> float image in [0, 1], no randomness.

    Args:
        augmentation: One of `AUGMENTATIONS`; "random_resized_crop_flip"
            evaluates with resize and centre crop, the others unchanged.
        image_size: Crop size for "random_resized_crop_flip".

    Returns:
        A function image -> image.
    """

    def preprocess(image):
        if augmentation == "random_resized_crop_flip":
            return resize_center_crop(image, image_size)
        if image.dtype == tf.string:
            image = tf.io.decode_image(image, channels=3, expand_animations=False)
        return to_unit_float(image)

    return preprocess


# ------------------------------------------------------------------ pipelines
