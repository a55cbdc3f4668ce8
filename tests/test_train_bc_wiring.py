"""train_bc.py's wiring, on a toy task and agent: parsing, resume, run directories, errors."""

import json
import subprocess
import sys

import pytest
import torch

import agents
import train_bc
from envs import bc_tasks
from tests import toy_bc
from tests.toy_bc import ToyAgent, ToyConfig
from training.checkpoint import load_checkpoint
from training.cli import run_main
from training.guards import StopRequested
from training.plan import PhaseTimes
from training.ranges import ConfigError
from training.run_outcome import EXIT_STOPPED, read_outcome


@pytest.fixture(autouse=True)
def toy_registered(monkeypatch):
    monkeypatch.setitem(agents.AGENTS, "toy", (ToyConfig, ToyAgent))
    monkeypatch.setitem(
        bc_tasks.BC_TASKS,
        "toy-task",
        bc_tasks.BCTask("toy-task", "tests.toy_bc:make_data", "tests.toy_bc:make_evaluator", "toy",
                        defaults={"batch_size": 16}),
    )


def run(tmp_path, *extra):
    args = [
        "--env_name=toy-task",
        "--device",
        "cpu",
        "--wandb.mode",
        "disabled",
        "--log_interval",
        "1",
        "--eval_interval",
        "0",
        *extra,
    ]
    return train_bc.train(train_bc.parse_args(args))


def test_parses_agent_flags_and_task_defaults():
    cfg = train_bc.parse_args(["--env_name", "toy-task", "--agent.freeze_encoder=True"])
    assert cfg.agent.freeze_encoder is True and cfg.batch_size == 16 and cfg.agent_name == "toy"
    cfg = train_bc.parse_args(["--env_name=toy-task", "--agent=agents/toy.py", "--batch_size", "8"])
    assert cfg.agent_name == "toy" and cfg.batch_size == 8


def test_unknown_env_and_agent_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown env_name 'nope'; known: .*toy-task"):
        train_bc.parse_args(["--env_name=nope"])
    with pytest.raises(ValueError, match="unknown agent 'nope'; known: .*toy"):
        train_bc.parse_args(["--env_name=toy-task", "--agent=nope"])


def test_trains_and_writes_run(tmp_path):
    out = tmp_path / "run"
    metrics = run(tmp_path, "--offline_steps", "60", "--output_dir", str(out))
    assert metrics["eval/mse"] < 1.0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(x)["train/loss"] for x in lines if "train/loss" in x]
    assert len(losses) == 60 and losses[-1] < losses[0]
    assert json.loads((out / "final_metrics.json").read_text()) == metrics
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 60


def test_resume_is_exact(tmp_path):
    run(tmp_path, "--offline_steps", "20", "--output_dir", str(tmp_path / "once"))
    run(tmp_path, "--offline_steps", "10", "--output_dir", str(tmp_path / "twice"))
    run(tmp_path, "--offline_steps", "20", "--output_dir", str(tmp_path / "twice"), "--resume=True")
    once = load_checkpoint(tmp_path / "once" / "checkpoints" / "last.pt")
    twice = load_checkpoint(tmp_path / "twice" / "checkpoints" / "last.pt")
    for name, tensor in once["model"].items():
        assert torch.equal(tensor, twice["model"][name]), name

    def loss(d):
        return [
            json.loads(x)["train/loss"]
            for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
            if "train/loss" in x
        ]

    assert loss("once") == loss("twice")


def test_existing_run_dir_is_not_clobbered(tmp_path):
    out = tmp_path / "run"
    run(tmp_path, "--offline_steps", "2", "--output_dir", str(out))
    before = (out / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(FileExistsError, match="--resume=True to continue it, --overwrite=True"):
        run(tmp_path, "--offline_steps", "2", "--output_dir", str(out))
    assert (out / "checkpoints" / "last.pt").read_bytes() == before
    run(tmp_path, "--offline_steps", "3", "--output_dir", str(out), "--overwrite=True")
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 3


def test_cli_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train_bc.py", "--env_name=no-such-task"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown env_name 'no-such-task'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_nonfinite_gradient_stops_with_step_and_group_keeping_weights(tmp_path):
    out = tmp_path / "run"
    args = ("--output_dir", str(out), "--save_interval", "5", "--agent.nan_at_update", "8")
    with pytest.raises(
        FloatingPointError,
        match=r"step 8: non-finite gradient in parameter group\(s\) backbone, heads",
    ):
        run(tmp_path, "--offline_steps", "20", *args)
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == 5 and all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_nonfinite_gradient_can_be_skipped(tmp_path):
    out = tmp_path / "run"
    run(
        tmp_path,
        "--offline_steps",
        "20",
        "--output_dir",
        str(out),
        "--agent.nan_at_update",
        "8",
        "--skip_nonfinite=True",
    )
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "train/loss" in r]
    assert [r["train/skipped_nonfinite_steps"] for r in train_records[6:9]] == [0, 1, 1]
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == 20 and all(torch.isfinite(t).all() for t in ckpt["model"].values())


SIGNAL_SCRIPT = """
import sys, agents, train_bc
from envs import bc_tasks
from training.cli import run_main
from tests.toy_bc import ToyAgent, ToyConfig
agents.AGENTS["toy"] = (ToyConfig, ToyAgent)
bc_tasks.BC_TASKS["toy-task"] = bc_tasks.BCTask(
    "toy-task", "tests.toy_bc:make_data", "tests.toy_bc:make_evaluator", "toy")
sys.argv = ["train_bc.py", "--env_name=toy-task", "--device=cpu", "--wandb.mode=disabled",
            "--log_interval=1", "--eval_interval=0", "--batch_size=8", *sys.argv[1:]]
run_main(train_bc.main)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_writes_final_checkpoint_and_exits_cleanly(tmp_path, sig):
    import signal
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_SCRIPT, "--offline_steps=10000000", f"--output_dir={out}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (
        (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size > 2000
    ):
        time.sleep(0.1)
    proc.send_signal(getattr(signal, sig))
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_STOPPED, output
    assert f"{sig} at step" in output and "--resume=True" in output
    step = load_checkpoint(out / "checkpoints" / "last.pt")["step"]
    assert 0 < step < 10_000_000
    assert not (out / "final_metrics.json").exists()


@pytest.mark.parametrize(
    "flag", ["--batch_size=0", "--eval_episodes=-1", "--log_interval=0", "--offline_steps=-5"]
)
def test_impossible_counts_are_one_line_errors(tmp_path, flag):
    with pytest.raises(ConfigError, match=f"^{flag} is out of range; allowed: >= [01]$"):
        run(tmp_path, flag, "--output_dir", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_resume_after_a_crash_sets_aside_the_steps_it_recomputes(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError):  # dies at step 8; the checkpoint is step 5
        run(tmp_path, "--offline_steps=10", f"--output_dir={out}", "--save_interval=5",
            "--agent.nan_at_update=8")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "train/lo')  # a line cut short by the crash
    run(tmp_path, "--offline_steps=10", f"--output_dir={out}", "--save_interval=5",
        "--agent.nan_at_update=8", "--resume=True")  # same run: the toy counts anew, no NaN
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "train/loss" in r]
    assert steps == list(range(1, 11))  # each step once
    rewound = (out / "metrics.rewound.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in rewound[:2]] == [6, 7] and len(rewound) == 3


def test_a_crashing_evaluation_costs_no_trained_weights(tmp_path, monkeypatch):
    """As a Lift evaluation worker dying on a robomimic v1.5 file: saved first, one line."""
    import tests.toy_bc
    from training.run import EvaluationFailed

    def crash(self, agent, num_episodes):
        raise RuntimeError("EGL: eglMakeCurrent failed\nKeyError: 'interpolation'")

    monkeypatch.setattr(tests.toy_bc.ToyEvaluator, "run", crash)
    out = tmp_path / "run"
    with pytest.raises(EvaluationFailed) as err:
        run(tmp_path, "--offline_steps=6", f"--output_dir={out}", "--save_interval=100")
    message = str(err.value)
    assert "\n" not in message and "evaluation at step 6 failed (RuntimeError: EGL" in message
    assert f"saved in {out / 'checkpoints' / 'last.pt'} (step 6)" in message
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 6


# ----- a stop outside the training loop ------------------------------------------------------


def stop_in(monkeypatch, target, name: str, kept: str | None = None) -> None:
    """`target.name` raises StopRequested, as a SIGTERM does while that phase runs."""
    def stopped(*args, **kwargs):
        raise StopRequested("SIGTERM", kept)
    monkeypatch.setattr(target, name, stopped)


def run_cli(tmp_path, capsys, *extra) -> tuple[int, str]:
    """train_bc as its command line runs it: exit status and the last line of stderr."""
    capsys.readouterr()
    args = ["--env_name=toy-task", "--device=cpu", "--wandb.mode=disabled", "--eval_interval=0",
            *extra]
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: train_bc.main(args))
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return exit_.value.code, err.splitlines()[-1]


def test_a_stop_while_the_data_is_made_says_what_was_kept(tmp_path, monkeypatch, capsys):
    """Before the run directory exists (the default dataset being generated): one line from
    the phase, exit 75, nothing written."""
    out = tmp_path / "run"
    stop_in(monkeypatch, toy_bc, "make_data", "8 of 100 demos kept in X.partial; the next run "
                                               "continues from them")
    code, line = run_cli(tmp_path, capsys, f"--output_dir={out}")
    assert code == EXIT_STOPPED
    assert line == ("SIGTERM before the first checkpoint: 8 of 100 demos kept in X.partial; the "
                    "next run continues from them; rerun the same command to go on")
    assert not out.exists()


def test_a_stop_before_the_first_checkpoint_removes_the_settings_only_run(tmp_path, monkeypatch,
                                                                         capsys):
    """After the run directory was written (the feature cache being built): it held only the
    run's settings, so it goes, and the same command starts again."""
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        stop_in(patch, ToyAgent, "prepare", "the frozen-feature cache is built again")
        code, line = run_cli(tmp_path, capsys, f"--output_dir={out}")
    assert code == EXIT_STOPPED
    assert line.startswith("SIGTERM before the first checkpoint: the frozen-feature cache is "
                           "built again; rerun the same command to go on (")
    assert not out.exists()
    run(tmp_path, "--offline_steps=2", f"--output_dir={out}")  # the same command: a new run
    assert read_outcome(out).status == "finished"


def test_a_stop_in_the_final_evaluation_keeps_the_weights_and_resumes(tmp_path, monkeypatch,
                                                                      capsys):
    """Outside the loop with a checkpoint (a resumed run's evaluation): outcome stopped at the
    saved step, and the printed command finishes it."""
    out = tmp_path / "run"
    run(tmp_path, "--offline_steps=2", f"--output_dir={out}")
    with monkeypatch.context() as patch:
        stop_in(patch, toy_bc.ToyEvaluator, "run")
        code, line = run_cli(tmp_path, capsys, f"--output_dir={out}", "--resume=True",
                             "--eval_episodes=1")
    assert code == EXIT_STOPPED
    assert line == (f"SIGTERM outside the training loop; the weights of step 2 are in "
                    f"{out / 'checkpoints' / 'last.pt'}; continue with --output_dir={out} "
                    f"--resume=True")
    assert (read_outcome(out).status, read_outcome(out).step) == ("stopped", 2)
    train_bc.main([f"--output_dir={out}", "--resume=True"])
    assert read_outcome(out).status == "finished"


def test_a_stop_before_a_resumed_run_reads_its_checkpoint_keeps_it(tmp_path, monkeypatch,
                                                                   capsys):
    out = tmp_path / "run"
    run(tmp_path, "--offline_steps=2", f"--output_dir={out}")
    before = (out / "checkpoints" / "last.pt").read_bytes()
    with monkeypatch.context() as patch:
        stop_in(patch, toy_bc, "make_data")
        code, line = run_cli(tmp_path, capsys, f"--output_dir={out}", "--resume=True",
                             "--offline_steps=4")
    assert code == EXIT_STOPPED
    assert line == (f"SIGTERM before the run went on; {out / 'checkpoints' / 'last.pt'} is as "
                    f"it was; continue with --output_dir={out} --resume=True")
    assert (out / "checkpoints" / "last.pt").read_bytes() == before


def test_interim_evaluations_run_fewer_episodes_and_the_last_runs_all(tmp_path, monkeypatch):
    asked = []
    run_episodes = toy_bc.ToyEvaluator.run

    def counting(self, agent, num_episodes):
        asked.append(num_episodes)
        return run_episodes(self, agent, num_episodes)

    monkeypatch.setattr(toy_bc.ToyEvaluator, "run", counting)
    run(tmp_path, "--offline_steps=6", "--eval_interval=2", "--eval_episodes=7",
        "--interim_eval_episodes=3", f"--output_dir={tmp_path / 'run'}")
    assert asked == [3, 3, 7]  # steps 2 and 4, then the last at 6
    asked.clear()
    run(tmp_path, "--offline_steps=4", "--eval_interval=2", "--eval_episodes=7",
        f"--output_dir={tmp_path / 'all'}")
    assert asked == [7, 7]  # None: every evaluation runs eval_episodes


def test_task_agent_defaults_apply_to_agents_that_have_the_field(monkeypatch):
    task = bc_tasks.BCTask("toy-lr", "tests.toy_bc:make_data", "tests.toy_bc:make_evaluator",
                           "toy", agent_defaults={"freeze_encoder": True, "no_such": 1})
    monkeypatch.setitem(bc_tasks.BC_TASKS, "toy-lr", task)
    assert train_bc.parse_args(["--env_name=toy-lr"]).agent.freeze_encoder is True
    flagged = train_bc.parse_args(["--env_name=toy-lr", "--agent.freeze_encoder=False"])
    assert flagged.agent.freeze_encoder is False  # a flag beats the task's default


def test_darkroom_quickstart_is_the_context_studys_budget():
    cfg = train_bc.parse_args(["--env_name=darkroom"])
    assert (cfg.offline_steps, cfg.batch_size, cfg.eval_interval, cfg.eval_episodes) == (
        1000, 64, 500, 200)
    assert (cfg.agent.lr, cfg.agent.lr_decay_steps, cfg.agent.context_episodes) == (
        1e-3, 1000, 8)
    hard = train_bc.parse_args(["--env_name=darkroom-hard"])  # keeps the paper's budget
    assert (hard.offline_steps, hard.batch_size, hard.agent.lr) == (20_000, 128, 3e-4)


def test_a_cosine_schedule_that_ends_before_training_is_refused_at_start():
    with pytest.raises(ConfigError, match=r"--agent.lr_decay_steps=1000 ends the cosine "
                       r"schedule before --offline_steps=20000: .* set "
                       r"--agent.lr_decay_steps=20000 \(or 0 for a constant rate\)"):
        train_bc.parse_args(["--env_name=darkroom", "--offline_steps=20000"])
    full = train_bc.parse_args(["--env_name=darkroom", "--offline_steps=20000",
                                "--agent.lr_decay_steps=20000"])
    assert full.agent.lr_decay_steps == 20_000


TIMES = PhaseTimes(machine="a test machine", data=120.0, data_work="toy data", step=0.01,
                   batch_size=16, episode=2.0, eval_workers=2,
                   agent=(("freeze_encoder", False),))


def test_the_plan_scales_the_reference_times_by_the_runs_sizes(monkeypatch):
    task = bc_tasks.BCTask("toy-plan", "tests.toy_bc:make_data", "tests.toy_bc:make_evaluator",
                           "toy", phase_times=TIMES)
    monkeypatch.setitem(bc_tasks.BC_TASKS, "toy-plan", task)
    cfg = train_bc.parse_args(["--env_name=toy-plan", "--offline_steps=6000", "--batch_size=32",
                               "--eval_interval=2000", "--eval_episodes=10",
                               "--interim_eval_episodes=4", "--eval_workers=1"])
    lines = train_bc.run_plan(cfg, task).splitlines()
    assert lines[0] == "plan (estimates from a test machine; your machine may differ):"
    # data 120 s; training 6000 x 0.01 x 32/16 = 120 s; evaluations (2 x 4 + 10) x 2 s x 2/1
    assert lines[1].split() == ["data", "~2", "min", "toy", "data,", "first", "use", "only",
                                "(then", "read", "from", "~/.cache/rlenc)"]
    assert lines[2].split()[:3] == ["training", "~2", "min"]
    assert lines[3].split()[:3] == ["evaluations", "~72", "s"]
    assert "2 x 4 + 10 episodes, 1 worker(s)" in lines[3]
    # 312 s; a run that finds its data on disk: 192 s
    assert lines[4].split()[:3] == ["total", "~5", "min"]
    assert lines[4].endswith("(~3 min once the first-use phases are on disk)")


def test_the_plan_does_not_guess_what_the_reference_did_not_measure(monkeypatch):
    task = bc_tasks.BCTask("toy-plan", "tests.toy_bc:make_data", "tests.toy_bc:make_evaluator",
                           "toy", phase_times=TIMES)
    monkeypatch.setitem(bc_tasks.BC_TASKS, "toy-plan", task)
    cfg = train_bc.parse_args(["--env_name=toy-plan", "--agent.freeze_encoder=True",
                               "--dataset=mine.h5", "--eval_episodes=0"])
    lines = train_bc.run_plan(cfg, task).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["training", "total"]  # no data to make
    assert lines[1].split()[1] == "?" and "measured for freeze_encoder=False only" in lines[1]
    assert lines[2].endswith("(+ 1 phase not estimated)")


def test_a_run_prints_its_plan_first_and_a_resumed_one_does_not(tmp_path, monkeypatch, capsys):
    task = bc_tasks.BCTask("toy-plan", "tests.toy_bc:make_data", "tests.toy_bc:make_evaluator",
                           "toy", defaults={"batch_size": 16}, phase_times=TIMES)
    monkeypatch.setitem(bc_tasks.BC_TASKS, "toy-plan", task)
    out = tmp_path / "run"
    args = ["--env_name=toy-plan", "--device=cpu", "--wandb.mode=disabled", "--offline_steps=2",
            f"--output_dir={out}"]
    train_bc.train(train_bc.parse_args(args))
    assert "plan (estimates from a test machine" in capsys.readouterr().out
    train_bc.train(train_bc.parse_args([*args[:-2], "--offline_steps=4", f"--output_dir={out}",
                                        "--resume=True"]))
    assert "plan (" not in capsys.readouterr().out
