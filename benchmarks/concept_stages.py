"""Which stage loses a planted concept? For a ``train.py`` run on the concepts dataset (docs/METHOD.md, "Which stage
loses similar concepts"): per concept, the dense channel whose class profile follows it best (its r,
:func:`qpm_timm.metrics.concept_detectors`) and the selected features whose class profiles follow it; then

    dense detectors (r >= 0.9): D of K       stage 1: the dense model has a channel for the concept
    concepts the selection covers: S of K    stage 3: the solver kept a feature for it
    wrong class -> concept entries: E of N   stage 3: the assignment, each selected feature read as its concept
    best channel of every concept, each class its top A: E' wrong   the assignment the best channels would allow

The first count bounds the others: a concept without a detector cannot be selected or assigned. Reads the run's
``args.yaml``, ``statistics.npz`` and ``solution.json``; trains nothing (a second or two).

    python benchmarks/concept_stages.py output/train/qpm_resnet10t-concepts
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qpm_timm.data.concepts import ConceptsDataset  # noqa: E402
from qpm_timm.fit import solvable_channels  # noqa: E402
from qpm_timm.metrics import concept_detectors, learned_concepts, match_features  # noqa: E402
from qpm_timm.stats import QPMStatistics  # noqa: E402

DETECTOR_R = 0.9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('run', type=Path, help='a train.py experiment folder on the concepts dataset')
    args = p.parse_args(argv)
    missing = [n for n in ('args.yaml', 'statistics.npz', 'solution.json') if not (args.run / n).is_file()]
    if missing:
        p.error(f'{args.run} is not a finished train.py experiment folder (no {", ".join(missing)}); give the '
                f'folder train.py wrote, e.g. output/train/qpm_resnet10t-concepts.')
    run_args = yaml.safe_load((args.run / 'args.yaml').read_text())
    if run_args.get('dataset') != 'concepts':
        p.error(f'{args.run} is a run on {run_args.get("dataset")!r}; the stages need the planted concepts '
                f'(--dataset concepts).')
    data = ConceptsDataset('val', **{**(run_args.get('dataset_args') or {}), 'images_per_class': 1})  # classes only
    truth, names = data.class_concepts, data.concept_names
    stats = QPMStatistics.load(args.run / 'statistics.npz')
    solution = json.loads((args.run / 'solution.json').read_text())
    channels = solvable_channels(stats)[np.asarray(solution['selected'])]  # the QPM's features, as fit_qpm
    assignment = np.asarray(solution['assignment'], dtype=bool)

    best, r = concept_detectors(stats.A, truth)
    read_as, read_r = match_features(stats.A[channels].T, truth)  # each selected feature read as a concept
    print(f'{"concept":<20} {"best channel":>12} {"r":>6}  selected features that follow it (r)')
    for k, name in enumerate(names):
        kept = ', '.join(f'{channels[i]} ({read_r[i]:.2f})' for i in np.flatnonzero(read_as == k))
        print(f'{name:<20} {best[k]:>12d} {r[k]:>6.3f}  {kept or "-"}')
    wrong = learned_concepts(assignment, read_as, len(names)) != truth
    per_class = int(assignment.sum(1).max())
    top = np.argsort(-stats.A[best].T, axis=1, kind='stable')[:, :per_class]
    allowed = np.zeros_like(truth)
    np.put_along_axis(allowed, top, True, axis=1)
    print(f'dense detectors (r >= {DETECTOR_R}): {int((r >= DETECTOR_R).sum())} of {len(names)}')
    print(f'concepts the selection covers: {len(set(read_as[read_as >= 0].tolist()))} of {len(names)}')
    print(f'wrong class -> concept entries: {int(wrong.sum())} of {truth.size}')
    print(f'best channel of every concept, each class its top A: {int((allowed != truth).sum())} wrong')
    return 0


if __name__ == '__main__':
    sys.exit(main())
