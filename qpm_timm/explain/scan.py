""" One pass of a QPM over a dataset (the validation set) gathering everything the report needs from it.

Per image it keeps the pooled activations of the ``n_f*`` kept features (for the feature names and the
heatmap scale), the prediction, the logit of the true class and the Spatial Inter-feature Diversity (SID,
:func:`qpm_timm.metrics.sid_at_k`) of the true class's features; alongside, the feature gallery of this
dataset (:class:`GalleryCollector`). Memory: ``O(N * n_f*)`` numbers, no images or maps.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from ..data.loader import create_qpm_loader
from ..forward import ForwardBatch, forward_pass
from ..metrics import sid_at_k
from .gallery import GALLERY_K, FeatureGallery, GalleryCollector

__all__ = ['DatasetScan', 'scan_dataset', 'class_examples']


@dataclass
class DatasetScan:
    """Per-image numbers of a QPM over a dataset, in dataset order."""
    pooled: torch.Tensor  # (N, n_f*) pooled activations, before the head's normalisation
    targets: np.ndarray  # (N,) labels
    predictions: np.ndarray  # (N,) predicted classes
    class_logit: np.ndarray  # (N,) logit of the true class
    diversity: np.ndarray  # (N,) SID@n_wc of the true class's features (where they fired: 1 = all apart)
    gallery: FeatureGallery  # this dataset's top-k images of every kept feature


def scan_dataset(
        model,
        dataset,
        batch_size: int = 64,
        num_workers: int = 0,
        device='cpu',
        amp: bool = False,
        progress: bool = False,
        k: int = GALLERY_K,
        desc: str = 'explanations: validation pass',
        observers: Sequence[Callable[[ForwardBatch], None]] = (),
) -> DatasetScan:
    """:class:`DatasetScan` of QPM ``model`` over ``dataset`` (eval transform) in one pass, on which ``observers``
    ride along."""
    weights = model.class_weights.detach().float()
    gallery = GalleryCollector(k, channels=model.head.selection.cpu())
    parts: List[tuple] = []

    def record(batch: ForwardBatch) -> None:
        targets = torch.as_tensor(batch.targets).to(batch.logits.device, torch.long)
        sid = sid_at_k(batch.feature_maps, weights.to(batch.logits.device), targets, k=model.n_per_class)
        parts.append((batch.pooled.float().cpu(), targets.cpu(), batch.logits.argmax(1).cpu(),
                      batch.logits.float().gather(1, targets[:, None])[:, 0].cpu(), sid.cpu()))

    loader = create_qpm_loader(dataset, batch_size, num_workers=num_workers)
    forward_pass(model, loader, [record, gallery, *observers], device, amp, progress, desc=desc)
    if not parts:
        raise ValueError('the validation dataset is empty: the report needs example images.')
    pooled, targets, predictions, class_logit, diversity = (torch.cat(p) for p in zip(*parts))
    return DatasetScan(pooled, targets.numpy(), predictions.numpy(), class_logit.numpy(),
                       diversity.numpy(), gallery.gather())


def class_examples(scan: DatasetScan, num_classes: int) -> List[Optional[int]]:
    """Per class, the dataset index of its example image (None for a class without images).

    Among the correctly classified images of the class, the one where the class's features fire strongly and
    in different places: the largest product of the SID of its features and the rank of its class logit among
    the class's images (in (0, 1]). A class without a correctly classified image gets its highest-logit image.
    """
    examples: List[Optional[int]] = []
    for c in range(num_classes):
        members = np.flatnonzero(scan.targets == c)
        if members.size == 0:
            examples.append(None)
            continue
        logit = scan.class_logit[members]
        rank = (np.argsort(np.argsort(logit, kind='stable'), kind='stable') + 1) / members.size
        correct = scan.predictions[members] == c
        if correct.any():
            score = np.where(correct, np.nan_to_num(scan.diversity[members]) * rank, -np.inf)
        else:
            score = logit
        examples.append(int(members[int(np.argmax(score))]))
    return examples
