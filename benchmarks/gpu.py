"""One command for a GPU: deat_tf's train-step speed and efficiency, and the recipes' times.

    PYTHONPATH=$PWD python benchmarks/gpu.py          # on a GPU machine; at most 8 minutes
    PYTHONPATH=$PWD python benchmarks/gpu.py --smoke  # anywhere: tiny sizes, one step each

Writes `benchmarks/gpu.json` (atomically) with:

- for each configuration of network (PreAct-ResNet18 and WideResNet-34-10 on
  32x32x3 batches, ResNet-50 on 224x224x3; batch 128), method (`none`,
  `fgsm_rs`, `deat` r = 1, 2, 4, `pgd` K = 7, `trades` K = 10), precision
  (float32, mixed_float16, mixed_bfloat16) and XLA (off, on): images per
  second, seconds per gradient pass (`methods.Method.passes_per_minibatch`),
  peak GPU memory (`tf.config.experimental.get_memory_info` after
  `reset_memory_stats`), and the fraction of the GPU's peak arithmetic rate
  reached (`gpu_figures`: the networks' convolution and dense arithmetic
  counted from their layers, times the method's forward equivalents, per
  second, over the named datasheet peak of that GPU and precision);
- the projected training time of `cifar10_deat` (the published M+DEAT r
  trace) and `cifar10_pgd7` from the measured minibatches, next to the
  paper's 102.1 and 157.2 minutes;
- the input pipeline's images per second on this machine's cores for
  CIFAR-shaped images and generated ImageNet-sized JPEGs (deat_tf's training
  stream, `synthetic_inputs`).

Every model is the one `bin/train` builds (`train.build_model`) from the
recipe of its network (`configs/cifar10_deat.py`; ResNet-50:
`configs/imagenet_deat.py` at 224), with the method, r or K, precision and
XLA of the configuration. Each is timed like `benchmarks/step_efficiency.py`:
the train function Keras builds for `fit` is called on one random batch,
which every step copies from host memory as `fit` does.

How it is bounded (defaults; all times from the start of the process):

- each configuration: one `fit` step (building, tracing and, with XLA,
  compiling) and `--warmup` steps are not timed; then `--blocks` blocks of
  steps, as many as fit in `--seconds_per_configuration` at the warm-up's
  speed, at least `--min_steps` and at most `--max_steps`; the figure is the
  median block;
- the configurations run in order of value (`value_ordered_plan`: first the
  recipe network in float32 without XLA, every method; then the same network
  under the other precisions and XLA with what the projections need; then
  the large networks; then the rest of the cross product), and one starts
  only if it is estimated to end before `--deadline_seconds` (420 s; the
  estimate is the last configuration of that network and XLA setting, or a
  guess); the others are recorded as skipped, and the full cross product
  (126 configurations) is not expected to fit;
- a watchdog writes what has been measured and exits at
  `--hard_deadline_seconds` (465 s), should one configuration (an XLA
  compilation, say) run far past its estimate.

Without a GPU it says so in one line, records it in the JSON and exits with
status 1, unless `--smoke` or `--allow_cpu`.
"""

import gc
import json
import math
import os
import statistics
import sys
import threading
import time

START = time.monotonic()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The driver's cache of kernels compiled from PTX (GPUs newer than the TF
# build's binary kernels): large enough that a rerun does not compile again.
os.environ.setdefault("CUDA_CACHE_MAXSIZE", str(4 << 30))

import common  # noqa: E402
import gpu_figures  # noqa: E402
import gpu_machine  # noqa: E402
from absl import app, flags  # noqa: E402

NETWORKS = ("preact_resnet18", "wide_resnet34_10", "resnet50")
# Label: (method, r or K).
METHODS = {
    "none": ("none", None),
    "fgsm_rs": ("fgsm_rs", None),
    "deat_r1": ("deat", 1),
    "deat_r2": ("deat", 2),
    "deat_r4": ("deat", 4),
    "pgd_k7": ("pgd", 7),
    "trades_k10": ("trades", 10),
}
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
XLA_SETTINGS = {"off": False, "on": True}
# The recipe each network's models come from, and its image size.
RECIPES = {
    "preact_resnet18": ("cifar10_deat", None),
    "wide_resnet34_10": ("cifar10_deat", None),
    "resnet50": ("imagenet_deat", 224),
}
# Seconds a configuration is guessed to take before one of its network and
# XLA setting has run (building and tracing dominate; XLA compiles on top).
FIRST_GUESS_SECONDS = {"preact_resnet18": 20.0, "wide_resnet34_10": 40.0, "resnet50": 40.0}
# --smoke: the tiny sizes, and a plan that takes every code path once.
SMOKE = {
    "batch_size": 4,
    "widths": {"preact_resnet18": 2, "wide_resnet34_10": 1, "resnet50": 2},
    "resnet50_image_size": 64,
    "warmup": 0,
    "min_steps": 1,
    "max_steps": 1,
    "blocks": 1,
    "seconds_per_configuration": 0.0,
    "jpegs": 8,
    "imagenet_batch_size": 8,
    "cifar_images": 64,
    "cifar_batch_size": 8,
    "shuffle_buffer": 16,
    "pipeline_seconds": 0.0,
}
# PreAct-ResNet18 steps under each precision and XLA setting and of the clean,
# single-step, replay and attack families, which the projections need; tracing
# dominates on a CPU, so the larger networks and the other r and K are not
# stepped here (tests/test_gpu_benchmark.py builds every network's model and
# the configuration of every label).
SMOKE_PLAN = (
    ("preact_resnet18", "float32", False, "deat_r1"),
    ("preact_resnet18", "float32", False, "pgd_k7"),
    ("preact_resnet18", "mixed_float16", False, "fgsm_rs"),
    ("preact_resnet18", "mixed_bfloat16", True, "none"),
)

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "benchmarks/gpu.json", "Where to write the JSON results.")
flags.DEFINE_boolean("smoke", False, "Tiny sizes, one step each, every code path (runs on CPU).")
flags.DEFINE_boolean("allow_cpu", False, "Run the full benchmark without a GPU.")
flags.DEFINE_float("deadline_seconds", 420.0, "No configuration starts that would end after this.")
flags.DEFINE_float("hard_deadline_seconds", 465.0, "The watchdog writes the results and exits.")
flags.DEFINE_float("seconds_per_configuration", 3.0, "Timed seconds per configuration.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per configuration after the first.")
flags.DEFINE_integer("min_steps", 3, "Fewest timed steps per configuration.")
flags.DEFINE_integer("max_steps", 200, "Most timed steps per configuration.")
flags.DEFINE_integer("blocks", 3, "Timed blocks per configuration; the median block is reported.")
flags.DEFINE_integer("batch_size", 128, "Batch of every network.")
flags.DEFINE_list("networks", list(NETWORKS), "Networks.")
flags.DEFINE_list("methods", list(METHODS), "Methods (label: method and r or K).")
flags.DEFINE_list("precisions", list(PRECISIONS), "Keras precision policies.")
flags.DEFINE_list("xla", list(XLA_SETTINGS), "XLA settings: off (graph), on (jit_compile).")
flags.DEFINE_boolean("pipeline", True, "Also time the input pipelines.")
flags.DEFINE_float("pipeline_seconds", 3.0, "Timed seconds per input pipeline setting.")
flags.DEFINE_integer("jpegs", 256, "JPEGs generated for the ImageNet pipeline.")


def check_flags():
    """Refuses unusable flag values before any work (one-line ValueError naming the flag)."""
    for name, allowed in (
        ("networks", NETWORKS),
        ("methods", tuple(METHODS)),
        ("precisions", PRECISIONS),
        ("xla", tuple(XLA_SETTINGS)),
    ):
        unknown = [value for value in getattr(FLAGS, name) if value not in allowed]
        if unknown or not getattr(FLAGS, name):
            raise ValueError(f"--{name}: use one or more of {', '.join(allowed)}; got {unknown}.")
    for name in ("deadline_seconds", "seconds_per_configuration", "pipeline_seconds"):
        if not getattr(FLAGS, name) >= 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(FLAGS, name)}.")
    if not FLAGS.hard_deadline_seconds >= FLAGS.deadline_seconds:
        raise ValueError(
            f"--hard_deadline_seconds must be >= --deadline_seconds ({FLAGS.deadline_seconds}), "
            f"got {FLAGS.hard_deadline_seconds}."
        )
    for name, least in (("warmup", 0), ("min_steps", 1), ("blocks", 1), ("batch_size", 1)):
        if getattr(FLAGS, name) < least:
            raise ValueError(f"--{name} must be >= {least}, got {getattr(FLAGS, name)}.")
    if FLAGS.max_steps < FLAGS.min_steps:
        raise ValueError(f"--max_steps must be >= --min_steps ({FLAGS.min_steps}).")
    if FLAGS.jpegs < 1:
        raise ValueError(f"--jpegs must be >= 1, got {FLAGS.jpegs}.")


def settings_from_flags():
    """The sizes and bounds of this run: the flags', or SMOKE's tiny ones under --smoke."""
    settings = {
        "smoke": FLAGS.smoke,
        "batch_size": FLAGS.batch_size,
        "widths": {network: None for network in NETWORKS},
        "resnet50_image_size": 224,
        "warmup": FLAGS.warmup,
        "min_steps": FLAGS.min_steps,
        "max_steps": FLAGS.max_steps,
        "blocks": FLAGS.blocks,
        "seconds_per_configuration": FLAGS.seconds_per_configuration,
        "deadline_seconds": FLAGS.deadline_seconds,
        "hard_deadline_seconds": FLAGS.hard_deadline_seconds,
        "pipeline": FLAGS.pipeline,
        "jpegs": FLAGS.jpegs,
        "imagenet_batch_size": 256,
        "cifar_images": 10_000,
        "cifar_batch_size": 128,
        "shuffle_buffer": 10_000,
        "pipeline_seconds": FLAGS.pipeline_seconds,
    }
    if FLAGS.smoke:
        settings.update(SMOKE)
    return settings


# ------------------------------------------------------------------ the plan


def value_ordered_plan(networks, precisions, xla_settings, labels):
    """The configurations (network, precision, jit_compile, method label), most valuable first.

    1. PreAct-ResNet18 in float32 without XLA, as the recipes train it: every
       method, those of the projections first;
    2. PreAct-ResNet18 under mixed_bfloat16, XLA, both, then mixed_float16:
       deat r = 1, 4 and pgd K = 7, enough to project both recipes;
    3. WideResNet-34-10 and ResNet-50 in mixed_bfloat16 and float32 without
       XLA: none, deat r = 1, pgd K = 7;
    4. everything else of the cross product, network by network.

    Only the selected networks, precisions, XLA settings and labels appear.
    """
    stages = [
        [
            ("preact_resnet18", "float32", False, label)
            for label in (
                "deat_r1",
                "pgd_k7",
                "deat_r2",
                "deat_r4",
                "none",
                "fgsm_rs",
                "trades_k10",
            )
        ]
    ]
    stages.append(
        [
            ("preact_resnet18", precision, jit, label)
            for precision, jit in (
                ("mixed_bfloat16", False),
                ("float32", True),
                ("mixed_bfloat16", True),
                ("mixed_float16", False),
                ("mixed_float16", True),
            )
            for label in ("deat_r1", "deat_r4", "pgd_k7")
        ]
    )
    stages.append(
        [
            (network, precision, False, label)
            for precision in ("mixed_bfloat16", "float32")
            for network in ("wide_resnet34_10", "resnet50")
            for label in ("none", "deat_r1", "pgd_k7")
        ]
    )
    stages.append(
        [
            (network, precision, jit, label)
            for network in NETWORKS
            for precision in PRECISIONS
            for jit in (False, True)
            for label in METHODS
        ]
    )
    plan = []
    for stage in stages:
        for entry in stage:
            network, precision, jit, label = entry
            selected = (
                network in networks
                and precision in precisions
                and jit in xla_settings
                and label in labels
            )
            if selected and entry not in plan:
                plan.append(entry)
    return plan


def run_plan(plan, run_one, clock, deadline, estimate, on_row=None):
    """Runs the configurations in order; skips those estimated to end after the deadline.

    Args:
        plan: Configurations (network, precision, jit_compile, label).
        run_one: configuration -> row dict (with "total_seconds" when measured).
        clock: () -> seconds since the start of the process.
        deadline: No configuration starts unless clock() + estimate <= deadline.
        estimate: (configuration, rows so far) -> estimated seconds.
        on_row: Called with each row as it is made (for the watchdog's copy).

    Returns:
        The rows, one per configuration, in plan order; skipped ones say why.
    """
    rows = []
    for configuration in plan:
        expected = estimate(configuration, rows)
        left = deadline - clock()
        if expected > left:
            row = describe_configuration(configuration)
            row.update(
                status="skipped",
                reason=(
                    f"deadline: estimated {expected:.0f} s, {max(left, 0):.0f} s left "
                    f"of --deadline_seconds={deadline:g}"
                ),
            )
        else:
            row = run_one(configuration)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def estimate_seconds(configuration, rows):
    """The last run of this network and XLA setting, or a first guess.

    The last, not the longest: the first configuration also pays for starting
    the GPU (and compiling kernels from PTX where TensorFlow has no binary for
    it), which later ones do not.
    """
    network, _, jit, _ = configuration
    seen = [
        row["total_seconds"]
        for row in rows
        if row["network"] == network and row["jit_compile"] == jit and "total_seconds" in row
    ]
    if seen:
        return seen[-1]
    return FIRST_GUESS_SECONDS[network] * (2 if jit else 1)


def describe_configuration(configuration):
    network, precision, jit, label = configuration
    method, count = METHODS[label]
    return {
        "network": network,
        "precision": precision,
        "jit_compile": jit,
        "label": label,
        "method": method,
        "count": count,
    }


# ------------------------------------------------------------------ one configuration


def recipe_config(network, precision, jit, method, count, settings):
    """The TrainConfig bin/train would run for this configuration."""
    from deat_tf import config as config_lib
    from deat_tf import methods

    recipe, image_size = RECIPES[network]
    if network == "resnet50":
        image_size = settings["resnet50_image_size"]
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    base = config_lib.load_file(os.path.join(path, recipe + ".py"))
    return config_lib.replace(
        base,
        model=network,
        model_width=settings["widths"][network],
        image_size=image_size,
        method=method,
        attack_steps=count,
        step_size=None,
        # The ImageNet recipes carry FREE's perturbation, which only replays take.
        carry_perturbation=base.carry_perturbation and method in methods.REPLAYING,
        scheduler="none",
        precision=precision,
        jit_compile=jit,
        batch_size=settings["batch_size"],
    )


def measure_configuration(configuration, settings, device):
    """Builds, warms up and times one configuration.

    Returns:
        Its row: status "measured" with the figures, or "error" with the error.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from deat_tf import methods, train

    row = describe_configuration(configuration)
    network, precision, jit, _ = configuration
    method, count = row["method"], row["count"]
    start = time.perf_counter()
    model = None
    try:
        config = recipe_config(network, precision, jit, method, count, settings)
        input_spec, steps_per_epoch = train.input_plan(config)
        keras.backend.clear_session()
        gc.collect()
        if device["gpu_name"] is not None:
            tf.config.experimental.reset_memory_stats("GPU:0")
        model = train.build_model(config, input_spec, steps_per_epoch)
        # Keras builds the optimizer before tracing only under a distribution
        # strategy's scope; otherwise the first trace creates its variables and
        # TensorFlow traces the step a second time.
        model.optimizer.build(model.trainable_variables)
        if bool(model.jit_compile) != jit:
            raise RuntimeError(f"Keras set jit_compile={model.jit_compile}, asked {jit}")
        batch = settings["batch_size"]
        generator = np.random.default_rng(0)
        images = generator.uniform(size=(batch,) + tuple(input_spec.image_shape))
        labels = generator.integers(0, input_spec.num_classes, size=batch)
        dataset = tf.data.Dataset.from_tensors(
            (images.astype(np.float32), labels.astype(np.int64))
        ).repeat()
        # One fit step traces (with XLA: compiles) the step and checks the batch.
        model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)
        row["setup_seconds"] = time.perf_counter() - start
        iterator = iter(dataset)
        train_function = model.train_function

        def steps(number):
            for _ in range(number):
                logs = train_function(iterator)
            # Reading a value waits for the device to finish the steps.
            return float(logs["loss"])

        warmup = []
        for _ in range(settings["warmup"]):
            step_start = time.perf_counter()
            steps(1)
            warmup.append(time.perf_counter() - step_start)
        speed = min(warmup) if warmup else row["setup_seconds"]
        wanted = math.ceil(settings["seconds_per_configuration"] / max(speed, 1e-6))
        timed = min(max(wanted, settings["min_steps"]), settings["max_steps"])
        blocks = min(settings["blocks"], timed)
        per_block = math.ceil(timed / blocks)
        samples = []
        for _ in range(blocks):
            block_start = time.perf_counter()
            loss = steps(per_block)
            samples.append((time.perf_counter() - block_start) / per_block)
        seconds = statistics.median(samples)
        row.update(figures(model, method, count, batch, seconds, precision, device))
        row.update(
            status="measured",
            image_shape=list(input_spec.image_shape),
            batch_size=batch,
            model_width=config.model_width,
            warmup_seconds=warmup,
            timed_steps=blocks * per_block,
            block_seconds_per_minibatch=samples,
            last_loss=loss,
            passes=methods.get(method).passes_per_minibatch(
                methods.get(method).default_steps if count is None else count
            ),
        )
        row["seconds_per_gradient_pass"] = seconds / row["passes"]
        row["peak_memory_bytes"], row["peak_memory_note"] = gpu_machine.peak_memory(device)
    except Exception as error:  # noqa: BLE001 - one failing configuration must not stop the rest
        message = str(error).strip().splitlines()
        row.update(status="error", error=f"{type(error).__name__}: {message[0] if message else ''}")
    finally:
        del model
        row["total_seconds"] = time.perf_counter() - start
    return row


def figures(model, method, count, batch, seconds, precision, device):
    """Images per second and arithmetic of a measured minibatch time."""
    flops_per_example = gpu_figures.forward_flops(model.network)
    flops = flops_per_example * batch * gpu_figures.forward_equivalents(method, count)
    achieved = flops / seconds / 1e12
    peak = gpu_figures.peak_tflops(device["gpu_name"], precision, device["tensor_float_32"])
    return {
        "seconds_per_minibatch": seconds,
        "images_per_second": batch / seconds,
        "forward_gflops_per_example": flops_per_example / 1e9,
        "forward_equivalents": gpu_figures.forward_equivalents(method, count),
        "achieved_tflops": achieved,
        "peak_tflops": peak["tflops"],
        "peak": peak["peak"],
        "fraction_of_peak": None if peak["tflops"] is None else achieved / peak["tflops"],
        "fraction_of_peak_reason": peak["reason"],
    }


# ------------------------------------------------------------------ results


class Recorder:
    """The results, written once by whichever comes first: the end of the run or the watchdog."""

    def __init__(self, path, results, settings):
        self.path, self.results, self.settings = path, results, settings
        self.lock = threading.Lock()
        self.written = False
        # The configuration being measured, if any (the one a hard deadline interrupts).
        self.current = None

    def finish(self, status, stopped=False):
        """Completes the derived figures and writes the JSON, once; False if already written.

        Args:
            status: The run's status for the JSON.
            stopped: Whether the watchdog stopped the run: the configuration
                being measured is recorded as interrupted, the rest of the
                plan as not run.
        """
        with self.lock:
            if self.written:
                return False
            results = self.results
            rows = results["configurations"]
            if stopped:
                done = {row_key(row) for row in rows}
                for planned in results["plan"]:
                    if row_key(planned) in done:
                        continue
                    interrupted = self.current is not None and (
                        row_key(planned) == row_key(describe_configuration(self.current))
                    )
                    outcome = "interrupted" if interrupted else "not run"
                    rows.append(dict(planned, status=outcome, reason="hard deadline"))
            results["status"] = status
            results["elapsed_seconds"] = time.monotonic() - START
            results["projections"] = gpu_figures.recipe_projections(
                rows, self.settings["batch_size"]
            )
            results["input_pipeline_headroom"] = gpu_figures.input_headroom(
                results.get("input_pipeline"), rows
            )
            common.write_json(self.path, results)
            self.written = True
            return True

    def arm_watchdog(self, at_seconds):
        """At `at_seconds` from the start, writes what was measured and ends the process."""

        def fire():
            if self.finish(f"stopped at --hard_deadline_seconds={at_seconds:g}", stopped=True):
                print(f"hard deadline ({at_seconds:g} s): wrote what was measured.", flush=True)
                os._exit(0)

        timer = threading.Timer(max(0.0, at_seconds - (time.monotonic() - START)), fire)
        timer.daemon = True
        timer.start()
        return timer


def row_key(row):
    return (row["network"], row["precision"], row["jit_compile"], row["label"])


def print_table(results):
    print(
        f"\n{'network':<17} {'precision':<15} {'xla':<4} {'method':<11} {'img/s':>8} "
        f"{'ms/pass':>8} {'peak GiB':>9} {'of peak':>8}  status"
    )
    for row in results["configurations"]:
        xla = "on" if row["jit_compile"] else "off"
        line = f"{row['network']:<17} {row['precision']:<15} {xla:<4} {row['label']:<11}"
        if row["status"] == "measured":
            memory = row["peak_memory_bytes"]
            fraction = row["fraction_of_peak"]
            line += (
                f" {row['images_per_second']:>8.1f} {1000 * row['seconds_per_gradient_pass']:>8.2f}"
                f" {'-' if memory is None else f'{memory / 2**30:.2f}':>9}"
                f" {'-' if fraction is None else f'{100 * fraction:.1f}%':>8}"
            )
        else:
            line += f" {'':>36}  {row['status']}: {row.get('reason') or row.get('error')}"
        print(line)
    for row in results["projections"]["rows"]:
        deat = row["cifar10_deat"]["projected_minutes"]
        pgd = row["cifar10_pgd7"]["projected_minutes"]
        print(
            f"projected {row['precision']}, XLA {'on' if row['jit_compile'] else 'off'}: "
            f"cifar10_deat {'-' if deat is None else f'{deat:.1f}'} min (paper 102.1), "
            f"cifar10_pgd7 {'-' if pgd is None else f'{pgd:.1f}'} min (paper 157.2)"
        )


def _holds_gpu_results(path):
    """Whether `path` is a JSON file of a run that found a GPU."""
    try:
        with open(path) as file:
            previous = json.load(file)
    except (OSError, ValueError):
        return False
    return isinstance(previous, dict) and (previous.get("device") or {}).get("gpu_name") is not None


def main(argv):
    del argv
    check_flags()
    settings = settings_from_flags()
    import tensorflow as tf

    # Every configuration builds its own train function; TF warns about that.
    tf.get_logger().setLevel("ERROR")
    device = gpu_machine.describe_devices()
    print(gpu_machine.device_line(device), flush=True)
    results = {
        "description": (
            "deat_tf train steps on one GPU: images/s, seconds per gradient pass, peak GPU "
            "memory, fraction of the GPU's peak arithmetic rate; projected recipe times; input "
            "pipeline images/s. See benchmarks/gpu.py's docstring for what each figure is."
        ),
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": common.machine_description(),
        "device": device,
        "smoke": settings["smoke"],
        "settings": settings,
        "bounds": (
            "per configuration: the fit step and --warmup steps untimed, then --blocks blocks "
            "filling --seconds_per_configuration (between --min_steps and --max_steps steps); "
            "configurations in value order, each started only if estimated to end before "
            "--deadline_seconds, else skipped; a watchdog writes the results and exits at "
            "--hard_deadline_seconds"
        ),
        "peak_source": gpu_figures.PEAK_SOURCE,
        "configurations": [],
    }
    if device["gpu_name"] is None and not (settings["smoke"] or FLAGS.allow_cpu):
        results.update(status="no GPU", plan=[], projections={"rows": []})
        if _holds_gpu_results(FLAGS.output):
            # A CPU-only run must not replace figures measured on a GPU.
            print(f"{FLAGS.output} holds GPU results; left as it is.")
        else:
            common.write_json(FLAGS.output, results)
        sys.exit(1)
    if settings["smoke"]:
        plan = list(SMOKE_PLAN)
    else:
        plan = value_ordered_plan(
            FLAGS.networks,
            FLAGS.precisions,
            [XLA_SETTINGS[value] for value in FLAGS.xla],
            FLAGS.methods,
        )
    results["plan"] = [describe_configuration(configuration) for configuration in plan]
    recorder = Recorder(FLAGS.output, results, settings)
    watchdog = recorder.arm_watchdog(settings["hard_deadline_seconds"])
    if settings["pipeline"]:
        results["input_pipeline"] = gpu_machine.time_pipelines(settings)

    def run_one(configuration):
        network, precision, jit, label = configuration
        print(
            f"{network} {precision} XLA {'on' if jit else 'off'} {label} ...", end=" ", flush=True
        )
        recorder.current = configuration
        row = measure_configuration(configuration, settings, device)
        outcome = (
            f"{row['images_per_second']:.1f} img/s" if row["status"] == "measured" else row["error"]
        )
        print(f"{outcome} ({row['total_seconds']:.0f} s)", flush=True)
        return row

    def keep(row):
        with recorder.lock:
            results["configurations"].append(row)
            recorder.current = None

    run_plan(
        plan,
        run_one,
        lambda: time.monotonic() - START,
        settings["deadline_seconds"],
        estimate_seconds,
        on_row=keep,
    )
    watchdog.cancel()
    if not recorder.finish("complete"):
        return
    print_table(results)
    errors = [row for row in results["configurations"] if row["status"] == "error"]
    if errors and settings["smoke"]:
        print(f"--smoke: {len(errors)} configuration(s) failed.")
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
