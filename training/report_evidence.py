"""What the report does with a run whose record is incomplete, so that no evidence is dropped
silently (training/report.py; docs/studies.md, "Reading the table").

A finished run that logged the metric enters the tables in one of these ways:

- its final value, at its configuration's budget: counted as it is;
- a line of metrics.jsonl cannot be read (a partial write cut it, or it is not a record):
  still counted if the value it has was logged at the budget, and named ("1 cut");
- short: its metric was last logged at a step below the largest at which any run of its
  configuration logged it (the budget as the runs show it; PPO's last step may fall a little
  below total_timesteps by batch rounding, so config.json's budget would mislabel runs).
  Not counted (its value is not the one at the budget) and named ("+ 1 short", or "+ 1 cut
  short" when an unreadable line is why);
- diverged: a non-finite final value. By default it counts at the floor, the worst finite
  value among the study's runs scored at their budget (lowest; highest when lower is
  better): leaving it out would favour the configurations whose runs diverge. Divergence is
  decided before shortness: a non-finite value stays non-finite, so the run's value at the
  budget would be too. `--diverged=exclude` leaves such runs out, and the table says so.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from training.run_outcome import read_outcome

if TYPE_CHECKING:
    from training.report import RunResult

Diverged = Literal["floor", "exclude"]


@dataclass
class FinalValues:
    """A run's last value of each metric, where each was logged, and what could not be read."""

    values: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """metrics.jsonl's records, and a note for every line that cannot be read."""
    if not path.is_file():
        return [], []
    # Bytes, not text: a write cut inside a character must not make the whole file unreadable.
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.splitlines()
    records, unreadable = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:  # only the last line, without its newline, can be a write cut short
            cut = i == len(lines) and not text.endswith("\n")
            unreadable.append(f"{path.name} line {i} unreadable "
                              f"({'cut' if cut else 'not a JSON record'})")
    return records, unreadable


def read_final(run_dir: Path) -> FinalValues:
    """The last value of each metric: final_metrics.json where it has one (logged at the
    run's final step), else the last in metrics.jsonl (at that record's step)."""
    records, unreadable = read_metrics(run_dir / "metrics.jsonl")
    final = FinalValues(unreadable=unreadable)
    for record in records:
        step = record.get("step")
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, (int, float)):
                final.values[key] = float(value)
                if isinstance(step, int):
                    final.steps[key] = step
    path = run_dir / "final_metrics.json"
    if path.is_file():
        try:
            last = json.loads(path.read_text())
        except ValueError:
            final.unreadable.append("final_metrics.json unreadable")
            return final
        outcome = read_outcome(run_dir)
        end = outcome.step if outcome and outcome.step is not None else max(
            final.steps.values(), default=None)
        for key, value in last.items():
            if isinstance(value, (int, float)):
                final.values[key] = float(value)
                if end is not None:
                    final.steps[key] = end
    return final


@dataclass
class Verdict:
    """How one finished run that logged the metric enters the tables."""

    score: float | None
    """What it counts as; None: not in the scores."""
    words: list[str]
    """For the runs column: "diverged", "cut", "short", "cut short"."""
    notes: list[str]
    """What is said under the table (which run, what)."""


@dataclass
class Evidence:
    """The verdict on every finished run that logged the metric, and the floor."""

    metric: str
    diverged: Diverged
    floor: float | None
    verdicts: dict[str, Verdict]
    """Run name -> verdict."""

    def runs_cell(self, runs: list[RunResult], planned: int) -> str:
        """"3/3, 1 diverged": of the 3 counted, 1 at the floor; "2/3 + 1 short": 2 counted
        and 1 more finished that is not."""
        verdicts = [self.verdicts[r.name] for r in runs if r.name in self.verdicts]
        counted = [v for v in verdicts if v.score is not None]
        inside = Counter(w for v in counted for w in v.words)
        outside = Counter(w for v in verdicts if v.score is None for w in v.words)
        return (f"{len(counted)}/{planned}" + "".join(f", {k} {w}" for w, k in inside.items())
                + "".join(f" + {k} {w}" for w, k in outside.items()))

    def caveats(self) -> list[str]:
        """The runs in the tables whose record needs a word."""
        return [f"{name}: " + "; ".join(v.notes) for name, v in self.verdicts.items()
                if v.score is not None and v.notes]

    def caption(self) -> list[str]:
        """What the runs column's words mean and how a diverged run counted, when it matters."""
        lines = []
        if self.diverged == "exclude":
            lines.append("Runs that diverged (a non-finite final value) are left out "
                         "(--diverged=exclude).")
        elif any("diverged" in v.words and v.score is not None for v in self.verdicts.values()):
            lines.append(f"A run that diverged (a non-finite final value) counts as "
                         f"{self.metric} = {self.floor:.6g}, the floor: the worst finite final "
                         f"value of the study's runs (--diverged=exclude leaves such runs out).")
        if any(v.words for v in self.verdicts.values()):
            lines.append("Runs: counted/planned; \", 1 diverged\" or \", 1 cut\" qualifies "
                         "counted runs, \"+ 1 short\" or \"+ 1 diverged\" adds finished runs "
                         "not counted; each is named below.")
        return lines


def budgets(runs: list[RunResult], metric: str) -> dict[str, int]:
    """label -> the largest step at which a run of that configuration logged the metric."""
    found: dict[str, int] = {}
    for run in runs:
        step = run.steps.get(metric)
        if step is not None:
            found[run.label] = max(found.get(run.label, step), step)
    return found


def assess(runs: list[RunResult], metric: str, higher_is_better: bool = True,
           diverged: Diverged = "floor") -> Evidence:
    """The verdict on each finished run that has the metric (the module's docstring)."""
    # A finished run without the metric but with a cut line may have lost it in that line:
    # it is shown ("+ 1 cut short"), not silently left out.
    measured = [r for r in runs
                if r.status == "finished" and (metric in r.final or r.unreadable)]
    budget = budgets(measured, metric)
    kinds = {r.name: kind_of(r, metric, budget.get(r.label)) for r in measured}
    at_budget = [r.final[metric] for r in measured if kinds[r.name] == ""]
    worst = min if higher_is_better else max
    floor = worst(at_budget) if at_budget else None
    verdicts = {r.name: verdict(r, metric, kinds[r.name], budget.get(r.label), floor, diverged)
                for r in measured}
    return Evidence(metric, diverged, floor, verdicts)


def kind_of(run: RunResult, metric: str, budget: int | None) -> str:
    """"diverged", "short", "cut short", or "" for a value at the budget."""
    if metric not in run.final:  # assess takes such a run only when a line is unreadable
        return "cut short"
    if not math.isfinite(run.final[metric]):
        return "diverged"
    step = run.steps.get(metric)
    if step is not None and budget is not None and step < budget:
        return "cut short" if run.unreadable else "short"
    return ""


def damage(run: RunResult) -> list[str]:
    """The runs column's word for a run with an unreadable line: "cut" for a partial write."""
    if not run.unreadable:
        return []
    return ["cut" if any(n.endswith("(cut)") for n in run.unreadable) else "unreadable"]


def verdict(run: RunResult, metric: str, kind: str, budget: int | None, floor: float | None,
            diverged: Diverged) -> Verdict:
    notes = list(run.unreadable)
    step = run.steps.get(metric)
    at = f" at step {step}" if step is not None else ""
    if kind == "diverged":
        value = run.final[metric]
        if diverged == "floor" and floor is not None:
            notes.append(f"{metric} = {value}{at} (diverged); counted as {floor:.6g}, the floor")
            return Verdict(floor, ["diverged", *damage(run)], notes)
        why = ("--diverged=exclude" if diverged == "exclude"
               else "no run scored a finite value to floor it at")
        notes.append(f"{metric} = {value}{at} (diverged); left out: {why}")
        return Verdict(None, ["diverged"], notes)
    if metric not in run.final:
        notes.append(f"no {metric} in its readable records (the unreadable line may have "
                     f"held it); not counted")
        return Verdict(None, [kind], notes)
    if kind:
        notes.append(f"last {metric}{at}, {budget} in its configuration's longest run (short "
                     f"of the budget); not counted")
        return Verdict(None, [kind], notes)
    return Verdict(run.final[metric], damage(run), notes)
