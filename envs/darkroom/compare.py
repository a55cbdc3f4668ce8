"""Plot the in-context return curves of several Darkroom runs on one figure.

    python -m envs.darkroom.compare ad=runs/ad cad-finetuned=runs/cad_finetune \
        cad-frozen=runs/cad_frozen --out docs/figures/darkroom_comparison.png

Each run's latest evaluation (`videos/eval_*/in_context_return.json`, written by the
in-context evaluator) is read; the optimal and random references come from the files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def latest_curve(run_dir: Path) -> dict:
    """The newest in-context evaluation of a run."""
    files = sorted(run_dir.glob("videos/eval_*/in_context_return.json"))
    if not files:
        raise FileNotFoundError(f"{run_dir} has no videos/eval_*/in_context_return.json")
    return json.loads(files[-1].read_text())


def plot(curves: dict[str, dict], out: Path, title: str) -> None:
    """One line per run, with the optimal and random references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, data in curves.items():
        ys = data["return_per_episode"]
        ax.plot(range(1, len(ys) + 1), ys, label=f"{label} ({ys[-1]:.1f})")
    first = next(iter(curves.values()))
    ax.axhline(
        first["optimal_return"], color="k", ls="--", label=f"optimal {first['optimal_return']:.1f}"
    )
    ax.axhline(
        first["random_return"], color="r", ls=":", label=f"random {first['random_return']:.2f}"
    )
    ax.set_xlabel("in-context episode")
    ax.set_ylabel("return (mean over held-out goals x seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    parser.add_argument("--title", default="Dark Room, held-out goals")
    args = parser.parse_args(argv)
    curves = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"expected LABEL=RUN_DIR, got {spec!r}")
        curves[label] = latest_curve(Path(path))
    plot(curves, args.out, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
