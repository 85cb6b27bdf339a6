"""``python -m qpm_timm.export`` (docs/EXPORT.md): its flags and run over the library :mod:`qpm_timm.export`; the file
is staged beside its target and renamed into place only after the check passed."""
import argparse
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..export import ATOL, KINDS, check_onnx, check_pt2, export_onnx, export_pt2, input_size, load_model
from ..export import __doc__ as export_doc
from .cli import UsageError, exit_code

__all__ = ['export_command', 'main']


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m qpm_timm.export', description=export_doc.split('\n\n')[0])
    p.add_argument('kind', choices=sorted(KINDS), help='onnx (onnxruntime) or pt2 (torch.export program)')
    p.add_argument('model', help='a QPM variant, local-dir:<export> or hf-hub:<repo>')
    p.add_argument('file', help='the file to write (.onnx or .pt2)')
    p.add_argument('--with-maps', action='store_true', help='also output the kept features\' maps (heatmaps)')
    p.add_argument('--img-size', type=int, default=None, help='input size the check uses (default: the model\'s)')
    p.add_argument('--pretrained', action='store_true', help='a registered name: load its published weights')
    p.add_argument('--checkpoint', default='', help='load these weights (.safetensors or timm checkpoint)')
    p.add_argument('--opset', type=int, default=None, help='ONNX opset (default: torch.onnx\'s)')
    p.add_argument('--atol', type=float, default=ATOL, help='refuse the file above this difference to eager')
    return p


def export_command(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """``python -m qpm_timm.export``; returns the check's largest differences."""
    args = _parser().parse_args(argv)
    path = Path(args.file)
    if path.suffix != KINDS[args.kind]:
        raise UsageError(f'{args.file}: a {args.kind} file ends in {KINDS[args.kind]}.')
    if not path.parent.is_dir():
        raise UsageError(f'{path.parent} does not exist; create the folder for {path.name} first.')
    if args.img_size is not None and args.img_size < 1:
        raise UsageError(f'--img-size must be >= 1, got {args.img_size}.')
    model = load_model(args.model, args.pretrained, args.checkpoint)
    kw = dict(with_maps=args.with_maps, img_size=args.img_size)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        if args.kind == 'onnx':
            export_onnx(model, staged, opset=args.opset, **kw)
            diffs = check_onnx(model, staged, **kw)
        else:
            export_pt2(model, staged, **kw)
            diffs = check_pt2(model, staged, **kw)
        worst = max(diffs.values())
        report = ', '.join(f'{k} {v:.2e}' for k, v in diffs.items())
        if not worst <= args.atol:
            raise ValueError(f'the exported model differs from eager PyTorch by {worst:.2e} > --atol {args.atol} '
                             f'({report}); nothing written.')
        os.replace(staged, path)
    size = input_size(model, args.img_size)
    print(f'{args.kind}: {path} ({path.stat().st_size / 1e6:.1f} MB), input images (N, {size[0]}, {size[1]}, '
          f'{size[2]}), batch dynamic; max |{args.kind} - eager| at batch 1 and 2: {report}')
    return diffs


def main(argv: Optional[Sequence[str]] = None) -> int:
    return exit_code(export_command, argv)
