"""The command-line tools: `bin/train` / `deat-train` and `bin/evaluate` / `deat-evaluate`.

This is the only module that knows flags. Every flag sets the library argument
of the same name, so the library's messages (`epsilon must be in [0, 1] ...`)
need only the tool's prefix: each tool catches `ValueError` once, around
everything that runs before the work starts, and prints
`bin/<tool>: error: <message>` with exit status 1. Errors during the work
itself (training, attacks) keep their traceback.

    deat-train --config=configs/mnist_demo.py --workdir=runs/demo --epochs=3
    deat-evaluate --model=runs/demo/best_network.keras --preset=mnist --dataset=mnist_sample

From Python (what the tests do): `cli.run_train(["--config=...", "--workdir=..."])`
and `cli.run_evaluate([...])` parse the arguments into fresh flag values and run.
"""

import fractions
import os
import sys
import textwrap

from absl import app, flags, logging

from deat_tf import checks, distribute, evaluation, guards, preemption
from deat_tf import config as config_lib

TRAIN_PROGRAM = "bin/train"
EVALUATE_PROGRAM = "bin/evaluate"
# Evaluation runs on one machine; a cluster's workers would each attack every example.
EVALUATE_STRATEGIES = ("auto", "mirrored", "one_device")

# Under the cascade each attack runs on the survivors of the ones listed
# before it, so the presets list the larger PGD budget first and FGSM last:
# the smaller budget and FGSM must then fool (almost) none of those survivors,
# which keeps the budget and masking checks meaningful (deat_tf.evaluation.checks).
EVALUATION_PRESETS = {
    "mnist": {
        "dataset": "mnist",
        "epsilon": 0.3,
        "n_examples": 10000,
        "attacks": "clean,pgd50,cw50,apgd-ce,apgd-t,fgsm",
        "restarts": 10,
        "step_size": 0.01,
    },
    "cifar10": {
        "dataset": "cifar10",
        "epsilon": 8 / 255,
        "n_examples": 10000,
        "attacks": "clean,pgd100,pgd20,cw20,apgd-ce,apgd-t,fgsm",
        "restarts": 1,
        "step_size": 2 / 255,
    },
    "imagenet": {
        "dataset": "imagenet2012",
        "epsilon": 4 / 255,
        "n_examples": 5000,
        "attacks": "clean,pgd50,pgd10,apgd-ce,apgd-t,fgsm",
        "restarts": 1,
        "step_size": 1 / 255,
    },
}

# -------------------------------------------------------------------- values


def parse_number(text, name):
    """Parses a number written as 0.03, 3e-2 or 8/255.

    Args:
        text: The flag's text.
        name: The flag name for the error message.

    Returns:
        A float.

    Raises:
        ValueError: If the text is not a number.
    """
    try:
        return float(fractions.Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--{name} must be a number (e.g. 0.03 or 8/255), got {text!r}.") from None


def parse_value(name, text):
    """Converts a flag's text to the type of config field `name`.

    Args:
        name: The field name.
        text: The flag's text ("none" clears an optional field).

    Returns:
        The typed value.

    Raises:
        ValueError: If the text does not parse as the field's type.
    """
    kind, optional = config_lib.field_kind(name)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--{name} must be an integer, got {text!r}.") from None
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
        raise ValueError(f"--{name} must be true or false, got {text!r}.")
    return text


class _NumberParser(flags.ArgumentParser):
    """absl parser for numbers that also accepts fractions such as 8/255."""

    def parse(self, argument):
        if isinstance(argument, (int, float)):
            return float(argument)
        try:
            return float(fractions.Fraction(str(argument).strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"must be a number (e.g. 0.03 or 8/255), got {argument!r}") from None

    def flag_type(self):
        return "number"


# --------------------------------------------------------------------- train


def define_train_flags(flag_values):
    """Defines --config, --workdir and one override flag per `TrainConfig` field.

    Args:
        flag_values: An `absl.flags.FlagValues`.

    Returns:
        `flag_values`.
    """
    flags.DEFINE_string(
        "config",
        None,
        "Recipe file, e.g. configs/mnist_demo.py: Python code defining get_config(), run as "
        "a program (use only recipes you trust), or a run's config.json (data only, to "
        "repeat that run or share its settings safely).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "workdir",
        None,
        "Output folder: new, or holding an unfinished run with the same settings, which is "
        "resumed after its last finished epoch (a finished run is not trained again).",
        flag_values=flag_values,
    )
    flags.DEFINE_boolean(
        "restart",
        False,
        "Start over in a workdir that holds an earlier run: the files the run wrote are "
        "deleted, and a workdir holding anything else is refused.",
        flag_values=flag_values,
    )
    documentation = {
        name: text for _, fields in config_lib.field_documentation() for name, text in fields
    }
    for name in config_lib.FIELDS:
        kind, _ = config_lib.field_kind(name)
        # tests/test_train.py requires every field to be documented; a missing entry
        # still must not break the command.
        meaning = documentation.get(name, f"See deat_tf.config.TrainConfig.{name}.")
        help_text = f"{meaning} {_default_note(name)}"
        if kind is bool:
            flags.DEFINE_boolean(name, None, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, None, help_text, flag_values=flag_values)
    return flag_values


_RUN_FLAGS = ("config", "workdir", "restart")
_HELP_ARGUMENTS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?")
_PLACEHOLDERS = {int: "N", float: "X", str: "TEXT", tuple: "X,Y,..."}


def _default_note(name):
    """'(default: ...)' of a config field, in the flags' own spelling."""
    kind, optional = config_lib.field_kind(name)
    default = getattr(config_lib.TrainConfig, name)
    if default is None:
        text = "none"
    elif kind is bool:
        text = "true" if default else "false"
    elif kind is tuple:
        text = ",".join(f"{value:g}" for value in default)
    elif kind is float:
        text = f"{default:g}"
    else:
        text = str(default)
    return f"Default: {text}{'; none clears it' if optional and default is not None else ''}."


def train_help(program=TRAIN_PROGRAM, width=100):
    """The text of `bin/train --help`: the run flags and every training setting, grouped.

    Each setting's meaning and allowed values come from the `TrainConfig`
    documentation, its default from the dataclass, so the help cannot drift
    from the code.

    Args:
        program: The command's name, for the usage line.
        width: Line width to wrap to.

    Returns:
        The help text (no trailing newline).
    """
    flag_values = define_train_flags(flags.FlagValues())

    def entry(name):
        kind, _ = config_lib.field_kind(name) if name in config_lib.FIELDS else (str, False)
        if name == "restart" or kind is bool:
            heading = f"  --[no]{name}"
        else:
            placeholder = {"config": "FILE", "workdir": "DIR"}.get(name, _PLACEHOLDERS.get(kind))
            heading = f"  --{name}={placeholder}"
        body = _indented(flag_values[name].help, width)
        return f"{heading}\n{body}"

    introduction = textwrap.fill(
        "Adversarial training from a recipe. Every setting below is a field of "
        "deat_tf.config.TrainConfig, and its flag overrides the recipe's value. The defaults "
        "shown are TrainConfig's own; a recipe (configs/*.py) sets its own values first. "
        'Numbers may be written 0.03 or 8/255; "none" clears a setting that may be none; '
        "booleans are --NAME or --noNAME.",
        width,
    )
    parts = [
        f"usage: {program} --config=FILE --workdir=DIR [--SETTING=VALUE ...]",
        introduction,
        "Run:\n" + "\n".join(entry(name) for name in _RUN_FLAGS),
    ]
    for title, fields in config_lib.field_documentation():
        parts.append(f"{title}:\n" + "\n".join(entry(name) for name, _ in fields))
    parts.append(f"{program} --helpfull also lists TensorFlow's and absl's own flags.")
    return "\n\n".join(parts)


def _indented(text, width):
    # Unbroken hyphens keep names such as apgd-ce and random_resized_crop_flip whole.
    return textwrap.fill(
        text, width, initial_indent=" " * 6, subsequent_indent=" " * 6, break_on_hyphens=False
    )


def _wants_help(arguments):
    return any(argument in _HELP_ARGUMENTS for argument in arguments)


def config_from_flags(flag_values):
    """The config of a run: the recipe file, then each flag that was given.

    Args:
        flag_values: Parsed `FlagValues` on which `define_train_flags` was called.

    Returns:
        A `TrainConfig`.

    Raises:
        ValueError: For a missing recipe, a malformed value or a bad combination.
    """
    config = (
        config_lib.load_file(flag_values.config) if flag_values.config else config_lib.TrainConfig()
    )
    changes = {}
    for name in config_lib.FIELDS:
        value = flag_values[name].value
        if value is not None:
            changes[name] = value if isinstance(value, bool) else parse_value(name, value)
    return config_lib.replace(config, **changes)


def train(flag_values, program=TRAIN_PROGRAM):
    """What `bin/train` runs: the config from the flags, checks, then the run.

    Args:
        flag_values: Parsed `FlagValues` (see `define_train_flags`).
        program: Name used in error messages.

    Returns:
        The summary dict.

    Raises:
        SystemExit: With `program: error: message` and status 1 for bad input,
            before any work, and when training stopped on non-finite values or
            an output could not be written; with `program: interrupted at ...`
            and status 128 + the signal's number on SIGTERM or SIGINT, after
            the checkpoint of that position was written.
    """
    from deat_tf import train as train_lib

    try:
        config = config_from_flags(flag_values)
        run = train_lib.prepare(config, flag_values.workdir, restart=flag_values.restart)
    except ValueError as error:
        _exit_with_error(program, error)
    try:
        return run.execute()
    except guards.TrainingStopped as error:
        # A guard stopped training or an output could not be written: the
        # message says where and what was kept; a traceback would add nothing.
        _exit_with_error(program, error)
    except preemption.Interrupted as interruption:
        # SIGTERM or SIGINT: the checkpoint is written; exit as the signal would.
        print(f"{program}: {interruption}", file=sys.stderr, flush=True)
        raise SystemExit(interruption.exit_status) from None


def run_train(arguments, program=TRAIN_PROGRAM):
    """Parses `arguments` (flags, without the program name) into fresh flags and trains.

    Args:
        arguments: E.g. ["--config=configs/mnist_demo.py", "--workdir=runs/demo"].
        program: Name used in error messages.

    Returns:
        The summary dict.
    """
    if _wants_help(arguments):
        print(train_help(program))
        raise SystemExit(0)
    flag_values = _parse(define_train_flags(flags.FlagValues()), arguments, program)
    return train(flag_values, program)


def train_main():
    """Console script `deat-train` (and `bin/train`)."""
    program = _program_name(TRAIN_PROGRAM)
    if _wants_help(sys.argv[1:]):
        # absl's --help shows only flags its main module defines, which here are none.
        print(train_help(program))
        raise SystemExit(0)
    define_train_flags(flags.FLAGS)

    def main(argv):
        _reject_positional(argv, program)
        if not flags.FLAGS["verbosity"].present:
            # TensorFlow's checkpointing logs every save at INFO; --verbosity=0 brings it back.
            logging.set_verbosity(logging.WARNING)
        train(flags.FLAGS, program)

    app.run(main)


# ------------------------------------------------------------------ evaluate


def define_evaluate_flags(flag_values):
    """Defines the flags of `bin/evaluate`.

    Args:
        flag_values: An `absl.flags.FlagValues`.

    Returns:
        `flag_values`.
    """
    presets = ", ".join(EVALUATION_PRESETS)
    flags.DEFINE_string(
        "model",
        None,
        "The .keras classifier: WORKDIR/model.keras or network.keras from "
        "bin/train, or any Keras model on [0, 1] images.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "dataset",
        None,
        "mnist_sample, npz:PATH (keys x_test, y_test), or a TFDS name "
        "(mnist, cifar10, cifar100, imagenet2012). Default: the preset's.",
        flag_values=flag_values,
    )
    flags.DEFINE(
        _NumberParser(),
        "epsilon",
        None,
        "L-infinity radius in [0, 1], e.g. 0.3 or 8/255. Default: the preset's.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "attacks",
        None,
        f"Comma-separated: {evaluation.ATTACK_NAMES_HELP}. "
        f"Default: the preset's, else {evaluation.DEFAULT_ATTACKS}.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "cascade",
        True,
        "Run each attack only on the examples still robust (correct on the clean input and "
        "under every attack before it), as AutoAttack does; an attack's accuracy is then the "
        "robust accuracy after it. --nocascade runs every attack on every example, for "
        "per-attack accuracies.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "n_examples",
        None,
        "Evaluate the first N examples (default: the preset's, else all).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("batch_size", 256, "Global batch size.", flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "Seed of the random starts.", flag_values=flag_values)
    flags.DEFINE_string(
        "preset",
        None,
        f"Standard settings: {presets}. cifar10: eps 8/255, 10k test images; "
        "imagenet: eps 4/255, 5k validation images, resize 256 / crop 224; mnist: eps 0.3, "
        "PGD-50 step 0.01 x 10 restarts. Any preset with --attacks=autoattack runs AutoAttack.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "restarts",
        None,
        "Random restarts of pgdN/cwN (default: the preset's, else 1).",
        flag_values=flag_values,
    )
    flags.DEFINE(
        _NumberParser(),
        "step_size",
        None,
        "Step size of pgdN/cwN (default: the preset's, else 2.5 * epsilon / N).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "output",
        None,
        "Write the report as JSON to this file (atomically).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "outputs",
        "logits",
        "What the model returns: logits, or probabilities (their log is attacked).",
        flag_values=flag_values,
    )
    flags.DEFINE_string("data_dir", None, "TFDS data directory.", flag_values=flag_values)
    flags.DEFINE_string(
        "manual_dir",
        None,
        "TFDS manual directory holding the ILSVRC2012 tars (imagenet2012).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "strategy",
        "auto",
        "auto (MirroredStrategy when several GPUs are visible), mirrored or one_device "
        "(bin/evaluate runs on one machine).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "evaluation_precision",
        "float32",
        "float32: a mixed-precision network's layers compute in float32 on its float32 "
        "weights (as the reference code attacks a float32 copy); network: its saved 16-bit "
        "policy.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "jit_compile",
        False,
        "XLA-compile each replica's attack step, except Square's (faster on GPU; its random "
        "numbers and rounding differ, so results may differ slightly).",
        flag_values=flag_values,
    )
    return flag_values


def evaluate_help(program=EVALUATE_PROGRAM, width=100):
    """The text of `bin/evaluate --help`: every flag with its meaning and default.

    Args:
        program: The command's name, for the usage line.
        width: Line width to wrap to.

    Returns:
        The help text (no trailing newline).
    """
    flag_values = define_evaluate_flags(flags.FlagValues())
    entries = []
    for name, flag in flag_values._flags().items():
        if name != flag.name:
            continue  # a short alias
        if isinstance(flag, flags.BooleanFlag):
            heading = f"  --[no]{name}"
        else:
            heading = f"  --{name}=VALUE"
        if flag.default is None:
            default = ""
        elif isinstance(flag.default, bool):
            default = f" Default: {str(flag.default).lower()}."
        else:
            default = f" Default: {flag.default}."
        body = _indented(flag.help + default, width)
        entries.append(f"{heading}\n{body}")
    return "\n\n".join(
        [
            f"usage: {program} --model=FILE (--preset=NAME | --dataset=NAME --epsilon=X) "
            "[--FLAG=VALUE ...]",
            textwrap.fill(
                "Robust accuracy of a Keras classifier on [0, 1] images under a list of attacks.",
                width,
            ),
            "Flags:\n" + "\n".join(entries),
            f"{program} --helpfull also lists TensorFlow's and absl's own flags.",
        ]
    )


def evaluation_settings(flag_values):
    """The flags with the preset applied: explicit flags win over the preset's values.

    Args:
        flag_values: Parsed `FlagValues` (see `define_evaluate_flags`).

    Returns:
        A dict of the settings.

    Raises:
        ValueError: For an unknown preset or a missing required setting.
    """
    preset = flag_values.preset
    defaults = {}
    if preset is not None:
        defaults = EVALUATION_PRESETS[
            checks.check_choice(preset, tuple(EVALUATION_PRESETS), "preset")
        ]

    def setting(name, fallback=None):
        value = flag_values[name].value
        return value if value is not None else defaults.get(name, fallback)

    settings = {
        "model": flag_values.model,
        "dataset": setting("dataset"),
        "epsilon": setting("epsilon"),
        "attacks": setting("attacks", evaluation.DEFAULT_ATTACKS),
        "n_examples": setting("n_examples"),
        "restarts": setting("restarts", 1),
        "step_size": setting("step_size"),
        "preset": preset,
    }
    if settings["epsilon"] is None:
        raise ValueError(
            "--epsilon is required (a number in [0, 1]) unless --preset sets it "
            f"({', '.join(EVALUATION_PRESETS)})."
        )
    if not settings["dataset"]:
        raise ValueError(
            "--dataset is required: mnist_sample, npz:PATH or a TFDS name (mnist, cifar10, "
            "cifar100, imagenet2012), unless --preset sets it."
        )
    return settings


def evaluate(flag_values, program=EVALUATE_PROGRAM, stdout=None, stderr=None):
    """What `bin/evaluate` runs: check every setting, load, attack, print, write.

    Args:
        flag_values: Parsed `FlagValues` (see `define_evaluate_flags`).
        program: Name used in error messages.
        stdout: Stream for the table (sys.stdout by default).
        stderr: Stream for progress lines (sys.stderr by default).

    Returns:
        The report dict.

    Raises:
        SystemExit: With `program: error: message` for bad input, before any attack.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        settings = evaluation_settings(flag_values)
        suite = evaluation.AttackSuite(
            settings["attacks"],
            settings["epsilon"],
            restarts=settings["restarts"],
            step_size=settings["step_size"],
            seed=flag_values.seed,
            batch_size=flag_values.batch_size,
            outputs=flag_values.outputs,
            jit_compile=flag_values.jit_compile,
            cascade=flag_values.cascade,
        )
        output = _check_output_path(flag_values.output)
        checks.check_choice(flag_values.strategy, EVALUATE_STRATEGIES, "strategy")
        strategy = distribute.make_strategy(flag_values.strategy)
        model = evaluation.load_classifier(
            settings["model"], strategy, precision=flag_values.evaluation_precision
        )
        data = evaluation.load_data(
            settings["dataset"],
            settings["n_examples"],
            flag_values.data_dir,
            flag_values.manual_dir,
        )
        num_classes = evaluation.check_model_outputs(model, data, suite.outputs)
    except ValueError as error:
        _exit_with_error(program, error)

    def progress(line):
        print(line, file=stderr, flush=True)

    report = suite.run(model, data, strategy, progress, num_classes=num_classes)
    report = {
        "model": settings["model"],
        "dataset": settings["dataset"],
        "preset": settings["preset"],
        "n_examples": settings["n_examples"],
        "evaluation_precision": flag_values.evaluation_precision,
        **report,
        "versions": _versions(),
    }
    print(evaluation.format_table(report), file=stdout, flush=True)
    if output:
        evaluation.write_report(report, output)
        print(f"report written to {output}", file=stdout, flush=True)
    return report


def run_evaluate(arguments, program=EVALUATE_PROGRAM, stdout=None, stderr=None):
    """Parses `arguments` (flags, without the program name) into fresh flags and evaluates.

    Args:
        arguments: E.g. ["--model=runs/demo/model.keras", "--preset=mnist"].
        program: Name used in error messages.
        stdout: Stream for the table.
        stderr: Stream for progress lines.

    Returns:
        The report dict.
    """
    if _wants_help(arguments):
        print(evaluate_help(program), file=stdout or sys.stdout)
        raise SystemExit(0)
    flag_values = _parse(define_evaluate_flags(flags.FlagValues()), arguments, program)
    return evaluate(flag_values, program, stdout, stderr)


def evaluate_main():
    """Console script `deat-evaluate` (and `bin/evaluate`)."""
    program = _program_name(EVALUATE_PROGRAM)
    if _wants_help(sys.argv[1:]):
        print(evaluate_help(program))
        raise SystemExit(0)
    define_evaluate_flags(flags.FLAGS)

    def main(argv):
        _reject_positional(argv, program)
        # Keeps TFDS and tf.function INFO lines out of the progress on stderr.
        logging.set_verbosity(logging.WARNING)
        evaluate(flags.FLAGS, program)

    app.run(main)


def _check_output_path(path):
    if not path:
        return None
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"--output: directory {directory!r} does not exist.")
    if not os.access(directory, os.W_OK):
        raise ValueError(f"--output: directory {directory!r} is not writable.")
    if os.path.isdir(path):
        raise ValueError(f"--output must be a file path, got the directory {path!r}.")
    return path


def _versions():
    import keras
    import tensorflow as tf

    import deat_tf

    return {
        "deat_tf": deat_tf.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": sys.version.split()[0],
    }


# -------------------------------------------------------------------- shared


def _exit_with_error(program, error):
    print(f"{program}: error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def _parse(flag_values, arguments, program):
    try:
        remaining = flag_values([program] + list(arguments))
    except flags.Error as error:
        _exit_with_error(program, error)
    _reject_positional(remaining, program)
    return flag_values


def _reject_positional(argv, program):
    if len(argv) > 1:
        _exit_with_error(
            program,
            f"unexpected arguments {' '.join(argv[1:])!r}; settings are flags, e.g. --epochs=3.",
        )


def _program_name(default):
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name in ("train", "evaluate"):
        return default
    return name or default
