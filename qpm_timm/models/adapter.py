""" Token-wise MLP adapter between a (frozen) backbone and the QPM head.

DINO-QPM (Zimmermann et al., 2026; docs/METHOD.md, "ViT backbones and the adapter") maps every patch token of a
frozen DINOv2 through the same small MLP before the QPM head: ``depth`` layers, each a linear map followed by
BatchNorm over batch and positions and a ReLU (the last layer too, so the adapted features are non-negative like
a ResNet's). On an ``N x C x H x W`` map a per-token linear map is a ``1 x 1`` convolution.
"""
import torch.nn as nn

__all__ = ['TokenMLPAdapter', 'check_adapter_args']


def check_adapter_args(depth: int, hidden: int, dim: int) -> None:
    """Refuse adapter sizes that build no network."""
    for name, value, low in (('adapter_depth', depth, 0), ('adapter_hidden', hidden, 1), ('adapter_dim', dim, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f'{name} must be an integer >= {low}, got {value!r}.')


class TokenMLPAdapter(nn.Sequential):
    """``depth`` x (1 x 1 conv -> BatchNorm2d -> ReLU): ``in_chs -> hidden -> ... -> hidden -> out_chs``."""

    def __init__(self, in_chs: int, depth: int, hidden: int, out_chs: int, device=None, dtype=None):
        check_adapter_args(depth, hidden, out_chs)
        if depth < 1:
            raise ValueError('a TokenMLPAdapter needs depth >= 1 (depth 0 means no adapter).')
        widths = [in_chs] + [hidden] * (depth - 1) + [out_chs]
        dd = dict(device=device, dtype=dtype)
        layers = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.Conv2d(c_in, c_out, 1, bias=False, **dd), nn.BatchNorm2d(c_out, **dd), nn.ReLU(inplace=True)]
        super().__init__(*layers)
        self.num_features = out_chs
