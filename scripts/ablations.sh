#!/usr/bin/env bash
# The paper's ablations at demo scale (README, "Ablations"): every variant is configs/demo.yaml with one
# change, trained for the same 200 steps from the same seed on 2 CPU cores (12-25 min each, depending on what else runs), then scored
# by the evaluation tool on the held-out synthetic benchmark, clean and with all 15 ImageNet-C
# corruptions at severity 5. The full model is the demo run's own step-200 checkpoint (same config,
# same seed, same data order), so it is not trained again.
#
#   bash scripts/ablations.sh [DEMO_RUN_CHECKPOINT_DIR]     # default: outputs/demo/lightning_logs/version_0/checkpoints
set -euo pipefail
demo_ckpts=${1:-outputs/demo/lightning_logs/version_0/checkpoints}
steps=200
out=outputs/ablations

for variant in no_local_cost no_init_flow regression; do
  if [ ! -f "$out/$variant/lightning_logs/version_0/checkpoints/epoch=0-step=$steps.ckpt" ]; then
    python train.py fit --config configs/demo.yaml --config "configs/ablations/$variant.yaml" \
      --trainer.max_steps "$steps" --trainer.default_root_dir "$out/$variant"
  fi
done

evaluate() {  # name checkpoint samples
  python -m diffmatch.evaluate --dataset synthetic --methods checkpoint --checkpoint "$2" --samples "$3" \
    --limit 20 --out "$out/eval/$1/clean"
  python -m diffmatch.evaluate --dataset synthetic --methods checkpoint --checkpoint "$2" --samples "$3" \
    --corruptions all --severity 5 --limit 1 --out "$out/eval/$1/corrupted"
}
full="$demo_ckpts/epoch=0-step=$steps.ckpt"
evaluate full "$full" 3
for variant in no_local_cost no_init_flow regression; do
  samples=3
  [ "$variant" = regression ] && samples=1  # deterministic: N copies of one flow would carry no variance
  evaluate "$variant" "$out/$variant/lightning_logs/version_0/checkpoints/epoch=0-step=$steps.ckpt" "$samples"
done
evaluate full-1-hypothesis "$full" 1
evaluate full-2-hypotheses "$full" 2

for split in clean corrupted; do
  python scripts/summarize_evals.py "full (3 hypotheses)=$out/eval/full/$split" \
    "w/o local cost=$out/eval/no_local_cost/$split" "w/o F_init=$out/eval/no_init_flow/$split" \
    "regression (no diffusion)=$out/eval/regression/$split" \
    "full, 1 hypothesis=$out/eval/full-1-hypothesis/$split" "full, 2 hypotheses=$out/eval/full-2-hypotheses/$split"
done
