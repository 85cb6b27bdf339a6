""" The class -> feature assignment of a QPM: every class's features, its table and its digest.

The whole decision process of a QPM is its binary assignment ``W`` (every class = ``n_wc`` of the ``n_f*``
shared features), so the global explanation is a table (docs/EXPLANATIONS.md; :mod:`qpm_timm.explain` re-exports it),
and a calibration of the prediction sets fits the one assignment whose digest it records (:mod:`qpm_timm.conformal`).
"""
import hashlib
from typing import List, Optional, Sequence

import numpy as np
import torch

__all__ = ['class_features', 'feature_names', 'class_feature_table', 'model_feature_table', 'assignment_digest',
           'is_binary', 'weights_per_class']


def feature_names(selection: Sequence[int]) -> List[str]:
    """Names of the kept features when nothing better is known: ``f<j> (ch <channel>)``."""
    return [f'f{j} (ch {int(c)})' for j, c in enumerate(selection)]


def is_binary(weights) -> bool:
    """True for a QPM's 0/1 assignment; False for a baseline's real-valued sparse weights."""
    w = torch.as_tensor(weights)
    return bool(torch.all((w == 0) | (w == 1)))


def weights_per_class(weights) -> str:
    """The measured number of nonzero weights per class, e.g. ``3 per class`` or ``3.00 per class on average
    (1 to 6)``: a baseline's sparsity is what its path point gives, not a fixed ``n_wc``."""
    counts = (torch.as_tensor(weights) != 0).sum(1)
    if counts.numel() and int(counts.min()) == int(counts.max()):
        return f'{int(counts[0])} per class'
    return f'{float(counts.float().mean()):.2f} per class on average ({int(counts.min())} to {int(counts.max())})'


def class_features(assignment: torch.Tensor) -> List[List[int]]:
    """Indices of the features of every class (rows of the binary ``W``)."""
    return [torch.nonzero(row > 0).flatten().tolist() for row in torch.as_tensor(assignment)]


def class_feature_table(
        assignment: torch.Tensor,
        class_names: Optional[Sequence[str]] = None,
        names: Optional[Sequence[str]] = None,
        max_rows: Optional[int] = None,
) -> str:
    """Markdown table ``class | features`` of a binary assignment, plus how many classes share each feature; for
    real-valued sparse weights (a baseline's head) every nonzero feature with its signed weight and the measured
    number of weights per class."""
    assignment = torch.as_tensor(assignment)
    num_classes, n = assignment.shape
    class_names = list(class_names) if class_names is not None else [f'class {c}' for c in range(num_classes)]
    names = list(names) if names is not None else [f'f{j}' for j in range(n)]
    if len(class_names) != num_classes or len(names) != n:
        raise ValueError(f'need {num_classes} class names and {n} feature names, '
                         f'got {len(class_names)} and {len(names)}.')
    binary = is_binary(assignment)
    lines = ['| class | features |' if binary else '| class | features (signed weights) |', '|---|---|']
    rows = class_features(assignment) if binary else \
        [torch.nonzero(row != 0).flatten().tolist() for row in assignment]
    for c, feats in enumerate(rows[:max_rows] if max_rows else rows):
        cells = [names[j] if binary else f'{names[j]} ({float(assignment[c, j]):+.3g})' for j in feats]
        lines.append(f'| {class_names[c]} | {", ".join(cells)} |')
    if max_rows and num_classes > max_rows:
        lines.append(f'| ... | ({num_classes - max_rows} more classes) |')
    usage = (assignment != 0).sum(0).tolist()
    lines += ['', 'classes per feature: ' + ', '.join(f'{names[j]}: {u}' for j, u in enumerate(usage))]
    if not binary:
        lines.append(f'nonzero weights: {weights_per_class(assignment)}, over {sum(u > 0 for u in usage)} of '
                     f'{n} features')
    return '\n'.join(lines)


def model_feature_table(
        model,
        class_names: Optional[Sequence[str]] = None,
        max_rows: Optional[int] = None,
        names: Optional[Sequence[str]] = None,
) -> str:
    """:func:`class_feature_table` of a QPM; its features carry ``names`` (e.g. the annotation names of
    :func:`qpm_timm.explain.name_features`), else their backbone channel (:func:`feature_names`)."""
    names = names if names is not None else feature_names(model.head.selection.tolist())
    return class_feature_table(model.class_weights.cpu(), class_names, names, max_rows)


def assignment_digest(weights) -> str:
    """A short digest of the binary ``W``: a calibration only fits the assignment it was made for."""
    w = np.ascontiguousarray(np.asarray(weights) > 0, dtype=np.uint8)
    return hashlib.sha1(w.tobytes() + str(w.shape).encode()).hexdigest()[:16]
