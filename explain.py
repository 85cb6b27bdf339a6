#!/usr/bin/env python3
""" QPM explanation report, in the style of timm's scripts: pictures a person can look at.

Writes a self-contained folder (``index.html`` + PNGs + JSON, relative links; docs/EXPLANATIONS.md): the class x
feature assignment, every feature's gallery of most activating training images with its name, a card per
class, contrastive pictures of classes that differ in one feature, and local explanations of image files.

    python explain.py --model local-dir:output/train/qpm_resnet10t-concepts/export --pretrained --dataset concepts
    python explain.py --model local-dir:EXPORT --pretrained --image photo.jpg --pair 3 17 --output report/
    python explain.py --model qpm --backbone resnet18 --checkpoint model.safetensors --dataset cub --data-dir CUB

Without a dataset flag (``--dataset``, ``--data-dir``, ``--dataset-args``) the model is explained alone: class
names and transform from the export, the local pictures of ``--image`` and the ``--pair`` pictures drawn on them;
galleries, class cards and feature names need the dataset (docs/EXPLANATIONS.md, "The model alone").

Passes over data (each with a progress bar): the gallery pass over ``--gallery-split`` (skipped with
``--gallery``, e.g. the ``gallery.npz`` a training run collected on its statistics pass) and one pass over
``--split`` (feature names, heatmap scale, example images). Bad input (a dense model, an unreadable image, a
class that does not exist, an unwritable output folder) ends with a message on stderr and exit code 2 before
anything is written; an earlier report in ``--output`` is replaced only by a complete new one. The work itself
is :func:`qpm_timm.run.explain`; this file holds its flags.
"""
import argparse
import logging
import sys

from qpm_timm import run

parser = argparse.ArgumentParser(description='QPM explanation report (timm-style): galleries, class cards, '
                                             'contrastive pictures, local heatmaps, an HTML report')
group = run.args.add_data_args(parser)
group.add_argument('--split', metavar='NAME', default='val',
                   help='split whose pass gives the feature names, heatmap scale and example images (default: val)')
group.add_argument('--gallery-split', metavar='NAME', default='train',
                   help='split of the feature galleries (default: train; its images are read with eval transforms)')
run.args.add_weights_args(run.args.add_model_args(parser))
run.args.add_device_args(parser, batch_size=64)
group = parser.add_argument_group('Report')
group.add_argument('--output', default='', metavar='DIR',
                   help='report folder (default: output/explain/<model>); replaced atomically')
group.add_argument('--gallery', default='', metavar='FILE',
                   help='a gallery .npz (e.g. <experiment>/gallery.npz of train.py): no gallery pass')
group.add_argument('--top-k', type=int, default=16, metavar='K', help='gallery images kept per feature')
group.add_argument('--image', nargs='+', default=[], metavar='PATH',
                   help='image files or folders to explain (all the model alone needs)')
group.add_argument('--pair', nargs=2, action='append', default=None, metavar=('A', 'B'),
                   help='a contrastive pair (class indices or names); repeatable; without a dataset drawn on the '
                        '--image files')
group.add_argument('--all-pairs', action='store_true', default=False,
                   help='draw every pair of classes that share n_wc - 1 features (default: a few)')
group.add_argument('--max-pairs', type=int, default=6, metavar='N', help='pairs drawn without --all-pairs')


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    return run.explain(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(run.exit_code(main))
