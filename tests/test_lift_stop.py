"""A stop outside the training loop (SIGINT / SIGTERM as StopRequested, or a KeyboardInterrupt).

Demo generation keeps its complete demos in the `.partial` file and the next call
continues from them to the file an uninterrupted call writes (datasets and attributes
equal bit for bit); a demo half-written when the stop came is dropped. The evaluation ends
its workers without a word from them; the frozen-feature cache says it is built again. The
command line ends with one line and exit status EXIT_STOPPED, no traceback (from itself,
robosuite's EGL context or a worker).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from agents.fbc import FBCAgent
from envs.lift import demos, evaluation
from envs.lift.env import default_env_args
from tests.test_fbc import CPU, small_cfg
from tests.test_fbc_crop_cache import TinyFrames
from tests.test_lift_eval_repro import init_obs_utils, lowdim_spec
from training.guards import StopRequested
from training.run_outcome import EXIT_STOPPED

REPO = Path(__file__).resolve().parents[1]


def contents(path: Path) -> dict[str, object]:
    """Every object of an HDF5 file by path: a dataset's dtype, shape and bytes, and every
    object's attributes (their type and repr), the root's included."""

    def attrs(obj: h5py.HLObject) -> dict[str, str]:
        return {k: f"{type(v).__name__}:{v!r}" for k, v in obj.attrs.items()}

    out: dict[str, object] = {}
    with h5py.File(path, "r") as f:
        out["/"] = attrs(f)

        def visit(name: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Dataset):
                arr = obj[()]
                out[name] = (arr.dtype.str, arr.shape, arr.tobytes(), attrs(obj))
            else:
                out[name] = attrs(obj)

        f.visititems(visit)
    return out


def partial_of(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def fake_demo(n: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    obs = {"object": rng.normal(size=(n, 10))}
    return dict(states=rng.normal(size=(n, 32)), actions=rng.uniform(-1, 1, (n, 7)),
                rewards=np.zeros(n), dones=np.eye(n)[-1], obs=obs, next_obs=obs)


# ---- fast: the partial file's record, without an env


def test_a_partial_file_keeps_its_complete_demos_and_only_those(tmp_path):
    path = tmp_path / "d.hdf5.partial"
    writer = demos.RobomimicWriter(path, default_env_args(cameras=()))
    for i in range(2):
        writer.add_demo(**fake_demo(seed=i), group="op", state={"after": i})
    # A stop while the third demo was being written: its group is there, unrecorded.
    writer.data.create_group("demo_2").create_dataset("states", data=np.zeros(3))
    assert writer.suspend() == 2
    writer = demos.RobomimicWriter.reopen(path)
    assert writer.num_demos == 2 and writer.state == {"after": 1}
    assert sorted(writer.data) == ["demo_0", "demo_1"] and writer.groups == {
        "op": ["demo_0", "demo_1"]
    }
    writer.add_demo(**fake_demo(seed=2), group="op")
    writer.close()
    with h5py.File(path, "r") as f:
        assert demos.PROGRESS not in f["data"].attrs  # a finished file is not continued
        assert f["data"].attrs["total"] == 15 and len(f["mask/op"]) == 3
    with pytest.raises(KeyError):
        demos.RobomimicWriter.reopen(path)


def test_a_partial_file_of_other_arguments_or_damaged_is_started_over(tmp_path, capsys):
    path = tmp_path / "d.hdf5.partial"
    env_args = default_env_args(cameras=())
    attrs = {"preset": "custom", "operators": "[]", "generator": '{"seed": 0}'}
    writer = demos._open_partial(path, env_args, attrs)
    writer.add_demo(**fake_demo(), state={"after": 0})
    writer.suspend()
    writer = demos._open_partial(path, env_args, attrs)
    assert writer.num_demos == 1 and writer.state == {"after": 0}
    writer.suspend()
    writer = demos._open_partial(path, env_args, {**attrs, "generator": '{"seed": 1}'})
    assert writer.num_demos == 0 and "made it with other arguments" in capsys.readouterr().out
    writer.file.close()
    path.write_bytes(b"killed before HDF5 wrote its superblock")
    writer = demos._open_partial(path, env_args, attrs)
    assert writer.num_demos == 0 and "cannot be continued" in capsys.readouterr().out
    writer.file.close()


# ---- real robosuite: a few short demos, small images


def test_a_stopped_generation_continues_to_the_same_file(tmp_path, monkeypatch, capsys):
    """2 demos with 32x32 agentview frames, stopped (Ctrl-C) in the second attempt."""
    kwargs = dict(num_demos=2, seed=0, cameras=("agentview",), image_size=32, progress=False)
    whole = tmp_path / "whole.hdf5"
    expected = demos.generate(whole, **kwargs)
    assert expected["attempts"] == 2  # every attempt a demo: the stop below comes after one
    out = tmp_path / "stopped.hdf5"
    real_run_demo, calls = demos.run_demo, []

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as Ctrl-C raises it, anywhere in the episode
        return real_run_demo(*args, **kw)

    monkeypatch.setattr(demos, "run_demo", interrupted)
    with pytest.raises(StopRequested) as stop:
        demos.generate(out, **kwargs)
    assert stop.value.signal_name == "SIGINT"
    assert stop.value.kept == (
        f"1 of 2 demos kept in {partial_of(out)}; the next run continues from them"
    )
    assert partial_of(out).exists() and not out.exists()
    monkeypatch.setattr(demos, "run_demo", real_run_demo)
    assert demos.generate(out, **kwargs) == expected
    assert "continuing" in capsys.readouterr().out
    assert not partial_of(out).exists()
    assert contents(out) == contents(whole)


def test_a_demo_half_written_when_the_stop_came_is_dropped(tmp_path, monkeypatch):
    """Camera-less: the stop (SIGTERM) comes between two obs datasets of the second demo."""
    kwargs = dict(num_demos=2, seed=1, cameras=(), progress=False)
    whole = tmp_path / "whole.hdf5"
    expected = demos.generate(whole, **kwargs)
    out = tmp_path / "stopped.hdf5"
    real_write_obs, writes = demos.write_obs, []

    def cut_short(group: h5py.Group, key: str, arr: np.ndarray) -> None:
        if group.name == "/data/demo_1":
            writes.append(key)
            if len(writes) == 3:
                raise StopRequested("SIGTERM")
        real_write_obs(group, key, arr)

    monkeypatch.setattr(demos, "write_obs", cut_short)
    with pytest.raises(StopRequested) as stop:
        demos.generate(out, **kwargs)
    assert stop.value.signal_name == "SIGTERM"
    assert stop.value.kept.startswith("1 of 2 demos kept in")
    with h5py.File(partial_of(out), "r") as f:  # the half-written demo is there, unrecorded
        assert len(f["data/demo_1/obs"]) == 2
        assert json.loads(f["data"].attrs[demos.PROGRESS])["demos"] == 1
    monkeypatch.setattr(demos, "write_obs", real_write_obs)
    assert demos.generate(out, **kwargs) == expected
    assert contents(out) == contents(whole)


def test_a_stop_before_any_demo_keeps_nothing(tmp_path, monkeypatch):
    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(demos, "run_demo", interrupted)
    out = tmp_path / "d.hdf5"
    with pytest.raises(StopRequested) as stop:
        demos.generate(out, 2, cameras=(), progress=False)
    assert stop.value.kept == "no complete demo to keep; the next run starts the 2 demos over"
    assert not partial_of(out).exists() and not out.exists()


class StopOnSecondChunk:
    """A policy that is stopped (Ctrl-C) while it computes its second chunk; before its
    first, it sends the workers what a signal to the parent's process group would."""

    def __init__(self, evaluator: evaluation.LiftEvaluator) -> None:
        self.evaluator = evaluator
        self.calls = 0
        self.worker_groups: list[int] = []

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            for proc in self.evaluator.procs:  # started: each in a group of its own
                self.worker_groups.append(os.getpgid(proc.pid))
                os.kill(proc.pid, signal.SIGINT)  # ignored, had it reached one
        if self.calls == 2:
            raise KeyboardInterrupt
        return torch.zeros(obs["obs/object"].shape[0], 1, 7)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_stopped_evaluation_ends_its_workers_quietly(workers, capfd, one_torch_thread):
    init_obs_utils()
    ev = evaluation.LiftEvaluator(
        lowdim_spec(horizon=20), device=CPU, seed=0, num_workers=workers, video_dir=None
    )
    policy, procs = StopOnSecondChunk(ev), []
    try:
        with pytest.raises(StopRequested) as stop:
            ev._start()
            procs = list(ev.procs)
            ev.run(policy, 2)
    finally:
        ev.close()
    assert policy.calls == 2  # the workers went on after the SIGINT: the first chunk ran
    assert os.getpgrp() not in policy.worker_groups
    assert stop.value.signal_name == "SIGINT"
    assert stop.value.kept == "the evaluation in progress is dropped (0 of 2 episodes had ended)"
    assert not ev.conns and not ev.procs and not any(p.is_alive() for p in procs)
    assert all(p.exitcode == -signal.SIGKILL for p in procs)
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out


def test_a_stopped_feature_cache_says_it_is_built_again(monkeypatch, one_torch_thread):
    data = TinyFrames(n=10)
    agent = FBCAgent(small_cfg(freeze_encoder=True, cache_batch_size=4), data.spec, CPU)
    real_batch, calls = data.batch, []

    def interrupted(indices, images=True):
        calls.append(1)
        if len(calls) == 2:
            raise StopRequested("SIGTERM")
        return real_batch(indices, images)

    monkeypatch.setattr(data, "batch", interrupted)
    with pytest.raises(StopRequested) as stop:
        agent.prepare(data)
    assert stop.value.signal_name == "SIGTERM"
    assert stop.value.kept == (
        "the frozen-feature cache (4 of 10 frames embedded) is held in memory only; "
        "the next run builds it again"
    )
    assert agent.training  # the mode it had before the cache build


# ---- the command line, as a user stops it: a signal to the whole process group


def stop_generation(output: Path, sig: signal.Signals) -> tuple[int, str]:
    """Run `python -m envs.lift.demos generate` (3 demos with images), send `sig` to its
    process group once the first demo is written; its exit status and output."""
    cmd = [sys.executable, "-m", "envs.lift.demos", "generate", "--num_demos", "3",
           "--output", str(output)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read1(), b"")))
    reader.start()
    deadline = time.monotonic() + 240
    while b"| 1/3" not in b"".join(chunks) and proc.poll() is None:
        assert time.monotonic() < deadline, b"".join(chunks).decode()
        time.sleep(0.05)
    os.killpg(proc.pid, sig)  # what Ctrl-C (SIGINT) or a scheduler (SIGTERM) does
    proc.wait(timeout=120)
    reader.join()
    return proc.returncode, b"".join(chunks).decode()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_command_line_stops_in_one_line_keeping_its_demos(tmp_path, sig):
    out = tmp_path / "d.hdf5"
    code, said = stop_generation(out, sig)
    last = said.strip().splitlines()[-1]
    assert code == EXIT_STOPPED, said
    assert "Traceback" not in said and "EGLError" not in said, said
    assert last.startswith(f"stopped by {sig.name} while running generate: ")
    assert "demos kept in" in last and last.endswith("the next run continues from them")
    with h5py.File(partial_of(out), "r") as f:
        kept = json.loads(f["data"].attrs[demos.PROGRESS])["demos"]
    assert 1 <= kept < 3 and last.split(": ", 1)[1].startswith(f"{kept} of 3 demos")
