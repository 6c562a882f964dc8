"""Classifier networks used by the recipes; each takes images in [0, 1] and returns logits.

Normalisation (x - mean) / std lives inside the network, as the first layer
(`Standardize`, with the constants of `deat_tf.datasets`), so that attack
budgets stay in pixel units and `AdversarialModel` can find the per-channel
std it needs for the gradient-magnitude statistic (docs/algorithm.md).

BatchNormalization uses PyTorch's defaults (momentum 0.1 there, 0.9 here;
epsilon 1e-5) because the published recipes were tuned with them.
"""

import keras
from keras import layers

from deat_tf import checks
from deat_tf.datasets import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD

_BATCH_NORM_MOMENTUM = 0.9
_BATCH_NORM_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="deat_tf")
class Standardize(layers.Layer):
    """Per-channel (x - mean) / std, with constants saved in the layer config.

    Args:
        mean: Sequence of per-channel means (or one number).
        std: Sequence of per-channel standard deviations (or one number), all > 0.
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(value) for value in _as_sequence(mean))
        self.std = tuple(float(value) for value in _as_sequence(std))
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"mean and std must have the same length, got {len(self.mean)} and {len(self.std)}."
            )
        if any(value <= 0 for value in self.std):
            raise ValueError(f"std must be > 0 for every channel, got {self.std}.")

    def call(self, inputs):
        mean = keras.ops.convert_to_tensor(self.mean, dtype=inputs.dtype)
        std = keras.ops.convert_to_tensor(self.std, dtype=inputs.dtype)
        return (inputs - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mean": list(self.mean), "std": list(self.std)})
        return config


def _as_sequence(value):
    if isinstance(value, (int, float)):
        return (value,)
    return tuple(value)


def find_input_std(network):
    """Returns the per-channel std of the network's `Standardize` layer, or None.

    Args:
        network: A Keras model.

    Returns:
        A tuple of floats, or None when the network has no `Standardize` layer.
    """
    for layer in getattr(network, "layers", ()):
        if isinstance(layer, Standardize):
            return layer.std
        found = find_input_std(layer)
        if found is not None:
            return found
    return None


def mnist_cnn(input_shape=(28, 28, 1), num_classes=10, name="mnist_cnn"):
    """The small MNIST network of the fast adversarial training papers.

    conv 16 (4x4, stride 2) - conv 32 (4x4, stride 2) - dense 100 - dense classes,
    ReLU activations, no normalisation.

    Args:
        input_shape: Image shape (height, width, channels).
        num_classes: Number of classes.
        name: Model name.

    Returns:
        A functional `keras.Model` returning logits.
    """
    inputs = keras.Input(input_shape)
    hidden = layers.Conv2D(16, 4, strides=2, padding="same", activation="relu")(inputs)
    hidden = layers.Conv2D(32, 4, strides=2, padding="same", activation="relu")(hidden)
    hidden = layers.Flatten()(hidden)
    hidden = layers.Dense(100, activation="relu")(hidden)
    outputs = layers.Dense(num_classes, name="logits")(hidden)
    return keras.Model(inputs, outputs, name=name)


def _batch_norm(name):
    return layers.BatchNormalization(
        momentum=_BATCH_NORM_MOMENTUM, epsilon=_BATCH_NORM_EPSILON, name=name
    )


def _conv(filters, kernel_size, strides, name):
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def _preact_block(inputs, filters, strides, name, project_activated):
    """Pre-activation basic block (He et al. 2016): BN-ReLU-conv-BN-ReLU-conv + shortcut.

    Args:
        project_activated: Whether a projection shortcut (1x1 convolution, where
            the shape changes) takes BN-ReLU(inputs), as in the WideResNet, or
            the raw block input, as in the PreAct-ResNet18 of the DEAT and
            fast-AT code.
    """
    activated = layers.ReLU(name=f"{name}_relu1")(_batch_norm(f"{name}_bn1")(inputs))
    if strides != 1 or inputs.shape[-1] != filters:
        projected = activated if project_activated else inputs
        shortcut = _conv(filters, 1, strides, f"{name}_shortcut")(projected)
    else:
        shortcut = inputs
    hidden = _conv(filters, 3, strides, f"{name}_conv1")(activated)
    hidden = layers.ReLU(name=f"{name}_relu2")(_batch_norm(f"{name}_bn2")(hidden))
    hidden = _conv(filters, 3, 1, f"{name}_conv2")(hidden)
    return layers.Add(name=f"{name}_add")([hidden, shortcut])


def preact_resnet18(
    input_shape=(32, 32, 3),
    num_classes=10,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    width=64,
    name="preact_resnet18",
):
    """PreAct-ResNet18 for 32x32 images, the CIFAR network of the DEAT paper.

    The network of the DEAT and fast-AT code (`preact_resnet.py`): its three
    projection shortcuts (first blocks of stages 2-4) apply the 1x1
    convolution to the raw block input, not to BN-ReLU of it.

    Args:
        input_shape: Image shape (height, width, channels).
        num_classes: Number of classes.
        mean: Per-channel mean used by the `Standardize` input layer.
        std: Per-channel std used by the `Standardize` input layer.
        width: Filters of the first stage (64 in the paper); smaller values make
            fast test models with the same structure.
        name: Model name.

    Returns:
        A functional `keras.Model` returning logits.
    """
    stages = [
        (width * multiplier, strides) for multiplier, strides in ((1, 1), (2, 2), (4, 2), (8, 2))
    ]
    return _preact_network(
        input_shape, num_classes, mean, std, width, stages, 2, name, project_activated=False
    )


def _preact_network(
    input_shape, num_classes, mean, std, stem_filters, stages, blocks, name, project_activated
):
    """Standardize, a 3x3 stem, stages of pre-activation blocks, BN-ReLU, pooling, dense.

    Args:
        stages: (filters, stride of the first block) per stage.
        blocks: Blocks per stage.
        project_activated: See `_preact_block`.
    """
    inputs = keras.Input(input_shape)
    hidden = Standardize(mean, std, name="standardize")(inputs)
    hidden = _conv(stem_filters, 3, 1, "stem_conv")(hidden)
    for stage, (filters, strides) in enumerate(stages):
        for block in range(blocks):
            hidden = _preact_block(
                hidden,
                filters,
                strides if block == 0 else 1,
                name=f"stage{stage + 1}_block{block + 1}",
                project_activated=project_activated,
            )
    hidden = layers.ReLU(name="final_relu")(_batch_norm("final_bn")(hidden))
    hidden = layers.GlobalAveragePooling2D(name="pool")(hidden)
    outputs = layers.Dense(num_classes, name="logits")(hidden)
    return keras.Model(inputs, outputs, name=name)


def wide_resnet34_10(
    input_shape=(32, 32, 3),
    num_classes=10,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    depth=34,
    widen_factor=10,
    name="wide_resnet34_10",
):
    """WideResNet-34-10, the larger CIFAR network of the adversarial training literature.

    The variant of Madry et al. and TRADES: a 16-filter stem, three stages of
    (depth - 4) / 6 pre-activation blocks with 16k, 32k and 64k filters
    (k = widen_factor), strides 1, 2, 2, then BN-ReLU, global pooling and a
    dense layer; no dropout. 46.2M parameters at depth 34, k 10. Its projection
    shortcuts take BN-ReLU of the block input, as in the TRADES code.

    Args:
        input_shape: Image shape (height, width, channels).
        num_classes: Number of classes.
        mean: Per-channel mean used by the `Standardize` input layer.
        std: Per-channel std used by the `Standardize` input layer.
        depth: Network depth; (depth - 4) must be divisible by 6.
        widen_factor: Width multiplier k (10 in the recipes; small values make
            fast test models with the same structure).
        name: Model name.

    Returns:
        A functional `keras.Model` returning logits.
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth must be 6n + 4 with n >= 1 (e.g. 34), got {depth}.")
    if widen_factor < 1:
        raise ValueError(f"widen_factor must be >= 1, got {widen_factor}.")
    stages = [(filters * widen_factor, strides) for filters, strides in ((16, 1), (32, 2), (64, 2))]
    return _preact_network(
        input_shape,
        num_classes,
        mean,
        std,
        16,
        stages,
        (depth - 4) // 6,
        name,
        project_activated=True,
    )


def _padded_conv(inputs, filters, kernel_size, strides, name):
    """Convolution padded like PyTorch (kernel // 2 on every side), also when strided.

    Keras "same" padding is asymmetric for strided convolutions on even sizes;
    explicit padding keeps the ImageNet network identical to torchvision's.
    """
    if strides == 1:
        return _conv(filters, kernel_size, 1, name)(inputs)
    padded = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(inputs)
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="valid",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )(padded)


def _bottleneck_block(inputs, filters, strides, name):
    """ResNet v1.5 bottleneck: 1x1, 3x3 (strided), 1x1 x4, each with BN; projection shortcut."""
    expanded = filters * 4
    if strides != 1 or inputs.shape[-1] != expanded:
        # A strided 1x1 convolution needs no padding in either framework.
        shortcut = layers.Conv2D(
            expanded,
            1,
            strides=strides,
            padding="valid",
            use_bias=False,
            kernel_initializer="he_normal",
            name=f"{name}_shortcut_conv",
        )(inputs)
        shortcut = _batch_norm(f"{name}_shortcut_bn")(shortcut)
    else:
        shortcut = inputs
    hidden = _conv(filters, 1, 1, f"{name}_conv1")(inputs)
    hidden = layers.ReLU(name=f"{name}_relu1")(_batch_norm(f"{name}_bn1")(hidden))
    hidden = _padded_conv(hidden, filters, 3, strides, f"{name}_conv2")
    hidden = layers.ReLU(name=f"{name}_relu2")(_batch_norm(f"{name}_bn2")(hidden))
    hidden = _conv(expanded, 1, 1, f"{name}_conv3")(hidden)
    hidden = _batch_norm(f"{name}_bn3")(hidden)
    hidden = layers.Add(name=f"{name}_add")([hidden, shortcut])
    return layers.ReLU(name=f"{name}_out")(hidden)


def resnet50(
    input_shape=(224, 224, 3),
    num_classes=1000,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    width=64,
    name="resnet50",
):
    """ResNet-50 v1.5 (torchvision's layout), the ImageNet network of the DEAT and FREE papers.

    Stem 7x7/2 conv + 3x3/2 max pool, stages of 3, 4, 6, 3 bottleneck blocks
    with the stride on the 3x3 convolution, global pooling, dense layer.
    25,557,032 trainable parameters at width 64 and 1000 classes, as torchvision.

    Args:
        input_shape: Image shape (height, width, channels); any size >= 32.
        num_classes: Number of classes.
        mean: Per-channel mean used by the `Standardize` input layer.
        std: Per-channel std used by the `Standardize` input layer.
        width: Filters of the stem and first stage (64 in the paper); smaller
            values make fast test models with the same structure.
        name: Model name.

    Returns:
        A functional `keras.Model` returning logits.
    """
    inputs = keras.Input(input_shape)
    hidden = Standardize(mean, std, name="standardize")(inputs)
    hidden = _padded_conv(hidden, width, 7, 2, "stem_conv")
    hidden = layers.ReLU(name="stem_relu")(_batch_norm("stem_bn")(hidden))
    # Zero padding equals PyTorch's -inf padding here: the input is after a ReLU.
    hidden = layers.ZeroPadding2D(1, name="stem_pool_pad")(hidden)
    hidden = layers.MaxPooling2D(3, strides=2, name="stem_pool")(hidden)
    for stage, (blocks, strides) in enumerate(((3, 1), (4, 2), (6, 2), (3, 2))):
        for block in range(blocks):
            hidden = _bottleneck_block(
                hidden,
                width * 2**stage,
                strides if block == 0 else 1,
                name=f"stage{stage + 1}_block{block + 1}",
            )
    hidden = layers.GlobalAveragePooling2D(name="pool")(hidden)
    outputs = layers.Dense(num_classes, name="logits")(hidden)
    return keras.Model(inputs, outputs, name=name)


MODELS = {
    "mnist_cnn": mnist_cnn,
    "preact_resnet18": preact_resnet18,
    "wide_resnet34_10": wide_resnet34_10,
    "resnet50": resnet50,
}
_WIDTH_ARGUMENT = {
    "preact_resnet18": "width",
    "wide_resnet34_10": "widen_factor",
    "resnet50": "width",
}


def get_model(name, input_shape, num_classes, mean=(0.0,), std=(1.0,), width=None):
    """Builds a network of the registry by name, normalising with the dataset's statistics.

    Args:
        name: One of `MODELS`: mnist_cnn, preact_resnet18, wide_resnet34_10, resnet50.
        input_shape: Image shape (height, width, channels).
        num_classes: Number of classes.
        mean: Per-channel mean of the training images in [0, 1].
        std: Per-channel std of the training images in [0, 1].
        width: Optional width (preact_resnet18 and resnet50: first-stage filters;
            wide_resnet34_10: widen factor); None keeps the paper's width.

    Returns:
        A `keras.Model` mapping images in [0, 1] to logits.

    Raises:
        ValueError: For an unknown name, or a width the network does not take.
    """
    checks.check_choice(name, tuple(MODELS), "model")
    arguments = {"input_shape": tuple(input_shape), "num_classes": int(num_classes)}
    if name == "mnist_cnn":
        if width is not None:
            raise ValueError("model mnist_cnn has a fixed width; leave model_width unset (none).")
        # The fast-AT MNIST network trains on raw pixels; MNIST's constants are (0, 1).
        return mnist_cnn(**arguments)
    if width is not None:
        checks.check_count(width, "model_width", 1)
        arguments[_WIDTH_ARGUMENT[name]] = width
    channels = input_shape[-1]
    mean, std = tuple(mean), tuple(std)
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    return MODELS[name](mean=mean, std=std, **arguments)
