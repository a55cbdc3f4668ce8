"""The report never drops evidence silently (training/report.py, training/report_evidence.py):
a cut metrics line, a run short of its configuration's last step and a run that diverged
each show in the table's runs column and are named under it; a diverged run counts at the
floor unless --diverged=exclude. The studies are fake run directories, as a sweep leaves them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from training import report as report_mod
from training.run_outcome import write_outcome

STEPS = (8, 16, 24, 32)
REPS = ["--reps", "20"]


def fake_run(root: Path, name: str, returns: list[float], finished: bool = True,
             final: dict | None = None) -> Path:
    """A run as train_ppo leaves one: eval/return logged every 8 steps, outcome.json at the
    end (the last step logged), final_metrics.json only when `final` is given (train_bc)."""
    path = root / name
    path.mkdir(parents=True)
    (path / "run.json").write_text("{}")
    (path / "config.json").write_text("{}")
    # train/loss follows the return, so a run that diverged has a NaN curve too.
    records = [{"step": s, "eval/return": v, "train/loss": -v}
               for s, v in zip(STEPS, returns, strict=False)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if final is not None:
        (path / "final_metrics.json").write_text(json.dumps(final))
    write_outcome(path, "finished" if finished else "failed", records[-1]["step"])
    return path


def fake_study(root: Path, finals: dict[str, list[float]]) -> Path:
    """One run per (configuration, seed), each logging 4 evaluations ending at its final."""
    runs = {}
    for mode, values in finals.items():
        for seed, value in enumerate(values):
            name = f"mode={mode}/seed={seed}"
            fake_run(root, name, [0.1, 0.2, 0.3, value])
            runs[name] = {"dir": name, "config": {"mode": mode}, "seed": seed,
                          "status": "finished"}
    seeds = list(range(max(map(len, finals.values()))))
    (root / "sweep.json").write_text(json.dumps({"entry": "train_ppo.py", "seeds": seeds,
                                                 "grid": {"mode": []}, "runs": runs}))
    return root


def cut_last_line(path: Path) -> None:
    """A partial write: the last record loses its end and its newline."""
    text = path.read_text()
    path.write_text(text[:-8])


def table_of(root: Path) -> str:
    return (root / "report" / "report.md").read_text()


def test_a_cut_last_line_is_named_and_its_run_is_not_scored_at_an_earlier_step(tmp_path):
    """The last record (step 32) cut: the run's last readable eval/return is at step 24, so
    it is not counted as if it were the final one, and the table says why."""
    root = fake_study(tmp_path / "s", {"a": [1.0, 2.0, 3.0]})
    cut_last_line(root / "mode=a/seed=2" / "metrics.jsonl")
    rep = report_mod.main([str(root), *REPS])
    assert rep.scores["mode=a"][:, 0].tolist() == [1.0, 2.0]
    table = table_of(root)
    assert "| mode=a | 2/3 + 1 cut short |" in table
    assert ("- mode=a/seed=2: metrics.jsonl line 4 unreadable (cut); last eval/return at step "
            "24, 32 in its configuration's longest run (short of the budget); not counted"
            ) in table


def test_a_cut_line_that_held_the_only_evaluation_is_shown_not_dropped(tmp_path):
    """PPO evaluates once, at the end: cut that line and the run has no value at all. It is
    named as cut, in the runs column too, not as a run that never logged the metric."""
    root = fake_study(tmp_path / "s", {"a": [1.0, 2.0, 3.0]})
    metrics = root / "mode=a/seed=2" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text(lines[0].replace("eval/return", "charts/return") + "\n" + lines[-1][:-8])
    report_mod.main([str(root), *REPS])
    table = table_of(root)
    assert "| mode=a | 2/3 + 1 cut short |" in table
    assert ("- mode=a/seed=2: metrics.jsonl line 2 unreadable (cut); no eval/return in its "
            "readable records (the unreadable line may have held it); not counted") in table


def test_a_cut_line_after_the_final_value_counts_the_run_and_names_the_line(tmp_path):
    """train_bc's final value is in final_metrics.json, at the run's final step
    (outcome.json): a cut metrics line does not change the score, but it is said."""
    root = fake_study(tmp_path / "s", {"a": [1.0, 2.0, 3.0]})
    run = root / "mode=a/seed=1"
    (run / "final_metrics.json").write_text(json.dumps({"eval/return": 2.5}))
    cut_last_line(run / "metrics.jsonl")
    rep = report_mod.main([str(root), *REPS])
    assert sorted(rep.scores["mode=a"][:, 0].tolist()) == [1.0, 2.5, 3.0]
    table = table_of(root)
    assert "| mode=a | 3/3, 1 cut |" in table
    assert "In the tables, with a caveat:\n- mode=a/seed=1: metrics.jsonl line 4 unreadable " \
           "(cut)" in table


def test_a_line_that_is_not_a_record_is_named_wherever_it_is(tmp_path):
    root = fake_study(tmp_path / "s", {"a": [1.0, 2.0, 3.0]})
    path = root / "mode=a/seed=0" / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1] + ["{not json\n"] + lines[1:]))
    report_mod.main([str(root), *REPS])
    table = table_of(root)
    assert "| mode=a | 3/3, 1 unreadable |" in table
    assert "- mode=a/seed=0: metrics.jsonl line 2 unreadable (not a JSON record)" in table


def test_a_run_short_of_its_configurations_last_step_is_shown_not_counted(tmp_path):
    """A run that says it finished but logged its metric last at step 24 while the others
    reached 32: its value is not the one at the budget."""
    root = fake_study(tmp_path / "s", {"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]})
    short = root / "mode=b/seed=1"
    lines = (short / "metrics.jsonl").read_text().splitlines(keepends=True)
    (short / "metrics.jsonl").write_text("".join(lines[:3]))
    write_outcome(short, "finished", 24)
    rep = report_mod.main([str(root), *REPS])
    assert rep.scores["mode=b"][:, 0].tolist() == [4.0, 6.0]
    table = table_of(root)
    assert "| mode=a | 3/3 |" in table and "| mode=b | 2/3 + 1 short |" in table
    assert ("- mode=b/seed=1: last eval/return at step 24, 32 in its configuration's longest "
            "run (short of the budget); not counted") in table
    assert "mode=b: 2 of 3 runs" in rep.left_out


def diverged_study(tmp_path: Path) -> Path:
    """b's seed 1 ends with a NaN return; the study's worst finite final is a's 1.0."""
    return fake_study(tmp_path / "s", {"a": [1.0, 2.0, 3.0], "b": [4.0, math.nan, 6.0]})


def test_a_diverged_run_counts_at_the_studys_worst_score(tmp_path):
    root = diverged_study(tmp_path)
    rep = report_mod.main([str(root), *REPS])
    assert rep.scores["mode=b"][:, 0].tolist() == [4.0, 1.0, 6.0]  # the floor: a's worst
    assert rep.estimates["mode=b"]["mean"][0] == pytest.approx(11 / 3)
    table = table_of(root)
    assert "| mode=b | 3/3, 1 diverged |" in table
    assert ("A run that diverged (a non-finite final value) counts as eval/return = 1, the "
            "floor: the worst finite final value of the study's runs") in table
    assert ("- mode=b/seed=1: eval/return = nan at step 32 (diverged); counted as 1, the floor"
            ) in table
    saved = json.loads((root / "report" / "report.json").read_text())
    assert saved["diverged"] == {"mode": "floor", "floor": 1.0}
    assert saved["configs"][1]["runs_column"] == "3/3, 1 diverged"
    # It is in the table, so in the machine list; its NaN curve is not in the curves.
    assert "mode=b/seed=1" in rep.machines["not recorded"]
    assert "learning curves: without the runs that diverged" in rep.left_out
    assert rep.curve_metric == "train/loss" and "curves.png" in table


def test_lower_is_better_floors_a_diverged_run_at_the_highest_score(tmp_path):
    root = diverged_study(tmp_path)
    rep = report_mod.main([str(root), *REPS, "--higher_is_better=False"])
    assert rep.scores["mode=b"][:, 0].tolist() == [4.0, 6.0, 6.0]


def test_diverged_exclude_leaves_the_run_out_and_says_so(tmp_path):
    root = diverged_study(tmp_path)
    rep = report_mod.main([str(root), *REPS, "--diverged=exclude"])
    np.testing.assert_array_equal(rep.scores["mode=b"][:, 0], [4.0, 6.0])
    table = table_of(root)
    assert "| mode=b | 2/3 + 1 diverged |" in table
    assert "Runs that diverged (a non-finite final value) are left out (--diverged=exclude)." \
        in table
    assert ("- mode=b/seed=1: eval/return = nan at step 32 (diverged); left out: "
            "--diverged=exclude") in table
    # Said even when no run diverged: the reader knows what the table would have hidden.
    clean = fake_study(tmp_path / "clean", {"a": [1.0, 2.0, 3.0]})
    report_mod.main([str(clean), *REPS, "--diverged=exclude"])
    assert "left out (--diverged=exclude)" in table_of(clean)


def test_a_study_whose_every_run_diverged_has_no_floor_and_says_why(tmp_path):
    root = fake_study(tmp_path / "s", {"a": [math.nan, math.inf]})
    with pytest.raises(ValueError, match="no run scored a finite value to floor it at"):
        report_mod.main([str(root), *REPS])


def test_finished_is_what_outcome_json_says(tmp_path):
    """A run with final_metrics.json but an outcome that says it failed, and one with no
    outcome.json although the manifest says finished, are not finished."""
    root = fake_study(tmp_path / "s", {"a": [1.0, 2.0, 3.0]})
    failed = root / "mode=a/seed=1"
    (failed / "final_metrics.json").write_text(json.dumps({"eval/return": 9.0}))
    write_outcome(failed, "failed", 32, "ValueError: boom")
    (root / "mode=a/seed=2" / "outcome.json").unlink()
    _, runs = report_mod.load_runs(root)
    assert [r.status for r in runs] == ["finished", "failed", "no outcome.json"]
    rep = report_mod.main([str(root), *REPS])
    assert rep.scores["mode=a"][:, 0].tolist() == [1.0]
    assert {"mode=a/seed=1: not finished (failed)",
            "mode=a/seed=2: not finished (no outcome.json)"} <= set(rep.left_out)


def test_an_unreadable_final_metrics_file_is_named_not_a_crash(tmp_path):
    root = fake_study(tmp_path / "s", {"a": [1.0, 2.0, 3.0]})
    (root / "mode=a/seed=0" / "final_metrics.json").write_text('{"eval/return": 0.')
    rep = report_mod.main([str(root), *REPS])
    assert rep.scores["mode=a"][:, 0].tolist() == [1.0, 2.0, 3.0]  # metrics.jsonl's value
    assert "- mode=a/seed=0: final_metrics.json unreadable" in table_of(root)
