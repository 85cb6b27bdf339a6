#!/usr/bin/env bash
# Concept recovery of the embedded default over seeds (target, README.md: recovery >= 0.9): runs
# `train.py -c qpm_timm/configs/concepts.yaml --seed S` for every seed in parallel (one thread each),
# then prints one line per seed and the minimum / median recovery.
# Usage: bash benchmarks/recovery_seeds.sh OUT_DIR DEVICE SEED... [-- EXTRA TRAIN ARGS]
#   e.g. on the GPU machine: bash benchmarks/recovery_seeds.sh $OUT cuda 42 1 2 3 4 5 6 7 8 9 10 11 12
#   on CPU (about 5 min per seed and core): bash benchmarks/recovery_seeds.sh /tmp/rec cpu 42 1
set -uo pipefail
OUT=$1; DEVICE=$2; shift 2
SEEDS=(); while (($#)) && [[ $1 != -- ]]; do SEEDS+=("$1"); shift; done; (($#)) && shift
source benchmarks/device_env.sh
export OMP_NUM_THREADS=1
RUNS=$(mktemp -d)
for seed in "${SEEDS[@]}"; do
  timeout ${RUN_TIMEOUT:-900} python3 train.py -c qpm_timm/configs/concepts.yaml --device "$DEVICE" --seed "$seed" \
    --output "$RUNS/$seed" --no-progress "$@" > "$RUNS/$seed.log" 2>&1 &
done
wait
mkdir -p "$OUT"
python3 - "$RUNS" "${SEEDS[@]}" <<'PY' | tee "$OUT/recovery_seeds.txt"
import json, pathlib, statistics, sys
runs, seeds = pathlib.Path(sys.argv[1]), sys.argv[2:]
scores = []
print(f'{"seed":>6} {"top1 %":>7} {"recovery":>9} {"wall s":>7}')
for seed in seeds:
    found = list((runs / seed).glob('*/results.json'))
    if not found:
        print(f'{seed:>6}  failed: see {runs / seed}.log')
        continue
    r = json.loads(found[0].read_text())
    scores.append(r['concept_recovery'])
    print(f'{seed:>6} {r["top1"]:7.2f} {r["concept_recovery"]:9.3f} '
          f'{r["wall_time_s"]:7.1f}')
if scores:
    print(f'{len(scores)}/{len(seeds)} runs: recovery min {min(scores):.3f}, median {statistics.median(scores):.3f}, '
          f'>= 0.9 in {sum(s >= 0.9 for s in scores)}')
PY
