""" The explanation report of a QPM: a self-contained folder a person opens in a browser.

``index.html`` + PNGs + JSON, relative links only (no server, no internet; it can be uploaded to the Hub
beside the model, see :func:`qpm_timm.hub.save_pretrained`'s ``report_dir``)::

    index.html            overview: the global picture, every feature, every class, the contrastive pairs, the
                          explanation metrics (plausibility, feature grounding, deletion; explain/grounding.py)
    report.json           the model's sizes, feature names, classes, pairs and every file of the report
    global.png/.json      the class x feature assignment
    features/f<j>.png/.json   feature j: its name, top-k gallery images and the patch around its map's maximum
    classes/c<c>.png/.json    class c's card: its n_wc features, named, with their best gallery patches
    pairs/c<a>_vs_c<b>.png/.json  contrastive picture of two classes that share n_wc - 1 features
    local/<image>.png/.json   local explanation of an image file: prediction and runner-up
    trees/<image>_global.png/.json, trees/<image>_local.png/.json   the prediction's tree of every image file and
                          of one validation image (``example``), its prediction set highlighted (explain/tree.py)
    examples/c<c>.png     example validation images of a few classes, as the model sees them (e.g. for a demo)

:func:`write_report` needs one pass of the QPM over the validation set (feature names, heatmap scale, the
example images of the contrastive pictures) and reads the gallery images back from the training set by index;
it never passes over the training set. The folder is written beside and swapped in at the end, so an error
leaves an earlier report intact. The pictures: :mod:`.pictures` (drawn in worker processes by :mod:`.drawing`
where they need no model pass), the page: :mod:`.page`.
"""
import json
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..atomic import atomic_folder
from ..conformal import predict_sets
from .contrastive import contrastive_pairs, resolve_class, spread_pairs
from .drawing import draw_in_workers
from .gallery import FeatureGallery
from .grounding import ExplanationCollector, ExplanationMetrics
from .heatmap import data_normalization
from .local import require_qpm
from .naming import FeatureNames, dataset_annotations, name_features
from .page import file_picture, index_html, new_pages, report_summary
from .pictures import PlainDrawer, ReportPictures, forward_float
from .scan import DatasetScan, class_examples, scan_dataset
from .tree import TreeSets, tree_pictures, tree_sets

__all__ = ['Report', 'write_report', 'load_images', 'check_report_folder', 'IMAGE_EXTENSIONS']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp')
PathLike = Union[str, os.PathLike]


@dataclass
class Report:
    """What :func:`write_report` wrote."""
    folder: Path
    index: Path  # folder / 'index.html'
    names: FeatureNames  # the feature names (pass names.labels to hub.save_pretrained's feature_names)
    files: List[str]  # every file of the report, relative to folder


def load_images(paths: Sequence[PathLike]) -> List[Tuple[Path, Image.Image]]:
    """RGB images of image files and of the image files in folders (sorted); an unreadable file names itself."""
    files: List[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ValueError(f'folder {path} holds no image files ({", ".join(IMAGE_EXTENSIONS)}).')
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f'image {path} does not exist.')
    images = []
    for path in files:
        try:
            with Image.open(path) as img:
                images.append((path, img.convert('RGB')))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f'cannot read image {path} ({e}); give an image file (JPEG, PNG, ...).') from e
    return images


def check_report_folder(folder: PathLike) -> None:
    """Fail before any work when the report folder cannot be written (ValueError naming the fix)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f'the report folder {folder} is a file; choose a folder.')
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f'.{folder.name}.probe.', dir=folder.parent))
    except OSError as e:
        raise ValueError(f'cannot write the report folder {folder} ({e}); choose a writable output folder.') from e


def _resolve_pairs(pairs, assignment, class_names, all_pairs: bool, max_pairs: int) -> List[Tuple[int, int]]:
    if pairs:
        resolved = []
        for pair in pairs:
            if len(pair) != 2:
                raise ValueError(f'a contrastive pair names two classes, got {pair!r}.')
            a, b = (resolve_class(spec, class_names) for spec in pair)
            if a == b:
                raise ValueError(f'a contrastive pair needs two different classes, got {class_names[a]!r} twice.')
            resolved.append((a, b))
        return resolved
    candidates = contrastive_pairs(assignment)
    return candidates if all_pairs else spread_pairs(candidates, max_pairs)



def _example_classes(examples: Sequence[Optional[int]], limit: int) -> List[int]:
    """Up to ``limit`` classes that have an example image, spread evenly over the class indices."""
    having = [c for c, index in enumerate(examples) if index is not None]
    if len(having) <= limit:
        return having
    return sorted({having[int(i)] for i in np.linspace(0, len(having) - 1, limit).round()})


def _stem(path: Path, taken: set) -> str:
    stem = re.sub(r'[^A-Za-z0-9_.-]+', '_', path.stem) or 'image'
    unique, i = stem, 1
    while unique in taken:
        i += 1
        unique = f'{stem}_{i}'
    taken.add(unique)
    return unique


def write_report(
        model,
        folder: PathLike,
        gallery: Optional[FeatureGallery],
        train_set,
        val_set,
        class_names: Sequence[str],
        pairs: Optional[Sequence[Sequence[Union[int, str]]]] = None,
        all_pairs: bool = False,
        max_pairs: int = 6,
        images: Sequence[PathLike] = (),
        device: Union[str, torch.device] = 'cpu',
        amp: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = False,
        gallery_images: int = 8,
        card_patches: int = 3,
        example_images: int = 12,
        title: Optional[str] = None,
        transform=None,
        dense_accuracy: Optional[Dict[str, float]] = None,
        calibration=None,
) -> Report:
    """Write the explanation report of QPM ``model`` into ``folder`` (module docstring).

    Args:
        model: a QPM (``model.is_qpm``); a dense model is refused.
        folder: the report folder, e.g. ``<experiment>/report``; replaced atomically.
        gallery: the training set's feature gallery (:class:`GalleryCollector` on the statistics pass: rows of
            all dense channels, the QPM's selected ones are used), or None: the validation set's gallery.
        train_set: the dataset ``gallery`` indexes, with the eval transform (images are re-read by index).
        val_set: the validation set with the eval transform: one pass gives the feature names (its
            annotations), the heatmap scale and the contrastive examples. None (with ``train_set`` and ``gallery``
            None): the model alone, docs/EXPLANATIONS.md "The model alone": the global picture, the classes'
            feature lists, the local pictures and the given pairs drawn on ``images``; no galleries, names,
            cards or accuracy.
        class_names: one name per class.
        pairs: contrastive pairs as (class, class), indices or names; default: pairs sharing ``n_wc - 1``
            features, all of them with ``all_pairs``, else up to ``max_pairs`` covering many classes (none
            without ``val_set``).
        images: image files or folders to explain locally (read through ``transform``).
        gallery_images, card_patches: images shown per feature page and patches per feature on a class card.
        example_images: classes whose example validation image is saved in ``examples/`` (none without ``val_set``).
        transform: the eval transform of ``images`` (default ``val_set.transform``).
        dense_accuracy: train.py's ``dense_top1``, ``dense_best_top1``, ``dense_best_epoch`` of the dense model the
            QPM was made from, stated next to the QPM's accuracy.
        calibration: the prediction sets' :class:`qpm_timm.conformal.Calibration` the trees highlight (train.py's,
            an export's); None: calibrated on the validation pass (none without ``val_set``).
    """
    require_qpm(model, 'write_report()')
    folder = Path(folder)
    class_names = [str(c) for c in class_names]
    if len(class_names) != model.num_classes:
        raise ValueError(f'{len(class_names)} class names for a model with {model.num_classes} classes.')
    assignment = model.class_weights.detach().cpu() > 0
    pair_list = _resolve_pairs(pairs, assignment, class_names, all_pairs, max_pairs if val_set is not None else 0)
    local_images = load_images(images)
    transform = transform if transform is not None else getattr(val_set, 'transform', None)
    if local_images and transform is None:
        raise ValueError('local explanations read image files through the eval transform; give transform= or a '
                         'val_set with one.')
    if val_set is None and (gallery is not None or train_set is not None):
        raise ValueError('a gallery and a training set come with the validation set (val_set); without it the model '
                         'is explained alone.')
    selection = model.head.selection.cpu().tolist()
    if gallery is not None:
        gallery = gallery.select(selection)
        if train_set is None or int(gallery.index.max()) >= len(train_set):
            raise ValueError(f'the gallery indexes {int(gallery.index.max()) + 1} or more images, the training '
                             f'set has {0 if train_set is None else len(train_set)}: pass the dataset it was '
                             f'collected on (training split, eval transform).')
    check_report_folder(folder)
    with _evaluating(model, device):
        return _write_checked(model, folder, gallery, train_set, val_set, class_names, pair_list, local_images,
                              dict(device=device, amp=amp, batch_size=batch_size, num_workers=num_workers,
                                   progress=progress, gallery_images=gallery_images, card_patches=card_patches,
                                   example_images=example_images, title=title, transform=transform,
                                   dense_accuracy=dense_accuracy, calibration=calibration))


@contextmanager
def _evaluating(model, device):
    """The model on ``device`` in eval mode; its train/eval mode restored afterwards."""
    was_training = model.training
    model.to(device).eval()
    try:
        yield
    finally:
        model.train(was_training)



@dataclass
class _Plan:
    """What the report shows, settled by the checks and the validation pass before any file is written."""
    model: Any
    pictures: ReportPictures
    scan: Optional[DatasetScan]  # None: the model alone
    measured: Optional[ExplanationMetrics]
    annotations: Any  # the validation set's annotations (dataset_annotations), or None
    examples: Optional[List[Optional[int]]]  # every class's example validation image
    drawable: List[Tuple[int, int]]  # the contrastive pairs drawn
    skipped: List[Dict]  # the others, with the reason
    local_images: List[Tuple[Path, Image.Image]]
    local_tensors: List[torch.Tensor]  # local_images through the eval transform
    sets: TreeSets
    gallery_source: str
    options: Dict


def _write_checked(model, folder: Path, gallery, train_set, val_set, class_names, pair_list, local_images,
                   options: Dict) -> Report:
    """:func:`write_report` after its input checks."""
    plan = _plan(model, gallery, train_set, val_set, class_names, pair_list, local_images, options)
    atomic_folder(folder, partial(_write_files, plan))
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file())
    return Report(folder, folder / 'index.html', plan.pictures.names, files)


def _validation_pass(model, val_set, options: Dict) -> Tuple[Optional[DatasetScan], Optional[ExplanationMetrics],
                                                             Any, Optional[List[Optional[int]]]]:
    """The one pass of the model over ``val_set``: its scan, the explanation metrics measured on it, the set's
    annotations and every class's example image (all None without ``val_set``)."""
    if val_set is None:
        return None, None, None, None
    explanations = ExplanationCollector(model, val_set, faithfulness=True)
    scan = scan_dataset(model, val_set, options['batch_size'], options['num_workers'], options['device'],
                        options['amp'], options['progress'], observers=[explanations])
    return scan, explanations.result(), dataset_annotations(val_set), class_examples(scan, model.num_classes)


def _drawable_pairs(pair_list, examples, scan, local_images) -> Tuple[List[Tuple[int, int]], List[Dict]]:
    """The pairs drawn (both classes have an example validation image; the model alone: on the image files) and the
    skipped ones with the reason."""
    if scan is not None:
        drawable = [(a, b) for a, b in pair_list if examples[a] is not None and examples[b] is not None]
        why = 'a class has no validation image'
    else:  # the model alone: the pairs are drawn on the image files
        drawable, why = (pair_list if local_images else []), 'no dataset and no image to draw it on'
    return drawable, [dict(classes=[a, b], reason=why) for a, b in pair_list if (a, b) not in drawable]


def _plan(model, gallery, train_set, val_set, class_names, pair_list, local_images, options: Dict) -> _Plan:
    """The validation pass, the feature names, the gallery shown, the pairs drawn and the prediction sets."""
    selection = model.head.selection.cpu().tolist()
    transform = options['transform']
    normalization = data_normalization(SimpleNamespace(transform=transform) if val_set is None else val_set, model)
    scan, measured, annotations, examples = _validation_pass(model, val_set, options)
    names = name_features(selection, scan.pooled, *annotations) if annotations else name_features(selection)
    gallery_set, gallery_source = (train_set, 'training set') if gallery is not None else (val_set, 'validation set')
    if gallery is None and scan is not None:
        gallery = scan.gallery
    pictures = ReportPictures(model, class_names, names, gallery, gallery_set, val_set, scan, normalization,
                              options['device'])
    drawable, skipped = _drawable_pairs(pair_list, examples, scan, local_images)
    local_tensors = [transform(img) for _, img in local_images]
    sets = tree_sets(model, options['calibration'], None if scan is None else scan.pooled,
                     None if scan is None else scan.targets)
    return _Plan(model, pictures, scan, measured, annotations, examples, drawable, skipped, local_images,
                 local_tensors, sets, gallery_source, options)


def _write_files(plan: _Plan, root: Path) -> None:
    """Every file of the report into ``root``: the pictures, the example images, report.json and index.html."""
    plain, with_model = _plain_jobs(plan), _model_jobs(plan)  # the model passes of the pairs run first, here
    pages = new_pages()
    if plan.scan is not None:
        pages['trees'].append(_example_tree(plan, root))
    _draw_pictures(plan, root, pages, plain, with_model)
    examples = [plan.pictures.example_image(root, c, plan.examples[c])
                for c in _example_classes(plan.examples or [], plan.options['example_images'])]
    summary = report_summary(plan.model, plan.pictures, plan.scan, plan.drawable, plan.skipped, plan.measured,
                             plan.annotations, examples, plan.gallery_source, plan.sets.describe(),
                             plan.options['title'], plan.options['dense_accuracy'])
    (root / 'report.json').write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding='utf-8')
    (root / 'index.html').write_text(index_html(summary, pages, plan.pictures), encoding='utf-8')


def _plain_jobs(plan: _Plan) -> List[Tuple[str, Any]]:
    """The jobs of :class:`PlainDrawer`: the global picture, with a gallery every feature page and class card, and
    the pairs on their example images, each with the model's pass over them (run here)."""
    pictures = plan.pictures
    jobs: List[Tuple[str, Any]] = [('global', None)]
    if pictures.gallery is not None:
        jobs += [('feature', j) for j in range(len(pictures.names.labels))]
        jobs += [('class', c) for c in range(plan.model.num_classes)]
    if plan.scan is not None:
        jobs += [('pair', (p, plan.examples, pictures.pair_evidence(*p, plan.examples)))
                 for p in dict.fromkeys(plan.drawable)]  # a pair given twice is drawn once
    return jobs


def _model_jobs(plan: _Plan) -> List[Tuple[str, Any]]:
    """The jobs that run the model, drawn in this process: every image file's local explanation and, for the model
    alone, the pairs on the image files (with one pass over the files for all pairs, run here)."""
    jobs: List[Tuple[str, Any]] = [('local', (path, tensor))
                                   for (path, _), tensor in zip(plan.local_images, plan.local_tensors)]
    if plan.scan is None and plan.drawable:
        on_images = plan.pictures.image_evidence(torch.stack(plan.local_tensors))
        jobs += [('pair_on_images', (p, on_images)) for p in plan.drawable]
    return jobs


def _draw_pictures(plan: _Plan, root: Path, pages: Dict[str, Any], plain: List, with_model: List) -> None:
    """Draw every picture and file it under its page: the plain ones in worker processes where the drawing rule
    gives some (:func:`qpm_timm.explain.drawing.draw_in_workers`) while the ones that run the model are drawn here,
    else all of them here."""
    draw = PlainDrawer(plan.pictures, root, plan.options['gallery_images'], plan.options['card_patches'])
    stems: set = set()
    bar = tqdm(total=len(plain) + len(with_model), desc='explanations: pictures', disable=not plan.options['progress'])
    drawn = draw_in_workers(draw, plain)
    try:
        for kind, item in with_model if drawn is not None else plain + with_model:
            if kind == 'local':
                _draw_local(plan, root, pages, *item, stems)
            elif kind == 'pair_on_images':
                pair, evidence = item
                pages['pair'][pair] = plan.pictures.pair_picture(root, *pair, None, evidence,
                                                                 [path.name for path, _ in plan.local_images])
            else:
                file_picture(pages, kind, item, draw((kind, item)))
            bar.update()
        if drawn is not None:
            for (kind, item), picture in zip(plain, drawn.get()):
                file_picture(pages, kind, item, picture)
                bar.update()
    finally:
        if drawn is not None:
            drawn.stop()
        bar.close()


def _draw_local(plan: _Plan, root: Path, pages: Dict[str, Any], path: Path, tensor: torch.Tensor,
                stems: set) -> None:
    """An image file's local explanation and its trees."""
    stem = _stem(path, stems)
    pages['local'].append((path.name, plan.pictures.local_picture(root, stem, path.name, tensor)))
    pooled = forward_float(plan.model, tensor[None], plan.options['device']).pooled[0]
    pages['trees'].append((path.name, _trees(plan, pooled, path.name, root, stem)))


def _trees(plan: _Plan, pooled: torch.Tensor, title: str, root: Path, stem: str) -> Dict:
    """The global and local tree of one image (:func:`qpm_timm.explain.tree.tree_pictures`)."""
    pictures = plan.pictures
    return tree_pictures(plan.sets, pooled, title, pictures.class_names, pictures.colours, pictures.names.labels,
                         root, stem)


def _example_tree(plan: _Plan, root: Path) -> Tuple[str, Dict]:
    """The trees of the validation image the report shows (:func:`_tree_example`), with their title."""
    example = _tree_example(plan.scan, plan.sets)
    title = f'validation image {example}'
    label = plan.pictures.class_names[plan.scan.targets[example]]
    return f'{title} (class {label})', _trees(plan, plan.scan.pooled[example], title, root, 'example')


def _tree_example(scan: DatasetScan, sets) -> int:
    """The validation image whose tree the report shows: the first correctly classified one whose prediction set
    holds several classes (a branch to see), else the first correctly classified one, else the first."""
    correct = scan.predictions == scan.targets
    if sets.calibration is not None:
        inputs = sets.inputs(scan.pooled)
        several = predict_sets(sets.calibration, inputs, sets.model.class_weights.detach().cpu(),
                               sets.target).sum(1) >= 2
        if (correct & several).any():
            return int(np.argmax(correct & several))
    return int(np.argmax(correct)) if correct.any() else 0
