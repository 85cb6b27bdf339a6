""" Calibrating CHiQPM's hierarchical prediction sets (docs/METHOD.md, "CHiQPM prediction sets and trees").

Per target coverage ``1 - alpha``: the deepest level ``n_limit`` of the prediction's path whose calibration accuracy
reaches the split-conformal quantile level ``ceil((N + 1)(1 - alpha)) / N``, then the threshold = that order statistic
of the true classes' scores at ``n_limit``. A set holds the classes whose score is at most the threshold. The
calibration is a small JSON document; :func:`qpm_timm.hub.save_pretrained` writes it beside the weights and
:func:`qpm_timm.conformal.load_calibration` reads it back.
"""
import json
import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..models.assignment import assignment_digest
from .hierarchy import SetInputs, class_members, hierarchical_scores, level_accuracy

__all__ = ['DEFAULT_TARGETS', 'CALIBRATION_PER_CLASS', 'Calibration', 'check_targets', 'check_labels',
           'conformal_rank', 'calibration_split', 'calibrate', 'predict_sets']

DEFAULT_TARGETS = (0.88, 0.90, 0.925, 0.95)  # CHiQPM's accuracy targets
CALIBRATION_PER_CLASS = 10  # CHiQPM's calibration images per class
METHOD = 'chiqpm-hierarchical'


def check_targets(targets: Sequence[float]) -> Tuple[float, ...]:
    """Coverage targets ``1 - alpha``, each strictly between 0 and 1 (a clear error otherwise)."""
    targets = tuple(float(t) for t in targets)
    if not targets:
        raise ValueError('give at least one coverage target 1 - alpha, e.g. 0.9.')
    for t in targets:
        if not 0 < t < 1:
            raise ValueError(f'coverage target {t} (alpha = 1 - target = {1 - t:g}) is outside (0, 1): a prediction '
                             f'set covers the true class with probability 1 - alpha, 0 < alpha < 1 (e.g. 0.9).')
    return targets


def check_labels(labels: np.ndarray, num_classes: int, what: str = 'calibration split') -> None:
    """Every class must have labelled images in the calibration split, and no label may lie outside the model."""
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError(f'the {what} is empty: it needs labelled images of every class.')
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f'the {what} has labels outside [0, {num_classes}): it belongs to another label set.')
    missing = np.setdiff1d(np.arange(num_classes), labels)
    if missing.size:
        raise ValueError(f'the {what} has no image of {missing.size} of the {num_classes} classes (first: '
                         f'{missing[:5].tolist()}): calibrate on a split that holds every class.')


def conformal_rank(n: int, target: float) -> int:
    """The split-conformal order statistic ``ceil((n + 1) * target)`` (textbook; torchcp 1.x, MAPIE); it must not
    exceed ``n``, else no finite threshold reaches the target with ``n`` calibration images."""
    rank = math.ceil((n + 1) * target - 1e-9)  # the tolerance keeps (n + 1) * target = integer exact
    if rank > n:
        raise ValueError(f'{n} calibration images cannot calibrate coverage {target}: it needs at least '
                         f'{math.ceil(target / (1 - target) - 1e-9)}; use more calibration images or a lower target.')
    return rank


def calibration_split(labels: np.ndarray, per_class: int = CALIBRATION_PER_CLASS, seed: int = 0):
    """``(calibration, test)`` indices: ``per_class`` images of every class drawn at random (``seed``) for the
    calibration, the others for the test. A class with no image left for the test is refused."""
    labels = np.asarray(labels)
    if per_class < 1:
        raise ValueError(f'calibration images per class must be >= 1, got {per_class}.')
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        index = np.flatnonzero(labels == c)
        if index.size <= per_class:
            raise ValueError(f'class {int(c)} has {index.size} images, {per_class} calibration images per class '
                             f'leave none to test on; lower the calibration images per class.')
        chosen.append(rng.choice(index, per_class, replace=False))
    calibration = np.sort(np.concatenate(chosen))
    return calibration, np.setdiff1d(np.arange(len(labels)), calibration)


@dataclass
class Calibration:
    """Per target: the level ``n_limit`` and the score threshold; the calibration accuracy of every level."""
    targets: List[float]
    levels: List[int]
    thresholds: List[float]
    level_accuracy: List[float]
    images: int
    assignment: str
    method: str = METHOD

    def entry(self, target: float) -> Tuple[int, float]:
        """``(level, threshold)`` of a calibrated target."""
        for t, level, threshold in zip(self.targets, self.levels, self.thresholds):
            if math.isclose(t, target):
                return level, threshold
        raise ValueError(f'coverage target {target} was not calibrated; calibrated: {self.targets}.')

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + '\n'

    @classmethod
    def from_json(cls, text: str) -> 'Calibration':
        data: Dict = json.loads(text)
        if data.get('method') != METHOD:
            raise ValueError(f'not a {METHOD} calibration (method {data.get("method")!r}).')
        return cls(**data)


def calibrate(inputs: SetInputs, weights, targets: Sequence[float] = DEFAULT_TARGETS) -> Calibration:
    """Calibrate the hierarchical sets of a QPM with the binary ``weights`` on labelled ``inputs``."""
    targets = check_targets(targets)
    members = class_members(weights)
    check_labels(inputs.labels, members.shape[0])
    n = len(inputs)
    accuracy = level_accuracy(inputs, members)
    levels, thresholds = [], []
    for target in targets:
        rank = conformal_rank(n, target)
        level = int(np.flatnonzero(accuracy * n >= rank - 1e-9).max())  # accuracy is non-increasing in depth
        scores = hierarchical_scores(inputs, members, level)[np.arange(n), inputs.labels]
        levels.append(level)
        thresholds.append(float(np.sort(scores)[rank - 1]))  # finite: >= rank true classes are on the branch
    return Calibration(list(targets), levels, thresholds, accuracy.tolist(), n, assignment_digest(weights))


def predict_sets(calibration: Calibration, inputs: SetInputs, weights, target: float) -> np.ndarray:
    """``(N, C)`` bool: the prediction set of every image for a calibrated ``target``."""
    if calibration.assignment != assignment_digest(weights):
        raise ValueError('this calibration was made for another class x feature assignment; calibrate this model.')
    level, threshold = calibration.entry(target)
    return hierarchical_scores(inputs, class_members(weights), level) <= threshold
