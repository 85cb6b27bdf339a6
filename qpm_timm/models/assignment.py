""" The class -> feature assignment of a QPM: every class's features, its table and its digest.

The whole decision process of a QPM is its binary assignment ``W`` (every class = ``n_wc`` of the ``n_f*``
shared features), so the global explanation is a table (docs/EXPLANATIONS.md; :mod:`qpm_timm.explain` re-exports it),
and a calibration of the prediction sets fits the one assignment whose digest it records (:mod:`qpm_timm.conformal`).
"""
import hashlib
from typing import List, Optional, Sequence

import numpy as np
import torch

__all__ = ['class_features', 'feature_names', 'class_feature_table', 'model_feature_table', 'assignment_digest']


def feature_names(selection: Sequence[int]) -> List[str]:
    """Names of the kept features when nothing better is known: ``f<j> (ch <channel>)``."""
    return [f'f{j} (ch {int(c)})' for j, c in enumerate(selection)]


def class_features(assignment: torch.Tensor) -> List[List[int]]:
    """Indices of the features of every class (rows of the binary ``W``)."""
    return [torch.nonzero(row > 0).flatten().tolist() for row in torch.as_tensor(assignment)]


def class_feature_table(
        assignment: torch.Tensor,
        class_names: Optional[Sequence[str]] = None,
        names: Optional[Sequence[str]] = None,
        max_rows: Optional[int] = None,
) -> str:
    """Markdown table ``class | features`` of a binary assignment, plus how many classes share each feature."""
    assignment = torch.as_tensor(assignment)
    num_classes, n = assignment.shape
    class_names = list(class_names) if class_names is not None else [f'class {c}' for c in range(num_classes)]
    names = list(names) if names is not None else [f'f{j}' for j in range(n)]
    if len(class_names) != num_classes or len(names) != n:
        raise ValueError(f'need {num_classes} class names and {n} feature names, '
                         f'got {len(class_names)} and {len(names)}.')
    lines = ['| class | features |', '|---|---|']
    rows = class_features(assignment)
    for c, feats in enumerate(rows[:max_rows] if max_rows else rows):
        lines.append(f'| {class_names[c]} | {", ".join(names[j] for j in feats)} |')
    if max_rows and num_classes > max_rows:
        lines.append(f'| ... | ({num_classes - max_rows} more classes) |')
    usage = (assignment > 0).sum(0).tolist()
    lines += ['', 'classes per feature: ' + ', '.join(f'{names[j]}: {u}' for j, u in enumerate(usage))]
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
