"""Images per second per CPU core of the training input pipelines, and cores per GPU.

Times the two training pipelines of `deat_tf.datasets`, built by the same
function `datasets.get_pipelines` uses (`streams.training_stream`: shuffle, enumerate,
a parallel map of the augmentation seeded by (seed, position), batch, prefetch):

- ImageNet: encoded JPEGs read from TFRecord files of `tf.train.Example`s
  (the layout TFDS writes), parsed, then
  `preprocessing.random_resized_crop_flip` at 224 (`decode_and_crop_jpeg`
  decodes only the crop window, resize with antialiasing, flip), batch 256.
  The JPEGs are generated here: `--jpegs` images of the common ImageNet sizes
  (500x375, 375x500, 500x333, 500x400) with smooth structure, texture and
  noise, encoded at quality 90 to about ImageNet's mean file size (about
  110 KB); the JSON records their mean bytes and pixels, which set the decode
  cost. They are read back from disk through the page cache, so disk or
  network throughput is not measured.
- CIFAR: `preprocessing.crop_flip` on 32x32x3 uint8 images held in memory
  (TFDS CIFAR is cached decoded, as `get_pipelines` does), batch 128.

Each pipeline is timed with one thread (tf.data private thread pool of 1,
intra-op parallelism 1) and with all cores (a private pool of `nproc`
threads), and as `bin/train` runs it (tf.data's defaults). Every sample starts
a fresh iterator, pulls `--warmup` batches, then times `--batches` batches,
recording wall time and this process's CPU time (user + system, all threads).
Configurations are interleaved round-robin so that other jobs on the machine
hit them alike; figures are medians over rounds. "Images per CPU-second" (images
/ CPU time) is the per-core cost and holds under load from other jobs, which
slows the wall clock but does not add to this process's CPU time.

From it, the script derives how many such cores keep the GPUs of the DEAT
paper's runs fed (see `required_rates`: the rates are derived from the
published run times, and the assumptions are stated there and in the JSON).

    python benchmarks/input_pipeline.py --output=benchmarks/input_pipeline.json
"""

import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import common  # noqa: E402
import synthetic_inputs  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "benchmarks/input_pipeline.json", "Where to write the JSON results.")
flags.DEFINE_list("pipelines", ["imagenet", "cifar"], "Pipelines to time.")
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds; the median is reported.")
flags.DEFINE_integer("jpegs", 256, "JPEG files generated for the ImageNet pipeline.")
flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of the generated files.")
flags.DEFINE_integer("jpeg_shards", 4, "TFRecord files the JPEGs are written to.")
flags.DEFINE_integer("imagenet_batch_size", 256, "Batch of the ImageNet pipeline (the recipe's).")
flags.DEFINE_integer("imagenet_batches", 3, "ImageNet batches timed per sample.")
flags.DEFINE_integer("cifar_images", 10_000, "In-memory uint8 images of the CIFAR pipeline.")
flags.DEFINE_integer("cifar_batch_size", 128, "Batch of the CIFAR pipeline (the recipes').")
flags.DEFINE_integer("cifar_batches", 60, "CIFAR batches timed per sample.")
flags.DEFINE_integer("warmup", 2, "Untimed batches per sample after the iterator starts.")
flags.DEFINE_integer("shuffle_buffer", 10_000, "Shuffle buffer (TrainConfig's default).")
flags.DEFINE_integer("threads", None, "Thread count of the all-cores setting (default: nproc).")

IMAGE_SIZE = synthetic_inputs.IMAGE_SIZE

# The DEAT paper's run times (Wang et al., TMLR 2022), as the recipes cite them.
IMAGENET_TRAIN_IMAGES = 1_281_167
CIFAR10_TRAIN_IMAGES = 50_000


def required_rates():
    """Images per second the input pipeline must deliver in the paper's runs.

    A minibatch is read once and replayed r times, so the pipeline feeds the
    GPUs images at (GPU forward+backward passes per second) / r. Two rates per
    dataset, for the authors' whole machine (the number of GPUs is not used):

    - average: training images x epochs / published run time (M+DEAT);
    - peak, the epochs at r = 1: the pass rate of the fixed-replay run on the
      same GPUs (FREE-4 on ImageNet, FREE-8 on CIFAR-10: replays x images x
      epochs / run time), assuming an M+DEAT replay costs what a FREE replay
      costs (the same forward, backward and update). The published times
      include evaluation and any input waits, so the true step rates, and the
      rates needed, are somewhat higher.
    """
    imagenet_deat = 23 * IMAGENET_TRAIN_IMAGES / (34.3 * 3600)
    imagenet_free_passes = 4 * 23 * IMAGENET_TRAIN_IMAGES / (52.4 * 3600)
    cifar_deat = 50 * CIFAR10_TRAIN_IMAGES / (102.1 * 60)
    cifar_free_passes = 8 * 50 * CIFAR10_TRAIN_IMAGES / (162.4 * 60)
    return {
        "imagenet": [
            {
                "rate": "M+DEAT average",
                "images_per_second": imagenet_deat,
                "derivation": "23 epochs x 1,281,167 images / 34.3 h (ResNet-50, r <= 4)",
            },
            {
                "rate": "M+DEAT at r = 1 (peak)",
                "images_per_second": imagenet_free_passes,
                "derivation": "FREE-4 pass rate: 4 replays x 23 epochs x 1,281,167 images / 52.4 h",
            },
        ],
        "cifar": [
            {
                "rate": "M+DEAT average",
                "images_per_second": cifar_deat,
                "derivation": "50 epochs x 50,000 images / 102.1 min (PreAct-ResNet18, r <= 8)",
            },
            {
                "rate": "M+DEAT at r = 1 (peak)",
                "images_per_second": cifar_free_passes,
                "derivation": "FREE-8 pass rate: 8 replays x 50 epochs x 50,000 images / 162.4 min",
            },
        ],
    }


# ------------------------------------------------------------------ timing


def time_sample(dataset, batches, batch_size):
    """Wall and CPU seconds of `batches` batches from a fresh iterator, after the warm-up."""
    iterator = iter(dataset)
    for _ in range(FLAGS.warmup):
        next(iterator)
    sample = synthetic_inputs.time_batches(iterator, batches, batch_size)
    # Deleting the iterator stops its threads before the next configuration runs.
    del iterator
    return sample


def main(argv):
    del argv
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    cores = FLAGS.threads or os.cpu_count()
    directory = tempfile.mkdtemp(prefix="deat_tf_input_pipeline_")
    try:
        results = run(directory, cores)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    write(results)


def run(directory, cores):
    settings = {"1 thread": 1, f"{cores} threads": cores, "tf.data defaults (bin/train)": None}
    pipelines = {}
    jpeg_statistics = None
    for name in FLAGS.pipelines:
        if name == "imagenet":
            paths, jpeg_statistics = synthetic_inputs.write_jpeg_records(
                directory, FLAGS.jpegs, FLAGS.jpeg_quality, FLAGS.jpeg_shards
            )
            dataset = synthetic_inputs.training_pipeline(
                synthetic_inputs.imagenet_source(paths),
                "random_resized_crop_flip",
                FLAGS.imagenet_batch_size,
                FLAGS.shuffle_buffer,
            )
            batches, batch_size = FLAGS.imagenet_batches, FLAGS.imagenet_batch_size
        elif name == "cifar":
            dataset = synthetic_inputs.training_pipeline(
                synthetic_inputs.cifar_source(FLAGS.cifar_images),
                "crop_flip",
                FLAGS.cifar_batch_size,
                FLAGS.shuffle_buffer,
            )
            batches, batch_size = FLAGS.cifar_batches, FLAGS.cifar_batch_size
        else:
            raise ValueError(f"--pipelines: unknown pipeline {name!r}; use imagenet, cifar.")
        for setting, threads in settings.items():
            pipelines[(name, setting)] = (
                synthetic_inputs.with_threads(dataset, threads),
                batches,
                batch_size,
            )
    machine = common.machine_description()
    samples = {key: [] for key in pipelines}
    for round_index in range(FLAGS.rounds):
        for key, (dataset, batches, batch_size) in pipelines.items():
            samples[key].append(time_sample(dataset, batches, batch_size))
        print(f"round {round_index + 1}/{FLAGS.rounds} done", flush=True)
    rows = []
    for (name, setting), values in samples.items():
        threads = settings[setting]
        rates = [value["images"] / value["wall_seconds"] for value in values]
        per_cpu_second = [value["images"] / value["cpu_seconds"] for value in values]
        rate = statistics.median(rates)
        rows.append(
            {
                "pipeline": name,
                "setting": setting,
                "threads": threads,
                "images_per_second": rate,
                "images_per_second_per_thread": rate / threads if threads else None,
                "images_per_cpu_second": statistics.median(per_cpu_second),
                "cpu_cores_busy": statistics.median(
                    value["cpu_seconds"] / value["wall_seconds"] for value in values
                ),
                "samples": values,
            }
        )
    return {
        "description": (
            "Training input pipelines of deat_tf.datasets on this machine's CPU: images per "
            "second (wall), per thread, and per CPU-second of this process; cores needed to "
            "feed the DEAT paper's GPU runs = required images/s / images per CPU-second of "
            "the 1-thread setting."
        ),
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine,
        "settings": {
            "rounds": FLAGS.rounds,
            "warmup": FLAGS.warmup,
            "imagenet_batch_size": FLAGS.imagenet_batch_size,
            "imagenet_batches": FLAGS.imagenet_batches,
            "cifar_batch_size": FLAGS.cifar_batch_size,
            "cifar_batches": FLAGS.cifar_batches,
            "cifar_images": FLAGS.cifar_images,
            "shuffle_buffer": FLAGS.shuffle_buffer,
            "image_size": IMAGE_SIZE,
            "thread_settings": settings,
        },
        "jpegs": jpeg_statistics,
        "rows": rows,
        "cores_needed": cores_needed(rows),
    }


def cores_needed(rows):
    """Cores that feed the paper's runs, from the 1-thread images per CPU-second."""
    per_core = {
        row["pipeline"]: row["images_per_cpu_second"] for row in rows if row["threads"] == 1
    }
    needed = []
    for pipeline, rates in required_rates().items():
        if pipeline not in per_core:
            continue
        for rate in rates:
            needed.append(
                dict(
                    rate,
                    pipeline=pipeline,
                    images_per_cpu_second=per_core[pipeline],
                    cores=rate["images_per_second"] / per_core[pipeline],
                    cores_per_1000_images_per_second=1000 / per_core[pipeline],
                )
            )
    return {
        "assumptions": required_rates.__doc__.strip(),
        "rows": needed,
    }


def write(results):
    print(
        f"\n{'pipeline':<9} {'setting':<30} {'img/s':>9} {'img/s/thread':>13} "
        f"{'img/CPU-s':>10} {'cores busy':>10}"
    )
    for row in results["rows"]:
        per_thread = row["images_per_second_per_thread"]
        per_thread = "-" if per_thread is None else f"{per_thread:.0f}"
        print(
            f"{row['pipeline']:<9} {row['setting']:<30} {row['images_per_second']:>9.0f} "
            f"{per_thread:>13} {row['images_per_cpu_second']:>10.0f} {row['cpu_cores_busy']:>10.2f}"
        )
    print(f"\n{'pipeline':<9} {'rate':<24} {'img/s needed':>12} {'cores':>6}")
    for row in results["cores_needed"]["rows"]:
        print(
            f"{row['pipeline']:<9} {row['rate']:<24} {row['images_per_second']:>12.0f} "
            f"{row['cores']:>6.2f}"
        )
    common.write_json(FLAGS.output, results)


if __name__ == "__main__":
    app.run(main)
