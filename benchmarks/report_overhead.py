"""What the explanation report adds to the embedded default's training run (docs/EXPLANATIONS.md, "The report").

Measured: the wall time of ``python train.py -c qpm_timm/configs/concepts.yaml`` with the report (the default: the
feature gallery rides along the statistics pass, then ``report/`` is drawn and embedded in the export) and with
``--no-report``, each in a fresh process, in the same run, alternately (report first on even rounds, last on odd
ones) so that a drift in machine load hits both. Every run uses the same seed, so both train the same model; the
solver's answer is fixed by its effort (not by the clock), so the runs differ only by the report.

Prints one row per run (wall and CPU seconds), the medians, the files of the last report and
``ratio: R (target <= 1.15)`` with R the ratio of the median wall times report / no-report, then the same ratio of
CPU seconds (user + system of the train.py process), which a busy machine disturbs much less than wall time.
Arguments after ``--`` go to both train.py runs (a smaller run for a test).

Example (CPU, 2 cores; about 10 minutes):

    python benchmarks/report_overhead.py --output /tmp/report_overhead
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

from _common import load_text

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.15


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default=str(ROOT / 'qpm_timm' / 'configs' / 'concepts.yaml'),
                   help='train.py recipe (default: the embedded default)')
    p.add_argument('--reps', type=int, default=1, help='runs per setting (alternating)')
    p.add_argument('--output', default=None, help='folder for the runs (default: a temporary folder)')
    p.add_argument('train_args', nargs='*', help='extra train.py arguments, after --')
    return p.parse_args(argv)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_train(config: str, output: Path, report: bool, extra: List[str]) -> Tuple[float, float]:
    """Wall and CPU seconds of one train.py process (the whole command, as a user waits for it)."""
    cmd = [sys.executable, str(ROOT / 'train.py'), '-c', config, '--output', str(output), '--no-progress',
           '--report' if report else '--no-report', *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
    t0, cpu0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        sys.exit(f'failed: {" ".join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}')
    return seconds, cpu


def main(argv=None) -> float:
    args = parse_args(argv)
    out = Path(args.output or tempfile.mkdtemp(prefix='report_overhead_'))
    print(f'{load_text()}; config {os.path.relpath(args.config, ROOT)}; extra args {args.train_args or "none"}')
    times, cpus = {True: [], False: []}, {True: [], False: []}
    for i in range(args.reps):
        for report in ((True, False) if i % 2 == 0 else (False, True)):
            folder = out / f'{"report" if report else "no-report"}-{i}'
            seconds, cpu = run_train(args.config, folder, report, args.train_args)
            times[report].append(seconds)
            cpus[report].append(cpu)
            print(f'round {i}  {"report   " if report else "no-report"}  {seconds:8.1f} s  cpu {cpu:8.1f} s  '
                  f'({load_text()})', flush=True)
    with_report, without = statistics.median(times[True]), statistics.median(times[False])
    report_dir = next((out / f'report-{args.reps - 1}').glob('*/report'))
    files = sorted(str(p.relative_to(report_dir)) for p in report_dir.rglob('*') if p.is_file())
    print(f'report files ({len(files)}) in {report_dir}: ' + ', '.join(files))
    print(f'median wall time: report {with_report:.1f} s, no-report {without:.1f} s')
    ratio = with_report / without
    print(f'ratio: {ratio:.2f} (target <= {TARGET})')
    print(f'cpu ratio: {statistics.median(cpus[True]) / statistics.median(cpus[False]):.2f}')
    return ratio


if __name__ == '__main__':
    main()
