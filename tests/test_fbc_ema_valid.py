"""fbc's EMA (torch's AveragedModel with BatchNorm statistics averaged too) and the Lift
train / valid split with its held-out flow-matching loss (issue 14, items 2 and 3)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import train_bc
from agents.fbc import FBCAgent, warmed_up_ema
from envs import bc_tasks
from envs.lift.dataset import make_data
from tests.test_fbc import CPU, fake_batch, small_cfg, small_spec
from tests.test_lift_data import write_synthetic
from training.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from training.diagnostics import frozen_parameter_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE = 32
TINY = [  # fbc on the tiny Lift task, as tests/test_bc_reliability.py runs it
    "--env_name=lift-split",
    "--device=cpu",
    "--precision=fp32",  # the logged held-out loss is recomputed in fp32 below
    "--wandb.mode=disabled",
    "--log_interval=1",
    "--eval_episodes=0",
    "--batch_size=4",
    "--agent.pretrained_encoder=False",
    "--agent.share_encoder=True",
    "--agent.chunk_length=4",
    "--agent.action_horizon=2",
    "--agent.hidden_dim=32",
    "--agent.num_layers=1",
    "--agent.emb_dim=16",
]


def bn_layers(module: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)}


def write_split(
    path: Path, lengths=(6, 5, 7, 4), valid=("demo_2",), with_valid: bool = True
) -> Path:
    """A synthetic file whose mask/valid holds `valid` and mask/train the other demos (the
    writer's 10% split leaves a file this small without valid demos)."""
    write_synthetic(path, lengths=lengths, image_size=IMAGE)
    names = [f"demo_{i}" for i in range(len(lengths))]
    with h5py.File(path, "a") as f:
        del f["mask/train"], f["mask/valid"]
        f["mask/train"] = np.array([n for n in names if n not in valid], dtype="S")
        if with_valid:
            f["mask/valid"] = np.array(list(valid), dtype="S")
    return path


def register_split_task(monkeypatch, **data_options) -> None:
    """Register lift-split (the real Lift task module at 32x32) with these data options."""
    task = bc_tasks.BCTask(
        "lift-split", "envs.lift.dataset:make_data", "envs.lift.evaluation:make_evaluator",
        "fbc", {}, {"variant": "scripted", "image_size": IMAGE, "filter_key": "auto",
                    **data_options},
        agent_fields=("chunk_length",),
    )
    monkeypatch.setitem(bc_tasks.BC_TASKS, "lift-split", task)


@pytest.fixture
def split_task(monkeypatch):
    """lift-split registered; call the fixture's value to register it with other options."""
    register_split_task(monkeypatch)
    return lambda **data_options: register_split_task(monkeypatch, **data_options)


@pytest.fixture(autouse=True)
def _drop_checkpoints(tmp_path):
    yield
    for path in tmp_path.rglob("*.pt"):
        path.unlink()


# ---------------------------------------------------------------- EMA with BatchNorm


def test_ema_averages_batchnorm_statistics_and_acts_with_its_own():
    """Fine-tuned body: the EMA model's running statistics are the EMA of the live ones,
    and acting reads the EMA model's statistics, not the live network's."""
    torch.manual_seed(0)
    spec = small_spec()
    decay = 0.5
    agent = FBCAgent(small_cfg(freeze_encoder=False, ema_decay=decay), spec, CPU)
    live, ema = bn_layers(agent.policy), bn_layers(agent.ema.module)
    assert live and live.keys() == ema.keys()
    expected = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in live.items()}
    head = agent.policy.velocity.net[0].weight
    expected_head = head.detach().clone()
    for k in range(4):
        agent.update(fake_batch(spec, seed=k))
        w = 1 - min(decay, (1 + k) / (10 + k))
        for n, m in live.items():
            mean, var = expected[n]
            expected[n] = (mean + w * (m.running_mean - mean), var + w * (m.running_var - var))
        expected_head += w * (head.detach() - expected_head)
    assert int(agent.ema.n_averaged) == 5  # the initial copy + 4 updates
    for n, m in ema.items():
        torch.testing.assert_close(m.running_mean, expected[n][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var, expected[n][1], rtol=1e-5, atol=1e-6)
        assert not torch.equal(m.running_mean, live[n].running_mean), n
    torch.testing.assert_close(
        agent.ema.module.get_buffer("velocity.net.0.weight"), expected_head, rtol=1e-5, atol=1e-6
    )

    obs = fake_batch(spec, seed=9)

    def sample(use_ema: bool) -> torch.Tensor:
        torch.manual_seed(3)
        return agent.sample_chunks(obs, use_ema=use_ema)

    acted, live_acted = sample(True), sample(False)
    with torch.no_grad():  # wreck the live network's statistics
        for m in live.values():
            m.running_mean.add_(5.0)
            m.running_var.mul_(10.0)
    assert torch.equal(sample(True), acted)
    assert not torch.equal(sample(False), live_acted)
    with torch.no_grad():  # the EMA model's own statistics are what it reads
        for m in ema.values():
            m.running_mean.add_(5.0)
    assert not torch.equal(sample(True), acted)


def test_frozen_body_is_shared_and_its_statistics_stay_identical():
    torch.manual_seed(0)
    spec = small_spec()
    agent = FBCAgent(small_cfg(freeze_encoder=True), spec, CPU)
    for k in range(2):
        agent.update(fake_batch(spec, seed=k))  # live images: the bodies run
    key = spec.image_keys[0]
    live_body = agent.policy.encoder.body(key).backbone
    ema_body = agent.ema.module.encoder.body(key).backbone
    assert ema_body.conv1.weight is live_body.conv1.weight  # frozen: one tensor, not a copy
    for n, m in bn_layers(ema_body).items():
        assert torch.equal(m.running_mean, bn_layers(live_body)[n].running_mean), n
        assert torch.equal(m.running_var, bn_layers(live_body)[n].running_var), n
    # The averaged copies are no parameters: no optimizer, no parameter count, not "frozen".
    assert sum(p.numel() for p in agent.parameters()) == sum(
        p.numel() for p in agent.policy.parameters()
    )
    tuned = FBCAgent(small_cfg(freeze_encoder=False), spec, CPU)
    assert frozen_parameter_names(tuned) == []
    policy_ids = {id(p) for p in tuned.policy.parameters()}
    assert all(id(p) in policy_ids for g in tuned.optimizer.param_groups for p in g["params"])


def test_decay_warms_up_as_min_decay_1_plus_k_over_10_plus_k():
    update = warmed_up_ema(0.9)
    for k in range(40):  # update k sees n_averaged = k + 1 (the initial copy counts as one)
        ema = [torch.zeros(3)]
        update(ema, [torch.ones(3)], torch.tensor(k + 1))
        torch.testing.assert_close(ema[0], torch.full((3,), 1 - min(0.9, (1 + k) / (10 + k))))
    counter = [torch.tensor(3)]
    update(counter, [torch.tensor(7)], torch.tensor(5))
    assert counter[0].item() == 7  # integer buffers (num_batches_tracked) follow the live one
    x = torch.randn(1000)
    same = [x.clone()]
    update(same, [x], torch.tensor(2))
    assert torch.equal(same[0], x)  # a statistic that does not move stays bit-identical
    agent = FBCAgent(small_cfg(freeze_encoder=True, ema_decay=0.0), small_spec(), CPU)
    agent.update(fake_batch(small_spec()))
    for name, p in agent.policy.named_parameters():  # decay 0: the EMA is the live model
        if p.requires_grad:
            torch.testing.assert_close(agent.ema.module.get_buffer(name), p.detach(), msg=name)


def test_checkpoint_round_trip_gives_bit_identical_ema_sampling(tmp_path):
    spec = small_spec()
    cfg = small_cfg(freeze_encoder=False, share_encoder=True)
    torch.manual_seed(0)
    a = FBCAgent(cfg, spec, CPU)
    for k in range(3):
        a.update(fake_batch(spec, seed=k))
    path = save_checkpoint(tmp_path / "c.pt", model=a, optimizer=a.optimizer, step=3, config={})
    torch.manual_seed(1)
    b = FBCAgent(cfg, spec, CPU)
    ckpt = load_checkpoint(path)
    load_model_state(b, ckpt["model"], str(path))
    b.optimizer.load_state_dict(ckpt["optimizer"])
    obs = fake_batch(spec, seed=5)
    for agent in (a, b):
        torch.manual_seed(2)
        agent.sampled = agent.sample_chunks(obs)
    assert torch.equal(a.sampled, b.sampled)
    for agent in (a, b):  # and training goes on identically from there
        torch.manual_seed(4)
        agent.update(fake_batch(spec, seed=6))
    sa, sb = a.ema.state_dict(), b.ema.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_checkpoint_of_the_hand_written_ema_loads_as_it_acted():
    """The old layout: averaged trainable parameters as `ema.<name with __>`, `ema.updates`;
    it acted with those and the live network's buffers, and so does the upgraded model."""
    spec = small_spec()
    cfg = small_cfg(freeze_encoder=False, share_encoder=True)
    torch.manual_seed(0)
    a = FBCAgent(cfg, spec, CPU)
    for k in range(2):
        a.update(fake_batch(spec, seed=k))
    state = {k: v for k, v in a.state_dict().items() if not k.startswith("ema.")}
    for name, p in a.policy.named_parameters():
        if p.requires_grad:
            state[f"ema.{name.replace('.', '__')}"] = a.ema.module.get_buffer(name)
    state["ema.updates"] = torch.tensor(2)
    b = FBCAgent(cfg, spec, CPU)
    load_model_state(b, state, "old.pt")  # what --resume and evaluation call
    assert int(b.ema.n_averaged) == 3
    for name, p in a.policy.named_parameters():
        source = a.ema.module.get_buffer(name) if p.requires_grad else p
        assert torch.equal(b.ema.module.get_buffer(name), source), name
    for name, buffer in a.policy.named_buffers():
        assert torch.equal(b.ema.module.get_buffer(name), buffer), name


# ---------------------------------------------------------------- train / valid


def test_training_data_excludes_the_valid_demos(tmp_path):
    path = write_split(tmp_path / "d.hdf5")
    data = make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path, chunk_length=4,
                     image_size=IMAGE)
    assert data.demos == ["demo_0", "demo_1", "demo_3"] and data.num_samples == 6 + 5 + 4
    assert data.valid is not None and data.valid.demos == ["demo_2"]
    assert data.valid.num_samples == 7
    # No valid action is a training action (random actions: equal only if the same frame).
    train_actions, valid_actions = data.actions[:, 0], data.valid.actions[:, 0]
    assert not (valid_actions[:, None] == train_actions[None]).all(-1).any()
    # The same processing: the valid frames are demo_2's, as robomimic's ObsUtils gives them.
    batch, train_batch = data.valid.batch(torch.arange(3)), data.batch(torch.arange(3))
    assert batch.keys() == train_batch.keys()
    with h5py.File(path, "r") as f:
        raw = torch.from_numpy(f["data/demo_2/obs/agentview_image"][:3])
    torch.testing.assert_close(batch["obs/agentview_image"], raw.permute(0, 3, 1, 2) / 255.0)
    assert "valid set: 1 demos (mask/valid), 7 samples" in data.describe()
    # Every demo when asked for, and then mask/valid is no held-out set.
    everything = make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path, chunk_length=4,
                           image_size=IMAGE, filter_key=None)
    assert everything.num_samples == 22 and everything.valid is None
    assert "are trained on (training uses every demo)" in everything.describe()


def test_filter_key_flag_reaches_the_data_and_is_refused_where_there_are_none(tmp_path, split_task):
    def options(*flags, env="lift-split"):
        cfg = train_bc.parse_args([f"--env_name={env}", *flags])
        return train_bc.data_options(cfg, bc_tasks.get_bc_task(env))

    assert options()["filter_key"] == "auto"
    assert options("--filter_key=all")["filter_key"] is None
    assert options("--filter_key=operator_1")["filter_key"] == "operator_1"
    path = write_split(tmp_path / "d.hdf5")
    data = make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path, chunk_length=4,
                     **options("--filter_key=all"))
    assert data.num_demos == 4 and data.valid is None  # every demo: valid ones would be trained on
    with pytest.raises(ValueError, match="has no robomimic filter keys"):
        options("--filter_key=train", env="darkroom")


def test_a_file_without_mask_train_trains_on_every_demo(tmp_path):
    path = write_split(tmp_path / "d.hdf5")
    with h5py.File(path, "a") as f:
        del f["mask/train"]
    data = make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path, chunk_length=4,
                     image_size=IMAGE)
    assert data.num_demos == 4 and data.valid is None  # the valid demos would be trained on


def test_missing_filter_key_is_one_line_error_at_start(tmp_path, split_task):
    path = write_split(tmp_path / "d.hdf5")
    out = tmp_path / "run"
    with pytest.raises(ValueError) as err:
        train_bc.train(train_bc.parse_args([*TINY, f"--dataset={path}", f"--output_dir={out}",
                                            "--filter_key=operator_7"]))
    message = str(err.value)
    assert "\n" not in message
    assert f"dataset {path} has no filter key mask/operator_7 (its filter keys: operator_0, " \
           "operator_0_train, operator_0_valid, operator_1, operator_1_train, operator_1_valid, " \
           "train, valid)" == message
    assert not out.exists()


@pytest.mark.parametrize("flags", [["--agent.freeze_encoder=True"],
                                   ["--agent.freeze_encoder=False", "--agent.random_crop=True",
                                    "--agent.crop_size=28"]], ids=["frozen", "tuned"])
def test_valid_loss_is_logged_finite_and_deterministic(tmp_path, split_task, flags):
    path = write_split(tmp_path / "d.hdf5")
    out = tmp_path / "run"
    args = [*TINY, *flags, f"--dataset={path}", f"--output_dir={out}", "--eval_interval=2"]
    cfg = train_bc.parse_args([*args, "--offline_steps=4"])
    assert train_bc.train(cfg) == {}  # the held-out loss is logged, not an evaluation result
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if "valid/flow_loss" in r]
    assert [r["step"] for r in valid] == [2, 4]
    for r in valid:
        assert math.isfinite(r["valid/flow_loss"]) and math.isfinite(r["valid/flow_loss_live"])
        assert r["valid/flow_loss"] != r["valid/flow_loss_live"]
    # The final checkpoint, loaded again, gives the logged number bit for bit, every time.
    data = make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path, chunk_length=4,
                     image_size=IMAGE)
    agent = FBCAgent(cfg.agent, data.spec, CPU)
    load_model_state(agent, load_checkpoint(out / "checkpoints" / "last.pt")["model"], "last")
    held_out = agent.prepare(data.valid)
    rng = torch.get_rng_state()
    first, second = agent.valid_metrics(held_out), agent.valid_metrics(held_out)
    assert first == second
    assert first == {k: v for k, v in valid[-1].items() if k.startswith("valid/")}
    assert torch.equal(torch.get_rng_state(), rng) and agent.training  # touches nothing


def test_no_valid_mask_is_one_note_and_no_valid_loss(tmp_path, split_task, capsys):
    path = write_split(tmp_path / "d.hdf5", with_valid=False)
    out = tmp_path / "run"
    train_bc.train(train_bc.parse_args([*TINY, "--agent.freeze_encoder=True", "--offline_steps=2",
                                        f"--dataset={path}", f"--output_dir={out}"]))
    captured = capsys.readouterr()
    notes = [line for line in (captured.out + captured.err).splitlines()
             if "no validation loss" in line]
    assert notes == [f"no validation loss: {path} has no mask/valid"]
    assert "valid/" not in (out / "metrics.jsonl").read_text()


@pytest.mark.parametrize("replace", ["load_assign", "to_channels_last"])
def test_the_ema_follows_live_tensors_that_a_load_or_a_move_replaced(replace):
    """update_parameters keeps the tensor pairs it averages; a load with assign=True or a
    memory-format move puts new tensors in the live policy, and the EMA must average
    those, not the old ones it had paired."""
    torch.manual_seed(0)
    spec = small_spec()
    decay = 0.5
    agent = FBCAgent(small_cfg(freeze_encoder=False, ema_decay=decay), spec, CPU)
    agent.update(fake_batch(spec, seed=0))  # pairs the tensors
    if replace == "load_assign":
        agent.load_state_dict({k: v.clone() for k, v in agent.state_dict().items()},
                              assign=True)
    else:
        agent.to(memory_format=torch.channels_last)
    # A conv weight (4-d: the one a memory-format move replaces) and a linear one.
    names = [n for n in agent.ema.averaged if n.endswith("conv1.weight")][:1]
    names.append("velocity.net.0.weight")
    live = {n: agent.policy.get_parameter(n) for n in names}  # the live tensors now
    expected = {n: agent.ema.module.get_buffer(n).clone() for n in names}
    agent.update(fake_batch(spec, seed=1))
    k = int(agent.ema.n_averaged) - 1  # this update's n
    for n in names:
        expected[n] += (1 - min(decay, k / (k + 9.0))) * (live[n].detach() - expected[n])
        torch.testing.assert_close(agent.ema.module.get_buffer(n), expected[n], rtol=1e-5,
                                   atol=1e-6)
    assert len(names) == 2
