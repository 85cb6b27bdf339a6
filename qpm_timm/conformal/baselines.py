""" The baseline prediction sets APS and LAC (THR) on the same logits, from MAPIE (docs/METHOD.md, "CHiQPM
prediction sets and trees"): a maintained library whose split-conformal quantile is the textbook
``ceil((N + 1)(1 - alpha)) / N``, with only numpy, scipy and scikit-learn as dependencies."""
from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from .calibration import check_labels, check_targets
from .hierarchy import SetInputs

__all__ = ['BASELINES', 'baseline_sets']

BASELINES = ('aps', 'lac')  # MAPIE's names; CHiQPM's code calls LAC "THR"


class _Probabilities(ClassifierMixin, BaseEstimator):
    """A fitted classifier whose input already is the class probabilities (MAPIE's prefit estimator)."""

    def __init__(self, num_classes: int = 2):
        self.num_classes = num_classes
        self.classes_ = np.arange(num_classes)

    def fit(self, x, y=None):
        return self

    def predict_proba(self, x):
        return np.asarray(x)

    def predict(self, x):
        return np.asarray(x).argmax(1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def baseline_sets(method: str, calibration: SetInputs, test: SetInputs, targets: Sequence[float],
                  seed: int = 0) -> np.ndarray:
    """``(N_test, C, len(targets))`` bool: MAPIE's split-conformal sets of ``method`` ('aps' or 'lac') on the
    softmax of the logits, calibrated on ``calibration``. MAPIE randomises APS's calibration scores (score - U p,
    ``U`` uniform): seeded with ``seed``, so the sets are reproducible; a set includes its last class (no random
    removal)."""
    from mapie.classification import SplitConformalClassifier
    if method not in BASELINES:
        raise ValueError(f'unknown baseline {method!r}; choose one of {BASELINES}.')
    targets = check_targets(targets)
    num_classes = calibration.logits.shape[1]
    check_labels(calibration.labels, num_classes)
    predictor = SplitConformalClassifier(_Probabilities(num_classes), confidence_level=list(targets),
                                         conformity_score=method, prefit=True, random_state=seed)
    predictor.conformalize(_softmax(calibration.logits), calibration.labels)
    _, sets = predictor.predict_set(_softmax(test.logits))
    return sets.astype(bool)
