#!/usr/bin/env bash
# One prepared call for a session that draws a GPU (the `device` tool: one H200, 15 minutes of device
# time in all, at most 10 minutes per command). It retrains the default model on 3D scenes (issue #27)
# and times inference on the GPU, writing under $OUT (8 files at most come back):
#   1. stage 1 fine-tuned from the bundled stage 1 on synthetic warps and rendered 3D scenes, for
#      STAGE1_SECONDS, the learning rate decayed along a half cosine over that wall-clock time
#      (--model.lr_decay_seconds: the step rate of CPU-fed loaders is not known ahead)
#                                                   -> stage1.pt (float16, ~15 MB), metrics_stage1.csv
#   2. stage 2 (the flow upsampler) fine-tuned from the bundled stage 2, now on top of the new
#      stage 1 and conditioned on its predictions, for STAGE2_SECONDS
#                                                   -> stage2.pt (a stage-2 file referring to
#                                                      stage1.pt, ~14 MB), metrics_stage2.csv
#   3. the inference benchmark on CUDA with what time is left before BUDGET (the default at 512²
#      at float32 and bf16, the paper-size model against the paper's 112 / 123 / 140 ms)
#                                                   -> bench.md, bench.json
#   and the tails of the training logs (train.log) and a timed log of the call (session.md).
# The held-out evaluation and the calibration run afterwards on the CPU, from these files
# (checkpoints/README.md has the commands).
#
# Prepare here, in the repository root (the device has no network; these packages are missing there):
#   mkdir -p .git/info && echo /.whl/ >> .git/info/exclude && bash scripts/gpu_session.sh --wheels
#   diffmatch fetch-photos                       # data/photos/extra, the training photos it carries
# Run, with the device tool (the tree, the wheels and the photos travel: about 66 of its 67 MB):
#   run(command="bash scripts/gpu_session.sh", carry=[".whl", "data/photos/extra"], timeout_s=600)
# Settings, as environment variables: STAGE1_SECONDS (default 340), STAGE2_SECONDS (default 120),
# HAZE (the share of training images seen through haze, default 0.25; 0 for the first session's recipe),
# BUDGET (seconds from the start by which the call ends, default 580), BENCH=0 to skip the benchmark,
# DRY=1 for a smoke test on a CPU (a few steps of each stage, no benchmark; minutes on 2 cores).
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
STAGE1_SECONDS="${STAGE1_SECONDS:-340}"
STAGE2_SECONDS="${STAGE2_SECONDS:-120}"
HAZE="${HAZE:-0.25}"
BUDGET="${BUDGET:-580}"
DRY="${DRY:-0}"
STAGE1_INIT=diffmatch/assets/diffmatch_xfeat.pt
STAGE2_INIT=diffmatch/assets/diffmatch_xfeat_stage2.pt
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [[ "$DRY" != 1 ]] && compgen -G ".whl/*.whl" > /dev/null; then  # DRY: this machine has them
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl
    export PYTHONPATH="$WORK/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*" | tee -a "$OUT/session.md" >&2; }
: > "$OUT/session.md"
: > "$OUT/train.log"

if [[ "$DRY" == 1 ]]; then
    device=cpu; batch=2; workers=1; limits="--trainer.max_steps 3 --trainer.limit_val_batches 1 --data.val_batch_size 1"
    BENCH=0
else
    device=cuda; batch=16; workers=$(( $(nproc) - 2 )); limits="--trainer.max_steps 100000 --trainer.limit_val_batches 2"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/session.md" || true
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/session.md"
fi
hms() { printf '00:00:%02d:%02d' $(($1 / 60)) $(($1 % 60)); }
# The recipe shared by both stages: half the warps shrunk towards the identity, sensor noise on half
# the images, haze on a share HAZE of them, scenes with an independently moving layer in a fifth of
# them (checkpoints/README.md).
recipe=(--data.train.warp.small_motion_probability 0.5
    --data.train.photometric "{noise_probability: 0.5, noise_sigma: [0.02, 0.4], haze_probability: $HAZE}"
    --data.train.scenes '{moving_probability: 0.2, supersample: 1}'
    --model.ema_warmup true --trainer.val_check_interval 300 --trainer.accelerator "$device"
    --data.batch_size "$batch" --data.num_workers "$workers")

# train NAME SECONDS ARGS...: one Lightning run into $WORK/NAME; its log's tail and metrics go to $OUT.
train() {
    local name=$1 seconds=$2; shift 2
    stamp "$name: training for $seconds s"
    # shellcheck disable=SC2086
    if ! python3 train.py fit "$@" "${recipe[@]}" --model.lr_decay_seconds "$seconds" \
        --trainer.max_time "$(hms "$seconds")" $limits --trainer.default_root_dir "$WORK/$name" > "$WORK/$name.log" 2>&1; then
        { echo "== $name (failed)"; tail -60 "$WORK/$name.log"; } >> "$OUT/train.log"
        stamp "$name: training failed (see train.log)"
        exit 1
    fi
    { echo "== $name"; grep -v "^Epoch\|it/s\]" "$WORK/$name.log" | tail -40 || true; } >> "$OUT/train.log"
    cp "$WORK/$name/lightning_logs/version_0/metrics.csv" "$OUT/metrics_$name.csv" 2>/dev/null || true
    stamp "$name: $(tail -1 "$OUT/metrics_$name.csv" 2>/dev/null | cut -c1-120)"
}

train stage1 "$STAGE1_SECONDS" --config configs/default_xfeat.yaml --model.init_from "$STAGE1_INIT" \
    --model.lr 6.0e-5 --data.train.seed 11 --data.train.scene_share 0.5
python3 -m diffmatch.export "$WORK/stage1/lightning_logs/version_0/checkpoints/last.ckpt" "$OUT/stage1.pt" --half
stamp "exported stage1.pt"

# Stage 2 starts from the bundled one, joined with the new stage 1 (a whole cascade file: loading a
# stage-1 file into a cascade would restart the upsampler from stage 1's denoiser).
python3 - "$STAGE2_INIT" "$OUT/stage1.pt" "$WORK/cascade_init.pt" <<'EOF'
import sys

from diffmatch.models.weights import load_checkpoint, save_weights

cascade, stage1 = load_checkpoint(sys.argv[1]), load_checkpoint(sys.argv[2])
state = cascade.state_dict()
state.update(stage1.state_dict())  # every tensor but the upsampler's
cascade.load_state_dict(state)
save_weights(cascade, sys.argv[3])
EOF
train stage2 "$STAGE2_SECONDS" --config configs/upsampler_xfeat.yaml --model.init_from "$WORK/cascade_init.pt" \
    --model.lr 5.0e-5 --model.val_steps 1 --data.train.seed 12 --data.train.scene_share 0.4
python3 -m diffmatch.export "$WORK/stage2/lightning_logs/version_0/checkpoints/last.ckpt" "$OUT/stage2.pt" --half \
    --stage1 "$OUT/stage1.pt"
stamp "exported stage2.pt"

left=$(( BUDGET - ($(date +%s) - started) ))
if [[ "${BENCH:-1}" == 1 && $left -gt 30 ]]; then
    stamp "benchmark, at most $left s"
    timeout "$left" python3 scripts/bench_inference.py --device cuda --precision 32,bf16 --paper-precision 32 \
        --repeats 10 --json "$OUT/bench.json" > "$OUT/bench.md" 2>&1 || stamp "benchmark stopped or failed (see bench.md)"
fi
stamp "done"
