"""QPM-state inference vs the same timm backbone with its ordinary pooled linear head.

Measured: the wall time of one ``model(x)`` call in eval mode under ``torch.inference_mode`` for

* A: ``timm.create_model('qpm_resnet50_imagenet')`` (1000 classes, standard strides, so the same backbone compute
  as timm's ``resnet50``) carrying a solved-looking QPM head: a random distinct channel selection, a valid binary
  assignment (a column permutation of :func:`qpm_timm.models.head.placeholder_assignment`) and random mean/std;
* B: ``timm.create_model('resnet50')``, its ordinary global-average pool + ``Linear(2048, 1000)`` head,

with the backbone weights of A copied from B (the backbone features are asserted to match). A and B run alternately
in one process (A, B, A, B, ... after warm-up) on the same input, so load from other processes hits both alike; the
table gives medians and the final line the ratio of the medians, A / B. Target: ratio <= 1.05.

The heads alone (``forward_head`` on one precomputed feature map) are timed the same way, to show the head's share
without the backbone's noise. For information only, the reduced-strides variant ``qpm_resnet50_cub`` (layer3/layer4
stride 1: 28 x 28 maps, about 4-5x the backbone compute by design) is timed on the same input. The compute per
image of every model is counted with ``torch.utils.flop_counter.FlopCounterMode``.

Example (the defaults are the target's setting: batch 8, 224 px, CPU; after ``pip install -e .``, or with
``PYTHONPATH=.`` from the repository root):

    python benchmarks/inference.py --reps 20 --threads 1   # 1 thread: stable on a loaded, shared machine
"""
import argparse
import os
import statistics

import timm
import torch
from _common import alternate, copy_backbone, load_text, row, setup, solved_looking_head, timer
from torch.utils.flop_counter import FlopCounterMode

import qpm_timm  # noqa: F401  (registers the qpm_* models)

TARGET = 1.05


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--reps', type=int, default=20, help='timed calls per model (alternating)')
    p.add_argument('--warmup', type=int, default=3, help='untimed calls per model first')
    p.add_argument('--reduced-reps', type=int, default=5,
                   help='timed calls of the reduced-strides variant (0: skip it)')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s choice)')
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.img_size < 32 or args.reps < 1 or args.warmup < 0 or args.reduced_reps < 0:
        p.error('need --batch-size >= 1, --img-size >= 32, --reps >= 1, --warmup >= 0, --reduced-reps >= 0')
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda: no CUDA device is available')
    return args


def gmacs_per_image(model: torch.nn.Module, img_size: int, device: torch.device) -> float:
    """Multiply-accumulates of one forward pass of one image, in billions (torch's FlopCounterMode)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, img_size, img_size, device=device))
    return counter.get_total_flops() / 2e9


def main(argv=None) -> float:
    args = parse_args(argv)
    device, g = setup(args)

    plain = timm.create_model('resnet50').eval()
    qpm_model = timm.create_model('qpm_resnet50_imagenet').eval()
    copy_backbone(qpm_model, plain)
    solved_looking_head(qpm_model, g)
    plain.to(device)
    qpm_model.to(device)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g).to(device)

    with torch.inference_mode():
        feats = plain.forward_features(x)
        torch.testing.assert_close(qpm_model.forward_features(x), feats, rtol=1e-5, atol=1e-5)
        assert qpm_model(x).shape == plain(x).shape == (args.batch_size, 1000)

        print(f'QPM-state inference vs plain timm resnet50: batch {args.batch_size}, {args.img_size} px, '
              f'device {args.device}, threads {torch.get_num_threads()}, eval + inference_mode')
        print(f'torch {torch.__version__}, timm {timm.__version__}; QPM head: {qpm_model.n_features} selected '
              f'features, {qpm_model.n_per_class} per class, {qpm_model.num_classes} classes; backbone features '
              f'asserted equal ({tuple(feats.shape)})')
        print(f'before: {load_text()} (CPU cores: {os.cpu_count()}; the machine is shared, hence alternation and '
              f'medians)')

        time_fn = timer(device)
        full = alternate({'A qpm_resnet50_imagenet (QPM head)': lambda _: qpm_model(x),
                          'B timm resnet50 (pool + linear head)': lambda _: plain(x)},
                         args.reps, args.warmup, time_fn)
        heads = alternate({'A QPM head only (forward_head)': lambda _: qpm_model.forward_head(feats),
                           'B linear head only (forward_head)': lambda _: plain.forward_head(feats)},
                          max(args.reps, 50), args.warmup, time_fn)
        gmacs = {'qpm_resnet50_imagenet': gmacs_per_image(qpm_model, args.img_size, device),
                 'resnet50': gmacs_per_image(plain, args.img_size, device)}
        reduced = {}
        if args.reduced_reps:
            cub = timm.create_model('qpm_resnet50_cub').eval()
            copy_backbone(cub, plain)
            solved_looking_head(cub, g)
            cub.to(device)
            gmacs['qpm_resnet50_cub'] = gmacs_per_image(cub, args.img_size, device)
            reduced = alternate({'C qpm_resnet50_cub (reduced strides, info)': lambda _: cub(x),
                                 'B timm resnet50 (same rounds as C)': lambda _: plain(x)},
                                args.reduced_reps, 1, time_fn)
        print(f'after:  {load_text()}')

    print()
    print(f'{"model":<44} {"median ms":>10} {"min ms":>9} {"max ms":>9} {"reps":>5}')
    for ts in (full, heads, reduced):
        for name, t in ts.items():
            print(row(name, t))
    med = {name: statistics.median(t) for ts in (full, heads, reduced) for name, t in ts.items()}
    names = list(full)
    print()
    print('compute per image: ' + ', '.join(f'{k} {v:.2f} GMACs' for k, v in gmacs.items()))
    hn = list(heads)
    print(f'head only: QPM / linear = {med[hn[0]] / med[hn[1]]:.2f}')
    if reduced:
        rn = list(reduced)
        print(f'reduced strides (info, not the target): qpm_resnet50_cub / resnet50 = {med[rn[0]] / med[rn[1]]:.2f} '
              f'in time, {gmacs["qpm_resnet50_cub"] / gmacs["resnet50"]:.2f} in compute: its stride-1 layer3/layer4 '
              f'(28 x 28 maps at 224 px) are several times the compute by design')
    ratio = med[names[0]] / med[names[1]]
    print(f'ratio: {ratio:.2f} (target <= {TARGET})')
    return ratio


if __name__ == '__main__':
    main()
