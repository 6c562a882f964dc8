"""Distribution strategies by name, as `bin/train` and `bin/evaluate` choose them.

Several machines use TensorFlow's own engine, `MultiWorkerMirroredStrategy`,
with the cluster from the `TF_CONFIG` environment variable, or from Slurm's
variables when a job step runs under `srun` without `TF_CONFIG`. Every worker
runs the same command; the chief (task 0) writes the run's outputs.
"""

import json
import math
import os

import numpy as np
import tensorflow as tf

from deat_tf import checks, models

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")


def make_strategy(name="auto"):
    """The distribution strategy of a name.

    Args:
        name: "auto" (MirroredStrategy over all local GPUs when there are
            several, else the default strategy), "mirrored" (all local GPUs,
            or all logical CPUs when there is no GPU), "one_device" (the
            first GPU, else the CPU) or "multi_worker" (all GPUs, else the
            CPU, of every machine of the cluster; see the module docstring).

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: For an unknown name, or multi_worker without a cluster.
    """
    checks.check_choice(name, STRATEGIES, "strategy")
    if name == "multi_worker":
        # Before anything else touches the devices: the collective runtime is
        # configured when the strategy is created.
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=_cluster_resolver())
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if name == "auto":
        return (
            tf.distribute.MirroredStrategy(gpus) if len(gpus) > 1 else tf.distribute.get_strategy()
        )
    if name == "mirrored":
        devices = gpus or [device.name for device in tf.config.list_logical_devices("CPU")]
        return mirrored_strategy(devices)
    return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")


def _cluster_resolver():
    if os.environ.get("TF_CONFIG"):
        try:
            cluster = json.loads(os.environ["TF_CONFIG"])["cluster"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(
                "strategy multi_worker: TF_CONFIG must be JSON with a 'cluster' and a 'task', e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}.'
            ) from None
        if not cluster:
            raise ValueError("strategy multi_worker: TF_CONFIG's cluster is empty.")
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if os.environ.get("SLURM_PROCID") is not None and os.environ.get("SLURM_STEP_NODELIST"):
        return tf.distribute.cluster_resolver.SlurmClusterResolver()
    raise ValueError(
        "strategy multi_worker needs the cluster: set TF_CONFIG on every worker (see "
        "docs/training.md, 'Several machines') or run the workers as one Slurm job step with srun."
    )


def is_multi_worker(strategy):
    """Whether the strategy spans several workers' processes."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def first_replica_values(strategy, structure):
    """The structure with every per-replica value replaced by this worker's first replica's."""

    def first(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return tf.nest.map_structure(first, structure)


def is_chief(strategy):
    """Whether this process writes the run's outputs (always, but for non-chief workers)."""
    return bool(strategy.extended.should_checkpoint)


def worker_count(strategy):
    """How many processes (machines) train together: the cluster's workers, else 1."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not is_multi_worker(strategy) or resolver is None:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return sum(len(cluster.get(job, ())) for job in ("chief", "worker")) or 1


def check_workers_agree(strategy, value, what):
    """Raises unless every worker of a cluster holds the same integer `value`.

    Workers decide from the workdir whether a run is new, resumed or finished,
    and where it resumes; a workdir that only the chief can read (a local
    disk) would let the others start over while it resumes.

    Args:
        strategy: The distribution strategy (others than multi-worker pass).
        value: This worker's integer.
        what: What the value means, for the message.

    Raises:
        ValueError: If the workers disagree.
    """
    if not is_multi_worker(strategy):
        return
    local = strategy.run(lambda: tf.constant([value], tf.int64))
    values = sorted(set(strategy.gather(local, axis=0).numpy().tolist()))
    if len(values) > 1:
        raise ValueError(
            f"strategy multi_worker: the workers disagree on {what} ({values}); the workdir "
            "must be one folder that every worker reads (a shared filesystem or gs://)."
        )


def training_input(strategy, make_dataset, global_batch_size):
    """The training dataset as the strategy should read it.

    Under a multi-worker strategy each worker keeps its own contiguous part of
    every global batch, split into its replicas' batches, so replica i trains
    on examples [i * b, (i + 1) * b) of each global batch, as under
    MirroredStrategy or on one device: with the random starts drawn for the
    global batch and sliced by replica, N workers train on exactly the batches
    and starts one process would. The other examples are dropped before they
    are decoded, but every worker still reads (and shuffles) the whole stream.
    TensorFlow's automatic sharding would instead give each worker every N-th
    file or example.

    Args:
        strategy: The distribution strategy.
        make_dataset: Function part -> dataset of batches (images, labels),
            where part = (first, size) keeps examples [first, first + size) of
            each global batch and None keeps whole batches
            (`datasets.Pipelines.training` with its initial epoch bound).
        global_batch_size: Examples per global batch.

    Returns:
        The dataset of global batches, or a distributed dataset for `Model.fit`.
    """
    if not is_multi_worker(strategy):
        return make_dataset(None)
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(context):
        local_replicas = replicas // context.num_input_pipelines
        per_replica = context.get_per_replica_batch_size(global_batch_size)
        size = local_replicas * per_replica
        dataset = make_dataset((context.input_pipeline_id * size, size))

        def replica_batches(images, labels):
            return tf.data.Dataset.from_tensor_slices(
                (
                    tf.reshape(
                        images, tf.concat([[local_replicas, per_replica], tf.shape(images)[1:]], 0)
                    ),
                    tf.reshape(labels, [local_replicas, per_replica]),
                )
            )

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return dataset.flat_map(replica_batches).with_options(options)

    return strategy.distribute_datasets_from_function(dataset_fn)


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


def per_replica_share(loss):
    """Divides a batch-mean loss by the replica count, as Keras losses do,
    so that gradients summed over replicas are those of the global mean."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss


def unscale_for_distribution(loss):
    """Keras losses divide by the replica count; the logged loss should not."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss * tf.cast(replicas, loss.dtype) if replicas > 1 else loss


def fill_every_replica(x, y, global_batch, replicas, kwargs):
    """Arrays whose last minibatch has at least one example per replica.

    A minibatch smaller than the replica count leaves a replica an empty
    batch, whose losses are 0 / 0 and which some CPU convolution kernels
    reject. As PyTorch's DistributedSampler does, the epoch is padded with
    its first examples (at most replicas - 1 of them). `validation_split` is
    applied first, as Keras would (the last fraction of the arrays), so that
    the padding stays in the training part.

    Args:
        x: Training images (arrays).
        y: Labels.
        global_batch: The global minibatch size.
        replicas: The replica count.
        kwargs: fit's other arguments (validation_split, validation_data,
            sample_weight are read).

    Returns:
        (x, y, kwargs) to give fit.
    """
    examples = int(x.shape[0])
    # Keras ignores validation_split when validation_data is given.
    split = 0.0 if kwargs.get("validation_data") is not None else kwargs.get("validation_split")
    split = split or 0.0
    remainder = int(math.floor(examples * (1.0 - split))) % global_batch
    if replicas < 2 or not 0 < remainder < replicas:
        return x, y, kwargs
    x, y = np.asarray(x), np.asarray(y)
    weights = kwargs.get("sample_weight")
    weights = None if weights is None else np.asarray(weights)
    kwargs = dict(kwargs)
    if split:
        at = int(math.floor(examples * (1.0 - split)))
        validation = (x[at:], y[at:]) if weights is None else (x[at:], y[at:], weights[at:])
        kwargs.update(validation_split=0.0, validation_data=validation)
        x, y = x[:at], y[:at]
        weights = None if weights is None else weights[:at]
    extra = replicas - remainder
    x, y = np.concatenate([x, x[:extra]]), np.concatenate([y, y[:extra]])
    if weights is not None:
        kwargs["sample_weight"] = np.concatenate([weights, weights[:extra]])
    return x, y, kwargs
