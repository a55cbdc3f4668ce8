"""The encoder core: freeze modes, frozen BatchNorm, adapters, weight sources."""

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models

from encoders import EncoderConfig, ImageNetWeightsUnavailable, ResNetEncoder, imagenet_cache_file
from training.optim import build_optimizer

BODY_TRAINABLE = {"none": 11_176_512, "all": 0, "until_layer3": 8_393_728, "last_block": 4_720_640}


def make(freeze_mode="none", weights="random", adapter="none", channels=3, **kw):
    cfg = EncoderConfig(weights=weights, input_adapter=adapter, freeze_mode=freeze_mode, **kw)
    return ResNetEncoder(cfg, channels)


def trainable_names(enc):
    return {n for n, p in enc.backbone.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("mode", list(BODY_TRAINABLE))
def test_freeze_mode_trainable_counts(mode):
    enc = make(mode)
    assert sum(p.numel() for p in enc.backbone.parameters()) == 11_176_512
    assert (
        sum(p.numel() for p in enc.backbone.parameters() if p.requires_grad) == BODY_TRAINABLE[mode]
    )


def test_freeze_modes_train_different_modules():
    sets = {mode: frozenset(trainable_names(make(mode))) for mode in BODY_TRAINABLE}
    assert len(set(sets.values())) == 4
    assert all(n.startswith("layer4.") for n in sets["until_layer3"])
    assert all(n.startswith("layer4.1.") for n in sets["last_block"])
    assert sets["last_block"] < sets["until_layer3"] < sets["none"]


class Agent(nn.Module):
    """An encoder inside a bigger model, as the agents use it."""

    def __init__(self, enc):
        super().__init__()
        self.encoder = enc
        self.head = nn.Linear(enc.out_dim, 2)

    def forward(self, x):
        return self.head(self.encoder(x))


def frozen_tensors(agent):
    """Frozen parameters, plus the buffers of BatchNorm layers whose parameters are frozen."""
    out = {n: p.detach().clone() for n, p in agent.named_parameters() if not p.requires_grad}
    for name, m in agent.named_modules():
        if isinstance(m, nn.BatchNorm2d) and not m.weight.requires_grad:
            out.update({f"{name}.{b}": t.clone() for b, t in m.named_buffers()})
    return out


@pytest.mark.parametrize("mode", ["all", "until_layer3", "last_block"])
def test_frozen_parameters_and_bn_buffers_bit_identical_after_training(mode):
    torch.manual_seed(0)
    agent = Agent(make(mode))
    frozen_before = frozen_tensors(agent)
    assert any("running_mean" in n for n in frozen_before)
    trainable_before = {
        n: p.detach().clone() for n, p in agent.named_parameters() if p.requires_grad
    }
    opt = build_optimizer(agent, backbone_lr=1e-2, head_lr=1e-2)
    agent.train()
    agent.encoder.backbone.train()  # even a direct call on the body must not unpin BN
    for _ in range(3):
        loss = agent(torch.rand(4, 3, 32, 32)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = agent.state_dict()
    for name, tensor in frozen_before.items():
        assert torch.equal(tensor, after[name]), f"{name} moved"
    moved = {
        n
        for n, p in agent.named_parameters()
        if p.requires_grad and not torch.equal(p, trainable_before[n])
    }
    assert moved == set(trainable_before)  # everything trainable did train
    assert ("encoder.backbone.layer4.1.conv2.weight" in moved) == (mode != "all")


def test_frozen_batchnorm_stays_in_eval_mode_after_train():
    agent = Agent(make("all"))
    agent.train()
    assert all(
        not m.training for m in agent.encoder.backbone.modules() if isinstance(m, nn.BatchNorm2d)
    )
    partly = Agent(make("until_layer3"))
    partly.train()
    bns = dict(partly.encoder.backbone.named_modules())
    assert not bns["bn1"].training and not bns["layer3.1.bn2"].training
    assert bns["layer4.1.bn2"].training


def test_unfrozen_bn_statistics_do_move():
    """Control for the test above: the check would catch drift."""
    agent = Agent(make("none"))
    before = agent.encoder.backbone.bn1.running_mean.clone()
    agent.train()
    agent(torch.rand(4, 3, 32, 32))
    assert not torch.equal(before, agent.encoder.backbone.bn1.running_mean)


@pytest.mark.parametrize("weights", ["random", "imagenet"])
def test_1ch_conv_equals_repeat3_at_init(weights, fake_imagenet):
    torch.manual_seed(0)
    repeat = make(weights=weights, adapter="repeat3", channels=1).eval()
    torch.manual_seed(0)
    onech = make(weights=weights, adapter="1ch_conv", channels=1).eval()
    onech.backbone.load_state_dict(
        {**repeat.backbone.state_dict(), "conv1.weight": onech.backbone.conv1.weight}
    )
    assert onech.backbone.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(
        onech.backbone.conv1.weight, repeat.backbone.conv1.weight.sum(1, keepdim=True)
    )
    x = torch.rand(3, 1, 48, 48)
    torch.testing.assert_close(onech(x), repeat(x), rtol=1e-5, atol=1e-5)


@pytest.fixture
def fake_imagenet(tmp_path, monkeypatch):
    """A torchvision-format resnet18 file in the hub cache of a temporary TORCH_HOME."""
    torch.manual_seed(123)
    state = models.resnet18(weights=None).state_dict()
    path = imagenet_cache_file("resnet18")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_imagenet_loads_from_torch_hub_cache(fake_imagenet):
    assert imagenet_cache_file("resnet18").name == "resnet18-f37072fd.pth"
    enc = make(weights="imagenet")
    assert enc.pretrained and enc.weights_source == "imagenet"
    for name, tensor in enc.backbone.state_dict().items():
        torch.testing.assert_close(tensor, fake_imagenet[name], rtol=0, atol=0)
    assert torch.allclose(enc.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_imagenet_offline_without_cache_is_one_clear_error():
    with pytest.raises(ImageNetWeightsUnavailable) as info:
        make(weights="imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert "resnet18-f37072fd.pth" in message and "weights=random" in message


def test_auto_falls_back_to_random_with_a_warning():
    with pytest.warns(UserWarning, match="RANDOM init"):
        enc = make(weights="auto")
    assert not enc.pretrained and enc.weights_source.startswith("random")


def test_auto_uses_imagenet_when_cached(fake_imagenet):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make(weights="auto").weights_source == "imagenet"


def test_weights_from_state_dict_and_from_checkpoint(tmp_path):
    source = make(weights="random")
    torch.save(source.backbone.state_dict(), tmp_path / "body.pt")
    torch.save({"model": Agent(source).state_dict(), "step": 3}, tmp_path / "ckpt.pt")
    for spec in (
        tmp_path / "body.pt",
        f"{tmp_path / 'ckpt.pt'}",
        f"{tmp_path / 'ckpt.pt'}::encoder.backbone.",
    ):
        enc = make(weights=str(spec))
        for name, tensor in enc.backbone.state_dict().items():
            assert torch.equal(tensor, source.backbone.state_dict()[name]), (spec, name)


def test_weights_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make(weights=str(tmp_path / "missing.pt"))
    torch.save({"a": Path("x")}, tmp_path / "pickled.pt")  # a non-tensor object
    with pytest.raises(ValueError, match="weights_only"):
        make(weights=str(tmp_path / "pickled.pt"))


def test_bad_config_and_channel_mismatch_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown freeze_mode 'layer4'"):
        EncoderConfig(freeze_mode="layer4")
    with pytest.raises(ValueError) as info:
        make(adapter="1ch_conv", channels=3)
    assert "1ch_conv expects 1-channel" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("arch,dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_output_dims(arch, dim):
    enc = ResNetEncoder(EncoderConfig(arch=arch, weights="random"), 3).eval()
    assert enc.out_dim == dim and enc(torch.rand(2, 3, 32, 32)).shape == (2, dim)


def test_spatial_softmax_keypoints():
    enc = make(pooling="spatial_softmax", num_keypoints=8).eval()
    out = enc(torch.rand(2, 3, 64, 64))
    assert enc.out_dim == 16 and out.shape == (2, 16) and out.abs().max() <= 1


def test_imagenet_download_that_gets_no_answer_times_out(monkeypatch, real_download):
    """A server that accepts the connection and never answers (as a dropping firewall
    would leave it) ends in the one-line error instead of a run that hangs at start."""
    import socket

    import encoders.weights as weights

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # the kernel completes the handshake; nothing ever reads or replies
    port = silent.getsockname()[1]

    class SilentHub:
        url = f"http://127.0.0.1:{port}/resnet18-f37072fd.pth"

        def get_state_dict(self, **kwargs):
            return torch.hub.load_state_dict_from_url(self.url, **kwargs)

    monkeypatch.setitem(weights._IMAGENET_WEIGHTS, "resnet18", SilentHub())
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 0.5)
    try:
        with pytest.raises(ImageNetWeightsUnavailable) as info:
            weights.load_imagenet_state("resnet18")
    finally:
        silent.close()
    message = str(info.value)
    assert "timed out" in message and "\n" not in message
    assert socket.getdefaulttimeout() is None  # the process's default is restored
