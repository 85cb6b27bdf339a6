""" Heatmaps of QPM features on images, and the colour of every feature.

How a heatmap is made (docs/EXPLANATIONS.md, "Heatmaps"):

1. the feature's map (the selected channel of the backbone's last feature map, ``H' x W'``) is clipped at 0
   and upsampled bilinearly to the image;
2. it is divided by its own maximum (its shape: where the feature fired), then multiplied by the feature's
   strength on this image, ``min(1, x_f / a_f)``: ``x_f`` is the pooled activation the classifier reads and
   ``a_f`` the feature's typical active value, the mean of the upper component of a 2-component Gaussian
   mixture fitted to ``x_f`` over the validation images (as CHiQPM scales its maps). A feature that fired
   weakly therefore looks faint, one that fired as strongly as usual when present is drawn at full colour.
   Without ``a_f`` the strength is 1 (per-map normalisation);
3. it is blended over the grey, de-normalised image in the feature's own colour (:func:`feature_colours`),
   the same colour in every picture of a report (titles use it darkened, :func:`text_colour`).
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from torchvision import transforms as T

__all__ = ['feature_colours', 'text_colour', 'denormalize', 'data_normalization', 'active_values', 'heatmaps',
           'overlay', 'HEAT_ALPHA']

HEAT_ALPHA = 0.8  # opacity of a heat value of 1 over the grey image


def feature_colours(n: int) -> np.ndarray:
    """``(n, 3)`` RGB colours in [0, 1], one per kept feature: matplotlib's strong qualitative colours first
    (tab10, then Dark2), then tab20b and tab20c (58 in all), then evenly spaced hues."""
    table = [c for name in ('tab10', 'Dark2', 'tab20b', 'tab20c') for c in colormaps[name].colors]
    if n > len(table):
        table = [colormaps['hsv'](j / n)[:3] for j in range(n)]
    return np.asarray(table[:n], dtype=np.float64)[:, :3]


def text_colour(colour: Sequence[float]) -> np.ndarray:
    """``colour`` darkened until text in it reads on white (luminance at most 0.45)."""
    colour = np.asarray(colour, dtype=np.float64)[:3]
    luminance = float(colour @ np.array([0.299, 0.587, 0.114]))
    return colour * min(1.0, 0.45 / max(luminance, 1e-6))


def data_normalization(dataset, model=None) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """``(mean, std)`` the images of ``dataset`` were normalised with: its transform's ``Normalize``, else the
    model's data config (timm's ``resolve_data_config``)."""
    transform = getattr(dataset, 'transform', None)
    for op in getattr(transform, 'transforms', [transform]):
        if isinstance(op, T.Normalize):
            return tuple(float(v) for v in op.mean), tuple(float(v) for v in op.std)
    if model is None:
        raise ValueError('cannot tell how the images were normalised: the dataset transform has no Normalize; '
                         'pass the model so that its data config gives mean and std.')
    from timm.data import resolve_data_config
    config = resolve_data_config({}, model=model)
    return tuple(config['mean']), tuple(config['std'])


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised images ``(N, 3, H, W)`` (or one ``(3, H, W)``) -> RGB arrays ``(N, H, W, 3)`` in [0, 1]."""
    images = torch.as_tensor(images).detach().float().cpu()
    if images.dim() == 3:
        images = images[None]
    mean_t = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return (images * std_t + mean_t).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def active_values(pooled: torch.Tensor) -> np.ndarray:
    """``a_f`` of every feature: the upper component's mean of a 2-component Gaussian mixture fitted to its
    pooled activations ``(N, F')`` (:func:`qpm_timm.metrics.gaussian_mixture_components`)."""
    from ..metrics import gaussian_mixture_components
    means, _ = gaussian_mixture_components(torch.as_tensor(pooled).float().cpu().numpy())
    return means.max(axis=1)


def heatmaps(
        maps: torch.Tensor,
        size: Tuple[int, int],
        pooled: Optional[torch.Tensor] = None,
        active: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Heat ``(n, H, W)`` in [0, 1] of ``n`` feature maps ``(n, H', W')`` on an image of ``size = (H, W)``
    (module docstring): each map clipped at 0, upsampled, divided by its maximum and, given the pooled
    activations ``(n,)`` and active values ``(n,)``, scaled by ``min(1, pooled / active)``."""
    maps = torch.as_tensor(maps).detach().float().cpu().clamp(min=0)
    up = F.interpolate(maps[:, None], size=tuple(size), mode='bilinear', align_corners=False)[:, 0]
    top = up.flatten(1).max(dim=1).values
    heat = up / torch.where(top > 0, top, torch.ones_like(top))[:, None, None]
    if pooled is not None and active is not None:
        x = torch.as_tensor(pooled).detach().float().cpu().clamp(min=0)
        a = torch.as_tensor(np.asarray(active), dtype=torch.float32)
        strength = torch.where(a > 0, (x / a.clamp(min=1e-12)).clamp(max=1), torch.ones_like(x))
        heat = heat * strength[:, None, None]
    return heat.numpy()


def overlay(image: np.ndarray, heat: np.ndarray, colour: Sequence[float]) -> np.ndarray:
    """``(H, W, 3)`` picture: the grey image, coloured by ``colour`` where ``heat`` ``(H, W)`` is high."""
    grey = (image @ np.array([0.299, 0.587, 0.114]))[..., None].repeat(3, axis=2)
    weight = HEAT_ALPHA * np.clip(heat, 0, 1)[..., None]
    return (1 - weight) * grey + weight * np.asarray(colour, dtype=np.float64)[None, None, :3]
