"""Faults outside the training loop, as users meet them: one `error:` line, exit status 2,
nothing the user had lost.

A full disk is a real one where the tests run as root (a small tmpfs mounted for the test);
elsewhere those tests are skipped. A read-only destination is a read-only tmpfs, and where
no filesystem can be mounted it is simulated (root's writes cannot be refused by chmod).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import train_ppo
import training.archive
import training.run
from encoders.pretrain import main as pretrain_main
from encoders.torch_files import clip
from tests.test_ppo_reliability import TINY, assert_one_line_error, run_cli
from training.archive import main as archive_main
from training.checkpoint import load_checkpoint, save_checkpoint
from training.cli import run_main
from training.verify_frozen import main as verify_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setattr(train_ppo, "plot_learning_curve", lambda *args: None)
    monkeypatch.delenv("RLENC_TRACEBACK", raising=False)


@contextlib.contextmanager
def small_fs(where: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (a real full disk); skips the test where the
    tests cannot mount (not root, no mount namespace)."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs root to mount a tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(filler: Path, leave: int) -> None:
    """Fill the filesystem holding `filler` but for `leave` bytes."""
    left = shutil.disk_usage(filler.parent).free - leave
    with filler.open("wb") as f:
        while left > 0:
            left -= f.write(b"\0" * min(left, 16 << 20))


def cli(module: str, *args: str | Path) -> tuple[int, list[str]]:
    """`python -m module args`, a real process: exit status and the lines on stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env.pop("RLENC_TRACEBACK", None)
    done = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr.strip().splitlines()


def tool(main: Callable[[list[str]], object], capsys, *args: str | Path
         ) -> tuple[int, list[str]]:
    """A tool's main as its command line runs it (run_main), in this process (fast)."""
    capsys.readouterr()
    code = 0

    def entry() -> None:
        nonlocal code
        result = main([str(a) for a in args])
        code = result if isinstance(result, int) else 0  # verify_frozen's exit status

    try:
        run_main(entry)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_line(code: int, lines: list[str], needle: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert needle in lines[0], lines


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


# ----- a real full disk at a checkpoint ----------------------------------------------------------


def test_a_real_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_previous_one(
        tmp_path, capsys, monkeypatch):
    """torch's writer turns ENOSPC into a RuntimeError; the run still says what happened."""
    real = training.run.save_checkpoint
    calls = {"n": 0}

    def fill_the_disk_then_save(path, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the first checkpoint fitted; now the disk is full
            fill(path.parent.parent / "filler", leave=64 << 10)
        return real(path, **kwargs)

    monkeypatch.setattr(training.run, "save_checkpoint", fill_the_disk_then_save)
    with small_fs(tmp_path / "disk", "256m") as disk:
        out = disk / "run"
        code, message = run_cli([*TINY, "--save_interval=2", f"--output_dir={out}"], capsys)
        assert_one_line_error(code, message, "no space left on device")
        assert "the previous one (step 16) is intact" in message
        assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 16
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.pt"]


def test_torchs_runtime_error_on_a_full_disk_comes_out_as_enospc(tmp_path):
    with small_fs(tmp_path / "disk", "256k") as disk:
        save_checkpoint(disk / "last.pt", model=nn.Linear(8, 8), optimizer=None, step=1,
                        config={})
        with pytest.raises(OSError) as info:
            save_checkpoint(disk / "last.pt", model=nn.Linear(200, 400), optimizer=None,
                            step=2, config={})
        assert info.value.errno == errno.ENOSPC
        assert [p.name for p in disk.iterdir()] == ["last.pt"]
        assert load_checkpoint(disk / "last.pt")["step"] == 1


# ----- training.archive --------------------------------------------------------------------------


def make_study(root: Path, runs: dict[str, bool], metrics_bytes: int = 200) -> Path:
    """A sweep's directory as training.report reads it: {run name: finished}."""
    manifest = {"entry": "train_bc.py", "grid": {}, "seeds": list(range(len(runs))),
                "fixed_flags": ["--device=cpu"], "runs": {}}
    for seed, (name, finished) in enumerate(runs.items()):
        run = root / name
        run.mkdir(parents=True)
        (run / "run.json").write_text('{"entry": "train_bc.py"}\n')
        (run / "config.json").write_text(json.dumps({"seed": seed}) + "\n")
        step = json.dumps({"step": 1, "eval/return": float(seed)}) + "\n"
        (run / "metrics.jsonl").write_text(step * max(1, metrics_bytes // len(step)))
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.pt").write_bytes(b"weights")
        if finished:
            (run / "final_metrics.json").write_text(json.dumps({"eval/return": seed}) + "\n")
            (run / "outcome.json").write_text(json.dumps({"status": "finished", "step": 1})
                                              + "\n")
        manifest["runs"][name] = {"dir": name, "config": {}, "seed": seed,
                                  "status": "finished" if finished else "running"}
    (root / "sweep.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return root


def test_the_archive_copies_outcome_json_and_no_done_marker(tmp_path, capsys):
    root = make_study(tmp_path / "study", {"seed=0": True, "seed=1": False})
    Path(f"{root / 'seed=0'}.done").write_text("{}")
    record = tmp_path / "record"
    code, lines = tool(archive_main, capsys, root, record)
    assert code == 0, lines
    kept = {p.relative_to(record).as_posix() for p in record.rglob("*") if p.is_file()}
    assert kept == {"sweep.json"} | {f"seed=0/{f}" for f in training.archive.RUN_RECORD}
    assert "outcome.json" in training.archive.RUN_RECORD


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_archive_to_a_file_is_one_line(tmp_path, where):
    root = make_study(tmp_path / "study", {"seed=0": True})
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / ("record" if where == "under a file" else "")
    code, lines = cli("training.archive", root, out)
    assert_one_line(code, lines, "is a file, not a directory")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_non_json_sweep_json_in_the_destination_is_one_line_naming_it(tmp_path, capsys):
    root = make_study(tmp_path / "study", {"seed=0": True})
    record = tmp_path / "record"
    record.mkdir()
    (record / "sweep.json").write_text("not json")
    code, lines = tool(archive_main, capsys, root, record)
    assert_one_line(code, lines, f"cannot read {record / 'sweep.json'}")
    assert files_of(record) == {"sweep.json": b"not json"}


def test_a_directory_of_other_files_is_refused(tmp_path, capsys):
    root = make_study(tmp_path / "study", {"seed=0": True})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    code, lines = tool(archive_main, capsys, root, tmp_path / "mine")
    assert_one_line(code, lines, "not a study's record")
    assert files_of(tmp_path / "mine") == {"thesis.tex": b"years of work"}


def test_a_read_only_destination_is_one_line_and_leaves_nothing(tmp_path, capsys):
    root = make_study(tmp_path / "study", {"seed=0": True})
    with small_fs(tmp_path / "ro", "1m", read_only=True) as disk:
        code, lines = tool(archive_main, capsys, root, disk / "record")
        assert_one_line(code, lines, "Read-only file system")
        assert list(disk.iterdir()) == []


def test_an_unwritable_destination_is_one_line_and_keeps_the_earlier_record(
        tmp_path, capsys, monkeypatch):
    # Simulated, so that it runs without root: chmod cannot stop root's writes.
    root = make_study(tmp_path / "study", {"seed=0": True, "seed=1": False})
    record = tmp_path / "record"
    training.archive.main([str(root), str(record)])
    before = files_of(record)
    (root / "seed=1" / "final_metrics.json").write_text('{"eval/return": 1}\n')
    (root / "seed=1" / "outcome.json").write_text('{"status": "finished", "step": 1}\n')
    real = shutil.copyfile

    def refuse_the_second(src, dst, *args, **kwargs):
        if "seed=1" in str(dst):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(training.archive.shutil, "copyfile", refuse_the_second)
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: training.archive.main([str(root), str(record)]))
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err and "Permission denied" in err, err
    assert files_of(record) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record", "study"]


def test_a_full_disk_leaves_no_partial_record_and_the_next_archive_completes_it(tmp_path, capsys):
    root = make_study(tmp_path / "study", {"seed=0": True, "seed=1": False},
                      metrics_bytes=90_000)
    with small_fs(tmp_path / "disk", "256k") as disk:
        record = disk / "record"
        code, lines = tool(archive_main, capsys, root, record)  # one run's record fits
        assert code == 0, lines
        before = files_of(record)
        (root / "seed=1" / "final_metrics.json").write_text('{"eval/return": 1}\n')
        (root / "seed=1" / "outcome.json").write_text('{"status": "finished", "step": 1}\n')
        code, lines = tool(archive_main, capsys, root, record)  # two do not
        assert_one_line(code, lines, "No space left on device")
        assert files_of(record) == before
        assert [p.name for p in disk.iterdir()] == ["record"]
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        code, lines = tool(archive_main, capsys, root, record)  # space freed: it completes
        assert code == 0, lines
        assert (record / "seed=1" / "metrics.jsonl").read_bytes() == \
            (root / "seed=1" / "metrics.jsonl").read_bytes()
        assert [p.name for p in disk.iterdir()] == ["record"]


# ----- encoders.pretrain: the output path is checked before the training -------------------------


PRETRAIN = ["durotaxis", "--image_size=32", "--frames=48", "--num_envs=16", "--steps=2",
            "--batch_size=4", "--device=cpu", "--progress=False", "--threads=1"]


def test_pretrain_refuses_an_out_under_a_file_before_training(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, lines = cli("encoders.pretrain", *PRETRAIN, f"--out={tmp_path}/notes.txt/body.pt")
    assert_one_line(code, lines, "is a file, not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_pretrain_refuses_an_out_that_is_a_directory_even_with_overwrite(tmp_path, capsys):
    (tmp_path / "bodies").mkdir()
    code, lines = tool(pretrain_main, capsys, *PRETRAIN, f"--out={tmp_path}/bodies",
                      "--overwrite=True")
    assert_one_line(code, lines, "is a directory")
    assert list((tmp_path / "bodies").iterdir()) == []


def test_a_failed_body_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from encoders import pretrain

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pretrain.torch, "save", full_disk)
    with pytest.raises(ValueError, match="No space left on device"):
        pretrain.save_body(tmp_path / "body.pt", {"w": torch.zeros(2)}, {})
    assert list(tmp_path.iterdir()) == []


# ----- training.verify_frozen: bad input is exit 2, moved tensors exit 1 -------------------------


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    return save_checkpoint(tmp_path / "last.pt", model=model, optimizer=None, step=1,
                           config={})


@pytest.mark.parametrize("bad", ["text", "truncated", "missing"])
def test_verify_frozen_with_a_bad_source_is_one_line_and_exit_2(tmp_path, capsys, checkpoint, bad):
    source = tmp_path / "source.pt"
    if bad == "text":
        source.write_text("these are my notes\n")
    elif bad == "truncated":
        source.write_bytes(checkpoint.read_bytes()[:100])
    code, lines = tool(verify_main, capsys, checkpoint, "--source", source)
    assert_one_line(code, lines, str(source))


def test_verify_frozen_exits_1_only_when_frozen_tensors_moved(tmp_path, capsys, checkpoint):
    code, _ = tool(verify_main, capsys, checkpoint, "--source", checkpoint)
    assert code == 0
    moved = load_checkpoint(checkpoint)
    moved["model"]["0.weight"] += 1
    torch.save({**moved, "config": "{}"}, tmp_path / "moved.pt")
    code, _ = tool(verify_main, capsys, tmp_path / "moved.pt", "--source", checkpoint)
    assert code == 1


# ----- a truncated checkpoint's message is a whole sentence --------------------------------------


def test_a_truncated_checkpoint_is_refused_in_a_whole_sentence(tmp_path, checkpoint):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(ValueError) as info:
        load_checkpoint(truncated)
    message = str(info.value)
    assert "damaged or truncated" in message and "\n" not in message
    assert message.endswith(".)"), message  # not "... your checkpoint file is)"


def test_clip_keeps_whole_sentences():
    text = "First sentence here. " + "Second one that runs on and on. " * 10
    assert clip(text, 40) == "First sentence here."
    assert clip("x" * 10, 40) == "x" * 10
    assert clip("word " * 20, 30).endswith(" ...") and len(clip("word " * 20, 30)) <= 30
