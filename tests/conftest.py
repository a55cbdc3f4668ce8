"""Shared test settings: CPU, few threads, no network, no wandb."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(2)
# Taken before any test replaces it (the fixture below does, for every test).
_REAL_DOWNLOAD = torch.hub.download_url_to_file


@pytest.fixture(autouse=True)
def _isolated_torch_home(tmp_path, monkeypatch):
    """Every test sees an empty torch hub cache and cannot download into it."""
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def _offline(url, *args, **kwargs):
        from urllib.error import URLError

        raise URLError(f"tests run offline: refused to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)


@pytest.fixture
def real_download(monkeypatch):
    """torch.hub's own downloader back, for a test that serves the URL itself on localhost."""
    monkeypatch.setattr(torch.hub, "download_url_to_file", _REAL_DOWNLOAD)


@pytest.fixture
def one_torch_thread():
    """Tiny tensor ops: a second OpenMP thread only waits on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def histories(tmp_path_factory) -> Path:
    """A small Dark Room learning-history file: 12 training goals x 2 learners x 12 episodes."""
    from envs.darkroom.histories import HistoriesConfig, generate_histories, save_histories

    cfg = HistoriesConfig(histories_per_task=2, max_tasks=12, episodes=12, progress=False)
    path = tmp_path_factory.mktemp("hist") / "darkroom.npz"
    save_histories(path, generate_histories(cfg, torch.device("cpu")))
    return path
