""" ONNX and torch.export files of a QPM, checked against eager PyTorch (docs/METHOD.md, "Export").

    python -m qpm_timm.export onnx <model> <file.onnx> [--with-maps] [--img-size N] [--pretrained] [--checkpoint F]
    python -m qpm_timm.export pt2 <model> <file.pt2> [--with-maps] ...

``<model>`` as timm names it: a registered name (random weights unless ``--pretrained`` or ``--checkpoint``),
``local-dir:<export>`` or ``hf-hub:<repo>`` (their weights). The model goes through ``torch.export`` once, with a
dynamic batch size; ``pt2`` saves that program (``torch.export.load`` reads it back), ``onnx`` is torch.onnx's
translation of it. Input ``images`` ``(N, 3, H, W)``; outputs ``logits`` ``(N, C)`` and, with ``--with-maps``,
``feature_maps`` ``(N, n_f*, h, w)``: the maps of the kept features, from which heatmaps are drawn (the dense
state's are all channels). A QPM head stays the small thing it is: a Gather of the ``n_f*`` kept channels, a mean
pool, ``(x - mean) / std`` and a MatMul with the binary ``C x n_f*`` ``W``. Every written file is checked: the
outputs of onnxruntime (CPU) or of the loaded program against eager PyTorch on seeded random images at batch 1 and
2, the largest absolute difference printed and refused above ``--atol`` (1e-4). The file is written beside and
renamed into place, so a failed export leaves an earlier file intact.
"""
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .models import QPMModel

__all__ = ['ATOL', 'KINDS', 'ExportWrapper', 'export_program', 'export_onnx', 'export_pt2', 'onnx_session',
           'check_onnx', 'check_pt2', 'input_size', 'load_model']

ATOL = 1e-4
KINDS = {'onnx': '.onnx', 'pt2': '.pt2'}


class ExportWrapper(nn.Module):
    """``images -> logits`` or ``images -> (logits, feature_maps)`` of a QPM in eval mode (the exported graph)."""

    def __init__(self, model: QPMModel, with_maps: bool = False):
        super().__init__()
        self.model, self.with_maps = model, with_maps

    def forward(self, images: torch.Tensor):
        if not self.with_maps:
            return self.model(images)
        maps = self.model.head.select(self.model.forward_features(images))
        return self.model.head.forward_pooled(self.model.head.global_pool(maps)), maps


def output_names(with_maps: bool) -> Tuple[str, ...]:
    return ('logits', 'feature_maps') if with_maps else ('logits',)


def input_size(model: QPMModel, img_size: Optional[int] = None) -> Tuple[int, int, int]:
    """``(3, H, W)``: ``img_size`` or the model's data config (``pretrained_cfg['input_size']``)."""
    if img_size:
        return 3, int(img_size), int(img_size)
    return tuple(model.pretrained_cfg.get('input_size', (3, 224, 224)))


def example_images(size: Tuple[int, int, int], batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(seed))


def export_program(model: QPMModel, size: Tuple[int, int, int], with_maps: bool = False
                   ) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`ExportWrapper` in eval mode with a dynamic batch size (traced at batch 2)."""
    if not isinstance(model, QPMModel):
        raise ValueError(f'only QPM models export here, got {type(model).__name__}.')
    if with_maps and not model.head.global_pool.pool_type:
        raise ValueError('--with-maps needs a pooling head; this model has global_pool="".')
    wrapper = ExportWrapper(model.eval(), with_maps).eval()
    batch = torch.export.Dim('batch', min=1, max=4096)
    with torch.no_grad():
        return torch.export.export(wrapper, (example_images(size, 2),), dynamic_shapes=({0: batch},))


def _replace_atomically(path: Path, write) -> Path:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def export_onnx(model: QPMModel, path, *, with_maps: bool = False, img_size: Optional[int] = None,
                opset: Optional[int] = None) -> Path:
    """Write the ONNX file of ``model`` (module docstring): one file, weights inside, dynamic batch size."""
    program = export_program(model, input_size(model, img_size), with_maps)

    def write(tmp: str) -> None:
        onnx_program = torch.onnx.export(program, input_names=['images'], output_names=list(output_names(with_maps)),
                                         opset_version=opset, dynamo=True, external_data=False, verbose=False)
        onnx_program.save(tmp, external_data=False)
    return _replace_atomically(Path(path), write)


def export_pt2(model: QPMModel, path, *, with_maps: bool = False, img_size: Optional[int] = None) -> Path:
    """Write the ``torch.export`` program of ``model`` (``torch.export.load`` reads it; dynamic batch size)."""
    program = export_program(model, input_size(model, img_size), with_maps)
    return _replace_atomically(Path(path), lambda tmp: torch.export.save(program, tmp))


def onnx_session(path, threads: int = 1):
    """An onnxruntime CPU session of ``path`` with ``threads`` intra-op threads."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def _eager(model: QPMModel, images: torch.Tensor, with_maps: bool) -> Sequence[np.ndarray]:
    with torch.no_grad():
        out = ExportWrapper(model.eval(), with_maps)(images)
    return [t.numpy() for t in (out if with_maps else (out,))]


def _max_diffs(model, run, size, with_maps: bool, batches: Sequence[int]) -> Dict[str, float]:
    diffs = {name: 0.0 for name in output_names(with_maps)}
    for i, b in enumerate(batches):
        images = example_images(size, b, seed=1 + i)
        for name, got, want in zip(diffs, run(images), _eager(model, images, with_maps)):
            if got.shape != want.shape:
                raise ValueError(f'{name}: the exported model gives shape {got.shape}, eager PyTorch {want.shape}.')
            diffs[name] = max(diffs[name], float(np.abs(got - want).max()))
    return diffs


def check_onnx(model: QPMModel, path, *, with_maps: bool = False, img_size: Optional[int] = None,
               batches: Sequence[int] = (1, 2)) -> Dict[str, float]:
    """Largest absolute difference of every output, onnxruntime (CPU) vs eager PyTorch, over seeded random images
    at each batch size in ``batches``."""
    session = onnx_session(path)
    return _max_diffs(model, lambda x: session.run(None, {'images': x.numpy()}), input_size(model, img_size),
                      with_maps, batches)


def check_pt2(model: QPMModel, path, *, with_maps: bool = False, img_size: Optional[int] = None,
              batches: Sequence[int] = (1, 2)) -> Dict[str, float]:
    """As :func:`check_onnx`, for the program read back with ``torch.export.load``."""
    module = torch.export.load(str(path)).module()

    def run(x):
        with torch.no_grad():
            out = module(x)
        return [t.numpy() for t in (out if with_maps else (out,))]
    return _max_diffs(model, run, input_size(model, img_size), with_maps, batches)


# --- a model by name (the command line's input) ---------------------------------------------------------------
def load_model(name: str, pretrained: bool = False, checkpoint: str = '') -> QPMModel:
    """A QPM by its timm name (module docstring); a missing export, checkpoint or unknown name is bad input (a
    ValueError naming the fix)."""
    import timm
    if name.startswith('local-dir:') and not (Path(name[len('local-dir:'):]) / 'config.json').is_file():
        raise ValueError(f'{name}: no export there (config.json and model.safetensors); give an export folder.')
    if checkpoint and not os.path.isfile(checkpoint):
        raise ValueError(f'--checkpoint {checkpoint} does not exist.')
    hub = name.startswith(('local-dir:', 'hf-hub:'))
    try:
        model = timm.create_model(name, pretrained=pretrained or hub, checkpoint_path=checkpoint or None)
    except RuntimeError as e:
        if 'Unknown model' not in str(e):
            raise
        raise ValueError(f'{name}: {e}; give a QPM variant (qpm_resnet50_cub, ...), local-dir:<export> or '
                         f'hf-hub:<repo>.') from e
    if not isinstance(model, QPMModel):
        raise ValueError(f'{name} is not a QPM ({type(model).__name__}); this command exports QPM models.')
    return model.eval()


if __name__ == '__main__':  # the command line lives in the run layer, as train.py's does
    from qpm_timm.run.exporting import main
    sys.exit(main())
