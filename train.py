#!/usr/bin/env python3
""" QPM training script, in the style of timm's train.py.

Stages (docs/METHOD.md, "Pipeline"): dense training (CE + Feature Diversity Loss) -> statistics -> CP-SAT solve ->
fine-tune -> export and explanation report, each leaving its result in ``<output>/<experiment>/`` (the layout:
:mod:`qpm_timm.run.experiment`). Kill it at any point and rerun the same command with ``--resume``: it continues
after the last finished epoch or stage and ends with the assignment of an uninterrupted run. Multi-GPU /
multi-node: ``torchrun --nproc_per_node=N train.py ...`` (DDP); the statistics are all-reduced and the solve runs
on rank 0 and is broadcast. The pipeline itself is :func:`qpm_timm.run.train`; this file holds its flags.

The embedded default (no download, CPU):  python train.py -c qpm_timm/configs/concepts.yaml
"""
import argparse
import logging
import sys

from qpm_timm import run
from qpm_timm.data.feature_cache import CACHE_DTYPES
from qpm_timm.solver import DEFAULT_EFFORT, DEFAULT_TIME_LIMIT

parser = argparse.ArgumentParser(description='QPM training (timm-style); -c FILE: a YAML file of flag defaults')
group = run.args.add_data_args(parser)
group.add_argument('--train-split', metavar='NAME', default='train')
group.add_argument('--val-split', metavar='NAME', default='val')
group = run.args.add_model_args(parser)
group.add_argument('--adapter-depth', type=int, default=None, metavar='N',
                   help='layers of the token-wise MLP adapter between backbone and head (0: none; DINO-QPM: 4)')
group.add_argument('--adapter-hidden', type=int, default=None, metavar='N', help='its hidden width (default 2048)')
group.add_argument('--adapter-dim', type=int, default=None, metavar='N', help='its output channels (default 512)')
group.add_argument('--freeze-backbone', action=argparse.BooleanOptionalAction, default=False,
                   help='train only the adapter and the head; the backbone stays in eval mode (DINO-QPM)')
group.add_argument('--feature-cache', action=argparse.BooleanOptionalAction, default=False,
                   help='with --freeze-backbone: compute the backbone maps once, store them in <experiment>/'
                        'feature_cache/, and train, collect statistics and fine-tune from them')
group.add_argument('--cache-views', type=int, default=0, metavar='K',
                   help='training views in the cache: 0 = the un-augmented images; K > 0 = K augmented views, '
                        'epoch e reads view e mod K')
group.add_argument('--cache-dtype', default='float32', choices=CACHE_DTYPES,
                   help='storage type of the cached maps (float16 halves the disk; float32 keeps them exact)')
group.add_argument('--pretrained', action='store_true', default=False,
                   help='start the dense stage from the backbone\'s timm pretrained weights (the tag in --backbone or '
                        'the variant\'s, e.g. resnet50.tv_in1k); a fitting pretrained classifier becomes the dense '
                        'head')
group.add_argument('--pretrained-path', default=None, metavar='FILE',
                   help='load the backbone\'s pretrained weights from this local file instead (implies --pretrained)')
group.add_argument('--initial-checkpoint', default='', metavar='PATH',
                   help='load these weights before training: a QPM checkpoint, or a timm / torchvision checkpoint of '
                        'the backbone architecture (its classifier becomes the dense head when the classes match)')
group.add_argument('--resume', nargs='?', const=True, default=False, metavar='EXPERIMENT_DIR',
                   help='continue the experiment after its last finished epoch or stage')
group = run.args.add_device_args(parser, batch_size=16)
group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N')
group = parser.add_argument_group('QPM parameters')
group.add_argument('--method', default='qpm', choices=run.methods.METHODS,
                   help='the compact head made from the dense model (docs/METHOD.md, "Baselines"): qpm (the solve), '
                        'chiqpm (qpm with CHiQPM\'s pairs, ReLU head and FGL: --rho 0.5 --relu-head --fgl-weight 3 '
                        'unless given), or a glm-saga baseline: sldd (SLDD-Model), qsenn (Q-SENN, four rounds), glm '
                        '(glm-saga alone, no fine-tune); the baselines need the [baselines] extra')
group.add_argument('--path-points', type=int, default=100,
                   help='baselines: points k of glm-saga\'s regularisation path (the authors\': 100)')
group.add_argument('--path-max-epochs', type=int, default=2000,
                   help='baselines: SAGA epochs per path point at most (the authors\': 2000)')
group.add_argument('--path-epsilon', type=float, default=1e-3,
                   help='baselines: the path\'s smallest penalty as a share of its largest (the authors\': 0.001)')
group.add_argument('--n-features', type=int, default=50, help='n_f*: kept features (default 50)')
group.add_argument('--n-per-class', type=int, default=5, help='n_wc: features per class (default 5)')
group.add_argument('--fdl-beta', type=float, default=0.196, help='Feature Diversity Loss weight (ResNets: 0.196)')
group.add_argument('--l1-maps', type=float, default=0.0, help='dense stage: weight of mean |feature maps| (DINO-QPM)')
group.add_argument('--l1-pooled', type=float, default=0.0, help='dense stage: weight of mean |pooled features|')
group.add_argument('--finetune-fdl-beta', type=float, default=None, help='fine-tune FDL weight (default: --fdl-beta)')
group.add_argument('--finetune-l1-maps', type=float, default=0.0,
                   help='fine-tune: weight of mean |selected feature maps| (DINO-QPM: 5)')
group.add_argument('--finetune-l1-pooled', type=float, default=0.0,
                   help='fine-tune: weight of mean |selected pooled features| (DINO-QPM: 1)')
group.add_argument('--locality', action=argparse.BooleanOptionalAction, default=True,
                   help='keep the locality bias B in the solve\'s objective (DINO-QPM solves without it)')
group.add_argument('--skip-dense', action='store_true', default=False,
                   help='no dense training: statistics of the --initial-checkpoint model, or of the --pretrained one '
                        'when its classifier fits the classes (as the authors do for ImageNet)')
group.add_argument('--solver-effort', type=float, default=DEFAULT_EFFORT,
                   help='work budget of the solve in deterministic units: the same inputs, seed and effort give the '
                        'same assignment on an idle or a busy machine (default 10; 40-100 for a better solution; '
                        'seconds per effort and hardware: benchmarks/RESULTS.md)')
group.add_argument('--solver-time-limit', type=float, default=DEFAULT_TIME_LIMIT,
                   help='wall-clock safety cap of the solve in seconds; a solve it cuts is reported (log, '
                        'solution.json, results.json) and may depend on machine load')
group.add_argument('--report', action=argparse.BooleanOptionalAction, default=True,
                   help='write the explanation report (<experiment>/report/index.html) and embed it in the export')
group.add_argument('--solver-log', action='store_true', default=False, help='show the solver progress')
group.add_argument('--finetune-epochs', type=int, default=40)
group.add_argument('--finetune-opt', default='sgd', metavar='OPTIMIZER', help='fine-tune optimizer (timm name)')
group.add_argument('--finetune-lr', type=float, default=1e-4)
group.add_argument('--finetune-weight-decay', type=float, default=None, help='default: --weight-decay')
group.add_argument('--finetune-momentum', type=float, default=0.95)
group.add_argument('--finetune-decay-epochs', type=float, default=10)
group.add_argument('--finetune-rounds', type=int, nargs='+', default=None, metavar='EPOCHS',
                   help='fine-tune in rounds of these many epochs, each with a fresh optimiser and step schedule '
                        '(CHiQPM: 10 10 10 40); replaces --finetune-epochs')
group.add_argument('--finetune-round-lr-decay', type=float, default=None,
                   help='round r starts at --finetune-lr x this^r (CHiQPM, Q-SENN: 0.9; default 0.9 for --method '
                        'qsenn, else 1)')
group = parser.add_argument_group('CHiQPM (docs/METHOD.md, "CHiQPM")')
group.add_argument('--rho', type=float, default=0.0,
                   help='force the int(C * rho) closest class pairs (by their columns of A) to share exactly '
                        'n_per_class - 1 features (CHiQPM: 0.5; 0: none)')
group.add_argument('--pairs', type=run.args.yaml_pairs, default=None, metavar='YAML',
                   help='force these class pairs instead, e.g. "[[0, 1], [2, 5]]"')
group.add_argument('--idealize', action=argparse.BooleanOptionalAction, default=False,
                   help='after the forced solve, re-optimise the assignment for the same features, asking only that '
                        'at least as many class pairs share n_per_class - 1 features as were forced (CHiQPM)')
group.add_argument('--relu-head', action=argparse.BooleanOptionalAction, default=False,
                   help='a ReLU after the QPM head\'s normalisation (CHiQPM\'s head)')
group.add_argument('--fgl-weight', type=float, default=0.0,
                   help='fine-tune: weight of the Feature Grounding Loss (CHiQPM: 3; 0: off)')
group.add_argument('--fgl-epochs', type=int, default=None, metavar='N',
                   help='the FGL counts in the first N epochs of every fine-tune round only (CHiQPM: 30)')
group = parser.add_argument_group('Optimizer / schedule (dense stage)')
group.add_argument('--opt', default='sgd', metavar='OPTIMIZER')
group.add_argument('--opt-eps', default=None, type=float)
group.add_argument('--opt-betas', default=None, type=float, nargs='+')
group.add_argument('--momentum', type=float, default=0.9)
group.add_argument('--weight-decay', type=float, default=5e-4)
group.add_argument('--clip-grad', type=float, default=None)
group.add_argument('--clip-mode', type=str, default='norm')
group.add_argument('--layer-decay', type=float, default=None)
group.add_argument('--lr', type=float, default=0.005, help='backbone learning rate (dense)')
group.add_argument('--head-lr-scale', type=float, default=2.0, help='head lr = lr * scale (recipe: 0.01 / 0.005)')
group.add_argument('--sched', default='step', metavar='SCHEDULER')
group.add_argument('--epochs', '--dense-epochs', dest='epochs', type=int, default=150, help='dense epochs')
group.add_argument('--val-interval', type=int, default=1,
                   help='validate every N-th epoch of each stage and its last (the trained model is the same)')
group.add_argument('--decay-epochs', type=float, default=30)
group.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+')
group.add_argument('--decay-rate', '--dr', type=float, default=0.4)
group.add_argument('--warmup-epochs', type=int, default=0)
group.add_argument('--warmup-lr', type=float, default=1e-5)
group.add_argument('--min-lr', type=float, default=0)
group.add_argument('--cooldown-epochs', type=int, default=0)
group.add_argument('--patience-epochs', type=int, default=10)
group.add_argument('--lr-cycle-mul', type=float, default=1.0)
group.add_argument('--lr-cycle-decay', type=float, default=0.5)
group.add_argument('--lr-cycle-limit', type=int, default=1)
group.add_argument('--lr-k-decay', type=float, default=1.0)
group.add_argument('--lr-noise', type=float, nargs='+', default=None)
group.add_argument('--lr-noise-pct', type=float, default=0.67)
group.add_argument('--lr-noise-std', type=float, default=1.0)
group.add_argument('--sched-on-updates', action='store_true', default=False)
run.sets.add_set_args(parser)
group = parser.add_argument_group('Miscellaneous')
group.add_argument('--seed', type=int, default=42)
group.add_argument('--output', default='output/train', metavar='PATH')
group.add_argument('--experiment', default='', metavar='NAME', help='default: <model>-<dataset>')


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args, args_text = run.args.parse_args_with_config(parser, argv)
    return run.train(args, args_text)


if __name__ == '__main__':
    sys.exit(run.exit_code(main))
