"""ONNX (onnxruntime, CPU) vs eager PyTorch latency of a QPM at batch 1 and 32 (docs/METHOD.md, "Export").

The model is exported with ``qpm_timm.export.export_onnx`` (logits only) unless ``--onnx`` names its export already,
checked against eager (largest absolute difference printed), then both run alternately on the same seeded images
(after warm-up), with the same number of threads (``--threads``: torch.set_num_threads and onnxruntime's intra-op
threads). The table gives medians; the last line the ratio onnxruntime / eager of the medians at each batch size
(below 1: onnxruntime is faster).

Example (CPU; the README's numbers, on the exported embedded default):

    python benchmarks/onnx_latency.py --model local-dir:output/train/qpm_resnet10t-concepts/export --threads 1
"""
import argparse
import os
import statistics
import tempfile

import torch
from _common import alternate, load_text, row, setup, timer

from qpm_timm.export import check_onnx, export_onnx, input_size, load_model, onnx_session


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', required=True, help='a QPM: local-dir:<export>, hf-hub:<repo> or a registered name')
    p.add_argument('--onnx', default=None, help='its ONNX file already exported (default: export to a temporary one)')
    p.add_argument('--img-size', type=int, default=None, help='default: the model\'s input size')
    p.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 32])
    p.add_argument('--reps', type=int, default=20, help='timed calls per runtime and batch size (alternating)')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--device', default='cpu', choices=('cpu',))
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    if args.reps < 1 or args.warmup < 0 or args.threads < 1 or min(args.batch_sizes) < 1:
        p.error('need --reps >= 1, --warmup >= 0, --threads >= 1 and batch sizes >= 1')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device, g = setup(args)
    model = load_model(args.model)
    size = input_size(model, args.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx or export_onnx(model, os.path.join(tmp, 'model.onnx'), img_size=args.img_size)
        diffs = check_onnx(model, path, img_size=args.img_size)
        session = onnx_session(path, args.threads)
        print(f'onnxruntime vs eager PyTorch: {args.model}, input {size}, threads {args.threads}, '
              f'torch {torch.__version__}; max |onnx - eager| logits {diffs["logits"]:.2e}')
        print(f'before: {load_text()} (CPU cores: {os.cpu_count()}; alternation and medians)')
        times = {}
        with torch.inference_mode():
            for b in args.batch_sizes:
                x = torch.randn(b, *size, generator=g)
                feed = {'images': x.numpy()}
                times.update(alternate({f'eager PyTorch, batch {b}': lambda _: model(x),
                                        f'onnxruntime, batch {b}': lambda _: session.run(None, feed)},
                                       args.reps, args.warmup, timer(device)))
        print(f'after:  {load_text()}')
    print()
    print(f'{"runtime":<44} {"median ms":>10} {"min ms":>9} {"max ms":>9} {"reps":>5}')
    for name, ts in times.items():
        print(row(name, ts))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ratios = {b: med[f'onnxruntime, batch {b}'] / med[f'eager PyTorch, batch {b}'] for b in args.batch_sizes}
    print()
    print('ratio onnxruntime / eager: ' + ', '.join(f'batch {b} {r:.2f}' for b, r in ratios.items()))
    return ratios


if __name__ == '__main__':
    main()
