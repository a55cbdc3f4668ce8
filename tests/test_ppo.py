"""Hybrid actor-critic and PPO: log-probs, GAE, frozen backbones, feature reuse, the CLI."""

import json
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import distributions as D

import train_ppo
from agents.hybrid_actor_critic import (
    HybridActorCritic,
    HybridActorCriticConfig,
    HybridDistribution,
)
from agents.ppo import PPOConfig, compute_gae, ppo_loss, ppo_update
from encoders import EncoderConfig
from envs.durotaxis import PARAM_HIGH, PARAM_LOW, PARAMS_USED
from train_ppo import DUROTAXIS_ACTION
from training.diagnostics import frozen_parameter_names, frozen_tensors_that_moved
from training.optim import build_optimizer

OBS = (1, 32, 32)
TINY = [
    "--ppo.num_envs=2",
    "--ppo.num_steps=4",
    "--ppo.total_timesteps=16",
    "--ppo.num_minibatches=2",
    "--ppo.update_epochs=2",
    "--env.image_size=16",
    "--env.max_steps=6",
    "--eval_episodes=2",
    "--wandb.mode=disabled",
]


def make_model(freeze_mode="all", share=False, **enc):
    cfg = EncoderConfig(weights="random", input_adapter="repeat3", freeze_mode=freeze_mode, **enc)
    torch.manual_seed(0)
    return HybridActorCritic(cfg, OBS, HybridActorCriticConfig(hidden_dim=32, share_encoder=share),
                             action=DUROTAXIS_ACTION)


def fake_batch(model, n=16, with_obs=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (n, *OBS), dtype=torch.uint8, generator=gen)
    out = model.act(obs)
    batch = {
        "kind": out["kind"],
        "u": out["u"],
        "log_prob": out["log_prob"],
        "values": out["value"],
        "advantages": torch.randn(n, generator=gen),
        "returns": torch.randn(n, generator=gen),
    }
    if with_obs:
        batch["obs"] = obs
    else:
        batch["actor_features"] = out["actor_features"]
        batch["critic_features"] = out["critic_features"]
    return batch


# ----- the hybrid distribution ---------------------------------------------------------------


def test_hybrid_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    n, low, high = 64, torch.tensor(PARAM_LOW), torch.tensor(PARAM_HIGH)
    used = torch.tensor(PARAMS_USED, dtype=torch.float32)
    logits, mean = torch.randn(n, 3), torch.randn(n, 5)
    log_std = torch.randn(5) * 0.3
    dist = HybridDistribution(logits, mean, log_std, low, high, used)
    kind, u = dist.sample()
    kind = torch.arange(n) % 3  # every kind, several times
    params = dist.params(u)

    squashed = D.TransformedDistribution(
        D.Normal(mean, log_std.exp()),
        [D.TanhTransform(), D.AffineTransform((low + high) / 2, (high - low) / 2)],
    )
    per_param = squashed.log_prob(params)
    expected = D.Categorical(logits=logits).log_prob(kind)
    for k, uses in enumerate(PARAMS_USED):
        rows = kind == k
        cols = torch.tensor(uses)
        expected[rows] += per_param[rows][:, cols].sum(-1)
    torch.testing.assert_close(dist.log_prob(kind, u), expected, rtol=1e-4, atol=1e-4)

    # Hold uses no parameter: its log-prob is the categorical one, whatever u is.
    hold = kind == 2
    torch.testing.assert_close(
        dist.log_prob(kind, u + 5.0)[hold], D.Categorical(logits=logits).log_prob(kind)[hold]
    )


def test_hybrid_log_prob_stays_finite_where_tanh_saturates():
    low, high = torch.tensor(PARAM_LOW), torch.tensor(PARAM_HIGH)
    used = torch.tensor(PARAMS_USED, dtype=torch.float32)
    dist = HybridDistribution(torch.zeros(2, 3), torch.zeros(2, 5), torch.zeros(5), low, high, used)
    u = torch.full((2, 5), 30.0)  # tanh(u) == 1 in float32
    assert torch.isfinite(dist.log_prob(torch.tensor([0, 1]), u)).all()
    assert torch.equal(dist.params(u), high.expand(2, 5))


def test_hybrid_entropy_is_kind_entropy_plus_expected_used_squashed_entropy():
    torch.manual_seed(1)
    low, high = torch.tensor(PARAM_LOW), torch.tensor(PARAM_HIGH)
    used = torch.tensor(PARAMS_USED, dtype=torch.float32)
    logits, log_std = torch.randn(8, 3), torch.randn(5)
    dist = HybridDistribution(logits, torch.randn(8, 5), log_std, low, high, used)
    torch.manual_seed(2)
    kind_h, param_h = dist.entropy()
    torch.manual_seed(2)
    per_param = dist.param_entropy()  # the same draw: -log p of squashed samples
    cat = D.Categorical(logits=logits)
    torch.testing.assert_close(kind_h, cat.entropy())
    torch.testing.assert_close(param_h, (cat.probs * (per_param @ used.T)).sum(-1))


def test_spawn_bias_init_sets_the_initial_spawn_probability():
    cfg = EncoderConfig(weights="random", input_adapter="repeat3", freeze_mode="all")
    model = HybridActorCritic(cfg, OBS, HybridActorCriticConfig(hidden_dim=16, spawn_bias_init=2.0),
                              action=DUROTAXIS_ACTION)
    obs = torch.randint(0, 256, (8, *OBS), dtype=torch.uint8)
    probs = model.distribution(model.encode(obs)[0]).logits.exp()
    expected = torch.tensor([2.0, 0.0, 0.0]).softmax(0)
    torch.testing.assert_close(probs, expected.expand(8, 3), atol=0.02, rtol=0)


# ----- GAE -----------------------------------------------------------------------------------


def test_gae_matches_a_hand_computation():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    values = torch.tensor([[0.5, 1.0], [0.2, 0.4], [0.1, 0.3]])
    dones = torch.tensor([[False, False], [True, False], [False, True]])
    next_value = torch.tensor([2.0, 5.0])
    adv, ret = compute_gae(rewards, values, dones, next_value, gamma, lam)

    # env 0: the episode ends at t=1, so t=1 does not bootstrap and t=0 sees only t=1.
    d2 = 3.0 + gamma * 2.0 - 0.1
    d1 = 0.0 - 0.2
    d0 = 1.0 + gamma * 0.2 - 0.5
    a0 = [d0 + gamma * lam * d1, d1, d2]
    # env 1: the episode ends at t=2 (no bootstrap from next_value).
    e2 = 1.0 - 0.3
    e1 = 2.0 + gamma * 0.3 - 0.4
    e0 = 0.0 + gamma * 0.4 - 1.0
    a1 = [e0 + gamma * lam * (e1 + gamma * lam * e2), e1 + gamma * lam * e2, e2]
    expected = torch.tensor([a0, a1]).T
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


# ----- frozen backbones, feature reuse, one encoder --------------------------------------------


@pytest.mark.parametrize("freeze_mode", ["all", "last_block"])
def test_frozen_backbone_and_bn_buffers_are_bit_identical_after_ppo_updates(freeze_mode):
    model = make_model(freeze_mode)
    model.train()  # even in train mode, frozen BatchNorm must not move
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = frozen_parameter_names(model)
    assert any("running_mean" in n for n in frozen)
    optimizer = build_optimizer(model, backbone_lr=1e-3, head_lr=1e-3, eps=1e-5)
    cfg = PPOConfig(num_envs=4, num_steps=4, num_minibatches=2, update_epochs=2)
    ppo_update(model, optimizer, fake_batch(model), cfg)
    after = model.state_dict()
    assert frozen_tensors_that_moved(after, before, frozen) == []
    assert not torch.equal(after["mean_head.weight"], before["mean_head.weight"])
    if freeze_mode == "last_block":
        key = "actor_encoder.backbone.layer4.1.conv1.weight"
        assert not torch.equal(after[key], before[key])


def test_reused_features_give_the_same_loss_as_rerunning_the_backbone():
    model = make_model("all")
    assert model.features_are_fixed and model.runs_one_encoder
    cfg = PPOConfig()
    with_obs = fake_batch(model, with_obs=True)
    with_features = fake_batch(model, with_obs=False)
    torch.manual_seed(0)  # the same draw for the entropy estimate
    loss_obs, _ = ppo_loss(model, with_obs, cfg)
    torch.manual_seed(0)
    loss_feat, _ = ppo_loss(model, with_features, cfg)
    torch.testing.assert_close(loss_obs, loss_feat)


@pytest.mark.parametrize("freeze_mode", ["until_layer3", "last_block"])
def test_a_cached_frozen_prefix_gives_the_loss_and_gradients_of_the_whole_body(freeze_mode):
    model = make_model(freeze_mode)
    assert model.caches_prefix and not model.features_are_fixed
    cfg = PPOConfig()
    with_obs = fake_batch(model, with_obs=True)
    with_prefix = dict(with_obs)
    with_prefix["prefix"] = model.act(with_prefix.pop("obs"))["prefix"]
    grads = []
    for batch in (with_obs, with_prefix):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same draw for the entropy estimate
        loss, _ = ppo_loss(model, batch, cfg)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1]) and any("layer4" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6)
    assert not make_model("none").caches_prefix


def test_trainable_or_spatial_softmax_encoders_are_not_reused():
    assert not make_model("none").features_are_fixed
    assert not make_model("none").runs_one_encoder
    assert not make_model("all", pooling="spatial_softmax").features_are_fixed
    shared = make_model("none", share=True)
    assert shared.runs_one_encoder and shared.critic_encoder is None


def test_frozen_actor_and_critic_start_from_the_same_weights():
    model = make_model("all")
    actor, critic = model.actor_encoder.state_dict(), model.critic_encoder.state_dict()
    assert all(torch.equal(actor[k], critic[k]) for k in actor)
    obs = torch.randint(0, 256, (4, *OBS), dtype=torch.uint8)
    x = obs.float() / 255
    torch.testing.assert_close(model.critic_encoder(x), model.encode(obs)[1])


def test_optimizer_groups_hold_exactly_the_trainable_parameters():
    for mode, has_backbone in (("all", False), ("none", True)):
        model = make_model(mode)
        optimizer = build_optimizer(model, backbone_lr=1e-4, head_lr=3e-4, eps=1e-5)
        names = [g["name"] for g in optimizer.param_groups]
        assert ("backbone" in names) == has_backbone
        in_groups = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        assert in_groups == sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert optimizer.defaults["eps"] == 1e-5


# ----- the command line ------------------------------------------------------------------------


def test_the_documented_command_parses_exactly_as_typed():
    cfg = train_ppo.parse_config(train_ppo.TrainConfig, ["--backbone.freeze_mode=all"])
    assert cfg.backbone.freeze_mode == "all"
    cfg = train_ppo.parse_config(train_ppo.TrainConfig, ["--reuse_features=False"])
    assert cfg.reuse_features is False


def test_the_documented_command_runs_on_a_tiny_budget(tmp_path):
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final = train_ppo.main(["--backbone.freeze_mode=all", *TINY, f"--output_dir={out}"])
    files = (
        "checkpoints/last.pt",
        "metrics.jsonl",
        "config.json",
        "episode.gif",
        "learning_curve.png",
    )
    for name in files:
        assert (out / name).is_file(), name
    keys = set().union(*(json.loads(line) for line in (out / "metrics.jsonl").open()))
    for key in (
        "train/policy_loss",
        "train/entropy_kind",
        "grad/heads_norm",
        "perf/sps",
        "params/trainable",
        "eval/success_rate",
        "eval/privileged_success_rate",
        "eval/readout_success_rate",
    ):
        assert key in keys, key
    assert 0.0 <= final["eval/success_rate"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["weights_source"].startswith("random")
    assert config["prefix_reused"] is True and config["encoders_run_per_step"] == 1


def test_resume_continues_from_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [
        "--backbone.weights=random",
        *TINY,
        f"--output_dir={out}",
        "--eval_episodes=0",
        "--video=False",
    ]
    train_ppo.main(args)
    first = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    resumed = train_ppo.main([*args, "--ppo.total_timesteps=24", "--resume=True"])
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]
    assert max(r["step"] for r in first) == 16
    assert steps[-1] == 24 and "train/policy_loss" in resumed


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--backbone.freeze_mode=bogus"], "freeze_mode"),
        (["--backbone.input_adapter=1ch_conv", "--env.channels=3"], "channel"),
    ],
)
def test_bad_settings_fail_at_start_with_one_line(flags, needle, tmp_path):
    proc = subprocess.run(
        [sys.executable, "train_ppo.py", *flags, *TINY, f"--output_dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    message = proc.stderr.strip()
    assert proc.returncode == 2 and message.startswith("error: ") and needle in message
    assert "\n" not in message, message
    assert not (tmp_path / "run").exists(), "failed before creating the run directory"


# ----- learning --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_ppo_run_improves_its_return(tmp_path):
    out = tmp_path / "run"
    train_ppo.main(
        [
            "--backbone.weights=random",
            "--env.image_size=16",
            "--ppo.num_envs=16",
            "--ppo.num_steps=32",
            "--ppo.total_timesteps=6144",
            "--threads=1",
            "--eval_episodes=0",
            "--video=False",
            "--wandb.mode=disabled",
            f"--output_dir={out}",
        ]
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    returns = [r["charts/episodic_return"] for r in rows if "charts/episodic_return" in r]
    first, last = sum(returns[:3]) / 3, sum(returns[-3:]) / 3
    assert last > first + 1.0, (first, last)


def test_tiny_config_helpers_are_consistent():
    cfg = PPOConfig(num_envs=2, num_steps=4, total_timesteps=16, num_minibatches=2)
    assert (cfg.batch_size, cfg.minibatch_size, cfg.num_iterations) == (8, 4, 2)
    assert replace(cfg, total_timesteps=1).num_iterations == 1
    assert Path(train_ppo.__file__).name == "train_ppo.py"
