"""The one evaluation loop: accuracy (and, on request, SID@k and the pooled features) over a loader, on
:func:`qpm_timm.forward.forward_pass` like every other pass over data."""
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from timm.utils import accuracy
from torch import nn

from ..forward import ForwardBatch, forward_pass
from ..metrics import concept_recovery, sid_at_k

__all__ = ['Evaluation', 'evaluate', 'recovery_of']


@dataclass
class Evaluation:
    """top-1/top-5 (percent) and mean cross-entropy over ``count`` images; with ``sid_k``, the mean SID@k
    (docs/METHOD.md, "Interpretability metrics"); with ``keep_features``, the pooled features (raw, before the
    head's normalisation) and labels in loader order."""
    top1: float
    top5: float
    loss: float
    count: int
    sid: Optional[float] = None
    pooled: Optional[torch.Tensor] = None
    labels: Optional[torch.Tensor] = None

    def metrics(self) -> 'OrderedDict[str, float]':
        """timm's summary fields (``update_summary``)."""
        return OrderedDict(loss=self.loss, top1=self.top1, top5=self.top5)


def evaluate(model: nn.Module, loader, device: Union[str, torch.device], amp: bool = False,
             channels_last: bool = False, sid_k: Optional[int] = None, keep_features: bool = False,
             progress: bool = False, desc: str = 'evaluation',
             observers: Sequence[Callable[[ForwardBatch], None]] = ()) -> Evaluation:
    """One :func:`~qpm_timm.forward.forward_pass` over ``loader`` (every rank sees all of it); ``observers`` ride
    along on the same pass."""
    sums = dict(top1=0.0, top5=0.0, loss=0.0, count=0)
    sid, pooled, labels = [], [], []
    weights = model.class_weights.detach().float() if sid_k else None

    def observe(batch: ForwardBatch) -> None:
        logits, targets = batch.logits.float(), batch.targets.to(batch.logits.device)
        n = targets.shape[0]
        acc1, acc5 = accuracy(logits, targets, topk=(1, min(5, logits.shape[1])))
        sums['top1'] += acc1.item() * n
        sums['top5'] += acc5.item() * n
        sums['loss'] += F.cross_entropy(logits, targets, reduction='sum').item()
        sums['count'] += n
        if sid_k:
            sid.append(sid_at_k(batch.feature_maps.float(), weights.to(logits.device), logits.argmax(1), k=sid_k).cpu())
        if keep_features:
            pooled.append(batch.pooled.float().cpu())
            labels.append(targets.cpu())

    forward_pass(model, loader, [observe, *observers], device, amp, progress, desc=desc, channels_last=channels_last)
    n = max(sums['count'], 1)
    return Evaluation(top1=sums['top1'] / n, top5=sums['top5'] / n, loss=sums['loss'] / n, count=sums['count'],
                      sid=float(torch.nanmean(torch.cat(sid))) if sid else None,
                      pooled=torch.cat(pooled) if pooled else None, labels=torch.cat(labels) if labels else None)


def recovery_of(model: nn.Module, evaluation: Evaluation, dataset):
    """Concept recovery (:func:`qpm_timm.metrics.concept_recovery`) of the QPM from an evaluation of the generated
    concepts dataset with ``keep_features``; None for a dataset that plants no concepts. A baseline's real-valued head
    counts the features with a positive weight as its class's concepts (docs/METHOD.md, "Baselines: what is
    measured")."""
    if not (hasattr(dataset, 'class_concepts') and hasattr(dataset, 'concept_presence')):
        return None
    return concept_recovery(evaluation.pooled, dataset.concept_presence, model.class_weights.detach().cpu() > 0,
                            dataset.class_concepts)
