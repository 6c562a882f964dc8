"""Two worker processes on this machine (MultiWorkerMirroredStrategy) against one process.

The two workers train on exactly the batches and random starts of the single
process (each keeps its contiguous half of every global batch, see
`distribute.training_input`), so the per-epoch r/K must be equal and the
losses and statistic equal up to the rounding of a different summation order.
"""

import json
import os
import signal
import socket

import pytest
from train_process import start_train

ARGUMENTS = (
    "--config=configs/mnist_demo.py",
    "--epochs=2",
    "--steps_per_epoch=8",
    "--batch_size=64",
    "--validation_size=64",
    "--validation_attack_steps=3",
    "--test_examples=64",
    "--train_accuracy_examples=64",
    "--noprogress_bar",
    "--deterministic",
)
TIMEOUT = 240


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for each in sockets:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in sockets]
    finally:
        for each in sockets:
            each.close()


def start(workdir, environment_changes, *extra):
    return start_train(workdir, [*ARGUMENTS, *extra], environment_changes)


def start_workers(workdirs, temporary=None, extra=()):
    """Starts one worker of a new local cluster per workdir (the first is the chief).

    `temporary`, if given, becomes the workers' TMPDIR; `extra` are more arguments.
    """
    workers = [f"127.0.0.1:{port}" for port in free_ports(len(workdirs))]
    return [
        start(
            workdir,
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
                ),
                **({"TMPDIR": temporary} if temporary else {}),
            },
            "--strategy=multi_worker",
            *extra,
        )
        for index, workdir in enumerate(workdirs)
    ]


def finish(processes):
    """Waits for every process (killing all if one hangs); returns their outputs."""
    outputs = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=TIMEOUT)
            outputs.append(output)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outputs


def summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as stream:
        return json.load(stream)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi_worker")
    single = str(folder / "single")
    cluster = str(folder / "cluster")
    temporary = folder / "tmp"
    temporary.mkdir()
    processes = [start(single, {})] + start_workers([cluster, cluster], str(temporary))
    outputs = finish(processes)
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return single, cluster, outputs, temporary


def test_two_workers_train_like_one_process(runs):
    single, cluster, outputs, temporary = runs
    expected, actual = summary(single), summary(cluster)
    assert actual["status"] == "finished"
    assert (actual["run"]["replicas"], actual["run"]["workers"]) == (2, 2)
    assert (expected["run"]["replicas"], expected["run"]["workers"]) == (1, 1)
    assert [record["attack_steps"] for record in actual["epochs"]] == [
        record["attack_steps"] for record in expected["epochs"]
    ]
    for first, second in zip(expected["epochs"], actual["epochs"]):
        fields = (
            "loss",
            "grad_magnitude",
            "threshold",
            "adv_accuracy",
            "val_loss",
            "val_robust_accuracy",
        )
        for field in fields:
            # The first epoch has no threshold yet.
            expected_value = first.get(field)
            if expected_value is not None:
                expected_value = pytest.approx(expected_value, rel=1e-4)
            assert second.get(field) == expected_value, (first["epoch"], field)
    # The chief wrote the run; the other worker spoke no epoch line and left
    # nothing of its own outputs behind.
    assert sum("epoch   2/2" in output for output in outputs[1:]) == 1
    assert not [name for name in os.listdir(temporary) if name.startswith("deat_tf_worker_")]
    assert {"model.keras", "best_network.keras", "summary.json", "config.json"} <= set(
        os.listdir(cluster)
    )
    assert actual["test"]["best"]["examples"] == 64


def test_a_finished_cluster_run_is_not_trained_again(runs):
    _, cluster, _, _ = runs
    before = summary(cluster)
    processes = start_workers([cluster, cluster])
    outputs = finish(processes)
    assert all(process.returncode == 0 for process in processes), outputs
    assert all("already finished" in output for output in outputs)
    assert summary(cluster) == before


def test_workers_that_see_different_workdirs_stop_with_an_error(runs, tmp_path):
    # A workdir on each machine's own disk: the chief finds the finished run,
    # the other worker an empty folder.
    _, cluster, _, _ = runs
    processes = start_workers([cluster, str(tmp_path / "local")])
    outputs = finish(processes)
    for process, output in zip(processes, outputs):
        assert process.returncode == 1, output[-3000:]
        assert "the workers disagree on whether the workdir's run is new or done" in output
        assert "shared filesystem" in output
    assert not os.listdir(tmp_path)


def test_multi_worker_without_a_cluster_is_a_one_line_error(tmp_path):
    process = start(str(tmp_path / "run"), {}, "--strategy=multi_worker")
    (output,) = finish([process])
    assert process.returncode == 1
    assert (
        output.strip()
        .splitlines()[-1]
        .startswith("bin/train: error: strategy multi_worker needs the cluster")
    )


def test_a_signal_to_one_worker_stops_both_at_the_same_minibatch_and_both_resume(runs, tmp_path):
    _, cluster, _, _ = runs
    workdir = str(tmp_path / "preempted")
    chief, other = start_workers([workdir, workdir], extra=["--checkpoint_every_steps=2"])
    lines = []
    try:
        for line in chief.stdout:
            lines.append(line)
            # Inside epoch 1 with 6 minibatches to go: SIGTERM to the other worker only.
            if line.startswith("deat_tf: checkpoint at epoch 1, minibatch 2"):
                other.send_signal(signal.SIGTERM)
                break
    finally:
        outputs = finish([chief, other])
    chief_output = "".join(lines) + outputs[0]
    # The workers agree at each minibatch end: both stop there, with one checkpoint.
    assert (chief.returncode, other.returncode) == (128 + signal.SIGTERM,) * 2, (
        chief_output[-3000:],
        outputs[1][-3000:],
    )
    stopped = [line for line in chief_output.splitlines() if "interrupted at" in line]
    assert len(stopped) == 1 and stopped[0].startswith(
        "bin/train: interrupted at epoch 1, minibatch "
    ), stopped
    minibatch = int(stopped[0].split("minibatch ")[1].split(":")[0])
    assert 2 <= minibatch < 8
    stored = summary(workdir)
    assert stored["status"] == "interrupted"
    assert stored["interrupted"] == {"signal": "SIGTERM", "epoch": 1, "minibatch": minibatch}
    # The same command on both resumes there and trains the uninterrupted run.
    processes = start_workers([workdir, workdir])
    outputs = finish(processes)
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    assert f"in epoch 1 after minibatch {minibatch} of 8" in outputs[0]
    expected, actual = summary(cluster), summary(workdir)
    assert actual["status"] == "finished"
    for first, second in zip(expected["epochs"], actual["epochs"], strict=True):
        for field in ("attack_steps", "loss", "grad_magnitude", "threshold", "val_robust_accuracy"):
            assert second.get(field) == first.get(field), (first["epoch"], field)
