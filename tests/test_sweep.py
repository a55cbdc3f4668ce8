"""Sweeps and their reports (training/sweep.py, training/report.py), as a user meets them.

A real sweep of tiny Dark Room AD runs (2 seeds x 2 learning rates) is SIGKILLed with its
runs mid-study and run again: finished runs are skipped untouched, the interrupted one
resumes from its checkpoint, the rest start. The report's numbers are rliable's own, the
Slurm path runs through submitit's LocalExecutor, bad input is one line and exit status 2.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from training import archive as archive_mod
from training import report as report_mod
from training import sweep as sweep_mod
from training.cli import run_main
from training.machine import machine_kind
from training.report_evidence import assess
from training.run_outcome import read_outcome, run_finished, write_outcome

REPO = Path(__file__).resolve().parents[1]
LRS = ("0.001", "0.0003")
METRIC = "eval/return_last_1_episodes"  # Dark Room's headline at --eval_episodes=2


def tiny_flags(histories: Path) -> list[str]:
    """Tiny AD runs; 30 steps with a checkpoint at each, so that a kill lands between two."""
    return ["--env_name=darkroom", "--agent=ad", f"--dataset={histories}", "--offline_steps=30",
            "--save_interval=1", "--batch_size=4", "--eval_episodes=2", "--eval_interval=0",
            "--log_interval=1", "--device=cpu", "--wandb.mode=disabled", "--agent.n_layer=1",
            "--agent.d_model=16", "--agent.n_head=2"]


def sweep_argv(root: Path, histories: Path, jobs: int) -> list[str]:
    return ["--entry", "train_bc.py", "--sweep_dir", str(root), "--seeds", "0", "1",
            "--grid", f"agent.lr={','.join(LRS)}", "--jobs", str(jobs), "--threads", "1",
            "--", *tiny_flags(histories)]


def files_of(*paths: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under the paths: (mtime_ns, bytes)."""
    found = {}
    for path in paths:
        for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            found[str(f)] = (f.stat().st_mtime_ns, f.read_bytes())
    return found


def wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def study(histories, tmp_path_factory):
    """A sweep killed (SIGKILL, the sweep and its runs) once one run has finished and the next
    has a checkpoint, then run again to the end; what the test needs to look at."""
    root = tmp_path_factory.mktemp("sweeps") / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "training.sweep"]
    first, second = root / f"agent.lr={LRS[0]}/seed=0", root / f"agent.lr={LRS[0]}/seed=1"
    with open(tmp_path_factory.mktemp("logs") / "killed.log", "w") as log:
        killed = subprocess.Popen([*cmd, *sweep_argv(root, histories, jobs=1)], cwd=REPO,
                                  env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            wait_for(lambda: (run_finished(first)
                              and (second / "checkpoints" / "last.pt").is_file())
                     or killed.poll() is not None, 240, "a finished run and a checkpoint")
        finally:
            os.killpg(killed.pid, signal.SIGKILL)
            killed.wait()
    before = {"finished": files_of(first, Path(f"{first}.log")),
              "second_final": (second / "final_metrics.json").exists(),
              "manifest": json.loads((root / "sweep.json").read_text())}
    # Three runs left: all at once (on 2 cores a third process costs less than a round).
    rerun = subprocess.run([*cmd, *sweep_argv(root, histories, jobs=3)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    return {"root": root, "first": first, "second": second, "before": before,
            "out": rerun.stdout, "manifest": json.loads((root / "sweep.json").read_text())}


def test_rerun_skips_finished_and_resumes_interrupted(study):
    root, first, second = study["root"], study["first"], study["second"]
    runs = study["manifest"]["runs"]
    assert list(runs) == [f"agent.lr={lr}/seed={s}" for lr in LRS for s in (0, 1)]
    assert all(r["status"] == "finished" and r["exit_code"] == 0 for r in runs.values())
    # The finished run was skipped: not one byte or timestamp of it changed.
    assert files_of(first, Path(f"{first}.log")) == study["before"]["finished"]
    assert runs[f"agent.lr={LRS[0]}/seed=0"]["attempts"] == 1
    assert "4 runs, 1 finished, 3 to run" in study["out"]
    # The killed run (SIGKILL: its record still says running) had a checkpoint: it resumed
    # (not restarted) and finished.
    assert not study["before"]["second_final"]
    assert study["before"]["manifest"]["runs"][f"agent.lr={LRS[0]}/seed=1"]["status"] == "running"
    info = runs[f"agent.lr={LRS[0]}/seed=1"]
    assert info["how"] == "resume" and info["attempts"] == 2
    assert "--resume=True" in info["command"]
    resumes = json.loads((second / "config.json").read_text())["resumes"]
    assert len(resumes) == 1 and 1 <= resumes[0]["step"] <= 30
    lines = (second / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if "train/loss" in line]
    assert steps == list(range(1, 31))  # each step once: the resume rewound what it redid
    assert (second / "final_metrics.json").is_file()
    # The others started afresh; every run in its readable directory, its log beside, its own
    # record saying it finished; every path in the manifest relative (cwd: to the study).
    manifest = study["manifest"]
    assert (root / manifest["cwd"]).resolve() == REPO and manifest["entry"] == "train_bc.py"
    for name, info in runs.items():
        assert (root / name / "run.json").is_file() and run_finished(root / name)
        assert read_outcome(root / name).step == 30
        output_dir = os.path.relpath(root / name, REPO)
        assert info["flags"][-3:] == [f"--seed={info['seed']}", f"--output_dir={output_dir}",
                                      f"--wandb.group={root.name}"]
        assert info["log"] == f"{name}.log" and info["command"][:2] == ["python", "train_bc.py"]
        assert f"--agent.lr={info['config']['agent.lr']}" in info["flags"]
        assert "--threads=1" in info["command"]
    assert study["manifest"]["grid"] == {"agent.lr": list(LRS)}


@pytest.mark.filterwarnings("ignore:random_state is deprecated:FutureWarning")
def test_report_equals_rliable(study, tmp_path, capsys):
    from rliable import library as rly
    from rliable import metrics

    out = tmp_path / "report"
    report_mod.main([str(study["root"]), "--reps", "300", "--seed", "3", "--out", str(out)])
    assert f"metric: {METRIC} (default" in capsys.readouterr().out
    runs = study["manifest"]["runs"]
    scores = {}
    for lr in LRS:
        finals = [json.loads((study["root"] / n / "final_metrics.json").read_text())[METRIC]
                  for n, r in runs.items() if r["config"]["agent.lr"] == lr]
        scores[f"agent.lr={lr}"] = np.array(finals)[:, None]
    points, cis = rly.get_interval_estimates(
        scores, lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)]),
        reps=300, random_state=np.random.RandomState(3))
    a, b = scores
    pairs = {"ab": (scores[a], scores[b]), "ba": (scores[b], scores[a])}
    p_points, p_cis = rly.get_interval_estimates(
        pairs, metrics.probability_of_improvement, reps=300,
        random_state=np.random.RandomState(3))

    saved = json.loads((out / "report.json").read_text())
    assert saved["metric"] == METRIC and saved["curve_metric"] == "train/loss"
    table = (out / "report.md").read_text()
    for config in saved["configs"]:
        label = config["config"]
        assert config["runs"] == config["planned"] == 2
        assert config["scores"] == scores[label][:, 0].tolist()
        for i, name in enumerate(("mean", "iqm")):
            assert config[name] == [points[label][i], *cis[label][:, i]]
        cell = report_mod.with_ci
        assert f"| {label} | 2/2 | {cell(config['mean'])} | {cell(config['iqm'])} |" in table
    poi = {(p["x"], p["y"]): [p["p"], *p["ci"]] for p in saved["probability_of_improvement"]}
    assert poi[(a, b)] == [p_points["ab"], *np.ravel(p_cis["ab"])]
    assert poi[(b, a)] == [p_points["ba"], *np.ravel(p_cis["ba"])]
    assert f"| {a} | — | {report_mod.with_ci(poi[(a, b)])} |" in table
    assert "Fewer than 3 runs" in table  # 2 seeds: said plainly
    kind = machine_kind(json.loads((study["second"] / "config.json").read_text())["machine"])
    assert saved["machines"] == {kind: list(runs)}  # the resumed run went on where it began
    assert f"Machine: every run on {kind}." in table
    for png in ("intervals.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Reproducible: the same seed gives the same report.
    again = tmp_path / "again"
    report_mod.main([str(study["root"]), "--reps", "300", "--seed", "3", "--out", str(again)])
    assert (again / "report.json").read_text() == (out / "report.json").read_text()


def test_an_archive_keeps_what_the_report_reads_and_adds_without_overwriting(
        study, histories, tmp_path, monkeypatch, capsys):
    """The record without checkpoints reports exactly as the study, a sweep counts its runs
    as finished, and archiving again (more runs, another session's directory) only adds."""
    root, record = study["root"], tmp_path / "record"
    archive_mod.main([str(root), str(record)])
    assert not list(record.rglob("*.pt")) and not list(record.rglob("checkpoints"))
    kept = {p.relative_to(record).as_posix() for p in record.rglob("*") if p.is_file()}
    names = list(study["manifest"]["runs"])
    assert kept == {"sweep.json"} | {f"{n}/{f}" for n in names for f in archive_mod.RUN_RECORD}
    for where, out in ((root, tmp_path / "rep_study"), (record, tmp_path / "rep_record")):
        report_mod.main([str(where), "--reps", "50", "--out", str(out)])
    assert (tmp_path / "rep_study" / "report.json").read_text() == \
        (tmp_path / "rep_record" / "report.json").read_text()
    # Copied back, the sweep has nothing left to run.
    monkeypatch.chdir(REPO)
    assert sweep_mod.main(sweep_argv(record, histories, jobs=1)) == 0
    assert "4 runs, 4 finished, 0 to run" in capsys.readouterr().out
    # Another session's directory of the same study, where one run has not finished: its
    # record is not copied and the finished entry in the copy is kept.
    other = tmp_path / "other"
    shutil.copytree(record, other)
    unfinished = names[-1]
    write_outcome(other / unfinished, "running")
    (other / unfinished / "final_metrics.json").unlink()
    manifest = json.loads((other / "sweep.json").read_text())
    manifest["runs"][unfinished]["status"] = "running"
    (other / "sweep.json").write_text(json.dumps(manifest))
    partial = tmp_path / "partial"
    archive_mod.main([str(other), str(partial)])
    assert not (partial / unfinished).exists()
    assert json.loads((partial / "sweep.json").read_text())["runs"][unfinished]["status"] \
        == "running"
    assert archive_mod.main([str(root), str(partial)])  # adds the finished run's files
    assert archive_mod.main([str(other), str(partial)]) == []  # nothing new
    merged = json.loads((partial / "sweep.json").read_text())
    assert merged["runs"][unfinished]["status"] == "finished"
    # A file that differs from the copy's, or another study, stops it before anything is written.
    before = files_of(partial)
    with (other / names[0] / "metrics.jsonl").open("a") as f:
        f.write("{}\n")
    with pytest.raises(ValueError, match="differs from .*archive to a new directory"):
        archive_mod.main([str(other), str(partial)])
    manifest["fixed_flags"] = [*manifest["fixed_flags"], "--batch_size=8"]
    manifest["fixed_values"]["batch_size"] = 8
    (other / "sweep.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="holds a study that was run with other fixed flags: "
                                         "--batch_size: 4 in this study, 8 now; archive to a new"):
        archive_mod.main([str(other), str(partial)])
    assert files_of(partial) == before
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: archive_mod.main([str(root), str(root / "record")]))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "is inside the study" in err and "\n" not in err


def test_changed_experiment_refused(study, histories, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    argv = sweep_argv(study["root"], histories, jobs=1)
    changed = [*argv[:-1], "--agent.n_head=4"]  # other fixed flags
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: sweep_mod.main(changed))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "was run with other fixed flags: --agent.n_head: 2 in this study, 4 now" in err
    other_grid = [*argv[: argv.index("--grid")], "--grid", "agent.dropout=0,0.1",
                  *argv[argv.index("--grid") + 2 :]]
    with pytest.raises(SystemExit):
        run_main(lambda: sweep_mod.main(other_grid))
    assert "sweeps agent.lr, not agent.dropout" in capsys.readouterr().err


def test_slurm_path_with_local_executor(histories, tmp_path):
    import submitit

    root = tmp_path / "slurm_study"

    def local_executor(folder: Path):
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=5)
        return executor

    argv = ["--entry", str(REPO / "train_bc.py"), "--sweep_dir", str(root), "--seeds", "0",
            "--launcher", "slurm", "--threads", "1", "--",
            *[f for f in tiny_flags(histories) if "offline_steps" not in f], "--offline_steps=2"]
    assert sweep_mod.main(argv, make_executor=local_executor) == 0
    info = json.loads((root / "sweep.json").read_text())["runs"]["seed=0"]
    assert info["status"] == "finished" and info["job_id"]
    assert (root / info["log"]).is_file() and info["log"].startswith("submitit/")
    assert run_finished(root / "seed=0") and (root / "seed=0" / "final_metrics.json").is_file()
    # Run again: nothing is submitted.
    assert sweep_mod.main(argv, make_executor=lambda folder: pytest.fail("submitted")) == 0


@pytest.mark.parametrize("argv, says", [
    (["--entry", "nope.py", "--sweep_dir", "S"], "no such entry script"),
    (["--entry", "train_bc.py", "--sweep_dir", "S", "--grid", "agent.lr"], "FLAG=V1,V2"),
    (["--entry", "train_bc.py", "--sweep_dir", "S", "--grid", "agent.lr=1,,2"], "empty value"),
    (["--entry", "train_bc.py", "--sweep_dir", "S", "--grid", "a=1", "--grid", "a=2"], "twice"),
    (["--entry", "train_bc.py", "--sweep_dir", "S", "--", "--seed=3"], "use --seeds"),
    (["--entry", "train_bc.py", "--sweep_dir", "S", "--", "--output_dir=x"], "sets --output_dir"),
    (["--entry", "train_bc.py", "--sweep_dir", "S", "--grid", "a=1", "--", "--a=2"],
     "both a fixed flag and a --grid flag"),
    (["--entry", "train_bc.py", "--sweep_dir", "S", "--seeds", "1", "1"], "distinct seeds"),
    (["--entry", "train_bc.py", "--sweep_dir", "S", "--launcher", "pbs"], "unknown launcher"),
    (["--entry", "train_bc.py", "--sweep_dir", "S", "--seeds"], "needs at least one seed"),
    # Every run's flags are parsed by the entry before anything starts or is written.
    (["--entry", "train_ppo.py", "--sweep_dir", "S", "--grid", "ppo.no_such_flag=1,2"],
     "run ppo.no_such_flag=1/seed=0: Unrecognized options: --ppo.no_such_flag=1"),
    (["--entry", "train_ppo.py", "--sweep_dir", "S", "--", "--ppo.gama=0.9"],
     "--ppo.gama: did you mean --ppo.gamma?"),
    (["--entry", "train_ppo.py", "--sweep_dir", "S", "--dry_run=True", "--grid",
      "ppo.gamma=0.9,2"], "run ppo.gamma=2/seed=0: --ppo.gamma=2.0 is out of range"),
])
def test_bad_input_is_one_line(argv, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    argv = [str(tmp_path / "S") if a == "S" else a for a in argv]
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: sweep_mod.main(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and says in err and "\n" not in err, err
    assert not (tmp_path / "S").exists()  # refused before anything was written


def test_report_bad_input_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: report_mod.main([str(tmp_path)]))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no sweep.json") and "\n" not in err


def fake_run(root: Path, name: str, final: dict | None, curve: list[float], done: bool) -> None:
    """A run directory as train_ppo leaves one: metrics.jsonl, no final_metrics.json."""
    path = root / name
    path.mkdir(parents=True)
    (path / "run.json").write_text("{}")
    (path / "config.json").write_text(json.dumps({"wandb": {"project": "p", "group": "g"}}))
    records = [{"step": 8 * (i + 1), "charts/success_rate": v} for i, v in enumerate(curve)]
    if final is not None:
        records.append({"step": 8 * len(curve), **final})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if done:
        write_outcome(path, "finished", 8 * len(curve))


def test_report_lists_what_it_leaves_out(tmp_path, monkeypatch):
    """Unfinished runs, runs without the metric and short configurations are named."""
    root = tmp_path / "fake"
    runs = {}
    for mode, finals in (("all", [0.5, 0.75, None]), ("last_block", [0.25, 1.0, 0.5])):
        for seed, value in enumerate(finals):
            name = f"backbone.freeze_mode={mode}/seed={seed}"
            finished = not (mode == "last_block" and seed == 2)
            final = {"eval/success_rate": value} if value is not None else {"eval/other": 1.0}
            fake_run(root, name, final, [0.1 * seed, 0.2, 0.3], finished)
            runs[name] = {"dir": name, "config": {"backbone.freeze_mode": mode}, "seed": seed,
                          "status": "finished" if finished else "failed"}
    (root / "sweep.json").write_text(json.dumps({"entry": "train_ppo.py", "seeds": [0, 1, 2],
                                                 "grid": {"backbone.freeze_mode": []},
                                                 "runs": runs}))
    logged = {}

    class FakeRun:
        def log(self, values):
            logged.update(values)

        def finish(self):
            logged["finished"] = True

    class FakeWandb:
        Table = staticmethod(lambda columns, data: ("table", columns, data))
        Image = staticmethod(lambda path: ("image", path))

        @staticmethod
        def init(**kwargs):
            logged["init"] = kwargs
            return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    rep = report_mod.main([str(root), "--reps", "50", "--wandb.mode", "offline"])
    assert rep.metric == "eval/success_rate" and rep.curve_metric == "charts/success_rate"
    assert set(rep.left_out) == {
        "backbone.freeze_mode=all/seed=2: no finite eval/success_rate in its final metrics",
        "backbone.freeze_mode=last_block/seed=2: not finished (failed)",
        "backbone.freeze_mode=all: 2 of 3 runs", "backbone.freeze_mode=last_block: 2 of 3 runs"}
    table = (root / "report" / "report.md").read_text()
    assert "| backbone.freeze_mode=all | 2/3 | 0.625 [" in table
    assert "- backbone.freeze_mode=last_block/seed=2: not finished (failed)" in table
    # Logged to wandb in the runs' project and group: the table and both figures.
    assert logged["init"]["project"] == "p" and logged["init"]["group"] == "g"
    assert logged["report/table"][2][0][:3] == ["backbone.freeze_mode=all", 2, 3]
    assert {"report/intervals", "report/curves", "finished"} <= set(logged)
    # Lower is better: P(X > Y) flips.
    rep_low = report_mod.main([str(root), "--reps", "50", "--metric", "eval/success_rate",
                               "--higher_is_better=False", "--out", str(tmp_path / "low")])
    a, b = rep.labels
    assert rep_low.improvement[(a, b)][0] == rep.improvement[(b, a)][0]


def test_seed_placeholder_in_fixed_flags_is_each_runs_seed(tmp_path):
    """Two-stage studies: stage 2's seed s reads stage 1's run of seed s."""
    runs = sweep_mod.plan({"agent.freeze_encoder": ["True", "False"]}, [0, 2],
                          ["--agent.encoder_checkpoint=st1/seed={seed}/last.pt", "--x=1"],
                          tmp_path)
    for run in runs:
        assert f"--agent.encoder_checkpoint=st1/seed={run.seed}/last.pt" in run.flags
        assert "--x=1" in run.flags
    assert len({r.name for r in runs}) == 4


def test_report_names_a_sweep_without_a_grid_by_its_directory(tmp_path):
    """One configuration, no grid flag: its row reads like the sweep it came from."""
    root = tmp_path / "lift_blind"
    runs = {}
    for seed, value in enumerate([0.5, 0.75, 1.0]):
        name = f"seed={seed}"
        fake_run(root, name, {"eval/success_rate": value}, [0.1, 0.2], True)
        runs[name] = {"dir": name, "config": {}, "seed": seed, "status": "finished"}
    (root / "sweep.json").write_text(json.dumps({"entry": "train_bc.py", "seeds": [0, 1, 2],
                                                 "grid": {}, "runs": runs}))
    rep = report_mod.main([str(root), "--reps", "50"])
    assert rep.labels == ["lift_blind"] and not rep.left_out
    assert "| lift_blind | 3/3 | 0.750 [" in (root / "report" / "report.md").read_text()


def test_a_stop_signal_says_what_happens_and_a_second_kills(tmp_path, capsys):
    """The first SIGTERM asks the runs to checkpoint and says a second kills them; the
    second sends SIGKILL (a run that ignores SIGTERM ends only by the second)."""
    import threading

    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    ended = []

    class Launcher(sweep_mod.LocalLauncher):
        def _start(self, sweep, run, how, running):
            log = open(tmp_path / "run.log", "a")
            proc = subprocess.Popen([sys.executable, "-c", stubborn], stdout=log, stderr=log)
            return sweep_mod.Running(run, proc, log, 0, None)

        def _end(self, sweep, r):
            r.log.close()
            ended.append(r.process.returncode)

    def two_signals():
        for _ in range(2):
            time.sleep(1.5)  # the child has set SIG_IGN by then
            os.kill(os.getpid(), signal.SIGTERM)

    launcher = Launcher(jobs=1, threads=1, gpus=[], poll_s=0.05)
    sender = threading.Thread(target=two_signals)
    sender.start()
    with pytest.raises(KeyboardInterrupt):
        launcher.launch(sweep=None, todo=[("run", "new")])
    sender.join()
    out = capsys.readouterr().out
    assert "stopping: 1 run(s) asked to save a checkpoint and stop (SIGTERM)" in out
    assert "A second Ctrl-C / SIGTERM kills them" in out
    assert "killing 1 run(s) now (SIGKILL)" in out
    assert ended == [-signal.SIGKILL]


def test_report_says_when_runs_ran_on_more_than_one_machine_kind(tmp_path):
    """Runs repeat bit for bit only on one CPU type: the report names each kind and its runs
    (a run resumed elsewhere under both); one kind is one line."""
    root = tmp_path / "mixed"
    xeon = {"cpu": "Intel Xeon", "gpu": None, "torch": "2.14.1"}
    epyc = {"cpu": "AMD EPYC", "gpu": None, "torch": "2.14.1"}
    records = [{"machine": xeon}, {"machine": xeon},
               {"machine": xeon, "resumes": [{"step": 8, "machine": epyc}]}]
    runs = {}
    for seed, (value, record) in enumerate(zip([0.5, 0.75, 1.0], records, strict=True)):
        name = f"seed={seed}"
        fake_run(root, name, {"eval/success_rate": value}, [0.1, 0.2], True)
        (root / name / "config.json").write_text(json.dumps(record))
        runs[name] = {"dir": name, "config": {}, "seed": seed, "status": "finished"}
    (root / "sweep.json").write_text(json.dumps({"entry": "train_ppo.py", "seeds": [0, 1, 2],
                                                 "grid": {}, "runs": runs}))
    rep = report_mod.main([str(root), "--reps", "50"])
    assert rep.machines == {"Intel Xeon, torch 2.14.1": ["seed=0", "seed=1", "seed=2"],
                            "AMD EPYC, torch 2.14.1": ["seed=2"]}
    table = (root / "report" / "report.md").read_text()
    assert "ran on more than one machine kind" in table
    assert "- AMD EPYC, torch 2.14.1: 1 run(s): seed=2" in table
    assert json.loads((root / "report" / "report.json").read_text())["machines"] == rep.machines
    # One kind (and a run from before machines were recorded): said in one line each.
    (root / "seed=2" / "config.json").write_text(json.dumps({"machine": xeon}))
    assert report_mod.main([str(root), "--reps", "50"]).machines == {
        "Intel Xeon, torch 2.14.1": ["seed=0", "seed=1", "seed=2"]}
    assert "Machine: every run on Intel Xeon, torch 2.14.1." in (
        root / "report" / "report.md").read_text()
    (root / "seed=2" / "config.json").write_text("{}")
    assert report_mod.main([str(root), "--reps", "50"]).machines == {
        "Intel Xeon, torch 2.14.1": ["seed=0", "seed=1"], "not recorded": ["seed=2"]}
    table = (root / "report" / "report.md").read_text()
    assert "more than one machine kind" not in table  # unknown is not another kind
    assert "Machine: 2 run(s) on Intel Xeon, torch 2.14.1." in table
    assert "Machine not recorded (runs made before runs recorded it) for 1 run(s): seed=2." \
        in table
    # A finished run with no finite score, left out (--diverged=exclude), is out of the
    # machine list and the curves too (they describe the runs in the tables).
    fake_run(root, "seed=3", {"eval/success_rate": float("nan")}, [5.0, 5.0], True)
    (root / "seed=3" / "config.json").write_text(json.dumps({"machine": epyc}))
    manifest = json.loads((root / "sweep.json").read_text())
    manifest["runs"]["seed=3"] = {"dir": "seed=3", "config": {}, "seed": 3, "status": "finished"}
    (root / "sweep.json").write_text(json.dumps(manifest))
    rep = report_mod.main([str(root), "--reps", "50", "--diverged=exclude"])
    assert ("seed=3: eval/success_rate = nan at step 16 (diverged); left out: "
            "--diverged=exclude") in rep.left_out
    assert "AMD EPYC, torch 2.14.1" not in rep.machines
    _, runs = report_mod.load_runs(root)
    tabled = report_mod.group_scores(
        runs, "eval/success_rate", assess(runs, "eval/success_rate", diverged="exclude"))[3]
    assert [run.name for run in tabled] == ["seed=0", "seed=1", "seed=2"]
    (steps, values), = report_mod.curve_scores(tabled, "charts/success_rate").values()
    assert values.shape[0] == 3 and values.max() < 5  # seed=3's curve (5.0) is not in it


def test_a_study_is_the_values_its_fixed_flags_set(tmp_path, monkeypatch):
    """Reordered flags or a default written out are the same study; another value is refused
    naming the field, as the entry parses it."""
    monkeypatch.chdir(REPO)
    root, entry = tmp_path / "s", (REPO / "train_ppo.py").resolve()
    parse = sweep_mod.entry_parser(entry)
    grid = {"backbone.freeze_mode": ["all"]}
    fixed = ["--ppo.total_timesteps=64", "--video=False"]
    root.mkdir()
    sweep_mod.write_manifest(root, sweep_mod.merge_manifest(root, entry, grid, [0], fixed, parse))
    same = ["--video=False", "--ppo.gamma=0.99", "--ppo.total_timesteps", "64"]
    assert sweep_mod.merge_manifest(root, entry, grid, [0, 1], same, parse)["seeds"] == [0, 1]
    with pytest.raises(ValueError, match=r"was run with other fixed flags: --ppo.gamma: 0.99 "
                                         r"in this study, 0.9 now; use another --sweep_dir"):
        sweep_mod.merge_manifest(root, entry, grid, [0], [*fixed, "--ppo.gamma=0.9"], parse)


REWORDING_ENTRY = """
import os, re, signal, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
import train_ppo
import training.run as harness
from training.cli import run_main
parse_args = train_ppo.parse_args  # what the sweep reads the flags with

class Reworded:  # every console message reworded: the outcome must not depend on them
    def __init__(self, stream): self.stream = stream
    def write(self, text): return self.stream.write(re.sub(r"[A-Za-z]", "x", text))
    def flush(self): self.stream.flush()
    def isatty(self): return False

def save_then_signal(self, step, *args, **kwargs):  # the first attempt is pre-empted
    real_save(self, step, *args, **kwargs)
    marker = Path(self.dir).parent / f".{{Path(self.dir).name}}.signalled"
    if not marker.exists():
        marker.write_text("")
        os.kill(os.getpid(), signal.SIGTERM)

if __name__ == "__main__":  # the sweep imports this file for parse_args: patch only when run
    real_save = harness.Run.save
    harness.Run.save = save_then_signal
    sys.stdout, sys.stderr = Reworded(sys.stdout), Reworded(sys.stderr)
    run_main(lambda: train_ppo.main(sys.argv[1:]))
"""


def test_the_sweep_reads_how_a_run_ended_from_the_run_not_its_console(tmp_path, monkeypatch,
                                                                       capsys):
    entry = tmp_path / "reworded_ppo.py"
    entry.write_text(REWORDING_ENTRY.format(repo=str(REPO)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = ["--entry", str(entry), "--sweep_dir", "s", "--seeds", "0", "--threads", "1", "--",
            "--ppo.num_envs=2", "--ppo.num_steps=4", "--ppo.total_timesteps=32",
            "--ppo.num_minibatches=2", "--ppo.update_epochs=1", "--env.image_size=16",
            "--env.max_steps=6", "--eval_episodes=0", "--video=False", "--save_interval=1",
            "--wandb.mode=disabled", "--backbone.weights=random", "--device=cpu"]
    assert sweep_mod.main(argv) == 1
    info = json.loads((tmp_path / "s" / "sweep.json").read_text())["runs"]["seed=0"]
    assert (info["status"], info["exit_code"]) == ("interrupted", 75)
    assert read_outcome(tmp_path / "s" / "seed=0").status == "stopped"
    assert sweep_mod.main(argv) == 0  # the same command resumes it to the end
    info = json.loads((tmp_path / "s" / "sweep.json").read_text())["runs"]["seed=0"]
    assert (info["status"], info["how"], info["attempts"]) == ("finished", "resume", 2)
    assert "xxxxxxx" in (tmp_path / "s" / "seed=0.log").read_text()  # reworded indeed


def test_a_failed_runs_reason_is_its_error_not_its_progress_bar(tmp_path):
    output = ("train:  40%|####      | 4/10 [00:01<00:02]\rerror: --agent.lr=0 is out of "
              "range\ntrain:  40%|####      | 4/10 [00:01<00:02]\n")
    assert sweep_mod.last_error(output) == "error: --agent.lr=0 is out of range"
    crash = "Traceback (most recent call last):\nRuntimeError: boom\nppo: 10%|#| 1/10 [00:01]\n"
    assert sweep_mod.last_error(crash) == "RuntimeError: boom"
    write_outcome(tmp_path, "failed", 3, "ValueError: the run's own words")
    assert sweep_mod.last_error(output, tmp_path) == "error: ValueError: the run's own words"


def test_a_copied_record_reads_the_same_in_another_checkout(tmp_path, monkeypatch, capsys):
    """Every path in a manifest is relative: a study recorded in one checkout resumes (nothing
    left to run) and reports from a copy in another."""
    first, second = tmp_path / "checkout_a", tmp_path / "checkout_b"
    for checkout in (first, second):
        checkout.mkdir()
        shutil.copy(REPO / "train_ppo.py", checkout / "train_ppo.py")
    monkeypatch.chdir(first)
    fixed = ["--ppo.total_timesteps=64", "--video=False"]
    root = first / "runs" / "s"
    root.mkdir(parents=True)
    parse = sweep_mod.entry_parser(first / "train_ppo.py")
    manifest = sweep_mod.merge_manifest(root, first / "train_ppo.py", {}, [0, 1, 2], fixed,
                                        parse)
    for seed in (0, 1, 2):
        name = f"seed={seed}"
        fake_run(root, name, {"eval/success_rate": seed / 2}, [0.1, 0.2], True)
        manifest["runs"][name] = {"dir": name, "config": {}, "seed": seed,
                                  "status": "finished", "log": f"{name}.log"}
    sweep_mod.write_manifest(root, manifest)
    assert str(first) not in (root / "sweep.json").read_text()
    shutil.copytree(root, second / "docs" / "studies" / "s")
    shutil.copytree(second / "docs" / "studies" / "s", second / "runs" / "s")
    monkeypatch.chdir(second)
    argv = ["--entry", "train_ppo.py", "--sweep_dir", "runs/s", "--seeds", "0", "1", "2",
            "--", *fixed]
    assert sweep_mod.main(argv) == 0
    assert "3 runs, 3 finished, 0 to run" in capsys.readouterr().out
    rep = report_mod.main(["docs/studies/s", "--reps", "50"])
    assert rep.labels == ["s"] and not rep.left_out
