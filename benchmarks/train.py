"""QPM fine-tune training step vs a plain timm training step of the same backbone.

Measured: the wall time of one optimisation step on the same batches, in one process, alternately (after warm-up):

* A, QPM fine-tune step (docs/METHOD.md, "Pipeline" 4): a QPM (``timm.create_model('qpm', backbone=...)``) with a
  solved-looking
  binary head (random distinct selection, valid assignment, random mean/std), ``forward_with_features``,
  cross-entropy + :class:`qpm_timm.losses.FeatureDiversityLoss` on the selected feature maps, backward, SGD step;
* B, plain timm step: ``timm.create_model(backbone, num_classes=...)`` with its own pooled linear head,
  cross-entropy, backward, SGD step;
* C (attribution only): step A without the FDL (cross-entropy only),

plus the FDL alone (forward + backward on feature maps of the step's shape). Both models start from the same
backbone weights. The table gives medians; the final line the ratio of the medians A / B. Target: ratio <= 1.15.

``--reduced-strides`` gives the QPM the recipe's reduced ResNet strides (28 x 28 maps at 224 px) *and* applies the
same stride reduction to the plain model, so the compute stays comparable; it is off by default, which is the
setting of the target (the QPM's extra cost is then only the head and the FDL). ``--profile`` prints a
``torch.profiler`` table of one QPM step and of the FDL alone.

Example (CPU, 2 cores; after ``pip install -e .``, or with ``PYTHONPATH=.`` from the repository root):

    python benchmarks/train.py --batch-size 8 --img-size 224 --reps 10 --threads 1
"""
import argparse
import math
import os
import statistics
from contextlib import nullcontext
from typing import Dict

import timm
import torch
import torch.nn.functional as F
from _common import alternate, copy_backbone, load_text, row, setup, solved_looking_head, timer

import qpm_timm  # noqa: F401  (registers the qpm models)
from qpm_timm.losses import FeatureDiversityLoss
from qpm_timm.models.backbone import reduce_resnet_strides

TARGET = 1.15


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--backbone', default='resnet50', help='timm CNN name')
    p.add_argument('--img-size', type=int, default=224, help='smaller (e.g. 128) for a quick CPU run')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--num-classes', type=int, default=200, help='200: CUB, the fine-tune setting of the paper')
    p.add_argument('--n-features', type=int, default=50)
    p.add_argument('--n-per-class', type=int, default=5)
    p.add_argument('--fdl-beta', type=float, default=0.196)
    p.add_argument('--lr', type=float, default=1e-4)
    p.add_argument('--reps', type=int, default=8, help='timed steps per variant (alternating)')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps per variant first')
    p.add_argument('--num-batches', type=int, default=4, help='distinct random batches, cycled; shared by all')
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    p.add_argument('--amp', action='store_true', help='bfloat16 autocast for forward and losses')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--reduced-strides', action='store_true',
                   help='ResNet layer3/layer4 stride 1 for the QPM and the plain model (off: comparable compute)')
    p.add_argument('--no-attribution', action='store_true', help='skip step C (QPM without FDL)')
    p.add_argument('--profile', action='store_true', help='print torch.profiler tables of a QPM step and the FDL')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s choice)')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    if min(args.batch_size, args.reps, args.num_batches, args.num_classes) < 1 or args.warmup < 0:
        p.error('need --batch-size, --reps, --num-batches, --num-classes >= 1 and --warmup >= 0')
    if args.img_size < 32:
        p.error(f'--img-size must be >= 32, got {args.img_size}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda: no CUDA device is available')
    if not timm.is_model(args.backbone):
        p.error(f'unknown --backbone {args.backbone!r}: give a timm model name')
    return args


def main(argv=None) -> float:
    args = parse_args(argv)
    device, g = setup(args)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else nullcontext

    plain = timm.create_model(args.backbone, num_classes=args.num_classes)
    qpm_model = qpm_timm.create_qpm(args.backbone, args.num_classes, args.n_features, args.n_per_class,
                                   head='qpm', reduced_strides=args.reduced_strides)
    if args.reduced_strides:
        reduce_resnet_strides(plain)
    copy_backbone(qpm_model, plain)
    solved_looking_head(qpm_model, g)
    plain.to(device=device, memory_format=memory_format).train()
    qpm_model.to(device=device, memory_format=memory_format).train()
    fdl = FeatureDiversityLoss(args.fdl_beta)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=args.lr, momentum=0.9)
    opt_qpm = torch.optim.SGD(qpm_model.parameters(), lr=args.lr, momentum=0.9)

    batches = [(torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g)
                .to(device).contiguous(memory_format=memory_format),
                torch.randint(args.num_classes, (args.batch_size,), generator=g).to(device))
               for _ in range(args.num_batches)]
    losses: Dict[str, float] = {}

    def qpm_step(i: int, with_fdl: bool = True) -> None:
        x, y = batches[i % len(batches)]
        with autocast():
            out = qpm_model.forward_with_features(x)
            loss = F.cross_entropy(out.logits, y)
            if with_fdl:
                loss = loss + fdl(out.feature_maps, out.logits, qpm_model.class_weights)
        opt_qpm.zero_grad(set_to_none=True)
        loss.backward()
        opt_qpm.step()
        losses['qpm+fdl' if with_fdl else 'qpm'] = loss.item()

    def plain_step(i: int) -> None:
        x, y = batches[i % len(batches)]
        with autocast():
            loss = F.cross_entropy(plain(x), y)
        opt_plain.zero_grad(set_to_none=True)
        loss.backward()
        opt_plain.step()
        losses['plain'] = loss.item()

    with torch.no_grad(), autocast():
        out = qpm_model.forward_with_features(batches[0][0])
    maps_shape, maps_dtype = tuple(out.feature_maps.shape), out.feature_maps.dtype
    fdl_maps = [torch.rand(maps_shape, generator=g).to(device=device, dtype=maps_dtype).requires_grad_()
                for _ in range(2)]
    fdl_logits = out.logits.detach().float()

    def fdl_only(i: int) -> None:
        maps = fdl_maps[i % 2]
        fdl(maps, fdl_logits, qpm_model.class_weights).backward()
        maps.grad = None

    print(f'QPM fine-tune step vs plain timm step: {args.backbone}, batch {args.batch_size}, {args.img_size} px, '
          f'{args.num_classes} classes, device {args.device}, threads {torch.get_num_threads()}, '
          f'amp {"bfloat16" if args.amp else "off"}, channels_last {args.channels_last}, '
          f'reduced strides {args.reduced_strides} (both models)')
    print(f'torch {torch.__version__}, timm {timm.__version__}; QPM head {args.n_features} features, '
          f'{args.n_per_class} per class; FDL beta {args.fdl_beta} on feature maps {maps_shape}; SGD lr {args.lr}')
    print(f'before: {load_text()} (CPU cores: {os.cpu_count()}; shared machine, hence alternation and medians)')
    time_fn = timer(device)
    steps = {'A QPM step (CE + FDL)': qpm_step, 'B plain timm step (CE)': plain_step}
    if not args.no_attribution:
        steps['C QPM step without FDL (CE)'] = lambda i: qpm_step(i, with_fdl=False)
    times = alternate(steps, args.reps, args.warmup, time_fn)
    fdl_times = alternate({'FDL alone (forward + backward)': fdl_only}, max(args.reps, 20), args.warmup, time_fn)
    print(f'after:  {load_text()}')
    if not all(math.isfinite(v) for v in losses.values()):
        raise RuntimeError(f'a loss is not finite ({losses}); lower --lr')

    print()
    print(f'{"step":<40} {"median ms":>10} {"min ms":>9} {"max ms":>9} {"reps":>5}')
    for ts in (times, fdl_times):
        for name, t in ts.items():
            print(row(name, t, width=40))
    med = {name: statistics.median(t) for ts in (times, fdl_times) for name, t in ts.items()}
    a, b = med['A QPM step (CE + FDL)'], med['B plain timm step (CE)']
    print()
    print('last losses: ' + ', '.join(f'{k} {v:.3f}' for k, v in losses.items()))
    print(f'FDL alone / plain step = {med["FDL alone (forward + backward)"] / b:.3f}')
    if not args.no_attribution:
        c = med['C QPM step without FDL (CE)']
        print(f'QPM without FDL / plain = {c / b:.2f}; QPM with FDL / without = {a / c:.2f}')

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
        sort = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
        for name, fn in (('one QPM step (CE + FDL)', qpm_step), ('FDL alone (forward + backward)', fdl_only)):
            with profile(activities=activities) as prof:
                fn(0)
            print(f'\nprofile of {name}:')
            print(prof.key_averages().table(sort_by=sort, row_limit=15))

    ratio = a / b
    print(f'ratio: {ratio:.2f} (target <= {TARGET})')
    return ratio


if __name__ == '__main__':
    main()
