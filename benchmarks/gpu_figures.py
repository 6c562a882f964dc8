"""What `benchmarks/gpu.py` derives from its timings: arithmetic, peak rates, recipe projections.

- `forward_flops`: the arithmetic of one forward of a network, counted from
  its layers (2 x multiply-accumulates of every convolution and dense layer).
- `forward_equivalents`: how many such forwards one training minibatch of a
  method costs, counting a backward as two forwards (activation and weight
  gradients) and an attack step's backward as one (it needs no weight gradient).
- `peak_tflops`: the dense peak arithmetic rate of a GPU per precision, from
  NVIDIA's datasheets (`PEAK_TFLOPS`), keyed on the device name TensorFlow reports.
- `project_recipes` / `recipe_projections`: the training time of
  `cifar10_deat` and `cifar10_pgd7` from measured seconds per minibatch and
  the recipes' iteration counts;
- `input_headroom`: whether the input pipeline keeps up with a train step.

Nothing here runs a train step.
"""

import math
import os
import re

# r per epoch of the authors' CIFAR-10 M+DEAT run (docs/algorithm.md, section 2;
# configs/cifar10_deat.py): 1 (epoch 0), 2 (1-2), 3 (3-7), 4 (8-26), 5 (27-28),
# 6 (29-41), 7 (42-43), 8 (44-49); 246 replay-epochs.
PUBLISHED_DEAT_REPLAYS = (1,) + (2,) * 2 + (3,) * 5 + (4,) * 19 + (5,) * 2 + (6,) * 13 + (7,) * 2
PUBLISHED_DEAT_REPLAYS += (8,) * 6
# The paper's run times of those recipes on the authors' GPU (minutes; Wang et al., TMLR 2022).
PAPER_MINUTES = {"cifar10_deat": 102.1, "cifar10_pgd7": 157.2}
CIFAR10_TRAIN_IMAGES = 50_000


def forward_flops(network):
    """Floating-point operations of one forward of `network` on one example.

    Counts 2 operations (a multiply and an add) per multiply-accumulate of
    every Conv2D and Dense layer: output elements x kernel fan-in. BatchNorm,
    activations, additions and pooling are left out; they touch each
    activation a few times, against a fan-in of hundreds to thousands for a
    convolution, so they are well under 1% of the arithmetic of these
    networks (and limited by memory, not arithmetic, on a GPU).

    Args:
        network: A built functional Keras model (nested models are walked).

    Returns:
        The count as an int.
    """
    import keras

    from deat_tf import models

    total = 0
    for layer in models.all_layers(network):
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            continue
        output_elements = math.prod(int(size) for size in layer.output.shape[1:])
        fan_in = math.prod(int(size) for size in layer.kernel.shape[:-1])
        total += 2 * output_elements * fan_in
    return total


def forward_equivalents(method, count):
    """Forwards' worth of arithmetic in one training minibatch of `method`.

    A training pass (forward, activation gradients, weight gradients) is 3
    forwards; an attack step (forward, activation gradients down to the
    input) is 2. So: none 3; deat and free 3r; fgsm_rs 2 + 3; pgd 2K + 3;
    trades and mart 1 (the clean forward the attack compares with) + 2K + 6
    (the update's clean and adversarial forwards and their backwards).

    Args:
        method: A method name of `deat_tf.methods`.
        count: Its r or K (ignored for none and fgsm_rs).

    Returns:
        The number of forward equivalents as an int.

    Raises:
        ValueError: For a method not listed above.
    """
    if method == "none":
        return 3
    if method in ("deat", "free"):
        return 3 * count
    if method == "fgsm_rs":
        return 5
    if method == "pgd":
        return 2 * count + 3
    if method in ("trades", "mart"):
        return 2 * count + 7
    raise ValueError(f"method: no arithmetic count for {method!r}.")


# Dense (no sparsity) peak TFLOPS at boost clock, from NVIDIA's datasheets (the
# Tensor Core figures they print "with sparsity" are halved here). float32: the
# CUDA cores; tensor_float32: TF32 Tensor Cores, which TensorFlow uses for
# float32 convolutions and matrix products on compute capability 8.0 and newer
# unless tf.config.experimental.enable_tensor_float_32_execution(False);
# float16 / bfloat16: Tensor Cores with float32 accumulation, as Keras' mixed
# policies compute. None: the GPU has no such Tensor Cores. Patterns are tried
# in order against TensorFlow's device name (e.g. "NVIDIA H200",
# "NVIDIA A100-SXM4-80GB", "Tesla V100-SXM2-16GB").
PEAK_TFLOPS = (
    ("NVIDIA GH200", r"GH200", 67.0, 494.7, 989.4, 989.4),
    ("NVIDIA H200 NVL", r"H200 NVL", 60.0, 417.5, 835.5, 835.5),
    ("NVIDIA H200 SXM", r"H200", 67.0, 494.7, 989.4, 989.4),
    ("NVIDIA H100 NVL", r"H100 NVL", 60.0, 417.5, 835.5, 835.5),
    ("NVIDIA H100 PCIe", r"H100 PCIe", 51.0, 378.0, 756.5, 756.5),
    ("NVIDIA H100 SXM", r"H100", 67.0, 494.7, 989.4, 989.4),
    ("NVIDIA A100", r"A100", 19.5, 156.0, 312.0, 312.0),
    ("NVIDIA A10", r"\bA10\b", 31.2, 62.5, 125.0, 125.0),
    ("NVIDIA L40S", r"L40S", 91.6, 183.0, 362.0, 362.0),
    ("NVIDIA L4", r"\bL4\b", 30.3, 60.0, 121.0, 121.0),
    ("NVIDIA V100S PCIe", r"V100S", 16.4, None, 130.0, None),
    ("NVIDIA V100 PCIe", r"V100-PCIE", 14.0, None, 112.0, None),
    ("NVIDIA V100 SXM2", r"V100", 15.7, None, 125.0, None),
    ("NVIDIA T4", r"\bT4\b", 8.1, None, 65.0, None),
    ("NVIDIA GeForce RTX 4090", r"RTX 4090", 82.6, 82.6, 165.2, 165.2),
    ("NVIDIA GeForce RTX 3090", r"RTX 3090", 35.6, 35.6, 71.0, 71.0),
)
PEAK_SOURCE = (
    "NVIDIA datasheets (GeForce: architecture whitepapers), dense peak at boost clock; "
    "Tensor Core figures printed with sparsity are halved"
)
_PRECISION_COLUMNS = {"float32": 2, "tensor_float32": 3, "float16": 4, "bfloat16": 5}


def peak_tflops(device_name, precision, tensor_float_32):
    """The peak arithmetic rate of a GPU for a Keras precision policy.

    Args:
        device_name: The GPU's name as TensorFlow reports it, or None without a GPU.
        precision: "float32", "mixed_float16" or "mixed_bfloat16".
        tensor_float_32: Whether TensorFlow runs float32 convolutions on TF32
            Tensor Cores (`tf.config.experimental.tensor_float_32_execution_enabled()`).

    Returns:
        {"tflops": the peak or None, "peak": what it is (GPU and arithmetic)
        or None, "reason": why it is None, else None}.

    Raises:
        ValueError: For another precision.
    """
    kinds = {
        "float32": ("tensor_float32", "float32") if tensor_float_32 else ("float32",),
        "mixed_float16": ("float16",),
        "mixed_bfloat16": ("bfloat16",),
    }
    if precision not in kinds:
        raise ValueError(f"precision: unknown policy {precision!r}; use one of {tuple(kinds)}.")
    if not device_name:
        return {"tflops": None, "peak": None, "reason": "no GPU"}
    for row in PEAK_TFLOPS:
        name, pattern = row[:2]
        if re.search(pattern, device_name):
            for kind in kinds[precision]:
                value = row[_PRECISION_COLUMNS[kind]]
                if value is not None:
                    return {"tflops": value, "peak": f"{name} {kind} dense", "reason": None}
            return {
                "tflops": None,
                "peak": None,
                "reason": f"{name} has no {kinds[precision][0]} Tensor Cores",
            }
    return {
        "tflops": None,
        "peak": None,
        "reason": f"no peak rate known for device {device_name!r} (gpu_figures.PEAK_TFLOPS)",
    }


def minibatch_time_model(deat_seconds):
    """Seconds per DEAT minibatch as a function of r, from measured minibatches.

    Args:
        deat_seconds: {r: measured seconds per minibatch}, at least one entry.

    Returns:
        {"fixed_seconds", "seconds_per_replay", "fit"}: t(r) = fixed + r x per
        replay, the least-squares line through the points when there are two
        or more r, else the one point's seconds / r (no fixed part).
    """
    points = sorted(deat_seconds.items())
    if len(points) == 1:
        replays, seconds = points[0]
        return {
            "fixed_seconds": 0.0,
            "seconds_per_replay": seconds / replays,
            "fit": f"one point (r = {replays}): t(r) proportional to r",
        }
    mean_r = sum(r for r, _ in points) / len(points)
    mean_t = sum(t for _, t in points) / len(points)
    slope = sum((r - mean_r) * (t - mean_t) for r, t in points) / sum(
        (r - mean_r) ** 2 for r, _ in points
    )
    return {
        "fixed_seconds": mean_t - slope * mean_r,
        "seconds_per_replay": slope,
        "fit": "least squares through r = " + ", ".join(str(r) for r, _ in points),
    }


def project_recipes(deat_seconds, pgd7_seconds, steps_per_epoch, deat_epochs, pgd_epochs):
    """Projected training minutes of cifar10_deat and cifar10_pgd7 from measured minibatches.

    Args:
        deat_seconds: {r: seconds per DEAT minibatch} measured (may be empty).
        pgd7_seconds: Seconds per PGD-7 minibatch, or None.
        steps_per_epoch: Minibatches per epoch of the recipes.
        deat_epochs: Epochs of cifar10_deat; must equal the published trace's length.
        pgd_epochs: Epochs of cifar10_pgd7.

    Returns:
        {"cifar10_deat": {...}, "cifar10_pgd7": {...}, "ratio_deat_over_pgd7": ...}:
        projected minutes (None when not measured) next to the paper's.

    Raises:
        ValueError: If deat_epochs differs from the published trace's length.
    """
    if deat_epochs != len(PUBLISHED_DEAT_REPLAYS):
        raise ValueError(
            f"deat_epochs: the published r trace has {len(PUBLISHED_DEAT_REPLAYS)} epochs, "
            f"the recipe {deat_epochs}."
        )
    deat = {
        "paper_minutes": PAPER_MINUTES["cifar10_deat"],
        "r_per_epoch": list(PUBLISHED_DEAT_REPLAYS),
        "replay_epochs": sum(PUBLISHED_DEAT_REPLAYS),
        "projected_minutes": None,
    }
    if deat_seconds:
        model = minibatch_time_model(deat_seconds)
        seconds = steps_per_epoch * sum(
            model["fixed_seconds"] + r * model["seconds_per_replay"] for r in PUBLISHED_DEAT_REPLAYS
        )
        deat.update(time_model=model, projected_minutes=seconds / 60)
    pgd = {
        "paper_minutes": PAPER_MINUTES["cifar10_pgd7"],
        "projected_minutes": (
            None if pgd7_seconds is None else pgd7_seconds * steps_per_epoch * pgd_epochs / 60
        ),
    }
    ratio = None
    if deat["projected_minutes"] is not None and pgd["projected_minutes"] is not None:
        ratio = deat["projected_minutes"] / pgd["projected_minutes"]
    return {
        "cifar10_deat": deat,
        "cifar10_pgd7": pgd,
        "ratio_deat_over_pgd7": ratio,
        "paper_ratio_deat_over_pgd7": PAPER_MINUTES["cifar10_deat"] / PAPER_MINUTES["cifar10_pgd7"],
    }


def recipe_projections(rows, batch_size):
    """The recipes' projected minutes per precision and XLA setting of PreAct-ResNet18.

    Args:
        rows: The configuration rows of benchmarks/gpu.py.
        batch_size: Their batch; an epoch has (50,000 - validation) // batch minibatches.

    Returns:
        {"what": what is projected, "rows": one `project_recipes` result per
        precision and XLA setting with measured DEAT or PGD-7 rows}.
    """
    from deat_tf import config as config_lib
    from deat_tf import train

    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    deat_recipe = config_lib.load_file(os.path.join(configs, "cifar10_deat.py"))
    pgd_recipe = config_lib.load_file(os.path.join(configs, "cifar10_pgd7.py"))
    steps_per_epoch = (CIFAR10_TRAIN_IMAGES - deat_recipe.validation_size) // batch_size
    recipe_steps = train.input_plan(deat_recipe)[1]
    results = []
    for precision in ("float32", "mixed_float16", "mixed_bfloat16"):
        for jit in (False, True):
            measured = {
                (row["method"], row["count"]): row["seconds_per_minibatch"]
                for row in rows
                if row["network"] == "preact_resnet18"
                and row["precision"] == precision
                and row["jit_compile"] == jit
                and row["status"] == "measured"
            }
            deat = {
                count: seconds for (method, count), seconds in measured.items() if method == "deat"
            }
            pgd7 = measured.get(("pgd", 7))
            if not deat and pgd7 is None:
                continue
            projection = project_recipes(
                deat, pgd7, steps_per_epoch, deat_recipe.epochs, pgd_recipe.epochs
            )
            results.append(
                {
                    "network": "preact_resnet18",
                    "precision": precision,
                    "jit_compile": jit,
                    "batch_size": batch_size,
                    "steps_per_epoch": steps_per_epoch,
                    "recipe_steps_per_epoch": recipe_steps,
                    **projection,
                }
            )
    return {
        "what": (
            "training minibatches only: steps per epoch x the measured seconds per minibatch "
            "(DEAT: t(r) fitted to the measured r, summed over the published r per epoch); "
            "excluded: the per-epoch PGD-10 validation, the final test, input waits, startup. "
            "The paper's minutes are whole runs on the authors' GPU."
        ),
        "rows": results,
    }


def input_headroom(pipeline, rows):
    """How many times over the input pipeline feeds each measured configuration.

    Args:
        pipeline: benchmarks/gpu.py's input pipeline results, or None.
        rows: Its configuration rows.

    Returns:
        Per measured row: the pipeline's images/s under tf.data's defaults over
        the train step's images/s (below 1, the cores cannot keep up).
    """
    if not pipeline:
        return []
    supply = {
        row["pipeline"]: row["images_per_second"]
        for row in pipeline["rows"]
        if row["setting"].startswith("tf.data defaults")
    }
    feeds = {"preact_resnet18": "cifar", "wide_resnet34_10": "cifar", "resnet50": "imagenet"}
    return [
        {
            "network": row["network"],
            "precision": row["precision"],
            "jit_compile": row["jit_compile"],
            "label": row["label"],
            "pipeline": feeds[row["network"]],
            "pipeline_over_training_images_per_second": supply[feeds[row["network"]]]
            / row["images_per_second"],
        }
        for row in rows
        if row["status"] == "measured" and feeds[row["network"]] in supply
    ]
