"""benchmarks/gpu.py: its --smoke run, its bounds, and the figures it derives.

The smoke run is the check that the GPU benchmark works before a GPU is lent:
it steps PreAct-ResNet18 under every precision and XLA setting, times the
input pipelines and writes the JSON the GPU run will write.
"""

import json
import os
import subprocess
import sys

import keras
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu  # noqa: E402
import gpu_figures  # noqa: E402

from deat_tf import config as config_lib  # noqa: E402
from deat_tf import models, train  # noqa: E402

HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


def run_benchmark(tmp_path, *flags):
    """Runs benchmarks/gpu.py as a user would; returns (process, JSON or None)."""
    output = tmp_path / "gpu.json"
    environment = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), f"--output={output}", *flags],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = json.loads(output.read_text()) if output.exists() else None
    return process, results


def test_smoke_run_writes_every_figure(tmp_path):
    process, results = run_benchmark(tmp_path, "--smoke")
    assert process.returncode == 0, process.stdout + process.stderr
    assert results["status"] == "complete" and results["smoke"]
    assert not (tmp_path / "gpu.json.tmp").exists()
    device = results["device"]
    if device["gpu_name"] is None:
        assert process.stdout.startswith("No GPU: TensorFlow")
    planned = [tuple(entry.values())[:4] for entry in results["plan"]]
    assert planned == [tuple(entry) for entry in gpu.SMOKE_PLAN]
    passes = {"deat_r1": 1, "pgd_k7": 8, "fgsm_rs": 2, "none": 1}
    for row in results["configurations"]:
        assert row["status"] == "measured", row
        assert row["images_per_second"] == pytest.approx(
            row["batch_size"] / row["seconds_per_minibatch"]
        )
        assert row["passes"] == passes[row["label"]]
        assert row["seconds_per_gradient_pass"] == pytest.approx(
            row["seconds_per_minibatch"] / row["passes"]
        )
        assert row["timed_steps"] == 1 and row["batch_size"] == 4
        assert row["achieved_tflops"] > 0
        if device["gpu_name"] is None:
            assert row["fraction_of_peak"] is None
            assert row["fraction_of_peak_reason"] == "no GPU"
            assert row["peak_memory_bytes"] is None and "no GPU" in row["peak_memory_note"]
    measured = {(row["precision"], row["label"]): row for row in results["configurations"]}
    assert measured[("mixed_bfloat16", "none")]["jit_compile"] is True

    # The projection from the float32 rows, by hand: one DEAT point, so
    # t(r) = r x t(1), summed over the published 246 replay-epochs.
    (projection,) = [
        row
        for row in results["projections"]["rows"]
        if row["precision"] == "float32" and not row["jit_compile"]
    ]
    steps_per_epoch = (50_000 - 1000) // 4
    assert projection["steps_per_epoch"] == steps_per_epoch
    assert projection["recipe_steps_per_epoch"] == 382
    deat = measured[("float32", "deat_r1")]["seconds_per_minibatch"]
    pgd = measured[("float32", "pgd_k7")]["seconds_per_minibatch"]
    assert projection["cifar10_deat"]["projected_minutes"] == pytest.approx(
        steps_per_epoch * 246 * deat / 60
    )
    assert projection["cifar10_pgd7"]["projected_minutes"] == pytest.approx(
        steps_per_epoch * 50 * pgd / 60
    )
    assert projection["cifar10_deat"]["paper_minutes"] == 102.1
    assert projection["cifar10_pgd7"]["paper_minutes"] == 157.2

    pipeline = results["input_pipeline"]
    assert {(row["pipeline"], row["setting"]) for row in pipeline["rows"]} == {
        (name, setting)
        for name in ("imagenet", "cifar")
        for setting in ("tf.data defaults (bin/train)", "1 thread")
    }
    for row in pipeline["rows"]:
        assert row["batches"] >= 2 and row["images"] == row["batches"] * row["batch_size"]
        assert row["images_per_second"] > 0
    assert pipeline["jpegs"]["images"] == 8 and pipeline["jpegs"]["mean_bytes"] > 0
    assert len(results["input_pipeline_headroom"]) == len(gpu.SMOKE_PLAN)


def test_hard_deadline_writes_the_results_and_stops(tmp_path):
    # The watchdog fires as soon as it is armed, while the pipelines are timed.
    process, results = run_benchmark(
        tmp_path, "--smoke", "--deadline_seconds=0", "--hard_deadline_seconds=0"
    )
    assert process.returncode == 0, process.stdout + process.stderr
    assert results["status"] == "stopped at --hard_deadline_seconds=0"
    assert [row["status"] for row in results["configurations"]] == ["not run"] * len(gpu.SMOKE_PLAN)
    assert results["projections"]["rows"] == []


@pytest.mark.skipif(HAS_GPU, reason="a GPU is visible")
def test_without_a_gpu_it_says_so_and_fails(tmp_path):
    process, results = run_benchmark(tmp_path)
    assert process.returncode == 1
    lines = process.stdout.strip().splitlines()
    assert lines[0].startswith("No GPU: TensorFlow") and lines[-1].startswith("wrote ")
    assert results["status"] == "no GPU" and results["device"]["gpu_name"] is None
    assert results["configurations"] == []


@pytest.mark.skipif(HAS_GPU, reason="a GPU is visible")
def test_a_run_without_a_gpu_keeps_earlier_gpu_results(tmp_path):
    earlier = {"device": {"gpu_name": "NVIDIA H200"}, "configurations": [{"status": "ok"}]}
    (tmp_path / "gpu.json").write_text(json.dumps(earlier))
    process, results = run_benchmark(tmp_path)
    assert process.returncode == 1
    assert "holds GPU results; left as it is" in process.stdout
    assert results == earlier


def test_bad_flag_is_refused_before_any_work(tmp_path):
    process, results = run_benchmark(tmp_path, "--networks=preact_resnet18,vgg")
    assert process.returncode != 0 and results is None
    assert "ValueError: --networks: use one or more of" in process.stderr


def test_every_network_and_method_has_a_recipe_model():
    settings = dict(gpu.SMOKE, widths=gpu.SMOKE["widths"])
    for network in gpu.NETWORKS:
        for method, count in gpu.METHODS.values():
            config = gpu.recipe_config(network, "float32", False, method, count, settings)
            assert (config.model, config.method, config.attack_steps) == (network, method, count)
        input_spec, steps = train.input_plan(config)
        assert input_spec.image_shape[0] == (64 if network == "resnet50" else 32)
        model = train.build_model(config, input_spec, steps)
        assert gpu_figures.forward_flops(model.network) > 0
        keras.backend.clear_session()


def test_forward_flops_of_a_small_network_by_hand():
    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    outputs = keras.layers.Dense(5)(keras.layers.Flatten()(hidden))
    network = keras.Model(inputs, outputs)
    # Conv: 4x4x4 outputs x 3x3x3 fan-in; dense: 5 outputs x 64 inputs; 2 per multiply-add.
    assert gpu_figures.forward_flops(network) == 2 * (4 * 4 * 4 * 27 + 5 * 64)


def test_forward_flops_of_the_recipe_networks():
    # PreAct-ResNet18 at 32x32, 10 classes, from its architecture: the 3x3 stem,
    # per stage (filters f, output side s) four 3x3 convolutions, the first from
    # f/2 channels (stride 2) after stage 1, plus a 1x1 projection; the dense layer.
    multiply_adds = 32 * 32 * 64 * 27 + 4 * 32 * 32 * 64 * 9 * 64
    for filters, side in ((128, 16), (256, 8), (512, 4)):
        multiply_adds += side * side * filters * 9 * (filters // 2 + 3 * filters)
        multiply_adds += side * side * filters * (filters // 2)
    multiply_adds += 512 * 10
    assert gpu_figures.forward_flops(models.preact_resnet18()) == 2 * multiply_adds
    # ResNet-50 at 224: torchvision's model table lists 4.09 GFLOPS (multiply-adds).
    assert gpu_figures.forward_flops(models.resnet50()) / 2 == pytest.approx(4.09e9, rel=1e-3)
    keras.backend.clear_session()


def test_forward_equivalents_count_three_per_training_pass_and_two_per_attack_step():
    assert gpu_figures.forward_equivalents("none", None) == 3
    assert gpu_figures.forward_equivalents("deat", 4) == 12
    assert gpu_figures.forward_equivalents("fgsm_rs", None) == 2 + 3
    assert gpu_figures.forward_equivalents("pgd", 7) == 7 * 2 + 3
    # Clean forward for the KL target, 10 attack steps, two forwards and backwards.
    assert gpu_figures.forward_equivalents("trades", 10) == 1 + 10 * 2 + 2 * 3
    with pytest.raises(ValueError, match="method"):
        gpu_figures.forward_equivalents("cw", 1)


@pytest.mark.parametrize(
    "name, precision, tensor_float_32, expected",
    [
        ("NVIDIA H200", "mixed_bfloat16", True, (989.4, "NVIDIA H200 SXM bfloat16 dense")),
        ("NVIDIA H200", "float32", True, (494.7, "NVIDIA H200 SXM tensor_float32 dense")),
        ("NVIDIA H200", "float32", False, (67.0, "NVIDIA H200 SXM float32 dense")),
        ("NVIDIA H200 NVL", "mixed_float16", True, (835.5, "NVIDIA H200 NVL float16 dense")),
        ("NVIDIA H100 80GB HBM3", "mixed_float16", True, (989.4, "NVIDIA H100 SXM float16 dense")),
        ("NVIDIA H100 PCIe", "mixed_float16", True, (756.5, "NVIDIA H100 PCIe float16 dense")),
        ("NVIDIA A100-SXM4-80GB", "mixed_float16", True, (312.0, "NVIDIA A100 float16 dense")),
        ("NVIDIA A10", "mixed_float16", True, (125.0, "NVIDIA A10 float16 dense")),
        ("NVIDIA L4", "mixed_bfloat16", True, (121.0, "NVIDIA L4 bfloat16 dense")),
        ("NVIDIA L40S", "mixed_bfloat16", True, (362.0, "NVIDIA L40S bfloat16 dense")),
        # No TF32 on Volta and Turing: float32 runs on the CUDA cores.
        ("Tesla V100-SXM2-16GB", "float32", True, (15.7, "NVIDIA V100 SXM2 float32 dense")),
        ("Tesla T4", "mixed_float16", True, (65.0, "NVIDIA T4 float16 dense")),
    ],
)
def test_peak_rates_are_found_by_device_name(name, precision, tensor_float_32, expected):
    peak = gpu_figures.peak_tflops(name, precision, tensor_float_32)
    assert (peak["tflops"], peak["peak"]) == expected and peak["reason"] is None


def test_unknown_peak_rates_are_none_with_the_reason():
    assert gpu_figures.peak_tflops(None, "float32", True)["reason"] == "no GPU"
    volta = gpu_figures.peak_tflops("Tesla V100-PCIE-32GB", "mixed_bfloat16", True)
    assert volta["tflops"] is None and "no bfloat16 Tensor Cores" in volta["reason"]
    for name in ("NVIDIA A10G", "NVIDIA L40", "Some Accelerator"):
        unknown = gpu_figures.peak_tflops(name, "float32", True)
        assert unknown["tflops"] is None and repr(name) in unknown["reason"]
    with pytest.raises(ValueError, match="precision"):
        gpu_figures.peak_tflops("NVIDIA H200", "float16", True)


def test_published_trace_matches_the_recipe():
    trace = gpu_figures.PUBLISHED_DEAT_REPLAYS
    # docs/algorithm.md: 246 replay-epochs over 50 epochs, r = 8 in the last six.
    assert (
        len(trace) == config_lib.load_file(os.path.join(ROOT, "configs", "cifar10_deat.py")).epochs
    )
    assert sum(trace) == 246 and trace[:4] == (1, 2, 2, 3) and trace[-6:] == (8,) * 6
    assert list(trace) == sorted(trace)


def test_projection_by_hand():
    # t(r) = 0.1 + 0.2 r exactly at the measured r; PGD-7 0.5 s per minibatch.
    projection = gpu_figures.project_recipes({1: 0.3, 2: 0.5, 4: 0.9}, 0.5, 382, 50, 50)
    model = projection["cifar10_deat"]["time_model"]
    assert model["fixed_seconds"] == pytest.approx(0.1)
    assert model["seconds_per_replay"] == pytest.approx(0.2)
    assert projection["cifar10_deat"]["projected_minutes"] == pytest.approx(
        382 * (50 * 0.1 + 246 * 0.2) / 60
    )
    assert projection["cifar10_pgd7"]["projected_minutes"] == pytest.approx(0.5 * 382 * 50 / 60)
    assert projection["ratio_deat_over_pgd7"] == pytest.approx((50 * 0.1 + 246 * 0.2) / 25)
    assert projection["paper_ratio_deat_over_pgd7"] == pytest.approx(102.1 / 157.2)
    alone = gpu_figures.project_recipes({2: 0.6}, None, 10, 50, 50)
    assert alone["cifar10_deat"]["projected_minutes"] == pytest.approx(10 * 246 * 0.3 / 60)
    assert alone["cifar10_pgd7"]["projected_minutes"] is None
    assert alone["ratio_deat_over_pgd7"] is None
    with pytest.raises(ValueError, match="deat_epochs"):
        gpu_figures.project_recipes({1: 0.3}, 0.5, 382, 40, 50)


def test_plan_puts_the_recipe_network_and_the_projections_first():
    plan = gpu.value_ordered_plan(gpu.NETWORKS, gpu.PRECISIONS, [False, True], list(gpu.METHODS))
    assert len(plan) == len(set(plan)) == 3 * 3 * 2 * 7
    assert plan[:4] == [
        ("preact_resnet18", "float32", False, label)
        for label in ("deat_r1", "pgd_k7", "deat_r2", "deat_r4")
    ]
    assert {entry[3] for entry in plan[:7]} == set(gpu.METHODS)
    assert {entry[:3] for entry in plan[:7]} == {("preact_resnet18", "float32", False)}
    first_large = next(index for index, entry in enumerate(plan) if entry[0] != "preact_resnet18")
    # Every precision and XLA setting of PreAct-ResNet18 can be projected before the large nets.
    for precision in gpu.PRECISIONS:
        for jit in (False, True):
            for label in ("deat_r1", "deat_r4", "pgd_k7"):
                assert plan.index(("preact_resnet18", precision, jit, label)) < first_large
    selected = gpu.value_ordered_plan(["resnet50"], ["float32"], [False], ["none", "pgd_k7"])
    assert selected == [
        ("resnet50", "float32", False, "none"),
        ("resnet50", "float32", False, "pgd_k7"),
    ]


def test_configurations_past_the_deadline_are_skipped():
    clock = {"now": 0.0}

    def run_one(configuration):
        clock["now"] += 10.0
        return dict(
            gpu.describe_configuration(configuration), status="measured", total_seconds=10.0
        )

    plan = [
        ("preact_resnet18", "float32", False, "none"),  # first guess 20 s fits in 25 s
        ("preact_resnet18", "float32", False, "deat_r1"),  # last seen 10 s fits in 15 s
        ("resnet50", "float32", False, "none"),  # first guess 40 s > 5 s left
        ("preact_resnet18", "float32", True, "none"),  # XLA's first guess 40 s > 5 s
        ("preact_resnet18", "float32", False, "pgd_k7"),  # last seen 10 s > 5 s
    ]
    seen = []
    rows = gpu.run_plan(
        plan, run_one, lambda: clock["now"], 25.0, gpu.estimate_seconds, on_row=seen.append
    )
    assert [row["status"] for row in rows] == ["measured"] * 2 + ["skipped"] * 3
    assert rows[2]["reason"] == "deadline: estimated 40 s, 5 s left of --deadline_seconds=25"
    assert seen == rows and clock["now"] == 20.0


def test_a_hard_deadline_marks_the_interrupted_configuration(tmp_path):
    plan = [
        ("preact_resnet18", "float32", False, "deat_r1"),
        ("preact_resnet18", "float32", False, "pgd_k7"),
        ("resnet50", "float32", False, "none"),
    ]
    measured = dict(
        gpu.describe_configuration(plan[0]), status="measured", seconds_per_minibatch=0.25
    )
    results = {
        "plan": [gpu.describe_configuration(entry) for entry in plan],
        "configurations": [measured],
    }
    recorder = gpu.Recorder(str(tmp_path / "gpu.json"), results, {"batch_size": 128})
    recorder.current = plan[1]
    assert recorder.finish("stopped", stopped=True)
    assert not recorder.finish("complete")
    written = json.loads((tmp_path / "gpu.json").read_text())
    assert written["status"] == "stopped"
    assert [row["status"] for row in written["configurations"]] == [
        "measured",
        "interrupted",
        "not run",
    ]
    (projection,) = written["projections"]["rows"]
    assert projection["cifar10_deat"]["projected_minutes"] == pytest.approx(382 * 246 * 0.25 / 60)
    assert projection["cifar10_pgd7"]["projected_minutes"] is None
