"""The one pass over data of every evaluation (:func:`forward_pass`): the statistics (:mod:`qpm_timm.stats`), the
report's scan and gallery (:mod:`qpm_timm.explain`), validation and the run's evaluation (:mod:`qpm_timm.run`) all
read ``model.forward_with_features`` through it, in the precision of :func:`qpm_timm.precision.autocast`."""
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn
from torch.utils.data import SequentialSampler, Subset

from .precision import autocast, to_device

__all__ = ['ForwardBatch', 'forward_pass']


class ForwardBatch(NamedTuple):
    """What :func:`forward_pass` hands its observers for every batch (on the model's device)."""
    images: torch.Tensor  # (N, 3, H, W) as the model saw them (normalised)
    targets: torch.Tensor  # (N,) labels, as the loader gave them
    indices: Optional[torch.Tensor]  # (N,) int64 dataset indices (a Subset's parent); None: shuffled loader
    logits: torch.Tensor  # (N, C)
    feature_maps: torch.Tensor  # (N, F', H', W')
    pooled: torch.Tensor  # (N, F')


def _index_mapper(loader) -> Optional[Callable[[int], torch.Tensor]]:
    """A function giving the dataset indices of the next ``n`` images of an unshuffled loader (None if shuffled).

    A ``torch.utils.data.Subset`` (the shard ``rank::world_size`` of ``create_qpm_loader(..., shard=True)``) maps
    back to its parent dataset, so every rank reports indices into the same dataset. A plain iterable of batches
    gets running positions.
    """
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and not isinstance(sampler, SequentialSampler):
        return None
    dataset = getattr(loader, "dataset", None)
    parent = torch.as_tensor(list(dataset.indices), dtype=torch.long) if isinstance(dataset, Subset) else None
    start = 0

    def take(n: int) -> torch.Tensor:
        nonlocal start
        positions = torch.arange(start, start + n)
        start += n
        return positions if parent is None else parent[positions]

    return take


def forward_pass(
        model: nn.Module,
        loader,
        observers: Sequence[Callable[[ForwardBatch], None]],
        device: Union[str, torch.device] = "cpu",
        amp: bool = False,
        progress: bool = False,
        desc: str = "forward pass",
        channels_last: bool = False,
) -> None:
    """The one pass over data of every evaluation: ``model.forward_with_features`` (eval mode, inference mode,
    the precision of :func:`qpm_timm.precision.autocast`) over ``loader``, handing every batch to each observer
    as a :class:`ForwardBatch`.

    ``loader`` yields ``(images, targets, ...)``; from an unshuffled loader every batch carries the dataset
    indices of its images. The model is moved to ``device`` and its train/eval mode restored afterwards; a
    DDP-wrapped model is unwrapped. A plain timm classifier (no ``forward_with_features``) gives its logits with
    ``feature_maps`` and ``pooled`` None. ``progress`` shows a tqdm bar titled ``desc``.
    """
    from tqdm import tqdm

    device = torch.device(device)
    net = model if hasattr(model, "forward_with_features") else getattr(model, "module", model)
    forward = getattr(net, "forward_with_features", None) or (lambda x: (net(x), None, None))
    indices = _index_mapper(loader)
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.inference_mode(), autocast(device, amp):
            for batch in tqdm(loader, desc=desc, disable=not progress):
                images = to_device(batch[0], device, channels_last)
                logits, feature_maps, pooled = forward(images)
                index = indices(images.shape[0]) if indices is not None else None
                out = ForwardBatch(images, batch[1], index, logits, feature_maps, pooled)
                for observer in observers:
                    observer(out)
    finally:
        model.train(was_training)
