"""Mixed precision: the attack and the statistic stay right in float16 and bfloat16."""

import io
import os
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import deat_tf
from deat_tf import attacks, cli, evaluation, magnitude, models, train
from deat_tf import config as config_lib

PRECISIONS = ("mixed_bfloat16", "mixed_float16")
DEMO = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "mnist_demo.py"
)


@pytest.fixture(scope="module")
def float32_weights():
    keras.utils.set_random_seed(0)
    return models.mnist_cnn().get_weights()


def network(policy, weights):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        built = models.mnist_cnn()
    finally:
        keras.config.set_dtype_policy(previous)
    built.set_weights(weights)
    return built


def one_epoch(policy, weights, method, steps, images, labels, optimizer=None):
    model = deat_tf.AdversarialModel(
        network(policy, weights),
        method=method,
        epsilon=0.3,
        attack_steps=steps,
        initialization="zero",
    )
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.01))
    history = model.fit(images, labels, batch_size=100, epochs=1, shuffle=False, verbose=0)
    return history.history, model


@pytest.mark.parametrize("policy", PRECISIONS)
@pytest.mark.parametrize("method, steps", [("deat", 2), ("pgd", 3)])
def test_statistic_and_loss_match_float32_on_the_same_batch(
    mnist_sample, float32_weights, policy, method, steps
):
    images, labels = mnist_sample["x_train"][:200], mnist_sample["y_train"][:200]
    expected, _ = one_epoch("float32", float32_weights, method, steps, images, labels)
    actual, model = one_epoch(policy, float32_weights, method, steps, images, labels)
    # The layers compute in 16 bits; logits, losses, x_adv and M stay float32.
    assert model.network.layers[1].compute_dtype == policy.split("_")[1]
    assert model.network.output.dtype == "float32"
    # Measured: within 0.5% (bfloat16 keeps 8 bits of mantissa, float16 11).
    for key in ("grad_magnitude", "loss"):
        assert actual[key][0] == pytest.approx(expected[key][0], rel=0.01), key
    assert actual["non_finite_gradients"] == [0.0]
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")


@pytest.mark.parametrize("policy", PRECISIONS)
def test_attacks_on_a_mixed_precision_network_stay_in_bounds(mnist_sample, float32_weights, policy):
    images, labels = mnist_sample["x_test"][:64], mnist_sample["y_test"][:64]
    classifier = network(policy, float32_weights)
    for x_adv in (
        attacks.pgd(classifier, images, labels, 0.3, 0.05, steps=5),
        attacks.fgsm(classifier, images, labels, 0.3, step_size=0.375, random_start=True),
    ):
        x_adv = np.asarray(x_adv)
        assert x_adv.dtype == np.float32
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        assert np.abs(x_adv - images).max() <= 0.3 + 1e-6


def test_overflowed_steps_are_skipped_without_moving_the_weights_or_the_statistic(
    mnist_sample, float32_weights
):
    images, labels = mnist_sample["x_train"][:300], mnist_sample["y_train"][:300]
    # A loss scale of 2**60 overflows float16 at every step: each update is
    # skipped (and the scale halved), as Keras' LossScaleOptimizer does.
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.01), initial_scale=2.0**60
    )
    history, model = one_epoch(
        "mixed_float16", float32_weights, "deat", 2, images, labels, optimizer=optimizer
    )
    for trained, initial in zip(model.network.get_weights(), float32_weights):
        np.testing.assert_array_equal(trained, initial)
    # The minibatches were seen: the learning rate's position follows the data, as
    # PyTorch's schedulers do around a skipped step ...
    assert model.minibatches == 3
    # ... but no minibatch had a finite statistic, and none is made up.
    assert history["non_finite_gradients"][0] > 0
    assert history["grad_magnitude"] == [0.0]


def test_epoch_magnitude_scales_the_valid_minibatches_to_the_whole_epoch():
    metric = magnitude.EpochMagnitude()
    for value, valid in ((5.0, True), (7.0, False), (3.0, True)):
        metric.update_state(tf.constant(value), valid)
    # (5 + 3) over 2 valid minibatches of 3: 12.
    assert float(metric.result()) == pytest.approx(12.0)
    metric.reset_state()
    for value in (5.0, 7.0, 3.0):
        metric.update_state(tf.constant(value))
    assert float(metric.result()) == pytest.approx(15.0)


def test_bfloat16_training_on_real_digits_still_becomes_robust(tmp_path):
    config = config_lib.replace(
        config_lib.load_file(DEMO),
        precision="mixed_bfloat16",
        epochs=4,
        steps_per_epoch=50,
        validation_size=200,
        validation_attack_steps=3,
        test_examples=200,
        train_accuracy_examples=0,
        progress_bar=False,
    )
    summary = train.train_and_evaluate(config, str(tmp_path / "bfloat16"))
    assert summary["run"]["precision"] == "mixed_bfloat16"
    result = summary["test"]["best"]
    assert result["accuracy"] > 0.9
    # A network trained clean scores 0 under this attack (tests/test_mnist_training.py);
    # measured here in bfloat16: 0.335.
    assert result["robust_accuracy"] > 0.2, result


# ------------------------------------------------------- evaluation in float32

COMPUTE_DTYPES = []


@keras.saving.register_keras_serializable(package="deat_tf_tests")
class DtypeProbe(keras.layers.Layer):
    """Identity that records the dtype its input arrives in (at trace time and eagerly)."""

    def call(self, inputs):
        COMPUTE_DTYPES.append(keras.backend.standardize_dtype(inputs.dtype))
        return inputs


def probed_network(policy, seed=0):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((28, 28, 1))
        hidden = models.Standardize(0.1307, 0.3081, name="standardize")(inputs)
        hidden = DtypeProbe(name="probe")(hidden)
        hidden = keras.layers.Conv2D(4, 3, activation="relu")(hidden)
        hidden = keras.layers.Flatten()(hidden)
        outputs = keras.layers.Dense(10, dtype="float32")(hidden)
        return keras.Model(inputs, outputs)
    finally:
        keras.config.set_dtype_policy(previous)


def recorded(function, *args, **kwargs):
    """The dtypes the probe saw during function(*args, **kwargs), and its result."""
    COMPUTE_DTYPES.clear()
    result = function(*args, **kwargs)
    return set(COMPUTE_DTYPES), result


@pytest.mark.parametrize("policy", PRECISIONS)
def test_validation_computes_in_float32_unless_told_to_keep_16_bits(mnist_sample, policy):
    images, labels = mnist_sample["x_train"][:40], mnist_sample["y_train"][:40]
    sixteen = policy.split("_")[1]
    for precision, expected in (("float32", "float32"), ("network", sixteen)):
        model = deat_tf.AdversarialModel(
            probed_network(policy),
            method="pgd",
            epsilon=0.3,
            attack_steps=1,
            validation_attack_steps=2,
            evaluation_precision=precision,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        # Training traces in the network's policy, validation in the evaluation precision.
        COMPUTE_DTYPES.clear()
        model.fit(images, labels, batch_size=20, epochs=1, verbose=0)
        assert set(COMPUTE_DTYPES) == {sixteen}
        seen, _ = recorded(model.evaluate, images, labels, batch_size=20, verbose=0)
        assert seen == {expected}, precision
        # The policy is put back after evaluation: the network still trains in 16 bits.
        assert model.network.get_layer("probe").compute_dtype == sixteen
    assert (
        deat_tf.AdversarialModel.from_config(model.get_config()).evaluation_precision == "network"
    )


def test_the_final_test_of_bin_train_computes_in_float32(mnist_sample):
    images, labels = mnist_sample["x_test"][:32], mnist_sample["y_test"][:32]
    run = types.SimpleNamespace(strategy=tf.distribute.get_strategy())
    network = probed_network("mixed_bfloat16")
    for precision, expected in (("float32", "float32"), ("network", "bfloat16")):
        config = config_lib.TrainConfig(
            epsilon=0.3, test_attack_steps=2, batch_size=16, evaluation_precision=precision
        )
        seen, result = recorded(train._evaluate_test, network, (images, labels), config, run)
        assert seen == {expected}, precision
        assert result["precision"] == precision
    assert network.get_layer("probe").compute_dtype == "bfloat16"


@pytest.mark.parametrize("policy", PRECISIONS)
def test_a_loaded_16_bit_network_resolves_input_changes_below_16_bit_resolution(
    tmp_path, float32_weights, policy
):
    path = str(tmp_path / "network.keras")
    network(policy, float32_weights).save(path)
    # 0.75 is exact in both 16-bit formats; 1e-4 is below half their spacing there (bfloat16
    # 2^-8, float16 2^-11 ~ 4.9e-4), so 0.75 + 1e-4 rounds back to 0.75 at the 16-bit input
    # layer; float32 (spacing 6e-8) keeps it.
    x = np.full((1, 28, 28, 1), 0.75, np.float32)
    moved = x + np.float32(1e-4)

    def change(model):
        return float(np.abs(model(moved).numpy() - model(x).numpy()).max())

    evaluated = evaluation.load_classifier(path)
    assert {layer.compute_dtype for layer in evaluated.layers[1:]} == {"float32"}
    assert change(evaluated) > 0.0
    kept = evaluation.load_classifier(path, precision="network")
    assert kept.get_layer("conv1").compute_dtype == policy.split("_")[1]
    assert change(kept) == 0.0
    # The same weights: at the input itself both agree to 16-bit rounding.
    np.testing.assert_allclose(evaluated(x).numpy(), kept(x).numpy(), rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="evaluation_precision must be one of"):
        evaluation.load_classifier(path, precision="bfloat16")


def test_bin_evaluate_takes_the_evaluation_precision_flag(tmp_path, float32_weights):
    path = str(tmp_path / "network.keras")
    network("mixed_bfloat16", float32_weights).save(path)
    for value in ("float32", "network"):
        report = cli.run_evaluate(
            [
                f"--model={path}",
                "--dataset=mnist_sample",
                "--epsilon=0.3",
                "--attacks=clean",
                "--n_examples=16",
                f"--evaluation_precision={value}",
            ],
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )
        assert report["evaluation_precision"] == value
    with pytest.raises(SystemExit):
        cli.run_evaluate(
            [
                f"--model={path}",
                "--dataset=mnist_sample",
                "--epsilon=0.3",
                "--evaluation_precision=16",
            ],
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )
