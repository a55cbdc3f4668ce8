"""Both generations of robomimic files: robosuite 1.4 (flat OSC_POSE) and 1.5 (composite).

Each file's env_args is normalised for the installed robosuite, an env built from it
steps, a file that cannot run fails at check_dataset in one line, and a demo's model_file
that does not compile here (the other generation's mesh paths) falls back to the env's
own model with the state restored. The tests run under either robosuite; the last one only
under 1.5.x.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from envs.lift.dataset import check_dataset
from envs.lift.env import LOWDIM_KEYS, LiftEnv, default_env_args
from envs.lift.env_args import (
    controller_config,
    installed_robosuite_version,
    normalize_env_args,
    read_arm_controller,
    robosuite_generation,
)

INSTALLED = robosuite_generation(installed_robosuite_version())


def old_env_args() -> dict:
    """robomimic's original lift env_args (robosuite 1.4), no cameras."""
    return default_env_args(cameras=())


def v15_env_args(input_type: str = "delta", ref_frame: str = "base") -> dict:
    """A robomimic v1.5 lift env_args (robosuite 1.5): composite controller, new kwargs."""
    right = {
        "type": "OSC_POSE",
        "input_max": 1,
        "input_min": -1,
        "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
        "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
        "kp": 150,
        "damping_ratio": 1,
        "impedance_mode": "fixed",
        "kp_limits": [0, 300],
        "damping_ratio_limits": [0, 10],
        "position_limits": None,
        "orientation_limits": None,
        "uncouple_pos_ori": True,
        "input_type": input_type,
        "input_ref_frame": ref_frame,
        "interpolation": None,
        "ramp_ratio": 0.2,
        "gripper": {"type": "GRIP"},
    }
    return {
        "env_name": "Lift",
        "env_version": "1.5.1",
        "type": 1,
        "env_kwargs": {
            "has_renderer": False,
            "has_offscreen_renderer": False,
            "ignore_done": True,
            "use_object_obs": True,
            "use_camera_obs": False,
            "control_freq": 20,
            "controller_configs": {"type": "BASIC", "body_parts": {"right": right}},
            "robots": ["Panda"],
            "camera_depths": False,
            "camera_heights": 84,
            "camera_widths": 84,
            "lite_physics": False,
            "reward_shaping": False,
            "seed": 1,
        },
    }


GENERATIONS = {"robosuite_1.4": old_env_args, "robosuite_1.5": v15_env_args}


def write_file(path: Path, env_args: dict, action_dim: int = 7, length: int = 6) -> Path:
    """A low-dim robomimic-layout file (one demo) carrying these env_args."""
    rng = np.random.default_rng(0)
    dims = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2, "object": 10}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(env_args)
        data.attrs["total"] = length
        demo = data.create_group("demo_0")
        demo.attrs["num_samples"] = length
        demo.create_dataset("actions", data=rng.uniform(-1, 1, size=(length, action_dim)))
        demo.create_dataset("states", data=rng.normal(size=(length, 32)))
        for key, dim in dims.items():
            demo.create_dataset(f"obs/{key}", data=rng.normal(size=(length, dim)))
    return path


def check(path: Path) -> dict:
    return check_dataset(path, (), LOWDIM_KEYS, 84)


# -- normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize("make", GENERATIONS.values(), ids=GENERATIONS.keys())
def test_both_generations_normalize_for_the_installed_robosuite(make):
    kwargs, _ = normalize_env_args(make())
    arm = read_arm_controller(kwargs["controller_configs"])
    assert arm.generation == INSTALLED
    assert (arm.type, arm.absolute) == ("OSC_POSE", False)
    if INSTALLED == "1.4":
        # What 1.4's controller_factory reads; a composite failed with KeyError here.
        assert kwargs["controller_configs"]["interpolation"] is None
        assert kwargs["controller_configs"]["control_delta"] is True
        assert "lite_physics" not in kwargs and "seed" not in kwargs
    else:
        assert kwargs["controller_configs"]["type"] == "BASIC"
        assert kwargs["lite_physics"] is False


def test_conversions_both_ways_keep_delta_or_absolute():
    old = old_env_args()["env_kwargs"]["controller_configs"]
    as_15 = controller_config(read_arm_controller(old), "1.5")
    right = as_15["body_parts"]["right"]
    assert (as_15["type"], right["input_type"], right["input_ref_frame"]) == (
        "BASIC", "delta", "world",  # robosuite 1.4 worked in world coordinates
    )
    assert "control_delta" not in right and right["gripper"] == {"type": "GRIP"}
    # Round trip: back to 1.4, the same controller as the file's.
    assert controller_config(read_arm_controller(as_15), "1.4") == old

    absolute_old = dict(old, control_delta=False)
    right = controller_config(read_arm_controller(absolute_old), "1.5")["body_parts"]["right"]
    assert (right["input_type"], right["input_ref_frame"]) == ("absolute", "world")

    v15 = v15_env_args("absolute", "world")["env_kwargs"]["controller_configs"]
    flat = controller_config(read_arm_controller(v15), "1.4")
    assert flat["control_delta"] is False and "input_type" not in flat and "gripper" not in flat
    # A v1.5 config missing keys gets robosuite's defaults (1.4 needs `interpolation`).
    sparse = {"type": "BASIC", "body_parts": {"arms": {"right": {"type": "OSC_POSE"}}}}
    assert controller_config(read_arm_controller(sparse), "1.4") == old


def test_notes_say_what_was_converted_and_dropped():
    _, notes = normalize_env_args(v15_env_args(), robosuite_version="1.4.1")
    assert any("robosuite 1.5's OSC_POSE, delta actions in the base frame" in n for n in notes)
    _, notes = normalize_env_args(old_env_args(), robosuite_version="1.5.2")
    assert any("lite_physics=False" in n for n in notes)
    kwargs, notes = normalize_env_args(v15_env_args(), robosuite_version=f"{INSTALLED}.0")
    if INSTALLED == "1.4":
        assert any("['lite_physics', 'seed']" in n for n in notes)
        assert "seed" not in kwargs


def _edit(env_args: dict, **kwargs) -> dict:
    env_args = copy.deepcopy(env_args)
    env_args["env_kwargs"].update(kwargs)
    return env_args


UNRUNNABLE = {
    "unknown_env": (dict(old_env_args(), env_name="NoSuchLift"), "names env 'NoSuchLift'"),
    "two_robots": (_edit(old_env_args(), robots=["Panda", "Panda"]), "one single-arm robot"),
    "two_arm_robot": (_edit(old_env_args(), robots=["Baxter"]), "one single-arm robot"),
    "joint_controller": (
        _edit(old_env_args(), controller_configs={"type": "JOINT_VELOCITY"}),
        "'JOINT_VELOCITY' is not supported",
    ),
    "whole_body_ik": (
        _edit(v15_env_args(), controller_configs={"type": "WHOLE_BODY_IK", "body_parts": {}}),
        "composite controller 'WHOLE_BODY_IK'",
    ),
    "extra_body_part": (
        _edit(
            v15_env_args(),
            controller_configs={
                "type": "BASIC",
                "body_parts": {"right": {"type": "OSC_POSE"}, "torso": {"type": "JOINT_POSITION"}},
            },
        ),
        "body parts ['right', 'torso']",
    ),
    "variable_impedance": (
        _edit(
            old_env_args(),
            controller_configs={"type": "OSC_POSE", "impedance_mode": "variable"},
        ),
        "impedance_mode 'variable'",
    ),
    "not_robosuite": (dict(old_env_args(), type=2), "not a robosuite env"),
    "no_controller": (_edit(old_env_args(), controller_configs=None), "not a robosuite"),
}


@pytest.mark.parametrize("name", UNRUNNABLE)
def test_unrunnable_file_fails_at_check_dataset_in_one_line(tmp_path, name):
    env_args, expected = UNRUNNABLE[name]
    with pytest.raises(ValueError) as err:
        check(write_file(tmp_path / f"{name}.hdf5", env_args))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"dataset {tmp_path}")
    assert expected in message


def test_absolute_base_frame_goals_cannot_run_on_robosuite_14():
    with pytest.raises(ValueError, match="absolute goals in the robot base frame") as err:
        normalize_env_args(v15_env_args("absolute", "base"), robosuite_version="1.4.1")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="robosuite 2.0.0 is not supported"):
        normalize_env_args(old_env_args(), robosuite_version="2.0.0")


@pytest.mark.parametrize("make", GENERATIONS.values(), ids=GENERATIONS.keys())
def test_check_dataset_accepts_both_generations_and_checks_action_size(tmp_path, make):
    env_args = check(write_file(tmp_path / "ok.hdf5", make()))
    assert env_args == make()  # the file's own env_args, as stored
    with pytest.raises(ValueError, match="4-dim but its env .*OSC_POSE controller.* 7-dim"):
        check(write_file(tmp_path / "bad.hdf5", make(), action_dim=4))


# -- envs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", GENERATIONS.values(), ids=GENERATIONS.keys())
def test_env_from_either_generation_steps(make):
    env = LiftEnv(make(), use_images=False)
    try:
        assert env.action_dim == 7
        obs = env.reset(seed=3)
        start = obs["robot0_eef_pos"].copy()
        up = np.zeros(7)
        up[2] = 1.0
        for _ in range(5):
            obs, _, done, _ = env.step(up)
        assert obs["robot0_eef_pos"][2] > start[2] + 0.02  # deltas, world z up
        assert not done and env.get_state().shape == (32,)
    finally:
        env.close()


def test_seeded_reset_fixes_cube_and_placement_on_the_installed_robosuite():
    env = LiftEnv(old_env_args(), use_images=False)
    try:
        first = [(env.reset(seed=s)["object"].copy(), env.cube_half_size()) for s in (5, 6)]
        np.random.seed(123)  # whatever state the global rng is in
        again = env.reset(seed=5)["object"]
        np.testing.assert_array_equal(again, first[0][0])
        np.testing.assert_array_equal(env.cube_half_size(), first[0][1])
        assert not np.allclose(first[0][0][:3], first[1][0][:3])
    finally:
        env.close()


def _other_generations_model_file(model_xml: str) -> str:
    """The env's model with mesh files that this robosuite does not have, as a model_file
    of the other generation has (1.4 bases/meshes/rethink_mount, 1.5 mounts/meshes/...)."""
    return re.sub(r'file="([^"]*)/meshes/', r'file="\1/meshes_of_another_robosuite/', model_xml)


def test_model_file_that_does_not_load_falls_back_with_the_state_restored():
    source = LiftEnv(old_env_args(), use_images=False)
    target = LiftEnv(old_env_args(), use_images=False)
    try:
        source.reset(seed=11)
        for _ in range(3):
            source.step(np.r_[0.3, 0.0, -0.2, 0.0, 0.0, 0.0, -1.0])
        state = source.get_state()
        bad_xml = _other_generations_model_file(source.model_xml())
        assert bad_xml != source.model_xml()
        target.reset(seed=12)
        own_xml, own_size = target.model_xml(), target.cube_half_size()
        assert not np.allclose(own_size, source.cube_half_size())
        with pytest.warns(RuntimeWarning, match="model_file does not load .*Error opening file"):
            target.reset_to(state, model_xml=bad_xml)
        np.testing.assert_array_equal(target.get_state(), state)
        assert target.model_xml() == own_xml
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # one warning per env, not one per demo
            target.reset_to(state, model_xml=bad_xml)
        target.step(np.zeros(7))  # the env still runs
        np.testing.assert_array_equal(target.cube_half_size(), own_size)  # ours, not the demo's
        # A model_file that loads is still used: the demo's cube.
        target.reset_to(state, model_xml=source.model_xml())
        np.testing.assert_array_equal(target.cube_half_size(), source.cube_half_size())
        np.testing.assert_array_equal(target.get_state(), state)
    finally:
        source.close()
        target.close()


@pytest.mark.slow
def test_v15_file_renders_camera_observations():
    env_args = _edit(v15_env_args(), camera_names=["agentview"], use_camera_obs=True)
    env = LiftEnv(env_args)
    try:
        obs = env.reset(seed=0)
        assert obs["agentview_image"].shape == (84, 84, 3)
        obs, *_ = env.step(np.zeros(7))
        assert obs["agentview_image"].std() > 0
    finally:
        env.close()


# -- robosuite 1.5 only -------------------------------------------------------------------


@pytest.mark.skipif(INSTALLED != "1.5", reason="needs robosuite 1.5.x installed")
def test_robosuite_15_runs_old_configs_as_its_refactor_would_with_delta_kept():
    from robosuite.controllers.composite.composite_controller_factory import (
        refactor_composite_controller_config,
    )

    old = old_env_args()["env_kwargs"]["controller_configs"]
    ours = normalize_env_args(old_env_args())[0]["controller_configs"]
    theirs = refactor_composite_controller_config(copy.deepcopy(old), "Panda", ["right"])
    frame_keys = ("control_delta", "input_type", "input_ref_frame")
    strip = {k: v for k, v in theirs["body_parts"]["right"].items() if k not in frame_keys}
    assert {k: v for k, v in ours["body_parts"]["right"].items() if k not in frame_keys} == strip
    assert ours["type"] == theirs["type"] and set(ours["body_parts"]) == set(theirs["body_parts"])

    env = LiftEnv(v15_env_args(), use_images=False)
    try:
        env.reset(seed=0)
        arm = env.env.robots[0].part_controllers["right"]
        assert (arm.input_type, arm.input_ref_frame) == ("delta", "base")
        # The base is not rotated: 1.5's base-frame deltas are 1.4's world-frame deltas.
        np.testing.assert_allclose(arm.origin_ori, np.eye(3), atol=1e-12)
    finally:
        env.close()
    absolute = _edit(old_env_args(), controller_configs=dict(old, control_delta=False))
    env = LiftEnv(absolute, use_images=False)
    try:
        arm = env.env.robots[0].part_controllers["right"]
        assert (arm.input_type, arm.input_ref_frame) == ("absolute", "world")
    finally:
        env.close()


# -- training and evaluating on either generation's file ------------------------------------


def image_file(path: Path, env_args: dict, size: int = 32, lengths=(9, 7, 8)) -> Path:
    """A robomimic-layout image file (random frames at `size`) carrying these env_args, with
    the cameras switched on as an image file's env_args has them."""
    from envs.lift.demos import RobomimicWriter
    from envs.lift.env import CAMERAS

    env_args = json.loads(json.dumps(env_args))
    env_args["env_kwargs"].update(
        has_offscreen_renderer=True, use_camera_obs=True, camera_names=list(CAMERAS),
        camera_heights=size, camera_widths=size)
    rng = np.random.default_rng(0)
    dims = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2, "object": 10}
    writer = RobomimicWriter(path, env_args)
    for n in lengths:
        obs = {k: rng.normal(size=(n, d)) for k, d in dims.items()}
        for cam in CAMERAS:
            obs[f"{cam}_image"] = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
        writer.add_demo(states=rng.normal(size=(n, 32)), actions=rng.uniform(-1, 1, (n, 7)),
                        rewards=np.zeros(n), dones=(np.arange(n) == n - 1).astype(np.int64),
                        obs=obs, next_obs=obs)
    writer.close()
    return path


@pytest.mark.slow
@pytest.mark.parametrize("make", GENERATIONS.values(), ids=GENERATIONS.keys())
def test_a_file_of_either_generation_trains_and_evaluates(tmp_path, make, monkeypatch):
    """train_bc.py end to end on a small image file: fbc trains, then rolls out in the
    robosuite env its env_args make (horizon 10), and keeps its weights."""
    import train_bc
    from envs import bc_tasks

    task = bc_tasks.BCTask("lift-generation", "envs.lift.dataset:make_data",
                           "envs.lift.evaluation:make_evaluator", "fbc", {},
                           {"variant": "scripted", "image_size": 32, "horizon": 10,
                            "filter_key": "auto"}, agent_fields=("chunk_length",))
    monkeypatch.setitem(bc_tasks.BC_TASKS, "lift-generation", task)
    path = image_file(tmp_path / "gen.hdf5", make())
    out = tmp_path / "run"
    metrics = train_bc.train(train_bc.parse_args([
        "--env_name=lift-generation", f"--dataset={path}", f"--output_dir={out}",
        "--device=cpu", "--wandb.mode=disabled", "--offline_steps=2", "--batch_size=4",
        "--eval_interval=0", "--eval_episodes=1", "--eval_workers=1",
        "--agent.pretrained_encoder=False", "--agent.share_encoder=True",
        "--agent.chunk_length=4", "--agent.action_horizon=2", "--agent.hidden_dim=32",
        "--agent.num_layers=1", "--agent.emb_dim=16"]))
    assert metrics["eval/success_rate"] == 0.0  # random weights, 10 steps: no lift
    assert metrics["eval/episode_length"] == 10 and metrics["eval/num_episodes"] == 1
    assert (out / "checkpoints" / "last.pt").is_file()
