"""PPO's fixes against CleanRL / SAC practice, one test each (issue 13, item 3).

The squashed parameters' entropy, no entropy gradient into the kind logits, the value
loss unclipped by default, bootstrapping truncated episodes, BatchNorm statistics
refreshed when a body trains, disjoint training and evaluation seeds.
"""

from __future__ import annotations

import math
from itertools import pairwise
from types import SimpleNamespace

import pytest
import torch

import train_ppo
from agents.hybrid_actor_critic import (
    HybridActorCritic,
    HybridActorCriticConfig,
    HybridDistribution,
    squash,
)
from agents.ppo import PPOConfig, ppo_loss, ppo_update
from agents.rollout_buffer import RolloutBuffer
from encoders import EncoderConfig
from envs.durotaxis import DurotaxisConfig
from envs.durotaxis.engine import make_engine
from envs.durotaxis.evaluation import evaluation_seed
from train_ppo import (
    TrainPPOConfig,
    collect_rollout,
    durotaxis_action,
    pool_batch_norm_over_ranks,
    prefix_shape,
    training_env_seed,
    update,
)
from training.distributed import World
from training.optim import build_optimizer
from training.ranges import ConfigError


def _distribution(log_std: float, batch: int = 1, low=-1.0, high=1.0, kinds=None):
    logits = torch.zeros(batch, 2) if kinds is None else kinds
    mean = torch.zeros(batch, 1, requires_grad=kinds is not None)
    used = torch.tensor([[1.0], [0.0]])
    return HybridDistribution(logits, mean, torch.tensor([log_std]),
                              torch.tensor([low]), torch.tensor([high]), used)


def _squashed_entropy_by_quadrature(log_std: float) -> float:
    """H of a = tanh(u), u ~ N(0, std): H(u) + E[log(1 - tanh(u)^2)], on a fine grid."""
    std = math.exp(log_std)
    u = torch.linspace(-12 * std, 12 * std, 400_001, dtype=torch.float64)
    density = torch.exp(-0.5 * (u / std) ** 2) / (std * math.sqrt(2 * math.pi))
    a = u.abs()  # log(1 - tanh(u)^2), stable in the tails
    log_dtanh = 2 * (math.log(2) - a - torch.nn.functional.softplus(-2 * a))
    gauss_h = 0.5 * math.log(2 * math.pi * math.e) + log_std
    return gauss_h + float(torch.trapezoid(density * log_dtanh, u))


@pytest.mark.parametrize("log_std", [-1.0, 0.0, 1.0, 2.0])
def test_the_parameter_entropy_is_the_squashed_distributions(log_std):
    torch.manual_seed(0)
    samples = _distribution(log_std, batch=200_000).param_entropy()[:, 0]
    standard_error = samples.std().item() / math.sqrt(samples.numel())
    truth = _squashed_entropy_by_quadrature(log_std)
    assert samples.mean().item() == pytest.approx(truth, abs=max(0.005, 5 * standard_error))


def test_the_squashed_entropy_peaks_and_falls_unlike_the_gaussians():
    torch.manual_seed(0)
    values = [_distribution(s, batch=100_000).param_entropy().mean().item()
              for s in (0.0, 1.0, 2.0)]
    assert values[0] > values[1] > values[2]
    assert values[2] < -5.0  # mass piled at the bounds: strongly penalised now


def test_no_entropy_gradient_reaches_the_kind_logits_from_the_parameters():
    logits = torch.tensor([[0.3, -0.2]], requires_grad=True)
    dist = _distribution(0.0, kinds=logits)
    _, param_h = dist.entropy()
    (grad,) = torch.autograd.grad(param_h.sum(), logits, allow_unused=True)
    assert grad is None or torch.count_nonzero(grad) == 0
    kind_h, _ = dist.entropy()  # the kind's own entropy still trains the logits
    assert torch.count_nonzero(torch.autograd.grad(kind_h.sum(), logits)[0]) > 0


def test_the_value_loss_is_plain_mse_by_default_and_fits_faster_unclipped():
    assert PPOConfig().clip_vloss is False
    torch.manual_seed(0)
    enc = EncoderConfig(arch="resnet18", weights="random", input_adapter="repeat3",
                        freeze_mode="all")
    action = durotaxis_action(DurotaxisConfig())
    model = HybridActorCritic(enc, (1, 32, 32), HybridActorCriticConfig(hidden_dim=16),
                              action=action).eval()
    n = 64
    feats = torch.randn(n, model.actor_encoder.out_dim)
    with torch.no_grad():
        values = model.value(feats)
    batch = {"actor_features": feats, "critic_features": feats,
             "kind": torch.zeros(n, dtype=torch.long), "u": torch.zeros(n, 5),
             "log_prob": torch.zeros(n), "values": values, "advantages": torch.zeros(n),
             "returns": values + 5.0 + torch.randn(n)}
    _, info = ppo_loss(model, batch, PPOConfig())
    new_value = model.value(feats)
    mse = 0.5 * ((new_value - batch["returns"]) ** 2).mean()
    assert info["train/value_loss"].item() == pytest.approx(mse.item(), rel=1e-6)

    def fitted(clip: bool) -> float:
        torch.manual_seed(1)
        m = HybridActorCritic(enc, (1, 32, 32), HybridActorCriticConfig(hidden_dim=16),
                              action=action).eval()
        opt = torch.optim.Adam(m.critic_head.parameters(), lr=1e-2)
        cfg = PPOConfig(clip_vloss=clip, update_epochs=5, num_minibatches=1, num_envs=n,
                        num_steps=1, ent_coef=0.0)
        ppo_update(m, opt, dict(batch), cfg, torch.Generator().manual_seed(0))
        with torch.no_grad():
            return ((m.value(feats) - batch["returns"]) ** 2).mean().item()

    assert fitted(False) < fitted(True)


def _tiny_model(freeze_mode: str, config: DurotaxisConfig) -> HybridActorCritic:
    enc = EncoderConfig(arch="resnet18", weights="random", input_adapter="repeat3",
                        freeze_mode=freeze_mode)
    return HybridActorCritic(enc, (1, config.image_size, config.image_size),
                             HybridActorCriticConfig(hidden_dim=16),
                             action=durotaxis_action(config)).eval()


def test_truncated_episodes_bootstrap_from_the_final_observation():
    env_cfg = DurotaxisConfig(image_size=32, max_steps=3)
    cfg = TrainPPOConfig(env=env_cfg, ppo=PPOConfig(num_envs=4, num_steps=4, num_minibatches=1))
    torch.manual_seed(0)
    model = _tiny_model("all", env_cfg)
    envs, twin = make_engine(env_cfg, 4), make_engine(env_cfg, 4)
    obs = envs.reset(seed=5)
    twin.reset(seed=5)
    buffer = RolloutBuffer(4, 4, obs_shape=(1, 32, 32), param_dim=5, prefix_shape=None,
                           device=torch.device("cpu"))
    torch.manual_seed(1)
    collect_rollout(model, envs, buffer, obs, cfg, torch.device("cpu"))
    # Replay the same actions on a twin to see the raw rewards and the cut episodes.
    checked = 0
    for t in range(4):
        kind, u = buffer.kinds[t], buffer.us[t]
        params = squash(u, model.param_low, model.param_high)
        _, reward, terminated, truncated, info = twin.autoreset_step(kind, params,
                                                                     final_obs=True)
        expected = reward.clone()
        if info["truncated_rows"].numel():
            with torch.no_grad():
                v = model.value(model.encode(info["final_obs"])[1])
            expected[info["truncated_rows"]] += cfg.ppo.gamma * v
            checked += int(info["truncated_rows"].numel())
        torch.testing.assert_close(buffer.rewards[t], expected)
        assert torch.equal(buffer.dones[t], terminated | truncated)
    assert checked > 0


class _ScriptedEngine:
    """Episodes end where a script says (T x B terminated / truncated); reward 1 each step."""

    def __init__(self, terminated: torch.Tensor, truncated: torch.Tensor) -> None:
        self.terminated, self.truncated, self.t = terminated, truncated, 0
        self.gen = torch.Generator().manual_seed(0)

    def _frames(self, n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=self.gen)

    def autoreset_step(self, kind, params, final_obs=False):
        t, batch = self.t, self.terminated.shape[1]
        self.t += 1
        info = {"episode_return": torch.full((batch,), 7.0),
                "episode_length": torch.full((batch,), 3.0),
                "is_success": torch.zeros(batch, dtype=torch.bool)}
        if final_obs:
            info["truncated_rows"] = self.truncated[t].nonzero().squeeze(-1)
            info["final_obs"] = self._frames(len(info["truncated_rows"]))
        return (self._frames(batch), torch.ones(batch), self.terminated[t], self.truncated[t],
                info)


def test_terminated_steps_get_no_bootstrap_and_truncated_ones_get_gamma_v():
    terminated = torch.tensor([[True, False, False], [False, False, True]])
    truncated = torch.tensor([[False, True, False], [False, True, False]])
    env_cfg = DurotaxisConfig(image_size=32)
    cfg = TrainPPOConfig(env=env_cfg, ppo=PPOConfig(num_envs=3, num_steps=2, num_minibatches=1))
    torch.manual_seed(0)
    model = _tiny_model("all", env_cfg)
    envs = _ScriptedEngine(terminated, truncated)
    buffer = RolloutBuffer(2, 3, obs_shape=(1, 32, 32), param_dim=5, prefix_shape=None,
                           device=torch.device("cpu"))
    finals = []
    original = envs.autoreset_step

    def recording_step(*args, **kwargs):
        out = original(*args, **kwargs)
        finals.append(out[4]["final_obs"])
        return out

    envs.autoreset_step = recording_step
    collect_rollout(model, envs, buffer, torch.zeros(3, 1, 32, 32, dtype=torch.uint8), cfg,
                    torch.device("cpu"))
    for t in range(2):
        expected = torch.ones(3)
        with torch.no_grad():  # V of the final observations, by hand
            v = model.critic_head(model.encode(finals[t])[1]).squeeze(-1)
        expected[truncated[t]] += cfg.ppo.gamma * v
        torch.testing.assert_close(buffer.rewards[t], expected)
        assert torch.equal(buffer.rewards[t][terminated[t]], torch.ones(int(terminated[t].sum())))
    assert torch.equal(buffer.dones, terminated | truncated)
    # Episode statistics count the environment's returns, not the bootstrapped rewards.
    assert buffer.episode_stats.tolist() == [4.0, 28.0, 12.0, 0.0]


def test_batch_norm_statistics_follow_the_rollout_when_a_body_trains():
    torch.manual_seed(0)
    config = DurotaxisConfig(image_size=32)
    model = _tiny_model("none", config)
    trainable = model.trainable_batch_norms()
    assert trainable and all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
                             for m in trainable)
    env = make_engine(config, 64)
    obs = env.reset(seed=0)
    refreshed = model.refresh_batch_norm({"obs": obs}, chunk=16)
    assert refreshed == trainable and not any(m.training for m in refreshed)
    # The statistics are the rollout's: the first trainable layer's input does not depend
    # on other trainable statistics, and its running mean is that input's mean.
    first = trainable[0]
    captured = {}
    hook = first.register_forward_pre_hook(lambda m, i: captured.setdefault("x", i[0].clone()))
    with torch.no_grad():
        model.encode(obs)
    hook.remove()
    x = captured["x"]
    torch.testing.assert_close(first.running_mean, x.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first.running_var, x.var(dim=(0, 2, 3)), rtol=0.05, atol=1e-4)
    assert all(not torch.equal(m.running_var, torch.ones_like(m.running_var))
               for m in trainable)


@pytest.mark.parametrize("freeze_mode", ["none", "last_block"])
def test_one_iteration_leaves_the_batch_norm_statistics_of_its_rollout(freeze_mode):
    env_cfg = DurotaxisConfig(image_size=32)
    cfg = TrainPPOConfig(env=env_cfg, ppo=PPOConfig(num_envs=4, num_steps=4, num_minibatches=1,
                                                    update_epochs=1))
    torch.manual_seed(0)
    model = _tiny_model(freeze_mode, env_cfg)
    trainable = model.trainable_batch_norms()
    frozen = [m for m in model.modules()
              if isinstance(m, torch.nn.BatchNorm2d) and m not in trainable]
    frozen_before = [(m.running_mean.clone(), m.running_var.clone()) for m in frozen]
    envs = make_engine(env_cfg, 4)
    shape = prefix_shape(model, (1, 32, 32), torch.device("cpu")) if model.caches_prefix else None
    buffer = RolloutBuffer(4, 4, obs_shape=(1, 32, 32), param_dim=5, prefix_shape=shape,
                           device=torch.device("cpu"))
    collect_rollout(model, envs, buffer, envs.reset(seed=0), cfg, torch.device("cpu"))
    optimizer = build_optimizer(model, backbone_lr=1e-4, head_lr=3e-4, kind="adam", eps=1e-5)
    update(model, optimizer, buffer, torch.Generator().manual_seed(0), None,
           SimpleNamespace(world=World()), cfg)
    assert not any(m.training for m in model.modules())  # the next rollout runs in eval
    after = [(m.running_mean.clone(), m.running_var.clone()) for m in trainable]
    assert all(not torch.equal(v, torch.ones_like(v)) and not torch.equal(m, torch.zeros_like(m))
               for m, v in after)
    model.refresh_batch_norm(buffer.batch())  # the same rollout, the same weights: no change
    for m, (mean, var) in zip(trainable, after, strict=True):
        torch.testing.assert_close(m.running_mean, mean)
        torch.testing.assert_close(m.running_var, var)
    for m, (mean, var) in zip(frozen, frozen_before, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)


def test_ranks_pool_their_batch_norm_statistics_as_one_rollout(monkeypatch):
    torch.manual_seed(0)
    data = torch.randn(2000, 3) * torch.tensor([1.0, 2.0, 0.5])
    data[1000:] += torch.tensor([1.0, -2.0, 0.0])  # the ranks' rollouts differ in mean
    halves = []
    for part in data.split(1000):
        layer = torch.nn.BatchNorm1d(3, momentum=None)
        layer(part)
        halves.append(layer.eval())
    other = halves[1]
    other_stats = torch.cat([other.running_mean, other.running_var, other.running_mean ** 2])
    monkeypatch.setattr(train_ppo, "mean_over_ranks", lambda v, world: (v + other_stats) / 2)
    pool_batch_norm_over_ranks([halves[0]], World(rank=0, world_size=2))
    torch.testing.assert_close(halves[0].running_mean, data.mean(0))
    torch.testing.assert_close(halves[0].running_var, data.var(0), rtol=1e-3, atol=0)


def test_a_frozen_body_has_no_batch_norm_to_refresh(monkeypatch):
    model = _tiny_model("all", DurotaxisConfig(image_size=32))
    assert model.trainable_batch_norms() == []

    def no_forward(*args):
        raise AssertionError("nothing should run when no BatchNorm trains")

    monkeypatch.setattr(model, "encode", no_forward)
    monkeypatch.setattr(model, "encode_from_prefix", no_forward)
    assert model.refresh_batch_norm({"obs": torch.zeros(2, 1, 32, 32, dtype=torch.uint8)}) == []


def test_training_and_evaluation_keys_never_meet():
    """Every seed's training ranges (8 ranks) and evaluation range, 2**16 envs each: disjoint."""
    envs = 2**16
    starts = [training_env_seed(seed, rank) for seed in range(1001) for rank in range(8)]
    starts += [evaluation_seed(seed) for seed in range(1001)]
    for start, next_start in pairwise(sorted(starts)):
        assert start + envs <= next_start
    # By construction: the last training key of the largest seed and rank is below evaluation's.
    assert training_env_seed(2**16 - 1, 15) + 2**20 <= evaluation_seed(0)


def test_training_seeds_outside_the_disjoint_layout_are_refused():
    with pytest.raises(ConfigError, match="--seed=65536 is out of range"):
        training_env_seed(2**16, 0)
    with pytest.raises(ConfigError, match="rank 16 is out of range"):
        training_env_seed(0, 16)
    with pytest.raises(Exception, match="--seed=70000 is out of range"):
        TrainPPOConfig(run=train_ppo.RunSettings(seed=70000))
