"""Recipes and their config: every recipe builds, field types, cross-field rules, flag parsing."""

import glob
import os

import pytest

from deat_tf import cli, train
from deat_tf import config as config_lib

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*.py"))))
def test_every_recipe_builds_and_documents_its_command(path):
    recipe = config_lib.load_file(path)
    # Every setting is checked by the code that owns it: build what bin/train
    # builds (a narrow network, so that ResNet-50 builds in seconds).
    if recipe.model != "mnist_cnn":
        recipe = config_lib.replace(recipe, model_width=2)
    input_spec, steps_per_epoch = train.input_plan(recipe)
    train.make_scheduler(recipe)
    model = train.build_model(recipe, input_spec, steps_per_epoch)
    assert (model.method, model.epsilon) == (recipe.method, recipe.epsilon)
    with open(path) as stream:
        text = stream.read()
    assert f"bin/train --config=configs/{os.path.basename(path)}" in text


def test_flag_values_are_parsed_by_field_type():
    assert cli.parse_value("epsilon", "8/255") == pytest.approx(8 / 255)
    assert cli.parse_value("step_size", "none") is None
    assert cli.parse_value("lr_boundaries", "10,17") == (10.0, 17.0)
    assert cli.parse_value("epochs", "3") == 3
    assert cli.parse_value("jit_compile", "true") is True
    with pytest.raises(ValueError, match="--epochs must be an integer"):
        cli.parse_value("epochs", "3.5")
    with pytest.raises(ValueError, match="--epsilon must be a number"):
        cli.parse_value("epsilon", "eight")


def test_config_checks_types_and_cross_field_rules():
    base = config_lib.TrainConfig()
    with pytest.raises(ValueError, match="unknown config field 'epoch'"):
        config_lib.replace(base, epoch=3)
    with pytest.raises(ValueError, match="config field epochs must be an integer"):
        config_lib.replace(base, epochs=2.5)
    with pytest.raises(ValueError, match="config field epsilon must be a number"):
        config_lib.TrainConfig(epsilon="0.3")
    with pytest.raises(ValueError, match="method free has a fixed count"):
        config_lib.replace(base, method="free")  # the base recipe schedules r
    with pytest.raises(ValueError, match="carry_perturbation applies to methods deat, free only"):
        config_lib.replace(base, method="pgd", carry_perturbation=True)
    with pytest.raises(
        ValueError, match="steps_after_misclassified applies to methods pgd, trades"
    ):
        config_lib.replace(base, steps_after_misclassified=0)  # the base recipe is deat
    with pytest.raises(ValueError, match="steps_after_misclassified must be an integer >= 0"):
        config_lib.replace(base, method="pgd", scheduler="none", steps_after_misclassified=-2)
    with pytest.raises(ValueError, match="scheduler magnitude reads the gradient magnitude M"):
        config_lib.replace(base, track_magnitude=False)  # the base recipe is M+DEAT
    assert config_lib.replace(base, scheduler="periodic", track_magnitude=False).scheduler
    # Integers are accepted for float fields and stored as floats.
    assert config_lib.replace(base, epsilon=1).epsilon == 1.0
    assert config_lib.replace(base, method="free", scheduler="none").method == "free"


def test_config_round_trips_through_its_json(tmp_path):
    recipe = config_lib.load_file(os.path.join(CONFIGS, "cifar10_deat.py"))
    path = tmp_path / "config.json"
    from deat_tf import workdir

    workdir.write_json(str(path), recipe.to_dict())
    assert config_lib.load_file(str(path)) == recipe


def test_broken_recipe_files_are_explained(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('typo')\n")
    with pytest.raises(ValueError, match="failed to load: RuntimeError: typo"):
        config_lib.load_file(str(broken))
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(ValueError, match="must define get_config"):
        config_lib.load_file(str(empty))
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def get_config():\n    return {'epochs': 3}\n")
    with pytest.raises(ValueError, match="returned dict, not a TrainConfig"):
        config_lib.load_file(str(wrong))
    bad_json = tmp_path / "config.json"
    bad_json.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        config_lib.load_file(str(bad_json))


def test_errors_inside_get_config_are_one_line_naming_the_cause(tmp_path):
    cases = {
        # A typo'd field: named, with the nearest field suggested.
        "from deat_tf.config import TrainConfig\n"
        "def get_config():\n    return TrainConfig(epsilonn=0.3)\n": (
            "unknown config field 'epsilonn' (did you mean 'epsilon'?)"
        ),
        "from deat_tf import config\n"
        "def get_config():\n    return config.replace(config.TrainConfig(), batchsize=64)\n": (
            "unknown config field 'batchsize' (did you mean 'batch_size'?)"
        ),
        "def get_config():\n    raise KeyError('dataset_path')\n": (
            "get_config() failed: KeyError: 'dataset_path'"
        ),
        "def get_config():\n    return 1 / 0\n": "get_config() failed: ZeroDivisionError",
    }
    for index, (text, expected) in enumerate(cases.items()):
        recipe = tmp_path / f"recipe{index}.py"
        recipe.write_text(text)
        with pytest.raises(ValueError) as raised:
            config_lib.load_file(str(recipe))
        message = str(raised.value)
        assert message.startswith(f"config file {recipe}: ") and expected in message, message
        assert "\n" not in message


def test_attack_batch_norm_reaches_the_model_from_a_flag():
    recipe = config_lib.replace(
        config_lib.TrainConfig(), attack_batch_norm=cli.parse_value("attack_batch_norm", "update")
    )
    input_spec, steps_per_epoch = train.input_plan(recipe)
    model = train.build_model(recipe, input_spec, steps_per_epoch)
    assert model.attack_batch_norm == "update"
    assert model.get_config()["attack_batch_norm"] == "update"


@pytest.mark.parametrize("text, expected", [("0", 0), ("2", 2), ("none", None)])
def test_steps_after_misclassified_reaches_the_model_from_a_flag_and_the_json(
    tmp_path, text, expected
):
    from deat_tf import workdir

    recipe = config_lib.replace(
        config_lib.TrainConfig(),
        method="pgd",
        scheduler="none",
        steps_after_misclassified=cli.parse_value("steps_after_misclassified", text),
    )
    path = tmp_path / "config.json"
    workdir.write_json(str(path), recipe.to_dict())
    assert config_lib.load_file(str(path)).steps_after_misclassified == expected
    input_spec, steps_per_epoch = train.input_plan(recipe)
    model = train.build_model(recipe, input_spec, steps_per_epoch)
    assert model.steps_after_misclassified == expected
    assert model.get_config()["steps_after_misclassified"] == expected
