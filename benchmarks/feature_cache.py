"""Frozen-backbone training epoch read from the feature cache vs from images (docs/FEATURE_CACHE.md).

Measured, in one process, alternately (after warm-up), on the same data and the same model: one training epoch of
a QPM whose backbone is frozen (``model.freeze_backbone()``: only the adapter and the dense head train), with SGD,

* uncached: images (the generated concepts dataset rendered at ``--img-size``, eval transform) -> frozen backbone
  forward (no gradient) -> adapter and head forward -> cross-entropy -> backward -> step;
* cached: the backbone's maps read from the cache (``qpm_timm.data.build_feature_cache``, built once before the
  timed rounds and reported as its own row) -> the same adapter and head forward, backward, step, inside
  ``model.reading_backbone_maps()``.

The table gives medians; the final line the ratio of the medians uncached / cached. Target: >= 10 for ViT-S/14
(DINOv2 with registers, random initialisation) at 224 px on CPU. The adapter flags default to the small DINOv2
variant (depth 2, hidden 512, 256 channels); ``--adapter-depth 0``: no adapter, only the head trains.
``--img-size`` is also the ViT's ``img_size``; ``--embed-dim/--depth/--num-heads`` shrink the ViT (a quick run).

Example (CPU, 2 cores; about 2 minutes):

    python benchmarks/feature_cache.py --threads 1
"""
import argparse
import os
import statistics
import tempfile
from contextlib import nullcontext

import timm
import torch
import torch.nn.functional as F
from _common import alternate, load_text, row, setup, timer
from torch.utils.data import DataLoader
from torchvision import transforms as T

import qpm_timm
from qpm_timm.data import ConceptsDataset, build_feature_cache, cache_key

TARGET = 10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--backbone', default='vit_small_patch14_reg4_dinov2', help='timm ViT name (random init)')
    p.add_argument('--img-size', type=int, default=224, help='image side, also the ViT img_size')
    p.add_argument('--embed-dim', type=int, default=None, help='ViT width (default: the backbone\'s)')
    p.add_argument('--depth', type=int, default=None, help='ViT blocks (default: the backbone\'s)')
    p.add_argument('--num-heads', type=int, default=None, help='ViT heads (default: the backbone\'s)')
    p.add_argument('--adapter-depth', type=int, default=2, help='0: no adapter')
    p.add_argument('--adapter-hidden', type=int, default=512)
    p.add_argument('--adapter-dim', type=int, default=256)
    p.add_argument('--images', type=int, default=64, help='images per epoch (8 classes of the concepts dataset)')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--dtype', default='float16', choices=('float16', 'float32'), help='of the cache')
    p.add_argument('--reps', type=int, default=3, help='timed epochs per variant (alternating)')
    p.add_argument('--warmup', type=int, default=1, help='untimed epochs per variant first')
    p.add_argument('--workers', type=int, default=0, help='DataLoader workers of both loaders')
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s choice)')
    p.add_argument('--cache-dir', default=None, help='folder of the cache (default: a temporary folder)')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    if min(args.images, args.batch_size, args.reps) < 1 or min(args.warmup, args.adapter_depth) < 0:
        p.error('need --images, --batch-size, --reps >= 1 and --warmup, --adapter-depth >= 0')
    if args.images < 8:
        p.error('--images must be >= 8 (one per class)')
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda: no CUDA device is available')
    if not timm.is_model(args.backbone):
        p.error(f'unknown --backbone {args.backbone!r}: give a timm model name')
    return args


def create_model(args) -> torch.nn.Module:
    """The frozen-backbone dense QPM: ViT kwargs and adapter args from the flags."""
    vit = {k: v for k, v in dict(embed_dim=args.embed_dim, depth=args.depth, num_heads=args.num_heads).items()
           if v is not None}
    adapter = dict(adapter_depth=args.adapter_depth, adapter_hidden=args.adapter_hidden,
                   adapter_dim=args.adapter_dim) if args.adapter_depth else {}
    model = qpm_timm.create_qpm(args.backbone, num_classes=8, n_features=6, n_per_class=2, head='dense',
                                img_size=args.img_size, **vit, **adapter)
    model.freeze_backbone()
    return model


def main(argv=None) -> float:
    args = parse_args(argv)
    device, _ = setup(args)
    model = create_model(args).to(device)
    dataset = ConceptsDataset(num_classes=8, img_size=args.img_size, images_per_class=-(-args.images // 8),
                              seed=args.seed, transform=T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.2,) * 3)]))
    time_fn = timer(device)
    folder = args.cache_dir or tempfile.mkdtemp(prefix='feature_cache_')
    key, built = cache_key(model, dataset.transform, dataset), []
    build_s = time_fn(lambda: built.append(build_feature_cache(
        model, dataset, folder, key, batch_size=args.batch_size, num_workers=args.workers, device=device,
        dtype=args.dtype)))
    cache = built[0]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=1e-3, momentum=0.9)
    loaders = {False: DataLoader(dataset, args.batch_size, shuffle=True, num_workers=args.workers),
               True: DataLoader(cache, args.batch_size, shuffle=True, num_workers=args.workers)}
    losses = {}

    def epoch(cached: bool, i: int) -> None:
        cache.set_epoch(i)
        model.train()
        with model.reading_backbone_maps() if cached else nullcontext():
            for x, y in loaders[cached]:
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        losses['cached' if cached else 'uncached'] = loss.item()

    adapter = (f'adapter depth {args.adapter_depth}, hidden {args.adapter_hidden}, {args.adapter_dim} channels'
               if args.adapter_depth else 'no adapter')
    print(f'frozen-backbone epoch, cached vs uncached: {args.backbone} (random init; {adapter}), {args.img_size} px, '
          f'{len(dataset)} images, batch {args.batch_size}, device {args.device}, threads {torch.get_num_threads()}, '
          f'workers {args.workers}')
    print(f'torch {torch.__version__}, timm {timm.__version__}; cache {cache.maps.shape} {args.dtype}, '
          f'{cache.maps.nbytes / 2 ** 20:.1f} MiB; trainable parameters {sum(p.numel() for p in trainable)}')
    print(f'before: {load_text()} (CPU cores: {os.cpu_count()}; shared machine, hence alternation and medians)')
    fns = {'uncached epoch (images -> frozen backbone -> head)': lambda i: epoch(False, i),
           'cached epoch (cached maps -> head)': lambda i: epoch(True, i)}
    times = alternate(fns, args.reps, args.warmup, time_fn)
    print(f'after:  {load_text()}')
    print()
    print(f'{"epoch":<52} {"median ms":>10} {"min ms":>9} {"max ms":>9} {"reps":>5}')
    for name, ts in times.items():
        print(row(name, ts, width=52))
    print(row('cache build (once: one backbone pass + write)', [build_s], width=52))
    print()
    print('last losses: ' + ', '.join(f'{k} {v:.3f}' for k, v in losses.items()))
    uncached, cached = (statistics.median(ts) for ts in times.values())
    print(f'the build pays for itself after {build_s / max(uncached - cached, 1e-9):.2f} epochs')
    ratio = uncached / cached
    print(f'ratio uncached/cached: {ratio:.2f} (target >= {TARGET})')
    return ratio


if __name__ == '__main__':
    main()
