#!/usr/bin/env python3
""" QPM explanation report, in the style of timm's scripts: pictures a person can look at.

Writes a self-contained folder (``index.html`` + PNGs + JSON, relative links; docs/EXPLANATIONS.md): the class x
feature assignment, every feature's gallery of most activating training images with its name, a card per
class, contrastive pictures of classes that differ in one feature, and local explanations of image files.

    python explain.py --model local-dir:output/train/qpm_resnet10t-concepts/export --pretrained
    python explain.py --model local-dir:EXPORT --pretrained --image photo.jpg --pair 3 17 --output report/
    python explain.py --model qpm --backbone resnet18 --checkpoint model.safetensors --dataset cub --data-dir CUB

Passes over data (each with a progress bar): the gallery pass over ``--gallery-split`` (skipped with
``--gallery``, e.g. the ``gallery.npz`` a training run collected on its statistics pass) and one pass over
``--split`` (feature names, heatmap scale, example images). Bad input (a dense model, an unreadable image, a
class that does not exist, an unwritable output folder) ends with a message on stderr and exit code 2 before
anything is written; an earlier report in ``--output`` is replaced only by a complete new one.
"""
import argparse
import logging
import re
import sys
from pathlib import Path

import torch
import yaml

from qpm_timm import hub
from qpm_timm.cli import BAD_INPUT, exit_code
from qpm_timm.data import get_class_names, with_transform
from qpm_timm.data.loader import create_qpm_loader
from qpm_timm.explain import (
    FeatureGallery, GalleryCollector, check_report_folder, load_images, require_qpm, resolve_class, write_report,
)
from qpm_timm.stats import forward_pass
from timm.data import create_transform

from validate import ValidationError, build_dataset, create_model, resolve_dataset, resolve_eval_config

_logger = logging.getLogger('explain')

parser = argparse.ArgumentParser(description='QPM explanation report (timm-style): galleries, class cards, '
                                             'contrastive pictures, local heatmaps, an HTML report')
group = parser.add_argument_group('Dataset parameters')
group.add_argument('--data-dir', metavar='DIR', default=None, help='path to dataset (root dir); none for concepts')
group.add_argument('--dataset', metavar='NAME', default=None,
                   help='concepts (generated, default) | cub | cars | aircraft | imagenet | folder | any timm dataset')
group.add_argument('--split', metavar='NAME', default='val',
                   help='split whose pass gives the feature names, heatmap scale and example images (default: val)')
group.add_argument('--gallery-split', metavar='NAME', default='train',
                   help='split of the feature galleries (default: train; its images are read with eval transforms)')
group.add_argument('--dataset-args', type=yaml.safe_load, default=None, metavar='YAML',
                   help='extra dataset kwargs, e.g. "{images_per_class: 10}"')
group.add_argument('--img-size', type=int, default=None, metavar='N', help='default: the model\'s data config, as timm resolves it')
group.add_argument('--workers', '-j', type=int, default=4, metavar='N', help='data loading processes')
group = parser.add_argument_group('Model parameters')
group.add_argument('--model', '-m', default='qpm', metavar='NAME',
                   help='a QPM variant, "qpm" with --backbone, "local-dir:PATH" or "hf-hub:org/repo"')
group.add_argument('--backbone', default=None, metavar='NAME', help='timm CNN for --model qpm')
group.add_argument('--reduced-strides', action=argparse.BooleanOptionalAction, default=None,
                   help='--model qpm: ResNet layer3/layer4 with stride 1 (must match the training run)')
group.add_argument('--n-features', type=int, default=None, metavar='N', help='n_f* (default: from the checkpoint)')
group.add_argument('--n-per-class', type=int, default=None, metavar='N', help='n_wc (default: from the checkpoint)')
group.add_argument('--num-classes', type=int, default=None, metavar='N', help='default: from the dataset')
group.add_argument('--pretrained', action='store_true', default=False,
                   help='load the model\'s own weights (the weights of local-dir:/hf-hub:)')
group.add_argument('--checkpoint', default='', metavar='PATH', help='load these weights (.safetensors or timm)')
group.add_argument('-b', '--batch-size', type=int, default=64, metavar='N')
group.add_argument('--amp', action='store_true', default=False, help='bfloat16 autocast')
group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
group = parser.add_argument_group('Report')
group.add_argument('--output', default='', metavar='DIR',
                   help='report folder (default: output/explain/<model>); replaced atomically')
group.add_argument('--gallery', default='', metavar='FILE',
                   help='a gallery .npz (e.g. <experiment>/gallery.npz of train.py): no gallery pass')
group.add_argument('--top-k', type=int, default=16, metavar='K', help='gallery images kept per feature')
group.add_argument('--image', nargs='+', default=[], metavar='PATH', help='image files or folders to explain')
group.add_argument('--pair', nargs=2, action='append', default=None, metavar=('A', 'B'),
                   help='a contrastive pair (class indices or names); repeatable')
group.add_argument('--all-pairs', action='store_true', default=False,
                   help='draw every pair of classes that share n_wc - 1 features (default: a few)')
group.add_argument('--max-pairs', type=int, default=6, metavar='N', help='pairs drawn without --all-pairs')
group.add_argument('--no-progress', action='store_true', default=False, help='no progress bars')


def _default_output(model_name: str) -> Path:
    name = re.sub(r'[^A-Za-z0-9_.-]+', '_', model_name.split(':', 1)[-1].rstrip('/').split('/')[-1]) or 'model'
    return Path('output') / 'explain' / name


def main(argv=None) -> Path:
    """Write the report of ``--model``; returns its folder."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.top_k < 1:
        raise ValidationError(f'-b/--batch-size and --top-k must be >= 1, got {args.batch_size} and {args.top_k}.')
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise ValidationError(f'--checkpoint {args.checkpoint} does not exist.')
    output = Path(args.output) if args.output else _default_output(args.model)
    check_report_folder(output)
    load_images(args.image)  # an unreadable image fails here, before any pass
    gallery = FeatureGallery.load(args.gallery) if args.gallery else None
    device = torch.device(args.device)
    progress = not args.no_progress

    resolve_dataset(args)
    val_set = build_dataset(args, args.split)
    class_names = get_class_names(val_set)
    for pair in args.pair or []:
        for spec in pair:
            resolve_class(spec, class_names)
    state_dict = hub.read_weights(args.checkpoint) if args.checkpoint else None
    model = create_model(args, args.num_classes or len(class_names), state_dict)
    require_qpm(model, 'explain.py')
    if model.num_classes != len(class_names):
        raise ValidationError(f'--model {args.model} has {model.num_classes} classes but the {args.dataset} dataset '
                              f'{len(class_names)}; explain it on its own dataset.')
    model.to(device).eval()
    transform = create_transform(**resolve_eval_config(args, model))  # the eval transform validate.py uses
    val_set = with_transform(val_set, transform)
    train_set = with_transform(build_dataset(args, args.gallery_split), transform)
    if gallery is None:
        collector = GalleryCollector(args.top_k, channels=model.head.selection.cpu())
        forward_pass(model, create_qpm_loader(train_set, args.batch_size, num_workers=args.workers), [collector],
                     device, args.amp, progress, desc=f'explanations: gallery pass ({args.gallery_split})')
        gallery = collector.gather()
    report = write_report(model, output, gallery, train_set, val_set, class_names, pairs=args.pair,
                          all_pairs=args.all_pairs, max_pairs=args.max_pairs, images=args.image, device=device,
                          amp=args.amp, batch_size=args.batch_size, num_workers=args.workers, progress=progress,
                          title=args.model)
    print(f'explanation report: {len(report.files)} files in {report.folder}; open {report.index} in a browser')
    return report.folder


def cli(argv=None) -> int:
    """``main`` with bad input mapped to a message on stderr and exit code 2."""
    return exit_code(main, argv, BAD_INPUT + (ValidationError,))


if __name__ == '__main__':
    sys.exit(cli())
