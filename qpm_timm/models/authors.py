""" The checkpoint format of the authors' reference code, mapped onto :class:`~qpm_timm.models.qpm.QPMModel`.

The authors (github.com/ThomasNorr/QPM and ThomasNorr/CHiQPM, ``architectures/`` and
``evaluation/load_model.py``) save a fine-tuned model as a plain state dict (``.pth``):

* the backbone under torchvision's ResNet key names, without ``fc`` (timm's ResNet uses the same names:
  ``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``downsample.0/1``, with BatchNorm's ``num_batches_tracked``);
* the QPM layer: ``linear.selection`` (``n_f*`` channel indices), ``linear.mean`` and ``linear.std``
  (``n_f*``), ``linear.layer.weight`` (``C x n_f*``, 0/1), no bias.

Their forward is ``layer4 -> ReLU -> select -> average pool -> dropout -> (x - mean) / clamp(std, 1e-6)
[-> ReLU, CHiQPM] -> x @ W^T``; reduced strides (layer3/layer4 stride 1 for their CUB models) are code, not
file content, and come from the variant. Their loader reads the file with ``torch.load`` and loads it strictly,
so every tensor is used and no other key is allowed; :func:`authors_to_qpm` checks the same, and clamps ``std``
at ``1e-6`` once (our :class:`~qpm_timm.models.head.QPMHead` divides by ``std`` directly), which gives the same
forward pass. Whether a file is QPM or CHiQPM is not in the file: a CHiQPM model is created with
``relu_after_norm=True``.
"""
from dataclasses import dataclass
from typing import Dict, List, Mapping

import torch

__all__ = ['AUTHORS_EVAL_DATASETS', 'AUTHORS_HEAD_KEYS', 'AUTHORS_RELEASES', 'AUTHORS_SOURCES', 'AuthorsRelease',
           'authors_to_qpm', 'filter_authors_weights', 'is_authors_state_dict', 'releases_of']

# the authors' head tensors -> ours
AUTHORS_HEAD_KEYS = {
    'linear.selection': 'head.selection',
    'linear.mean': 'head.mean',
    'linear.std': 'head.std',
    'linear.layer.weight': 'head.fc.weight',
}
STD_MIN = 1e-6  # the authors' clamp of std in the normalisation
AUTHORS_SOURCES = {'authors-qpm': False, 'authors-chiqpm': True}  # --source -> relu_after_norm
AUTHORS_EVAL_DATASETS = ('cub', 'cars')  # datasets whose evaluation transform (their get_data.py) is known here


@dataclass(frozen=True)
class AuthorsRelease:
    """A checkpoint the authors published (their README, "Pretrained Models")."""
    name: str
    source: str  # a key of AUTHORS_SOURCES
    variant: str  # the registered variant whose architecture it fits
    crop_to_bbox: bool  # evaluated on CUB images cropped to their ground-truth boxes (squashed to a square)
    url: str


AUTHORS_RELEASES = (
    AuthorsRelease('QPM-WithCrop', 'authors-qpm', 'qpm_resnet50_cub', True,
                   'https://drive.google.com/drive/folders/1skvJfzGAqQTm3_eQaTpb7kE_sXnBsm4W'),
    AuthorsRelease('QPM-NoCrop', 'authors-qpm', 'qpm_resnet50_cub', False,
                   'https://drive.google.com/drive/folders/1WC8k_vQTdTR0LWxI8zUByn7RPDVhQawc'),
    AuthorsRelease('CHiQPM-WithCrop', 'authors-chiqpm', 'chiqpm_resnet50_cub', True,
                   'https://drive.google.com/drive/folders/1nu_oTH0g8gqz8Qhpe6pqHd7ZhiaK03tV'),
)


def releases_of(variant: str) -> List[AuthorsRelease]:
    """The authors' released checkpoints that fit ``variant``."""
    return [r for r in AUTHORS_RELEASES if r.variant == variant]


def is_authors_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Not a qpm-timm checkpoint (whose keys start with ``backbone.`` / ``head.``): read as the authors' format."""
    return not any(k.startswith(('backbone.', 'head.')) for k in state_dict)


def _names(keys, limit: int = 6) -> str:
    keys = sorted(keys)
    return ', '.join(keys[:limit]) + (f' and {len(keys) - limit} more' if len(keys) > limit else '')


def _check_keys(state_dict: Mapping[str, torch.Tensor], backbone: Dict[str, torch.Tensor], source: str) -> None:
    """Every key of the format present (``num_batches_tracked`` may be absent), no other key, tensors only."""
    expected = set(backbone) | set(AUTHORS_HEAD_KEYS)
    missing = {k for k in expected - set(state_dict) if not k.endswith('num_batches_tracked')}
    unexpected = set(state_dict) - expected
    if missing or unexpected:
        found = [f'{len(missing)} missing ({_names(missing)})'] if missing else []
        found += [f'{len(unexpected)} not in the format ({_names(unexpected)})'] if unexpected else []
        raise ValueError(
            f'{source} is not in the authors\' QPM format for this {len(backbone)}-tensor backbone: expected the '
            f'backbone\'s torchvision-style keys without fc ({_names(backbone, 3)}, ...) and the head '
            f'{", ".join(AUTHORS_HEAD_KEYS)}; found {len(state_dict)} keys, {" and ".join(found)}. '
            f'A qpm-timm export has keys backbone.* and head.*.')
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f'{source}: {_names(bad)} are not tensors; the authors\' files hold tensors only.')


def _check_shapes(state_dict: Mapping[str, torch.Tensor], backbone: Dict[str, torch.Tensor], source: str) -> None:
    """Backbone tensors of the model's shapes; a head of one ``n_f*``: selection/mean/std ``(n_f*,)``,
    W ``(C, n_f*)``."""
    for k, v in backbone.items():
        if k in state_dict and state_dict[k].shape != v.shape:
            raise ValueError(f'{source}: {k} has shape {tuple(state_dict[k].shape)}, this backbone needs '
                             f'{tuple(v.shape)} (another ResNet depth or width?).')
    selection, weight = state_dict['linear.selection'], state_dict['linear.layer.weight']
    if selection.dim() != 1 or weight.dim() != 2 or weight.shape[1] != selection.numel():
        raise ValueError(f'{source}: linear.selection {tuple(selection.shape)} and linear.layer.weight '
                         f'{tuple(weight.shape)} do not describe one head (n_f* indices, C x n_f* weights).')
    for k in ('linear.mean', 'linear.std'):
        if state_dict[k].shape != selection.shape:
            raise ValueError(f'{source}: {k} has shape {tuple(state_dict[k].shape)}, expected '
                             f'{tuple(selection.shape)} like linear.selection.')


def authors_to_qpm(
        state_dict: Mapping[str, torch.Tensor],
        model,
        source: str = 'checkpoint',
) -> Dict[str, torch.Tensor]:
    """Map an authors' state dict onto ``model``'s keys (module docstring); ``source`` names the file in errors.

    The result loads with ``model.load_state_dict`` (which validates the head: distinct selected channels,
    a binary ``W`` with ``n_per_class`` ones per row and distinct rows).
    """
    backbone = model.backbone.state_dict()
    _check_keys(state_dict, backbone, source)
    _check_shapes(state_dict, backbone, source)
    out = {f'backbone.{k}': state_dict.get(k, v) for k, v in backbone.items()}
    out.update({ours: state_dict[theirs] for theirs, ours in AUTHORS_HEAD_KEYS.items()})
    out['head.std'] = out['head.std'].float().clamp(min=STD_MIN)
    return out


def filter_authors_weights(state_dict: Dict[str, torch.Tensor], model) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: an authors' checkpoint is mapped (:func:`authors_to_qpm`), ours passes."""
    if not is_authors_state_dict(state_dict):
        return state_dict
    source = model.pretrained_cfg.get('file') or model.pretrained_cfg.get('hf_hub_id') or 'the checkpoint'
    return authors_to_qpm(state_dict, model, source)
