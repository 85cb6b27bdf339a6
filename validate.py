#!/usr/bin/env python3
""" QPM validation script, in the style of timm's validate.py.

Accuracy (top-1/top-5, as timm reports it) of any timm model and, for a QPM, the method's interpretability
metrics (docs/METHOD.md, "Interpretability metrics"; :mod:`qpm_timm.metrics`):

    sid@k                 on the evaluated split (k = min(5, n_per_class), the paper's SID@5)
    class_independence    on the training split with eval transforms (as the authors do)
    contrastiveness       on the training split with eval transforms
    feature_correlation   on the training split with eval transforms, features as the head sees them
    structural_grounding  CUB only, when the dataset has its class-attribute matrix
    concept_recovery      the generated concepts dataset only, on the evaluated split
    plausibility          on the evaluated split, where the dataset has object masks (the concepts dataset; CUB
                          with --dataset-args "{segmentations: PATH}")
    feature_grounding     on the evaluated split, where the dataset has concept masks (the concepts dataset)
    faithfulness          with --faithfulness (extra forward passes): deletion test on the evaluated split,
    faithfulness_logit    mean over features of the activation / logit drop ratio (docs/METHOD.md,
                          "Explanation metrics")
    coverage@<target>, set_size@<target>, set_coherence@<target> (and aps_..., lac_...)
                          with --prediction-sets: CHiQPM's prediction sets and the APS / LAC baselines: calibrated on
                          --calibration-per-class random images per class of the evaluated split, measured on the
                          rest (SetCoherence: concepts dataset and CUB with its class attributes)

Metric values are fractions in [0, 1] (top1/top5 are percentages, as in timm); the log prints everything
in percent.

    python validate.py --model local-dir:output/train/qpm_resnet10t-concepts/export --pretrained
    python validate.py --model qpm --backbone resnet18 --checkpoint model.safetensors --dataset concepts
    python validate.py --model resnet50 --pretrained --dataset imagenet --data-dir /data/in1k --no-interpretability

Bad input (a missing data folder, a model that is not a QPM while the metrics need one, weights of another
architecture, an unwritable results file, a coverage target outside (0, 1), a split without every class) ends with
a message on stderr and exit code 2; the results file is written atomically after every metric succeeded, so an
earlier one is never damaged. The work itself is :func:`qpm_timm.run.validate`; this file holds its flags.
"""
import argparse
import logging
import sys

from qpm_timm import run

parser = argparse.ArgumentParser(
    description='QPM validation (timm-style): accuracy and, for QPM models, the interpretability metrics',
    epilog='Interpretability: by default the model must be a QPM (a QPMModel with its binary head); a dense model '
           'or any other timm model is refused with exit code 2. --no-interpretability evaluates any model '
           'for top-1/top-5 only. Exit code 2 on bad input; the results file is written only after every '
           'metric succeeded (atomically), so an earlier results file survives a failed run.')
group = run.args.add_data_args(parser)
group.add_argument('--split', metavar='NAME', default='val', help='split to evaluate (default: val)')
group.add_argument('--train-split', metavar='NAME', default='train',
                   help='split for Class-Independence, Contrastiveness and Correlation (default: train)')
run.args.add_weights_args(run.args.add_model_args(parser))
run.args.add_device_args(parser, batch_size=64)
group = parser.add_argument_group('Results')
group.add_argument('--interpretability', action=argparse.BooleanOptionalAction, default=True,
                   help='compute the QPM metrics; the model must then be a QPM (default). '
                        '--no-interpretability: top-1/top-5 of any model')
group.add_argument('--faithfulness', action='store_true',
                   help='also run the deletion test (faithfulness): F\'+1 extra forward passes per chosen image')
group.add_argument('--faithfulness-images', type=int, default=256, metavar='N',
                   help='images of the deletion test, a fixed random subset of the split (default: 256)')
group.add_argument('--prediction-sets', action='store_true', default=False,
                   help='also calibrate CHiQPM\'s prediction sets and the APS / LAC baselines on part of --split and '
                        'report coverage, mean set size and SetCoherence per target on the rest (needs a QPM)')
group.add_argument('--results-file', default='', metavar='FILENAME', help='write the results here')
group.add_argument('--results-format', default=None, choices=('csv', 'json'),
                   help='default: json for a *.json results file, else csv')
run.sets.add_set_args(parser)


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    return run.validate(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(run.exit_code(main))
