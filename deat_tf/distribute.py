"""Distribution strategies by name, as `bin/train` and `bin/evaluate` choose them."""

import tensorflow as tf

from deat_tf import checks, models

STRATEGIES = ("auto", "mirrored", "one_device")


def make_strategy(name="auto"):
    """The distribution strategy of a name.

    Args:
        name: "auto" (MirroredStrategy over all local GPUs when there are
            several, else the default strategy), "mirrored" (all local GPUs,
            or all logical CPUs when there is no GPU) or "one_device" (the
            first GPU, else the CPU).

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: For an unknown name.
    """
    checks.check_choice(name, STRATEGIES, "strategy")
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if name == "auto":
        return (
            tf.distribute.MirroredStrategy(gpus) if len(gpus) > 1 else tf.distribute.get_strategy()
        )
    if name == "mirrored":
        devices = gpus or [device.name for device in tf.config.list_logical_devices("CPU")]
        return mirrored_strategy(devices)
    return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")


def mirrored_strategy(devices):
    """MirroredStrategy over `devices`; on CPUs, gradients are summed on one of them.

    MirroredStrategy sums CPU gradients with collective ops by default, whose
    keys restart at every new strategy: in a process that builds several
    (tests, bin/evaluate after bin/train), a later model's sum can meet an
    earlier one's and fail with a shape mismatch. Logical CPUs share memory,
    so summing on one device costs nothing extra. GPUs keep NCCL.

    Args:
        devices: Device names.

    Returns:
        A `tf.distribute.MirroredStrategy`.
    """
    if all("CPU" in device.upper() for device in devices):
        return tf.distribute.MirroredStrategy(
            devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    return tf.distribute.MirroredStrategy(devices)


def check_attack_batch_norm(network, family, attack_batch_norm, strategy):
    """Refuses BatchNorm settings that an attack loop cannot run on several replicas.

    An attack of pgd, trades or mart runs in a `tf.while_loop`, where a
    cross-replica reduction cannot run: neither synchronised BatchNorm nor
    moving-statistics updates inside the attack (`attack_batch_norm="update"`,
    whose mirrored assignments are synchronisation points).

    Args:
        network: The classifier.
        family: The training method's family (`methods.FAMILIES`).
        attack_batch_norm: "stateless" or "update".
        strategy: The distribution strategy.

    Raises:
        ValueError: For either setting under several replicas.
    """
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return
    if attack_batch_norm == "update":
        raise ValueError(
            f"attack_batch_norm='update' works on one device only, got a strategy with "
            f"{replicas} replicas: a BatchNorm update inside the attack loop would need a "
            "cross-replica synchronisation there. Use attack_batch_norm='stateless' or one device."
        )
    synchronized = models.synchronized_batch_norm_layers(network)
    if family == "attack_then_update" and synchronized:
        raise ValueError(
            f"this method runs its attack in a loop that cannot synchronise BatchNorm across "
            f"{replicas} replicas; layers {', '.join(synchronized)} have synchronized=True: use "
            "per-replica BatchNorm (synchronized=False) or method deat."
        )


def device_names(strategy):
    """The devices a strategy trains on, for the run summary."""
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:
        # The default strategy places work on the first GPU, else the CPU.
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return [devices[0].name]
