"""Evaluation API: attack names, data, models, the report, the cascade, checks, strategies."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import deat_tf
from deat_tf import attacks, distribute, evaluation, models

EPSILON = 0.1
ATTACKS = "clean,fgsm,pgd3,pgd6x2,cw3,apgd-ce4,apgd-t3"


@pytest.fixture(scope="module")
def digits(mnist_sample):
    return evaluation.from_arrays(
        mnist_sample["x_test"][:150], mnist_sample["y_test"][:150], "digits"
    )


@pytest.fixture(scope="module")
def report(clean_mnist_network, digits):
    # Without the cascade: every attack on every example, the per-attack figures.
    specs = evaluation.parse_attacks(ATTACKS, EPSILON)
    return evaluation.evaluate(
        clean_mnist_network, digits, specs, EPSILON, batch_size=64, cascade=False
    )


def results_by_name(report):
    return {result["name"]: result for result in report["attacks"]}


# ------------------------------------------------------------------- attack names


def test_attack_names_resolve_to_specs():
    specs = evaluation.parse_attacks(
        "fgsm,pgd20,cw20,pgd50x10,apgd-ce,apgd-dlr50,apgd-t", 0.3, restarts=2
    )
    by_name = {spec.name: spec for spec in specs}
    assert [spec.name for spec in specs][0] == "clean"  # always measured, first
    assert by_name["fgsm"].step_size == 0.3
    assert by_name["pgd20"] == evaluation.AttackSpec("pgd20", "pgd", "ce", 20, 2, 2.5 * 0.3 / 20)
    assert by_name["cw20"].loss == "cw"
    assert by_name["pgd50x10"].restarts == 10 and by_name["pgd50x10"].steps == 50
    apgd_ce = by_name["apgd-ce"]
    assert (apgd_ce.steps, apgd_ce.restarts, apgd_ce.step_size) == (100, 1, None)
    assert (by_name["apgd-dlr50"].loss, by_name["apgd-dlr50"].steps) == ("dlr", 50)
    assert by_name["apgd-t"].target_classes == 9
    assert by_name["apgd-t"].gradient_evaluations(num_classes=10) == 900
    assert by_name["apgd-t"].gradient_evaluations(num_classes=5) == 400
    assert by_name["pgd50x10"].gradient_evaluations(num_classes=10) == 500
    explicit = evaluation.parse_attacks("pgd20", 0.3, step_size=0.01)
    assert explicit[1].step_size == 0.01


def test_fab_square_and_autoattack_names_resolve():
    specs = evaluation.parse_attacks("fab-t,fab-t50x2,fab20x5,square,square1000x2", 0.3)
    by_name = {spec.name: spec for spec in specs}
    fab_t = by_name["fab-t"]
    assert (fab_t.method, fab_t.steps, fab_t.restarts, fab_t.target_classes) == ("fab-t", 100, 1, 9)
    assert fab_t.gradient_evaluations(num_classes=10) == 900
    assert by_name["fab-t50x2"].gradient_evaluations(num_classes=10) == 900
    # Untargeted FAB takes the gradient of every logit at each iteration.
    assert by_name["fab20x5"].gradient_evaluations(num_classes=10) == 20 * 5 * 10
    square = by_name["square"]
    assert (square.method, square.steps, square.gradient_evaluations(10)) == ("square", 5000, 0)
    # The stripes plus 5,000 proposals, AutoAttack's n_queries.
    assert square.queries() == 5001 and by_name["square1000x2"].queries() == 2002
    standard = [spec.name for spec in evaluation.parse_attacks("autoattack", 0.3)]
    assert standard == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    plus = evaluation.parse_attacks("clean,autoattack-plus", 0.3)
    # AutoAttack's set_version("plus"): APGD and FAB 5 restarts, Square n_restarts=1.
    assert [(spec.method, spec.restarts) for spec in plus] == [
        ("clean", 1),
        ("apgd", 5),
        ("apgd", 5),
        ("fab", 5),
        ("square", 1),
        ("apgd-t", 1),
        ("fab-t", 1),
    ]


@pytest.mark.parametrize(
    "names, message",
    [
        ("pgd20,foo", "unknown attack 'foo'; allowed: clean, fgsm, pgdN"),
        ("pgd", "'pgd' needs a step count"),
        ("fgsm3", "'fgsm' takes no step count"),
        ("pgd20,pgd20", "lists 'pgd20' twice"),
        ("pgd0", "must be >= 1"),
        ("square0", "must be >= 1"),
        ("fab-tx", "unknown attack 'fab-tx'"),
        ("autoattack,apgd-ce", "lists 'apgd-ce' twice"),
        (" , ", "attacks is empty"),
    ],
)
def test_bad_attack_names_are_rejected(names, message):
    with pytest.raises(ValueError, match=message):
        evaluation.parse_attacks(names, 0.3)


# ------------------------------------------------------------------------- report


def test_report_is_consistent(report, digits):
    results = results_by_name(report)
    examples = digits.size
    assert report["examples"] == examples
    assert list(results) == ATTACKS.split(",")
    for result in results.values():
        assert result["examples"] == examples
        assert result["correct"] == round(result["accuracy"] * examples)
        assert result["within_bounds"]
        assert report["robust_accuracy"] <= result["accuracy"]
        by_run = result["accuracy_by_run"]
        assert all(later <= earlier for earlier, later in zip(by_run, by_run[1:]))
    assert results["clean"]["max_perturbation"] == 0.0
    for name in ("fgsm", "pgd3", "apgd-t3"):
        assert EPSILON - 1e-3 < results[name]["max_perturbation"] <= EPSILON + 1e-6
    assert report["robust_correct"] == round(report["robust_accuracy"] * examples)
    assert results["clean"]["accuracy"] > 0.85 > results["pgd6x2"]["accuracy"]
    # Gradient evaluations: steps x restarts (x 9 targets for apgd-t) per example.
    expected = {
        "clean": 0,
        "fgsm": 1,
        "pgd3": 3,
        "pgd6x2": 12,
        "cw3": 3,
        "apgd-ce4": 4,
        "apgd-t3": 27,
    }
    assert {
        name: result["gradient_evaluations_per_example"] for name, result in results.items()
    } == expected
    assert report["total_gradient_evaluations"] == sum(expected.values()) * examples
    assert len(results["pgd6x2"]["accuracy_by_run"]) == 2
    assert len(results["apgd-t3"]["accuracy_by_run"]) == 9
    assert all(result["seconds"] > 0 for result in results.values())
    checks = {check["name"]: check for check in report["checks"]}
    assert checks.pop("square_adds_little")["passed"] is None  # square was not run
    assert [check["passed"] for check in checks.values()] == [True] * 8, report["checks"]
    assert "(1 pairs compared)" in checks["monotone_in_budget"]["message"]  # pgd3 vs pgd6x2
    assert report["warnings"] == []
    json.dumps(report, allow_nan=False)


def test_robust_accuracy_is_correct_under_every_attack(clean_mnist_network, digits, mnist_sample):
    x, y = mnist_sample["x_test"][:150], mnist_sample["y_test"][:150]
    report = evaluation.evaluate(clean_mnist_network, digits, "clean,fgsm", EPSILON, batch_size=64)

    def correct(images):
        return np.argmax(clean_mnist_network(images, training=False), axis=-1) == y

    clean = correct(x)
    # The suite against the function; the function itself is pinned to a hand
    # computation in test_fgsm_equals_the_hand_computed_step.
    fgsm = correct(attacks.fgsm(clean_mnist_network, x, y, EPSILON))
    results = results_by_name(report)
    assert results["clean"]["correct"] == clean.sum()
    assert results["fgsm"]["correct"] == fgsm.sum()
    assert report["robust_correct"] == np.sum(clean & fgsm)


def mirrored_copy(network, strategy, dtype=None):
    """The network with its variables created under the strategy's scope, as bin/evaluate loads.

    With `dtype`, every layer computes (and keeps its weights) in that dtype.
    """

    def clone(layer):
        config = layer.get_config()
        if dtype is not None and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = dtype
        return layer.__class__.from_config(config)

    with strategy.scope():
        copy = keras.models.clone_model(network, clone_function=clone)
        copy.set_weights(network.get_weights())
    if dtype is not None:
        assert {layer.compute_dtype for layer in copy.layers[1:]} == {dtype}
    return copy


# One device and two differ only by rounding: in float64 (rounding ~1e-16) no example's
# outcome or sign step can follow it, on any CPU, so the counts must be equal.
@pytest.mark.numerics
def test_mirrored_strategy_gives_the_single_device_results(clean_mnist_network, digits):
    strategy = distribute.mirrored_strategy(["CPU:0", "CPU:1"])
    names = "clean,pgd6x2,apgd-t3"
    single = evaluation.evaluate(
        mirrored_copy(clean_mnist_network, tf.distribute.get_strategy(), "float64"),
        digits,
        names,
        EPSILON,
        batch_size=64,
        cascade=False,
    )
    # 150 examples in batches of 149: the last global batch has one example for two
    # replicas (padded to one each); random starts are seeded per example.
    distributed = evaluation.evaluate(
        mirrored_copy(clean_mnist_network, strategy, "float64"),
        digits,
        names,
        EPSILON,
        batch_size=149,
        strategy=strategy,
        cascade=False,
    )
    assert distributed["replicas"] == 2
    single = results_by_name(single)
    assert 0 < single["pgd6x2"]["correct"] < single["clean"]["correct"]
    for name, result in results_by_name(distributed).items():
        for key in ("correct", "accuracy_by_run", "max_perturbation"):
            assert result[key] == single[name][key], (name, key)


# AutoAttack's sequence with small budgets, on the first 100 digits.
SMALL_AUTOATTACK = "clean,apgd-ce5,apgd-t2,fab-t3,square60"
FEW = 80


@pytest.fixture(scope="module")
def cascade_and_full(clean_mnist_network, mnist_sample):
    """The same attacks with and without the cascade, with their adversarial images."""
    data = (mnist_sample["x_test"][:FEW], mnist_sample["y_test"][:FEW])
    return [
        evaluation.AttackSuite(SMALL_AUTOATTACK, EPSILON, batch_size=64, cascade=cascade).run(
            clean_mnist_network, data, return_images=True
        )
        for cascade in (True, False)
    ]


def test_cascade_gives_the_robust_accuracy_of_every_attack_on_every_example(
    clean_mnist_network, mnist_sample, cascade_and_full
):
    (cascade, cascade_images), (full, full_images) = cascade_and_full
    y = mnist_sample["y_test"][:FEW]

    def correct(images):
        return np.argmax(clean_mnist_network(images, training=False), axis=-1) == y

    # The same examples survive, one by one, whether or not the fooled ones are attacked again.
    np.testing.assert_array_equal(correct(cascade_images), correct(full_images))
    assert cascade["robust_correct"] == full["robust_correct"] == correct(cascade_images).sum()
    assert cascade["cascade"] and not full["cascade"]
    # Each attack ran on the survivors of the previous ones, and costs only those.
    results, everything = results_by_name(cascade), results_by_name(full)
    names = SMALL_AUTOATTACK.split(",")
    for previous, name in zip(names, names[1:]):
        result = results[name]
        assert result["attacked"] == results[previous]["correct"], name
        assert result["accuracy"] <= results[previous]["accuracy"]
        expected = result["gradient_evaluations_per_example"] * result["attacked"]
        assert result["gradient_evaluations"] == expected
        assert everything[name]["attacked"] == FEW
        assert result["accuracy"] <= everything[name]["accuracy"]
    assert results["apgd-ce5"]["attacked"] > results["fab-t3"]["attacked"] > 0
    assert results["square60"]["accuracy"] == cascade["robust_accuracy"]
    assert cascade["total_gradient_evaluations"] < 0.5 * full["total_gradient_evaluations"]
    assert 0 < cascade["total_queries"] < full["total_queries"]
    square = results["square60"]
    assert square["queries"] <= 61 * square["attacked"]  # the stripes and 60 proposals
    assert square["gradient_evaluations"] == 0
    assert [check["passed"] for check in cascade["checks"]].count(False) == 0, cascade["checks"]
    table = evaluation.format_table(cascade)
    assert "cascade=on" in table and "60 queries x 1" in table and "9 targets" in table


def test_cascade_images_are_the_first_success_inside_the_ball(mnist_sample, cascade_and_full):
    (report, images), _ = cascade_and_full
    x = mnist_sample["x_test"][:FEW]
    assert images.shape == x.shape and images.dtype == np.float32
    assert np.abs(images - x).max() <= EPSILON + 1e-6
    assert images.min() >= 0.0 and images.max() <= 1.0
    changed = np.any(images != x, axis=(1, 2, 3))
    fooled_first = sum(result.get("fooled_first", 0) for result in report["attacks"])
    assert 0 < changed.sum() <= fooled_first
    for result in report["attacks"]:
        assert result["within_bounds"], result["name"]


@pytest.mark.numerics
def test_cascade_under_mirrored_strategy_gives_the_single_device_results(
    clean_mnist_network, mnist_sample
):
    strategy = distribute.mirrored_strategy(["CPU:0", "CPU:1"])
    data = (mnist_sample["x_test"][:60], mnist_sample["y_test"][:60])
    names = "clean,apgd-ce3,square30"
    # Batches of 59: the last has one example for two replicas. float64 as above.
    single, distributed = (
        evaluation.evaluate(network, data, names, EPSILON, batch_size=59, strategy=strategy)
        for network, strategy in (
            (mirrored_copy(clean_mnist_network, tf.distribute.get_strategy(), "float64"), None),
            (mirrored_copy(clean_mnist_network, strategy, "float64"), strategy),
        )
    )
    assert distributed["replicas"] == 2 and distributed["cascade"]
    single = results_by_name(single)
    assert 0 < single["square30"]["attacked"] < 60 and single["square30"]["queries"] > 0
    for name, result in results_by_name(distributed).items():
        for key in ("correct", "attacked", "accuracy_by_run", "queries", "max_perturbation"):
            assert result[key] == single[name][key], (name, key)
    # A model whose variables live on one device is refused before any attack.
    with pytest.raises(ValueError, match="not created under the strategy's scope"):
        evaluation.evaluate(clean_mnist_network, data, names, EPSILON, strategy=strategy)


class Rounding(keras.layers.Layer):
    """Rounds pixels to multiples of 1/2 with a zero gradient: gradient masking."""

    def call(self, images):
        return tf.stop_gradient(tf.round(images * 2.0) / 2.0) + 0.0 * images


def test_square_beyond_the_gradient_attacks_is_flagged_as_masking(
    clean_mnist_network, mnist_sample, cascade_and_full
):
    masked = keras.Sequential([keras.Input((28, 28, 1)), Rounding(), clean_mnist_network])
    data = (mnist_sample["x_test"][:60], mnist_sample["y_test"][:60])
    report = evaluation.evaluate(masked, data, "clean,apgd-ce5,square100", 0.3, batch_size=60)
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["square_adds_little"]["passed"] is False
    assert "gradient masking" in checks["square_adds_little"]["message"]
    square = results_by_name(report)["square100"]
    assert square["compared_with"] == ["apgd-ce5"]
    assert square["fooled_beyond_gradient_attacks"] > 10
    # The same check on the normal network passes: Square adds (almost) nothing there.
    normal = {check["name"]: check for check in cascade_and_full[0][0]["checks"]}
    assert normal["square_adds_little"]["passed"] is True, normal["square_adds_little"]
    full = {check["name"]: check for check in cascade_and_full[1][0]["checks"]}
    assert full["square_adds_little"]["passed"] is True, full["square_adds_little"]


def test_probability_outputs(clean_mnist_network, digits):
    softmax_model = keras.Sequential([clean_mnist_network, layers.Softmax()])
    as_logits = evaluation.evaluate(softmax_model, digits, "clean,fgsm", EPSILON, batch_size=150)
    flagged = {check["name"]: check for check in as_logits["checks"]}
    assert flagged["outputs_are_logits"]["passed"] is False
    assert any("outputs=probabilities" in warning for warning in as_logits["warnings"])
    # log(softmax(z)) = z - logsumexp(z): cross-entropy and its gradient are those of the logits.
    as_probabilities = evaluation.evaluate(
        softmax_model, digits, "clean,fgsm", EPSILON, batch_size=150, outputs="probabilities"
    )
    reference = evaluation.evaluate(
        clean_mnist_network, digits, "clean,fgsm", EPSILON, batch_size=150
    )
    assert "outputs_are_logits" not in {check["name"] for check in as_probabilities["checks"]}
    for name in ("clean", "fgsm"):
        assert (
            abs(
                results_by_name(as_probabilities)[name]["correct"]
                - results_by_name(reference)[name]["correct"]
            )
            <= 1
        )


def test_saturated_softmax_is_flagged_as_zero_gradients(clean_mnist_network, digits):
    def saturated(images):
        # Margins in the thousands: softmax is exactly one-hot in float32.
        return 1e4 * clean_mnist_network(images, training=False)

    report = evaluation.evaluate(saturated, digits, "clean", EPSILON, batch_size=150)
    checks = {check["name"]: check for check in report["checks"]}
    assert report["zero_gradient_fraction"]["ce"] > 0.5
    assert report["zero_gradient_fraction"]["margin"] == 0.0
    assert checks["zero_gradients"]["passed"] is False
    assert "gradient masking" in checks["zero_gradients"]["message"]
    assert checks["stronger_than_fgsm"]["passed"] is None


def test_a_randomized_model_is_flagged(clean_mnist_network, digits):
    def noisy(images):
        logits = clean_mnist_network(images, training=False)
        return logits + 5.0 * tf.random.normal(tf.shape(logits))

    report = evaluation.evaluate(noisy, digits, "clean,pgd3x2", EPSILON, batch_size=150)
    checks = {check["name"]: check for check in report["checks"]}
    assert results_by_name(report)["pgd3x2"]["reevaluation_mismatches"] > 0
    assert checks["reevaluation_agrees"]["passed"] is False
    assert "randomized" in checks["reevaluation_agrees"]["message"]


def synthetic_report(**changes):
    report = {
        "epsilon": 0.3,
        "outputs": "logits",
        "clean_accuracy": 0.9,
        "robust_accuracy": 0.4,
        "zero_gradient_fraction": {"ce": 0.0, "margin": 0.0},
        "outputs_look_like_probabilities": False,
        "attacks": [
            {"name": "clean", "method": "clean", "accuracy": 0.9, "within_bounds": True},
            {"name": "fgsm", "method": "fgsm", "accuracy": 0.6, "within_bounds": True},
            {"name": "pgd20", "method": "pgd", "accuracy": 0.5, "within_bounds": True},
            {"name": "pgd100", "method": "pgd", "accuracy": 0.45, "within_bounds": True},
            {"name": "apgd-t", "method": "apgd-t", "accuracy": 0.4, "within_bounds": True},
        ],
    }
    for name, accuracy in changes.pop("accuracies", {}).items():
        next(result for result in report["attacks"] if result["name"] == name)["accuracy"] = (
            accuracy
        )
    report.update(changes)
    return report


@pytest.mark.parametrize(
    "changes, failing",
    [
        ({}, set()),
        ({"accuracies": {"fgsm": 0.95}}, {"robust_at_most_clean"}),
        ({"accuracies": {"pgd100": 0.55}}, {"monotone_in_budget"}),
        ({"accuracies": {"apgd-t": 0.7}}, {"stronger_than_fgsm"}),
        ({"zero_gradient_fraction": {"ce": 0.2, "margin": 0.0}}, {"zero_gradients"}),
        ({"zero_gradient_fraction": {"ce": 0.01, "margin": 0.0}}, set()),
        # AutoAttack's check_zero_gradients warns on any zero gradient of its scale-free loss.
        ({"zero_gradient_fraction": {"ce": 0.0, "margin": 0.001}}, {"zero_gradients"}),
        ({"outputs_look_like_probabilities": True}, {"outputs_are_logits"}),
        ({"mismatches": {"pgd20": 3}}, {"reevaluation_agrees"}),
        ({"robust_accuracy": 0.42}, {"robust_at_most_each_attack"}),
    ],
)
def test_sanity_checks_flag_suspicious_results(changes, failing):
    mismatches = changes.pop("mismatches", {})
    report = synthetic_report(**changes)
    for result in report["attacks"]:
        result["reevaluation_mismatches"] = mismatches.get(result["name"], 0)
    specs = evaluation.parse_attacks("clean,fgsm,pgd20,pgd100,apgd-t", 0.3, step_size=0.01)
    checks = evaluation.sanity_checks(report, specs)
    assert {check["name"] for check in checks if check["passed"] is False} == failing


def cascade_report(fooled_first, fooled_beyond, step_size=None):
    """A cascade over 1,000 examples: pgd100, pgd20 on its survivors, then fgsm and square."""
    names = "clean,pgd100,pgd20,fgsm,square"
    specs = evaluation.parse_attacks(names, 0.3, step_size=step_size)
    accuracies = [0.9, 0.5, 0.49, 0.48, 0.47]
    report = synthetic_report(robust_accuracy=0.47, cascade=True, examples=1000)
    report["attacks"] = [
        {
            "name": spec.name,
            "method": spec.method,
            "accuracy": accuracy,
            "within_bounds": True,
            "fooled_first": fooled_first.get(spec.name, 0),
        }
        for spec, accuracy in zip(specs, accuracies)
    ]
    for result in report["attacks"]:
        if result["method"] in ("fgsm", "square"):
            result["compared_with"] = ["pgd100", "pgd20"]
            result["fooled_beyond_gradient_attacks"] = fooled_beyond.get(result["name"], 0)
    checks = evaluation.sanity_checks(report, specs)
    return {check["name"]: check["passed"] for check in checks}


def test_cascade_checks_compare_later_attacks_with_the_survivors_of_earlier_ones():
    # A smaller budget listed after a larger one must fool (almost) none of its survivors:
    # none at all with one PGD step size (a replay), 0.5% of the examples otherwise.
    assert cascade_report({"pgd20": 5}, {})["monotone_in_budget"] is True
    assert cascade_report({"pgd20": 6}, {})["monotone_in_budget"] is False
    assert cascade_report({"pgd20": 1}, {}, step_size=0.01)["monotone_in_budget"] is False
    assert cascade_report({}, {}, step_size=0.01)["monotone_in_budget"] is True
    # FGSM and Square listed after the gradient attacks: what they alone fool is masking.
    passed = cascade_report({}, {"fgsm": 5, "square": 2})
    assert passed["stronger_than_fgsm"] is True and passed["square_adds_little"] is True
    flagged = cascade_report({}, {"fgsm": 6, "square": 3})
    assert flagged["stronger_than_fgsm"] is False and flagged["square_adds_little"] is False
    # AutoAttack's check_square_sr (alpha = 0.002): Square lowering the robust accuracy by
    # 0.3% of 1,000 examples warns, 0.2% does not; and there is no minimum count.
    assert cascade_report({}, {"square": 3})["square_adds_little"] is False


def test_cascade_skips_comparisons_it_cannot_make():
    specs = evaluation.parse_attacks("clean,fgsm,square,pgd20,pgd100", 0.3)
    report = synthetic_report(cascade=True, examples=1000)
    report["attacks"] = [
        {"name": spec.name, "method": spec.method, "accuracy": 0.5, "within_bounds": True}
        for spec in specs
    ]
    report["attacks"][0]["accuracy"] = 0.9
    for result in report["attacks"][1:3]:
        result["compared_with"], result["fooled_beyond_gradient_attacks"] = [], 0
    checks = {check["name"]: check for check in evaluation.sanity_checks(report, specs)}
    for name in ("monotone_in_budget", "stronger_than_fgsm", "square_adds_little"):
        assert checks[name]["passed"] is None, checks[name]
        assert "cascade" in checks[name]["message"]


def test_out_of_bounds_images_are_flagged():
    report = synthetic_report()
    report["attacks"][2]["within_bounds"] = False
    specs = evaluation.parse_attacks("clean,fgsm,pgd20,pgd100,apgd-t", 0.3, step_size=0.01)
    checks = {check["name"]: check for check in evaluation.sanity_checks(report, specs)}
    assert checks["within_bounds"]["passed"] is False
    assert "pgd20" in checks["within_bounds"]["message"]


def test_table_lists_every_attack_and_the_checks(report):
    table = evaluation.format_table(report)
    for name in ATTACKS.split(","):
        assert f"\n{name} " in table
    assert "robust (all)" in table
    assert f"{100 * report['robust_accuracy']:.2f}%" in table
    assert "sanity checks: 8 passed, 0 flagged, 1 skipped" in table
    assert "cascade=off" in table and "no cascade" in table


def test_report_is_written_atomically(tmp_path, report):
    path = tmp_path / "report.json"
    evaluation.write_report(report, str(path))
    assert json.loads(path.read_text())["robust_accuracy"] == report["robust_accuracy"]
    with pytest.raises(TypeError):
        evaluation.write_report({"not json": object()}, str(path))
    # The failed write left the previous report whole and no temporary file.
    assert json.loads(path.read_text())["robust_accuracy"] == report["robust_accuracy"]
    assert sorted(os.listdir(tmp_path)) == ["report.json"]


# --------------------------------------------------------------------- data, model


def test_load_data_sources(tmp_path):
    sample = evaluation.load_data("mnist_sample", n_examples=10)
    images, labels = next(iter(sample.dataset.batch(100)))
    assert sample.size == 10 and images.shape == (10, 28, 28, 1) and labels.dtype == tf.int64
    assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 1.0

    path = tmp_path / "digits.npz"
    np.savez(path, x_test=np.full((5, 8, 8), 255, np.uint8), y_test=np.arange(5))
    local = evaluation.load_data(f"npz:{path}")
    images, labels = next(iter(local.dataset.batch(100)))
    assert local.size == 5 and images.shape == (5, 8, 8, 1) and float(tf.reduce_max(images)) == 1.0

    np.savez(tmp_path / "no_test.npz", x_train=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="has no x_test, y_test"):
        evaluation.load_data(f"npz:{tmp_path / 'no_test.npz'}")
    np.savez(tmp_path / "scaled.npz", x_test=np.full((2, 4, 4), 3.0), y_test=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="scaled to \\[0, 1\\]"):
        evaluation.load_data(f"npz:{tmp_path / 'scaled.npz'}")
    with pytest.raises(ValueError, match="does not exist"):
        evaluation.load_data(f"npz:{tmp_path / 'missing.npz'}")
    with pytest.raises(ValueError, match="dataset must be one of .*got 'not_a_dataset'"):
        evaluation.load_data("not_a_dataset")
    with pytest.raises(ValueError, match="n_examples must be an integer >= 1"):
        evaluation.load_data("mnist_sample", n_examples=0)


def test_tfds_datasets_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    # TFDS prepares ImageNet from the two tars; empty files stand in for them under mock data.
    for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
        (tmp_path / name).touch()
    with tfds.testing.mock_data(num_examples=4):
        cifar = evaluation.load_data("cifar10", n_examples=3)
        images, _ = next(iter(cifar.dataset.batch(10)))
        assert images.shape == (3, 32, 32, 3) and images.dtype == tf.float32
        imagenet = evaluation.load_data("imagenet2012", n_examples=2, manual_dir=str(tmp_path))
        images, labels = next(iter(imagenet.dataset.batch(10)))
        assert images.shape == (2, 224, 224, 3)
        assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 1.0


def test_load_classifier_unwraps_an_adversarial_model(tmp_path, clean_mnist_network, mnist_sample):
    network_path = str(tmp_path / "network.keras")
    clean_mnist_network.save(network_path)
    x = mnist_sample["x_test"][:4]
    loaded = evaluation.load_classifier(network_path)
    np.testing.assert_allclose(loaded(x), clean_mnist_network(x), atol=1e-5)

    keras.utils.set_random_seed(1)
    wrapped = deat_tf.AdversarialModel(models.mnist_cnn(), method="fgsm_rs", epsilon=0.3)
    wrapped.compile(optimizer="adam")
    model_path = str(tmp_path / "model.keras")
    wrapped.save(model_path)
    network = evaluation.load_classifier(model_path)
    assert not isinstance(network, deat_tf.AdversarialModel)
    np.testing.assert_allclose(network(x), wrapped.network(x), atol=1e-5)

    (tmp_path / "broken.keras").write_text("not a zip file")
    with pytest.raises(ValueError, match="cannot load .* as a Keras model"):
        evaluation.load_classifier(str(tmp_path / "broken.keras"))
    with pytest.raises(ValueError, match="no such file"):
        evaluation.load_classifier(str(tmp_path / "missing.keras"))


def dense(classes):
    return lambda images: layers.Dense(classes)(layers.Flatten()(images))


def small_model(output_layer, input_shape=(28, 28, 1)):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, output_layer(inputs))


@pytest.mark.parametrize(
    "model_fn, message",
    [
        (lambda: small_model(layers.Identity()), "must output \\[batch, classes\\]"),
        (lambda: small_model(dense(1)), "must output \\[batch, classes\\]"),
        (lambda: small_model(dense(5)), "label 9 but model has only 5"),
        (lambda: small_model(dense(10), (8, 8, 3)), "does not accept"),
    ],
)
def test_models_that_are_not_classifiers_of_these_images_are_rejected(digits, model_fn, message):
    with pytest.raises(ValueError, match=message):
        evaluation.check_model_outputs(model_fn(), digits)


def test_probabilities_flag_needs_probabilities(clean_mnist_network, digits):
    with pytest.raises(ValueError, match="outputs=probabilities but"):
        evaluation.check_model_outputs(clean_mnist_network, digits, "probabilities")


def test_budget_check_allows_noise_only_across_step_sizes():
    default_steps = evaluation.parse_attacks("clean,fgsm,pgd20,pgd100,apgd-t", 0.3)  # 2.5 eps / N
    fixed_step = evaluation.parse_attacks("clean,fgsm,pgd20,pgd100,apgd-t", 0.3, step_size=0.01)

    def flagged(specs, pgd100_accuracy):
        report = synthetic_report(accuracies={"pgd20": 0.45, "pgd100": pgd100_accuracy})
        checks = {check["name"]: check for check in evaluation.sanity_checks(report, specs)}
        return checks["monotone_in_budget"]["passed"] is False

    assert not flagged(default_steps, 0.453)
    assert flagged(default_steps, 0.46)
    assert flagged(fixed_step, 0.453)


def test_no_replica_is_given_an_empty_batch(mnist_sample):
    # 5 examples in batches of 4 over 2 replicas: the last batch has 1 example, which
    # would leave the second replica an empty batch (refused by some CPU convolution
    # kernels: "input depth must be evenly divisible by filter depth").
    strategy = distribute.mirrored_strategy(["CPU:0", "CPU:1"])
    data = (mnist_sample["x_test"][:5], mnist_sample["y_test"][:5])
    suite = evaluation.AttackSuite("clean", EPSILON, batch_size=4)
    batches = suite._batches(evaluation.from_arrays(*data), replicas=2)
    indices = []
    for batch in strategy.experimental_distribute_dataset(batches):
        parts = strategy.experimental_local_results(batch[0])
        assert all(int(part.shape[0]) > 0 for part in parts), [part.shape for part in parts]
        indices.extend(np.concatenate([np.asarray(part) for part in parts]).tolist())
    # The padding is the last example again, at index -1, dropped from the results.
    assert indices == [0, 1, 2, 3, 4, -1]


# ------------------------------------------------- against hand-computed values


CLASSES = 5  # the targeted DLR loss of apgd-t needs at least 4


def linear_classifier(seed=0, dtype="float64"):
    """Logits W·x + b on 2x2 grey images: FGSM and the exact worst case have closed forms."""
    generator = np.random.default_rng(seed)
    kernel = generator.normal(size=(4, CLASSES))
    # Centred on the grey image 0.5, so that every class gets examples.
    bias = -0.5 * kernel.sum(axis=0) + generator.normal(size=CLASSES) * 0.1
    network = keras.Sequential(
        [keras.Input((2, 2, 1)), layers.Flatten(), layers.Dense(CLASSES, dtype=dtype)]
    )
    network.layers[-1].set_weights([kernel, bias])
    return network, kernel, bias


def test_fgsm_equals_the_hand_computed_step():
    # Cross-entropy of softmax(W·x + b): its input gradient is W (softmax - onehot),
    # FGSM is clip(x + eps·sign(gradient), 0, 1).
    network, kernel, bias = linear_classifier()
    generator = np.random.default_rng(1)
    x = generator.uniform(size=(64, 2, 2, 1))
    y = generator.integers(0, CLASSES, size=64)
    logits = x.reshape(64, 4) @ kernel + bias
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    gradient = (probabilities - np.eye(CLASSES)[y]) @ kernel.T
    assert np.abs(gradient).min() > 1e-6  # no sign is decided by rounding
    expected = np.clip(x + 0.1 * np.sign(gradient).reshape(x.shape), 0.0, 1.0)
    # Images enter the attacks as float32: a wrong sign or clip would be off by up to 0.1.
    np.testing.assert_allclose(
        np.asarray(attacks.fgsm(network, x, y, 0.1)), expected, rtol=0, atol=1e-6
    )


def exact_robustness(x, y, kernel, bias, epsilon):
    """Brute force: whether any corner of the (eps-ball ∩ [0, 1]) box is misclassified.

    The margins (W·x + b)_y - (W·x + b)_j are linear, so their minimum over the box
    lies at a corner; the 2^4 corners of each 2x2 image decide robustness exactly.
    Also returns each example's smallest margin over the box, to avoid near ties.
    """
    flat = x.reshape(len(x), 4)
    low, high = np.maximum(flat - epsilon, 0.0), np.minimum(flat + epsilon, 1.0)
    corners = np.array(np.meshgrid(*[[0, 1]] * 4, indexing="ij")).reshape(4, -1).T
    points = np.where(corners[None] == 1, high[:, None], low[:, None])  # [n, 16, 4]
    logits = points @ kernel + bias
    true = np.take_along_axis(logits, y[:, None, None].repeat(16, axis=1), axis=2)[..., 0]
    others = np.where(np.eye(CLASSES, dtype=bool)[y][:, None], -np.inf, logits)
    margins = (true - others.max(axis=2)).min(axis=1)
    return margins > 0, margins


def test_cascade_equals_the_brute_force_worst_case_of_a_linear_model():
    network, kernel, bias = linear_classifier(seed=2)
    generator = np.random.default_rng(3)
    x = generator.uniform(size=(400, 2, 2, 1))
    y = np.argmax(x.reshape(400, 4) @ kernel + bias, axis=1)  # all correct when clean
    robust, margins = exact_robustness(x, y, kernel, bias, 0.1)
    clear = np.abs(margins) > 1e-3  # far from ties: rounding cannot decide them
    x, y, robust = x[clear], y[clear], robust[clear]
    assert 0.2 < robust.mean() < 0.8
    report, images = evaluation.AttackSuite(
        "clean,apgd-ce,apgd-t", 0.1, batch_size=64, cascade=True
    ).run(network, (x, y), return_images=True)
    fooled = np.argmax(network(images), axis=1) != y
    # Attacks can never beat the exact worst case; on a linear model they reach it.
    np.testing.assert_array_equal(~fooled, robust)
    assert report["robust_correct"] == robust.sum()
    assert np.abs(images - x).max() <= 0.1 + 1e-6
