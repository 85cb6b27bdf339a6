"""The README's main command, before and after: wall time of ``python train.py -c qpm_timm/configs/concepts.yaml``.

Measured: the embedded default (generated concepts dataset, dense training, statistics, CP-SAT solve, fine-tune,
export, explanation report, concept recovery) as a user runs it, each run a fresh ``train.py`` process timed from
start to exit. The baseline is the same command at an earlier commit (``--baseline``, default ``fac3d43``: the
command before ``--amp auto``), extracted with ``git archive`` into a temporary folder and run from there with its own
package and config, or a source folder (``--baseline .``: this tree), with ``--baseline-args`` added to its command
line only (e.g. ``--baseline-args=--no-amp``: that commit in float32). ``--isa AVX2`` sets oneDNN's documented ISA
cap ``ONEDNN_MAX_CPU_ISA`` for every run, so a CPU with bfloat16 units measures a CPU without them. Runs alternate in
the same session (baseline first on even rounds, last on odd ones) so that a drift in machine load hits both, or,
with ``--together``, the baseline and the new run of a seed start at the same time and share the machine (on a
machine that other jobs keep busy; with ``--threads 1`` on 2 cores, as two OpenMP threads per run mostly wait for
each other there); seeds listed in ``--baseline-seeds`` are run with both, the others with the new code only.

Prints the hardware (CPU model, torch's CPU capability, bf16 units, the ISA cap), one row per run (wall and CPU
seconds, top-1, concept recovery, the precision it ran in, load average), the stage breakdown of every new run (from
the ``timings`` its ``results.json`` records, ``qpm_timm/run/timing.py``; "start" is the process start, imports and
argument parsing: the wall time the run's own clock does not see), then

    ratio: R (new/baseline median wall; target <= 150 s wall)
    wall: W s (new, median; target <= 150 s), max M s
    quality: top-1 min T % (target >= 99), recovery min C (target >= 0.97)

Arguments after ``--`` go to both commands (a smaller run for a test). Examples (CPU, 2 idle cores): the new command
against today's in float32, on this CPU and as a CPU without bf16 units, and the form for a busy shared machine:

    python benchmarks/first_hour.py --seeds 0 1 42 --baseline-seeds 42 --baseline-args=--no-amp
    python benchmarks/first_hour.py --seeds 0 1 42 --baseline-seeds 42 --baseline-args=--no-amp --isa AVX2
    python benchmarks/first_hour.py --seeds 42 --baseline-seeds 42 --together --threads 1
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from _common import load_text

from qpm_timm.precision import cpu_bf16_native

ROOT = Path(__file__).resolve().parents[1]
CONFIG = Path('qpm_timm') / 'configs' / 'concepts.yaml'
TARGET_WALL = 150.0
TARGET_TOP1 = 99.0
TARGET_RECOVERY = 0.97
# stage rows of the breakdown: (label, stages summed, stages subtracted), from results.json's timings
STAGES = (
    ('data generation', ('data_generation',), ()),
    ('augmentation/loading (train + val)', ('dense.loading', 'finetune.loading'), ()),
    ('forward/backward + val (dense)', ('dense',), ('dense.loading',)),
    ('forward/backward + val (fine-tune)', ('finetune',), ('finetune.loading',)),
    ('statistics pass (+ gallery)', ('statistics_and_solve',), ('solve',)),
    ('solve', ('solve',), ()),
    ('report', ('report',), ()),
    ('concept recovery, prediction sets', ('recovery', 'prediction_sets'), ()),
    ('export', ('export',), ()),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--baseline', default='fac3d43',
                   help='the baseline: a commit of this repository (extracted with git archive) or a source folder')
    p.add_argument('--baseline-args', default='', metavar='ARGS',
                   help='more train.py arguments of the baseline only, e.g. --baseline-args=--no-amp')
    p.add_argument('--isa', default=None, metavar='ISA',
                   help='ONEDNN_MAX_CPU_ISA of every run (e.g. AVX2: a CPU without bfloat16 units)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 42], help='seeds of the new command')
    p.add_argument('--baseline-seeds', type=int, nargs='*', default=None,
                   help='seeds also run with the baseline (default: the last of --seeds)')
    p.add_argument('--output', default=None, help='folder for the runs (default: a temporary folder)')
    p.add_argument('--threads', type=int, default=None,
                   help='OMP_NUM_THREADS of every run (default: unset, torch uses every core)')
    p.add_argument('--together', action='store_true',
                   help='start the baseline and the new run of a seed at the same time (fair on a shared machine '
                        'whose load drifts; use --threads 1 on 2 cores), instead of one after the other')
    p.add_argument('train_args', nargs='*', help='extra train.py arguments for both commands, after --')
    return p.parse_args(argv)


def extract(commit: str, folder: Path) -> Path:
    """The repository at ``commit`` as plain files in ``folder`` (``git archive``)."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / 'baseline.tar'
    with open(archive, 'wb') as fh:
        subprocess.run(['git', 'archive', commit], cwd=ROOT, stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / 'src', filter='data')
    archive.unlink()
    return folder / 'src'


def run_trains(jobs: List[Tuple[Path, Path, int, List[str]]], extra: List[str], threads: Optional[int],
               isa: Optional[str] = None) -> List[Dict]:
    """``train.py`` processes of the trees ``code`` (each its own package first on the path), started together,
    for the ``(code, output, seed, own arguments)`` jobs: wall and CPU seconds of each process (start to exit), its
    results."""
    started = []
    for code, output, seed, own in jobs:
        output.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, 'train.py', '-c', str(CONFIG), '--output', str(output), '--no-progress', '--seed',
               str(seed), *own, *extra]
        env = dict(os.environ, PYTHONPATH=str(code), **({'OMP_NUM_THREADS': str(threads)} if threads else {}),
                   **({'ONEDNN_MAX_CPU_ISA': isa} if isa else {}))
        log = open(output / 'train.log', 'w+')
        started.append((cmd, code, output, log, time.perf_counter(),
                        subprocess.Popen(cmd, cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT)))
    ends = {}
    while len(ends) < len(started):
        pid, status, usage = os.wait4(-1, 0)
        ends[pid] = (time.perf_counter(), status, usage.ru_utime + usage.ru_stime)
    runs = []
    for cmd, code, output, log, t0, proc in started:
        end, status, cpu = ends[proc.pid]
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        if proc.returncode != 0:
            sys.exit(f'failed: {" ".join(cmd)} (in {code})\n{log.read()[-5000:]}')
        log.close()
        (results,) = output.glob('*/results.json')
        runs.append(dict(wall=end - t0, cpu=cpu, results=json.loads(results.read_text())))
    return runs


def breakdown(run: Dict) -> List[str]:
    """The stage rows of one run (seconds and share of its wall time)."""
    timings: Optional[Dict[str, float]] = run['results'].get('timings')
    if not timings:
        return ['  (no timings in results.json)']
    rows = [('start (process, imports, arguments)', run['wall'] - run['results']['wall_time_s'])]
    for label, plus, minus in STAGES:
        rows.append((label, sum(timings.get(k, 0.0) for k in plus) - sum(timings.get(k, 0.0) for k in minus)))
    rows.append(('other (model, setup, tables, files)', run['wall'] - sum(s for _, s in rows)))
    return [f'  {label:<38} {seconds:7.1f} s  {100 * seconds / run["wall"]:5.1f} %' for label, seconds in rows]


def row(name: str, seed: int, run: Dict) -> str:
    res = run['results']
    recovery = res.get('concept_recovery')
    precision = res.get('precision', {}).get('name', 'not recorded')  # runs before --amp auto do not record it
    return (f'{name:<9} seed {seed:>3}  wall {run["wall"]:7.1f} s  cpu {run["cpu"]:7.1f} s  top-1 {res["top1"]:6.2f}  '
            f'recovery {"-" if recovery is None else f"{recovery:.3f}"}  {precision}  ({load_text()})')


def hardware(isa: Optional[str]) -> str:
    """What the CPU reports (model, torch's capability, bf16 units, the ISA cap the runs get) and the rule's pick."""
    native, described = cpu_bf16_native(isa.upper() if isa else None)
    return f'hardware: {described}; --amp auto picks {"bfloat16" if native else "float32"} here'


def main(argv=None) -> float:
    args = parse_args(argv)
    out = Path(args.output or tempfile.mkdtemp(prefix='first_hour_'))
    baseline_seeds = args.seeds[-1:] if args.baseline_seeds is None else args.baseline_seeds
    baseline = Path(args.baseline) if Path(args.baseline).is_dir() else extract(args.baseline, out / 'baseline_code')
    print(hardware(args.isa), flush=True)
    print(f'{load_text()}; {os.cpu_count()} cpus; baseline {args.baseline} {args.baseline_args}; seeds {args.seeds} '
          f'(baseline: {baseline_seeds}); threads {args.threads or "default"}; '
          f'{"baseline and new together" if args.together else "one run at a time"}; '
          f'extra args {args.train_args or "none"}', flush=True)
    runs: Dict[str, List[Dict]] = {'baseline': [], 'new': []}
    for i, seed in enumerate(dict.fromkeys([*args.seeds, *baseline_seeds])):
        kinds = [kind for kind, seeds in (('baseline', baseline_seeds), ('new', args.seeds)) if seed in seeds]
        order = kinds if i % 2 == 0 else kinds[::-1]  # alternate which goes first
        batches = [order] if args.together else [[kind] for kind in order]
        for batch in batches:
            done = run_trains([(ROOT, out / f'{kind}-seed{seed}', seed, []) if kind == 'new' else
                               (baseline, out / f'{kind}-seed{seed}', seed, shlex.split(args.baseline_args))
                               for kind in batch], args.train_args, args.threads, args.isa)
            for kind, run in zip(batch, done):
                runs[kind].append(run)
                print(row(kind, seed, run), flush=True)
                if kind == 'new':
                    print('\n'.join(breakdown(run)), flush=True)
    new_wall = statistics.median(r['wall'] for r in runs['new'])
    for kind in ('baseline', 'new'):
        if runs[kind]:
            print(f'median wall {kind}: {statistics.median(r["wall"] for r in runs[kind]):.1f} s over '
                  f'{len(runs[kind])} run(s)')
    ratio = new_wall / statistics.median(r['wall'] for r in runs['baseline']) if runs['baseline'] else float('nan')
    print(f'ratio: {ratio:.2f} (new/baseline median wall; target <= {TARGET_WALL:.0f} s wall)')
    print(f'wall: {new_wall:.1f} s (new, median; target <= {TARGET_WALL:.0f} s), '
          f'max {max(r["wall"] for r in runs["new"]):.1f} s')
    recoveries = [r['results'].get('concept_recovery', float('nan')) for r in runs['new']]
    print(f'quality: top-1 min {min(r["results"]["top1"] for r in runs["new"]):.2f} % (target >= {TARGET_TOP1:.0f}), '
          f'recovery min {min(recoveries):.3f} (target >= {TARGET_RECOVERY})')
    return ratio


if __name__ == '__main__':
    main()
