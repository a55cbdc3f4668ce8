"""benchmarks/gpu_session.sh, the prepared GPU call: its bad input, here (the call itself
needs the device machine; its CPU rehearsal is in the script's header)."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_session.sh"


def gpu_session(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "OUT"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env={**base, **env}, timeout=60)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args, says in [(("run",), "OUT is unset"),
                       (("unpack",), "no runs.tgz in ''"),
                       (("unpack", str(tmp_path / "missing")), "no runs.tgz in")]:
        done = gpu_session(*args, RUNS=str(tmp_path / "runs"))
        assert done.returncode == 2 and says in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    usage = gpu_session("bogus")
    assert usage.returncode == 2 and "gpu_session.sh run" in usage.stdout


def test_unpack_never_overwrites_earlier_results(tmp_path):
    back = tmp_path / "files_at"
    (back / "durotaxis_freeze_study_gpu").mkdir(parents=True)
    (back / "durotaxis_freeze_study_gpu" / "sweep.json").write_text("{}")
    with tarfile.open(back / "runs.tgz", "w:gz") as tar:
        tar.add(back / "durotaxis_freeze_study_gpu", arcname="durotaxis_freeze_study_gpu")
    kept = tmp_path / "runs" / "durotaxis_freeze_study_gpu" / "sweep.json"
    kept.parent.mkdir(parents=True)
    kept.write_text("mine")
    done = gpu_session("unpack", str(back), RUNS=str(tmp_path / "runs"))
    assert done.returncode == 2 and "exists; move it away first" in done.stderr
    assert kept.read_text() == "mine"
