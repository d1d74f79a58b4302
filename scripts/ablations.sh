#!/usr/bin/env bash
# The paper's ablations at small scale (docs/results.md, "Ablations"): the full model and every variant (a base
# config with one change, configs/ablations/*.yaml) are trained for the same 200 steps from the same
# seed on 2 CPU cores (12-25 min each, depending on what else runs), then scored by the evaluation
# tool on the held-out synthetic benchmark, clean and with all 15 ImageNet-C corruptions at severity 5.
#
#   bash scripts/ablations.sh [BASE_CONFIG]     # default: configs/cpu_small.yaml
#
# The README's table was measured on the retired demo config (HED's VGG-16; it left the tree in #28):
#   mkdir -p outputs && git show 1235db9:configs/demo.yaml > outputs/demo.yaml && bash scripts/ablations.sh outputs/demo.yaml
# (its full model was then the demo run's own step-200 checkpoint: same config, seed and data order.)
set -euo pipefail
base=${1:-configs/cpu_small.yaml}
steps=200
out=outputs/ablations

checkpoint() {  # variant -> its step-$steps checkpoint
  echo "$out/$1/lightning_logs/version_0/checkpoints/epoch=0-step=$steps.ckpt"
}

for variant in full no_local_cost no_init_flow regression; do
  if [ ! -f "$(checkpoint "$variant")" ]; then
    change=()
    [ "$variant" = full ] || change=(--config "configs/ablations/$variant.yaml")
    # One more checkpoint callback, so that step $steps is saved whatever the base config's interval.
    python train.py fit --config "$base" ${change[@]+"${change[@]}"} --trainer.max_steps "$steps" \
      --trainer.default_root_dir "$out/$variant" \
      --trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint \
      --trainer.callbacks.every_n_train_steps="$steps" --trainer.callbacks.save_top_k=-1
  fi
done

evaluate() {  # name checkpoint samples
  python -m diffmatch.evaluate --dataset synthetic --methods checkpoint --checkpoint "$2" --samples "$3" \
    --limit 20 --out "$out/eval/$1/clean"
  python -m diffmatch.evaluate --dataset synthetic --methods checkpoint --checkpoint "$2" --samples "$3" \
    --corruptions all --severity 5 --limit 1 --out "$out/eval/$1/corrupted"
}
full=$(checkpoint full)
evaluate full "$full" 3
for variant in no_local_cost no_init_flow regression; do
  samples=3
  [ "$variant" = regression ] && samples=1  # deterministic: N copies of one flow would carry no variance
  evaluate "$variant" "$(checkpoint "$variant")" "$samples"
done
evaluate full-1-hypothesis "$full" 1
evaluate full-2-hypotheses "$full" 2

for split in clean corrupted; do
  python scripts/summarize_evals.py "full (3 hypotheses)=$out/eval/full/$split" \
    "w/o local cost=$out/eval/no_local_cost/$split" "w/o F_init=$out/eval/no_init_flow/$split" \
    "regression (no diffusion)=$out/eval/regression/$split" \
    "full, 1 hypothesis=$out/eval/full-1-hypothesis/$split" "full, 2 hypotheses=$out/eval/full-2-hypotheses/$split"
done
