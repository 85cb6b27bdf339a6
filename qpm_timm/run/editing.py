"""The optional fine-tune of ``python -m qpm_timm.edit --finetune-epochs N`` (docs/METHOD.md, "Editing"): stage 4 of
the run (:func:`~qpm_timm.run.training.finetune`) on the edited model, with the data and recipe of the run's
``args.yaml``."""
import argparse
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Dict

import torch
import yaml

from ..data.loader import create_qpm_loader
from .data import build_train_data, eval_data_config, resolve_dataset
from .experiment import ARGS, FEATURE_CACHE
from .training import feature_caches, finetune

__all__ = ['finetune_edited']


def finetune_edited(model, run: Path, epochs: int, device: str = 'cpu') -> Dict[str, float]:
    """Fine-tune ``model`` (its binary head frozen) ``epochs`` epochs as the run in ``run`` fine-tuned; returns the
    last validation metrics (top1, top5) and the epochs."""
    args = argparse.Namespace(**yaml.safe_load((run / ARGS).read_text()))
    args.finetune_epochs, args.device, args.no_progress = epochs, device, True
    args.distributed, args.rank, args.world_size, args.resume = False, 0, 1, False
    resolve_dataset(args)
    data_config = eval_data_config(args)
    train_set, train_eval_set, val_set, _ = build_train_data(args, data_config)
    device = torch.device(device)
    model.to(device)
    reading = nullcontext()
    if args.feature_cache:  # the run's cache of the frozen backbone's maps (rebuilt only if it changed)
        train_set, _, val_set = feature_caches(args, model, train_set, train_eval_set, val_set, run / FEATURE_CACHE,
                                               device)
        reading = model.reading_backbone_maps()
    loaders = (create_qpm_loader(train_set, args.batch_size, True, args.workers),
               create_qpm_loader(val_set, args.validation_batch_size or args.batch_size, num_workers=args.workers))
    with reading, tempfile.TemporaryDirectory() as folder:
        metrics = finetune(model, loaders, args, device, Path(folder))
    model.eval()
    return dict(top1=float(metrics['top1']), top5=float(metrics['top5']), epochs=epochs)
