"""Every benchmark script runs end to end at a tiny size and prints its ratio line (no timing is judged here)."""
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.end_to_end  # runs scripts, trainings or solves end to end (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ['--epochs', '1', '--finetune-epochs', '1', '--img-size', '32', '--n-features', '6', '--n-per-class', '2',
              '--solver-effort', '1', '--solver-time-limit', '30',
              '--dataset-args', '{num_classes: 6, num_concepts: 6, images_per_class: 8}']


def _run(args):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize('script, args, expected', [
    ('inference.py', ['--batch-size', '1', '--img-size', '32', '--reps', '1', '--warmup', '0', '--reduced-reps', '1',
                      '--threads', '1'],
     [r'^ratio: \d+\.\d\d \(target <= 1\.05\)$']),
    ('train.py', ['--backbone', 'resnet18', '--batch-size', '2', '--img-size', '32', '--reps', '1', '--warmup', '0',
                  '--num-batches', '1', '--num-classes', '10', '--n-features', '8', '--n-per-class', '2',
                  '--threads', '1'],
     [r'^ratio: \d+\.\d\d \(target <= 1\.15\)$']),
    ('stats.py', ['--images', '8', '--num-classes', '4', '--img-size', '32', '--batch-size', '4', '--mem-images', '8'],
     [r'ratio stats/plain throughput: median of per-batch ratios \d+\.\d{3}', r'peak RSS ratio 4N/N: \d+\.\d{3}']),
    ('solver.py', ['--sizes', 'tiny', '--methods', 'ours,cheap-bound,greedy,greedy+swap', '--time-scale', '0.05',
                   '--effort', '1'],
     [r'^tiny\s+ours\s+[\d.]+\s+[\d.]+\s+[\d.]+%\s+[\d.]+\s+\d+\.\d{3}%', r'^tiny\s+cheap-bound\s+-\s+[\d.]+\s+[\d.]+%',
      r'^tiny\s+greedy\+swap\s+[\d.]+']),
    ('solver_effort.py', ['--sizes', 'drift', '--effort', '0.5', '--burners', '1'],
     [r'^drift\s+loaded\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+False', r'^drift\s+identical assignments: True$']),
    ('feature_cache.py', ['--embed-dim', '64', '--depth', '2', '--num-heads', '2', '--img-size', '56', '--images', '8',
                          '--batch-size', '4', '--reps', '1', '--warmup', '0', '--threads', '1'],
     [r'^uncached epoch \(images -> frozen backbone -> head\)\s+[\d.]+',
      r'^cached epoch \(cached maps -> head\)\s+[\d.]+', r'^ratio uncached/cached: \d+\.\d\d \(target >= 10\)$']),
    ('report_overhead.py', ['--', *TINY_TRAIN],
     [r'^round 0  report\s+[\d.]+ s', r'^round 0  no-report\s+[\d.]+ s',
      r'^report files \(\d+\) in .*: .*classes/c0\.png.*global\.png, index\.html',
      r'^ratio: \d+\.\d\d \(target <= 1\.15\)$', r'^cpu ratio: \d+\.\d\d$']),
    ('first_hour.py', ['--seeds', '3', '--baseline-seeds', '3', '--together', '--threads', '1', '--baseline', ROOT,
                       '--baseline-args=--no-amp', '--isa', 'AVX2', '--', *TINY_TRAIN],
     [r'^hardware: .*AVX2.*ONEDNN_MAX_CPU_ISA=AVX2; --amp auto picks float32 here$',
      r'^baseline\s+seed\s+3\s+wall\s+[\d.]+ s\s+cpu\s+[\d.]+ s\s+top-1\s+[\d.]+\s+recovery [\d.]+\s+float32',
      r'^new\s+seed\s+3\s+wall\s+[\d.]+ s.*\s+float32', r'^  start \(process, imports, arguments\)\s+[\d.]+ s',
      r'^  data generation\s+[\d.]+ s', r'^  augmentation/loading \(train \+ val\)\s+[\d.]+ s',
      r'^  forward/backward \+ val \(dense\)\s+[\d.]+ s', r'^  solve\s+[\d.]+ s', r'^  report\s+[\d.]+ s',
      r'^ratio: \d+\.\d\d \(new/baseline median wall; target <= 150 s wall\)$',
      r'^wall: [\d.]+ s \(new, median; target <= 150 s\), max [\d.]+ s$',
      r'^quality: top-1 min [\d.]+ % \(target >= 99\), recovery min [\d.]+ \(target >= 0\.97\)$']),
    ('compare.py', ['--tiny', '--seeds', '3', '--methods', 'qpm,sldd,qsenn,glm', '--path-points', '8',
                    '--path-max-epochs', '3', '--faithfulness-images', '4'],
     [r'^# .*1 dense run\(s\); mean ± sample std over them; wall \d+ s$', r'^\| dense \| [\d.]+ \| 128\.0 \|',
      r'^\| qpm \| [\d.]+ \| 6\.0 \| 2\.00 \|', r'^\| sldd \| [\d.]+ \|', r'^\| qsenn \| [\d.]+ \|',
      r'^\| glm \| [\d.]+ \|']),
])
def test_benchmark_script_runs_at_tiny_size_and_prints_its_ratio(script, args, expected):
    out = _run([sys.executable, str(ROOT / 'benchmarks' / script), *args])
    assert 'failed:' not in out
    for pattern in expected:
        assert re.search(pattern, out, re.MULTILINE), f'{pattern!r} not in:\n{out[-2000:]}'


def test_recovery_seeds_script_reports_every_seed_and_the_minimum(tmp_path):
    out = _run(['bash', 'benchmarks/recovery_seeds.sh', str(tmp_path / 'out'), 'cpu', '3', '4', '--', *TINY_TRAIN])
    rows = re.findall(r'^\s+([34])\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$', out, re.MULTILINE)
    assert [r[0] for r in rows] == ['3', '4'], out
    scores = [float(r[2]) for r in rows]
    summary = re.search(r'^2/2 runs: recovery min ([\d.]+), median ([\d.]+), >= 0\.9 in (\d)$', out, re.MULTILINE)
    assert summary, out
    assert float(summary[1]) == min(scores)
    assert float(summary[2]) == pytest.approx(statistics.median(scores), abs=1e-3)  # rows are rounded to 3 digits
    assert int(summary[3]) == sum(s >= 0.9 for s in scores)
    assert (tmp_path / 'out' / 'recovery_seeds.txt').read_text().strip() in out
