"""mh-like scripted Lift demos (issue 14, item 5): operators, presets, masks, recoveries.

The fast tests drive the scripted controller in a small kinematic stand-in for Lift (the
hand goes where the actions say, fingers close on the cube only when it is between them),
so operator styles and the missed-grasp recovery are checked without robosuite. The slow
test generates a few real, camera-less demos per preset.
"""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest

from envs.lift import demos, scripted
from envs.lift.demos import RobomimicWriter, operator_masks
from envs.lift.env import default_env_args
from envs.lift.scripted import LEVELS, PRESETS, Operator, ScriptedLiftPolicy, make_operators

TABLE_Z = 0.8


def _quat(mat: np.ndarray) -> np.ndarray:
    """xyzw quaternion of a rotation matrix (trace > 0 suffices for these frames)."""
    w = np.sqrt(max(1.0 + np.trace(mat), 1e-12)) / 2.0
    x = (mat[2, 1] - mat[1, 2]) / (4 * w)
    y = (mat[0, 2] - mat[2, 0]) / (4 * w)
    z = (mat[1, 0] - mat[0, 1]) / (4 * w)
    q = np.array([x, y, z, w])
    return q / np.linalg.norm(q)


def _exp(rotvec: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(rotvec)
    if angle < 1e-12:
        return np.eye(3)
    k = rotvec / angle
    skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


class KinematicLift:
    """Lift without physics: the hand moves 60% of each OSC setpoint shift, the fingers
    stop on the cube when it is between them, a held cube moves with the hand."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.half = 0.021
        self.cube = np.array([*rng.uniform(-0.03, 0.03, 2), TABLE_Z + self.half])
        self.cube_yaw = float(rng.uniform(-np.pi, np.pi))
        self.eef = np.array([-0.1, 0.0, 1.0]) + rng.normal(0, 0.01, 3)
        # Pointing down (the hand's z along -z), fingers closing along the world's y.
        self.rot = _exp(np.array([0.0, 0.0, rng.normal(0, 0.05)])) @ np.diag([1.0, -1.0, -1.0])
        self.width = 0.08
        self.held = False

    def _between_fingers(self) -> bool:
        offset = self.rot.T @ (self.cube - self.eef)  # in the hand's frame
        return abs(offset[0]) < 0.015 and abs(offset[1]) < 0.04 and -0.025 < offset[2] < 0.02

    def obs(self) -> dict[str, np.ndarray]:
        cube_rot = _exp(np.array([0.0, 0.0, self.cube_yaw]))
        return {
            "robot0_eef_pos": self.eef.copy(),
            "robot0_eef_quat": _quat(self.rot),
            "robot0_gripper_qpos": np.array([self.width / 2, -self.width / 2]),
            "object": np.concatenate([self.cube, _quat(cube_rot), self.eef - self.cube]),
        }

    def step(self, action: np.ndarray) -> bool:
        assert np.all(np.abs(action) <= 1.0)
        move = 0.6 * 0.05 * action[:3]
        self.eef = self.eef + move
        self.rot = _exp(0.6 * 0.5 * action[3:6]) @ self.rot
        closed = 2 * self.half if self._between_fingers() else 0.002
        self.width = float(np.clip(self.width - 0.007 * action[6], closed, 0.08))
        self.held = self.width <= 2 * self.half + 1e-9 and self._between_fingers()
        if self.held:
            self.cube = self.cube + move
        self.cube[2] = max(self.cube[2], TABLE_Z + self.half)
        self.eef[2] = max(self.eef[2], TABLE_Z + 0.005)
        return self.cube[2] > TABLE_Z + self.half + 0.04


def run_kinematic(op: Operator, seed: int, max_steps: int = 400) -> dict:
    """One episode of op in KinematicLift: actions, success, recoveries, hand path."""
    env = KinematicLift(seed)
    policy = ScriptedLiftPolicy(op, np.random.default_rng(seed))
    actions, path, grasp_yaw = [], [], None
    obs = env.obs()
    success = False
    for _ in range(max_steps):
        action = policy(obs)
        if policy.phase == policy.CLOSE and grasp_yaw is None:
            grasp_yaw = float(np.arctan2(env.rot[1, 0], env.rot[0, 0]))
        actions.append(action)
        path.append(env.eef - env.cube)
        success = env.step(action)
        obs = env.obs()
        if success:
            break
    return {
        "actions": np.array(actions),
        "success": success,
        "recoveries": policy.recoveries,
        "path": np.array(path),
        "yaw_error": scripted._wrap(grasp_yaw - env.cube_yaw, np.pi / 2),
    }


@pytest.fixture(scope="module")
def mh_runs() -> dict[str, list[dict]]:
    return {op.name: [run_kinematic(op, s) for s in range(10)] for op in PRESETS["mh"].operators}


def test_presets_are_robomimic_sized():
    ph, mh, small = PRESETS["ph"], PRESETS["mh"], PRESETS["small"]
    assert ph.num_demos == 200 and len(ph.operators) == 1 and ph.operators[0].miss_prob == 0
    assert mh.num_demos == 300 and len(mh.operators) == 6
    assert [op.name for op in mh.operators] == [
        f"{level}_operator_{k}" for level in LEVELS for k in (1, 2)
    ]
    assert small.num_demos == 100 and small.operators == tuple(make_operators(3))


def test_mh_masks_are_robomimics_keys():
    ops = PRESETS["mh"].operators
    keys = {key for op in ops for key in operator_masks(op, ops)}
    robomimic = {"better", "okay", "worse", "okay_better", "worse_better", "worse_okay"}
    robomimic |= {f"{lv}_operator_{k}" for lv in LEVELS for k in (1, 2)}
    assert keys == robomimic
    assert operator_masks(make_operators(3)[1], make_operators(3)) == ["operator_1"]


def test_every_operator_lifts_the_cube_and_rotates_the_wrist(mh_runs):
    for name, runs in mh_runs.items():
        assert sum(r["success"] for r in runs) >= 9, name
        rotation = np.concatenate([r["actions"][:, 3:6] for r in runs])
        assert np.abs(rotation).max() > 0.02 and rotation.std() > 0.005, name


def test_wrist_turns_to_the_cube_yaw():
    """The proficient operator closes with the fingers square to the cube's faces."""
    op = PRESETS["ph"].operators[0]
    errors = [abs(run_kinematic(op, s)["yaw_error"]) for s in range(8)]
    assert max(errors) < 0.2
    # Without turning the wrist the error would be the cube's yaw, spread over +-45 deg.
    assert np.mean(errors) < 0.1


def test_operators_differ_in_speed_noise_path_and_gripper(mh_runs):
    def mean_length(name: str) -> float:
        return float(np.mean([len(r["actions"]) for r in mh_runs[name] if r["success"]]))

    better = np.mean([mean_length(f"better_operator_{k}") for k in (1, 2)])
    worse = np.mean([mean_length(f"worse_operator_{k}") for k in (1, 2)])
    assert worse > 1.3 * better
    # Slow closers command the fingers at their own speed.
    grips = {
        n: set(np.round(np.concatenate([r["actions"][:, 6] for r in rs]), 3)) - {-1.0}
        for n, rs in mh_runs.items()
    }
    assert grips["better_operator_1"] == {1.0} and grips["okay_operator_1"] == {0.5}

    # The offset approach comes in from the side: far from the cube's axis while low.
    def side_excursion(name: str) -> float:
        low = [
            np.linalg.norm(r["path"][r["path"][:, 2] < 0.08][:, :2], axis=1) for r in mh_runs[name]
        ]
        return float(np.median([x.max() for x in low if len(x)]))

    assert side_excursion("better_operator_2") > side_excursion("better_operator_1") + 0.02


def action_spread(op: Operator, steps: int = 200) -> tuple[float, float]:
    """Std of op's translation and rotation actions while the scene stands still, 3 cm from
    its first waypoint: what varies is the operator's noise and wobble alone."""
    env = KinematicLift(0)
    policy = ScriptedLiftPolicy(op, np.random.default_rng(0))
    env.eef = env.cube + policy.waypoints[0] + np.array([0.03, 0.0, 0.0])
    obs = env.obs()
    actions = np.array([policy(obs) for _ in range(steps)])
    assert policy.phase == policy.APPROACH
    return float(actions[:, :3].std(axis=0).mean()), float(actions[:, 3:6].std(axis=0).mean())


def test_operators_differ_in_action_noise_and_wrist_wobble():
    spread = {op.name: action_spread(op) for op in PRESETS["mh"].operators}
    for level in ("okay", "worse"):
        for k in (1, 2):
            assert spread[f"{level}_operator_{k}"][0] > 1.5 * spread["better_operator_1"][0]
            assert spread[f"{level}_operator_{k}"][1] > 1.5 * spread["better_operator_1"][1]
    assert spread["better_operator_1"][1] > 0.005  # even the best operator's wrist moves


def test_missed_grasps_are_noticed_and_retried(mh_runs):
    always_misses = Operator(10.0, 1.0, 0.05, 0.0, name="clumsy", miss_prob=1.0)
    runs = [run_kinematic(always_misses, s) for s in range(6)]
    assert all(r["success"] for r in runs)
    assert all(r["recoveries"] >= 1 for r in runs)
    assert sum(r["recoveries"] for r in mh_runs["better_operator_1"]) <= 2
    assert (
        sum(r["recoveries"] for op in ("worse_operator_1", "worse_operator_2") for r in mh_runs[op])
        >= 2
    )


def test_equal_seeds_give_equal_actions():
    op = PRESETS["mh"].operators[4]
    a, b = run_kinematic(op, 3), run_kinematic(op, 3)
    np.testing.assert_array_equal(a["actions"], b["actions"])


def test_operator_rejects_unknown_styles():
    with pytest.raises(ValueError, match="approach"):
        Operator(10.0, 1.0, 0.05, 0.0, approach="sideways")
    with pytest.raises(ValueError, match="level"):
        Operator(10.0, 1.0, 0.05, 0.0, level="great")
    with pytest.raises(ValueError, match="unknown preset 'xl'.*ph, mh, small"):
        demos.generate("unused.hdf5", None, preset="xl")


def test_writer_keeps_operator_attrs_and_train_valid_parts_of_masks(tmp_path):
    writer = RobomimicWriter(tmp_path / "d.hdf5", default_env_args(cameras=()))
    for i in range(10):
        writer.add_demo(
            states=np.zeros((2, 4)),
            actions=np.zeros((2, 7)),
            rewards=np.zeros(2),
            dones=np.array([0, 1]),
            obs={"object": np.zeros((2, 10))},
            next_obs={"object": np.zeros((2, 10))},
            group=["a_operator_1", "a"] if i % 2 else ["b_operator_1", "b"],
            attrs={"operator": "a_operator_1" if i % 2 else "b_operator_1"},
        )
    writer.close()
    with h5py.File(tmp_path / "d.hdf5", "r") as f:
        masks = {k: [x.decode() for x in f[f"mask/{k}"][()]] for k in f["mask"]}
        attrs = {d: f[f"data/{d}"].attrs["operator"] for d in f["data"]}
    assert masks["a"] == masks["a_operator_1"] == [f"demo_{i}" for i in range(1, 10, 2)]
    for key in ("a", "b_operator_1"):
        assert sorted(masks[f"{key}_train"] + masks[f"{key}_valid"]) == sorted(masks[key])
        assert set(masks[f"{key}_valid"]) <= set(masks["valid"])
    assert all(attrs[d] == "a_operator_1" for d in masks["a"])


def test_cli_takes_a_preset_and_a_count(monkeypatch, tmp_path):
    calls = []

    def fake_generate(output, num_demos, **kwargs):
        calls.append((num_demos, kwargs["preset"], kwargs["operators"]))
        return {
            "demos": 1.0,
            "attempts": 1.0,
            "success_rate": 1.0,
            "mean_length": 1.0,
            "recoveries": 0.0,
        }

    monkeypatch.setattr(demos, "generate", fake_generate)
    out = str(tmp_path / "x.hdf5")
    demos.main(["generate", "--preset", "mh", "--output", out])
    demos.main(["generate", "--preset", "ph", "--num_demos", "7", "--output", out])
    demos.main(["generate", "--operators", "3", "--output", out])
    assert calls == [(None, "mh", 1), (7, "ph", 1), (100, None, 3)]
    with pytest.raises(SystemExit):
        demos.main(["generate", "--preset", "mh", "--operators", "3", "--output", out])


# ---- slow: real robosuite, camera-less, a few demos per preset


def _masks(f: h5py.File) -> dict[str, set[str]]:
    return {k: {x.decode() for x in f[f"mask/{k}"][()]} for k in f["mask"]}


@pytest.mark.slow
def test_generated_presets_are_mh_like(tmp_path):
    """ph and mh files: rotation actions, per-demo cube sizes, operator masks and attrs;
    an operator that misses recovers inside successful demos."""
    paths = {}
    for preset, n in (("ph", 2), ("mh", 12)):
        paths[preset] = tmp_path / f"{preset}.hdf5"
        stats = demos.generate(paths[preset], n, seed=0, cameras=(), progress=False, preset=preset)
        assert stats["demos"] == n
    with h5py.File(paths["mh"], "r") as f:
        assert f["data"].attrs["preset"] == "mh"
        names = {f"demo_{i}" for i in range(12)}
        masks = _masks(f)
        ops = [op.name for op in PRESETS["mh"].operators]
        per_op = [masks[name] for name in ops]
        assert all(len(m) == 2 for m in per_op) and set().union(*per_op) == names
        assert sum(len(m) for m in per_op) == 12  # disjoint
        assert masks["train"] | masks["valid"] == names and not masks["train"] & masks["valid"]
        for level in LEVELS:
            assert masks[level] == masks[f"{level}_operator_1"] | masks[f"{level}_operator_2"]
        for d in names:
            assert d in masks[f["data"][d].attrs["operator"]]
        actions = np.concatenate([f[f"data/{d}/actions"][()] for d in names])
        sizes = {tuple(_cube_half_size(f[f"data/{d}"].attrs["model_file"])) for d in names}
    assert np.abs(actions[:, 3:6]).max() > 0.05 and (actions[:, 3:6] != 0).mean() > 0.9
    assert np.abs(actions).max() <= 1.0
    assert len(sizes) == 12
    with h5py.File(paths["ph"], "r") as f:
        assert f["data"].attrs["preset"] == "ph"
        assert _masks(f)["proficient_operator"] == {"demo_0", "demo_1"}
        assert np.abs(f["data/demo_0/actions"][()][:, 3:6]).max() > 0.01

    clumsy = Operator(10.0, 1.0, 0.05, 0.0, name="clumsy", miss_prob=1.0)
    path = tmp_path / "clumsy.hdf5"
    stats = demos.generate(path, 3, seed=1, operators=[clumsy], cameras=(), progress=False)
    with h5py.File(path, "r") as f:
        recoveries = [int(f[f"data/demo_{i}"].attrs["recoveries"]) for i in range(3)]
        operators = json.loads(f["data"].attrs["operators"])
    assert sum(recoveries) >= 1 and stats["recoveries"] == sum(recoveries)
    assert operators[0]["name"] == "clumsy" and operators[0]["miss_prob"] == 1.0


def _cube_half_size(model_xml: str) -> list[float]:
    geom = re.search(r'<geom[^>]*name="cube_g0"[^>]*>', model_xml).group(0)
    return [float(x) for x in re.search(r'size="([^"]*)"', geom).group(1).split()]
