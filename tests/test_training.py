"""The shared training plumbing: optimizer groups, diagnostics, checkpoints, logging, CLI."""

import json
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from encoders import EncoderConfig, ResNetEncoder
from training import verify_frozen
from training.checkpoint import load_checkpoint, load_model_state, restore_rng, save_checkpoint
from training.cli import parse_config, pop_flag
from training.device import resolve_device
from training.diagnostics import grad_norms
from training.logger import RunLogger, WandbConfig, resolve_wandb_mode
from training.optim import build_optimizer, scale_learning_rates
from training.parameter_report import parameter_report
from training.seeding import seed_everything


class ActorCritic(nn.Module):
    def __init__(self, freeze_mode="none"):
        super().__init__()
        cfg = EncoderConfig(weights="random", freeze_mode=freeze_mode)
        self.actor = ResNetEncoder(cfg, 3)
        self.critic = ResNetEncoder(cfg, 3)
        self.pi = nn.Linear(512, 4)
        self.v = nn.Linear(512, 1)

    def forward(self, x):
        return self.pi(self.actor(x)).sum() + self.v(self.critic(x)).sum()


TRAINABLE_BODY = {"none": 11_176_512, "all": 0, "until_layer3": 8_393_728, "last_block": 4_720_640}


@pytest.mark.parametrize("mode", list(TRAINABLE_BODY))
def test_optimizer_groups_names_sizes_and_lrs(mode):
    model = ActorCritic(mode)
    opt = build_optimizer(model, backbone_lr=1e-4, head_lr=3e-4)
    groups = {g["name"]: g for g in opt.param_groups}
    heads = sum(p.numel() for p in [*model.pi.parameters(), *model.v.parameters()])
    if mode == "all":
        assert list(groups) == ["heads"]  # empty backbone group omitted, not kept empty
    else:
        assert list(groups) == ["backbone", "heads"]
        assert sum(p.numel() for p in groups["backbone"]["params"]) == 2 * TRAINABLE_BODY[mode]
        assert groups["backbone"]["lr"] == 1e-4
    assert sum(p.numel() for p in groups["heads"]["params"]) == heads
    assert groups["heads"]["lr"] == 3e-4
    in_groups = [p for g in opt.param_groups for p in g["params"]]
    assert all(p.requires_grad for p in in_groups)
    assert (
        len({id(p) for p in in_groups})
        == len(in_groups)
        == sum(1 for p in model.parameters() if p.requires_grad)
    )


def test_optimizer_explicit_backbone_modules_and_lr_scaling():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    opt = build_optimizer(
        model, backbone_lr=1.0, head_lr=2.0, kind="adamw", backbone_modules=[model[0]]
    )
    assert [g["name"] for g in opt.param_groups] == ["backbone", "heads"]
    assert isinstance(opt, torch.optim.AdamW)
    scale_learning_rates(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 1.0]
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(nn.Linear(2, 2).requires_grad_(False), backbone_lr=1, head_lr=1)


def test_grad_norms_per_group():
    model = ActorCritic("until_layer3")
    opt = build_optimizer(model, backbone_lr=1e-4, head_lr=3e-4)
    model(torch.rand(2, 3, 32, 32)).backward()
    norms = grad_norms(opt)
    expected = {}
    for g in opt.param_groups:
        expected[g["name"]] = torch.sqrt(sum(p.grad.pow(2).sum() for p in g["params"]))
    assert set(norms) == {"grad/backbone_norm", "grad/heads_norm", "grad/total_norm"}
    assert all(v.shape == () for v in norms.values())  # left on the device for the logger
    norms = {k: v.item() for k, v in norms.items()}
    # fp32 sums in another order: agree to 1e-4
    assert norms["grad/backbone_norm"] == pytest.approx(expected["backbone"].item(), rel=1e-4)
    assert norms["grad/heads_norm"] == pytest.approx(expected["heads"].item(), rel=1e-4)
    total = (expected["backbone"] ** 2 + expected["heads"] ** 2).sqrt().item()
    assert norms["grad/total_norm"] == pytest.approx(total, rel=1e-4)


def test_parameter_report(capsys):
    model = ActorCritic("all")
    opt = build_optimizer(model, backbone_lr=1e-4, head_lr=3e-4)
    metrics = parameter_report(
        model, opt, {"actor_backbone": model.actor.backbone, "heads": model.pi}
    )
    assert metrics["params/trainable"] == 512 * 4 + 4 + 512 + 1
    assert metrics["params/actor_backbone/frozen"] == 11_176_512
    assert metrics["params/optimizer/heads"] == metrics["params/trainable"]
    assert "backbone" not in " ".join(k for k in metrics if k.startswith("params/optimizer"))
    out = capsys.readouterr().out
    assert (
        "actor_backbone" in out and "group heads" in out and "weights_source/actor: random" in out
    )


@dataclass(frozen=True)
class Cfg:
    lr: float = 0.1
    name: str = "x"


def train_steps(model, opt, n):
    for _ in range(n):
        loss = model(torch.rand(2, 3, 32, 32))
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_checkpoint_round_trip_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = ActorCritic("until_layer3")
    opt = build_optimizer(model, backbone_lr=1e-3, head_lr=1e-3)
    train_steps(model, opt, 2)
    path = save_checkpoint(tmp_path / "ckpt.pt", model=model, optimizer=opt, step=7, config=Cfg())
    expected_next = (torch.rand(3), np.random.rand(), random.random())

    other = ActorCritic("until_layer3")
    other_opt = build_optimizer(other, backbone_lr=1e-3, head_lr=1e-3)
    ckpt = load_checkpoint(path)
    load_model_state(other, ckpt["model"], str(path))
    other_opt.load_state_dict(ckpt["optimizer"])
    restore_rng(ckpt["rng"])
    assert ckpt["step"] == 7 and ckpt["config"] == {"lr": 0.1, "name": "x"}
    for (n, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    assert torch.equal(torch.rand(3), expected_next[0])
    assert np.random.rand() == expected_next[1] and random.random() == expected_next[2]
    # The optimizer state continues identically: one more step on both gives equal weights.
    torch.manual_seed(5)
    train_steps(model, opt, 1)
    torch.manual_seed(5)
    train_steps(other, other_opt, 1)
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any("running_mean" in n for n in ckpt["frozen"])
    assert not list(tmp_path.glob(".*tmp*"))


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_with_pickled_object_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "step": 0, "extra": Payload()}, path)
    with pytest.raises(ValueError, match="refusing to load"):
        load_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    path = save_checkpoint(tmp_path / "c.pt", model=model, optimizer=None, step=1, config=Cfg())
    before = path.read_bytes()

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=model, optimizer=None, step=2, config=Cfg())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_checkpoint_of_another_architecture_is_one_line_error():
    with pytest.raises(ValueError) as info:
        load_model_state(nn.Linear(2, 3), nn.Linear(2, 4).state_dict(), "x.pt")
    assert "of another shape" in str(info.value) and "\n" not in str(info.value)


def test_verify_frozen_reports_moved_tensors(tmp_path, capsys):
    torch.manual_seed(0)
    model = ActorCritic("until_layer3")
    start = save_checkpoint(
        tmp_path / "start.pt", model=model, optimizer=None, step=0, config=Cfg()
    )
    opt = build_optimizer(model, backbone_lr=1e-2, head_lr=1e-2)
    model.train()
    train_steps(model, opt, 2)
    end = save_checkpoint(tmp_path / "end.pt", model=model, optimizer=opt, step=2, config=Cfg())
    assert verify_frozen.main([str(end), "--source", str(start)]) == 0
    torch.save(model.actor.backbone.state_dict(), tmp_path / "body.pt")
    body = str(tmp_path / "body.pt")
    assert verify_frozen.main([str(end), "--source", body, "--prefix", "actor."]) == 0
    assert (
        verify_frozen.main([str(end), "--source", body, "--prefix", "critic."]) == 1
    )  # other body
    with torch.no_grad():
        model.actor.backbone.layer1[0].conv1.weight.add_(1.0)
    tampered = save_checkpoint(
        tmp_path / "bad.pt", model=model, optimizer=opt, step=3, config=Cfg()
    )
    assert verify_frozen.main([str(tampered), "--source", str(start)]) == 1
    assert "actor.backbone.layer1.0.conv1.weight" in capsys.readouterr().out


def test_logger_writes_jsonl_and_config(tmp_path):
    logger = RunLogger(tmp_path / "run", Cfg(), WandbConfig(mode="disabled"))
    logger.log({"train/loss": 1.5}, step=3)
    logger.add_config({"weights_source/encoder": "random"})
    logger.close()
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[0]["step"] == 3 and records[0]["train/loss"] == 1.5
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["lr"] == 0.1 and config["weights_source/encoder"] == "random"


def test_wandb_auto_mode_is_offline_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert resolve_wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"
    assert resolve_wandb_mode("disabled") == "disabled"


def test_wandb_offline_run_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = RunLogger(tmp_path / "run", Cfg(), WandbConfig(mode="offline"))
    logger.log({"train/loss": 1.0}, step=1)
    logger.close()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


@dataclass(frozen=True)
class Agent:
    freeze_encoder: bool = False
    """Freeze the encoder."""


@dataclass(frozen=True)
class TrainConfig:
    agent: Agent = field(default_factory=Agent)
    offline_steps: int = 10
    """Gradient steps."""


def test_cli_accepts_bool_equals_true_and_false(capsys):
    assert parse_config(TrainConfig, ["--agent.freeze_encoder=True"]).agent.freeze_encoder is True
    assert parse_config(TrainConfig, ["--agent.freeze_encoder=False"]).agent.freeze_encoder is False
    assert parse_config(TrainConfig, ["--offline_steps", "3"]).offline_steps == 3
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--help"])
    assert "Freeze the encoder." in capsys.readouterr().out


def test_pop_flag():
    value, rest = pop_flag(["--agent=ad", "--agent.lr", "1", "--x"], "--agent")
    assert value == "ad" and rest == ["--agent.lr", "1", "--x"]
    assert pop_flag(["--agent", "fbc"], "--agent") == ("fbc", [])
    assert pop_flag(["--agent.n=2"], "--agent") == (None, ["--agent.n=2"])


def test_resolve_device_and_seeding():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    seed_everything(3)
    a = (torch.rand(2), np.random.rand(), random.random())
    seed_everything(3)
    assert torch.equal(a[0], torch.rand(2)) and a[1] == np.random.rand() and a[2] == random.random()
