#!/usr/bin/env bash
# One prepared GPU run:
#   1. the embedded default with a ResNet-50 QPM (reduced strides) at 224 px, --amp --channels-last,
#      one dense and one fine-tune epoch;
#   2. the QPM/plain training-step ratio on the GPU (benchmarks/train.py);
#   3. the README's main command unchanged (the slim default, 20 + 4 epochs), which picks the GPU by itself;
#   4. the CUB recipe (qpm_timm/configs/cub.yaml) with its pretrained ResNet-50 backbone from a local file, on a
#      generated class-per-folder tree at 224 px, one epoch of each stage.
# Usage on the device machine (wheels for ortools/timm carried in .whl): bash benchmarks/gpu_check.sh OUT_DIR
set -uo pipefail
OUT=${1:-${OUT:-/tmp/gpu_out}}
mkdir -p "$OUT"
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, timm, ortools; print('torch', torch.__version__, 'timm', timm.__version__, 'ortools', ortools.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/device.txt"
# run_train NAME ARGS...: train.py on the embedded default's config into /tmp/gpu_NAME; log, wall time and
# results.json come back as $OUT/NAME.log and $OUT/NAME_results.json.
run_train() {
  local name=$1; shift
  local t0=$SECONDS
  timeout 150 python3 train.py -c qpm_timm/configs/concepts.yaml --output "/tmp/gpu_$name" --experiment "$name" \
    --no-progress "$@" 2>&1 | grep -v "^  feature\|^|" | tee "$OUT/$name.log"
  echo "wall $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
  cp "/tmp/gpu_$name/$name/results.json" "$OUT/${name}_results.json" 2>/dev/null
}
echo "== 1. ResNet-50 QPM, 224 px, amp, channels-last, 1 + 1 epochs"
run_train train --model qpm --backbone resnet50 --reduced-strides --img-size 224 --amp --channels-last --epochs 1 \
  --finetune-epochs 1 --device cuda --workers 12 -b 64 --solver-time-limit 5 --dataset-args "{images_per_class: 60}"
echo "== 2. training-step ratio"
timeout 90 python3 benchmarks/train.py --device cuda --amp --channels-last --reduced-strides --batch-size 32 \
  --img-size 224 --reps 8 --warmup 2 2>&1 | tee "$OUT/train_step_cuda.txt"
echo "== 3. README main command"
run_train default
echo "== 4. CUB recipe, pretrained backbone from a local file, generated folder tree, 224 px"
python3 tests/helpers/folder_tree.py /tmp/gpu_tree 20 16 300 400
python3 -c "import timm, torch; from safetensors.torch import save_file; \
save_file(timm.create_model('resnet50').state_dict(), '/tmp/gpu_resnet50.safetensors')"
t0=$SECONDS
timeout 300 python3 train.py -c qpm_timm/configs/cub.yaml --dataset folder --data-dir /tmp/gpu_tree --dataset-args "{}" \
  --pretrained-path /tmp/gpu_resnet50.safetensors --epochs 1 --finetune-epochs 1 --solver-time-limit 30 --amp \
  --channels-last --device cuda --output /tmp/gpu_cub --no-progress 2>&1 | grep -v "^  feature\|^|" | tee "$OUT/cub.log"
echo "wall $((SECONDS - t0)) s" | tee -a "$OUT/cub.log"
cp /tmp/gpu_cub/qpm_resnet50-cub/results.json "$OUT/cub_results.json" 2>/dev/null
