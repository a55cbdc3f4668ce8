"""Lift data: the robomimic HDF5 writer, loading through robomimic, and bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from envs.lift.dataset import IMAGE_KEYS, make_data
from envs.lift.demos import RobomimicWriter
from envs.lift.env import LOWDIM_KEYS, default_env_args

CPU = torch.device("cpu")


def write_synthetic(
    path: Path,
    lengths: tuple[int, ...] = (12, 7, 20),
    image_size: int = 84,
    skip_key: str | None = None,
    seed: int = 0,
) -> Path:
    """A robomimic-layout file with random frames and actions, no simulator needed."""
    rng = np.random.default_rng(seed)
    writer = RobomimicWriter(path, default_env_args())
    dims = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2, "object": 10}
    for i, n in enumerate(lengths):
        obs = {k: rng.normal(size=(n, d)) for k, d in dims.items()}
        for k in IMAGE_KEYS:
            obs[k] = rng.integers(0, 256, size=(n, image_size, image_size, 3), dtype=np.uint8)
        obs.pop(skip_key, None)
        next_obs = {k: np.concatenate([v[1:], v[-1:]]) for k, v in obs.items()}
        rewards = np.zeros(n)
        rewards[-1] = 1
        writer.add_demo(
            states=rng.normal(size=(n, 32)),
            actions=rng.uniform(-1, 1, size=(n, 7)),
            rewards=rewards,
            dones=(np.arange(n) == n - 1).astype(np.int64),
            obs=obs,
            next_obs=next_obs,
            group=f"operator_{i % 2}",
        )
    writer.close()
    return path


def test_writer_layout_matches_robomimic(tmp_path):
    path = write_synthetic(tmp_path / "demo.hdf5")
    with h5py.File(path, "r") as f:
        assert f["data"].attrs["total"] == 39
        assert json.loads(f["data"].attrs["env_args"])["env_name"] == "Lift"
        g = f["data/demo_1"]
        assert g.attrs["num_samples"] == 7
        assert g["actions"].shape == (7, 7) and g["rewards"].shape == (7,)
        assert g["dones"][-1] == 1 and g["dones"][:-1].sum() == 0
        assert g["obs/agentview_image"].dtype == np.uint8
        assert g["obs/agentview_image"].shape == (7, 84, 84, 3)
        assert g["next_obs/robot0_eye_in_hand_image"].shape == (7, 84, 84, 3)
        masks = {k: sorted(x.decode() for x in f[f"mask/{k}"][()]) for k in f["mask"]}
    assert sorted(masks["train"] + masks["valid"]) == ["demo_0", "demo_1", "demo_2"]
    assert masks["operator_0"] == ["demo_0", "demo_2"] and masks["operator_1"] == ["demo_1"]


def test_robomimic_sequence_dataset_reads_the_writer(tmp_path):
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset

    path = write_synthetic(tmp_path / "demo.hdf5")
    ObsUtils.initialize_obs_utils_with_obs_specs(
        {"obs": {"low_dim": list(LOWDIM_KEYS), "rgb": list(IMAGE_KEYS)}}
    )
    ds = SequenceDataset(
        hdf5_path=str(path),
        obs_keys=(*IMAGE_KEYS, *LOWDIM_KEYS),
        dataset_keys=("actions", "rewards", "dones"),
        seq_length=16,
        hdf5_cache_mode="low_dim",
        filter_by_attribute="train",
        load_next_obs=True,
    )
    with h5py.File(path, "r") as f:
        train = [x.decode() for x in f["mask/train"][()]]
        expected = sum(f[f"data/{d}"].attrs["num_samples"] for d in train)
    assert len(ds) == expected
    item = ds[len(ds) - 1]  # the last frame of a demo: the chunk is padded by repetition
    assert item["actions"].shape == (16, 7)
    assert item["obs"]["agentview_image"].shape == (16, 84, 84, 3)
    assert item["next_obs"]["robot0_eef_pos"].shape == (16, 3)
    np.testing.assert_array_equal(item["actions"][1:], np.repeat(item["actions"][:1], 15, 0))


def test_make_data_matches_robomimic_items(tmp_path):
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset

    path = write_synthetic(tmp_path / "demo.hdf5")
    data = make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path, chunk_length=16)
    assert data.num_samples == 39
    assert data.spec.image_shape == (3, 84, 84) and data.spec.action_dim == 7
    batch = data.batch(torch.tensor([0, 11, 12, 38]))
    assert batch["obs/agentview_image"].shape == (4, 3, 84, 84)
    assert batch["obs/agentview_image"].dtype == torch.float32
    assert 0.0 <= batch["obs/agentview_image"].min() and batch["obs/agentview_image"].max() <= 1.0
    assert batch["actions"].shape == (4, 16, 7)
    # Same samples as robomimic's own __getitem__ + ObsUtils processing.
    ds = SequenceDataset(
        str(path),
        obs_keys=(*IMAGE_KEYS, *LOWDIM_KEYS),
        dataset_keys=("actions",),
        seq_length=16,
        load_next_obs=False,
    )
    for row, index in enumerate([0, 11, 12, 38]):
        item = ds[index]
        np.testing.assert_allclose(batch["actions"][row].numpy(), item["actions"], rtol=1e-6)
        image = ObsUtils.process_obs(item["obs"]["agentview_image"][0], obs_key="agentview_image")
        np.testing.assert_allclose(batch["obs/agentview_image"][row].numpy(), image, rtol=1e-6)
        np.testing.assert_allclose(
            batch["obs/robot0_eef_pos"][row].numpy(), item["obs"]["robot0_eef_pos"][0], rtol=1e-6
        )
    sample = data.sample(5, torch.Generator().manual_seed(0))
    assert sample["obs/robot0_eye_in_hand_image"].shape == (5, 3, 84, 84)


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        make_data(
            str(tmp_path / "nope.hdf5"),
            device=CPU,
            seed=0,
            cache_dir=tmp_path,
            chunk_length=4,
        )
    assert "\n" not in str(err.value)


def test_missing_obs_key_names_the_key_and_the_render_command(tmp_path):
    path = write_synthetic(tmp_path / "lowdim.hdf5", skip_key="agentview_image")
    with pytest.raises(ValueError, match="'agentview_image'") as err:
        make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path, chunk_length=4)
    assert "envs.lift.demos render" in str(err.value) and "\n" not in str(err.value)


def test_wrong_image_size_is_named(tmp_path):
    path = write_synthetic(tmp_path / "big.hdf5", image_size=96)
    with pytest.raises(ValueError, match="96x96x3, expected uint8 84x84x3") as err:
        make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path, chunk_length=4)
    assert "\n" not in str(err.value)


def test_not_a_robomimic_file(tmp_path):
    path = tmp_path / "plain.hdf5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a robomimic file"):
        make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path, chunk_length=4)


@pytest.mark.parametrize("variant", ["ph", "mh"])
def test_real_variants_need_dataset_and_say_where_to_get_it(tmp_path, variant):
    with pytest.raises(FileNotFoundError) as err:
        make_data(
            None,
            device=CPU,
            seed=0,
            cache_dir=tmp_path,
            chunk_length=4,
            variant=variant,
        )
    message = str(err.value)
    assert "\n" not in message
    assert f"lift/{variant}" in message and "robomimic" in message
    assert "python -m envs.lift.demos render" in message
