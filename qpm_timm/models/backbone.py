""" Backbones of a QPM: any timm CNN with an ``N x C x H x W`` feature map, or a token model (ViT, Swin) whose last
block becomes one (docs/METHOD.md, "ViT backbones and the adapter"); the recipe's reduced ResNet strides
(docs/METHOD.md, "Recipe"); the pretrained weights and classifier a dense stage starts from.
"""
import os
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn
from timm.models import ResNet

__all__ = ['check_backbone', 'create_backbone', 'is_token_backbone', 'last_block_map', 'linear_classifier',
           'reduce_resnet_strides']


def check_backbone(backbone: Any) -> None:
    """A timm model name, optionally with one of its pretrained tags (``resnet50.tv_in1k``)."""
    if not isinstance(backbone, str) or not timm.is_model(backbone):
        raise ValueError(f'unknown backbone {backbone!r}: give a timm model name (see timm.list_models()).')
    if '.' in backbone:
        try:
            timm.models.get_pretrained_cfg(backbone)
        except RuntimeError:
            arch = backbone.split('.')[0]
            raise ValueError(f'backbone {backbone!r}: {arch} has no pretrained tag {backbone.split(".", 1)[1]!r}; '
                             f'its tags: {", ".join(timm.list_pretrained(arch + ".*")) or "none"}.') from None



def reduce_resnet_strides(model: ResNet) -> None:
    """Reduced strides of the recipe: layer3 and layer4 keep stride 1, no dilation (224 px -> 28 x 28 maps);
    the model's ``feature_info`` reductions follow (at most 8)."""
    if not isinstance(model, ResNet):
        raise ValueError(f'reduced_strides applies to timm ResNet backbones (layer3/layer4), '
                         f'not {type(model).__name__}.')
    for layer in (model.layer3, model.layer4):
        block = layer[0]
        for parent in block.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.Conv2d) and child.stride != (1, 1):
                    child.stride = (1, 1)
                elif isinstance(child, nn.AvgPool2d):
                    setattr(parent, name, nn.Identity())  # the stride-2 pool of 'avg_down' shortcuts
                elif getattr(child, 'stride', 1) not in (1, (1, 1)) and not isinstance(child, nn.Conv2d):
                    raise ValueError(f'cannot reduce the stride of {type(child).__name__} in {name}; '
                                     f'use a plain ResNet or reduced_strides=False.')
    for info in model.feature_info:
        info['reduction'] = min(info['reduction'], 8)



def linear_classifier(model: nn.Module) -> Optional[nn.Linear]:
    """The classifier of a timm model when it is one top-level ``nn.Linear`` after global pooling (ResNet's ``fc``,
    EfficientNet's ``classifier``), the only kind the dense QPM head reproduces; None otherwise (ConvNeXt's
    ``head.fc`` follows a norm)."""
    name = getattr(model, 'pretrained_cfg', {}).get('classifier') or ''
    head = getattr(model, name, None) if name and '.' not in name else None
    return head if isinstance(head, nn.Linear) else None


def _file_classes(path: str, classifier: Optional[str]) -> int:
    """Number of classes of the classifier stored in a backbone weights file (0: none stored)."""
    if not os.path.isfile(path):
        raise ValueError(f'backbone weights file {path} does not exist.')
    try:
        state_dict = timm.models.load_state_dict(path)
    except Exception as e:  # torch.load / safetensors raise many types for a damaged file
        raise ValueError(f'backbone weights file {path} is not a readable checkpoint ({type(e).__name__}: {e}).') from e
    weight = state_dict.get(f'{classifier}.weight') if classifier else None
    return int(weight.shape[0]) if weight is not None else 0


def create_backbone(
        name: str,
        pretrained: bool,
        overlay: Optional[Dict[str, Any]],
        **kwargs,
) -> Tuple[nn.Module, Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]]]:
    """The feature extractor of timm model ``name`` (no pooling, no classifier) and, for pretrained weights whose
    classifier is a plain top-level ``nn.Linear`` over the pooled features (ResNet's ``fc``), that classifier's
    ``(weight, bias)``. Pretrained weights come through timm's own loader (``pretrained=True``,
    ``pretrained_cfg_overlay``), so the Hub, its cache, ``HF_HUB_OFFLINE`` and local files work as for any timm model.
    """
    if not pretrained:
        if overlay:
            raise ValueError('backbone_pretrained_cfg_overlay is given without pretrained_backbone=True.')
        return timm.create_model(name, pretrained=False, num_classes=0, global_pool='', **kwargs), None
    if overlay and overlay.get('file'):  # a local file: build the classifier its weights have, so timm loads strictly
        classes = _file_classes(overlay['file'], timm.models.get_pretrained_cfg(name).classifier)
        overlay = {**overlay, 'num_classes': classes}
        kwargs['num_classes'] = classes
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as e:  # timm: no weights for this tag, or none reachable (offline, no cache)
        raise ValueError(f'cannot load the pretrained weights of backbone {name!r}: {e}. Give a local file '
                         f'(backbone_pretrained_cfg_overlay=dict(file=...), train.py --pretrained-path) or check '
                         f'the network / Hugging Face cache.') from e
    head = linear_classifier(model)
    classifier = None
    if head is not None:
        classifier = (head.weight.detach().clone(), None if head.bias is None else head.bias.detach().clone())
    model.reset_classifier(0, '')
    return model, classifier


def _probe_size(backbone: nn.Module, in_chans: int) -> List[int]:
    """A small input the backbone accepts: a fixed-size ViT's own image size, a dynamic one's 4 x 4 patches,
    otherwise at most 64 px."""
    patch_embed = getattr(backbone, 'patch_embed', None)
    img_size = getattr(patch_embed, 'img_size', None)
    if img_size is not None:
        if getattr(backbone, 'dynamic_img_size', False):
            return [min(s, 4 * p) for s, p in zip(img_size, patch_embed.patch_size)]
        return list(img_size)
    if backbone.pretrained_cfg.get('fixed_input_size'):
        return list(backbone.pretrained_cfg['input_size'][-2:])
    return [min(s, 64) for s in backbone.pretrained_cfg.get('input_size', (in_chans, 64, 64))[-2:]]


def last_block_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A token model's last block through its final norm as an ``N x C x H x W`` map, prefix tokens dropped (timm's
    ``forward_intermediates``)."""
    return backbone.forward_intermediates(x, indices=1, norm=True, output_fmt='NCHW', intermediates_only=True)[-1]


def is_token_backbone(backbone: nn.Module, in_chans: int) -> bool:
    """False for a backbone whose ``forward_features`` is an ``N x C x H x W`` map with ``C == num_features`` (a
    CNN); True for one whose :func:`last_block_map` is that map instead (ViTs, Swin); refuses anything else, naming
    what it found."""
    p = next(backbone.parameters())
    size = _probe_size(backbone, in_chans)
    probe = torch.zeros(1, in_chans, *size, device=p.device, dtype=p.dtype)
    name, c = type(backbone).__name__, backbone.num_features

    def run(fn) -> torch.Tensor:
        was_training = backbone.training
        try:
            with torch.no_grad():
                return fn(backbone.eval(), probe)
        except Exception as e:  # fixed-size models or unusual outputs fail on the probe
            raise ValueError(f'{name}: the feature-map probe on a {size} input failed ({type(e).__name__}: {e}); '
                             f'QPM needs a backbone with N x C x H x W feature maps.') from e
        finally:
            backbone.train(was_training)

    out = run(lambda b, x: b.forward_features(x))
    if out.dim() == 4 and out.shape[1] == c:
        return False
    found = f'{name}.forward_features returns shape {tuple(out.shape)} on a {size} input'
    if not hasattr(backbone, 'forward_intermediates'):
        raise ValueError(f'{found} and the model has no forward_intermediates to give a spatial map; QPM needs '
                         f'N x {c} x H x W feature maps (a CNN, or a ViT-like timm model).')
    maps = run(last_block_map)
    if maps.dim() != 4 or maps.shape[1] != c:
        raise ValueError(f'{found}, and its forward_intermediates(output_fmt="NCHW") gives {tuple(maps.shape)}, not '
                         f'N x {c} x H x W: QPM cannot turn its features into maps.')
    return True
