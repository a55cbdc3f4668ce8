"""One freeze vocabulary: fbc's EncoderConfig and its shorthands, partial freeze modes in
behaviour cloning, and the frozen-state listing that checkpoints record."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import train_bc
from agents.compressed_ad import CompressedADAgent, CompressedADConfig
from agents.fbc import FBCAgent, FBCConfig
from encoders import EncoderConfig, HasFrozenState, ResNetEncoder
from tests.test_ad import TINY_ENC, data_for, tiny_stage1
from tests.test_fbc import CPU, fake_batch, small_cfg, small_spec
from training.diagnostics import frozen_parameter_names
from training.ranges import ConfigError

# Trainable parameters of one ResNet-18 body, and the body names that train, per mode.
PARTIAL = {"until_layer3": (8_393_728, "layer4."), "last_block": (4_720_640, "layer4.1.")}


@pytest.mark.parametrize("mode", list(PARTIAL))
def test_fbc_partial_freeze_trains_exactly_the_unfrozen_body_part(mode):
    torch.manual_seed(0)
    count, trained_prefix = PARTIAL[mode]
    spec = small_spec()
    cfg = small_cfg(encoder=EncoderConfig(weights="random", freeze_mode=mode))
    assert cfg.encoder_config.freeze_mode == mode and cfg.uses_feature_cache  # prefix cache
    agent = FBCAgent(cfg, spec, CPU)
    bodies = [agent.policy.encoder.body(k).backbone for k in spec.image_keys]
    assert len({id(b) for b in bodies}) == 2

    groups = {g["name"]: g["params"] for g in agent.optimizer.param_groups}
    expected = [
        p for body in bodies for n, p in body.named_parameters() if n.startswith(trained_prefix)
    ]
    assert {id(p) for p in groups["backbone"]} == {id(p) for p in expected}
    assert len(groups["backbone"]) == len(expected)
    for body in bodies:
        in_group = {id(p) for p in groups["backbone"]}
        assert sum(p.numel() for p in body.parameters() if id(p) in in_group) == count

    before = {k: v.clone() for k, v in agent.policy.encoder.bodies.state_dict().items()}
    for step in range(3):
        agent.update(fake_batch(spec, seed=step))
    after = agent.policy.encoder.bodies.state_dict()
    frozen = [k for k in before if f".backbone.{trained_prefix}" not in k]
    assert any(k.endswith("backbone.bn1.running_mean") for k in frozen)
    assert any(k.endswith("layer3.1.bn2.running_var") for k in frozen)
    for name in frozen:
        assert torch.equal(before[name], after[name]), f"{name} moved"
    trained = [
        f"{key}.backbone.{n}"
        for key, body in zip(spec.image_keys, bodies, strict=True)
        for n, _ in body.named_parameters()
        if n.startswith(trained_prefix)
    ]
    for name in trained:
        assert not torch.equal(before[name], after[name]), f"{name} did not train"
    bn = f"{spec.image_keys[0]}.backbone.layer4.1.bn2.running_mean"
    assert not torch.equal(before[bn], after[bn])  # trained BatchNorm keeps its statistics live


def parse_fbc(*flags: str) -> FBCConfig:
    cfg = train_bc.parse_args(["--env_name=lift-scripted-image", "--agent=fbc", *flags])
    assert isinstance(cfg.agent, FBCConfig)
    return cfg.agent


def test_fbc_encoder_flags_and_shorthands_through_the_cli():
    default = parse_fbc()
    assert default.encoder_config == EncoderConfig(freeze_mode="all", weights="auto")
    assert default.uses_feature_cache
    frozen = parse_fbc("--agent.freeze_encoder=True")
    assert frozen.encoder_config.freeze_mode == "all" and frozen.uses_feature_cache
    assert parse_fbc("--agent.freeze_encoder=False").encoder_config.freeze_mode == "none"
    assert parse_fbc("--agent.rgb_model_name=resnet34").encoder_config.arch == "resnet34"
    assert parse_fbc("--agent.pretrained_encoder=False").encoder_config.weights == "random"
    assert parse_fbc("--agent.pretrained_encoder=True").encoder_config.weights == "auto"
    both = parse_fbc("--agent.pretrained_encoder=False", "--agent.encoder_weights=imagenet")
    assert both.encoder_config.weights == "imagenet"  # encoder_weights beats the bool
    partial = parse_fbc(
        "--agent.encoder.freeze_mode=until_layer3",
        "--agent.encoder.arch=resnet34",
        "--agent.encoder.weights=random",
        "--agent.encoder.pooling=spatial_softmax",
    )
    assert partial.encoder_config == EncoderConfig(
        arch="resnet34", weights="random", freeze_mode="until_layer3", pooling="spatial_softmax"
    )
    assert partial.uses_feature_cache  # the frozen prefix is cached
    # A shorthand that agrees with an explicit field is fine.
    agree = parse_fbc("--agent.freeze_encoder=False", "--agent.encoder.freeze_mode=none")
    assert agree.encoder_config.freeze_mode == "none"


@pytest.mark.parametrize(
    "flags",
    [
        ("--agent.freeze_encoder=True", "--agent.encoder.freeze_mode=until_layer3"),
        ("--agent.rgb_model_name=resnet34", "--agent.encoder.arch=resnet50"),
        ("--agent.pretrained_encoder=True", "--agent.encoder.weights=random"),
    ],
)
def test_contradicting_shorthand_is_a_one_line_error_naming_both_flags(flags):
    shorthand, explicit = flags
    with pytest.raises(ConfigError) as info:
        parse_fbc(*flags)
    message = str(info.value)
    assert "\n" not in message and shorthand in message and explicit in message


def test_contradiction_is_a_value_error_when_built_in_code():
    with pytest.raises(ValueError, match="contradicts --agent.encoder.freeze_mode=last_block"):
        FBCConfig(freeze_encoder=False, encoder=EncoderConfig(freeze_mode="last_block"))


class WithHead(nn.Module):
    def __init__(self, encoder: ResNetEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, 2)


@pytest.mark.parametrize("mode", ["none", "all", "until_layer3", "last_block"])
def test_frozen_parameter_names_are_the_frozen_params_and_their_bn_buffers(mode):
    model = WithHead(ResNetEncoder(EncoderConfig(weights="random", freeze_mode=mode), 3))
    assert isinstance(model.encoder, HasFrozenState)
    expected = {n for n, p in model.named_parameters() if not p.requires_grad}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and not m.weight.requires_grad:
            expected |= {f"{name}.{b}" for b, _ in m.named_buffers()}
    names = frozen_parameter_names(model)
    assert len(names) == len(set(names)) and set(names) == expected
    assert (len(names) == 0) == (mode == "none")
    if mode != "none":
        assert "encoder.backbone.bn1.running_mean" in names
        assert "encoder.backbone.bn1.num_batches_tracked" in names
    assert not any(n.startswith("head.") or n in ("encoder.mean", "encoder.std") for n in names)
    # The encoder's own listing, relative to it, says the same.
    assert {f"encoder.{n}" for n in model.encoder.frozen_state_names()} == expected


def test_frozen_encoder_survives_a_train_call_on_the_body_and_deepcopy():
    enc = ResNetEncoder(EncoderConfig(weights="random", freeze_mode="until_layer3"), 3)
    enc.backbone.train()  # bypasses the encoder's train(): the forward pins it again
    enc(torch.rand(2, 3, 32, 32))
    assert not enc.backbone.bn1.training and not enc.backbone.layer3[1].bn2.training
    assert enc.backbone.layer4[1].bn2.training
    twin = copy.deepcopy(enc).train()
    assert not twin.backbone.layer3[0].bn1.training
    assert twin.frozen_state_names() == enc.frozen_state_names()


def test_compressed_ad_frozen_state_comes_from_the_shared_mechanism(histories, tmp_path):
    ckpt = tiny_stage1(histories, tmp_path)
    cfg = CompressedADConfig(encoder_checkpoint=str(ckpt), freeze_encoder=True,
                             context_episodes=1, n_layer=1, **TINY_ENC)
    agent = CompressedADAgent(cfg, data_for(cfg, histories).spec, CPU)
    assert isinstance(agent, HasFrozenState)
    shared = [k for k in agent.state_dict() if k.startswith(("encoder.", "embed.", "embed_ln."))]
    assert sorted(frozen_parameter_names(agent)) == sorted(shared)
    agent.train()
    assert not any(m.training for m in agent.shared_modules()) and agent.decoder.training
    tuned = CompressedADAgent(
        CompressedADConfig(encoder_checkpoint=str(ckpt), context_episodes=1, n_layer=1,
                           **TINY_ENC), data_for(cfg, histories).spec, CPU)
    assert frozen_parameter_names(tuned) == [] and tuned.train().encoder.training
