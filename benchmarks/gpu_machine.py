"""The machine `benchmarks/gpu.py` runs on: the GPU TensorFlow sees, and its CPU's input rate.

- `describe_devices` / `device_line`: what TensorFlow sees (and, without a
  GPU, enough to tell why: the build's CUDA version and target GPUs, nvidia-smi);
- `peak_memory`: the GPU memory a configuration used at most;
- `time_pipelines`: images per second of deat_tf's CIFAR and ImageNet training
  streams on this machine's cores, on generated inputs (`synthetic_inputs`).
"""

import os
import shutil
import subprocess
import tempfile
import time

import synthetic_inputs


def describe_devices():
    """What TensorFlow sees, and why a GPU may be missing or slow to start.

    Uses only the first GPU when there are several (made the only visible one).

    Returns:
        A dict for the JSON; "gpu_name" is None without a GPU.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        tf.config.set_visible_devices(gpus[0], "GPU")
    build = dict(tf.sysconfig.get_build_info())
    device = {
        "tensorflow": tf.__version__,
        "physical_devices": [item.name for item in tf.config.list_physical_devices()],
        "gpus_found": len(gpus),
        "cuda_build": bool(build.get("is_cuda_build")),
        "cuda_version": build.get("cuda_version"),
        "cudnn_version": build.get("cudnn_version"),
        "built_for_compute_capabilities": build.get("cuda_compute_capabilities"),
        "nvidia_smi": nvidia_smi(),
        "gpu_name": None,
        "compute_capability": None,
        "tensor_float_32": tf.config.experimental.tensor_float_32_execution_enabled(),
    }
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        capability = details.get("compute_capability")
        device["gpu_name"] = details.get("device_name", "unknown GPU")
        device["compute_capability"] = list(capability) if capability else None
        built = device["built_for_compute_capabilities"] or []
        if capability and f"sm_{capability[0]}{capability[1]}" not in built:
            device["note"] = (
                f"this TensorFlow has no binary kernels for sm_{capability[0]}{capability[1]}: "
                "the driver compiles them from PTX at first use (can take minutes; cached)"
            )
        start = time.perf_counter()
        with tf.device("/GPU:0"):
            float(tf.reduce_sum(tf.ones([8, 8])))
        device["gpu_initialization_seconds"] = time.perf_counter() - start
    return device


def nvidia_smi():
    """nvidia-smi's view of the GPUs (name, memory, driver), or why there is none."""
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi not found"
    try:
        result = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"nvidia-smi failed: {error}"
    return (result.stdout or result.stderr).strip()


def device_line(device):
    """One line saying what TensorFlow sees."""
    build = (
        f"CUDA {device['cuda_version']} build for "
        f"{','.join(device['built_for_compute_capabilities'] or [])}"
        if device["cuda_build"]
        else "a build without CUDA"
    )
    if device["gpu_name"] is None:
        return (
            f"No GPU: TensorFlow {device['tensorflow']} ({build}) sees only "
            f"{', '.join(device['physical_devices'])}; nvidia-smi: {device['nvidia_smi']}"
        )
    capability = ".".join(str(part) for part in device["compute_capability"] or [])
    return (
        f"TensorFlow {device['tensorflow']} ({build}) sees {device['gpus_found']} GPU(s); "
        f"using GPU:0 {device['gpu_name']} (compute capability {capability}), "
        f"TF32 {'on' if device['tensor_float_32'] else 'off'}"
    )


def peak_memory(device):
    """(peak bytes in use on GPU:0 since the last reset, None) or (None, why not)."""
    import tensorflow as tf

    if device["gpu_name"] is None:
        return None, "no GPU: TensorFlow keeps allocator statistics for GPUs only"
    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"]), None


def time_pipelines(settings):
    """Images per second of deat_tf's CIFAR and ImageNet training streams on this machine's cores.

    Each stream runs with tf.data's defaults (as bin/train) and on one thread;
    after two untimed batches (the shuffle buffer fills), batches are pulled
    for `pipeline_seconds` (at least two).
    """
    directory = tempfile.mkdtemp(prefix="deat_tf_gpu_benchmark_")
    try:
        paths, jpegs = synthetic_inputs.write_jpeg_records(directory, settings["jpegs"], 90, 4)
        streams = {
            "imagenet": (
                synthetic_inputs.imagenet_source(paths),
                "random_resized_crop_flip",
                settings["imagenet_batch_size"],
            ),
            "cifar": (
                synthetic_inputs.cifar_source(settings["cifar_images"]),
                "crop_flip",
                settings["cifar_batch_size"],
            ),
        }
        rows = []
        for name, (source, augmentation, batch) in streams.items():
            dataset = synthetic_inputs.training_pipeline(
                source, augmentation, batch, settings["shuffle_buffer"]
            )
            for setting, threads in (("tf.data defaults (bin/train)", None), ("1 thread", 1)):
                iterator = iter(synthetic_inputs.with_threads(dataset, threads))
                for _ in range(2):
                    next(iterator)
                total = {"images": 0, "wall_seconds": 0.0, "cpu_seconds": 0.0, "batches": 0}
                while total["batches"] < 2 or total["wall_seconds"] < settings["pipeline_seconds"]:
                    sample = synthetic_inputs.time_batches(iterator, 1, batch)
                    for key in ("images", "wall_seconds", "cpu_seconds"):
                        total[key] += sample[key]
                    total["batches"] += 1
                del iterator
                rows.append(
                    {
                        "pipeline": name,
                        "setting": setting,
                        "batch_size": batch,
                        **total,
                        "images_per_second": total["images"] / total["wall_seconds"],
                        "images_per_cpu_second": total["images"] / max(total["cpu_seconds"], 1e-9),
                    }
                )
                print(
                    f"input pipeline {name}, {setting}: {rows[-1]['images_per_second']:.0f} img/s",
                    flush=True,
                )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"jpegs": jpegs, "cpu_count": os.cpu_count(), "rows": rows}
