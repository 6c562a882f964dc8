"""Training configuration: one dataclass, recipe files and their variants.

A recipe is a Python file in `configs/` with a `get_config()` that returns a
`TrainConfig`; its docstring says what it reproduces. Variants load their base
recipe and change a few fields:

    from deat_tf import config

    def get_config():
        return config.replace(config.load_sibling(__file__, "cifar10_deat"), method="pgd")

A `TrainConfig` checks the type of every field and the rules that tie fields
together (a scheduler needs a method whose count it may change; a carried
perturbation needs a method that replays minibatches), so a bad combination
fails before any data is read. Each value's range is checked by the code that
owns it (`AdversarialModel` for epsilon, `make_optimizer` for the learning
rate, ...), which `train.prepare` builds before anything is downloaded or written.

`bin/train` (`deat_tf.cli`) turns command-line text into field values:
`--epochs=3 --epsilon=8/255 --lr_boundaries=10,17 --step_size=none`.
This is what `ml_collections.config_flags` would give, but its overrides are
spelled `--config.epsilon=...` and it has no fractions or "none"; the flags
`--FIELD=VALUE` are the documented interface, so the dataclass stays.
"""

import dataclasses
import difflib
import importlib.util
import json
import os
import re
import types
import typing

from deat_tf import checks, methods, models


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (recipes: README.md and docs/training.md).

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
        deterministic: Bit-identical reruns and resumes: a fixed input order and
            deterministic TensorFlow kernels (enable_op_determinism; slower).

    Model:
        model: mnist_cnn, preact_resnet18, wide_resnet34_10 or resnet50.
        model_width: Width override for small test models (None: the paper's).
        init: Weight initialization: keras (Keras' initializers) or pytorch
            (those of the PyTorch reference network; deat_tf.models).

    Adversarial training (see deat_tf.AdversarialModel):
        method: deat, free, pgd, trades, mart, fgsm_rs or none.
        epsilon: L-infinity radius in [0, 1].
        step_size: Attack step alpha (None: the method's default).
        attack_steps: Initial r (deat, free) or K (pgd); None: method default,
            or the scheduler's start (deat 1, pgd 0).
        initialization: uniform, normal, bernoulli or zero (None: the method's
            default: uniform; TRADES and MART start at 0.001 N(0, 1)).
        beta: Weight of the KL term of trades and mart.
        carry_perturbation: Carry one perturbation across minibatches (FREE, ImageNet).
        clip_start: Clip the random start into [0, 1] before the first forward;
            false follows the authors' M+DEAT script (AdversarialModel's clip_start).
        step_size_rule: constant or max_epsilon_over_steps.
        scheduler: magnitude (M+), periodic (DEAT-d), accuracy (DEAT-p) or none.
        gamma: M+ threshold factor.
        max_steps: Cap r_max / K_max of the scheduler.
        period: Epochs per increase d of the periodic scheduler.
        accuracy_threshold: Adversarial accuracy p of the accuracy scheduler.
        attack_batch_norm: stateless (attack forwards leave BatchNorm's moving
            statistics alone) or update (they update them, as PyTorch does;
            one device only).
        steps_after_misclassified: pgd, trades, mart: None (every example
            takes all K attack steps) or tau >= 0: an example stops once it has
            been misclassified at more than tau iterates (0: Wong et al.'s MNIST
            PGD training; tau > 0: friendly adversarial training).
        track_magnitude: Compute and log the statistic M (grad_magnitude);
            None: the method's default (yes for deat, free, pgd, trades, mart;
            no for fgsm_rs, where it would cost an input gradient per update,
            and none). The magnitude scheduler needs it.

    Optimisation:
        epochs: Number of epochs.
        batch_size: GLOBAL batch size, split evenly over the replicas.
        steps_per_epoch: Minibatches per epoch (None: training examples // batch_size).
        optimizer: sgd (Keras' momentum rule), sgd_pytorch (PyTorch's: the
            learning rate outside the momentum buffer, so a drop takes effect
            at once; deat_tf.optimizers) or adam.
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
        strategy: auto (MirroredStrategy if several GPUs), mirrored, one_device or
            multi_worker (every machine of a TF_CONFIG or Slurm cluster).
        jit_compile: XLA-compile the train and test steps (Keras compile(jit_compile=True)).
        precision: float32, mixed_float16 (with dynamic loss scaling) or
            mixed_bfloat16: the Keras dtype policy of the network; logits,
            losses, perturbations and the statistic stay float32.
        evaluation_precision: float32 (validation and the final test run a
            mixed-precision network's layers in float32, as the reference
            code evaluates a float32 copy) or network (its own 16 bits).
        seed: Seed of weights, random starts, shuffling and augmentation.
        progress_bar: Show Keras' per-epoch progress bar.
        stop_on_collapse: Stop when training collapses to chance or overfits
            catastrophically (`deat_tf.guards`), keeping the best checkpoint;
            off, the guards only warn.
        checkpoint_every_steps: Also write a checkpoint inside each epoch
            after every this many minibatches (None: not by count).
        checkpoint_every_minutes: ... and/or when this many minutes passed
            since the last checkpoint (None: not by time). A preempted run
            redoes at most this much; the run resumes at that minibatch with
            the same results (`deat_tf.checkpoints`).
    """

    dataset: str = "mnist_sample"
    data_dir: str | None = None
    manual_dir: str | None = None
    download: bool = True
    validation_size: int = 1000
    image_size: int | None = None
    augmentation: str = "auto"
    shuffle_buffer: int = 10_000
    deterministic: bool = False

    model: str = "mnist_cnn"
    model_width: int | None = None
    init: str = "keras"

    method: str = "deat"
    epsilon: float = 0.3
    step_size: float | None = None
    attack_steps: int | None = None
    initialization: str | None = None
    beta: float = 6.0
    carry_perturbation: bool = False
    clip_start: bool = True
    step_size_rule: str = "constant"
    scheduler: str = "magnitude"
    gamma: float = 1.01
    max_steps: int = 8
    period: int = 3
    accuracy_threshold: float = 0.4
    attack_batch_norm: str = "stateless"
    steps_after_misclassified: int | None = None
    track_magnitude: bool | None = None

    epochs: int = 10
    batch_size: int = 128
    steps_per_epoch: int | None = None
    optimizer: str = "sgd"
    learning_rate: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    lr_schedule: str = "multistep"
    lr_boundaries: tuple[float, ...] = (0.5, 0.8)
    lr_decay: float = 0.1
    lr_peak: float = 0.4

    validation_attack_steps: int = 10
    validation_step_size: float | None = None
    evaluation_batch_size: int | None = None
    test_attack_steps: int = 20
    test_step_size: float | None = None
    test_examples: int | None = None
    train_accuracy_examples: int = 1000

    strategy: str = "auto"
    jit_compile: bool = False
    precision: str = "float32"
    evaluation_precision: str = "float32"
    seed: int = 0
    progress_bar: bool = True
    stop_on_collapse: bool = True
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 30.0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _check_type(field.name, getattr(self, field.name)))
        methods.check_scheduler(self.scheduler, self.method)
        methods.check_carry(self.carry_perturbation, self.method)
        methods.check_steps_after_misclassified(self.steps_after_misclassified, self.method)
        methods.check_magnitude_scheduler(self.scheduler, self.track_magnitude, self.method)
        checks.check_choice(
            self.evaluation_precision, models.EVALUATION_PRECISIONS, "evaluation_precision"
        )

    def to_dict(self):
        """The configuration as a JSON-ready dict (tuples become lists)."""
        return {
            field.name: list(value) if isinstance(value, tuple) else value
            for field, value in (
                (field, getattr(self, field.name)) for field in dataclasses.fields(self)
            )
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
        ValueError: For an unknown field, a value of the wrong type, or a
            combination of fields that cannot work together.
    """
    unknown = [name for name in changes if name not in FIELDS]
    if unknown:
        raise ValueError(_unknown_field_message(unknown[0]))
    return dataclasses.replace(config, **changes)


def field_documentation():
    """The documentation of every field, grouped as the `TrainConfig` docstring groups them.

    Returns:
        A list of (group title, [(field name, one-paragraph text)]) in docstring order.
    """
    groups = []
    lines = TrainConfig.__doc__.splitlines()
    for line in lines[1:]:
        stripped = line.strip()
        if not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 4 and stripped.endswith(":"):
            groups.append((stripped[:-1], []))
        elif indent == 8 and groups and ":" in stripped:
            name, text = stripped.split(":", 1)
            groups[-1][1].append((name, text.strip()))
        elif indent > 8 and groups and groups[-1][1]:
            name, text = groups[-1][1][-1]
            groups[-1][1][-1] = (name, f"{text} {stripped}")
    return groups


def _unknown_field_message(name):
    """'unknown config field ...', with the nearest field name when one is close."""
    nearest = difflib.get_close_matches(name, FIELDS, n=1)
    hint = f" (did you mean {nearest[0]!r}?)" if nearest else ""
    return f"unknown config field {name!r}{hint}; fields are {', '.join(FIELDS)}."


def field_kind(name):
    """(base type, optional) of a config field: int, float, bool, str or tuple."""
    annotation = typing.get_type_hints(TrainConfig)[name]
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    optional = union and type(None) in typing.get_args(annotation)
    if optional:
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is tuple:
        return tuple, optional
    return annotation, optional


def _check_type(name, value):
    kind, optional = field_kind(name)
    if value is None:
        if optional:
            return None
        raise ValueError(f"config field {name} cannot be None.")
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config field {name} must be true or false, got {value!r}.")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config field {name} must be an integer, got {value!r}.")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config field {name} must be a number, got {value!r}.")
        return float(value)
    if kind is tuple:
        if not isinstance(value, (tuple, list)) or any(
            isinstance(item, bool) or not isinstance(item, (int, float)) for item in value
        ):
            raise ValueError(f"config field {name} must be a sequence of numbers, got {value!r}.")
        return tuple(float(item) for item in value)
    if not isinstance(value, str):
        raise ValueError(f"config field {name} must be a string, got {value!r}.")
    return value


def load_file(path):
    """Loads a recipe file and returns its `get_config()`.

    Args:
        path: Path of a Python file defining `get_config()` -> `TrainConfig`,
            or the config.json a run wrote (to repeat that run).

    Returns:
        A `TrainConfig`.

    Raises:
        ValueError: If the file is missing or does not define a valid recipe.
    """
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"config file {path} does not exist; pass a recipe such as configs/mnist_demo.py."
        )
    if path.endswith(".json"):
        return _load_json(path)
    module_name = "deat_tf_recipe_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - a broken recipe is a usage error
        raise ValueError(
            f"config file {path} failed to load: {type(error).__name__}: {error}"
        ) from error
    if not hasattr(module, "get_config"):
        raise ValueError(
            f"config file {path} must define get_config() returning a deat_tf.config.TrainConfig."
        )
    try:
        result = module.get_config()
    except Exception as error:  # noqa: BLE001 - a broken recipe is a usage error
        raise ValueError(f"config file {path}: {_recipe_error(error)}") from error
    if not isinstance(result, TrainConfig):
        raise ValueError(
            f"get_config() in {path} returned {type(result).__name__}, not a TrainConfig."
        )
    return result


def _recipe_error(error):
    """One line for an exception raised by a recipe's get_config()."""
    if isinstance(error, ValueError):
        return str(error)  # the config's own checks: already one line naming the field
    unknown = re.search(r"TrainConfig.*unexpected keyword argument '(\w+)'", str(error))
    if isinstance(error, TypeError) and unknown:
        return _unknown_field_message(unknown.group(1))
    text = str(error).strip().splitlines()
    return f"get_config() failed: {type(error).__name__}" + (f": {text[0]}" if text else "")


def _load_json(path):
    try:
        with open(path) as stream:
            values = json.load(stream)
    except (OSError, ValueError) as error:
        raise ValueError(f"config file {path} is not readable JSON ({error}).") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a JSON object of config fields.")
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
