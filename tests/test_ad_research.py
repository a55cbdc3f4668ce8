"""AD as a research protocol: validation goals, a context of only the current episode, and
fair compressed-AD comparisons (the decoder's own embedding, the same-information AD
control, recursive compression at depth 1..3 and its freeze)."""

import json

import numpy as np
import pytest
import torch

import train_bc
from agents.ad import ADAgent, ADConfig
from agents.compressed_ad import (
    CompressedADAgent,
    CompressedADConfig,
    CompressedADPretrainAgent,
    CompressedADPretrainConfig,
    same_information_ad,
    same_information_ad_flags,
)
from envs.bc_tasks import get_bc_task
from envs.darkroom import (
    DARKROOM,
    GRIDS,
    NUM_ACTIONS,
    TEST_TASKS,
    VALID_TASKS,
    oracle_action,
    task_split,
)
from envs.darkroom.dataset import make_data
from envs.darkroom.evaluation import make_evaluator
from envs.darkroom.histories import HistoriesConfig, generate_histories, save_histories
from training.checkpoint import load_checkpoint, save_checkpoint
from training.diagnostics import frozen_tensors_that_moved
from training.ranges import ConfigError

CPU = torch.device("cpu")
TINY_ENC = dict(compressed_episodes=2, n_latent=4, d_model=32, n_head=2, encoder_layers=1)
ENCODER_SIDE = ("encoder.", "embed.", "embed_ln.")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def data_for(cfg, path):
    return make_data(str(path), device=CPU, seed=0, cache_dir=path.parent,
                     context_episodes=cfg.context_episodes,
                     prefix_episodes=cfg.prefix_episodes)


def as_set(tasks) -> set[tuple[int, ...]]:
    return {tuple(t) for t in torch.as_tensor(tasks).tolist()}


def tiny_stage1(histories, tmp_path, **kw):
    cfg = CompressedADPretrainConfig(recon_layers=1, **{**TINY_ENC, **kw})
    data = data_for(cfg, histories)
    agent = CompressedADPretrainAgent(cfg, data.spec, CPU)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        agent.update(data.sample(8, gen))
    return save_checkpoint(tmp_path / "stage1.pt", model=agent, optimizer=agent.optimizer,
                           step=2, config=cfg)


# ----- validation goals -------------------------------------------------------------------


def test_validation_goals_are_disjoint_fixed_and_regenerate_from_their_seed():
    for name, grid in GRIDS.items():
        train, valid, test = (as_set(task_split(grid, s)) for s in ("train", "valid", "test"))
        fit = as_set(task_split(grid, "fit"))
        assert len(valid) == len(test) == len(TEST_TASKS[name])
        assert valid <= train and not valid & test and not valid & fit and not fit & test
        assert fit | valid == train and len(fit) == len(train) - len(valid)
        # The documented draw: the last N of default_rng(1).permutation over "train".
        ordered = task_split(grid, "train")
        order = np.random.default_rng(1).permutation(len(ordered))
        assert as_set(ordered[order[-len(test):]]) == valid == as_set(VALID_TASKS[name])
    assert len(task_split(DARKROOM, "fit")) == 65


def test_training_data_holds_no_history_of_a_validation_goal(tmp_path):
    # Histories on every training goal, validation goals included (as files made before
    # the validation split were).
    cfg = HistoriesConfig(split="train", histories_per_task=1, episodes=3, progress=False)
    hist = generate_histories(cfg, CPU)
    path = save_histories(tmp_path / "all_train.npz", hist)
    assert as_set(hist.tasks) & as_set(VALID_TASKS["darkroom"])
    data = data_for(ADConfig(context_episodes=1), path)
    assert data.num_histories == 65 and data.dropped_valid == 8
    assert not as_set(data.tasks) & as_set(task_split(DARKROOM, "valid"))
    # What is left is exactly the non-validation learners, in order.
    keep = [i for i, t in enumerate(hist.tasks.tolist()) if tuple(t) not in as_set(
        VALID_TASKS["darkroom"])]
    assert torch.equal(data.actions, torch.from_numpy(hist.actions[keep]))
    assert "8 histories on validation tasks left out" in data.describe()
    # The default histories never learn on a validation goal.
    default = generate_histories(HistoriesConfig(histories_per_task=1, episodes=2,
                                                 progress=False), CPU)
    assert as_set(default.tasks) == as_set(task_split(DARKROOM, "fit"))
    # A file of validation histories only (the source's baseline there) trains nothing.
    only_valid = save_histories(tmp_path / "valid.npz", generate_histories(
        HistoriesConfig(split="valid", histories_per_task=1, episodes=3, progress=False), CPU))
    with pytest.raises(ValueError, match="only histories on validation tasks"):
        data_for(ADConfig(context_episodes=1), only_valid)


class OracleAgent:
    def __init__(self, tasks):
        self.tasks = tasks

    def reset_context(self, num_envs, *, generator=None):
        self.pos = None

    def act(self, obs):
        return oracle_action(DARKROOM, obs["obs"], self.tasks, torch.zeros(len(self.tasks),
                                                                           dtype=torch.bool))


def test_the_evaluator_runs_on_the_validation_goals_when_asked(tmp_path, histories):
    spec = data_for(ADConfig(context_episodes=1), histories).spec
    ev = make_evaluator(spec, device=CPU, seed=0, num_workers=1, video_dir=tmp_path,
                        env="darkroom", eval_seeds=2, goals="valid")
    assert as_set(ev.tasks) == as_set(VALID_TASKS["darkroom"])
    result = ev.run(OracleAgent(ev.tasks.repeat_interleave(2, 0)), 1)
    assert result.metrics["eval/return"] == result.metrics["eval/optimal_return"]
    saved = json.loads(result.plots[0].with_suffix(".json").read_text())
    assert saved["goals"] == "valid" and as_set(saved["tasks"]) == as_set(ev.tasks)
    test_ev = make_evaluator(spec, device=CPU, seed=0, num_workers=1, video_dir=None,
                             env="darkroom")
    assert test_ev.goals == "test" and as_set(test_ev.tasks) == as_set(TEST_TASKS["darkroom"])
    with pytest.raises(ValueError, match="evaluates on 'test' or 'valid' goals"):
        make_evaluator(spec, device=CPU, seed=0, num_workers=1, video_dir=None, goals="train")


def test_eval_goals_flag_reaches_the_evaluator_and_is_refused_where_no_goals(histories):
    def options(*flags):
        cfg = train_bc.parse_args(["--env_name=darkroom", f"--dataset={histories}", *flags])
        return train_bc.evaluator_options(cfg, get_bc_task(cfg.env_name))

    assert options()["goals"] == "test"
    assert options("--eval_goals=valid")["goals"] == "valid"
    assert options("--eval_goals=test")["goals"] == "test"
    with pytest.raises(ConfigError, match="unknown eval_goals .train."):
        options("--eval_goals=train")
    lift = train_bc.parse_args(["--env_name=lift-scripted-image", "--eval_goals=valid"])
    with pytest.raises(ValueError, match="has no held-out goal splits"):
        train_bc.evaluator_options(lift, get_bc_task(lift.env_name))


def test_eval_seeds_flag_sizes_the_evaluation_and_is_refused_where_no_goals(histories):
    def options(*flags):
        cfg = train_bc.parse_args(["--env_name=darkroom", f"--dataset={histories}", *flags])
        return train_bc.evaluator_options(cfg, get_bc_task(cfg.env_name))

    assert "eval_seeds" not in options()  # the task's default (16) stays the evaluator's
    opts = options("--eval_seeds=3", "--eval_goals=valid+test")
    assert opts["eval_seeds"] == 3
    spec = data_for(ADConfig(context_episodes=1), histories).spec
    evaluator = make_evaluator(spec, device=CPU, seed=0, num_workers=1, video_dir=None, **opts)
    assert [e.eval_seeds for e in evaluator.splits] == [3, 3]
    result = evaluator.run(OracleAgent(evaluator.splits[0].tasks.repeat_interleave(3, 0)), 1)
    assert result.metrics["valid/return"] == result.metrics["valid/optimal_return"]
    with pytest.raises(ConfigError, match="eval_seeds"):
        options("--eval_seeds=0")
    lift = train_bc.parse_args(["--env_name=lift-scripted-image", "--eval_seeds=4"])
    with pytest.raises(ValueError, match="--eval_seeds: .* has no held-out goals"):
        train_bc.evaluator_options(lift, get_bc_task(lift.env_name))


# ----- context 0: only the current episode --------------------------------------------------


def rollout_logits(agent, first_episode: dict, second_episode: dict, kv_cache: bool):
    """Logits of every step of the second of two scripted episodes (one env)."""
    agent.reset_context(1, kv_cache=kv_cache)
    for t in range(20):
        agent.next_logits({k: v[t] for k, v in first_episode.items()})
    return torch.stack([agent.next_logits({k: v[t] for k, v in second_episode.items()})
                        for t in range(20)])


def scripted_episode(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"obs": torch.randint(9, (20, 1, 2), generator=gen),
            "prev_action": torch.randint(NUM_ACTIONS, (20, 1), generator=gen),
            "prev_reward": torch.randint(2, (20, 1), generator=gen).float()}


@pytest.mark.parametrize("kv_cache", [True, False])
def test_context_zero_sees_only_the_current_episode(histories, kv_cache):
    spec = data_for(ADConfig(context_episodes=0), histories).spec
    current = scripted_episode(0)
    earlier = [scripted_episode(1), scripted_episode(2)]  # differ everywhere, prev_action too
    for cfg, agent_class in [
        (ADConfig(context_episodes=0, d_model=32, n_layer=2, n_head=2), ADAgent),
        (CompressedADConfig(context_episodes=0, **{**TINY_ENC, "compressed_episodes": 0},
                            n_layer=2), CompressedADAgent),
    ]:
        torch.manual_seed(0)
        agent = agent_class(cfg, spec, CPU)
        a, b = (rollout_logits(agent, e, current, kv_cache) for e in earlier)
        assert torch.equal(a, b), agent_class.__name__
        # The same model at context 1 does read the earlier episode.
        wider = agent_class(type(cfg)(**{**cfg.__dict__, "context_episodes": 1}), spec, CPU)
        a, b = (rollout_logits(wider, e, current, kv_cache) for e in earlier)
        assert not torch.allclose(a, b)


def test_context_zero_trains_on_single_episode_windows(histories):
    cfg = ADConfig(context_episodes=0, d_model=32, n_layer=1, n_head=2, dropout=0.0)
    data = data_for(cfg, histories)
    assert data.window == 20 and data.spec.context_episodes == 0
    assert data.num_samples == data.num_histories * 12
    agent = ADAgent(cfg, data.spec, CPU)
    info = agent.update(data.sample(8, torch.Generator().manual_seed(0)))
    assert torch.isfinite(info["train/loss"])


# ----- compressed AD: the decoder's own embedding, frozen encoder only -----------------------


def test_frozen_stage2_freezes_the_encoder_only_and_trains_the_decoder_embedding(histories,
                                                                                 tmp_path):
    ckpt = tiny_stage1(histories, tmp_path)
    source = load_checkpoint(ckpt)["model"]
    cfg = CompressedADConfig(encoder_checkpoint=str(ckpt), freeze_encoder=True,
                             context_episodes=1, n_layer=1, **TINY_ENC)
    data = data_for(cfg, histories)
    agent = CompressedADAgent(cfg, data.spec, CPU)
    encoder_side = [k for k in agent.state_dict() if k.startswith(ENCODER_SIDE)]
    assert encoder_side and not any(k.startswith("decoder_embed") for k in encoder_side)
    heads = {id(p) for g in agent.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in heads for p in agent.decoder_embed.parameters())
    assert all(p.requires_grad for p in agent.decoder_embed_ln.parameters())
    before = {k: v.clone() for k, v in agent.state_dict().items() if k.startswith("decoder_embed")}
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        agent.update(data.sample(8, gen))
    assert frozen_tensors_that_moved(agent.state_dict(), source, encoder_side) == []
    moved = frozen_tensors_that_moved(agent.state_dict(), before, before)
    assert "decoder_embed.x.weight" in moved and "decoder_embed_ln.weight" in moved
    agent.train()
    assert agent.decoder_embed.training and not agent.embed.training


# ----- compressed AD: the AD control with the same raw information ---------------------------


def test_same_information_ad_sees_the_decoder_and_the_compressed_episodes_raw(histories):
    cfg = CompressedADConfig(context_episodes=1, compressed_episodes=2, compression_depth=3,
                             n_layer=3, d_model=32, n_head=2, lr=1e-3, lr_decay_steps=50)
    control = same_information_ad(cfg)
    assert control.context_episodes == 1 + 2 * 3
    assert (control.n_layer, control.d_model, control.lr, control.lr_decay_steps) == (
        3, 32, 1e-3, 50)
    parsed = train_bc.parse_args(["--env_name=darkroom", "--offline_steps=50",
                                  *same_information_ad_flags(cfg)])
    assert parsed.agent_name == "ad" and parsed.agent == control
    # The control's raw window covers the episodes compressed AD sees (raw + compressed).
    cad, ad = data_for(cfg, histories), data_for(control, histories)
    assert cad.window == ad.window == (1 + 6 + 1) * 20


# ----- compressed AD: recursive compression, depth 1..3 --------------------------------------


def reference_fold(agent, obs, actions, rewards, depth):
    """Compression as it was before compression_depth: one fold from z_0, full gradient."""
    b, episodes = obs.shape[0], obs.shape[1] // agent.horizon
    z = agent.encoder.initial(b)
    tokens = agent.embed_transitions(obs, actions, rewards).view(b, episodes, agent.horizon, -1)
    for k in range(episodes):
        active = (k >= episodes - depth)[:, None, None]
        z = torch.where(active, agent.encoder(z, tokens[:, k]), z)
    return z


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_recursive_compression_shapes_and_in_context_cache_at_depth(histories, depth):
    cfg = CompressedADConfig(context_episodes=1, n_layer=1, compression_depth=depth,
                             **TINY_ENC)
    data = data_for(cfg, histories)
    assert data.spec.prefix_episodes == 2 * depth and data.window == (2 * depth + 2) * 20
    agent = CompressedADAgent(cfg, data.spec, CPU)
    batch = data.sample(6, torch.Generator().manual_seed(0))
    n = 2 * depth * 20
    z = agent.compress(batch["obs"][:, :n], batch["actions"][:, :n], batch["rewards"][:, :n],
                       batch["prefix_episodes"])
    assert z.shape == (6, 4, 32)
    loss, info = agent.loss(batch)
    assert loss.shape == () and torch.isfinite(loss)
    # In context: the KV-cached rollout matches recomputation once the latents hold all
    # 2 x depth compressed episodes and slide on.
    full = CompressedADAgent(cfg, data.spec, CPU)
    full.load_state_dict(agent.state_dict())
    first, second = scripted_episode(0), scripted_episode(1)
    agent.reset_context(1, kv_cache=True)
    full.reset_context(1, kv_cache=False)
    for episode in range(2 * depth + 3):
        steps = first if episode % 2 else second
        for t in range(20):
            step = {k: v[t] for k, v in steps.items()}
            assert (agent.next_logits(step) - full.next_logits(step)).abs().max() < 1e-5


def test_depth_one_is_the_single_fold_and_deeper_ones_stop_the_gradient_at_chunks(histories):
    one = CompressedADConfig(context_episodes=1, n_layer=1, dropout=0.0,
                             **{**TINY_ENC, "compressed_episodes": 6})
    three = CompressedADConfig(context_episodes=1, n_layer=1, dropout=0.0,
                               compression_depth=3, **TINY_ENC)  # 3 chunks of 2
    data = data_for(one, histories)
    assert data.spec.prefix_episodes == data_for(three, histories).spec.prefix_episodes == 6
    flat = CompressedADAgent(one, data.spec, CPU).eval()
    deep = CompressedADAgent(three, data.spec, CPU).eval()
    deep.load_state_dict(flat.state_dict())
    batch = data.sample(6, torch.Generator().manual_seed(0))
    n = 6 * 20
    obs, actions = batch["obs"][:, :n], batch["actions"][:, :n]
    depth = torch.tensor([6, 6, 5, 3, 1, 0])
    # Depth 1 computes exactly the fold it always did.
    rewards = batch["rewards"][:, :n].clone().requires_grad_(True)
    z = flat.compress(obs, actions, rewards, depth)
    assert torch.equal(z, reference_fold(flat, obs, actions, rewards, depth))
    (grad_flat,) = torch.autograd.grad(z.square().sum(), rewards)
    # Depth 3: the same latents; the gradient reaches the newest chunk only.
    rewards = batch["rewards"][:, :n].clone().requires_grad_(True)
    z3 = deep.compress(obs, actions, rewards, depth)
    assert torch.allclose(z3, z, atol=1e-6)
    (grad_deep,) = torch.autograd.grad(z3.square().sum(), rewards)
    older, newest = slice(0, 4 * 20), slice(4 * 20, n)
    assert grad_flat[:2, older].abs().sum() > 0 and grad_deep[:, older].abs().sum() == 0
    assert torch.allclose(grad_deep[:, newest], grad_flat[:, newest], atol=1e-6)


@pytest.mark.parametrize("depth", [2, 3])
def test_recursive_compression_frozen_encoder_stays_bit_identical(histories, tmp_path, depth):
    ckpt = tiny_stage1(histories, tmp_path, compressed_episodes=1, compression_depth=depth)
    source = load_checkpoint(ckpt)["model"]
    enc = {**TINY_ENC, "compressed_episodes": 1, "compression_depth": depth}
    frozen_cfg = CompressedADConfig(encoder_checkpoint=str(ckpt), freeze_encoder=True,
                                    context_episodes=1, n_layer=1, **enc)
    data = data_for(frozen_cfg, histories)
    assert data.spec.prefix_episodes == depth
    frozen = CompressedADAgent(frozen_cfg, data.spec, CPU)
    names = [k for k in frozen.state_dict() if k.startswith(ENCODER_SIDE)]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        frozen.update(data.sample(8, gen))
    assert frozen_tensors_that_moved(frozen.state_dict(), source, names) == []
    tuned = CompressedADAgent(CompressedADConfig(**{**frozen_cfg.__dict__,
                                                    "freeze_encoder": False}), data.spec, CPU)
    for _ in range(3):
        tuned.update(data.sample(8, gen))
    assert frozen_tensors_that_moved(tuned.state_dict(), source, names)


def test_compression_depth_is_checked_and_sizes_stage_one(histories):
    with pytest.raises(ConfigError, match="compression_depth=0 is out of range"):
        CompressedADConfig(compression_depth=0)
    with pytest.raises(ConfigError, match="compression_depth=0 is out of range"):
        CompressedADPretrainConfig(compression_depth=0)
    cfg = CompressedADPretrainConfig(recon_layers=1, compression_depth=3, **TINY_ENC)
    data = data_for(cfg, histories)
    agent = CompressedADPretrainAgent(cfg, data.spec, CPU)
    assert agent.age.num_embeddings == 6 and data.window == 7 * 20
    info = agent.update(data.sample(8, torch.Generator().manual_seed(0)))
    assert torch.isfinite(info["train/recon_loss"])


def test_train_bc_runs_deep_compressed_ad_evaluated_on_validation_goals(histories, tmp_path,
                                                                         monkeypatch):
    import agents

    monkeypatch.setitem(agents.AGENTS, "compressed_ad", (CompressedADConfig, CompressedADAgent))
    out = tmp_path / "run"
    metrics = train_bc.train(train_bc.parse_args([
        "--env_name=darkroom", "--agent=compressed_ad", f"--dataset={histories}",
        "--offline_steps=2", "--batch_size=4", "--eval_episodes=2", "--device=cpu",
        "--wandb.mode=disabled", f"--output_dir={out}", "--eval_goals=valid",
        "--agent.compression_depth=2", "--agent.context_episodes=1", "--agent.n_layer=1",
        *(f"--agent.{k}={v}" for k, v in TINY_ENC.items())]))
    assert "eval/return" in metrics
    assert json.loads((out / "config.json").read_text())["eval_goals"] == "valid"
    (curve,) = out.glob("videos/eval_*/in_context_return.json")
    saved = json.loads(curve.read_text())
    assert saved["goals"] == "valid" and as_set(saved["tasks"]) == as_set(VALID_TASKS["darkroom"])


class StayAgent:
    """Always action 0: deterministic, so two evaluations of one split must agree."""

    def reset_context(self, num_envs, *, generator=None):
        self.n = num_envs

    def act(self, obs):
        return torch.zeros(len(obs["obs"]), dtype=torch.long)


def test_valid_plus_test_evaluates_both_splits_under_their_own_names(tmp_path, histories):
    spec = data_for(ADConfig(context_episodes=1), histories).spec

    def run(goals, video_dir):
        ev = make_evaluator(spec, device=CPU, seed=0, num_workers=1, video_dir=video_dir,
                            env="darkroom", eval_seeds=2, goals=goals)
        return ev.run(StayAgent(), 2)

    both = run("valid+test", tmp_path / "both")
    for split in ("valid", "test"):
        alone = run(split, None).metrics
        assert {k.replace("eval/", f"{split}/"): v for k, v in alone.items()} == {
            k: v for k, v in both.metrics.items() if k.startswith(f"{split}/")}
    assert not any(k.startswith("eval/") for k in both.metrics)
    saved = [json.loads(p.with_suffix(".json").read_text())["goals"] for p in both.plots]
    assert saved == ["valid", "test"]
    assert [p.parent.parent.name for p in both.plots] == ["valid", "test"]
    cfg = train_bc.parse_args(["--env_name=darkroom", f"--dataset={histories}",
                               "--eval_goals=valid+test"])
    assert train_bc.evaluator_options(cfg, get_bc_task(cfg.env_name))["goals"] == "valid+test"
