"""Classifier networks used by the recipes; each takes images in [0, 1] and returns logits.

Normalisation (x - mean) / std lives inside the network, as the first layer
(`Standardize`, with the constants of `deat_tf.datasets`), so that attack
budgets stay in pixel units and `AdversarialModel` can find the per-channel
std it needs for the gradient-magnitude statistic (docs/algorithm.md).

BatchNormalization uses PyTorch's defaults (momentum 0.1 there, 0.9 here;
epsilon 1e-5) because the published recipes were tuned with them.

Every builder takes `init`: "keras" (the default: Keras' initializers, He
normal for the ResNets' convolutions) or "pytorch", the initialization of the
reference network behind the published numbers (docs/algorithm.md section 6):

- mnist_cnn and preact_resnet18: PyTorch's default for Conv2d and Linear,
  weights kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)) and biases
  U(+-1/sqrt(fan_in));
- resnet50 (torchvision) and wide_resnet34_10 (the TRADES WideResNet):
  convolutions kaiming_normal(fan_out, relu) = N(0, 2/fan_out), the dense
  layer's weights PyTorch's default; its bias PyTorch's default for ResNet-50
  and zero for the WideResNet.

BatchNorm starts at scale 1 and offset 0 under both.
"""

import contextlib
import dataclasses
import math

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
    for layer in all_layers(network):
        if isinstance(layer, Standardize):
            return layer.std
    return None


def resolve_input_std(network, input_std="auto"):
    """The per-channel std by which `AdversarialModel` scales the input gradient.

    Args:
        network: The classifier.
        input_std: "auto" (the std of the network's `Standardize` layer, None
            without one), None, a number or a sequence of numbers > 0.

    Returns:
        A tuple of floats, or None.

    Raises:
        ValueError: For another string, an empty sequence or a value <= 0.
    """
    if isinstance(input_std, str):
        if input_std != "auto":
            raise ValueError(
                f"input_std must be 'auto', a number or a sequence, got {input_std!r}."
            )
        found = find_input_std(network)
        return None if found is None else tuple(found)
    if input_std is None:
        return None
    values = (input_std,) if isinstance(input_std, (int, float)) else tuple(input_std)
    if not values:
        raise ValueError("input_std must hold one value per channel, got an empty sequence.")
    return tuple(checks.check_positive(value, "input_std") for value in values)


def all_layers(network):
    """The network's layers, those nested in sub-models included, depth first."""
    for layer in getattr(network, "layers", ()):
        yield layer
        yield from all_layers(layer)


def synchronized_batch_norm_layers(network):
    """Names of the network's BatchNormalization layers with synchronized=True, nested included."""
    return [
        layer.name
        for layer in all_layers(network)
        if isinstance(layer, layers.BatchNormalization) and layer.synchronized
    ]


INITS = ("keras", "pytorch")


def _pytorch_default_kernel():
    """PyTorch's default Conv2d / Linear weight, kaiming_uniform(a=sqrt(5)).

    Its bound, gain * sqrt(3 / fan_in) with gain = sqrt(2 / (1 + a^2)) =
    sqrt(1 / 3), is 1 / sqrt(fan_in): Keras' uniform variance scaling with scale 1/3.
    """
    return keras.initializers.VarianceScaling(1 / 3, mode="fan_in", distribution="uniform")


def _pytorch_default_bias(fan_in):
    """PyTorch's default Conv2d / Linear bias, U(+-1/sqrt(fan_in)) (fan_in of the weight)."""
    bound = 1 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def _kaiming_normal_fan_out():
    """kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out), not truncated."""
    return keras.initializers.VarianceScaling(
        2.0, mode="fan_out", distribution="untruncated_normal"
    )


@dataclasses.dataclass(frozen=True)
class _Initializers:
    """The initializers of one network, under Keras' or the PyTorch reference's scheme.

    Each call returns a new initializer: an unseeded Keras initializer object
    repeats its draw, so layers must not share one.

    Attributes:
        init: "keras" or "pytorch".
        keras_convolution: Keras initializer name of convolution kernels.
        pytorch_convolution: "default" (PyTorch's) or "kaiming_normal_fan_out".
        pytorch_dense_bias: "default" (PyTorch's) or "zeros".
    """

    init: str
    keras_convolution: str = "he_normal"
    pytorch_convolution: str = "default"
    pytorch_dense_bias: str = "default"

    def __post_init__(self):
        checks.check_choice(self.init, INITS, "init")

    def convolution_kernel(self):
        if self.init == "keras":
            return self.keras_convolution
        if self.pytorch_convolution == "kaiming_normal_fan_out":
            return _kaiming_normal_fan_out()
        return _pytorch_default_kernel()

    def convolution_bias(self, fan_in):
        return "zeros" if self.init == "keras" else _pytorch_default_bias(fan_in)

    def dense_kernel(self):
        return "glorot_uniform" if self.init == "keras" else _pytorch_default_kernel()

    def dense_bias(self, fan_in):
        if self.init == "keras" or self.pytorch_dense_bias == "zeros":
            return "zeros"
        return _pytorch_default_bias(fan_in)


def _dense(inputs, units, initializers, name, activation=None, dtype=None):
    return layers.Dense(
        units,
        activation=activation,
        kernel_initializer=initializers.dense_kernel(),
        bias_initializer=initializers.dense_bias(inputs.shape[-1]),
        name=name,
        dtype=dtype,
    )(inputs)


def _logits(inputs, num_classes, initializers):
    # Logits in float32 under a mixed precision policy: the losses and the attack
    # objectives compare them to tenths of a percent, below bfloat16's resolution.
    # Under a float64 policy they stay float64, like every other layer.
    dtype = None if keras.config.dtype_policy().compute_dtype == "float64" else "float32"
    return _dense(inputs, num_classes, initializers, "logits", dtype=dtype)


def mnist_cnn(input_shape=(28, 28, 1), num_classes=10, init="keras", name="mnist_cnn"):
    """The small MNIST network of the fast adversarial training papers.

    conv 16 (4x4, stride 2) - conv 32 (4x4, stride 2) - dense 100 - dense classes,
    ReLU activations, no normalisation.

    Args:
        input_shape: Image shape (height, width, channels).
        num_classes: Number of classes.
        init: "keras" (Glorot uniform weights, zero biases) or "pytorch"
            (PyTorch's default for every weight and bias, as in the reference
            `mnist_net`).
        name: Model name.

    Returns:
        A functional `keras.Model` returning logits.

    Raises:
        ValueError: For an unknown init.
    """
    initializers = _Initializers(init, keras_convolution="glorot_uniform")
    inputs = keras.Input(input_shape)
    hidden = inputs
    for index, filters in enumerate((16, 32)):
        hidden = layers.Conv2D(
            filters,
            4,
            strides=2,
            padding="same",
            activation="relu",
            kernel_initializer=initializers.convolution_kernel(),
            bias_initializer=initializers.convolution_bias(hidden.shape[-1] * 4 * 4),
            name=f"conv{index + 1}",
        )(hidden)
    hidden = layers.Flatten(name="flatten")(hidden)
    hidden = _dense(hidden, 100, initializers, "dense", activation="relu")
    outputs = _logits(hidden, num_classes, initializers)
    return keras.Model(inputs, outputs, name=name)


def _batch_norm(name):
    return layers.BatchNormalization(
        momentum=_BATCH_NORM_MOMENTUM, epsilon=_BATCH_NORM_EPSILON, name=name
    )


def _conv(filters, kernel_size, strides, name, initializers):
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer=initializers.convolution_kernel(),
        name=name,
    )


def _preact_block(inputs, filters, strides, name, initializers, project_activated):
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
        shortcut = _conv(filters, 1, strides, f"{name}_shortcut", initializers)(projected)
    else:
        shortcut = inputs
    hidden = _conv(filters, 3, strides, f"{name}_conv1", initializers)(activated)
    hidden = layers.ReLU(name=f"{name}_relu2")(_batch_norm(f"{name}_bn2")(hidden))
    hidden = _conv(filters, 3, 1, f"{name}_conv2", initializers)(hidden)
    return layers.Add(name=f"{name}_add")([hidden, shortcut])


def preact_resnet18(
    input_shape=(32, 32, 3),
    num_classes=10,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    width=64,
    init="keras",
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
        init: "keras" (He normal convolutions) or "pytorch" (PyTorch's default
            for convolutions and the dense layer, as the reference network).
        name: Model name.

    Returns:
        A functional `keras.Model` returning logits.

    Raises:
        ValueError: For an unknown init.
    """
    stages = [
        (width * multiplier, strides) for multiplier, strides in ((1, 1), (2, 2), (4, 2), (8, 2))
    ]
    return _preact_network(
        input_shape,
        num_classes,
        mean,
        std,
        width,
        stages,
        2,
        name,
        _Initializers(init),
        project_activated=False,
    )


def _preact_network(
    input_shape,
    num_classes,
    mean,
    std,
    stem_filters,
    stages,
    blocks,
    name,
    initializers,
    project_activated,
):
    """Standardize, a 3x3 stem, stages of pre-activation blocks, BN-ReLU, pooling, dense.

    Args:
        stages: (filters, stride of the first block) per stage.
        blocks: Blocks per stage.
        initializers: The network's `_Initializers`.
        project_activated: See `_preact_block`.
    """
    inputs = keras.Input(input_shape)
    hidden = Standardize(mean, std, name="standardize")(inputs)
    hidden = _conv(stem_filters, 3, 1, "stem_conv", initializers)(hidden)
    for stage, (filters, strides) in enumerate(stages):
        for block in range(blocks):
            hidden = _preact_block(
                hidden,
                filters,
                strides if block == 0 else 1,
                f"stage{stage + 1}_block{block + 1}",
                initializers,
                project_activated,
            )
    hidden = layers.ReLU(name="final_relu")(_batch_norm("final_bn")(hidden))
    hidden = layers.GlobalAveragePooling2D(name="pool")(hidden)
    outputs = _logits(hidden, num_classes, initializers)
    return keras.Model(inputs, outputs, name=name)


def wide_resnet34_10(
    input_shape=(32, 32, 3),
    num_classes=10,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    depth=34,
    widen_factor=10,
    init="keras",
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
        init: "keras" (He normal convolutions) or "pytorch" (the reference
            code's: convolutions N(0, 2 / fan_out), dense weights PyTorch's
            default, dense bias zero).
        name: Model name.

    Returns:
        A functional `keras.Model` returning logits.

    Raises:
        ValueError: For an impossible depth or width, or an unknown init.
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth must be 6n + 4 with n >= 1 (e.g. 34), got {depth}.")
    if widen_factor < 1:
        raise ValueError(f"widen_factor must be >= 1, got {widen_factor}.")
    stages = [(filters * widen_factor, strides) for filters, strides in ((16, 1), (32, 2), (64, 2))]
    initializers = _Initializers(
        init, pytorch_convolution="kaiming_normal_fan_out", pytorch_dense_bias="zeros"
    )
    return _preact_network(
        input_shape,
        num_classes,
        mean,
        std,
        16,
        stages,
        (depth - 4) // 6,
        name,
        initializers,
        project_activated=True,
    )


def _padded_conv(inputs, filters, kernel_size, strides, name, initializers):
    """Convolution padded like PyTorch (kernel // 2 on every side), also when strided.

    Keras "same" padding is asymmetric for strided convolutions on even sizes;
    explicit padding keeps the ImageNet network identical to torchvision's.
    """
    if strides == 1:
        return _conv(filters, kernel_size, 1, name, initializers)(inputs)
    padded = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(inputs)
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="valid",
        use_bias=False,
        kernel_initializer=initializers.convolution_kernel(),
        name=name,
    )(padded)


def _bottleneck_block(inputs, filters, strides, name, initializers):
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
            kernel_initializer=initializers.convolution_kernel(),
            name=f"{name}_shortcut_conv",
        )(inputs)
        shortcut = _batch_norm(f"{name}_shortcut_bn")(shortcut)
    else:
        shortcut = inputs
    hidden = _conv(filters, 1, 1, f"{name}_conv1", initializers)(inputs)
    hidden = layers.ReLU(name=f"{name}_relu1")(_batch_norm(f"{name}_bn1")(hidden))
    hidden = _padded_conv(hidden, filters, 3, strides, f"{name}_conv2", initializers)
    hidden = layers.ReLU(name=f"{name}_relu2")(_batch_norm(f"{name}_bn2")(hidden))
    hidden = _conv(expanded, 1, 1, f"{name}_conv3", initializers)(hidden)
    hidden = _batch_norm(f"{name}_bn3")(hidden)
    hidden = layers.Add(name=f"{name}_add")([hidden, shortcut])
    return layers.ReLU(name=f"{name}_out")(hidden)


def resnet50(
    input_shape=(224, 224, 3),
    num_classes=1000,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    width=64,
    init="keras",
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
        init: "keras" (He normal convolutions) or "pytorch" (torchvision's:
            convolutions N(0, 2 / fan_out), the dense layer PyTorch's default).
        name: Model name.

    Returns:
        A functional `keras.Model` returning logits.

    Raises:
        ValueError: For an unknown init.
    """
    initializers = _Initializers(init, pytorch_convolution="kaiming_normal_fan_out")
    inputs = keras.Input(input_shape)
    hidden = Standardize(mean, std, name="standardize")(inputs)
    hidden = _padded_conv(hidden, width, 7, 2, "stem_conv", initializers)
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
                f"stage{stage + 1}_block{block + 1}",
                initializers,
            )
    hidden = layers.GlobalAveragePooling2D(name="pool")(hidden)
    outputs = _logits(hidden, num_classes, initializers)
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


def get_model(name, input_shape, num_classes, mean=(0.0,), std=(1.0,), width=None, init="keras"):
    """Builds a network of the registry by name, normalising with the dataset's statistics.

    Args:
        name: One of `MODELS`: mnist_cnn, preact_resnet18, wide_resnet34_10, resnet50.
        input_shape: Image shape (height, width, channels).
        num_classes: Number of classes.
        mean: Per-channel mean of the training images in [0, 1].
        std: Per-channel std of the training images in [0, 1].
        width: Optional width (preact_resnet18 and resnet50: first-stage filters;
            wide_resnet34_10: widen factor); None keeps the paper's width.
        init: "keras" or "pytorch": Keras' initializers or those of the
            PyTorch reference network (see the module docstring).

    Returns:
        A `keras.Model` mapping images in [0, 1] to logits.

    Raises:
        ValueError: For an unknown name or init, or a width the network does not take.
    """
    checks.check_choice(name, tuple(MODELS), "model")
    arguments = {
        "input_shape": tuple(input_shape),
        "num_classes": int(num_classes),
        "init": checks.check_choice(init, INITS, "init"),
    }
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


EVALUATION_PRECISIONS = ("float32", "network")


def compute_in_float32(network):
    """Makes every mixed-precision layer of the network compute in float32, in place.

    Mixed policies keep the variables in float32, so the layers then compute
    in float32 on the same weights, as a float32 copy of the network would
    (the reference code evaluates `model.float()`): attacks see changes of
    the input below 16-bit resolution and gradients cannot underflow.
    Layers whose variables are themselves 16-bit are left as they are.

    Args:
        network: A Keras model.

    Returns:
        The (layer, previous policy) pairs changed, for `restore_policies`.
    """
    changed = []
    for layer in [network, *all_layers(network)]:
        policy = layer.dtype_policy
        if policy.compute_dtype != "float32" and policy.variable_dtype == "float32":
            changed.append((layer, policy))
            layer.dtype_policy = "float32"
    return changed


def restore_policies(changed):
    """Puts back the policies `compute_in_float32` replaced."""
    for layer, policy in changed:
        layer.dtype_policy = policy


@contextlib.contextmanager
def evaluation_precision(network, precision="float32"):
    """A context in which the network computes in the precision evaluation uses.

    Functions traced inside it (Keras' test function) keep that precision.

    Args:
        network: A Keras model.
        precision: "float32" (mixed-precision layers compute in float32) or
            "network" (its own policy, e.g. bfloat16).

    Yields:
        The network.
    """
    checks.check_choice(precision, EVALUATION_PRECISIONS, "evaluation_precision")
    changed = compute_in_float32(network) if precision == "float32" else []
    try:
        yield network
    finally:
        restore_policies(changed)
