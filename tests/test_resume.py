"""A stopped run continues with the command it printed, typed exactly, from its own settings.

The first run is stopped by a real SIGTERM (sent by the run itself at a chosen step, so the
test does not race the process); the printed hint is then run as a new process with no
other flag, as a user would paste it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import train_ppo
from tests.test_ppo_reliability import TINY
from training.checkpoint import load_checkpoint
from training.run_outcome import EXIT_STOPPED, read_outcome

REPO = Path(__file__).resolve().parents[1]

# Runs an entry with the arguments after the script, sending itself SIGTERM right after
# the checkpoint of step STOP_AFTER (the loop then stops at its next step, as under a
# scheduler's pre-emption).
STOPPING_RUN = """
import os, signal, sys
sys.path.insert(0, {repo!r})
import {module} as entry
import training.run as harness
from training.cli import run_main
real_save = harness.Run.save
def save_then_signal(self, step, *args, **kwargs):
    real_save(self, step, *args, **kwargs)
    if step == {stop_after}:
        os.kill(os.getpid(), signal.SIGTERM)
harness.Run.save = save_then_signal
run_main(lambda: entry.main(sys.argv[1:]))
"""


def run(args: list[str], env: dict[str, str], script: str | None = None
        ) -> subprocess.CompletedProcess:
    command = [sys.executable, *(["-c", script] if script else []), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def printed_hint(output: str) -> list[str]:
    """The flags after "continue with", as printed."""
    match = re.search(r"continue with (--output_dir=.+ --resume=True)\s*$", output)
    assert match, output[-2000:]
    return shlex.split(match.group(1))


@pytest.fixture
def offline_env(tmp_path) -> dict[str, str]:
    """No ImageNet file in the hub cache, one thread, no wandb."""
    return {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home"), "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "disabled"}


# test_ppo_reliability's tiny run, with its own weights and budget.
PPO_RUN = [*(f for f in TINY if not f.startswith(("--backbone.weights", "--ppo.total_timesteps"))),
           "--ppo.total_timesteps=48", "--save_interval=2"]


def test_the_ppo_resume_hint_works_exactly_as_printed(tmp_path, offline_env):
    out = tmp_path / "run"
    # weights=auto with no ImageNet file: the first run falls back to random init (and says
    # so); the resumed one takes every weight from its checkpoint and tries no download.
    stopping = STOPPING_RUN.format(repo=str(REPO), module="train_ppo", stop_after=16)
    first = run([*PPO_RUN, "--backbone.weights=auto", f"--output_dir={out}"], offline_env,
                stopping)
    assert first.returncode == EXIT_STOPPED, first.stderr[-2000:]
    assert "fell back to RANDOM" in first.stdout + first.stderr
    assert read_outcome(out).status == "stopped" and read_outcome(out).step == 24

    hint = printed_hint(first.stderr)
    assert hint == [f"--output_dir={out}", "--resume=True"]
    second = run(["train_ppo.py", *hint], offline_env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "fell back to RANDOM" not in second.stdout + second.stderr
    assert "resumed from" in second.stdout + second.stderr
    assert read_outcome(out).status == "finished"
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 48
    config = json.loads((out / "config.json").read_text())
    assert config["ppo"]["num_envs"] == 2 and config["weights_source"].startswith("random")


def test_the_bc_resume_hint_works_exactly_as_printed(tmp_path, offline_env, histories):
    out = tmp_path / "run"
    stopping = STOPPING_RUN.format(repo=str(REPO), module="train_bc", stop_after=4)
    flags = ["--env_name=darkroom", f"--dataset={histories}", "--offline_steps=8",
             "--batch_size=4", "--eval_episodes=2", "--eval_interval=0", "--save_interval=4",
             "--log_interval=1", "--device=cpu", "--wandb.mode=disabled", "--threads=1",
             "--agent.context_episodes=1", "--agent.d_model=32", "--agent.n_layer=1",
             "--agent.n_head=2", f"--output_dir={out}"]
    first = run(flags, offline_env, stopping)
    assert first.returncode == EXIT_STOPPED, first.stderr[-2000:]
    assert read_outcome(out).status == "stopped"

    hint = printed_hint(first.stderr)
    second = run(["train_bc.py", *hint], offline_env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert read_outcome(out).status == "finished"
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 8
    assert json.loads((out / "config.json").read_text())["agent"]["d_model"] == 32


def test_a_changed_setting_is_refused_before_the_checkpoint_is_read(tmp_path, capsys):
    """The settings are compared first: a damaged checkpoint is not what the user hears
    about when the command changes the run's settings."""
    out = tmp_path / "run"
    tiny = [flag for flag in PPO_RUN if "total_timesteps" not in flag]
    train_ppo.main([*tiny, "--backbone.weights=random", "--ppo.total_timesteps=8",
                    "--eval_episodes=0", f"--output_dir={out}"])
    (out / "checkpoints" / "last.pt").write_bytes(b"damaged")
    with pytest.raises(ValueError, match=r"--ppo.gamma saved 0.99, now 0.5; drop them"):
        train_ppo.main([f"--output_dir={out}", "--resume=True", "--ppo.gamma=0.5"])


def test_a_resumed_model_loads_no_pretrained_weights(tmp_path):
    """A weights file that was moved away since does not stop the run: the checkpoint has
    every weight."""
    out = tmp_path / "run"
    tiny = [flag for flag in PPO_RUN if "total_timesteps" not in flag]
    common = [*tiny, "--eval_episodes=0", f"--output_dir={out}"]
    with pytest.raises(FileNotFoundError, match="weights file"):  # the control: read at start
        train_ppo.main([*common, "--ppo.total_timesteps=8", f"--backbone.weights={tmp_path}/x"])
    train_ppo.main([*common, "--ppo.total_timesteps=8", "--backbone.weights=random"])
    config = json.loads((out / "config.json").read_text())
    config["backbone"]["weights"] = str(tmp_path / "moved_away.pt")
    (out / "config.json").write_text(json.dumps(config))
    train_ppo.main([f"--output_dir={out}", "--resume=True", "--ppo.total_timesteps=16"])
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 16


@pytest.mark.parametrize("args, needle", [
    (["--resume=True"], "--resume=True needs --output_dir=RUN_DIR"),
    (["--resume=True", "--output_dir=/nonexistent/run"], "does not exist, so there is no run"),
])
def test_a_resume_of_nothing_is_one_line(args, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        train_ppo.parse_args(args)
