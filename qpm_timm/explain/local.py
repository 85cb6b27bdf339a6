""" Local explanations: why a QPM gave an image its logits.

A QPM's logit of class ``c`` is the sum of the normalised activations ``(x_f - mean_f) / std_f`` of the
``n_wc`` features assigned to ``c`` (binary ``W``, no bias; docs/EXPLANATIONS.md), so
every feature's share of the logit is exact, and its feature map shows where it fired. A baseline's sparse head
(docs/METHOD.md, "Baselines") adds its bias to the weighted activations of the features with a nonzero weight: the
shares are ``w_cf * z_f`` and the bias.
"""
from dataclasses import dataclass
from typing import List

import torch

from ..models.assignment import class_features

__all__ = ['Explanation', 'require_qpm', 'class_evidence', 'explain', 'explain_top']


@dataclass
class Explanation:
    """Why a QPM gives class ``class_index`` the logit ``logit`` on one image."""
    class_index: int
    logit: float
    features: List[int]  # the class's features (indices into the kept features)
    contributions: List[float]  # their weighted normalised activations; with the bias, their sum is the logit
    maps: torch.Tensor  # (n_wc, H, W) feature maps of those features: where they fired
    bias: float = 0.0  # a baseline's bias of the class (a QPM has none)


def require_qpm(model, what: str = 'explain()') -> None:
    """Refuse a model without the binary QPM head (a dense model has no class -> feature assignment)."""
    if not getattr(model, 'is_qpm', False) or not getattr(model, 'num_classes', 0):
        raise ValueError(f'{what} needs a QPM classifier (model.is_qpm with classes); this model is dense or has '
                         f'no classifier: solve and set the QPM head first (train.py does both).')


def class_evidence(model, out, i: int, c: int) -> Explanation:
    """The :class:`Explanation` of class ``c`` for image ``i`` of a ``forward_with_features`` output."""
    row = model.class_weights[c].detach()
    feats = class_features(row[None])[0] if model.head_kind == 'qpm' else torch.nonzero(row != 0).flatten().tolist()
    normalised = model.head.normalize(out.pooled[i].float())
    bias = getattr(model.head.fc, 'bias', None)
    return Explanation(int(c), float(out.logits[i, c]), feats, (normalised[feats] * row[feats].float()).tolist(),
                       out.feature_maps[i, feats].float(), 0.0 if bias is None else float(bias[c]))


@torch.no_grad()
def explain_top(model, images: torch.Tensor, k: int = 2) -> List[List[Explanation]]:
    """For every image of a batch ``(N, 3, H, W)``, the explanations of its ``k`` highest-scoring classes
    (prediction first, then the runner-up, ...)."""
    require_qpm(model)
    was_training = model.training
    out = model.eval().forward_with_features(images)
    model.train(was_training)
    ranked = out.logits.topk(min(k, out.logits.shape[1]), dim=1).indices.tolist()
    return [[class_evidence(model, out, i, c) for c in classes] for i, classes in enumerate(ranked)]


def explain(model, images: torch.Tensor) -> List[Explanation]:
    """Local explanation of a QPM's prediction for a batch of images ``(N, 3, H, W)``."""
    return [top[0] for top in explain_top(model, images, k=1)]
