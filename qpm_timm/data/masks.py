"""Ground-truth masks as the model sees them (docs/METHOD.md, "Explanation metrics").

A dataset with masks gives them at its image resolution: the concepts dataset every planted concept
(``concept_masks``) and the object, their union (``object_masks``); CUB its segmentation of the bird
(``object_masks``, after the same bounding-box crop as the image). Two steps bring a mask onto a feature map:

1. :func:`masks_through_transform`: the geometric steps of the image's eval transform (resize, center crop),
   so the mask covers the same pixels of the model input as in the image;
2. :func:`masks_on_grid`: resized to the ``H' x W'`` feature map, a cell belonging to the mask where the
   bilinearly resized mask is above 0 (as DINO-QPM resizes CUB's segmentations to its patch grid).
"""
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.transforms import MaybeToTensor
from torchvision import transforms as T

__all__ = ['masks_through_transform', 'masks_on_grid', 'dataset_masks', 'has_masks']

_GEOMETRIC = (T.Resize, T.CenterCrop)
_PIXEL_ONLY = (T.ToTensor, MaybeToTensor, T.Normalize)


def masks_through_transform(transform: Optional[Callable], masks: torch.Tensor) -> torch.Tensor:
    """``masks`` ``(..., H, W)`` bool after the resize and center crop of ``transform`` (a torchvision ``Compose``
    of timm's eval transform), as bool at the model input's size; the pixel-value steps are skipped. A transform
    with any other step (random crops, flips) has no fixed geometry to follow: ValueError."""
    ops = [] if transform is None else getattr(transform, 'transforms', [transform])
    lead = masks.shape[:-2]
    x = masks.reshape(-1, *masks.shape[-2:]).float()
    for op in ops:
        if isinstance(op, _GEOMETRIC):
            x = op(x)
        elif not isinstance(op, _PIXEL_ONLY):
            raise ValueError(f'cannot carry masks through a {type(op).__name__} step of the transform; masks need '
                             'the eval transform (resize, center crop, to-tensor, normalise).')
    return (x > 0.5).reshape(*lead, *x.shape[-2:])


def masks_on_grid(masks: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``masks`` ``(..., H, W)`` (the model input's resolution) on the ``size = (H', W')`` feature-map grid: a cell
    is in the mask where the bilinearly resized mask is above 0 (module docstring)."""
    lead = masks.shape[:-2]
    x = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    grid = F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)
    return (grid > 0).reshape(*lead, *size)


def has_masks(dataset, kind: str = 'object') -> bool:
    """Whether ``dataset`` gives ``kind`` masks (``'object'`` or ``'concept'``); CUB only with its segmentations."""
    if kind == 'concept':
        return callable(getattr(dataset, 'concept_masks', None))
    return callable(getattr(dataset, 'object_masks', None)) and getattr(dataset, 'segmentations', True) is not None


def dataset_masks(dataset, indices: Union[Sequence[int], torch.Tensor], size: Tuple[int, int],
                  kind: str = 'object') -> torch.Tensor:
    """The ``kind`` masks of images ``indices`` on the ``size`` feature-map grid: ``(n, H', W')`` object masks or
    ``(n, K, H', W')`` concept masks, through the dataset's own transform (module docstring)."""
    indices = [int(i) for i in torch.as_tensor(indices).reshape(-1).tolist()]
    read = dataset.concept_masks if kind == 'concept' else dataset.object_masks
    raw = read(indices)
    transform = getattr(dataset, 'transform', None)
    if isinstance(raw, np.ndarray):  # one size for every image
        return masks_on_grid(masks_through_transform(transform, torch.from_numpy(raw)), size)
    return torch.stack([masks_on_grid(masks_through_transform(transform, torch.from_numpy(m)), size) for m in raw])
