"""Reproducible Lift evaluation (issue 14, items 1 and 6).

An evaluation episode is a function of its fixed seed (cube size, placement, policy
noise), whatever the training seed and whichever worker runs it; demos carry their own
models and seeds, disjoint from the evaluation's; render settings travel with the data.
The fast tests drive the evaluator's scheduling with a stand-in env; the slow ones use
real robosuite with few, short episodes.
"""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest
import torch

from envs.lift import evaluation
from envs.lift.dataset import LiftSpec
from envs.lift.env import (
    DEMO_SEED_START,
    MAX_EVAL_EPISODES,
    RenderSettings,
    default_env_args,
    demo_seed,
    evaluation_seeds,
)
from envs.lift.env_args import installed_robosuite_version

LOWDIM = ("robot0_eef_pos", "robot0_gripper_qpos", "object")


def init_obs_utils() -> None:
    import robomimic.utils.obs_utils as ObsUtils

    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": list(LOWDIM), "rgb": []}})


def lowdim_spec(env_args: dict | None = None, horizon: int = 60) -> LiftSpec:
    """A camera-less spec: the policy reads the cube's position (fast rollouts)."""
    dims = {"robot0_eef_pos": 3, "robot0_gripper_qpos": 2, "object": 10}
    return LiftSpec(
        image_keys=(),
        image_shape=(3, 84, 84),
        lowdim_keys=LOWDIM,
        lowdim_dims=dims,
        lowdim_mean={k: [0.0] * d for k, d in dims.items()},
        lowdim_std={k: [1.0] * d for k, d in dims.items()},
        action_dim=7,
        chunk_length=1,
        env_args=env_args or default_env_args(cameras=()),
        horizon=horizon,
        dataset="none",
    )


class NoisyPickPolicy:
    """Scripted pick-and-lift from the cube position, plus torch.randn noise: a stochastic
    policy whose chunks change if the evaluator's RNG handling does."""

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        eef, cube = obs["obs/robot0_eef_pos"].double(), obs["obs/object"][:, :3].double()
        grip = obs["obs/robot0_gripper_qpos"].double()
        noise = 0.1 * torch.randn(eef.shape[0], 3, dtype=torch.float64)
        actions = []
        for i in range(eef.shape[0]):
            e, c = eef[i].numpy(), cube[i].numpy()
            width = grip[i, 0].item() - grip[i, 1].item()
            grasp, gripper = c + [0, 0, -0.005], -1.0
            if width < 0.065 and np.linalg.norm(e - c) < 0.03:
                target, gripper = c + [0, 0, 0.15], 1.0  # holding it: lift
            elif np.linalg.norm((e - c)[:2]) > (0.02 if e[2] < c[2] + 0.03 else 0.01):
                target = c + [0, 0, 0.06]  # above it first
            elif np.linalg.norm(e - grasp) > 0.01:
                target = grasp
            else:
                target, gripper = grasp, 1.0  # close
            a = torch.zeros(7, dtype=torch.float64)
            a[:3] = (10 * torch.from_numpy(target - e) + noise[i]).clamp(-1, 1)
            a[6] = gripper
            actions.append(a)
        return torch.stack(actions)[:, None]  # B x 1 x 7


# ---- fast: seeds and scheduling, with a stand-in env


def test_evaluation_seeds_are_fixed_and_disjoint_from_demo_seeds():
    assert evaluation_seeds(3) == [100_000, 100_001, 100_002]
    last_eval = evaluation_seeds(MAX_EVAL_EPISODES)[-1]
    for data_seed in (0, 1, 12345):
        rng = np.random.default_rng(data_seed)
        seeds = np.array([demo_seed(rng) for _ in range(2000)])
        assert seeds.min() >= DEMO_SEED_START > last_eval
        assert seeds.max() < 2**31 - 1
    with pytest.raises(ValueError, match="evaluation takes"):
        evaluation_seeds(MAX_EVAL_EPISODES + 1)


class FakeRunner:
    """EpisodeRunner's interface without robosuite; logs the actions each episode gets."""

    log: dict[int, list[np.ndarray]] = {}

    def __init__(self, env_args: dict, horizon: int) -> None:
        self.horizon = horizon

    def _obs(self) -> dict[str, np.ndarray]:
        return {
            "robot0_eef_pos": self.rng.normal(size=3),
            "robot0_gripper_qpos": self.rng.normal(size=2),
            "object": self.rng.normal(size=10),
        }

    def reset(self, seed: int, record: bool) -> dict[str, np.ndarray]:
        self.seed, self.t, self.rng = seed, 0, np.random.default_rng(seed)
        FakeRunner.log[seed] = []
        return self._obs()

    def step(self, actions: np.ndarray) -> tuple[dict, bool, dict]:
        FakeRunner.log[self.seed].append(actions.copy())
        self.t += 1
        done = self.t >= 2 + self.seed % 4  # lengths differ, so workers interleave
        info = {"success": self.seed % 2 == 0, "length": self.t, "cube_half_size": [0.021] * 3}
        return self._obs(), done, info

    def close(self) -> None:
        pass


class NoisyLinearPolicy:
    """A stochastic chunk policy over the lowdim obs (like fbc: global torch.randn noise)."""

    def __init__(self) -> None:
        self.layer = torch.nn.Linear(15, 14).double()

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([obs[f"obs/{k}"].double() for k in LOWDIM], dim=1)
        x = self.layer(x) + torch.randn(x.shape[0], 14, dtype=torch.float64)
        return x.view(-1, 2, 7)


def fake_evaluator(monkeypatch, workers: int, training_seed: int) -> evaluation.LiftEvaluator:
    """An evaluator whose `workers` in-process runners are FakeRunners."""
    monkeypatch.setattr(evaluation, "EpisodeRunner", FakeRunner)
    ev = evaluation.LiftEvaluator(
        lowdim_spec(),
        device=torch.device("cpu"),
        seed=training_seed,
        num_workers=0,
        video_dir=None,
    )
    # Stand-ins for `workers` worker pipes: the scheduling over them is what is tested.
    ev.conns = [evaluation._LocalRunner(ev.env_args, ev.horizon) for _ in range(workers)]
    return ev


def test_episode_actions_do_not_depend_on_workers_or_training_seed(monkeypatch, one_torch_thread):
    init_obs_utils()
    torch.manual_seed(0)
    policy = NoisyLinearPolicy()
    runs = []
    for workers, training_seed in ((1, 0), (2, 0), (3, 7)):
        FakeRunner.log = {}
        ev = fake_evaluator(monkeypatch, workers, training_seed)
        torch.manual_seed(1234 + workers)  # the caller's RNG state must not matter either
        metrics = ev.run(policy, 7).metrics
        runs.append((metrics, ev.last_episodes, dict(FakeRunner.log)))
    reference_metrics, reference_episodes, reference_log = runs[0]
    assert sorted(reference_log) == evaluation_seeds(7)
    for metrics, episodes, log in runs:
        assert [e["seed"] for e in episodes] == evaluation_seeds(7)
        assert episodes == reference_episodes
        for key in ("eval/success_rate", "eval/episode_length"):
            assert metrics[key] == reference_metrics[key]
        for seed, actions in reference_log.items():
            assert len(log[seed]) == len(actions)
            for a, b in zip(log[seed], actions, strict=True):
                np.testing.assert_array_equal(a, b)
    # Episodes get different noise, and evaluating leaves the caller's RNG where it was.
    assert not np.array_equal(reference_log[100_000][0], reference_log[100_001][0])
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    fake_evaluator(monkeypatch, 2, 0).run(policy, 3)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_render_settings_default_to_robomimic_when_a_file_does_not_say():
    assert RenderSettings.from_env_args(default_env_args()) == RenderSettings(False, False)
    robomimic_args = {k: v for k, v in default_env_args().items() if k != "render_settings"}
    assert RenderSettings.from_env_args(robomimic_args) == RenderSettings(True, True)
    stored = default_env_args(render=RenderSettings.robomimic())["render_settings"]
    assert stored == {"reflections": True, "multisampling": True}


# ---- slow: real robosuite, few short episodes


def cube_half_size_in(model_xml: str) -> list[float]:
    """The cube's half-extents as a model_file writes them."""
    geom = re.search(r'<geom[^>]*name="cube_g0"[^>]*>', model_xml).group(0)
    return [float(x) for x in re.search(r'size="([^"]*)"', geom).group(1).split()]


@pytest.mark.slow
@pytest.mark.skipif(not installed_robosuite_version().startswith("1.4."),
                    reason="the reference is robosuite 1.4's np.random hard reset; 1.5 draws "
                           "from env.rng (tests/test_lift_generations.py covers it)")
def test_seeded_reset_is_robosuites_hard_reset_with_the_context_kept():
    """Cube size and initial state are what robosuite's own hard reset draws from the seed,
    in any np.random state; the kept render context draws what a fresh one does."""
    import robosuite

    from envs.lift.env import LiftEnv

    env_args = default_env_args()
    env = LiftEnv(env_args)
    kwargs = dict(env_args["env_kwargs"], hard_reset=True, has_offscreen_renderer=False)
    kwargs.update(use_camera_obs=False, camera_names=[])
    plain = robosuite.make("Lift", **kwargs)
    sizes = []
    try:
        for seed in (100_000, 100_001):
            np.random.seed(seed + 17)  # whatever state np.random is in
            obs = env.reset(seed=seed)
            np.random.seed(seed)
            plain.reset()
            sizes.append(env.cube_half_size())
            model = plain.sim.model
            np.testing.assert_array_equal(sizes[-1], model.geom_size[model.geom_name2id("cube_g0")])
            np.testing.assert_array_equal(env.get_state(), plain.sim.get_state().flatten())
            assert cube_half_size_in(env.model_xml()) == pytest.approx(sizes[-1], abs=1e-6)
            env.env.keep_render_context = False  # robosuite's own: a new render context
            fresh = env.reset(seed=seed)
            env.env.keep_render_context = True
            for key in ("agentview_image", "robot0_eye_in_hand_image"):
                np.testing.assert_array_equal(obs[key], fresh[key])
        assert not np.allclose(sizes[0], sizes[1])
        # The settings are applied to the sim, never written into the model_file.
        assert 'offsamples="0"' not in env.model_xml()
        assert env.env.sim.model.vis.quality.offsamples == 0
    finally:
        env.close()
        plain.close()


@pytest.mark.slow
def test_eval_outcomes_do_not_depend_on_the_number_of_workers(one_torch_thread):
    """4 short episodes of a noisy scripted policy, in 1 and in 2 worker processes."""
    init_obs_utils()
    runs = []
    for workers in (1, 2):
        ev = evaluation.LiftEvaluator(
            lowdim_spec(horizon=60),
            device=torch.device("cpu"),
            seed=workers,  # the training seed must not matter either
            num_workers=workers,
            video_dir=None,
        )
        try:
            result = ev.run(NoisyPickPolicy(), 4)
        finally:
            ev.close()
        runs.append((result.metrics, ev.last_episodes))
    (m1, episodes1), (m2, episodes2) = runs
    assert episodes1 == episodes2
    assert m1["eval/success_rate"] == m2["eval/success_rate"] > 0
    sizes = [tuple(e["cube_half_size"]) for e in episodes1]
    assert len(set(sizes)) == 4  # each episode's cube drawn from its seed
    lengths = [e["length"] for e in episodes1]
    assert len(set(lengths)) > 1


@pytest.mark.slow
def test_generated_demos_carry_their_own_models(tmp_path):
    """Per-demo model_file and env_seed; cube sizes differ; the file depends on the data
    seed alone; replaying a demo's states in its own model reproduces its observations."""
    from envs.lift.demos import generate
    from envs.lift.env import LiftEnv

    paths = []
    for global_seed in (1, 2):  # np.random left in different states, e.g. by training
        np.random.seed(global_seed)
        paths.append(tmp_path / f"demos{global_seed}.hdf5")
        generate(paths[-1], num_demos=2, seed=0, operators=1, cameras=(), progress=False)
    with h5py.File(paths[0], "r") as f, h5py.File(paths[1], "r") as g:
        env_args = json.loads(f["data"].attrs["env_args"])
        assert env_args["render_settings"]["reflections"] is False
        assert env_args["render_settings"]["multisampling"] is False
        demos = [f[f"data/demo_{i}"] for i in range(2)]
        xmls = [d.attrs["model_file"] for d in demos]
        seeds = [int(d.attrs["env_seed"]) for d in demos]
        for i, d in enumerate(demos):
            assert g[f"data/demo_{i}"].attrs["model_file"] == xmls[i]
            np.testing.assert_array_equal(g[f"data/demo_{i}/states"][()], d["states"][()])
        states = [d["states"][()] for d in demos]
        objects = [d["obs/object"][()] for d in demos]
        actions = [d["actions"][()] for d in demos]
    assert min(seeds) >= DEMO_SEED_START and len(set(seeds)) == 2
    sizes = [cube_half_size_in(x) for x in xmls]
    assert sizes[0] != sizes[1]
    assert all(0.020 <= s <= 0.022 for size in sizes for s in size)
    assert all('offsamples="0"' not in x for x in xmls)
    env = LiftEnv(env_args, use_images=False)
    try:
        for i in (1, 0):
            obs = env.reset_to(states[i][0], model_xml=xmls[i])
            assert env.cube_half_size() == pytest.approx(sizes[i], abs=1e-6)
            np.testing.assert_allclose(obs["object"], objects[i][0], atol=1e-9)
            # The last recorded state plus the last action lifts the cube, in its own model.
            env.reset_to(states[i][-1])
            assert env.step(actions[i][-1])[2]
    finally:
        env.close()


@pytest.mark.slow
def test_render_settings_travel_with_the_data(tmp_path):
    """`render` records its settings; the evaluator's env reads them and renders the
    demo's first frame exactly as the file holds it."""
    from envs.lift.demos import RobomimicWriter, render
    from envs.lift.env import LiftEnv

    seeds = (1_000_001, 1_000_002)
    low = tmp_path / "low.hdf5"
    env = LiftEnv(default_env_args(cameras=()), use_images=False)
    writer = RobomimicWriter(
        low, {k: v for k, v in default_env_args(cameras=()).items() if k != "render_settings"}
    )  # like a robomimic file
    try:
        for seed in seeds:
            obs = env.reset(seed=seed)
            states, frames = [env.get_state()], [obs]
            for _ in range(2):
                frames.append(env.step(np.zeros(7))[0])
                states.append(env.get_state())
            lowdim = {k: np.stack([o[k] for o in frames]) for k in LOWDIM}
            writer.add_demo(
                states=np.stack(states[:2]),
                actions=np.zeros((2, 7)),
                rewards=np.zeros(2),
                dones=np.array([0, 1]),
                obs={k: v[:2] for k, v in lowdim.items()},
                next_obs={k: v[1:] for k, v in lowdim.items()},
                model_xml=env.model_xml(),
                seed=seed,
            )
    finally:
        writer.close()
        env.close()
    out = tmp_path / "image.hdf5"
    render(low, out, progress=False, render_settings=RenderSettings.robomimic())
    with h5py.File(out, "r") as f:
        env_args = json.loads(f["data"].attrs["env_args"])
        first = [f[f"data/demo_{i}/obs/agentview_image"][0] for i in range(2)]
    stored = env_args["render_settings"]
    assert stored["reflections"] is True and stored["multisampling"] is True
    assert stored["mujoco_gl"] and stored["gl_renderer"]
    spec = lowdim_spec(env_args)
    spec = LiftSpec(**{**spec.__dict__, "image_keys": ("agentview_image",)})
    ev = evaluation.LiftEvaluator(
        spec, device=torch.device("cpu"), seed=0, num_workers=0, video_dir=None
    )
    runner = evaluation.EpisodeRunner(ev.env_args, horizon=5)
    try:
        assert runner.env.render_settings == RenderSettings.robomimic()
        assert runner.env.env.sim.model.vis.quality.offsamples > 0
        assert runner.env.env.sim.model.mat_reflectance.max() > 0
        for i, seed in enumerate(seeds):
            np.testing.assert_array_equal(runner.reset(seed, False)["agentview_image"], first[i])
    finally:
        runner.close()
