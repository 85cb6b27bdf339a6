"""The frozen-backbone feature cache (docs/FEATURE_CACHE.md).

A frozen backbone maps the same image to the same feature map in every epoch, so its outputs
(``QPMModel.forward_backbone``: the map before the optional adapter) are computed once, stored in a folder as a
memory-mapped ``.npy`` of shape ``(V, N, C, H, W)`` (``V`` views of ``N`` images), and every later epoch, the
statistics pass and the fine-tune read them through :class:`FeatureCache` inside ``model.reading_backbone_maps()``.

Folder layout: ``maps.npy`` (the maps, float16 or float32), ``targets.npy`` (int64, ``N``) and ``cache.json``
(the sidecar: key, backbone, shape, dtype, views, seed, input image size, number of images, the byte sizes of
both files and a ``complete`` flag). A build first replaces the sidecar by one marked incomplete, writes the data
to ``*.partial`` names, renames them, and only then writes the complete sidecar: a build killed at any moment
leaves a folder that :func:`open_feature_cache` refuses and :func:`ensure_feature_cache` rebuilds.

The key (:func:`cache_key`) is a sha256 over the backbone (its module structure and every weight and buffer),
the transform, the dataset, the number of views and their seed: any change makes a stored cache stale.
Under ``torch.distributed``, rank 0 builds and the other ranks wait at a barrier, then open what it wrote.
"""
import hashlib
import json
import logging
import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ..atomic import atomic_write
from ..precision import autocast

__all__ = ['FeatureCache', 'cache_key', 'build_feature_cache', 'open_feature_cache', 'ensure_feature_cache',
           'feature_cache_bytes', 'CACHE_DTYPES']

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
CACHE_FORMAT = 1  # bump when the layout or the meaning of the key changes: older caches become stale
CACHE_DTYPES = ('float16', 'float32')
MAPS_FILE, TARGETS_FILE, SIDECAR_FILE = 'maps.npy', 'targets.npy', 'cache.json'
# what the datasets here carry: targets, (path, label) lists, CUB's boxes, the concepts dataset's pixels
_SAMPLE_ATTRS = ('targets', 'samples', 'imgs', '_samples', '_image_files', '_labels', 'boxes', 'images')


def _unwrap(model: nn.Module) -> nn.Module:
    """The QPMModel inside a DDP wrapper (the model itself otherwise)."""
    return model if hasattr(model, 'forward_backbone') else getattr(model, 'module', model)


def _update_tensor(h: 'hashlib._Hash', name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    h.update(f'{name}:{t.dtype}:{tuple(t.shape)};'.encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _update_value(h: 'hashlib._Hash', value: Any) -> None:
    """Feed an array, a tensor or a list of samples into ``h``."""
    if isinstance(value, torch.Tensor):
        _update_tensor(h, 'tensor', value)
    elif isinstance(value, np.ndarray):
        h.update(f'{value.dtype}:{value.shape};'.encode())
        h.update(np.ascontiguousarray(value).tobytes())
    else:
        h.update(repr(list(value)).encode())


def _has_own_repr(obj: Any) -> bool:
    return type(obj).__repr__ is not object.__repr__  # object's repr holds a memory address: not a fingerprint


def _update_dataset(h: 'hashlib._Hash', dataset: Dataset) -> None:
    """A fingerprint of ``dataset``: its class, length, its own repr (the parameters of a generated dataset, the
    folder, split and crop of CUB), and its targets and samples where it carries them (``samples``/``imgs`` as
    (path, label), CUB's boxes, the concepts dataset's pixels, timm's ``reader.samples``); a ``Subset`` adds its
    indices to its parent's fingerprint. A dataset with none of these (not even a ``targets`` list) is
    fingerprinted by every target, reading each sample once."""
    h.update(f'{type(dataset).__module__}.{type(dataset).__qualname__}:{len(dataset)};'.encode())
    if isinstance(dataset, Subset):
        _update_value(h, [int(i) for i in dataset.indices])
        _update_dataset(h, dataset.dataset)
        return
    if _has_own_repr(dataset):
        h.update(repr(dataset).encode())
    found = False
    for owner, attr in [(dataset, a) for a in _SAMPLE_ATTRS] + [(getattr(dataset, 'reader', None), 'samples')]:
        value = getattr(owner, attr, None) if owner is not None else None
        if value is not None:
            h.update(attr.encode())
            _update_value(h, value)
            found = True
    if not found:
        _logger.info(f'feature cache key: {type(dataset).__name__} carries no sample list; reading every '
                     f'sample once for its target.')
        _update_value(h, [int(dataset[i][1]) for i in range(len(dataset))])


def cache_key(model: nn.Module, transform: Optional[Callable], dataset: Dataset, views: int = 0,
              seed: int = 0) -> str:
    """The sha256 hex digest that identifies a cache (docs/FEATURE_CACHE.md, "Key").

    It covers the backbone (its name, its module structure, e.g. reduced strides, and the bytes of every tensor
    of its state dict in key order), ``repr(transform)``, a fingerprint of ``dataset`` (see ``_update_dataset``),
    ``views`` and ``seed``. A transform whose repr holds a memory address (a lambda) gives another key in
    every process, so its cache is rebuilt each run.
    """
    net = _unwrap(model)
    h = hashlib.sha256(f'qpm-timm feature cache {CACHE_FORMAT};{net.backbone_name};'.encode())
    h.update(repr(net.backbone).encode())
    for name, tensor in net.backbone.state_dict().items():
        _update_tensor(h, name, tensor)
    h.update(f';transform:{transform!r};'.encode())
    _update_dataset(h, dataset)
    h.update(f';views:{int(views)};seed:{int(seed)}'.encode())
    return h.hexdigest()


def _numpy_dtype(dtype: Union[str, torch.dtype]) -> np.dtype:
    name = str(dtype).replace('torch.', '')
    if name not in CACHE_DTYPES:
        raise ValueError(f'feature cache dtype must be one of {CACHE_DTYPES} (float16 halves the disk size), '
                         f'got {dtype!r}.')
    return np.dtype(name)


def feature_cache_bytes(shape: Tuple[int, ...], dtype: Union[str, torch.dtype] = 'float16') -> int:
    """Bytes of the maps of a cache of ``shape`` ``(V, N, C, H, W)``: ``V * N * C * H * W * itemsize``."""
    return int(np.prod(shape, dtype=np.int64)) * _numpy_dtype(dtype).itemsize


def _pass_seed(seed: int, view: int) -> int:
    """The seed of view ``view``'s pass, derived from ``(seed, view)``."""
    return int(np.random.SeedSequence([int(seed), int(view)]).generate_state(1)[0])


@contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch's, Python's and numpy's global RNGs (what transforms draw from) for one pass, then put the
    caller's states back, so a build does not change the training run's random stream."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _read_sidecar(folder: Path) -> Optional[Dict[str, Any]]:
    path = folder / SIDECAR_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f'feature cache sidecar {path} is not valid JSON ({e}); delete the folder {folder} '
                         f'or let train.py rebuild it.') from e


def _write_sidecar(folder: Path, meta: Dict[str, Any]) -> None:
    with atomic_write(folder / SIDECAR_FILE) as fh:
        json.dump(meta, fh, indent=2)


def _remove(*paths: Path) -> None:
    for p in paths:
        if p.exists():
            p.unlink()


def build_feature_cache(
        model: nn.Module,
        dataset: Dataset,
        path: PathLike,
        key: str,
        *,
        views: int = 0,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        device: Optional[Union[str, torch.device]] = None,
        amp: bool = False,
        progress: bool = False,
        dtype: Union[str, torch.dtype] = torch.float16,
) -> 'FeatureCache':
    """Compute ``model.forward_backbone`` (eval mode, inference mode) over ``dataset`` in order and store it in
    the folder ``path`` (module docstring); returns the opened :class:`FeatureCache`.

    Args:
        model: a QPMModel whose backbone is frozen (``model.freeze_backbone()``): only then are the maps the same
            in every epoch.
        key: :func:`cache_key` of the model, the dataset's transform and the dataset (recorded in the sidecar).
        views: 0: one pass through the dataset's own transform (un-augmented); ``K > 0``: ``K`` passes, pass ``v``
            with the global RNGs (and the loader's worker seeds) seeded from ``(seed, v)``, so the augmented views
            are reproducible for the same seed, batch size and number of workers.
        batch_size, num_workers, device, amp, progress: of the passes (device default: the model's; a tqdm bar
            per pass with ``progress``).
        dtype: ``float16`` (half the disk, within float16 rounding) or ``float32`` (the exact maps).
    """
    net = _unwrap(model)
    if not getattr(net, 'backbone_frozen', False):
        raise ValueError(f'the backbone {getattr(net, "backbone_name", "?")} is not frozen: a feature cache holds '
                         f'the maps of fixed weights. Call model.freeze_backbone() (train.py --freeze-backbone).')
    if views < 0:
        raise ValueError(f'views must be >= 0 (0: the un-augmented dataset), got {views}.')
    if len(dataset) == 0:
        raise ValueError('the dataset is empty: nothing to cache.')
    np_dtype = _numpy_dtype(dtype)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    maps_file, targets_file = folder / MAPS_FILE, folder / TARGETS_FILE
    maps_tmp, targets_tmp = folder / (MAPS_FILE + '.partial'), folder / (TARGETS_FILE + '.partial')
    num_views, n = max(views, 1), len(dataset)
    meta = dict(format=CACHE_FORMAT, key=key, backbone=net.backbone_name, views=int(views), seed=int(seed),
                num_images=n, dtype=np_dtype.name, complete=False)
    _write_sidecar(folder, meta)  # from here on the folder is incomplete, whatever it held before
    _remove(maps_file, targets_file)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = model.training
    model.to(device).eval()
    maps, targets = None, np.empty(n, dtype=np.int64)
    try:
        for view in range(num_views):
            pass_seed = _pass_seed(seed, view)
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                generator=torch.Generator().manual_seed(pass_seed))
            start = 0
            with _seeded_rngs(pass_seed), torch.inference_mode(), autocast(device, amp):
                for images, labels, *_ in tqdm(loader, desc=f'feature cache view {view + 1}/{num_views}',
                                              disable=not progress):
                    out = net.forward_backbone(images.to(device, non_blocking=True)).float().cpu().numpy()
                    if maps is None:
                        meta.update(shape=[num_views, n, *out.shape[1:]], image_size=list(images.shape[-2:]))
                        maps = np.lib.format.open_memmap(maps_tmp, mode='w+', dtype=np_dtype,
                                                         shape=tuple(meta['shape']))
                    with np.errstate(over='ignore'):  # checked on the next line
                        stored = out.astype(np_dtype)
                    if not np.isfinite(stored).all():
                        raise ValueError(f'backbone maps of images {start}..{start + len(out) - 1} are not finite '
                                         f'in {np_dtype.name} (largest |value| {np.abs(out).max():.3g}); build the '
                                         f'cache with dtype=float32.')
                    maps[view, start:start + len(out)] = stored
                    if view == 0:
                        targets[start:start + len(out)] = torch.as_tensor(labels).numpy()
                    start += len(out)
        maps.flush()
        del maps
        with open(targets_tmp, 'wb') as fh:
            np.save(fh, targets)
        os.replace(maps_tmp, maps_file)
        os.replace(targets_tmp, targets_file)
        meta.update(complete=True, maps_bytes=maps_file.stat().st_size, targets_bytes=targets_file.stat().st_size)
        _write_sidecar(folder, meta)
    except BaseException:
        maps = None  # noqa: F841  (release the memory map before its file is deleted)
        _remove(maps_tmp, targets_tmp)
        raise
    finally:
        model.train(was_training)
    _logger.info(f'feature cache {folder}: {num_views} view(s) x {n} images, maps {tuple(meta["shape"][2:])}, '
                 f'{np_dtype.name}, {meta["maps_bytes"] / 2 ** 20:.1f} MiB')
    return open_feature_cache(folder, key)


class FeatureCache(Dataset):
    """A built cache as a Dataset of ``(float32 maps (C, H, W), int target)`` (module docstring).

    ``set_epoch(e)`` reads view ``e % views``. The maps file is memory-mapped on first access in each process
    (a DataLoader worker maps it itself; nothing is copied when the dataset is pickled to workers).

    Attributes: ``views`` (number of stored views), ``image_size`` ``(H, W)`` of the images the maps come from,
    ``key``, ``backbone`` (timm name the cache was built for), ``targets`` (list of int), ``folder``, ``meta``.
    """

    def __init__(self, folder: PathLike, meta: Dict[str, Any]):
        self.folder = Path(folder)
        self.meta = meta
        self.key: str = meta['key']
        self.backbone: str = meta['backbone']
        self.views: int = int(meta['shape'][0])
        self.image_size: Tuple[int, int] = tuple(meta['image_size'])
        self.targets = np.load(self.folder / TARGETS_FILE).tolist()
        self.view = 0
        self._maps: Optional[np.ndarray] = None

    @property
    def maps(self) -> np.ndarray:
        """The ``(V, N, C, H, W)`` memory map, read-only."""
        if self._maps is None:
            self._maps = np.load(self.folder / MAPS_FILE, mmap_mode='r')
        return self._maps

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, '_maps': None}

    def set_epoch(self, epoch: int) -> None:
        """Read view ``epoch % views`` from now on (in workers started afterwards)."""
        self.view = int(epoch) % self.views

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return torch.from_numpy(self.maps[self.view, index].astype(np.float32)), self.targets[index]

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(folder={str(self.folder)!r}, backbone={self.backbone!r}, views={self.views}, '
                f'images={len(self)}, maps={tuple(self.meta["shape"][2:])}, dtype={self.meta["dtype"]})')


def _check_size(folder: Path, name: str, expected: int) -> None:
    path = folder / name
    actual = path.stat().st_size if path.is_file() else 0
    if actual != expected:
        raise ValueError(f'feature cache file {path} is truncated or damaged: {actual} bytes, its sidecar '
                         f'{folder / SIDECAR_FILE} expects {expected}. Delete the folder {folder}; the next '
                         f'ensure_feature_cache (train.py) then rebuilds it.')


def open_feature_cache(path: PathLike, key: Optional[str] = None, backbone: Optional[str] = None) -> FeatureCache:
    """The complete cache in folder ``path``; refuses (ValueError) a missing or incomplete cache, a truncated
    file, and a cache built for another key or another backbone (naming both backbones)."""
    folder = Path(path)
    meta = _read_sidecar(folder)
    if meta is None:
        raise ValueError(f'no feature cache in {folder} (no {SIDECAR_FILE}); build it with ensure_feature_cache '
                         f'(train.py --freeze-backbone builds it).')
    if not meta.get('complete'):
        raise ValueError(f'the feature cache in {folder} is incomplete (its build was interrupted); rebuild it '
                         f'with ensure_feature_cache (train.py does) or delete the folder.')
    if meta.get('format') != CACHE_FORMAT:
        raise ValueError(f'the feature cache in {folder} has format {meta.get("format")}, this version reads '
                         f'{CACHE_FORMAT}; rebuild it with ensure_feature_cache or delete the folder.')
    _check_size(folder, MAPS_FILE, meta['maps_bytes'])
    _check_size(folder, TARGETS_FILE, meta['targets_bytes'])
    if (key is not None and meta['key'] != key) or (backbone is not None and meta['backbone'] != backbone):
        this = backbone or 'this model'
        raise ValueError(f'the feature cache in {folder} was built for backbone {meta["backbone"]} (key '
                         f'{meta["key"][:12]}), not for {this} (key {(key or "?")[:12]}): other backbone weights, '
                         f'transform or dataset. Rebuild it with ensure_feature_cache (train.py does when the '
                         f'backbone is frozen) or delete the folder {folder}.')
    return FeatureCache(folder, meta)


def _transform_of(dataset: Dataset) -> Optional[Callable]:
    """The transform ``dataset`` reads through (a ``Subset``'s parent's)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, 'transform', None)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _stale_reason(meta: Optional[Dict[str, Any]], key: str, backbone: str, dtype: str) -> Optional[str]:
    """Why the cache described by ``meta`` must be (re)built, or None when it is the one asked for."""
    if meta is None:
        return 'missing'
    if not meta.get('complete'):
        return 'incomplete (an interrupted build)'
    if meta.get('format') != CACHE_FORMAT:
        return f'format {meta.get("format")}, not {CACHE_FORMAT}'
    if meta.get('key') != key:
        return (f'stale: built for backbone {meta.get("backbone")} (key {str(meta.get("key"))[:12]}), now '
                f'{backbone} (key {key[:12]}): the backbone weights, the transform or the dataset changed')
    if meta.get('dtype') != dtype:
        return f'stored as {meta.get("dtype")}, {dtype} asked for'
    return None


def ensure_feature_cache(
        model: nn.Module,
        dataset: Dataset,
        path: PathLike,
        *,
        views: int = 0,
        seed: int = 0,
        dtype: Union[str, torch.dtype] = torch.float16,
        **build_kwargs,
) -> FeatureCache:
    """The cache of ``model``'s frozen backbone over ``dataset`` (read through its ``transform``) in folder
    ``path``: opened when its key matches; built when it is missing, incomplete or stale (another key: the log
    says which backbone it was built for). A complete cache with the right key whose file is truncated is refused
    by :func:`open_feature_cache` (never silently rebuilt: the disk or a copy failed). ``views``, ``seed``,
    ``dtype`` and ``**build_kwargs`` (``batch_size``, ``num_workers``, ``device``, ``amp``, ``progress``) as
    :func:`build_feature_cache`. Under ``torch.distributed`` rank 0 builds, the others wait and open it."""
    net = _unwrap(model)
    key = cache_key(net, _transform_of(dataset), dataset, views, seed)
    folder = Path(path)
    if _rank() == 0:
        reason = _stale_reason(_read_sidecar(folder), key, net.backbone_name, _numpy_dtype(dtype).name)
        if reason is not None:
            (_logger.warning if reason.startswith('stale') else _logger.info)(
                f'feature cache {folder}: {reason}; building it.')
            build_feature_cache(model, dataset, folder, key, views=views, seed=seed, dtype=dtype, **build_kwargs)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return open_feature_cache(folder, key, net.backbone_name)
