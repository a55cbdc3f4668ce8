"""fbc's frozen-feature cache on disk (agents/fbc_feature_cache.py): built once, reused.

Tiny 32x32 frames with a crop grid of 9, ResNet-18 with random weights, and a stand-in
"dataset file" of a few bytes in tmp_path (the cache is written beside it, never in ~/.cache).
What is claimed and checked: a second prepare loads the file, with tensors (and their
layout) bit-identical to the built ones and the same training batches; a change of the
dataset's bytes, the body's weights, the crops, the cameras or the precision gives another
file; a damaged file is rebuilt with a note; a stop during the build or the write leaves
no file behind.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from agents import fbc_feature_cache
from agents.fbc import FBCAgent
from tests.test_fbc import CAMS, CPU, small_spec
from tests.test_fbc_crop_cache import SIDE, TinyFrames, crop_cfg
from tests.test_tool_faults import fill, small_fs
from training.guards import StopRequested

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FileFrames(TinyFrames):
    """TinyFrames read from a file (agents.fbc.FramesOnDisk): what gives LiftData a cache on
    disk."""

    def __init__(self, path: Path, cams=CAMS, content: bytes = b"tiny lift") -> None:
        super().__init__(n=6)
        path.write_bytes(content)
        self.path = path
        self.filter_key = None
        self.demos = ["demo_0"]
        self.spec = small_spec(image_size=SIDE, cams=cams)
        self.images = {k: self.images[CAMS[i]] for i, k in enumerate(self.spec.image_keys)}


def agent_for(data, seed: int = 0, mode: str = "all", **kw) -> FBCAgent:
    torch.manual_seed(seed)
    return FBCAgent(dataclasses.replace(crop_cfg(mode), **kw), data.spec, CPU)


def caches(folder: Path) -> list[Path]:
    """Every cache file in the folder, and any temp file a write left."""
    return sorted(p for p in folder.iterdir() if ".frozen-" in p.name)


def test_a_second_prepare_loads_the_same_cache(tmp_path, capsys, monkeypatch):
    data = FileFrames(tmp_path / "lift.hdf5")
    built = agent_for(data).prepare(data)
    (path,) = caches(tmp_path)
    assert path.name.startswith("lift.hdf5.frozen-") and path.suffix == ".pt"
    assert f"frozen-feature cache written to {path} (" in capsys.readouterr().out

    again = agent_for(data)
    monkeypatch.setattr(again, "frozen_features", lambda *a: pytest.fail("embedded again"))
    loaded = again.prepare(data)
    assert capsys.readouterr().out.strip() == f"frozen-feature cache loaded from {path}"
    assert caches(tmp_path) == [path]
    for key, feats in built.features.items():
        assert loaded.features[key].dtype == feats.dtype
        assert loaded.features[key].stride() == feats.stride()  # channels-last maps stay so
        assert torch.equal(loaded.features[key], feats)
    for seed in range(3):
        a = built.sample(5, torch.Generator().manual_seed(seed))
        b = loaded.sample(5, torch.Generator().manual_seed(seed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_maps_of_a_partly_frozen_body_round_trip(tmp_path):
    data = FileFrames(tmp_path / "lift.hdf5")
    built = agent_for(data, mode="until_layer3").prepare(data)
    loaded = agent_for(data, mode="until_layer3").prepare(data)
    assert len(caches(tmp_path)) == 1
    for key, feats in built.features.items():
        assert loaded.features[key].stride() == feats.stride()
        assert torch.equal(loaded.features[key], feats)


def test_whatever_the_features_depend_on_gives_another_file(tmp_path):
    def cache_of(folder: str, cams=CAMS, content=b"tiny lift", seed=0, bf16=False, **kw):
        (tmp_path / folder).mkdir(exist_ok=True)
        data = FileFrames(tmp_path / folder / "lift.hdf5", cams, content)
        agent = agent_for(data, seed=seed, **kw)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            prepared = agent.prepare(data)
        (path,) = caches(tmp_path / folder)
        return path.name, prepared

    base, _ = cache_of("base")
    assert cache_of("copy")[0] == base  # a copy of the same bytes elsewhere: the same key
    assert cache_of("bytes", content=b"other lift")[0] != base
    assert cache_of("weights", seed=1)[0] != base
    assert cache_of("crops", cache_crops=1)[0] != base
    assert cache_of("crop_size", crop_size=26)[0] != base
    assert cache_of("cameras", cams=CAMS[:1])[0] != base
    assert cache_of("freeze", mode="last_block")[0] != base
    name, bf16 = cache_of("bf16", bf16=True)
    assert name != base and all(f.dtype == torch.bfloat16 for f in bf16.features.values())
    # Held-out data holds the centre crop only: a cache of its own beside the training one's.
    data = FileFrames(tmp_path / "base" / "lift.hdf5")
    agent_for(data).prepare(data, held_out=True)
    assert len(caches(tmp_path / "base")) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_cache_is_rebuilt(tmp_path, capsys, damage):
    data = FileFrames(tmp_path / "lift.hdf5")
    built = agent_for(data).prepare(data)
    (path,) = caches(tmp_path)
    whole = path.read_bytes()
    path.write_bytes({"garbage": b"not a cache", "truncated": whole[: len(whole) // 2],
                      "empty": b""}[damage])
    capsys.readouterr()
    rebuilt = agent_for(data).prepare(data)
    out = capsys.readouterr().out
    assert f"frozen-feature cache {path} is unreadable (" in out and "rebuilding it" in out
    assert f"frozen-feature cache written to {path}" in out
    assert caches(tmp_path) == [path] and path.read_bytes() != b""
    for key, feats in built.features.items():
        assert torch.equal(rebuilt.features[key], feats)
    assert "loaded from" in (agent_for(data).prepare(data), capsys.readouterr().out)[1]


def test_a_stop_during_the_build_leaves_no_file(tmp_path):
    data = FileFrames(tmp_path / "lift.hdf5")
    real_batch, calls = data.batch, []

    def interrupted(indices, images=True):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_batch(indices, images)

    data.batch = interrupted
    with pytest.raises(StopRequested):
        agent_for(data).prepare(data)
    assert caches(tmp_path) == []


def test_a_stop_during_the_write_leaves_no_file(tmp_path, monkeypatch):
    data = FileFrames(tmp_path / "lift.hdf5")

    def half_written(obj, f):
        f.write(b"half a cache")
        raise KeyboardInterrupt

    monkeypatch.setattr(fbc_feature_cache.torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        agent_for(data).prepare(data)
    assert caches(tmp_path) == []


def test_data_without_a_file_is_cached_in_memory_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = TinyFrames(n=4)
    assert agent_for(data).prepare(data).features
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_keeps_the_cache_in_memory_and_leaves_no_file(tmp_path, capsys):
    """A real full disk (a tmpfs): torch's writer raises a RuntimeError there, which is
    taken for the OSError it is: one note, no partial file, the run goes on."""
    with small_fs(tmp_path / "disk", "1m") as disk:
        data = FileFrames(disk / "lift.hdf5")
        fill(disk / "filler", leave=4096)
        prepared = agent_for(data).prepare(data)
        assert prepared.features
        assert caches(disk) == [] and sorted(p.name for p in disk.iterdir()) == [
            "filler", "lift.hdf5"]
    out = capsys.readouterr().out
    assert "could not write the frozen-feature cache" in out
    assert "No space left on device" in out and "it is held in memory only" in out


def test_lift_data_is_frames_on_disk_and_tiny_frames_are_not(tmp_path):
    """The contract the disk cache is chosen by, checked on the real data class."""
    from agents.fbc import FramesOnDisk
    from envs.lift.dataset import make_data
    from tests.test_lift_data import write_synthetic

    path = write_synthetic(tmp_path / "d.hdf5", lengths=(6, 5))
    assert isinstance(make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path,
                                chunk_length=4), FramesOnDisk)
    assert isinstance(FileFrames(tmp_path / "lift.hdf5"), FramesOnDisk)
    assert not isinstance(TinyFrames(n=4), FramesOnDisk)
