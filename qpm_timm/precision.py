"""One precision policy for every pass over data: training, statistics, feature cache, validation, explanations.

``amp=True`` (the scripts' ``--amp``) means bfloat16 autocast on every device. ``torch.autocast`` left to its
default would pick float16 on CUDA and bfloat16 on the CPU, so the statistics the solver sees would be computed
in another precision than training and validation; every pass therefore enters :func:`autocast`, never
``torch.autocast`` directly (docs/METHOD.md, "Pipeline").
"""
from contextlib import nullcontext
from typing import ContextManager, Union

import torch

__all__ = ['AMP_DTYPE', 'autocast', 'to_device']

AMP_DTYPE = torch.bfloat16


def autocast(device: Union[str, torch.device], amp: bool) -> ContextManager:
    """bfloat16 autocast on ``device`` when ``amp``, else full precision."""
    if not amp:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPE)


def to_device(images: torch.Tensor, device: Union[str, torch.device], channels_last: bool = False) -> torch.Tensor:
    """A batch of images on ``device``, in channels-last memory format with ``channels_last`` (4-D input only)."""
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images
