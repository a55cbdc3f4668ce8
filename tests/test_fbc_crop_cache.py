"""fbc's random crops with a frozen body: the cache of K crops per frame.

Tiny 32x32 frames cropped to 28 (4 offsets + 1 per axis), ResNet-18 with random weights.
What is claimed and checked: crop k of the cache is what the live network computes on the
crop at the grid's k-th offset (freeze all: the features; until_layer3 / last_block: the
map entering the trainable blocks, so training from the cache is training on those crops);
training draws the K crops uniformly with the sampling generator; evaluation reads the
centre crop; --agent.random_crop=False is the cache of before.
"""

from __future__ import annotations

import pytest
import torch

import train_bc
from agents.fbc import CachedFeatureData, FBCAgent, FBCConfig, crop_grid, crop_images
from encoders import EncoderConfig
from tests.test_fbc import CPU, small_cfg, small_spec
from training.cli import run_main
from training.ranges import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIDE, CROP = 32, 28
MODES = ["all", "until_layer3", "last_block"]


class TinyFrames:
    """In-memory frames of small_spec's shape, with the ImageFrames interface."""

    def __init__(self, n: int = 10, side: int = SIDE, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.spec = small_spec(image_size=side)
        self.device = CPU
        self.num_samples = n
        # Channels-last, as robomimic's HWC frames come out of process_obs (permuted to CHW).
        self.images = {k: torch.rand(n, side, side, 3, generator=g).permute(0, 3, 1, 2)
                       for k in self.spec.image_keys}
        self.lowdim = {k: torch.randn(n, d, generator=g) for k, d in self.spec.lowdim_dims.items()}
        self.actions = torch.rand(n, self.spec.chunk_length, 7, generator=g) * 2 - 1

    def describe(self) -> str:
        return f"tiny frames: {self.num_samples} samples"

    def sample_indices(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(self.num_samples, (batch_size,), generator=generator)

    def batch(self, indices: torch.Tensor, images: bool = True) -> dict[str, torch.Tensor]:
        out = {f"obs/{k}": v[indices] for k, v in self.lowdim.items()}
        if images:
            out.update({f"obs/{k}": v[indices] for k, v in self.images.items()})
        out["actions"] = self.actions[indices]
        return out


def crop_cfg(mode: str = "all", **kw) -> FBCConfig:
    enc = EncoderConfig(weights="random", freeze_mode=mode)
    return small_cfg(encoder=enc, random_crop=True, crop_size=CROP, cache_batch_size=4, **kw)


def test_crop_grid_offsets_and_centre():
    lift = crop_grid(84, 84, 76, 9)
    assert lift.rows == lift.cols == (0, 4, 8) and lift.count == 9
    assert lift.corners[lift.centre] == (4, 4)  # crop_images' centre: (84 - 76) // 2
    every = crop_grid(84, 84, 76, 81)
    assert every.rows == tuple(range(9)) and every.corners[every.centre] == (4, 4)
    assert crop_grid(84, 84, 76, 1).corners == [(4, 4)]
    odd = crop_grid(84, 84, 75, 9)  # 10 offsets per axis: the middle one is still the centre
    assert odd.rows == (0, 4, 9) and odd.corners[odd.centre] == ((84 - 75) // 2,) * 2
    tiny = crop_grid(SIDE, SIDE, CROP, 9)
    assert tiny.rows == (0, 2, 4)
    x = torch.rand(2, 3, SIDE, SIDE)
    assert torch.equal(tiny.crop(x, tiny.centre), crop_images(x, CROP, random=False))
    assert torch.equal(tiny.crop(x, 5), x[:, :, 2:30, 4:32])  # row-major: (2, 4)


def test_defaults_crop_lift_images_and_leave_small_ones():
    cfg = FBCConfig()
    assert cfg.random_crop is None and cfg.crop_size == 76 and cfg.cache_crops == 9
    assert cfg.uses_feature_cache
    assert cfg.crop_for(84, 84) == 76  # Lift: on by default
    assert cfg.crop_for(32, 32) is None  # images it cannot crop: off unless asked
    assert FBCConfig(random_crop=False).crop_for(84, 84) is None
    agent = FBCAgent(small_cfg(), small_spec(image_size=84), CPU)
    assert agent.policy.encoder.crop_size == 76
    assert agent.crop_grid is not None and agent.crop_grid.rows == (0, 4, 8)


@pytest.mark.parametrize("mode", MODES)
def test_cached_crops_are_the_live_network_on_those_crops(mode):
    """Crop k of the cache is the frozen part on the image cropped at corner k; training
    from the cache equals training the live network on those crops, step for step."""
    data = TinyFrames()
    torch.manual_seed(0)
    cached_agent = FBCAgent(crop_cfg(mode), data.spec, CPU)
    torch.manual_seed(0)
    live_agent = FBCAgent(crop_cfg(mode), data.spec, CPU)
    cached = cached_agent.prepare(data)
    grid = cached_agent.crop_grid
    assert isinstance(cached, CachedFeatureData) and grid is not None and grid.count == 9
    enc = live_agent.policy.encoder
    live_agent.eval()
    with torch.no_grad():
        for key in enc.image_keys:
            feats = cached.features[key]
            assert feats.shape[:2] == (data.num_samples, 9)
            for k, (top, left) in enumerate(grid.corners):
                crop = data.images[key][:, :, top : top + CROP, left : left + CROP]
                body = enc.body(key)
                torch.testing.assert_close(feats[:, k], body.frozen_prefix(crop), rtol=0, atol=1e-5)
                # The whole live network on the crop = the trainable part on the cached map.
                torch.testing.assert_close(body.from_prefix(feats[:, k]), body(crop),
                                           rtol=0, atol=1e-5)
        # Rows read back are laid out as the live maps are (channels-last here), so the
        # trainable blocks run the same kernels on them.
        row = cached.batch(torch.tensor([[0, 5], [1, 2], [2, 0]]))[f"features/{key}"]
        assert row.stride() == body.frozen_prefix(grid.crop(data.images[key][:3], 0)).stride()
    live_agent.train()
    # The live agent fed 28x28 crops does not crop them again (crop_images keeps an image
    # of crop_size): same crops, same computation, whether the suffix trains or not.
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        rows = cached.sample_indices(6, g)
        idx, crop = rows.unbind(1)
        live_batch = data.batch(idx)
        for key in enc.image_keys:
            corners = [grid.corners[int(k)] for k in crop]
            live_batch[f"obs/{key}"] = torch.stack(
                [live_batch[f"obs/{key}"][i, :, t : t + CROP, c : c + CROP]
                 for i, (t, c) in enumerate(corners)]
            ).contiguous(memory_format=torch.channels_last)  # the frames' layout
        torch.manual_seed(7)
        a = cached_agent.update(cached.batch(rows))
        torch.manual_seed(7)
        b = live_agent.update(live_batch)
        assert a["train/flow_loss"].item() == pytest.approx(b["train/flow_loss"].item(), rel=1e-4)
    for (name, p), q in zip(
        cached_agent.policy.named_parameters(), live_agent.policy.parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_training_draws_every_crop_uniformly_with_the_sampling_generator():
    data = TinyFrames(n=4)
    agent = FBCAgent(crop_cfg(), data.spec, CPU)
    cached = agent.prepare(data)
    rows = cached.sample_indices(9000, torch.Generator().manual_seed(0))
    assert rows.shape == (9000, 2)
    # The sample indices are the wrapped data's, drawn first with the same generator.
    assert torch.equal(rows[:, 0], data.sample_indices(9000, torch.Generator().manual_seed(0)))
    counts = torch.bincount(rows[:, 1], minlength=9)
    assert len(counts) == 9 and counts.min() > 850 and counts.max() < 1150, counts  # 1000 each
    # Independent of the sample: every (sample, crop) pair turns up.
    assert len(set(map(tuple, rows.tolist()))) == 4 * 9
    again = cached.sample_indices(9000, torch.Generator().manual_seed(0))
    assert torch.equal(rows, again)
    batch = cached.batch(rows[:5])
    for key in data.spec.image_keys:
        assert torch.equal(batch[f"features/{key}"], cached.features[key][rows[:5, 0], rows[:5, 1]])


def test_evaluation_uses_the_centre_crop():
    data = TinyFrames(n=6)
    torch.manual_seed(0)
    agent = FBCAgent(crop_cfg(), data.spec, CPU)
    cached = agent.prepare(data)
    grid = agent.crop_grid
    idx = torch.arange(data.num_samples)
    batch = cached.batch(idx)  # plain sample indices: the centre crop
    enc = agent.policy.encoder
    agent.eval()
    with torch.no_grad():
        for key in enc.image_keys:
            centre = crop_images(data.images[key], CROP, random=False)
            live = enc.body(key)(centre)
            torch.testing.assert_close(batch[f"features/{key}"], live, rtol=0, atol=1e-5)
            assert torch.equal(batch[f"features/{key}"], cached.features[key][:, grid.centre])
            # The live encoder crops the centre in eval mode (rollouts).
            torch.testing.assert_close(enc.frozen_part(key, data.images[key]), live,
                                       rtol=0, atol=1e-5)
        emb_live = enc(data.batch(idx))
        emb_cached = enc(batch, cached=agent._cached(batch))
    torch.testing.assert_close(emb_cached, emb_live, rtol=0, atol=1e-5)
    agent.train()
    # The held-out loss: the same from the K-crop cache, the centre-only cache, the images.
    held_out = agent.prepare(data, held_out=True)
    assert held_out.grid is None and held_out.features["agentview_image"].shape == (6, 512)
    on_cache, on_centre = agent.valid_metrics(cached), agent.valid_metrics(held_out)
    on_images = agent.valid_metrics(data)
    for key, value in on_cache.items():
        assert value == pytest.approx(on_centre[key], rel=1e-5)
        assert value == pytest.approx(on_images[key], rel=1e-5)


def test_random_crop_false_is_the_cache_of_before():
    data = TinyFrames(n=5)
    cfg = small_cfg(encoder=EncoderConfig(weights="random", freeze_mode="all"), random_crop=False)
    agent = FBCAgent(cfg, data.spec, CPU)
    assert agent.policy.encoder.crop_size is None and agent.crop_grid is None
    cached = agent.prepare(data)
    assert cached.grid is None and cached.features["agentview_image"].shape == (5, 512)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    rows = cached.sample_indices(7, g1)
    assert torch.equal(rows, data.sample_indices(7, g2))  # 1-D, drawn exactly as before
    with torch.no_grad():
        body = agent.policy.encoder.body("agentview_image")
        whole = body(data.images["agentview_image"])  # the whole 32x32 frame, no crop
    torch.testing.assert_close(cached.features["agentview_image"], whole, rtol=0, atol=1e-5)
    assert "frozen features cached (" in cached.describe()


def test_describe_names_the_crops_and_the_size():
    data = TinyFrames(n=4)
    cached = FBCAgent(crop_cfg(), data.spec, CPU).prepare(data)
    text = cached.describe()
    assert "frozen features of 9 28x28 crops per frame (offsets [0, 2, 4] x [0, 2, 4])" in text
    assert "MiB)" in text


@pytest.mark.parametrize("bad", [0, -1, 2, 4, 8, 10, 16, 36])
def test_bad_cache_crops_is_a_one_line_error(bad):
    with pytest.raises(ConfigError) as err:
        FBCConfig(cache_crops=bad)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"--agent.cache_crops={bad} is out of range; allowed: an odd")


def test_too_many_cache_crops_for_the_images_is_a_one_line_error():
    with pytest.raises(ValueError) as err:  # 28 of 32: 5 offsets per axis, 7 asked
        FBCAgent(crop_cfg(cache_crops=49), small_spec(image_size=SIDE), CPU)
    assert str(err.value) == (
        "--agent.cache_crops=49 needs 7 crop offsets per axis but 32x32 images cropped to 28 "
        "have 5; pick --agent.cache_crops <= 25"
    )
    # Not needed without a frozen part: nothing is cached, the crops are drawn live.
    FBCAgent(crop_cfg("none", cache_crops=49), small_spec(image_size=SIDE), CPU)


def test_cache_crops_through_the_cli(capsys):
    cfg = train_bc.parse_args(["--agent=fbc", "--agent.cache_crops=25"])
    assert cfg.agent.cache_crops == 25
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: train_bc.train(train_bc.parse_args(["--agent=fbc",
                                                            "--agent.cache_crops=4"])))
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().split("\n")[-1]
    assert last.startswith("error: --agent.cache_crops=4 is out of range"), last
