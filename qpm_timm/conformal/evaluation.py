""" How good prediction sets are (docs/METHOD.md, "CHiQPM prediction sets and trees"): coverage, mean size and
SetCoherence, for CHiQPM's hierarchical sets and the APS / LAC baselines on the same split, and the coverage
guarantee checked over many random calibration / test splits."""
import math
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import numpy as np

from ..metrics import cosine_similarity
from .baselines import BASELINES, baseline_sets
from .calibration import (
    CALIBRATION_PER_CLASS,
    DEFAULT_TARGETS,
    calibrate,
    calibration_split,
    check_targets,
    predict_sets,
)
from .hierarchy import SetInputs

__all__ = ['METHODS', 'jaccard_similarity', 'cosine_similarity', 'set_coherence', 'set_metrics', 'compare_sets',
           'coverage_over_splits', 'coverage_slack', 'format_table', 'flat_results']

METHODS = ('chiqpm',) + BASELINES


def jaccard_similarity(class_concepts: np.ndarray) -> np.ndarray:
    """``(C, C)`` Jaccard index of the classes' planted concept sets (the generated concepts dataset)."""
    a = np.asarray(class_concepts, dtype=bool).astype(np.float64)
    inter = a @ a.T
    union = a.sum(1)[:, None] + a.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def set_coherence(sets: np.ndarray, similarity: np.ndarray) -> float:
    """SetCoherence: the mean similarity of the pairs of different classes in the same set, pooled over the sets of at
    least two classes (a set of ``m`` classes adds its ``m (m - 1)`` ordered pairs, as CHiQPM's code counts them);
    NaN when no set has two classes."""
    s = np.asarray(sets, dtype=np.float64)
    sim = np.asarray(similarity, dtype=np.float64)
    total = np.einsum('nc,cd,nd->', s, sim, s) - s.sum(0) @ np.diag(sim)  # every ordered pair of different classes
    size = s.sum(1)
    pairs = float((size * (size - 1)).sum())
    return float(total / pairs) if pairs else float('nan')


def set_metrics(sets: np.ndarray, labels: np.ndarray, similarity: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Coverage (share of sets holding the true class), mean set size and, with a class similarity, SetCoherence."""
    sets = np.asarray(sets, dtype=bool)
    out = dict(coverage=float(sets[np.arange(len(labels)), labels].mean()), size=float(sets.sum(1).mean()))
    if similarity is not None:
        out['coherence'] = set_coherence(sets, similarity)
    return out


def compare_sets(calibration: SetInputs, test: SetInputs, weights, targets: Sequence[float] = DEFAULT_TARGETS,
                 similarity: Optional[np.ndarray] = None) -> Dict[str, Dict[float, Dict[str, float]]]:
    """``{method: {target: metrics}}`` of the three methods calibrated on ``calibration``, measured on ``test``."""
    targets = check_targets(targets)
    hierarchical = calibrate(calibration, weights, targets)
    results = dict(chiqpm={t: set_metrics(predict_sets(hierarchical, test, weights, t), test.labels, similarity)
                           for t in targets})
    for method in BASELINES:
        sets = baseline_sets(method, calibration, test, targets)
        results[method] = {t: set_metrics(sets[:, :, i], test.labels, similarity) for i, t in enumerate(targets)}
    return results


def _mean(values: Sequence[float]) -> float:
    """The mean of the values that are not NaN (a split whose sets are all single classes has no SetCoherence);
    NaN when none is."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float('nan')


def coverage_slack(target: float, n_calibration: int, n_test: int, splits: int) -> float:
    """How far below ``target`` the mean coverage of ``splits`` random splits may fall by chance: 3 standard errors,
    the coverage of one split varying as Beta (the calibration's order statistic) plus Binomial (the test images)."""
    alpha = 1 - target
    var = alpha * target / (n_calibration + 2) + alpha * target / n_test
    return 3 * math.sqrt(var / splits)


def coverage_over_splits(inputs: SetInputs, weights, targets: Sequence[float] = DEFAULT_TARGETS, splits: int = 20,
                         per_class: int = CALIBRATION_PER_CLASS, similarity: Optional[np.ndarray] = None,
                         seed: int = 0) -> Dict[str, Dict[float, Dict[str, float]]]:
    """``{method: {target: mean metrics}}`` over ``splits`` random calibration / test splits of ``inputs``, with the
    ``slack`` of :func:`coverage_slack` and ``min_coverage``."""
    runs = []
    for k in range(splits):
        cal, test = calibration_split(inputs.labels, per_class, seed + k)
        runs.append(compare_sets(inputs.subset(cal), inputs.subset(test), weights, targets, similarity))
    n_cal, n_test = len(cal), len(test)
    out: Dict = OrderedDict()
    for method in METHODS:
        out[method] = OrderedDict()
        for t in check_targets(targets):
            rows = [run[method][t] for run in runs]
            mean = {key: _mean([r[key] for r in rows]) for key in rows[0]}
            mean['min_coverage'] = float(min(r['coverage'] for r in rows))
            mean['slack'] = coverage_slack(t, n_cal, n_test, splits)
            out[method][t] = mean
    return out


def _cell(value: float, digits: int) -> str:
    return '–' if math.isnan(value) else f'{value:.{digits}f}'


def format_table(results: Dict[str, Dict[float, Dict[str, float]]]) -> str:
    """A Markdown table: a row per target, coverage / mean size (/ SetCoherence; '–' where no set held two classes)
    per method."""
    methods = list(results)
    first = results[methods[0]]
    keys = [k for k in ('coverage', 'size', 'coherence') if k in next(iter(first.values()))]
    names = dict(chiqpm='CHiQPM', aps='APS', lac='LAC', coverage='coverage', size='size', coherence='coherence')
    head = ['target'] + [f'{names[m]} {names[k]}' for m in methods for k in keys]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for t in first:
        cells = [f'{t:g}'] + [_cell(results[m][t][k], 2 if k == 'size' else 3) for m in methods for k in keys]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def flat_results(results: Dict[str, Dict[float, Dict[str, float]]]) -> Dict[str, float]:
    """``{'coverage@0.9': ..., 'set_size@0.9': ..., 'aps_coverage@0.9': ...}``: the results files' keys (the
    hierarchical sets unprefixed); a SetCoherence is absent where no set held two classes."""
    flat = OrderedDict()
    for method, per_target in results.items():
        prefix = '' if method == 'chiqpm' else f'{method}_'
        for t, metrics in per_target.items():
            for key, name in (('coverage', 'coverage'), ('size', 'set_size'), ('coherence', 'set_coherence')):
                if key in metrics and not math.isnan(metrics[key]):
                    flat[f'{prefix}{name}@{t:g}'] = round(metrics[key], 4)
    return flat
