"""CHiQPM's cost on the embedded default: wall and CPU time of ``train.py -c qpm_timm/configs/concepts_chiqpm.yaml``
over ``train.py -c qpm_timm/configs/concepts.yaml`` (docs/METHOD.md, "CHiQPM"; target: at most 1.25x).

    python benchmarks/chiqpm_overhead.py --repeats 1 --out benchmarks/results/chiqpm_overhead.txt
    python benchmarks/chiqpm_overhead.py --from-dense <run>/dense/last.pth.tar     # the stages after dense only

The two commands run one after the other in fresh processes (``--repeats`` alternating pairs, plain first), each in
its own output folder; the table gives each run's wall seconds, the CPU seconds of its process (user + system, less
sensitive to other load than the wall clock), its per-stage timings from results.json, top-1 and concept recovery,
and the median ratios. ``--from-dense`` starts both from the same trained dense checkpoint (``--skip-dense``), so
only statistics, solve, fine-tune, report and export are compared: the dense stage, identical in both recipes, is
left out, which makes the ratio larger than the whole runs'. Run it on a quiet machine.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {'plain': 'qpm_timm/configs/concepts.yaml', 'chiqpm': 'qpm_timm/configs/concepts_chiqpm.yaml'}


def _run(recipe: str, output: Path, extra) -> dict:
    """One train.py run in a fresh process: wall and CPU seconds and its results.json."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, 'train.py', '-c', recipe, '--output', str(output), '--no-progress', *extra],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    (results,) = [json.loads(p.read_text()) for p in output.glob('*/results.json')]
    return dict(wall=wall, cpu=cpu, results=results)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=1, help='alternating (plain, chiqpm) pairs')
    parser.add_argument('--from-dense', default=None, metavar='CHECKPOINT',
                        help='start both from this dense checkpoint (--skip-dense): the stages after dense only')
    parser.add_argument('--out', default=None, help='also write the table to this file')
    args = parser.parse_args(argv)
    extra = ['--initial-checkpoint', args.from_dense, '--skip-dense'] if args.from_dense else []
    rows, ratios = [], {'wall': [], 'cpu': []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            runs = {name: _run(recipe, Path(tmp) / f'{name}{r}', extra) for name, recipe in RECIPES.items()}
            for name, run in runs.items():
                res = run['results']
                rows.append(f"| {r} | {name} | {run['wall']:.1f} | {run['cpu']:.1f} | {res['top1']:.2f} | "
                            f"{res.get('concept_recovery', float('nan')):.3f} | "
                            f"{json.dumps(res['timings'], separators=(',', ':'))} |")
                print(rows[-1], flush=True)
            for key in ratios:
                ratios[key].append(runs['chiqpm'][key] / runs['plain'][key])
    scope = 'stages after dense (--from-dense)' if args.from_dense else 'whole runs'
    lines = [f'CHiQPM over plain QPM on the embedded default, {scope}, {args.repeats} pair(s)',
             '| pair | recipe | wall s | CPU s | top-1 | recovery | timings (s) |', '|---|---|---|---|---|---|---|',
             *rows,
             f"median ratio chiqpm / plain: wall {statistics.median(ratios['wall']):.3f}, "
             f"CPU {statistics.median(ratios['cpu']):.3f}"]
    print(lines[-1])
    if args.out:
        Path(args.out).write_text('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
