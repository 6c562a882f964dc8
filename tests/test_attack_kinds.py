"""The kinds table of `deat_tf.attacks.kinds`, row by row.

Every behaviour an evaluation has per attack (parsing, help, cost, step size,
checks, the function that attacks a batch) comes from a row, so these tests run
over every row: a new row is tested the day it is added.
"""

import dataclasses
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf

import deat_tf
from deat_tf import attacks
from deat_tf.attacks import kinds

CLASSES = 4
EPSILON = 0.1
# The fields that say what an attack does; rows of one method must agree on them
# (an AttackSpec finds its row by method).
BEHAVIOUR_FIELDS = [
    field.name
    for field in dataclasses.fields(kinds.AttackKind)
    if field.name not in ("name", "method", "loss", "summary")
]


def name_of(kind, steps=3, restarts=None):
    """A name of the row that parses: with a step count where the row takes one."""
    if not kind.takes_count:
        return kind.name
    return f"{kind.name}{steps}" + (f"x{restarts}" if restarts else "")


def row_ids(kind):
    return kind.name


@pytest.mark.parametrize("kind", kinds.KINDS, ids=row_ids)
def test_every_row_parses_and_finds_itself(kind):
    specs = attacks.parse_attacks(name_of(kind), epsilon=EPSILON)
    spec = specs[-1]
    assert specs[0].kind.is_clean
    assert spec.method == kind.method
    assert spec.loss == kind.loss
    for field in BEHAVIOUR_FIELDS:
        assert getattr(spec.kind, field) == getattr(kind, field), field
    assert kind.pattern in attacks.ATTACK_NAMES_HELP
    assert kind.cost in kinds.COSTS
    assert kind.step_rule in kinds.STEP_RULES
    if kind.takes_count:
        assert spec.steps == 3
        assert attacks.parse_attacks(name_of(kind, restarts=2))[-1].restarts == 2
        if kind.default_steps is not None:
            assert attacks.parse_attacks(kind.name)[-1].steps == kind.default_steps
        else:
            with pytest.raises(ValueError, match="needs a step count"):
                attacks.parse_attacks(kind.name)
    else:
        with pytest.raises(ValueError, match="takes no step count"):
            attacks.parse_attacks(kind.name + "3")


def test_rows_of_one_method_agree_on_behaviour():
    by_method = {}
    for kind in kinds.KINDS:
        by_method.setdefault(kind.method, []).append(kind)
    shared = [rows for rows in by_method.values() if len(rows) > 1]
    assert shared, "the table has rows sharing a method (pgd and cw, the APGD losses)"
    for rows in shared:
        for field in BEHAVIOUR_FIELDS:
            assert len({getattr(row, field) for row in rows}) == 1, (rows[0].method, field)


def test_names_are_unique_and_groups_hold_known_names():
    names = [kind.name for kind in kinds.KINDS]
    assert len(names) == len(set(names))
    for group, members in attacks.ATTACK_GROUPS.items():
        assert group in attacks.ATTACK_NAMES_HELP
        parsed = attacks.parse_attacks(group)
        assert [spec.name for spec in parsed[1:]] == members.split(",")


@pytest.mark.parametrize(
    "name, gradients, queries",
    [
        # By hand, with 4 classes (3 targets): the cost of each row's unit times the budget.
        ("clean", 0, 0),
        ("fgsm", 1, 0),
        ("pgd20x2", 40, 0),
        ("cw7", 7, 0),
        ("apgd-ce10x3", 30, 0),
        ("apgd-t10x2", 10 * 2 * 3, 0),
        ("fab-t10", 10 * 3, 0),
        ("fab10x2", 10 * 2 * CLASSES, 0),
        ("square100x2", 0, 101 * 2),
    ],
)
def test_cost_accounting_reads_the_row(name, gradients, queries):
    spec = attacks.parse_attacks(name)[-1]
    assert spec.gradient_evaluations(CLASSES) == gradients
    assert spec.queries() == queries


@pytest.mark.parametrize(
    "name, step_size", [("fgsm", EPSILON), ("pgd10", 2.5 * EPSILON / 10), ("apgd-ce", None)]
)
def test_step_rule_reads_the_row(name, step_size):
    spec = attacks.parse_attacks(name, epsilon=EPSILON)[-1]
    if step_size is None:
        assert spec.step_size is None
    else:
        assert spec.step_size == pytest.approx(step_size)


def linear_logits(seed=0):
    generator = np.random.default_rng(seed)
    weights = tf.constant(generator.normal(size=(2 * 3 * 3, CLASSES)), tf.float32)

    def logits_fn(images):
        return tf.reshape(images, [tf.shape(images)[0], -1]) @ weights

    return logits_fn


@pytest.mark.parametrize("kind", [kind for kind in kinds.KINDS if not kind.is_clean], ids=row_ids)
def test_every_run_function_stays_in_the_ball_and_box(kind):
    batch = 6
    generator = np.random.default_rng(1)
    # Pixels at 0 and 1 as well, where the box cuts the ball.
    x = np.clip(generator.uniform(-0.2, 1.2, size=(batch, 3, 3, 2)), 0, 1).astype(np.float32)
    labels = tf.constant(generator.integers(0, CLASSES, size=batch), tf.int32)
    spec = attacks.parse_attacks(name_of(kind, steps=4, restarts=2), epsilon=EPSILON)[-1]
    outcome = kind.run(
        spec,
        linear_logits(),
        tf.constant(x),
        labels,
        EPSILON,
        7,
        tf.range(batch, dtype=tf.int64),
        CLASSES,
    )
    images = outcome.images.numpy()
    assert images.shape == x.shape
    assert np.abs(images - x).max() <= EPSILON + 1e-6
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert tuple(outcome.fooled_by_run.shape) == (spec.runs(CLASSES), batch)
    assert tuple(outcome.queries.shape) == (batch,)
    if kind.cost == "query_per_step":
        assert np.all(outcome.queries.numpy() <= spec.queries())
    else:
        assert np.all(outcome.queries.numpy() == 0)


# A comparison of a quoted attack name: what the table replaced. Names that are
# also a loss ("cw") or a training family ("clean") are left out: losses.py and
# methods.py compare those as what they are there.
def _name_comparison():
    other_meanings = {"clean", *attacks.APGD_LOSSES}
    names = "|".join(
        re.escape(kind.name) for kind in kinds.KINDS if kind.name not in other_meanings
    )
    return re.compile(
        rf"""(==|!=|\bin\b|startswith\(|endswith\()\s*[\(\[\{{]?\s*["']({names})[\d"']"""
    )


def test_no_module_outside_the_table_compares_attack_names():
    package = pathlib.Path(deat_tf.__file__).parent
    comparison = _name_comparison()
    offenders = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "kinds.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if comparison.search(line)
    ]
    assert not offenders, offenders


def test_the_name_check_finds_a_comparison():
    # The control of the test above: the pattern does catch the checks it forbids.
    comparison = _name_comparison()
    assert comparison.search('if spec.method == "apgd-t":')
    assert comparison.search("if name.startswith('square'):")
    assert comparison.search('if spec.method in ("fab", "fab-t"):')
    assert not comparison.search('if loss == "ce":')
