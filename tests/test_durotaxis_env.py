"""The batched Durotaxis environment: determinism, batch = single, bounds, rules, Gym API."""

import math
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import envs  # noqa: F401  (registers Durotaxis-v0)
from envs.durotaxis import (
    DELETE,
    FAIL_NO_CELLS,
    FAIL_OUT_OF_BOUNDS,
    FAIL_TOO_MANY,
    HOLD,
    PARAM_HIGH,
    PARAM_LOW,
    SPAWN,
    DurotaxisConfig,
    DurotaxisCore,
    DurotaxisEnv,
    DurotaxisVectorEnv,
    hash_uniform,
    heuristic_policy,
    random_policy,
    run_episodes,
)

SMALL = DurotaxisConfig(preset="easy", image_size=32)


def _rollout(core: DurotaxisCore, seed: int, steps: int, action_seed: int = 0):
    gen = torch.Generator().manual_seed(action_seed)
    obs = [core.reset(seed=seed)]
    rewards, dones = [], []
    for _ in range(steps):
        kind, params = random_policy(core, gen)
        o, r, term, trunc, _ = core.autoreset_step(kind, params)
        obs.append(o)
        rewards.append(r)
        dones.append(term | trunc)
    return torch.stack(obs), torch.stack(rewards), torch.stack(dones)


def test_same_seed_same_trajectory_other_seed_another():
    a = _rollout(DurotaxisCore(SMALL, 8), seed=3, steps=40)
    b = _rollout(DurotaxisCore(SMALL, 8), seed=3, steps=40)
    c = _rollout(DurotaxisCore(SMALL, 8), seed=4, steps=40)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])
    assert a[2].any(), "episodes should end (and autoreset) within 40 random steps"


def test_vector_env_equals_single_envs_on_the_same_seeds():
    num, seed = 4, 10
    vec = DurotaxisVectorEnv(num_envs=num, config=SMALL)
    singles = [DurotaxisEnv(config=SMALL) for _ in range(num)]
    obs, _ = vec.reset(seed=seed)
    for i, env in enumerate(singles):
        single_obs, _ = env.reset(seed=seed + i)
        np.testing.assert_array_equal(obs[i], single_obs)
    vec.action_space.seed(0)
    ended = 0
    for _ in range(60):
        action = vec.action_space.sample()
        obs, reward, term, trunc, info = vec.step(action)
        for i, env in enumerate(singles):
            o, r, te, tr, single_info = env.step(
                {"kind": action["kind"][i], "params": action["params"][i]}
            )
            assert (te, tr) == (bool(term[i]), bool(trunc[i]))
            assert r == pytest.approx(reward[i], abs=1e-6)
            if te or tr:
                ended += 1
                assert info["_final_obs"][i]
                np.testing.assert_array_equal(info["final_obs"][i], o)
                assert info["final_info"]["is_success"][i] == single_info["is_success"]
                o, _ = env.reset()  # same-step autoreset: the vector env already did this
            np.testing.assert_array_equal(obs[i], o)
    assert ended > 0


def test_make_vec_uses_the_batched_env_with_same_step_autoreset():
    vec = gymnasium.make_vec("Durotaxis-v0", num_envs=3, image_size=32)
    assert isinstance(vec.unwrapped, DurotaxisVectorEnv)
    assert vec.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (3, 1, 32, 32) and obs.dtype == np.uint8


def test_check_env_passes_on_the_single_env():
    env = gymnasium.make("Durotaxis-v0", image_size=32, render_mode="rgb_array")
    with warnings.catch_warnings():
        # Gymnasium only *recommends* [-1, 1] boxes; ours keeps the Hill parameters' units.
        warnings.filterwarnings("ignore", message=".*symmetric and normalized space.*")
        check_env(env.unwrapped)
    frame = env.unwrapped.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8


def test_observations_and_state_stay_in_bounds():
    config = DurotaxisConfig(preset="easy", image_size=32, max_cells=5)
    space = DurotaxisEnv(config=config).observation_space
    core = DurotaxisCore(config, 32)
    core.reset(seed=0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        kind, params = random_policy(core, gen)
        obs, reward, *_ = core.autoreset_step(kind, params)
        assert obs.dtype == torch.uint8 and obs.shape == (32, 1, 32, 32)
        assert all(space.contains(o) for o in obs.numpy()[:4])
        assert (core.num_cells() <= config.max_cells).all()
        bound = config.progress_reward + config.success_bonus + config.failure_penalty
        assert torch.isfinite(reward).all() and reward.abs().max() <= bound
        s, t = core._gradient_coords(core.pos)
        live = core.alive
        assert (s[live].abs() <= config.half_width + 1e-4).all()
        assert (t[live].abs() <= config.half_width + 1e-4).all()


def test_out_of_range_parameters_are_clamped_to_the_action_bounds():
    def spawn_distance(params):
        core = DurotaxisCore(SMALL, 1)
        core.reset(seed=7)
        before = core.pos[0, core.alive[0]].clone()
        core.step(torch.tensor([SPAWN]), params)
        new = core.pos[0, core.alive[0]][-1]
        return (before - new).norm(dim=-1).min()

    d = torch.tensor([[1.0, 0.0]])
    inside = torch.cat([d, torch.tensor([[PARAM_HIGH[2], PARAM_LOW[3], PARAM_LOW[4]]])], dim=1)
    outside = torch.cat([d, torch.tensor([[1e3, -5.0, -1.0]])], dim=1)
    assert spawn_distance(outside) == pytest.approx(float(spawn_distance(inside)))


def test_spawn_distance_follows_the_hill_equation():
    core = DurotaxisCore(DurotaxisConfig(preset="easy", image_size=32, profile="exponential"), 1)
    core.reset(seed=11)
    direction = -core.grad_dir  # toward the soft side: stays on the substrate
    leading = (core.pos[0] * direction[0]).sum(-1).masked_fill(~core.alive[0], -math.inf).argmax()
    parent = core.pos[0, leading].clone()
    gamma, alpha, noise = 6.0, 2.0, 0.3
    u = hash_uniform(core.keys, core.episode, core.steps, 2)
    eps = math.sqrt(-2 * math.log(u[0, 0])) * math.cos(2 * math.pi * u[0, 1])
    stiffness = core.intensity((parent * core.grad_dir[0]).sum(), torch.tensor(True))
    expected = gamma / (1 + (alpha / stiffness) ** 2) + noise * eps
    params = torch.cat([direction, torch.tensor([[gamma, alpha, noise]])], dim=1)
    core.step(torch.tensor([SPAWN]), params)
    child = core.pos[0, core.alive[0]][-1]
    assert (child - parent).norm() == pytest.approx(float(expected), rel=1e-5)
    assert torch.allclose((child - parent) / (child - parent).norm(), direction[0], atol=1e-5)


def test_profiles_span_their_formulas():
    c = DurotaxisConfig(preset="easy")
    core = DurotaxisCore(c, 1)
    r = c.half_width
    ends = torch.tensor([-r, r])
    lin = core.intensity(ends, torch.tensor(False))
    exp = core.intensity(ends, torch.tensor(True))
    assert lin.tolist() == pytest.approx([c.intercept, c.intercept + c.slope * 2 * r])
    assert exp.tolist() == pytest.approx([c.intercept, c.intercept * math.exp(c.exp_rate * 2 * r)])


def test_gradient_direction_is_random_per_episode_and_visible_in_the_image():
    core = DurotaxisCore(DurotaxisConfig(preset="easy", profile="linear"), 256)
    obs = core.reset(seed=0).float()[:, 0]
    angles = torch.atan2(core.grad_dir[:, 1], core.grad_dir[:, 0])
    counts = torch.histc(angles, bins=8, min=-math.pi, max=math.pi)
    assert (counts > 10).all()
    # The mean image gradient over substrate pixels points up the stiffness gradient
    # (image rows grow downwards, hence the minus sign on y).
    dx = obs[:, 1:-1, 2:] - obs[:, 1:-1, :-2]
    dy = -(obs[:, 2:, 1:-1] - obs[:, :-2, 1:-1])
    ok = (dx.abs() < 20) & (dy.abs() < 20)  # skip cell marks and the substrate's edge
    seen = torch.stack([(dx * ok).sum((1, 2)), (dy * ok).sum((1, 2))], dim=-1)
    cos = torch.nn.functional.cosine_similarity(seen, core.grad_dir, dim=-1)
    assert (cos > 0.95).float().mean() > 0.95


def _core_with(kind_config=None, seed=0):
    core = DurotaxisCore(kind_config or SMALL, 1)
    core.reset(seed=seed)
    return core


def test_deleting_the_last_cell_fails():
    core = _core_with(DurotaxisConfig(preset="easy", image_size=32, initial_cells=1))
    reward, term, trunc, info = core.step(torch.tensor([DELETE]), torch.zeros(1, 5))
    assert bool(term[0]) and not bool(trunc[0])
    assert int(info["failure"][0]) == FAIL_NO_CELLS and int(core.num_cells()[0]) == 0
    assert float(reward[0]) == pytest.approx(-1.0)


def test_spawning_beyond_max_cells_fails():
    core = _core_with(DurotaxisConfig(preset="easy", image_size=32, initial_cells=3, max_cells=3))
    params = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.05]])
    _, term, _, info = core.step(torch.tensor([SPAWN]), params)
    assert bool(term[0]) and int(info["failure"][0]) == FAIL_TOO_MANY
    assert int(core.num_cells()[0]) == 3


def test_leaving_through_the_soft_edge_fails():
    core = _core_with()
    back = torch.cat([-core.grad_dir, torch.tensor([[15.0, 0.5, 0.05]])], dim=1)
    for _ in range(20):
        reward, term, _, info = core.step(torch.tensor([SPAWN]), back)
        if bool(term[0]):
            break
    assert int(info["failure"][0]) == FAIL_OUT_OF_BOUNDS
    assert float(reward[0]) < -1.0 + 1e-6


def test_holding_truncates_at_max_steps():
    core = _core_with(DurotaxisConfig(preset="easy", image_size=32, max_steps=5))
    for step in range(5):
        reward, term, trunc, _ = core.step(torch.tensor([HOLD]), torch.zeros(1, 5))
        assert float(reward[0]) == 0.0 and not bool(term[0])
        assert bool(trunc[0]) == (step == 4)


def test_heuristic_is_the_ceiling_and_random_the_floor():
    heuristic = run_episodes(DurotaxisCore(SMALL, 256), heuristic_policy, seed=0)
    gen = torch.Generator().manual_seed(0)
    random = run_episodes(DurotaxisCore(SMALL, 256), lambda e: random_policy(e, gen), seed=0)
    assert heuristic["success_rate"] >= 0.99
    assert random["success_rate"] <= 0.05
    assert heuristic["mean_return"] > random["mean_return"] + 1.5


def test_progress_reward_sums_to_net_progress():
    core = _core_with(DurotaxisConfig(preset="easy", image_size=32, success_bonus=0.0), seed=5)
    total = 0.0
    for _ in range(core.config.max_steps):
        reward, term, trunc, info = core.step(*heuristic_policy(core))
        total += float(reward[0])
        if bool(term[0] | trunc[0]):
            break
    assert bool(info["is_success"][0])
    net = float(info["progress"][0]) * core.config.progress_reward
    assert total == pytest.approx(net, abs=1e-4)


def test_hash_uniforms_are_in_the_open_interval_and_uniform():
    keys = torch.arange(20_000, dtype=torch.int64)
    u = hash_uniform(keys, torch.zeros_like(keys), torch.zeros_like(keys), 4)
    assert (u > 0).all() and (u < 1).all()
    assert u.mean().item() == pytest.approx(0.5, abs=0.01)
    assert u.std().item() == pytest.approx(math.sqrt(1 / 12), abs=0.01)
