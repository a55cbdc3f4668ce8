"""Shared test settings: CPU, few threads, no network, no wandb."""

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_torch_home(tmp_path, monkeypatch):
    """Every test sees an empty torch hub cache and cannot download into it."""
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def _offline(url, *args, **kwargs):
        from urllib.error import URLError

        raise URLError(f"tests run offline: refused to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
