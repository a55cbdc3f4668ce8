"""torchrun: two gloo processes on the CPU against one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.checkpoint import load_checkpoint
from training.distributed import LossForward, World, data_parallel

ROOT = Path(__file__).resolve().parents[1]


def launch(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    """The entry point as users run it: plain python, or torchrun with nproc processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    if nproc == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def ad_args(histories: Path, out: Path, *extra: str) -> list[str]:
    # No dropout: each rank draws its own dropout masks, so only a noise-free loss can
    # match the single process exactly.
    return ["train_bc.py", "--env_name=darkroom", f"--dataset={histories}", "--agent=ad",
            "--agent.context_episodes=1", "--agent.d_model=32", "--agent.n_layer=1",
            "--agent.n_head=2", "--agent.dropout=0", "--offline_steps=6", "--batch_size=8",
            "--eval_episodes=0", "--log_interval=2", "--save_interval=3", "--device=cpu",
            "--precision=fp32",  # compared to 1e-5: summation order, not bf16 rounding
            f"--output_dir={out}", *extra]


def test_two_processes_match_one_process_with_the_same_global_batch(histories, tmp_path):
    launch(ad_args(histories, tmp_path / "one"), nproc=1)
    launch(ad_args(histories, tmp_path / "two"), nproc=2)
    one = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    two = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    assert one["step"] == two["step"] == 6
    for name, tensor in one["model"].items():
        if not (torch.is_tensor(tensor) and torch.is_floating_point(tensor)):
            continue
        other = two["model"][name]
        if name.endswith("qkv.bias"):
            # Softmax ignores the key bias, so its gradient is zero up to rounding, and
            # Adam scales that rounding up to +-lr per step: exclude those 32 entries.
            keep = torch.ones_like(tensor, dtype=torch.bool)
            keep[32:64] = False
            tensor, other = tensor[keep], other[keep]
        # Adam divides by sqrt(v): an entry whose gradient is near zero turns summation-order
        # rounding into a step of up to lr (3e-4), so a rare entry differs by ~1e-6.
        torch.testing.assert_close(other, tensor, rtol=1e-5, atol=1e-5, msg=name)
    # Rank 0 alone logged: one record per logged step, and the losses agree.
    rows = {n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("one", "two")}
    steps = [r["step"] for r in rows["two"] if "train/loss" in r]
    assert steps == [2, 4, 6]
    for a, b in zip((r for r in rows["one"] if "train/loss" in r),
                    (r for r in rows["two"] if "train/loss" in r), strict=True):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-4)
    # The per-rank RNG states travel in the checkpoint, for an exact resume per rank.
    assert len(two["extra"]["ranks"]) == 2


def test_two_processes_resume(histories, tmp_path):
    out = tmp_path / "run"
    launch(ad_args(histories, out, "--offline_steps=3"), nproc=2)
    proc = launch(ad_args(histories, out, "--resume=True"), nproc=2)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 6, proc.stderr[-2000:]


PPO_TINY = ["train_ppo.py", "--backbone.weights=random", "--ppo.num_envs=2",
            "--ppo.num_steps=4", "--ppo.num_minibatches=2", "--ppo.update_epochs=2",
            "--env.image_size=16", "--env.max_steps=6", "--eval_episodes=2", "--video=False",
            "--threads=1", "--device=cpu", "--checkpoint_every=1"]


def test_ppo_two_ranks_train_checkpoint_and_resume(tmp_path):
    out = tmp_path / "ppo"
    # 48 environment steps over 2 ranks x 2 envs x 4 steps: 3 iterations of 16 steps.
    launch([*PPO_TINY, "--ppo.total_timesteps=48", f"--output_dir={out}"], nproc=2)
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == 48 and ckpt["extra"]["iteration"] == 3
    ranks = ckpt["extra"]["ranks"]
    assert len(ranks) == 2  # each rank's own environments, seeded apart
    assert not torch.equal(ranks[0]["env"]["pos"], ranks[1]["env"]["pos"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/policy_loss" in r] == [16, 32, 48]
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if torch.is_tensor(t))
    # A checkpoint of 2 ranks continues with 2, and refuses 1 in one line.
    launch([*PPO_TINY, "--ppo.total_timesteps=80", f"--output_dir={out}", "--resume=True"],
           nproc=2)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 80
    proc = subprocess.run([sys.executable, *PPO_TINY, "--ppo.total_timesteps=96",
                           f"--output_dir={out}", "--resume=True"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "resume it with as many" in proc.stderr


def test_shards_split_the_global_batch_and_refuse_a_remainder():
    shards = [World(rank=r, world_size=4).shard(8) for r in range(4)]
    assert [(s.start, s.stop) for s in shards] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    with pytest.raises(ValueError, match="does not split evenly over 4 processes"):
        World(rank=0, world_size=4).shard(10)


def _fbc_broadcast_probe(rank: int, init_file: str, out: str) -> None:
    """One of two gloo ranks: two fbc updates through DDP, recording what DDP broadcasts
    before each forward (its buffers); saves the names and the EMA's state."""
    from agents.fbc import FBCAgent
    from tests.test_fbc import CPU, fake_batch, small_cfg, small_spec

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # as train_bc: every rank builds the same agent, then its own noise
        spec = small_spec()
        agent = FBCAgent(small_cfg(freeze_encoder=False, share_encoder=True), spec, CPU)
        ddp = data_parallel(LossForward(agent, agent.loss), World(rank, 2, 0), CPU)
        torch.manual_seed(1 + rank)
        sent: list[torch.Tensor] = []
        send = ddp._distributed_broadcast_coalesced

        def recording(tensors, *args, **kwargs):
            sent.extend(tensors)
            return send(tensors, *args, **kwargs)

        ddp._distributed_broadcast_coalesced = recording
        for step in range(2):
            agent.update(fake_batch(spec, seed=10 * rank + step), ddp)
        names = {id(t): f"policy.{n}" for n, t in agent.policy.named_buffers()}
        names.update({id(t): f"ema.{n}" for n, t in agent.ema.named_buffers()})
        torch.save({"sent": [names.get(id(t), "?") for t in sent],
                    "ddp_buffers": [n for n, _ in ddp.module.named_buffers()],
                    "ema": agent.ema.state_dict()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fbc_under_ddp_broadcasts_its_own_statistics_and_no_ema(tmp_path):
    """DDP broadcasts every buffer of the module it wraps before each forward: fbc's EMA
    copies of the weights, as buffers of the wrapped agent, went out at every step. Now only
    the trained network's buffers (BatchNorm statistics) do; the EMA of the trainable
    weights still agrees on both ranks, since the weights it follows are DDP's."""
    mp.spawn(_fbc_broadcast_probe, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for got in ranks:
        assert not any(".ema." in n for n in got["ddp_buffers"]), got["ddp_buffers"]
        sent = got["sent"]
        assert any(n.endswith("running_mean") for n in sent), sent  # two forwards' worth
        assert all(n.startswith("policy.") for n in sent), sorted(set(sent))
    own_statistics = ("running_mean", "running_var", "num_batches_tracked", "n_averaged")
    averaged = [k for k in ranks[0]["ema"] if not k.endswith(own_statistics)]
    assert averaged
    for key in averaged:
        assert torch.equal(ranks[0]["ema"][key], ranks[1]["ema"][key]), key
    assert int(ranks[0]["ema"]["n_averaged"]) == 3  # the initial copy + 2 updates
