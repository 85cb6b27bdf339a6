""" Weights users already have, adopted into a :class:`QPMModel`.

* :func:`load_weights` loads a QPM checkpoint (either head state, :meth:`QPMModel.load_state_dict`'s rules), a
  plain timm checkpoint of the backbone architecture (its classifier becomes the dense head when the class count
  matches, otherwise it is dropped with a message saying so) or a torchvision state dict (torchvision's ResNet
  keys are timm's). Missing and unused keys are named; a shape mismatch names the tensor. Nothing is changed
  in the model before the whole state dict has been checked.
* :func:`from_timm_classifier` wraps an already trained timm CNN classifier into a dense QPM with the same
  outputs (its classifier becomes the dense head), ready for :func:`qpm_timm.fit_qpm`.
"""
import logging
from typing import Dict, List

import timm
import torch
import torch.nn as nn

from .backbone import linear_classifier
from .qpm import QPMModel, create_qpm

__all__ = ['load_weights', 'from_timm_classifier', 'is_qpm_state_dict']

_logger = logging.getLogger(__name__)

# Factory arguments of a timm classifier that describe its weights' head, not its architecture.
_HEAD_ARGS = ('num_classes', 'global_pool', 'pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir',
              'pretrained_model_args')


def is_qpm_state_dict(state_dict: Dict[str, torch.Tensor]) -> bool:
    """Keys of a :class:`QPMModel` (``backbone.*``, ``head.*``), as every export and train.py checkpoint has."""
    return any(k.startswith('backbone.') for k in state_dict)


def _names(keys: List[str], limit: int = 8) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f' and {len(keys) - limit} more' if len(keys) > limit else '')


def _backbone_classifier(model: QPMModel) -> str:
    """Key prefix of the backbone architecture's own classifier in a plain timm/torchvision checkpoint."""
    return timm.models.get_pretrained_cfg(model.backbone_name).classifier or 'fc'


def load_weights(model: QPMModel, state_dict: Dict[str, torch.Tensor], source: str = 'checkpoint') -> QPMModel:
    """Load ``state_dict`` into ``model`` (module docstring); ``source`` names it in messages. Returns ``model``.

    Raises ValueError naming the problem: a checkpoint of another architecture (no backbone key matches, keys
    missing or unused, a tensor of another shape) or a QPM checkpoint whose class count differs.
    """
    if is_qpm_state_dict(state_dict):
        model.load_state_dict(state_dict)
        return model
    arch = model.backbone_name
    classifier = _backbone_classifier(model)
    head = {k[len(classifier) + 1:]: v for k, v in state_dict.items() if k.startswith(classifier + '.')}
    weights = {k: v for k, v in state_dict.items() if not k.startswith(classifier + '.')}
    expected = model.backbone.state_dict()
    if not set(weights) & set(expected):
        raise ValueError(f'{source} is not a checkpoint of {arch}: none of its keys ({_names(sorted(weights))}) is a '
                         f'{arch} tensor (expected e.g. {_names(sorted(expected), 4)}); give a checkpoint of the '
                         f'same architecture or choose the matching --backbone.')
    for k, v in weights.items():
        if k in expected and tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f'{source}: tensor {k} has shape {tuple(v.shape)}, {arch} needs '
                             f'{tuple(expected[k].shape)}; is it a checkpoint of another architecture?')
    missing = sorted(k for k in set(expected) - set(weights) if not k.endswith('num_batches_tracked'))
    unused = sorted(set(weights) - set(expected))
    if missing or unused:
        raise ValueError(f'{source} does not match the {arch} backbone: missing {_names(missing) or "nothing"}; '
                         f'unused {_names(unused) or "nothing"}. Give a checkpoint of the same architecture.')
    fc_weight = head.get('weight')
    if fc_weight is not None and tuple(fc_weight.shape) != (model.num_classes, model.num_features):
        _logger.warning(f'{source}: its classifier {classifier} has {fc_weight.shape[0]} classes, the model '
                        f'{model.num_classes}; dropped it, the dense head starts freshly initialised.')
        fc_weight = None
    model.backbone.load_state_dict(weights, strict=False)
    if fc_weight is not None:
        if model.is_qpm:
            model.reset_classifier(model.num_classes)
        model._adopt_classifier(fc_weight, head.get('bias'), source)
    return model


@torch.no_grad()
def _same_outputs(a: nn.Module, b: nn.Module, in_chans: int, size: int = 64) -> bool:
    x = torch.randn(2, in_chans, size, size, generator=torch.Generator().manual_seed(0))
    p = next(a.parameters())
    x = x.to(p.device, p.dtype)
    return torch.allclose(a(x), b(x), rtol=1e-4, atol=1e-4)


def from_timm_classifier(
        classifier: nn.Module,
        n_features: int = 50,
        n_per_class: int = 5,
        **qpm_kwargs,
) -> QPMModel:
    """A dense :class:`QPMModel` with the same outputs as a trained timm CNN classifier (docs/METHOD.md,
    "Pipeline", stage 1 done elsewhere): same architecture and weights, its classifier as the dense head.

    Args:
        classifier: a timm model built by ``timm.create_model`` (its architecture and arguments are read from
            ``pretrained_cfg`` and the factory arguments timm records), e.g. a ``resnet50`` fine-tuned on your data.
        n_features, n_per_class: ``n_f*`` and ``n_wc`` of the QPM to fit.
        **qpm_kwargs: further :class:`QPMModel` arguments (``drop_rate``, ``device``, ...).

    Raises ValueError when the classifier's head is not pooling followed by one linear layer (e.g. ConvNeXt's
    norm + fc), since the dense QPM head could not reproduce its outputs.
    """
    cfg = getattr(classifier, 'pretrained_cfg', None) or {}
    arch = cfg.get('architecture')
    if not arch or not timm.is_model(arch) or not getattr(classifier, 'num_classes', 0):
        raise ValueError('from_timm_classifier needs a timm classifier made by timm.create_model (with '
                         f'pretrained_cfg["architecture"] and num_classes > 0), got {type(classifier).__name__}.')
    if linear_classifier(classifier) is None:
        raise ValueError(f'{arch}: its head is not global pooling + one linear layer (classifier '
                         f'{cfg.get("classifier")!r}), so a dense QPM cannot reproduce its outputs; train the dense '
                         f'stage with train.py instead.')
    args = {k: v for k, v in getattr(classifier, '_model_args', {}).items() if k not in _HEAD_ARGS}
    pool = getattr(getattr(classifier, 'global_pool', None), 'pool_type', 'avg') or 'avg'
    p = next(classifier.parameters())
    qpm = create_qpm(arch, classifier.num_classes, n_features, n_per_class, head='dense', global_pool=pool,
                     device=p.device, dtype=p.dtype, **{**args, **qpm_kwargs})
    load_weights(qpm, classifier.state_dict(), source=f'the {arch} classifier')
    was_training = classifier.training
    try:
        same = qpm.adopted_classifier and _same_outputs(classifier.eval(), qpm.eval(), qpm.in_chans)
    finally:
        classifier.train(was_training)
    if not same:
        raise ValueError(f'{arch}: the dense QPM built from it does not reproduce its outputs (its forward is more '
                         f'than features -> global pooling -> {cfg.get("classifier")!r}); train the dense stage with '
                         f'train.py instead.')
    return qpm.train(was_training)
