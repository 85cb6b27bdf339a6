""" The demo's command line (docs/EXPLANATIONS.md, "The demo").

    python -m qpm_timm.demo --model local-dir:<export>|hf-hub:<repo> [--pretrained] [--port N] [--host H]
        [--device cpu|cuda] [--top-k K]
    python -m qpm_timm.demo export-space <export> <folder> [--hub-id ORG/NAME]

Bad input (a model that is no QPM, a missing export, Gradio not installed) ends with ``error: <what to fix>`` and
exit code 2 before anything is served or written.
"""
import argparse
import sys
from typing import Optional, Sequence

from ..run.cli import exit_code

__all__ = ['main']


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m qpm_timm.demo', description='Gradio demo of a QPM: an image in, '
                                     'its classes, features, heatmaps, galleries and nearest class out.',
                                     epilog='python -m qpm_timm.demo export-space -h: a Hugging Face Space folder.')
    parser.add_argument('--model', required=True, metavar='NAME',
                        help='local-dir:<export folder>, hf-hub:<ORG/NAME> or a registered qpm_* variant')
    parser.add_argument('--pretrained', action='store_true', default=False,
                        help='load the model\'s weights (an export\'s or the Hub repository\'s)')
    parser.add_argument('--host', default='127.0.0.1', help='address to serve on (default: 127.0.0.1)')
    parser.add_argument('--port', type=int, default=None, help='port (default: the first free one from 7860)')
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:1, ... (default: cpu)')
    parser.add_argument('--top-k', type=int, default=5, metavar='K', help='classes listed per image (default: 5)')
    return parser


def _space_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m qpm_timm.demo export-space',
                                     description='Write a folder that runs as a Hugging Face Space unchanged.')
    parser.add_argument('export', nargs='?', default=None,
                        help='the export folder (model.safetensors + config.json [+ report/]); copied into it')
    parser.add_argument('folder', help='the Space folder to write (replaced atomically)')
    parser.add_argument('--hub-id', default=None, metavar='ORG/NAME',
                        help='load the model from this Hub repository instead of copying an export')
    return parser


def _run(argv: Sequence[str]) -> None:
    from .analysis import load_demo_model
    from .app import build_app, launch, require_gradio
    from .space import export_space
    if argv[:1] == ['export-space']:
        args = _space_parser().parse_args(argv[1:])
        if (args.export is None) == (args.hub_id is None):
            raise ValueError('export-space takes an export folder or --hub-id ORG/NAME (one of them).')
        print(f'Space folder: {export_space(args.export, args.folder, args.hub_id)}')
        return
    args = _serve_parser().parse_args(argv)
    if args.top_k < 1:
        raise ValueError(f'--top-k must be >= 1, got {args.top_k}.')
    require_gradio()  # before the model loads
    launch(build_app(load_demo_model(args.model, args.pretrained, args.device), args.top_k), args.host, args.port)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Serve the demo or write a Space folder (module docstring); 2 on bad input."""
    return exit_code(_run, list(sys.argv[1:] if argv is None else argv))


if __name__ == '__main__':
    sys.exit(main())
