"""Is the coverage guarantee of the prediction sets kept? CHiQPM's hierarchical sets and the APS / LAC baselines
(docs/METHOD.md, "CHiQPM prediction sets and trees") over many random calibration / test splits of a trained QPM's
validation set: the validation pass runs once, the splits are numpy. Prints, per method and target, the mean
coverage, its minimum over the splits, the mean set size and SetCoherence, and whether the mean coverage is at
least the target minus its finite-sample slack (3 standard errors of the mean over the splits). The README's tables:

    python benchmarks/prediction_sets.py --model local-dir:output/train/qpm_resnet10t-concepts/export
    python benchmarks/prediction_sets.py --model local-dir:output/train/qpm_resnet10t-concepts/export --feature-noise 2
"""
import argparse

import timm
import torch

import qpm_timm  # noqa: F401  (registers the qpm models)
from qpm_timm.conformal import (
    CALIBRATION_PER_CLASS,
    DEFAULT_TARGETS,
    METHODS,
    coverage_over_splits,
    format_table,
    set_inputs,
)
from qpm_timm.data import create_qpm_loader, create_qpm_split
from qpm_timm.run import evaluate
from qpm_timm.run.sets import class_similarity

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('--model', required=True, help='a trained QPM: local-dir:<export> or hf-hub:<repo>')
parser.add_argument('--dataset', default='concepts')
parser.add_argument('--data-dir', default=None)
parser.add_argument('--split', default='val')
parser.add_argument('--splits', type=int, default=20, help='random calibration / test splits (default: 20)')
parser.add_argument('--per-class', type=int, default=CALIBRATION_PER_CLASS, help='calibration images per class')
parser.add_argument('--targets', type=float, nargs='+', default=list(DEFAULT_TARGETS))
parser.add_argument('--seed', type=int, default=0, help='seed of the first split (the others: seed + 1, ...)')
parser.add_argument('--feature-noise', type=float, default=0.0, metavar='S',
                    help='add Gaussian noise of S x each feature\'s std to the pooled features: a weaker classifier '
                         'on the same exchangeable images, whose sets are not single classes (default: 0)')
parser.add_argument('--threads', type=int, default=1)
parser.add_argument('-b', '--batch-size', type=int, default=200)


def main(argv=None) -> dict:
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = timm.create_model(args.model, pretrained=True).eval()
    dataset = create_qpm_split(args.dataset, args.data_dir, args.split,
                               transform_size=model.pretrained_cfg['input_size'][-1])
    evaluation = evaluate(model, create_qpm_loader(dataset, args.batch_size), 'cpu', keep_features=True)
    pooled = evaluation.pooled
    if args.feature_noise:
        noise = torch.randn(pooled.shape, generator=torch.Generator().manual_seed(args.seed))
        pooled = pooled + args.feature_noise * model.head.std.cpu() * noise
    inputs = set_inputs(model, pooled, evaluation.labels)
    accuracy = 100 * float((inputs.predictions == inputs.labels).mean())
    results = coverage_over_splits(inputs, model.class_weights.detach().cpu(), args.targets, args.splits,
                                   args.per_class, class_similarity(dataset), args.seed)
    noise = f' with feature noise {args.feature_noise:g} x std' if args.feature_noise else ''
    print(f'{args.model}{noise}: top-1 {accuracy:.2f} % on {len(inputs)} {args.split} images; {args.splits} random '
          f'splits, {args.per_class} calibration images per class, the rest to test; means over the splits:')
    print(format_table(results))
    kept = True
    for method in METHODS:
        for target, m in results[method].items():
            ok = m['coverage'] >= target - m['slack']
            kept &= ok
            print(f'{method:7s} target {target:<6g} mean coverage {m["coverage"]:.4f}  min {m["min_coverage"]:.4f}  '
                  f'slack {m["slack"]:.4f}  mean >= target - slack: {ok}')
    print(f'guarantee kept for every method and target: {kept}')
    return results


if __name__ == '__main__':
    main()
