#!/usr/bin/env bash
# One prepared call on a lent GPU machine, for the measurements the CPU cannot make.
#
# The machine has no network and a GPU image with torch, torchvision, numpy, h5py,
# matplotlib and imageio but not tyro or gymnasium, and a session gets 15 minutes of it,
# one command at most 10. So the packages travel as wheels, the run is ordered by what
# matters most, and every part has its own time limit: what finishes comes back.
#
#   here (with network):  bash benchmarks/gpu_session.sh wheels     # -> .whl/ (git-ignored)
#   there (device `run`, carry [".whl", "bodies"], timeout_s 600):
#                         bash benchmarks/gpu_session.sh run
#   here, afterwards:     bash benchmarks/gpu_session.sh unpack DIR  # DIR = the run's files_at
#   rehearsal here (CPU, minutes): OUT=$(mktemp -d) RUNS=$(mktemp -d) DEVICE=cpu PY=.venv/bin/python \
#       EXTRA="--ppo.total_timesteps=1024 --eval_episodes=4" \
#       BENCH_ARGS="--fbc_batch=16 --steps=2 --rounds=1 --env_batch=64 --ppo_envs=4" \
#       bash benchmarks/gpu_session.sh run
#
# `run` does, in order, each under `timeout`:
#   1. the Durotaxis freeze-mode study's GPU rows (MODES, default `none`) x {random, the
#      in-domain body} x seeds 0-2, with the CPU study's fixed flags plus --device=cuda;
#   2. benchmarks/bench_gpu_paths.py, every part (issue 13's PPO steps/s at large B with
#      bf16 + channels-last among them);
#   3. the README's `python train_ppo.py --backbone.freeze_mode=all` on the GPU, timed.
# and writes $OUT/runs.tgz (metrics, configs, logs; no checkpoints) and $OUT/*.txt.
# Lift's trainable modes are not here: they need robosuite and the dataset (281 MB) there.
set -euo pipefail
cd "$(dirname "$0")/.."

# The versions the test suite passes with here.
WHEELS=(tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 gymnasium==1.4.0
        farama-notifications==0.0.6)
MODES=${MODES:-none}
STUDY_S=${STUDY_S:-300}
BENCH_S=${BENCH_S:-120}
DEFAULT_S=${DEFAULT_S:-90}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
RUNS=${RUNS:-runs}
# What `run` writes under $RUNS and brings back, and what `unpack` will not write over.
STUDY_DIR=durotaxis_freeze_study_gpu
DEFAULT_DIR=gpu_default_ppo
read -r -a EXTRA <<< "${EXTRA:-}"
read -r -a BENCH_ARGS <<< "${BENCH_ARGS:-}"
STUDY_FLAGS=(--ppo.total_timesteps=40000 --video=False --eval_episodes=256
             --wandb.mode=disabled --device="$DEVICE" "${EXTRA[@]}")

case "${1:-}" in
wheels)
    mkdir -p .git/info
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 \
        -d .whl "${WHEELS[@]}"
    ;;
run)
    [ -n "${OUT:-}" ] || { echo "run: OUT is unset; run this through the device tool" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    { nvidia-smi -L || true; "$PY" -c 'import torch; print("torch", torch.__version__)'; } \
        | tee "$OUT/machine.txt"
    test -f bodies/durotaxis_standard_r18.pt || { echo "carry bodies/" >&2; exit 2; }

    # 1. the study's GPU rows; three runs at a time share the GPU (each is small)
    timeout -k 20 "$STUDY_S" "$PY" -m training.sweep --entry train_ppo.py \
        --sweep_dir "$RUNS/$STUDY_DIR" --seeds 0 1 2 --jobs 3 --threads 4 \
        --grid "backbone.freeze_mode=${MODES}" \
        --grid backbone.weights=random,bodies/durotaxis_standard_r18.pt \
        -- "${STUDY_FLAGS[@]}" 2>&1 | tee "$OUT/study.txt" || true

    # 2. every row of the GPU-path benchmark
    timeout -k 10 "$BENCH_S" "$PY" benchmarks/bench_gpu_paths.py --device="$DEVICE" \
        "${BENCH_ARGS[@]}" 2>&1 \
        | tee "$OUT/bench_gpu_paths.txt" || true

    # 3. the README's command, timed (no video/wandb: neither is what is timed)
    start=$SECONDS
    timeout -k 20 "$DEFAULT_S" "$PY" train_ppo.py --backbone.freeze_mode=all --device="$DEVICE" \
        --video=False --wandb.mode=disabled --output_dir="$RUNS/$DEFAULT_DIR" "${EXTRA[@]}" 2>&1 \
        | tail -n 25 | tee "$OUT/default_ppo.txt" || true
    echo "wall $((SECONDS - start)) s (limit $DEFAULT_S s)" | tee -a "$OUT/default_ppo.txt"

    tar czf "$OUT/runs.tgz" -C "$RUNS" --exclude=checkpoints --exclude='*.pt' \
        "$STUDY_DIR" "$DEFAULT_DIR" || true
    ;;
unpack)
    [ -f "${2:-}/runs.tgz" ] || {
        echo "unpack: no runs.tgz in '${2:-}'; name the folder the device run returned" >&2
        exit 2; }
    for d in "$STUDY_DIR" "$DEFAULT_DIR"; do
        [ ! -e "$RUNS/$d" ] || {
            echo "unpack: $RUNS/$d exists; move it away first (nothing was overwritten)" >&2
            exit 2; }
    done
    mkdir -p "$RUNS"
    tar xzf "$2/runs.tgz" -C "$RUNS"
    "$PY" -m training.report "$RUNS/$STUDY_DIR" --metric=eval/mean_return
    ;;
*)
    sed -n '2,/^set -e/p' "$0" | sed '$d'; exit 2
    ;;
esac
