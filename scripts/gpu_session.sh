#!/usr/bin/env bash
# One prepared call for a session that draws a GPU (the `device` tool: one H200, 15 minutes of device
# time in all, at most 10 minutes per command). It runs, in this order, and writes under $OUT:
#   1. the inference benchmark on CUDA (scripts/bench_inference.py: the default at 512² with 1 and 3
#      hypotheses at float32 and bf16, the paper-size model against the paper's 112/123/140 ms, the
#      refinement alone by each solver)                                -> bench.md, bench.json
#   2. the scene fine-tuning recipe of issue #27 (the phase-6 recipe of checkpoints/README.md, at
#      batch 16 with many loader workers) for TRAIN_SECONDS, from INIT  -> train.log, metrics.csv
#   3. its float16 export                                              -> finetuned.pt (about 15 MB)
#   4. a quick held-out check of the export: the scenes and the synthetic benchmark, 10 pairs per
#      level, unrefined and refined (the refinement runs on the GPU)  -> eval.md
#
# Prepare here, in the repository root (the device has no network; these packages are missing there):
#   echo /.whl/ >> .git/info/exclude && bash scripts/gpu_session.sh --wheels
#   diffmatch fetch-photos                       # data/photos/extra, the training photos it carries
# Run, with the device tool:
#   run(command="bash scripts/gpu_session.sh", carry=[".whl", "data/photos/extra"], timeout_s=600)
# then commit what is worth keeping from its files (the numbers to the README, the weights as the
# next phase's start). Settings, as environment variables: TRAIN_SECONDS (default 330), INIT (default
# the bundled model), BENCH=0 / EVAL=0 to skip a part, DRY=1 for a smoke test on a CPU (a few steps,
# one pair per level, no benchmark: about 5 minutes on 2 cores; checked so before it was committed).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--wheels" ]]; then
    # Pinned to what this project is tested with; the device's Python is 3.12 (KINDS.md).
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        diffusers==0.42.1 importlib_metadata==8.7.0 jsonargparse==4.53.0 docstring_parser==0.18.0 \
        typeshed_client==2.15.0 kornia==0.9.0 kornia_rs==0.2.0
    ls .whl
    exit 0
fi

OUT="${OUT:-outputs/gpu_session}"
TRAIN_SECONDS="${TRAIN_SECONDS:-330}"
INIT="${INIT:-diffmatch/assets/diffmatch_xfeat.pt}"
DRY="${DRY:-0}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl
    export PYTHONPATH="$WORK/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*" | tee -a "$OUT/eval.md" >&2; }
: > "$OUT/eval.md"

if [[ "$DRY" == 1 ]]; then
    device=cpu; batch=2; workers=1; limit=1; steps="--trainer.max_steps 3 --trainer.limit_val_batches 1 --data.val_batch_size 1"
    BENCH=0
else
    device=cuda; batch=16; workers=$(( $(nproc) - 2 )); limit=10; steps="--trainer.max_steps 100000"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/eval.md" || true
fi

if [[ "${BENCH:-1}" == 1 ]]; then
    stamp "benchmark"
    python3 scripts/bench_inference.py --device cuda --precision 32,bf16 --paper-precision 32 --repeats 10 \
        --json "$OUT/bench.json" > "$OUT/bench.md" 2>&1 || stamp "benchmark failed (see bench.md)"
fi

stamp "fine-tuning from $INIT for ${TRAIN_SECONDS} s"
# shellcheck disable=SC2086
python3 train.py fit --config configs/default_xfeat.yaml --model.init_from "$INIT" \
    --model.lr 8.0e-5 --model.lr_decay_steps 1500 --model.ema_warmup true --data.train.seed 8 \
    --data.train.warp.small_motion_probability 0.5 \
    --data.train.photometric '{noise_probability: 0.5, noise_sigma: [0.02, 0.4]}' \
    --data.train.scene_share 0.5 --data.train.scenes '{moving_probability: 0.2, supersample: 1}' \
    --trainer.accelerator "$device" --trainer.max_time "$(printf '00:00:%02d:%02d' $((TRAIN_SECONDS / 60)) $((TRAIN_SECONDS % 60)))" $steps \
    --data.batch_size "$batch" --data.num_workers "$workers" \
    --trainer.default_root_dir "$WORK/run" > "$WORK/train.log" 2>&1 || { tail -40 "$WORK/train.log" > "$OUT/train.log"; stamp "training failed (see train.log)"; exit 1; }
tail -c 200000 "$WORK/train.log" > "$OUT/train.log"
run_dir="$WORK/run/lightning_logs/version_0"
cp "$run_dir/metrics.csv" "$OUT/metrics.csv" 2>/dev/null || true  # logged every 25 steps
python3 -m diffmatch.export "$run_dir/checkpoints/last.ckpt" "$OUT/finetuned.pt" --half
stamp "exported $OUT/finetuned.pt"

if [[ "${EVAL:-1}" == 1 ]]; then
    for dataset in scenes synthetic; do
        stamp "evaluating on $dataset (--limit $limit)"
        python3 -m diffmatch.evaluate --dataset "$dataset" --methods checkpoint,checkpoint-unrefined \
            --checkpoint "$OUT/finetuned.pt" --limit "$limit" --device "$device" --out "$WORK/eval-$dataset" \
            >> "$OUT/eval.md" 2>&1 || stamp "evaluation on $dataset failed"
    done
fi
stamp "done"
