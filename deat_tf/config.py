"""Training configuration: one dataclass, recipe files and command-line overrides.

A recipe is a Python file in `configs/` with a `get_config()` that returns a
`TrainConfig`; its docstring says what it reproduces. Variants load their base
recipe and change a few fields:

    from deat_tf import config

    def get_config():
        return config.replace(config.load_sibling(__file__, "cifar10_deat"), method="pgd")

`bin/train` defines one flag per field (generated from the dataclass), so
every field can be overridden: `--epochs=3 --method=pgd --epsilon=8/255
--lr_boundaries=10,17 --step_size=none`. Numbers accept fractions (8/255),
optional fields accept "none", tuples are comma-separated and booleans are
`--jit_compile` / `--nojit_compile`.
"""

import dataclasses
import fractions
import importlib.util
import json
import os
import typing


class ConfigError(ValueError):
    """The configuration or the command line is unusable; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (README.md lists the recipes).

    Data:
        dataset: mnist, mnist_sample, cifar10, cifar100, imagenet2012 or npz:PATH.
        data_dir: TFDS data directory (None: ~/tensorflow_datasets).
        manual_dir: Folder holding the ILSVRC2012 tars (None: DATA_DIR/downloads/manual).
        download: Whether TFDS may download and prepare a missing dataset.
        validation_size: Examples carved from the end of the training split for
            checkpoint selection (never the test split).
        image_size: Crop size for ImageNet (None: 224).
        augmentation: auto, none, crop_flip or random_resized_crop_flip.
        shuffle_buffer: Shuffle buffer of the training pipeline, in examples.
        deterministic: Keep the input pipeline's element order fixed.

    Model:
        model: mnist_cnn, preact_resnet18, wide_resnet34_10 or resnet50.
        model_width: Width override for small test models (None: the paper's).

    Adversarial training (see deat_tf.AdversarialModel):
        method: deat, free, pgd, trades, mart, fgsm_rs or none.
        epsilon: L-infinity radius in [0, 1].
        step_size: Attack step alpha (None: the method's default).
        attack_steps: Initial r (deat, free) or K (pgd); None: method default,
            or the scheduler's start (deat 1, pgd 0).
        initialization: uniform, normal, bernoulli or zero (None: the method's
            default, uniform; TRADES starts at 0.001 N(0, 1)).
        beta: Weight of the KL term of trades and mart.
        carry_perturbation: Carry one perturbation across minibatches (FREE, ImageNet).
        step_size_rule: constant or max_epsilon_over_steps.
        scheduler: magnitude (M+), periodic (DEAT-d), accuracy (DEAT-p) or none.
        gamma: M+ threshold factor.
        max_steps: Cap r_max / K_max of the scheduler.
        period: Epochs per increase d of the periodic scheduler.
        accuracy_threshold: Adversarial accuracy p of the accuracy scheduler.

    Optimisation:
        epochs: Number of epochs.
        batch_size: GLOBAL batch size, split evenly over the replicas.
        steps_per_epoch: Minibatches per epoch (None: training examples // batch_size).
        optimizer: sgd or adam.
        learning_rate: Base (or peak, for cyclic) learning rate.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        weight_decay: Coupled (PyTorch-style) L2 coefficient.
        lr_schedule: constant, multistep (boundaries are fractions of all
            minibatches), piecewise (boundaries are epochs) or cyclic (0 -> lr
            -> 0, linear, peak at lr_peak of training).
        lr_boundaries: Boundaries of multistep / piecewise.
        lr_decay: Factor applied at each boundary.
        lr_peak: Fraction of training where the cyclic schedule peaks.

    Evaluation:
        validation_attack_steps: PGD steps on the validation split each epoch
            (0: clean accuracy only, then the best checkpoint is by clean accuracy).
        validation_step_size: That PGD's step (None: 2.5 * epsilon / steps).
        evaluation_batch_size: Batch size of validation and test (None: batch_size).
        test_attack_steps: PGD steps of the final test evaluation.
        test_step_size: That PGD's step (None: 2.5 * epsilon / steps).
        test_examples: Test examples evaluated at the end (None: all; 0: skip).
        train_accuracy_examples: Fixed, unaugmented training examples on which
            the clean training accuracy is measured each epoch (0: skip).

    Runtime:
        strategy: auto (MirroredStrategy if several GPUs), mirrored or one_device.
        jit_compile: XLA-compile the train and test steps (Keras compile(jit_compile=True)).
        seed: Seed of weights, random starts, shuffling and augmentation.
        progress_bar: Show Keras' per-epoch progress bar.
    """

    dataset: str = "mnist_sample"
    data_dir: typing.Optional[str] = None
    manual_dir: typing.Optional[str] = None
    download: bool = True
    validation_size: int = 1000
    image_size: typing.Optional[int] = None
    augmentation: str = "auto"
    shuffle_buffer: int = 10_000
    deterministic: bool = False

    model: str = "mnist_cnn"
    model_width: typing.Optional[int] = None

    method: str = "deat"
    epsilon: float = 0.3
    step_size: typing.Optional[float] = None
    attack_steps: typing.Optional[int] = None
    initialization: typing.Optional[str] = None
    beta: float = 6.0
    carry_perturbation: bool = False
    step_size_rule: str = "constant"
    scheduler: str = "magnitude"
    gamma: float = 1.01
    max_steps: int = 8
    period: int = 3
    accuracy_threshold: float = 0.4

    epochs: int = 10
    batch_size: int = 128
    steps_per_epoch: typing.Optional[int] = None
    optimizer: str = "sgd"
    learning_rate: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    lr_schedule: str = "multistep"
    lr_boundaries: typing.Tuple[float, ...] = (0.5, 0.8)
    lr_decay: float = 0.1
    lr_peak: float = 0.4

    validation_attack_steps: int = 10
    validation_step_size: typing.Optional[float] = None
    evaluation_batch_size: typing.Optional[int] = None
    test_attack_steps: int = 20
    test_step_size: typing.Optional[float] = None
    test_examples: typing.Optional[int] = None
    train_accuracy_examples: int = 1000

    strategy: str = "auto"
    jit_compile: bool = False
    seed: int = 0
    progress_bar: bool = True

    def to_dict(self):
        """The configuration as a JSON-ready dict (tuples become lists)."""
        return {
            field.name: list(value) if isinstance(value, tuple) else value
            for field, value in ((field, getattr(self, field.name)) for field in dataclasses.fields(self))
        }


FIELDS = {field.name: field for field in dataclasses.fields(TrainConfig)}


def replace(config, **changes):
    """Returns a copy of `config` with some fields changed.

    Args:
        config: A `TrainConfig`.
        **changes: Field values, checked against the field types.

    Returns:
        A new `TrainConfig`.

    Raises:
        ConfigError: For an unknown field or a value of the wrong type.
    """
    for name, value in changes.items():
        if name not in FIELDS:
            raise ConfigError(f"unknown config field {name!r}; fields are {', '.join(FIELDS)}.")
        changes[name] = _check_type(name, value)
    return dataclasses.replace(config, **changes)


def _field_kind(name):
    """(base type, optional) of a field."""
    annotation = FIELDS[name].type
    optional = typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation)
    if optional:
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is tuple:
        return tuple, optional
    return annotation, optional


def _check_type(name, value):
    kind, optional = _field_kind(name)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config field {name} cannot be None.")
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config field {name} must be true or false, got {value!r}.")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config field {name} must be an integer, got {value!r}.")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config field {name} must be a number, got {value!r}.")
        return float(value)
    if kind is tuple:
        if not isinstance(value, (tuple, list)) or any(
            isinstance(item, bool) or not isinstance(item, (int, float)) for item in value
        ):
            raise ConfigError(f"config field {name} must be a sequence of numbers, got {value!r}.")
        return tuple(float(item) for item in value)
    if not isinstance(value, str):
        raise ConfigError(f"config field {name} must be a string, got {value!r}.")
    return value


def parse_number(text, name):
    """Parses a number written as 0.03, 3e-2 or 8/255.

    Args:
        text: The text.
        name: The field name for the error message.

    Returns:
        A float.
    """
    try:
        return float(fractions.Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--{name} must be a number (e.g. 0.03 or 8/255), got {text!r}.") from None


def parse_value(name, text):
    """Converts a command-line string to the type of config field `name`.

    Args:
        name: The field name.
        text: The flag's text ("none" clears an optional field).

    Returns:
        The typed value.
    """
    kind, optional = _field_kind(name)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--{name} must be an integer, got {text!r}.") from None
    if kind is float:
        return parse_number(text, name)
    if kind is tuple:
        items = [item for item in text.split(",") if item.strip()]
        return tuple(parse_number(item, name) for item in items)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"--{name} must be true or false, got {text!r}.")
    return text


def load_file(path):
    """Loads a recipe file and returns its `get_config()`.

    Args:
        path: Path of a Python file defining `get_config()` -> `TrainConfig`,
            or the config.json a run wrote (to repeat that run).

    Returns:
        A `TrainConfig`.

    Raises:
        ConfigError: If the file is missing or does not define a valid recipe.
    """
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ConfigError(
            f"config file {path} does not exist; pass --config=configs/NAME.py (e.g. configs/mnist_demo.py)."
        )
    if path.endswith(".json"):
        return _load_json(path)
    module_name = "deat_tf_recipe_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - a broken recipe is a usage error
        raise ConfigError(f"config file {path} failed to load: {type(error).__name__}: {error}") from error
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} must define get_config() returning a deat_tf.config.TrainConfig.")
    result = module.get_config()
    if not isinstance(result, TrainConfig):
        raise ConfigError(f"get_config() in {path} returned {type(result).__name__}, not a TrainConfig.")
    return result


def _load_json(path):
    try:
        with open(path) as stream:
            values = json.load(stream)
    except (OSError, ValueError) as error:
        raise ConfigError(f"config file {path} is not readable JSON ({error}).") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a JSON object of config fields.")
    return replace(TrainConfig(), **values)


def load_sibling(this_file, name):
    """Loads the recipe `name` from the folder of `this_file` (for recipe variants).

    Args:
        this_file: `__file__` of the calling recipe.
        name: Recipe name without .py.

    Returns:
        A `TrainConfig`.
    """
    return load_file(os.path.join(os.path.dirname(os.path.abspath(this_file)), f"{name}.py"))


# ------------------------------------------------------------------- flags


def define_flags(flag_values):
    """Defines --config, --workdir and one override flag per config field.

    Args:
        flag_values: An `absl.flags.FlagValues` (usually `absl.flags.FLAGS`).
    """
    from absl import flags

    flags.DEFINE_string("config", None, "Recipe file, e.g. configs/mnist_demo.py.", flag_values=flag_values)
    flags.DEFINE_string(
        "workdir", None, "Output folder (created; must not hold an earlier run).", flag_values=flag_values
    )
    for name in FIELDS:
        kind, optional = _field_kind(name)
        default = getattr(TrainConfig, name)
        help_text = f"Override {name} (default {default!r}{', none clears it' if optional else ''})."
        if kind is bool:
            flags.DEFINE_boolean(name, None, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, None, help_text, flag_values=flag_values)


def from_flags(flag_values):
    """Builds the config of a run: the recipe file, then each flag that was given.

    Args:
        flag_values: Parsed `FlagValues` on which `define_flags` was called.

    Returns:
        A `TrainConfig`.

    Raises:
        ConfigError: For a missing recipe or a malformed override.
    """
    config = load_file(flag_values.config) if flag_values.config else TrainConfig()
    changes = {}
    for name in FIELDS:
        value = flag_values[name].value
        if value is None:
            continue
        changes[name] = value if isinstance(value, bool) else parse_value(name, value)
    return replace(config, **changes)
