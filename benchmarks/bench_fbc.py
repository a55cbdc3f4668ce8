"""Training speed of fbc on Lift images: fine-tuned vs frozen vs frozen + feature cache.

All three run in one process at the same batch size on the same data, interleaved in
rounds so that load from other processes hits them alike; the medians are printed with
their ratios. The cache's one-time cost (embedding every frame) is printed too.

    python benchmarks/bench_fbc.py --batch_size 64 --steps 10 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from agents.fbc import FBCAgent, FBCConfig
from envs.lift.dataset import make_data
from training.device import resolve_device


def timed_steps(agent: FBCAgent, data, batch_size: int, steps: int, gen: torch.Generator) -> float:
    """Seconds per update (sampling included), synchronised on CUDA."""
    sync = torch.cuda.synchronize if agent.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        agent.update(data.sample(batch_size, gen))
    sync()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=None, help="robomimic lift image file")
    parser.add_argument("--num_demos", type=int, default=4, help="generated when no --dataset")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed updates per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rgb_model_name", default="resnet18")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.dataset
        if path is None:
            from envs.lift.demos import generate

            path = Path(tmp) / "bench.hdf5"
            generate(path, args.num_demos, seed=0, operators=2)
        run(args, path)


def run(args: argparse.Namespace, path: str | Path) -> None:
    """Build the three agents on the data at path, time them, print the table."""
    device = resolve_device(args.device)
    # Speed does not depend on the weights' values: random init avoids the ImageNet lookup.
    common = {"rgb_model_name": args.rgb_model_name, "encoder_weights": "random"}
    modes = {
        "fine-tuned": FBCConfig(freeze_encoder=False, **common),
        "frozen": FBCConfig(freeze_encoder=True, **common),
        "frozen+cached": FBCConfig(freeze_encoder=True, **common),
    }
    data = make_data(path, device=device, seed=0, cache_dir=Path("."),
                     chunk_length=modes["frozen"].chunk_length)
    print(data.describe())
    agents, datas = {}, {}
    for name, cfg in modes.items():
        torch.manual_seed(0)
        agents[name] = FBCAgent(cfg, data.spec, device)
        datas[name] = data
    t0 = time.perf_counter()
    datas["frozen+cached"] = agents["frozen+cached"].prepare(data)
    prepare_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    for name in modes:  # warm-up (allocator, cudnn autotune)
        timed_steps(agents[name], datas[name], args.batch_size, 2, gen)
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name in modes:
            times[name].append(
                timed_steps(agents[name], datas[name], args.batch_size, args.steps, gen)
            )

    base = statistics.median(times["fine-tuned"])
    print(
        f"\nfbc training speed: batch {args.batch_size}, {args.rgb_model_name}, 2 cameras "
        f"84x84, device {device}, torch threads {torch.get_num_threads()}, "
        f"median of {args.rounds} rounds x {args.steps} steps"
    )
    print(f"{'mode':<16}{'steps/s':>10}{'ms/step':>10}{'vs fine-tuned':>15}")
    for name in modes:
        sec = statistics.median(times[name])
        print(f"{name:<16}{1 / sec:>10.2f}{1000 * sec:>10.1f}{base / sec:>14.1f}x")
    frozen = statistics.median(times["frozen"])
    cached = statistics.median(times["frozen+cached"])
    print(f"frozen+cached vs frozen: {frozen / cached:.1f}x")
    print(
        f"cache build: {prepare_s:.1f} s for {data.num_samples} frames "
        f"({1000 * prepare_s / data.num_samples:.1f} ms/frame, both cameras); pays for "
        f"itself after {prepare_s / max(frozen - cached, 1e-9):.0f} frozen steps"
    )


if __name__ == "__main__":
    main()
