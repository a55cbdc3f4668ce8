"""AD and compressed AD: KV cache == recomputation, data windows, freezing, stage-1 -> stage-2
checkpoints, the in-context evaluator, and tiny end-to-end runs through train_bc."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_bc
from agents.ad import ADAgent, ADConfig
from agents.compressed_ad import (
    CompressedADAgent,
    CompressedADConfig,
    CompressedADPretrainAgent,
    CompressedADPretrainConfig,
)
from envs.darkroom import DARKROOM, NUM_ACTIONS, DarkroomBatch, oracle_action, task_split
from envs.darkroom.dataset import DarkroomSpec, make_data
from envs.darkroom.evaluation import make_evaluator
from envs.darkroom.histories import HistoriesConfig, generate_histories, save_histories
from training.checkpoint import load_checkpoint, save_checkpoint
from training.diagnostics import frozen_tensors_that_moved

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]
TINY_AD = dict(context_episodes=1, d_model=32, n_layer=2, n_head=2)
TINY_ENC = dict(compressed_episodes=2, n_latent=4, d_model=32, n_head=2, encoder_layers=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def data_for_cache(cfg, cache_dir: Path):
    return make_data(None, device=CPU, seed=0, cache_dir=cache_dir,
                     context_episodes=cfg.context_episodes,
                     prefix_episodes=cfg.prefix_episodes)


def data_for(cfg, histories: Path):
    return make_data(str(histories), device=CPU, seed=0, cache_dir=histories.parent,
                     context_episodes=cfg.context_episodes,
                     prefix_episodes=cfg.prefix_episodes)


def tiny_stage1(histories: Path, tmp_path: Path, **kw) -> Path:
    cfg = CompressedADPretrainConfig(recon_layers=1, **{**TINY_ENC, **kw})
    data = data_for(cfg, histories)
    agent = CompressedADPretrainAgent(cfg, data.spec, CPU)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        agent.update(data.sample(8, gen))
    return save_checkpoint(tmp_path / "stage1.pt", model=agent, optimizer=agent.optimizer,
                           step=2, config=cfg)


def roll_both(cached, full, episodes: int, num_envs: int = 3) -> float:
    """Drive two agents through the same rollout; the largest logit difference seen."""
    torch.manual_seed(0)
    cached.reset_context(num_envs, kv_cache=True)
    full.reset_context(num_envs, kv_cache=False)
    env = DarkroomBatch(DARKROOM, task_split(DARKROOM, "test")[:num_envs])
    gen = torch.Generator().manual_seed(1)
    prev_a = torch.zeros(num_envs, dtype=torch.long)
    prev_r = torch.zeros(num_envs)
    worst = 0.0
    for _ in range(episodes):
        obs, done = env.reset(), False
        while not done:
            step = {"obs": obs, "prev_action": prev_a, "prev_reward": prev_r}
            a, b = cached.next_logits(step), full.next_logits(step)
            worst = max(worst, (a - b).abs().max().item())
            # Random actions with some reward: exercises the reward channel too.
            prev_a = torch.where(torch.rand(num_envs, generator=gen) < 0.5, a.argmax(-1),
                                 torch.randint(NUM_ACTIONS, (num_envs,), generator=gen))
            obs, prev_r, done = env.step(prev_a)
    return worst


def test_ad_kv_cache_logits_equal_full_recompute(histories):
    data = data_for(ADConfig(**TINY_AD), histories)
    a = ADAgent(ADConfig(**TINY_AD), data.spec, CPU)
    b = ADAgent(ADConfig(**TINY_AD), data.spec, CPU)
    b.load_state_dict(a.state_dict())
    # 4 episodes with a 2-episode window: the window slides twice.
    assert roll_both(a, b, episodes=4) < 1e-5


def test_compressed_ad_kv_cache_logits_equal_full_recompute(histories):
    cfg = CompressedADConfig(context_episodes=1, n_layer=2, **TINY_ENC)
    data = data_for(cfg, histories)
    a = CompressedADAgent(cfg, data.spec, CPU)
    b = CompressedADAgent(cfg, data.spec, CPU)
    b.load_state_dict(a.state_dict())
    # 6 episodes: latents of 0, 1, 2 (max) and then sliding older episodes.
    assert roll_both(a, b, episodes=6) < 1e-5


def test_ad_is_causal_and_learns_the_window_loss(histories):
    cfg = ADConfig(**TINY_AD, dropout=0.0)
    data = data_for(cfg, histories)
    agent = ADAgent(cfg, data.spec, CPU).eval()
    batch = data.sample(4, torch.Generator().manual_seed(0))
    obs, prev_a = batch["obs"], batch["actions"]
    base = agent.logits(obs, prev_a, batch["rewards"])
    changed = obs.clone()
    changed[:, 25:] = (changed[:, 25:] + 1) % 9
    after = agent.logits(changed, prev_a, batch["rewards"])
    assert torch.allclose(base[:, :25], after[:, :25], atol=1e-6)
    assert not torch.allclose(base[:, 25:], after[:, 25:])


def test_data_windows_are_episode_aligned_slices_of_the_histories(histories):
    from envs.darkroom.histories import load_histories

    hist = load_histories(histories)
    data = data_for(CompressedADConfig(context_episodes=1, compressed_episodes=2), histories)
    assert data.window == 4 * 20 and data.num_samples == 24 * 11
    assert data.spec.prefix_episodes == 2 and data.spec.context_episodes == 1
    batch = data.sample(64, torch.Generator().manual_seed(0))
    assert batch["obs"].shape == (64, 80, 2) and batch["actions"].shape == (64, 80)
    acts = torch.from_numpy(hist.actions).long()
    for i in range(64):
        p = int(batch["prefix_episodes"][i])
        real = batch["actions"][i, (2 - p) * 20:]
        # The real part is one contiguous, episode-aligned piece of some history.
        matches = [
            h for h in range(len(acts)) for e in range(12 - len(real) // 20 + 1)
            if torch.equal(acts[h, e * 20:e * 20 + len(real)], real)
            and (p == 2 or e == 0)
        ]
        assert matches, f"window {i} is not a slice of a history"
        assert (batch["obs"][i, : (2 - p) * 20] == 0).all()


def test_frozen_encoder_and_shared_embedding_stay_bit_identical(histories, tmp_path):
    ckpt_path = tiny_stage1(histories, tmp_path)
    source = load_checkpoint(ckpt_path)["model"]
    cfg = CompressedADConfig(encoder_checkpoint=str(ckpt_path), freeze_encoder=True,
                             context_episodes=1, n_layer=1, **TINY_ENC)
    data = data_for(cfg, histories)
    agent = CompressedADAgent(cfg, data.spec, CPU)
    names = [k for k in agent.state_dict() if k.startswith(("encoder.", "embed.", "embed_ln."))]
    assert len(names) > 10
    assert [g["name"] for g in agent.optimizer.param_groups] == ["heads"]
    decoder_before = agent.decoder.pos.detach().clone()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        agent.update(data.sample(8, gen))
    assert frozen_tensors_that_moved(agent.state_dict(), source, names) == []
    assert not torch.equal(agent.decoder.pos, decoder_before)
    assert not agent.encoder.training and agent.decoder.training  # frozen: no dropout

    tuned = CompressedADAgent(
        CompressedADConfig(encoder_checkpoint=str(ckpt_path), freeze_encoder=False,
                           context_episodes=1, n_layer=1, **TINY_ENC), data.spec, CPU)
    groups = {g["name"]: sum(p.numel() for p in g["params"]) for g in tuned.optimizer.param_groups}
    shared = sum(p.numel() for m in tuned.shared_modules() for p in m.parameters())
    assert groups["backbone"] == shared
    for _ in range(3):
        tuned.update(data.sample(8, gen))
    assert len(frozen_tensors_that_moved(tuned.state_dict(), source, names)) > 0


def test_stage1_checkpoint_loads_and_a_mismatched_one_fails_in_one_line(histories, tmp_path):
    ckpt_path = tiny_stage1(histories, tmp_path)
    cfg = CompressedADConfig(encoder_checkpoint=str(ckpt_path), context_episodes=1, n_layer=1,
                             **TINY_ENC)
    data = data_for(cfg, histories)
    agent = CompressedADAgent(cfg, data.spec, CPU)
    source = load_checkpoint(ckpt_path)["model"]
    for key, value in agent.state_dict().items():
        if key.startswith(("encoder.", "embed.", "embed_ln.")):
            assert torch.equal(value, source[key]), key

    other = tmp_path / "other"
    other.mkdir()
    wrong = tiny_stage1(histories, other, n_latent=8)
    bad = CompressedADConfig(encoder_checkpoint=str(wrong), context_episodes=1, n_layer=1,
                             **TINY_ENC)
    with pytest.raises(ValueError) as err:
        CompressedADAgent(bad, data.spec, CPU)
    assert "\n" not in str(err.value) and "encoder.latent_init" in str(err.value)

    ad_path = save_checkpoint(tmp_path / "ad.pt", model=ADAgent(ADConfig(**TINY_AD), data.spec,
                                                                CPU), optimizer=None, step=0,
                              config=ADConfig())
    with pytest.raises(ValueError, match="holds no compressed-AD encoder"):
        CompressedADAgent(CompressedADConfig(encoder_checkpoint=str(ad_path), **TINY_ENC),
                          data.spec, CPU)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CompressedADAgent(CompressedADConfig(encoder_checkpoint=str(tmp_path / "no.pt")),
                          data.spec, CPU)
    with pytest.raises(ValueError, match="needs --agent.encoder_checkpoint"):
        CompressedADAgent(CompressedADConfig(freeze_encoder=True), data.spec, CPU)


def test_stage1_targets_are_the_raw_episode(histories):
    cfg = CompressedADPretrainConfig(recon_layers=1, **TINY_ENC)
    data = data_for(cfg, histories)
    agent = CompressedADPretrainAgent(cfg, data.spec, CPU)
    batch = data.sample(16, torch.Generator().manual_seed(0))
    loss, info = agent.loss(batch)
    # Untrained: about chance for each field, summed (x, y: 9 classes; action 5; reward 2).
    chance = 2 * torch.log(torch.tensor(9.0)) + torch.log(torch.tensor(5.0)) + 0.69
    assert 0.5 * chance < loss.item() < 2.0 * chance
    assert set(info) >= {"train/recon_cell_accuracy", "train/recon_action_accuracy"}


class OracleAgent:
    """Shortest path to the goal, read from the evaluator's env (checks the bookkeeping)."""

    def __init__(self, env_tasks: torch.Tensor) -> None:
        self.tasks = env_tasks

    def reset_context(self, num_envs, *, generator=None, kv_cache=True):
        assert num_envs == len(self.tasks)

    def act(self, obs):
        return oracle_action(DARKROOM, obs["obs"], self.tasks, torch.zeros(len(self.tasks),
                                                                          dtype=torch.bool))


class RandomAgent:
    def reset_context(self, num_envs, *, generator=None, kv_cache=True):
        self.gen = torch.Generator().manual_seed(3)

    def act(self, obs):
        return torch.randint(NUM_ACTIONS, (len(obs["obs"]),), generator=self.gen)


def test_evaluator_scores_oracle_optimal_and_random_about_random(tmp_path):
    spec = DarkroomSpec(env="darkroom", grid_size=9, horizon=20, num_actions=5,
                        context_episodes=4, prefix_episodes=0, history_episodes=80)
    ev = make_evaluator(spec, device=CPU, seed=0, num_workers=1, video_dir=tmp_path,
                        env="darkroom", eval_seeds=64)
    tasks = task_split(DARKROOM, "test").repeat_interleave(64, 0)
    result = ev.run(OracleAgent(tasks), 2)
    m = result.metrics
    assert m["eval/return"] == m["eval/optimal_return"] == 17.0
    assert m["eval/normalized_return"] == 1.0
    assert result.plots[0].is_file()
    curve = json.loads(result.plots[0].with_suffix(".json").read_text())
    assert curve["return_per_episode"] == [17.0, 17.0]
    rand = ev.run(RandomAgent(), 3).metrics
    assert abs(rand["eval/return_mean_over_episodes"] - rand["eval/random_return"]) < 0.15
    assert ev.run(object(), 1).metrics == {}  # stage-1 agents have no policy


def test_tiny_ad_training_and_evaluation_end_to_end(histories, tmp_path):
    cfg = ADConfig(**TINY_AD, lr=3e-3)
    data = data_for(cfg, histories)
    agent = ADAgent(cfg, data.spec, CPU)
    gen = torch.Generator().manual_seed(0)
    first = agent.update(data.sample(16, gen))
    for _ in range(20):
        last = agent.update(data.sample(16, gen))
    assert last["train/loss"] < first["train/loss"]
    assert {"grad/heads_norm", "train/accuracy", "train/lr_heads"} <= set(last)
    ev = make_evaluator(data.spec, device=CPU, seed=0, num_workers=1, video_dir=tmp_path,
                        env="darkroom", eval_seeds=2)
    a = ev.run(agent, 3)
    b = ev.run(agent, 3)
    assert a.metrics == b.metrics  # seeded: the same rollouts every time
    assert 0.0 <= a.metrics["eval/return"] <= 20.0
    assert a.plots[0].stat().st_size > 1000


def _train_bc_in_process(monkeypatch, args: list[str]) -> dict:
    import agents
    import train_bc

    monkeypatch.setitem(agents.AGENTS, "ad", (ADConfig, ADAgent))
    monkeypatch.setitem(agents.AGENTS, "compressed_ad", (CompressedADConfig, CompressedADAgent))
    monkeypatch.setitem(agents.AGENTS, "compressed_ad_pretrain",
                        (CompressedADPretrainConfig, CompressedADPretrainAgent))
    return train_bc.train(train_bc.parse_args(args))


def test_train_bc_runs_ad_and_both_compressed_stages(histories, tmp_path, monkeypatch):
    common = ["--env_name=darkroom", f"--dataset={histories}", "--offline_steps=3",
              "--batch_size=4", "--eval_episodes=2", "--device=cpu", "--wandb.mode=disabled",
              "--log_interval=1"]
    metrics = _train_bc_in_process(monkeypatch, common + [
        f"--output_dir={tmp_path / 'ad'}", "--agent.context_episodes=1", "--agent.d_model=32",
        "--agent.n_layer=1", "--agent.n_head=2"])
    assert metrics["eval/in_context_episodes"] == 2.0
    enc = ["--agent.compressed_episodes=2", "--agent.n_latent=4", "--agent.d_model=32",
           "--agent.n_head=2", "--agent.encoder_layers=1"]
    _train_bc_in_process(monkeypatch, common + [
        "--agent=compressed_ad_pretrain", f"--output_dir={tmp_path / 's1'}",
        "--agent.recon_layers=1", *enc])
    stage1 = tmp_path / "s1" / "checkpoints" / "last.pt"
    assert stage1.is_file()
    metrics = _train_bc_in_process(monkeypatch, common + [
        "--agent=compressed_ad", f"--output_dir={tmp_path / 's2'}",
        f"--agent.encoder_checkpoint={stage1}", "--agent.freeze_encoder=True",
        "--agent.context_episodes=1", "--agent.n_layer=1", *enc])
    assert "eval/return" in metrics
    lines = (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()
    assert any("params/encoder/frozen" in line for line in lines)


@pytest.mark.slow
def test_train_bc_command_line(histories, tmp_path):
    cmd = [sys.executable, "train_bc.py", "--env_name=darkroom", f"--dataset={histories}",
           "--offline_steps=2", "--batch_size=4", "--eval_episodes=2", "--device=cpu",
           "--wandb.mode=disabled", f"--output_dir={tmp_path / 'run'}",
           "--agent.context_episodes=1", "--agent.d_model=32", "--agent.n_layer=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=110, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "eval/return" in json.loads((tmp_path / "run" / "final_metrics.json").read_text())


def test_default_dataset_is_generated_once_into_the_cache(tmp_path, monkeypatch):
    import envs.darkroom.histories as dh

    tiny = HistoriesConfig(histories_per_task=1, max_tasks=4, episodes=6, progress=False)
    monkeypatch.setitem(dh.DEFAULT_CONFIGS, "darkroom", tiny)
    cfg = ADConfig(**TINY_AD)
    first = data_for_cache(cfg, tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".npz") and files[1].endswith(".png")
    stamp = (tmp_path / files[0]).stat().st_mtime_ns
    second = data_for_cache(cfg, tmp_path)
    assert (tmp_path / files[0]).stat().st_mtime_ns == stamp
    assert torch.equal(first.actions, second.actions) and first.num_samples == 4 * 5


def test_histories_on_held_out_tasks_are_refused_as_training_data(tmp_path):
    cfg = HistoriesConfig(split="test", histories_per_task=1, episodes=3, progress=False)
    path = save_histories(tmp_path / "test_goals.npz", generate_histories(cfg, CPU))
    with pytest.raises(ValueError, match="held-out test tasks"):
        data_for(ADConfig(**TINY_AD), path)


def test_an_agent_that_does_not_fit_the_task_is_one_line(histories):
    with pytest.raises(ValueError, match="--agent=fbc does not fit --env_name=darkroom: its data "
                                         "is shaped by the agent's context_episodes"):
        train_bc.train(train_bc.parse_args(["--env_name=darkroom", "--agent=fbc",
                                            f"--dataset={histories}", "--device=cpu"]))
