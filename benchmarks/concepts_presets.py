"""Does the QPM recover the planted concepts when they get harder? The README's main command on every named preset
of the concepts dataset (``CONCEPT_PRESETS``: default, many, outlines, clutter, shortcut, hard, similar, hardest),
over seeds.

For every preset and seed: ``train.py -c qpm_timm/configs/concepts.yaml --dataset-args "{preset: P}" --seed S``
(the embedded default's recipe, with ``--n-features`` / ``--n-per-class`` set to the preset's number of concepts and
concepts per class: a QPM that can hold every planted concept), then ``validate.py`` on its export, both run in this
process as a user runs them (``runpy``). Prints one row per run (validation top-1, concept recovery, plausibility,
feature grounding; docs/METHOD.md, "Interpretability metrics" and "Explanation metrics"), then per preset

    <preset>  top-1 mean T % (min t)  recovery median R (min r)  over N seeds

The full sweep is 8 presets x 3 seeds of the 2-4 minute default run (about an hour on 2 idle cores as two
one-thread processes, each with its own presets and ``OMP_NUM_THREADS=1``; ``benchmarks/RESULTS.md``):

    python benchmarks/concepts_presets.py --seeds 0 1 2 --output /tmp/presets

``similar`` (96 classes of 150 training images, the recovery target of docs/METHOD.md, "What the dense stage needs:
images per concept") takes about 10 minutes a run as one of two one-thread processes; its rows at 100 images per
class in ``benchmarks/RESULTS.md`` add ``--dataset-args "{preset: similar, images_per_class: 100}"`` (through
``--``; train.py's own validation then has 100 per class too, the printed numbers are validate.py's on 25):

    python benchmarks/concepts_presets.py --presets similar --seeds 0 1 2 3

``--tiny`` trains one epoch at 32 px on 6 classes of 6 images (a smoke test of the sweep, numbers meaningless);
arguments after ``--`` go to every train.py call.
"""
import argparse
import json
import runpy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qpm_timm.data.concepts import CONCEPT_PRESETS, concept_settings  # noqa: E402  (the repository root first)

CONFIG = Path('qpm_timm') / 'configs' / 'concepts.yaml'
TINY_TRAIN = ['--epochs', '1', '--finetune-epochs', '1', '--img-size', '32', '--n-features', '6', '--n-per-class', '2',
              '--solver-effort', '1', '--solver-time-limit', '30', '--no-report']
TINY_DATA = dict(num_classes=6, images_per_class=6)
FIELDS = ('top1', 'concept_recovery', 'plausibility', 'feature_grounding')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--presets', nargs='+', default=list(CONCEPT_PRESETS), choices=list(CONCEPT_PRESETS))
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--output', default=None, help='folder for the runs (default: a temporary folder)')
    p.add_argument('--tiny', action='store_true', help='a tiny model and datasets, one epoch (a smoke test)')
    p.add_argument('train_args', nargs='*', help='extra train.py arguments, after --')
    return p.parse_args(argv)


def _script(name: str, argv: List[str]) -> None:
    """``python <name> argv`` in this process; a non-zero exit is an error."""
    saved = sys.argv
    sys.argv = [str(ROOT / name), *argv]
    try:
        runpy.run_path(str(ROOT / name), run_name='__main__')
    except SystemExit as e:
        if e.code not in (None, 0):
            raise RuntimeError(f'{name} {" ".join(argv)} exited with {e.code}') from None
    finally:
        sys.argv = saved


def run_one(preset: str, seed: int, folder: Path, args) -> Dict[str, float]:
    """Train on ``preset`` with ``seed``, validate the export; the validation's numbers and the wall time."""
    dataset_args = dict(preset=preset, **(TINY_DATA if args.tiny else {}))
    experiment = f'{preset}-{seed}'
    if args.tiny:
        extra = TINY_TRAIN
    else:  # one QPM feature per planted concept, as many per class as planted
        settings = concept_settings(preset)
        extra = ['--n-features', str(settings['num_concepts']), '--n-per-class', str(settings['concepts_per_class'])]
    start = time.perf_counter()
    _script('train.py', ['-c', str(ROOT / CONFIG), '--dataset-args', json.dumps(dataset_args), '--seed', str(seed),
                         '--output', str(folder), '--experiment', experiment, '--no-progress', *extra,
                         *args.train_args])
    results = folder / f'{experiment}.json'
    _script('validate.py', ['--model', f'local-dir:{folder / experiment / "export"}', '--pretrained',
                            '--dataset-args', json.dumps(dataset_args), '--workers', '0', '--no-progress',
                            *(['--img-size', '32'] if args.tiny else []),
                            '--results-file', str(results)])
    row = json.loads(results.read_text())
    return dict({k: row.get(k, float('nan')) for k in FIELDS}, wall=time.perf_counter() - start)


def main(argv=None) -> None:
    args = parse_args(argv)
    folder = Path(args.output or tempfile.mkdtemp(prefix='concepts_presets_'))
    print(f'{"preset":<9} {"seed":>4} {"top-1 %":>8} {"recovery":>9} {"plausib.":>9} {"grounding":>9} {"wall s":>7}',
          flush=True)
    rows: Dict[str, List[Dict[str, float]]] = {}
    for preset in args.presets:
        for seed in args.seeds:
            r = run_one(preset, seed, folder, args)
            rows.setdefault(preset, []).append(r)
            print(f'{preset:<9} {seed:>4} {r["top1"]:>8.2f} {r["concept_recovery"]:>9.3f} {r["plausibility"]:>9.3f} '
                  f'{r["feature_grounding"]:>9.3f} {r["wall"]:>7.1f}', flush=True)
    print()
    for preset, runs in rows.items():
        top1 = [r['top1'] for r in runs]
        recovery = [r['concept_recovery'] for r in runs]
        print(f'{preset:<9} top-1 mean {statistics.mean(top1):.2f} % (min {min(top1):.2f})  recovery median '
              f'{statistics.median(recovery):.3f} (min {min(recovery):.3f})  over {len(runs)} seeds')


if __name__ == '__main__':
    main()
