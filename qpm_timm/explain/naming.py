""" Names for QPM features from the dataset's annotations.

A feature is named by the annotation its pooled activation tracks best over the images: the largest signed
Pearson correlation, found by :func:`qpm_timm.metrics.match_features`, the same matching that
:func:`qpm_timm.metrics.concept_recovery` scores, so on the generated concepts dataset a feature's name is its
matched planted concept. Annotations: the concepts dataset's ``concept_presence`` (which concepts each image
shows); CUB's 312 per-image attributes (``attributes/image_attribute_labels.txt``), else its class-level
attribute percentages repeated per image. Without annotations a feature keeps its channel name ``f<j> (ch c)``.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..metrics import annotation_correlation, match_features
from ..models.assignment import feature_names

__all__ = ['FeatureNames', 'dataset_annotations', 'name_features']


@dataclass
class FeatureNames:
    """Names of the kept features (index ``j`` = the ``j``-th kept feature)."""
    labels: List[str]  # shown in every picture and table: 'f3 ≈ disk (r = 0.93)', or 'f3 (ch 34)'
    annotation: List[Optional[str]]  # the matched annotation, None when unmatched or without annotations
    correlation: List[float]  # its Pearson correlation (0 when unmatched)
    top: List[List[Tuple[str, float]]]  # the most correlated annotations, best first
    source: str  # where the annotations come from ('' without annotations)

    def short(self, j: int) -> str:
        """A compact label for axes: ``f3 disk`` (or ``f3``)."""
        return f'f{j} {self.annotation[j]}' if self.annotation[j] else f'f{j}'


def dataset_annotations(dataset) -> Optional[Tuple[np.ndarray, List[str], str]]:
    """``(values (N, K), names, source)`` of the per-image annotations of ``dataset``, or None (module docstring)."""
    if getattr(dataset, 'concept_presence', None) is not None:
        return np.asarray(dataset.concept_presence), list(dataset.concept_names), 'planted concepts'
    image_attributes = getattr(dataset, 'image_attributes', None)
    values, source = (image_attributes() if callable(image_attributes) else None), 'per-image attributes'
    if values is None and getattr(dataset, 'class_attributes', None) is not None:
        values, source = dataset.class_attributes[np.asarray(dataset.targets)], 'class attribute percentages'
    if values is None:
        return None
    names = getattr(dataset, 'attribute_names', None) or [f'attribute {a + 1}' for a in range(values.shape[1])]
    return np.asarray(values), list(names), source


def name_features(
        selection: Sequence[int],
        pooled: Optional[torch.Tensor] = None,
        annotations: Optional[np.ndarray] = None,
        annotation_names: Optional[Sequence[str]] = None,
        source: str = '',
        top: int = 3,
) -> FeatureNames:
    """Name the kept features (backbone channels ``selection``) by the annotations their pooled activations
    ``(N, n_f*)`` correlate with best over the same ``N`` images (``annotations`` ``(N, K)``)."""
    n = len(selection)
    fallback = feature_names(selection)
    if annotations is None:
        return FeatureNames(fallback, [None] * n, [0.0] * n, [[] for _ in range(n)], '')
    pooled = torch.as_tensor(pooled).detach().float().cpu().numpy()
    if pooled.shape[1] != n:
        raise ValueError(f'pooled has {pooled.shape[1]} features, the selection {n}')
    if annotation_names is None or len(annotation_names) != np.shape(annotations)[1]:
        raise ValueError(f'need one name per annotation column ({np.shape(annotations)[1]})')
    matching, best = match_features(pooled, annotations)
    corr = annotation_correlation(pooled, annotations)
    labels, matched, ranked = [], [], []
    for j in range(n):
        order = [int(k) for k in np.argsort(-corr[j], kind='stable')[:top] if np.isfinite(corr[j, k])]
        ranked.append([(annotation_names[k], float(corr[j, k])) for k in order] if matching[j] >= 0 else [])
        name = annotation_names[matching[j]] if matching[j] >= 0 else None
        matched.append(name)
        labels.append(f'f{j} ≈ {name} (r = {best[j]:.2f})' if name else fallback[j])
    return FeatureNames(labels, matched, [float(r) for r in best], ranked, source)
