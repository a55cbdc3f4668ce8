"""train_bc.py --cameras / --lowdim_keys: the observations a Lift policy reads, so that a
study can set its camera policies against a blind one (proprioception only) and an
object-state one (the cube's pose, as robomimic's low-dim agents read it)."""

from __future__ import annotations

import json

import pytest
import torch

import train_bc
from envs import bc_tasks
from envs.lift.dataset import IMAGE_KEYS, make_data
from envs.lift.env import LOWDIM_KEYS
from tests.test_fbc import CPU
from tests.test_fbc_ema_valid import IMAGE, TINY, register_split_task, write_split
from training.ranges import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OBJECT_STATE = ["--cameras", "--lowdim_keys", *LOWDIM_KEYS, "object"]


@pytest.fixture
def obs_task(monkeypatch):
    """lift-split (the real Lift data module at 32x32) with the Lift tasks' observation keys."""
    register_split_task(monkeypatch, image_keys=None, lowdim_keys=None)


def options(*flags: str, env: str = "lift-split") -> dict:
    cfg = train_bc.parse_args([f"--env_name={env}", *flags])
    return train_bc.data_options(cfg, bc_tasks.get_bc_task(env))


def test_flags_choose_the_keys_the_data_reads(obs_task):
    default = options()
    assert default["image_keys"] is None and default["lowdim_keys"] is None
    assert options("--cameras", "agentview")["image_keys"] == ("agentview_image",)
    blind = options("--cameras")
    assert blind["image_keys"] == () and blind["lowdim_keys"] is None
    object_state = options(*OBJECT_STATE)
    assert object_state["image_keys"] == ()
    assert object_state["lowdim_keys"] == (*LOWDIM_KEYS, "object")
    # Every registered Lift task takes them, with the data function's defaults.
    for name in ("lift-scripted-image", "lift-scripted-mh-image", "lift-ph-image"):
        task = bc_tasks.get_bc_task(name)
        assert task.data_options["image_keys"] is None and task.data_options["lowdim_keys"] is None


def test_bad_keys_are_one_line_errors_at_parse(obs_task):
    for flags, message in [
        (["--cameras", "agentview_image"], "--cameras takes camera names, not image keys: use "
                                           "agentview"),
        (["--cameras", "--lowdim_keys"], "--cameras and --lowdim_keys are both empty: the "
                                         "policy would see nothing"),
    ]:
        with pytest.raises(ConfigError) as err:
            train_bc.parse_args(["--env_name=lift-split", *flags])
        assert message in str(err.value) and "\n" not in str(err.value)


def test_tasks_without_observation_keys_refuse_the_flags():
    for flags in (["--cameras", "agentview"], ["--lowdim_keys", "object"]):
        with pytest.raises(ValueError, match="has no observation keys to choose; drop the flag"):
            options(*flags, env="darkroom")


def test_data_reads_only_the_chosen_keys(tmp_path):
    path = write_split(tmp_path / "d.hdf5")
    data = make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path, chunk_length=4,
                     image_size=IMAGE, image_keys=(), lowdim_keys=("robot0_eef_pos", "object"))
    assert data.spec.image_keys == () and data.spec.lowdim_dims == {"robot0_eef_pos": 3,
                                                                     "object": 10}
    assert set(data.sample(3, torch.Generator().manual_seed(0))) == {
        "obs/robot0_eef_pos", "obs/object", "actions", "index"}
    default = make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path, chunk_length=4,
                        image_size=IMAGE)
    assert default.spec.image_keys == IMAGE_KEYS and default.spec.lowdim_keys == LOWDIM_KEYS


def test_a_missing_key_fails_at_start_in_one_line(tmp_path, obs_task):
    path = write_split(tmp_path / "d.hdf5")
    out = tmp_path / "run"
    with pytest.raises(ValueError) as err:
        train_bc.train(train_bc.parse_args([*TINY, f"--dataset={path}", f"--output_dir={out}",
                                            "--lowdim_keys", "robot0_joint_pos"]))
    assert "has no 'robot0_joint_pos'" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


def test_an_object_state_policy_trains_without_a_resnet(tmp_path, obs_task):
    path = write_split(tmp_path / "d.hdf5")
    out = tmp_path / "run"
    cfg = train_bc.parse_args([*TINY, *OBJECT_STATE, f"--dataset={path}", f"--output_dir={out}",
                               "--offline_steps=3"])
    train_bc.train(cfg)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    params = next(r for r in records if "params/total" in r)
    assert params["params/encoder/bodies/total"] == 0
    losses = [r["train/flow_loss"] for r in records if "train/flow_loss" in r]
    assert len(losses) == 3
    config = json.loads((out / "config.json").read_text())
    assert config["cameras"] == [] and config["lowdim_keys"] == [*LOWDIM_KEYS, "object"]
