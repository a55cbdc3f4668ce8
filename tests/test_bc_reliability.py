"""train_bc.py with the real agents (fbc on tiny robomimic files, ad on tiny Dark Room
histories): exact resume, checkpoint writes killed mid-way, non-finite values, bad input
as one-line errors that touch nothing, loading that never runs pickled code, and equal
runs from equal seeds."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import train_bc
from agents.ad import ADAgent
from agents.fbc import FBCAgent
from envs import bc_tasks
from envs.darkroom.histories import HistoriesConfig, generate_histories, save_histories
from tests.test_lift_data import write_synthetic
from training.checkpoint import load_checkpoint, save_checkpoint
from training.cli import run_main

REPO = Path(__file__).resolve().parents[1]
IMAGE = 32  # side of the tiny task's camera images
COMMON = ["--device=cpu", "--wandb.mode=disabled", "--log_interval=1", "--eval_episodes=0"]
FBC = [
    "--env_name=lift-tiny",
    *COMMON,
    "--batch_size=4",
    "--agent.pretrained_encoder=False",
    "--agent.share_encoder=True",
    "--agent.chunk_length=4",
    "--agent.action_horizon=2",
    "--agent.hidden_dim=32",
    "--agent.num_layers=1",
    "--agent.emb_dim=16",
]
FBC_FROZEN = [*FBC, "--agent.freeze_encoder=True"]  # features cached once by prepare()
# layer4 trains on the frozen prefix's maps, cached once by prepare().
FBC_PARTIAL = [*FBC, "--agent.encoder.freeze_mode=until_layer3"]
FBC_TUNED = [
    *FBC,
    "--agent.freeze_encoder=False",
    "--agent.random_crop=True",
    "--agent.crop_size=28",
]
AD = [
    "--env_name=darkroom",
    *COMMON,
    "--batch_size=4",
    "--agent.context_episodes=1",
    "--agent.d_model=16",
    "--agent.n_layer=1",
    "--agent.n_head=2",
    "--agent.lr_decay_steps=6",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _drop_checkpoints(tmp_path):
    """A fine-tuned fbc checkpoint holds a ResNet-18, its EMA and Adam moments (~170 MB):
    pytest keeps the last runs' temporary folders, so delete them after each test."""
    yield
    for path in tmp_path.rglob("*.pt"):
        path.unlink()


@pytest.fixture(scope="module", autouse=True)
def tiny_lift_task():
    """The real Lift task module at 32x32 images (the registered tasks use 84x84)."""
    task = bc_tasks.BCTask(
        "lift-tiny", "envs.lift.dataset:make_data", "envs.lift.evaluation:make_evaluator", "fbc",
        {}, {"variant": "scripted", "image_size": IMAGE}, agent_fields=("chunk_length",)
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(bc_tasks.BC_TASKS, "lift-tiny", task)
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def lift_file(data_dir) -> Path:
    return write_synthetic(data_dir / "lift.hdf5", lengths=(6, 5), image_size=IMAGE)


@pytest.fixture(scope="module")
def histories(data_dir) -> Path:
    """4 training goals x 2 learners x 6 episodes of Dark Room."""
    cfg = HistoriesConfig(histories_per_task=2, max_tasks=4, episodes=6, progress=False)
    return save_histories(data_dir / "darkroom.npz", generate_histories(cfg, torch.device("cpu")))


def train(*args: str) -> dict:
    return train_bc.train(train_bc.parse_args(list(args)))


def fbc_args(lift_file: Path, flags: list[str], *extra: str) -> list[str]:
    return [*flags, f"--dataset={lift_file}", *extra]


def ad_args(histories: Path, *extra: str) -> list[str]:
    return [*AD, f"--dataset={histories}", *extra]


def records(run: Path) -> list[dict]:
    """metrics.jsonl without timings and without the parameter report (logged again on
    resume, at the step it resumes from)."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if any(k.startswith("params/") for k in record):
            continue
        out.append({k: v for k, v in record.items() if k != "time" and not k.startswith("perf/")})
    return out


def assert_same(a, b, where: str = "") -> None:
    """Nested dicts / lists of tensors and plain values, bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_runs(a: Path, b: Path) -> None:
    """Equal final checkpoints (model, optimizer, RNG, sampler) and equal logged metrics."""
    ca, cb = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (a, b))
    for part in ("step", "model", "optimizer", "rng", "extra"):
        assert_same(ca[part], cb[part], part)
    assert records(a) == records(b)


def last_model(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under folder: content hash and modification time."""
    return {
        str(p.relative_to(folder)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------- 1. exact resume


def run_args(kind: str, lift_file: Path, histories: Path, *extra: str) -> list[str]:
    if kind == "ad":
        return ad_args(histories, *extra)
    flags = {"fbc_frozen": FBC_FROZEN, "fbc_partial": FBC_PARTIAL, "fbc_tuned": FBC_TUNED}[kind]
    return fbc_args(lift_file, flags, *extra)


@pytest.mark.parametrize("kind", ["fbc_frozen", "fbc_partial", "fbc_tuned", "ad"])
def test_resume_is_exact(kind, lift_file, histories, tmp_path):
    once, twice = tmp_path / "once", tmp_path / "twice"
    train(*run_args(kind, lift_file, histories, "--offline_steps=4", f"--output_dir={once}"))
    train(*run_args(kind, lift_file, histories, "--offline_steps=2", f"--output_dir={twice}"))
    assert load_checkpoint(twice / "checkpoints" / "last.pt")["step"] == 2
    train(
        *run_args(kind, lift_file, histories),
        "--offline_steps=4",
        f"--output_dir={twice}",
        "--resume=True",
    )
    assert_same_runs(once, twice)
    assert [r["step"] for r in records(twice) if any(k.startswith("train/") for k in r)] == [
        1,
        2,
        3,
        4,
    ]


def test_eval_episodes_zero_builds_no_evaluator(lift_file, tmp_path, monkeypatch):
    import envs.lift.evaluation

    def refuse(*args, **kwargs):
        raise AssertionError("an evaluator was built with --eval_episodes=0")

    monkeypatch.setattr(envs.lift.evaluation, "make_evaluator", refuse)
    out = tmp_path / "run"
    assert train(*fbc_args(lift_file, FBC_FROZEN, "--offline_steps=1", f"--output_dir={out}")) == {}
    assert json.loads((out / "final_metrics.json").read_text()) == {}
    assert not (out / "videos").exists()


# ---------------------------------------------------------------- 6. determinism


@pytest.mark.parametrize("kind", ["fbc_tuned", "ad"])
def test_same_seed_same_run_other_seed_other_run(kind, lift_file, histories, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(
            *run_args(kind, lift_file, histories),
            "--offline_steps=3",
            f"--seed={seed}",
            f"--output_dir={tmp_path / name}",
        )
    assert_same_runs(tmp_path / "a", tmp_path / "b")
    a, c = last_model(tmp_path / "a"), last_model(tmp_path / "c")
    assert any(not torch.equal(a[k], c[k]) for k in a if isinstance(a[k], torch.Tensor))
    assert records(tmp_path / "a") != records(tmp_path / "c")


# ---------------------------------------------------------------- 2. killed mid-write

KILLED_WRITER = """
import io, os, sys, time
import torch
from torch import nn
from training.checkpoint import save_checkpoint

path = sys.argv[1]
torch.manual_seed(0)
model = nn.Linear(64, 64)
save_checkpoint(path, model=model, optimizer=None, step=1, config={"run": "first"})
with torch.no_grad():
    model.weight.add_(1.0)
real_save = torch.save


def half_then_hang(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    print("HALF WRITTEN", flush=True)
    time.sleep(120)
    f.write(data[len(data) // 2 :])


torch.save = half_then_hang
save_checkpoint(path, model=model, optimizer=None, step=2, config={"run": "second"})
"""


def test_kill_during_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = ""
        deadline = time.time() + 100
        while "HALF WRITTEN" not in line and time.time() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert "HALF WRITTEN" in line, proc.stdout.read()
        proc.kill()  # SIGKILL: no finally block, no cleanup
    finally:
        proc.kill()
        proc.wait(timeout=30)
    leftovers = [p for p in path.parent.iterdir() if p.name != "last.pt"]
    assert [p.name for p in leftovers] == [f".last.pt.tmp-{proc.pid}"]
    ckpt = load_checkpoint(path)
    torch.manual_seed(0)
    first = torch.nn.Linear(64, 64)
    assert ckpt["step"] == 1 and ckpt["config"] == {"run": "first"}
    assert_same(ckpt["model"], first.state_dict())
    with pytest.raises(ValueError, match="refusing to load"):
        load_checkpoint(leftovers[0])  # the half-written file is never taken for a checkpoint
    # The next save removes the dead writer's temp file.
    save_checkpoint(path, model=first, optimizer=None, step=3, config={})
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    assert load_checkpoint(path)["step"] == 3


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    path = tmp_path / "last.pt"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = tmp_path / f".last.pt.tmp-{live.pid}"
        other.write_bytes(b"in progress")
        save_checkpoint(path, model=torch.nn.Linear(2, 2), optimizer=None, step=1, config={})
        assert other.read_bytes() == b"in progress"
    finally:
        live.kill()
        live.wait(timeout=30)


# ---------------------------------------------------------------- 3. non-finite values


def poison_update(monkeypatch, agent_class: type, key: str, at: int) -> None:
    """Make batch[key] NaN in the at-th call of agent_class.update (1-based)."""
    real = agent_class.update
    calls = {"n": 0}

    def update(self, batch, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            batch = {**batch, key: batch[key] * float("nan")}
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(agent_class, "update", update)


def finite(model: dict[str, torch.Tensor]) -> bool:
    tensors = [t for t in model.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return all(torch.isfinite(t).all() for t in tensors)


NAN_CASES = {
    "fbc_tuned": (FBCAgent, "actions", "backbone, heads"),
    "ad": (ADAgent, "rewards", "heads"),
}


@pytest.mark.parametrize("kind", list(NAN_CASES))
def test_nan_stops_the_run_naming_step_and_groups(
    kind, lift_file, histories, tmp_path, monkeypatch, capsys
):
    agent_class, key, groups = NAN_CASES[kind]
    poison_update(monkeypatch, agent_class, key, at=3)
    out = tmp_path / "run"
    args = run_args(kind, lift_file, histories, "--offline_steps=6", "--save_interval=2")
    message = cli_error(monkeypatch, capsys, *args, f"--output_dir={out}")
    assert "step 3" in message
    assert f"non-finite gradient in parameter group(s) {groups}" in message
    assert "--skip_nonfinite=True" in message
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == 2 and finite(ckpt["model"])


@pytest.mark.parametrize("kind", list(NAN_CASES))
def test_nan_step_is_skipped_with_skip_nonfinite(kind, lift_file, histories, tmp_path, monkeypatch):
    agent_class, key, _ = NAN_CASES[kind]
    poison_update(monkeypatch, agent_class, key, at=3)
    out = tmp_path / "run"
    train(
        *run_args(kind, lift_file, histories, "--offline_steps=5"),
        f"--output_dir={out}",
        "--skip_nonfinite=True",
    )
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == 5 and finite(ckpt["model"])
    skipped = [r["train/skipped_nonfinite_steps"] for r in records(out) if len(r) > 1]
    assert skipped == [0, 0, 1, 1, 1]


def test_resume_after_a_skipped_step_is_exact(histories, tmp_path):
    """The skipped-step count is part of the run's state: it goes on after --resume."""
    once, twice = tmp_path / "once", tmp_path / "twice"
    skip = ("--skip_nonfinite=True",)
    for out, steps in ((once, 4), (twice, 2)):
        with pytest.MonkeyPatch.context() as mp:
            poison_update(mp, ADAgent, "rewards", at=2)
            train(*ad_args(histories, f"--offline_steps={steps}", f"--output_dir={out}", *skip))
    train(*ad_args(histories, "--offline_steps=4", f"--output_dir={twice}", "--resume=True", *skip))
    assert_same_runs(once, twice)
    assert [r["train/skipped_nonfinite_steps"] for r in records(twice)] == [0, 1, 1, 1]


# ---------------------------------------------------------------- 4. bad input


def cli_error(monkeypatch, capsys, *args: str) -> str:
    """Run train_bc's command line: exit status 2, and stderr ends with one line "error: ..."
    (progress bars before it are fine; a traceback or a second line of the error is not)."""
    monkeypatch.setattr(sys, "argv", ["train_bc.py", *args])
    monkeypatch.delenv("RLENC_TRACEBACK", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(train_bc.main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]  # as a terminal shows them
    lines = [line for line in lines if line.strip()]
    assert lines[-1].startswith("error: "), err
    assert sum("error:" in line for line in lines) == 1 and "Traceback" not in err, err
    return lines[-1]


@pytest.fixture(scope="module")
def lift_run(lift_file, tmp_path_factory) -> Path:
    """A finished fbc run that a bad --resume must leave as it is."""
    out = tmp_path_factory.mktemp("existing") / "lift_run"
    train(*fbc_args(lift_file, FBC_FROZEN, "--offline_steps=2", f"--output_dir={out}"))
    return out


@pytest.fixture(scope="module")
def ad_run(histories, tmp_path_factory) -> Path:
    """A finished ad run that a bad --resume must leave as it is."""
    out = tmp_path_factory.mktemp("existing") / "ad_run"
    train(*ad_args(histories, "--offline_steps=2", f"--output_dir={out}"))
    return out


def _rewrite(path: Path, source: Path, edit) -> Path:
    path.write_bytes(source.read_bytes())
    with h5py.File(path, "a") as f:
        for demo in ("demo_0", "demo_1"):
            edit(f[f"data/{demo}"])
    return path


def _replace(group, key: str, value: np.ndarray) -> None:
    del group[key]
    group[key] = value


def _gray(group) -> None:
    for key in ("agentview_image", "robot0_eye_in_hand_image"):
        _replace(group, f"obs/{key}", group[f"obs/{key}"][()][..., :1])


def _six_dim_actions(group) -> None:
    _replace(group, "actions", group["actions"][()][:, :6])


def _damaged_chunk(path: Path, source: Path) -> Path:
    """A compressed image chunk overwritten with garbage (what a bad disk or copy leaves)."""
    path.write_bytes(source.read_bytes())
    with h5py.File(path, "r") as f:
        chunk = f["data/demo_0/obs/agentview_image"].id.get_chunk_info(2)
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset : chunk.byte_offset + chunk.size] = b"\xff" * chunk.size
    path.write_bytes(bytes(data))
    return path


def bad_lift_file(kind: str, lift_file: Path, folder: Path) -> Path:
    path = folder / f"{kind}.hdf5"
    if kind == "missing":
        return path
    if kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "truncated":
        path.write_bytes(lift_file.read_bytes()[: lift_file.stat().st_size // 2])
    elif kind == "damaged_chunk":
        _damaged_chunk(path, lift_file)
    elif kind == "missing_obs_key":
        write_synthetic(path, lengths=(6, 5), image_size=IMAGE, skip_key="robot0_eye_in_hand_image")
    elif kind == "one_channel_images":
        _rewrite(path, lift_file, _gray)
    elif kind == "image_size":
        write_synthetic(path, lengths=(6, 5), image_size=40)
    elif kind == "action_dim":
        _rewrite(path, lift_file, _six_dim_actions)
    return path


BAD_LIFT_FILES = {
    "missing": "does not exist (--dataset takes a robomimic lift image HDF5)",
    "random_bytes": "is not an HDF5 file (Unable to synchronously open file (file signature",
    "truncated": "is not an HDF5 file (Unable to synchronously open file (truncated file",
    "damaged_chunk": "is damaged: reading it failed (",
    "missing_obs_key": "obs has no 'robot0_eye_in_hand_image'; make an image file with `python "
    "-m envs.lift.demos render",
    "one_channel_images": "obs/agentview_image is uint8 32x32x1, expected uint8 32x32x3",
    "image_size": "obs/agentview_image is uint8 40x40x3, expected uint8 32x32x3",
    "action_dim": "data/demo_0/actions are 6-dim but its env (Lift, Panda, OSC_POSE controller) "
    "takes 7-dim actions",
}


def run_whose_dataset_went_bad(finished: Path, dataset: Path, copy: Path) -> Path:
    """A copy of a finished run whose config.json names `dataset`: the file it trained on,
    gone bad since (a resume reads the dataset its config.json names)."""
    shutil.copytree(finished, copy)
    config = json.loads((copy / "config.json").read_text())
    config["dataset"] = str(dataset)
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    return copy


@pytest.mark.parametrize("kind", list(BAD_LIFT_FILES))
def test_bad_lift_dataset_is_one_line_and_touches_nothing(
    kind, lift_file, lift_run, tmp_path, monkeypatch, capsys
):
    path = bad_lift_file(kind, lift_file, tmp_path)
    run = run_whose_dataset_went_bad(lift_run, path, tmp_path / "run")
    before = snapshot(run)
    message = cli_error(monkeypatch, capsys, "--offline_steps=4", f"--output_dir={run}",
                        "--resume=True")
    assert BAD_LIFT_FILES[kind] in message and str(path) in message
    assert snapshot(run) == before
    fresh = tmp_path / "fresh"
    cli_error(monkeypatch, capsys, *fbc_args(path, FBC_FROZEN), f"--output_dir={fresh}")
    assert not fresh.exists() or not any(fresh.iterdir())


def test_action_dim_mismatch_through_the_registered_lift_task(tmp_path, monkeypatch, capsys):
    """The real lift-scripted-image task (84x84) refuses 6-dim demos before training."""
    path = _rewrite(tmp_path / "a6.hdf5", write_synthetic(tmp_path / "ok.hdf5"), _six_dim_actions)
    message = cli_error(
        monkeypatch,
        capsys,
        "--env_name=lift-scripted-image",
        *COMMON,
        f"--dataset={path}",
        f"--output_dir={tmp_path / 'run'}",
    )
    assert "6-dim" in message and "takes 7-dim actions" in message


def test_inconsistent_options_are_one_line_errors(
    lift_file, lift_run, tmp_path, monkeypatch, capsys
):
    before = snapshot(lift_run)
    resume = ("--offline_steps=4", f"--output_dir={lift_run}", "--resume=True")
    fresh = ("--offline_steps=4", f"--output_dir={tmp_path / 'fresh'}")
    # Random crops larger than the image would silently crop nothing.
    message = cli_error(
        monkeypatch,
        capsys,
        *fbc_args(lift_file, FBC_FROZEN, "--agent.random_crop=True", f"--agent.crop_size={IMAGE}"),
        *fresh,
    )
    assert f"--agent.crop_size={IMAGE} cannot crop the 32x32 images" in message
    assert "--agent.random_crop=False" in message
    # An in-context agent on a Lift task (it used to die on a KeyError deep in the agent).
    message = cli_error(
        monkeypatch, capsys, "--agent=ad", *fbc_args(lift_file, FBC[:1] + COMMON), *fresh
    )
    assert ("--agent=ad does not fit --env_name=lift-tiny: its data is shaped by the agent's "
            "chunk_length") in message
    message = cli_error(monkeypatch, capsys, "--agent=nope", "--env_name=lift-tiny")
    assert message.startswith("error: unknown agent 'nope'; known: ad, compressed_ad")
    message = cli_error(
        monkeypatch, capsys, *fbc_args(lift_file, FBC_FROZEN), *resume, "--overwrite=True"
    )
    assert "--resume and --overwrite contradict each other" in message
    assert snapshot(lift_run) == before


def test_a_frozen_encoder_with_random_crops_caches_the_crops(lift_file, tmp_path, capsys):
    """Not a contradiction: the body stays frozen, and the cache holds 9 crops per frame."""
    out = tmp_path / "run"
    train(
        *fbc_args(lift_file, FBC_FROZEN, "--agent.random_crop=True", "--agent.crop_size=28"),
        "--offline_steps=1",
        f"--output_dir={out}",
    )
    assert "caching frozen features: training frames x 9 crops" in capsys.readouterr().err
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert [g["name"] for g in ckpt["optimizer"]["param_groups"]] == ["heads"]


def test_resume_with_another_architecture_or_no_checkpoint(
    ad_run, tmp_path, monkeypatch, capsys, histories
):
    before = snapshot(ad_run)
    message = cli_error(
        monkeypatch,
        capsys,
        *ad_args(histories, "--agent.d_model=32", "--offline_steps=4"),
        f"--output_dir={ad_run}",
        "--resume=True",
    )  # the settings are compared first, before the checkpoint is read
    assert "--agent.d_model saved 16, now 32; drop them" in message
    assert snapshot(ad_run) == before
    # A config.json that claims another architecture than its checkpoint holds.
    claims = tmp_path / "claims"
    shutil.copytree(ad_run, claims)
    config = json.loads((claims / "config.json").read_text())
    config["agent"]["d_model"] = 32
    (claims / "config.json").write_text(json.dumps(config))
    before = snapshot(claims)
    message = cli_error(monkeypatch, capsys, f"--output_dir={claims}", "--resume=True")
    assert "does not fit this model" in message and "of another shape" in message
    assert "made with another architecture or config" in message
    assert snapshot(claims) == before

    empty = tmp_path / "not_a_run"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    for folder in (empty, tmp_path / "nothing_here"):
        message = cli_error(
            monkeypatch, capsys, *ad_args(histories), f"--output_dir={folder}", "--resume=True"
        )
        assert f"--resume=True: {folder} " in message
        assert "there is no run to continue" in message and "drop --resume" in message
    assert sorted(p.name for p in empty.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "nothing_here").exists()


def test_bad_histories_files_are_one_line_and_touch_nothing(
    ad_run, histories, tmp_path, monkeypatch, capsys
):
    raw = histories.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    damaged = tmp_path / "damaged.npz"  # a zip whose compressed members are garbage
    damaged.write_bytes(raw[:100] + b"\xff" * (len(raw) - 400) + raw[-300:])
    wrong_keys = tmp_path / "wrong_keys.npz"
    np.savez(wrong_keys, obs=np.zeros((2, 12, 2), np.uint8), states=np.zeros(3))
    bad_meta = tmp_path / "bad_meta.npz"
    with np.load(histories, allow_pickle=False) as arrays:
        np.savez(bad_meta, **{**dict(arrays), "meta_json": np.array("{not json")})
    expected = {
        bad_meta: "its meta_json is not JSON (",
        truncated: "is not a .npz (zip) file",
        damaged: "is not a readable .npz file (",
        wrong_keys: "is not a Dark Room histories file: missing actions, rewards, tasks",
        tmp_path / "missing.npz": "does not exist; make one with python -m envs.darkroom.histories",
    }
    for path, text in expected.items():
        run = run_whose_dataset_went_bad(ad_run, path, tmp_path / f"run_{path.stem}")
        before = snapshot(run)
        message = cli_error(monkeypatch, capsys, "--offline_steps=4", f"--output_dir={run}",
                            "--resume=True")
        assert text in message and "python -m envs.darkroom.histories" in message, message
        assert snapshot(run) == before


# ---------------------------------------------------------------- 5. no pickled code runs


class CreatesFile:
    """Unpickling this calls open(path, "w"): the file appears iff pickled code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_the_payload_would_run_if_unpickled(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(CreatesFile(marker))).close()
    assert marker.exists()


def test_resume_checkpoint_with_pickled_code_is_refused(
    ad_run, histories, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").mkdir()
    for name in ("run.json", "config.json"):
        shutil.copy(ad_run / name, run / name)
    marker = tmp_path / "ran"
    ckpt = load_checkpoint(ad_run / "checkpoints" / "last.pt")
    torch.save({**ckpt, "extra": {"sampler": CreatesFile(marker)}}, run / "checkpoints" / "last.pt")
    message = cli_error(
        monkeypatch,
        capsys,
        *ad_args(histories, "--offline_steps=4"),
        f"--output_dir={run}",
        "--resume=True",
    )
    assert "refusing to load" in message and "not a tensors-only checkpoint" in message
    assert not marker.exists()


def test_encoder_weights_file_with_pickled_code_is_refused(
    lift_file, tmp_path, monkeypatch, capsys
):
    marker = tmp_path / "ran"
    evil = tmp_path / "body.pt"
    torch.save({"conv1.weight": torch.zeros(1), "x": CreatesFile(marker)}, evil)
    message = cli_error(
        monkeypatch,
        capsys,
        *fbc_args(lift_file, FBC_FROZEN, f"--agent.encoder_weights={evil}"),
        f"--output_dir={tmp_path / 'run'}",
    )
    assert f"cannot load weights from {evil} with weights_only=True" in message
    assert not marker.exists()


def test_imagenet_cache_file_with_pickled_code_is_refused(tmp_path):
    from encoders.weights import (
        ImageNetWeightsUnavailable,
        imagenet_cache_file,
        load_imagenet_state,
    )

    marker = tmp_path / "ran"
    cached = imagenet_cache_file("resnet18")  # in the test's own TORCH_HOME (conftest)
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"conv1.weight": torch.zeros(1), "x": CreatesFile(marker)}, cached)
    with pytest.raises(ImageNetWeightsUnavailable) as info:
        load_imagenet_state("resnet18")
    assert "cannot be read as tensors only" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_stage1_encoder_checkpoint_with_pickled_code_is_refused(
    histories, tmp_path, monkeypatch, capsys
):
    marker = tmp_path / "ran"
    evil = tmp_path / "stage1.pt"
    torch.save({"model": {"encoder.x": CreatesFile(marker)}, "step": 1}, evil)
    message = cli_error(
        monkeypatch,
        capsys,
        *ad_args(histories, "--agent=compressed_ad", f"--agent.encoder_checkpoint={evil}",
                 "--offline_steps=6"),
        f"--output_dir={tmp_path / 'run'}",
    )
    assert f"refusing to load {evil}: not a tensors-only checkpoint" in message
    assert not marker.exists()


def test_histories_with_an_object_array_are_refused(histories, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.npz"
    with np.load(histories) as good:
        arrays = {k: good[k] for k in good.files}
    np.savez(evil, **{**arrays, "obs": np.array([CreatesFile(marker)], dtype=object)})
    message = cli_error(
        monkeypatch, capsys, *AD, "--offline_steps=6", f"--dataset={evil}",
        f"--output_dir={tmp_path / 'run'}"
    )
    assert "is not a readable .npz file (ValueError: Object arrays cannot be loaded" in message
    assert not marker.exists()
