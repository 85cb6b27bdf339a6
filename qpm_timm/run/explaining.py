"""What ``explain.py`` writes: the explanation report of a trained QPM (docs/EXPLANATIONS.md)."""
import logging
import re
from pathlib import Path
from typing import List

import torch
from timm.data import create_transform

from ..conformal import load_calibration
from ..data import with_transform
from ..data.loader import create_qpm_loader
from ..explain import (
    FeatureGallery,
    GalleryCollector,
    check_report_folder,
    load_images,
    require_qpm,
    resolve_class,
    write_report,
)
from ..forward import forward_pass
from .args import resolve_args_precision
from .cli import UsageError
from .data import build_eval_dataset, class_names_of, eval_data_config, resolve_dataset
from .model import check_eval_args, check_eval_model, checkpoint_classes, create_eval_model, read_checkpoint
from .validation import model_data_config

__all__ = ['default_report_folder', 'dataset_given', 'model_class_names', 'explain']

_logger = logging.getLogger('explain')


def default_report_folder(model_name: str) -> Path:
    """``output/explain/<the model's last path or repository component>``."""
    name = re.sub(r'[^A-Za-z0-9_.-]+', '_', model_name.split(':', 1)[-1].rstrip('/').split('/')[-1]) or 'model'
    return Path('output') / 'explain' / name


def dataset_given(args) -> bool:
    """Whether the command names a dataset (``--dataset``, ``--data-dir`` or ``--dataset-args``); without one the
    model is explained alone (docs/EXPLANATIONS.md, "The model alone")."""
    return bool(args.dataset or args.data_dir or args.dataset_args)


def model_class_names(model) -> List[str]:
    """The class names a model carries (an export's config.json ``label_names``), else ``class <c>``."""
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    if names is not None and len(names) == model.num_classes:
        return [str(name) for name in names]
    _logger.info(f'--model {model.pretrained_cfg.get("architecture", "")} carries no class names: classes are '
                 f'named "class <index>".')
    return [f'class {c}' for c in range(model.num_classes)]


def explain(args) -> Path:
    """Write the report of ``--model``; returns its folder. Every input is checked before the first pass."""
    check_eval_args(args)
    if args.top_k < 1:
        raise UsageError(f'--top-k must be >= 1, got {args.top_k}.')
    output = Path(args.output) if args.output else default_report_folder(args.model)
    check_report_folder(output)
    load_images(args.image)  # an unreadable image fails here, before any pass
    with_data = dataset_given(args)
    if args.gallery and not with_data:
        raise UsageError('--gallery indexes the training images of a dataset: give that dataset (--dataset / '
                         '--data-dir), or leave --gallery out to explain the model alone.')
    gallery = FeatureGallery.load(args.gallery) if args.gallery else None
    device = torch.device(args.device)
    resolve_args_precision(args, device)
    progress = not args.no_progress

    state_dict = read_checkpoint(args)
    val_set = None
    if with_data:
        resolve_dataset(args)
        val_set = build_eval_dataset(args, args.split)
        class_names = class_names_of(val_set)
        model = create_eval_model(args, args.num_classes or len(class_names), state_dict)
    else:
        model = create_eval_model(args, args.num_classes or checkpoint_classes(state_dict), state_dict)
    require_qpm(model, 'explain.py')
    if with_data:
        check_eval_model(model, args, len(class_names), need_qpm=False)
    else:
        class_names = model_class_names(model)
    for pair in args.pair or []:
        for spec in pair:
            resolve_class(spec, class_names)
    model.to(device).eval()
    # the eval transform validate.py uses; the model alone: its own data config
    transform = create_transform(**(model_data_config(args, model) if with_data else
                                    eval_data_config(args, model.pretrained_cfg)))
    run = dict(device=device, amp=args.amp, batch_size=args.batch_size, num_workers=args.workers, progress=progress)
    train_set = None
    if with_data:
        val_set = with_transform(val_set, transform)
        train_set = with_transform(build_eval_dataset(args, args.gallery_split), transform)
        if gallery is None:
            collector = GalleryCollector(args.top_k, channels=model.head.selection.cpu())
            forward_pass(model, create_qpm_loader(train_set, args.batch_size, num_workers=args.workers), [collector],
                         device, args.amp, progress, desc=f'explanations: gallery pass ({args.gallery_split})',
                         channels_last=args.channels_last)
            gallery = collector.gather()
    report = write_report(model, output, gallery, train_set, val_set, class_names, pairs=args.pair,
                          all_pairs=args.all_pairs, max_pairs=args.max_pairs, images=args.image, title=args.model,
                          transform=transform, calibration=load_calibration(model), **run)
    print(f'explanation report: {len(report.files)} files in {report.folder}; open {report.index} in a browser')
    return report.folder
