""" Data loaders of the QPM scripts.

timm's ``create_loader`` installs timm's own transform pipeline on the dataset; the method's recipe
(TrivialAugmentWide + ColorJitter 0.1 + h-flip, :func:`qpm_timm.data.create_qpm_transform`) lives in
this package, so the scripts build plain ``DataLoader``s around datasets that carry that transform.
"""

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

__all__ = ['create_qpm_loader']


def create_qpm_loader(
        dataset: Dataset,
        batch_size: int,
        is_training: bool = False,
        num_workers: int = 0,
        distributed: bool = False,
        shard: bool = False,
        pin_memory: bool = False,
        loader_class: type = DataLoader,
) -> DataLoader:
    """A loader over ``dataset``.

    Args:
        is_training: shuffle (from torch's global RNG, seeded per epoch by the scripts, so a resumed run
            draws the same batches) and drop the last incomplete batch.
        distributed: training shards through ``DistributedSampler`` (call ``loader.sampler.set_epoch``).
        shard: every rank reads the disjoint slice ``rank::world_size`` with no padding, so sums over
            ranks count every image exactly once (the statistics pass).
        loader_class: the ``DataLoader`` (sub)class to build (the run layer's times its batches).
    """
    sampler = None
    if distributed and is_training:
        sampler = DistributedSampler(dataset, shuffle=True)
    elif shard and torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        dataset = Subset(dataset, range(rank, len(dataset), world))
    return loader_class(
        dataset, batch_size=batch_size, shuffle=is_training and sampler is None, sampler=sampler,
        num_workers=num_workers, drop_last=is_training and len(dataset) > batch_size, pin_memory=pin_memory,
        persistent_workers=False)
