"""Benchmark of the one-pass statistics (qpm_timm.stats.collect_statistics), CPU.

1. Throughput: the statistics step of ``collect_statistics`` (``forward_with_features`` +
   ``StatisticsAccumulator.update``) of a dense ``qpm_timm.create_qpm("resnet18", num_classes=200)``
   vs a plain forward pass (``model(x)``) of the same model on the same batches, alternating per
   batch because the machine is shared; medians are reported, and the one-off ``compute()``
   (A, B with MeanShift; independent of the number of images) separately.
   Target: statistics throughput >= 0.9 x plain throughput.
2. Peak memory: fresh subprocesses run ``collect_statistics`` over N and 4N images (generated
   lazily, so the dataset holds nothing) and report their peak RSS (``ru_maxrss``). The
   accumulator keeps only running sums, so the peak must stay flat. Target: flat.

Run:  python benchmarks/stats.py | tee benchmarks/results/stats.txt
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from _common import load_text, timer  # noqa: E402

import qpm_timm  # noqa: E402
from qpm_timm.stats import StatisticsAccumulator, collect_statistics  # noqa: E402

ARCH = "resnet18"


class RandomImages(torch.utils.data.Dataset):
    """Deterministic random images made on access (the dataset itself holds no memory)."""

    def __init__(self, n: int, num_classes: int, img_size: int):
        self.n, self.num_classes, self.img_size = n, num_classes, img_size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, self.img_size, self.img_size, generator=g), i % self.num_classes


def make_model(num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return qpm_timm.create_qpm(ARCH, num_classes=num_classes, head="dense").eval()


def throughput(args) -> None:
    """Per batch, alternately: plain ``model(x)`` and the statistics step of ``collect_statistics``.

    The statistics step is exactly the body of ``collect_statistics``' loop
    (``forward_with_features`` + ``StatisticsAccumulator.update``, under inference mode); pairing
    the two on the same batch, back to back in alternating order, cancels most of the load
    drift of a shared machine. ``compute()`` runs once at the end (a one-off cost).
    """
    model = make_model(args.num_classes)
    loader = torch.utils.data.DataLoader(
        RandomImages(args.images, args.num_classes, args.img_size), batch_size=args.batch_size)
    batches = list(loader)
    acc = StatisticsAccumulator(model.num_features, args.num_classes)

    def stats_step(x, y, accumulator):
        _, maps, pooled = model.forward_with_features(x)
        accumulator.update(pooled, y, maps)

    timed = timer(torch.device('cpu'))
    plain, stats = [], []
    with torch.inference_mode():
        x0, y0 = batches[0]  # warm-up of both paths (oneDNN kernels, first-call costs)
        model(x0)
        stats_step(x0, y0, StatisticsAccumulator(model.num_features, args.num_classes))
        for i, (x, y) in enumerate(batches):
            if i % 2 == 0:
                plain.append(timed(lambda: model(x)))
                stats.append(timed(lambda: stats_step(x, y, acc)))
            else:
                stats.append(timed(lambda: stats_step(x, y, acc)))
                plain.append(timed(lambda: model(x)))
    acc.compute()  # untimed first call (one-off import and allocation costs)
    t_compute = timed(acc.compute)
    n, b = args.images, args.batch_size
    pair_ratios = [p / s for p, s in zip(plain, stats)]
    print(f"throughput: {ARCH} dense head, {args.num_classes} classes, {args.img_size}px, {n} images in "
          f"{len(batches)} batches of {b}, {torch.get_num_threads()} threads; plain and statistics step "
          f"alternate per batch (medians)")
    print(f"  plain forward        {b / statistics.median(plain):7.2f} img/s   per batch (s): "
          f"{', '.join(f'{t:.2f}' for t in plain)}")
    print(f"  statistics step      {b / statistics.median(stats):7.2f} img/s   per batch (s): "
          f"{', '.join(f'{t:.2f}' for t in stats)}")
    print(f"  ratio stats/plain throughput: median of per-batch ratios {statistics.median(pair_ratios):.3f}, "
          f"ratio of medians {statistics.median(plain) / statistics.median(stats):.3f}  (target >= 0.9)")
    print(f"  one-off compute() (A, std, B with MeanShift; independent of the image count): {t_compute:.2f} s; "
          f"whole pass incl. compute: ratio of totals {sum(plain) / (sum(stats) + t_compute):.3f}")


def child(n: int, args) -> None:
    """Run in a fresh process: one statistics pass over n images, print peak RSS as JSON."""
    model = make_model(args.num_classes)
    loader = torch.utils.data.DataLoader(RandomImages(n, args.num_classes, args.img_size), batch_size=args.batch_size)
    start = time.perf_counter()
    stats = collect_statistics(model, loader, args.num_classes)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    state = StatisticsAccumulator(stats.num_features, args.num_classes).state_nbytes
    h, w = model.forward_with_features(torch.zeros(1, 3, args.img_size, args.img_size)).feature_maps.shape[2:]
    stored = n * stats.num_features * (1 + h * w) * 4  # float32 pooled + maps of every image
    print(json.dumps(dict(images=stats.num_images, peak_rss_mib=peak_kib / 1024, state_bytes=state,
                          store_all_bytes=stored, seconds=seconds)))


def memory(args) -> None:
    sizes = (args.mem_images, 4 * args.mem_images)
    runs = {n: [] for n in sizes}
    for _ in range(args.mem_repeats):
        for n in sizes:  # alternate N, 4N
            cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n), "--num-classes", str(args.num_classes),
                   "--img-size", str(args.img_size), "--batch-size", str(args.batch_size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[n].append(json.loads(out.strip().splitlines()[-1]))
    print(f"peak memory: fresh process per run, collect_statistics over N and 4N images "
          f"({args.img_size}px, batch {args.batch_size}), peak RSS (ru_maxrss), {args.mem_repeats} run(s) each")
    peaks = {}
    for n in sizes:
        peaks[n] = statistics.median(r["peak_rss_mib"] for r in runs[n])
        print(f"  {n:5d} images: peak RSS {peaks[n]:8.1f} MiB   runs: "
              f"{', '.join('%.1f' % r['peak_rss_mib'] for r in runs[n])}   "
              f"accumulator state {runs[n][0]['state_bytes'] / 1024:.1f} KiB (storing pooled + maps instead: "
              f"{runs[n][0]['store_all_bytes'] / 2 ** 20:.1f} MiB)   pass {runs[n][0]['seconds']:.0f} s")
    small, large = sizes
    print(f"  peak RSS ratio 4N/N: {peaks[large] / peaks[small]:.3f}  (target: flat, 1.0); "
          f"difference {peaks[large] - peaks[small]:+.1f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="images of the throughput passes (>= num-classes)")
    p.add_argument("--num-classes", type=int, default=200)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--mem-images", type=int, default=200, help="N of the memory runs (N and 4N; >= num-classes)")
    p.add_argument("--mem-repeats", type=int, default=1)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args.child, args)
        return
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {load_text()} at start")
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_memory:
        memory(args)
    print(f"{load_text()} at end")


if __name__ == "__main__":
    main()
