"""The prediction sets of a run (docs/METHOD.md, "CHiQPM prediction sets and trees"): ``train.py`` and
``validate.py`` calibrate on ``--calibration-per-class`` random images of every class of the evaluated split
(``--calibration-seed``) and measure the three methods on the rest of it."""
import argparse
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..conformal import (
    CALIBRATION_PER_CLASS,
    DEFAULT_TARGETS,
    Calibration,
    calibrate,
    calibration_split,
    check_targets,
    compare_sets,
    cosine_similarity,
    flat_results,
    format_table,
    jaccard_similarity,
    set_inputs,
)
from .cli import UsageError
from .evaluate import Evaluation

__all__ = ['add_set_args', 'check_set_args', 'check_set_split', 'class_similarity', 'run_sets']


def add_set_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The prediction-set flags of ``train.py`` and ``validate.py``."""
    group = parser.add_argument_group('Prediction sets (CHiQPM; APS and LAC baselines)')
    group.add_argument('--set-targets', type=float, nargs='+', default=list(DEFAULT_TARGETS), metavar='T',
                       help='coverage targets 1 - alpha, each in (0, 1) (default: %(default)s)')
    group.add_argument('--calibration-per-class', type=int, default=CALIBRATION_PER_CLASS, metavar='N',
                       help='calibration images per class, drawn from the evaluated split; the sets are measured '
                            'on the rest (default: %(default)s)')
    group.add_argument('--calibration-seed', type=int, default=0, metavar='S',
                       help='seed of the calibration / test split (default: %(default)s)')
    return group


def check_set_args(args) -> None:
    """Refuse bad set flags before any work."""
    try:
        check_targets(args.set_targets)
    except ValueError as e:
        raise UsageError(f'--set-targets: {e}') from e
    if args.calibration_per_class < 1:
        raise UsageError(f'--calibration-per-class must be >= 1, got {args.calibration_per_class}.')


def check_set_split(dataset, args) -> None:
    """Refuse, before any pass, a split that cannot be split into calibration and test images (a class with too
    few images) -- where the dataset lists its labels (``targets``); others are checked after the pass."""
    labels = getattr(dataset, 'targets', None)
    if labels is not None:
        calibration_split(np.asarray(labels), args.calibration_per_class, args.calibration_seed)


def class_similarity(dataset) -> Optional[np.ndarray]:
    """The class similarity of SetCoherence: Jaccard of the planted concept sets (concepts dataset), cosine of the
    class-attribute vectors (CUB with ``attributes/class_attribute_labels_continuous.txt``), else None."""
    if getattr(dataset, 'class_concepts', None) is not None:
        return jaccard_similarity(dataset.class_concepts)
    if getattr(dataset, 'class_attributes', None) is not None:
        return cosine_similarity(dataset.class_attributes)
    return None


def run_sets(model, evaluation: Evaluation, dataset, args) -> Tuple[Calibration, Dict[str, Any], str]:
    """Calibrate on a random part of the evaluated split and measure CHiQPM, APS and LAC on the rest: the
    calibration (for the export), the results (``coverage@<target>``, ``set_size@...``, ``aps_coverage@...``) and
    their table (Markdown, with a line saying how it was measured)."""
    weights = model.class_weights.detach().cpu()
    inputs = set_inputs(model, evaluation.pooled, evaluation.labels)
    cal, test = calibration_split(inputs.labels, args.calibration_per_class, args.calibration_seed)
    results = compare_sets(inputs.subset(cal), inputs.subset(test), weights, args.set_targets,
                           class_similarity(dataset))
    calibration = calibrate(inputs.subset(cal), weights, args.set_targets)
    table = (f'prediction sets: calibrated on {len(cal)} images ({args.calibration_per_class} per class, seed '
             f'{args.calibration_seed}), measured on the other {len(test)}; CHiQPM levels '
             f'{dict(zip(calibration.targets, calibration.levels))}\n' + format_table(results))
    return calibration, flat_results(results), table
