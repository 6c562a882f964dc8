"""The workdir: checking it, atomic JSON and .keras writes."""

import json
import os

import keras
import pytest

from deat_tf import models, workdir


def test_write_json_never_leaves_a_half_written_file(tmp_path):
    path = str(tmp_path / "summary.json")
    workdir.write_json(path, {"status": "running", "value": float("nan")})
    with open(path) as stream:
        assert json.load(stream) == {"status": "running", "value": None}
    with pytest.raises(TypeError):
        workdir.write_json(path, {"status": "finished", "bad": object()})
    with open(path) as stream:
        assert json.load(stream)["status"] == "running"
    assert os.listdir(tmp_path) == ["summary.json"]


def test_save_keras_replaces_the_file_only_when_the_save_succeeds(tmp_path):
    path = str(tmp_path / "network.keras")
    network = models.mnist_cnn()
    workdir.save_keras(network, path)
    assert keras.saving.load_model(path).count_params() == network.count_params()

    class Unsavable:
        def save(self, temporary):
            with open(temporary, "w") as stream:
                stream.write("half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        workdir.save_keras(Unsavable(), path)
    assert keras.saving.load_model(path).count_params() == network.count_params()
    assert os.listdir(tmp_path) == ["network.keras"]


def test_check_workdir_accepts_new_and_empty_folders_only(tmp_path):
    assert workdir.check_workdir(str(tmp_path / "new" / "run")) == str(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "empty").mkdir()
    assert workdir.check_workdir(str(tmp_path / "empty")) == str(tmp_path / "empty")
    (tmp_path / "empty" / "file").write_text("x")
    with pytest.raises(ValueError, match="already holds files"):
        workdir.check_workdir(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="workdir is required"):
        workdir.check_workdir("")
