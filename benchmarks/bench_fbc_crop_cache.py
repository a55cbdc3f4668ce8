"""fbc training speed with random crops and a frozen body: the K-crop cache against the rest.

Side by side in one run, on synthetic Lift data (two 84 x 84 cameras, chunks of 16) with
the default Lift agent config (ResNet-18 frozen, random weights as no network is used):
(a) no crop, features cached once (the old default, --agent.random_crop=False);
(b) 76 x 76 crops, the features of --agent.cache_crops crops per frame cached (the default);
(c) 76 x 76 crops, no cache: the frozen ResNet runs on every batch (what random_crop=True
did before the crop cache). Interleaved in rounds so that other load hits them alike;
medians of updates/s are printed. Then each cache's build time and size, and the size of
the cache per freeze mode and K for a Lift-sized dataset (--lift_frames frames).

    python benchmarks/bench_fbc_crop_cache.py --threads=1
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.fbc import FBCAgent, FBCConfig  # noqa: E402
from benchmarks.bench_gpu_paths import SyntheticLiftData  # noqa: E402
from encoders import EncoderConfig  # noqa: E402
from training.cli import parse_config  # noqa: E402
from training.device import resolve_device  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    """K-crop cache vs no-crop cache vs live crops, fbc on Lift-shaped data."""

    frames: int = 256
    """Frames in the synthetic Lift data (all cached once for (a) and (b))."""
    batch_size: int = 256
    """Training batch size (train_bc's default)."""
    cache_crops: int = 9
    """K of run (b)."""
    steps: int = 3
    """Timed updates per round."""
    rounds: int = 3
    """Rounds (the median is reported)."""
    lift_frames: int = 9_000
    """Frames of the Lift dataset the cache sizes are projected to (~100 demos x ~90)."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    device: str = "auto"
    """auto | cpu | cuda."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of fn, synchronised on CUDA."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def lift_agent(mode: str = "all", **kw) -> FBCConfig:
    """The default Lift agent config (random weights: no download), with kw changed."""
    return FBCConfig(encoder=EncoderConfig(weights="random", freeze_mode=mode), **kw)


def cache_mib(cached) -> float:
    return sum(f.numel() * f.element_size() for f in cached.features.values()) / 2**20


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(BenchConfig, argv, description=__doc__)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = SyntheticLiftData(cfg.frames, device)
    print(f"device {device}, {torch.get_num_threads()} threads; {cfg.frames} frames x 2 cameras "
          f"84x84, batch {cfg.batch_size}; medians of {cfg.rounds} rounds of {cfg.steps} updates")

    runs = {
        "(a) no crop, cache": lift_agent(random_crop=False),
        f"(b) crop 76, cache of K={cfg.cache_crops}": lift_agent(cache_crops=cfg.cache_crops),
        "(c) crop 76, no cache (live ResNet)": lift_agent(),
    }
    fns, builds = {}, {}
    for name, agent_cfg in runs.items():
        torch.manual_seed(0)
        agent = FBCAgent(agent_cfg, data.spec, device)
        run_data = data
        if not name.startswith("(c)"):
            sync(device)
            t0 = time.perf_counter()
            run_data = agent.prepare(data)
            sync(device)
            builds[name] = (time.perf_counter() - t0, cache_mib(run_data))
        gen = torch.Generator(device=device).manual_seed(0)

        def step(agent=agent, run_data=run_data, gen=gen) -> None:
            agent.update(run_data.batch(run_data.sample_indices(cfg.batch_size, gen)))

        fns[name] = step
    for fn in fns.values():  # warm-up (and the optimizer's state)
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(cfg.rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, cfg.steps, device))
    rates = {k: 1 / statistics.median(v) for k, v in times.items()}
    base = rates["(c) crop 76, no cache (live ResNet)"]
    print("\n| run | updates/s | vs (c) | cache build (s) | cache (MiB) |")
    print("|---|---|---|---|---|")
    for name, rate in rates.items():
        build, mib = builds.get(name, (None, None))
        built = "-" if build is None else f"{build:.1f}"
        size = "-" if mib is None else f"{mib:.1f}"
        print(f"| {name} | {rate:.2f} | {rate / base:.1f}x | {built} | {size} |")

    print(f"\ncache size projected to {cfg.lift_frames:,} frames x 2 cameras (fp32):")
    print("| freeze_mode | no crop (84x84) | K=1 (centre 76) | K=9 | K=25 | K=81 |")
    print("|---|---|---|---|---|---|")
    probe = SyntheticLiftData(1, device)
    for mode in ("all", "until_layer3", "last_block"):
        per_frame = {}  # bytes of one frame's cache entry (both cameras) for one crop
        for crop in (False, None):
            agent = FBCAgent(lift_agent(mode, random_crop=crop), probe.spec, device)
            feats = agent.frozen_features(probe)  # one per frame: the image, or its centre
            per_frame[crop] = sum(f[0].numel() * f.element_size() for f in feats.values())
        sizes = [per_frame[False]] + [per_frame[None] * k for k in (1, 9, 25, 81)]
        cells = [f"{b * cfg.lift_frames / 2**30:.2f} GiB" for b in sizes]
        print(f"| {mode} | " + " | ".join(cells) + " |", flush=True)

if __name__ == "__main__":
    main()
