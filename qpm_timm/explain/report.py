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
leaves an earlier report intact.
"""
import json
import multiprocessing
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..atomic import atomic_folder
from ..conformal import predict_sets
from ..models.assignment import class_features
from .contrastive import contrastive_pairs, difference_contributions, pair_features, resolve_class, spread_pairs
from .figures import (
    HEAT_NOTE,
    HEAT_NOTE_PER_MAP,
    class_card_figure,
    contrastive_figure,
    feature_gallery_figure,
    global_figure,
    image_caption,
    local_figure,
    save_figure,
)
from .gallery import PATCH_FRACTION, FeatureGallery
from .grounding import ExplanationCollector, ExplanationMetrics
from .heatmap import active_values, data_normalization, denormalize, feature_colours, heatmaps, text_colour
from .local import class_evidence, require_qpm
from .naming import FeatureNames, dataset_annotations, name_features
from .scan import DatasetScan, class_examples, scan_dataset
from .tree import tree_pictures, tree_sets

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


def _forward(model, images: torch.Tensor, device):
    """``forward_with_features`` of a QPM on a few normalised images, in float on the CPU."""
    with torch.no_grad():
        out = model.forward_with_features(images.to(device))
    return type(out)(*(t.float().cpu() for t in out))


class _Pictures:
    """Renders the report's pictures from the scan, gallery and names of one model (without a dataset: no scan and no
    gallery, heatmaps scaled per map)."""

    def __init__(self, model, class_names, names: FeatureNames, gallery: Optional[FeatureGallery], gallery_set,
                 val_set, scan: Optional[DatasetScan], normalization, device):
        self.model, self.class_names, self.names = model, list(class_names), names
        self.gallery, self.gallery_set, self.val_set, self.scan = gallery, gallery_set, val_set, scan
        self.normalization, self.device = normalization, device
        self.assignment = model.class_weights.detach().cpu() > 0
        self.features = class_features(self.assignment)
        self.colours = feature_colours(len(names.labels))
        self.active = active_values(scan.pooled) if scan is not None else None
        self.heat_note = HEAT_NOTE if scan is not None else HEAT_NOTE_PER_MAP
        self._images: Dict[int, np.ndarray] = {}

    def colour_hex(self, j: int, text: bool = False) -> str:
        """Feature ``j``'s colour as ``#rrggbb`` (darkened for text with ``text``)."""
        colour = text_colour(self.colours[j]) if text else self.colours[j]
        return '#%02x%02x%02x' % tuple(int(round(255 * v)) for v in colour)

    def active_of(self, features) -> Optional[np.ndarray]:
        """The typical active values of ``features`` (None without a dataset: heatmaps scaled per map)."""
        return None if self.active is None else self.active[features]

    def gallery_image(self, index: int) -> np.ndarray:
        if index not in self._images:
            self._images[index] = denormalize(self.gallery_set[index][0], *self.normalization)[0]
        return self._images[index]

    def gallery_entries(self, j: int, limit: int) -> List[Dict]:
        entries = []
        for rank in range(self.gallery.k):
            index = int(self.gallery.index[j, rank])
            if index < 0 or len(entries) == limit:
                break
            label = int(self.gallery.label[j, rank])
            entries.append(dict(dataset_index=index, label=label,
                                class_name=self.class_names[label] if 0 <= label < len(self.class_names) else None,
                                activation=float(self.gallery.score[j, rank]),
                                map_peak=float(self.gallery.peak[j, rank]),
                                box_top_left_bottom_right=list(self.gallery.patch(j, rank))))
        return entries

    def feature_info(self, j: int) -> Dict:
        return dict(feature=j, channel=int(self.model.head.selection[j]), label=self.names.labels[j],
                    annotation=self.names.annotation[j], correlation=self.names.correlation[j],
                    top_annotations=[dict(name=a, r=r) for a, r in self.names.top[j]],
                    colour=self.colour_hex(j),
                    typical_active_value=None if self.active is None else float(self.active[j]),
                    classes=[c for c in range(len(self.class_names)) if self.assignment[c, j]])

    def global_picture(self, root: Path) -> Tuple[str, str]:
        fig, numbers = global_figure(self.assignment, [self.names.short(j) for j in range(len(self.colours))],
                                     self.class_names, self.colours)
        numbers['feature_labels'] = self.names.labels
        return save_figure(fig, numbers, root, 'global')

    def feature_page(self, root: Path, j: int, show: int) -> Tuple[str, str]:
        entries = self.gallery_entries(j, show)
        images = [self.gallery_image(e['dataset_index']) for e in entries]
        users = self.feature_info(j)['classes']
        listed = ', '.join(self.class_names[c] for c in users[:6]) + (', ...' if len(users) > 6 else '')
        subtitle = f'used by {len(users)} class{"es" if len(users) != 1 else ""}: {listed}'
        fig = feature_gallery_figure(self.names.labels[j], self.colours[j], images,
                                     [e['box_top_left_bottom_right'] for e in entries],
                                     [image_caption(e['class_name'], e['activation']) for e in entries], subtitle)
        return save_figure(fig, dict(self.feature_info(j), gallery=entries, patch_fraction=PATCH_FRACTION),
                           root, f'features/f{j}')

    def class_card(self, root: Path, c: int, per_feature: int) -> Tuple[str, str]:
        feats = self.features[c]
        entries = [self.gallery_entries(j, per_feature) for j in feats]
        patches = []
        for column in entries:
            patches.append([])
            for e in column:
                top, left, bottom, right = e['box_top_left_bottom_right']
                patches[-1].append(self.gallery_image(e['dataset_index'])[top:bottom, left:right])
        fig = class_card_figure(self.class_names[c], [self.names.labels[j] for j in feats],
                                [self.colours[j] for j in feats], patches)
        numbers = dict(class_index=c, class_name=self.class_names[c],
                       features=[dict(self.feature_info(j), gallery=e) for j, e in zip(feats, entries)])
        return save_figure(fig, numbers, root, f'classes/c{c}')

    def example_image(self, root: Path, c: int, index: int) -> Dict:
        """Write validation image ``index``, class ``c``'s example, as the model sees it; its entry in report.json."""
        path = f'examples/c{c}.png'
        (root / 'examples').mkdir(exist_ok=True)
        pixels = denormalize(self.val_set[index][0], *self.normalization)[0]
        Image.fromarray((pixels * 255).round().astype(np.uint8)).save(root / path)
        return dict(file=path, class_index=c, class_name=self.class_names[c], dataset_index=index,
                    predicted=int(self.scan.predictions[index]))

    def _evidence(self, tensors: torch.Tensor):
        out = _forward(self.model, tensors, self.device)
        size = tuple(tensors.shape[-2:])
        return out, size, denormalize(tensors, *self.normalization)

    def image_evidence(self, tensors: torch.Tensor) -> Tuple:
        """The model's pass over normalised images, with their normalised activations ``z``."""
        out, size, images = self._evidence(tensors)
        z = self.model.head.normalize(out.pooled.to(self.model.head.mean.device)).cpu()
        return out, size, images, z

    def pair_evidence(self, a: int, b: int, examples: Sequence[Optional[int]]) -> Tuple:
        """The model's pass over the example images of classes ``a`` and ``b`` that their picture shows."""
        return self.image_evidence(torch.stack([self.val_set[examples[c]][0] for c in (a, b)]))

    def pair_picture(self, root: Path, a: int, b: int, examples: Optional[Sequence[Optional[int]]],
                     evidence: Optional[Tuple] = None,
                     image_names: Optional[Sequence[str]] = None) -> Tuple[str, str]:
        """The contrastive picture of classes ``a`` and ``b`` on their example images (``evidence``: their
        :meth:`pair_evidence`) or, with ``image_names``, on those image files (``evidence``: their
        :meth:`image_evidence`)."""
        only_a, shared, only_b = pair_features(self.assignment, a, b)
        columns = only_a + shared + only_b
        kinds = ['only A'] * len(only_a) + ['shared'] * len(shared) + ['only B'] * len(only_b)
        out, size, images, z = evidence if evidence is not None else self.pair_evidence(a, b, examples)
        rows = range(len(images))
        heats = np.stack([heatmaps(out.feature_maps[i, columns], size, out.pooled[i, columns],
                                   self.active_of(columns)) for i in rows])
        differences = np.stack([difference_contributions(z[i], self.assignment, a, b)[columns] for i in rows])
        contributions = z[:, columns].numpy()
        logits = out.logits[:, [a, b]].numpy()
        fig = contrastive_figure((self.class_names[a], self.class_names[b]), images, heats, columns, kinds,
                                 self.names.labels, self.colours, contributions, differences, logits,
                                 row_titles=image_names, heat_note=self.heat_note)
        if image_names is None:
            classes = [dict(class_index=c, class_name=self.class_names[c], example_dataset_index=examples[c],
                            predicted=int(self.scan.predictions[examples[c]])) for c in (a, b)]
        else:
            classes = [dict(class_index=c, class_name=self.class_names[c]) for c in (a, b)]
        numbers = dict(
            classes=classes, images=image_names,
            features=[dict(feature=j, label=self.names.labels[j], kind=kind) for j, kind in zip(columns, kinds)],
            normalised_activation=contributions.tolist(), logits_a_b=logits.tolist(),
            contribution_to_logit_a_minus_b=differences.tolist())
        return save_figure(fig, numbers, root, f'pairs/c{a}_vs_c{b}')

    def local_picture(self, root: Path, stem: str, title: str, tensor: torch.Tensor) -> Tuple[str, str]:
        out, size, images = self._evidence(tensor[None])
        ranked = out.logits[0].topk(min(2, out.logits.shape[1])).indices.tolist()
        rows, numbers = [], dict(image=title, classes=[])
        for role, c in zip(('prediction', 'runner-up'), ranked):
            e = class_evidence(self.model, out, 0, c)
            heats = heatmaps(e.maps, size, out.pooled[0, e.features], self.active_of(e.features))
            rows.append(dict(role=role, class_name=self.class_names[c], logit=e.logit, features=e.features,
                             contributions=e.contributions, heats=heats))
            numbers['classes'].append(dict(role=role, class_index=c, class_name=self.class_names[c], logit=e.logit,
                                           features=[dict(feature=j, label=self.names.labels[j], contribution=v)
                                                     for j, v in zip(e.features, e.contributions)]))
        fig = local_figure(title, images[0], rows, self.colours, self.names.labels, heat_note=self.heat_note)
        return save_figure(fig, numbers, root, f'local/{stem}')


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


def _write_checked(model, folder: Path, gallery, train_set, val_set, class_names, pair_list, local_images,
                   options: Dict) -> Report:
    """:func:`write_report` after its input checks."""
    device, progress = options['device'], options['progress']
    selection = model.head.selection.cpu().tolist()
    transform = options['transform']
    normalization = data_normalization(SimpleNamespace(transform=transform) if val_set is None else val_set, model)
    scan, annotations, examples, measured = None, None, None, None
    if val_set is not None:
        explanations = ExplanationCollector(model, val_set, faithfulness=True)
        scan = scan_dataset(model, val_set, options['batch_size'], options['num_workers'], device, options['amp'],
                            progress, observers=[explanations])
        measured = explanations.result()
        annotations = dataset_annotations(val_set)
        examples = class_examples(scan, model.num_classes)
    names = name_features(selection, scan.pooled, *annotations) if annotations else name_features(selection)
    gallery_set, gallery_source = (train_set, 'training set') if gallery is not None else (val_set, 'validation set')
    if gallery is None and scan is not None:
        gallery = scan.gallery
    pictures = _Pictures(model, class_names, names, gallery, gallery_set, val_set, scan, normalization, device)
    if scan is not None:
        drawable = [(a, b) for a, b in pair_list if examples[a] is not None and examples[b] is not None]
        why = 'a class has no validation image'
    else:  # the model alone: the pairs are drawn on the image files
        drawable, why = (pair_list if local_images else []), 'no dataset and no image to draw it on'
    skipped = [dict(classes=[a, b], reason=why) for a, b in pair_list if (a, b) not in drawable]
    local_tensors = [transform(img) for _, img in local_images]
    sets = tree_sets(model, options['calibration'], None if scan is None else scan.pooled,
                     None if scan is None else scan.targets)
    tree_args = (class_names, pictures.colours, names.labels)
    files: List[str] = []

    def write(root: Path) -> None:
        n = len(selection)
        # pictures that need no model pass (the pairs' passes run first, here), drawn by worker processes where
        # possible, and the local explanations, drawn here meanwhile
        evidence = {p: pictures.pair_evidence(*p, examples) for p in drawable} if scan is not None else {}
        plain = [('global', None)]
        if pictures.gallery is not None:
            plain += [('feature', j) for j in range(n)] + [('class', c) for c in range(model.num_classes)]
        plain += [('pair', (p, examples, evidence[p])) for p in evidence]
        with_model = [('local', (path, tensor)) for (path, _), tensor in zip(local_images, local_tensors)]
        on_images = None
        if scan is None and drawable:  # the model alone: one pass over the image files for all its pairs
            on_images = pictures.image_evidence(torch.stack(local_tensors))
            with_model += [('pair_on_images', p) for p in drawable]
        pages: Dict[str, Any] = dict(feature={}, cls={}, pair={}, local=[], trees=[])
        if scan is not None:
            example = _tree_example(scan, sets)
            pages['trees'].append((f'validation image {example} (class {class_names[scan.targets[example]]})',
                                   tree_pictures(sets, scan.pooled[example], f'validation image {example}',
                                                 *tree_args, root, 'example')))
        stems: set = set()
        bar = tqdm(total=len(plain) + len(with_model), desc='explanations: pictures', disable=not progress)
        drawn = _draw_plain_pictures(pictures, root, plain, options)
        try:
            for kind, item in with_model if drawn is not None else plain + with_model:
                if kind == 'local':
                    (path, tensor), stem = item, _stem(item[0], stems)
                    pages['local'].append((path.name, pictures.local_picture(root, stem, path.name, tensor)))
                    pooled = _forward(model, tensor[None], device).pooled[0]
                    pages['trees'].append((path.name, tree_pictures(sets, pooled, path.name, *tree_args, root, stem)))
                elif kind == 'pair_on_images':
                    pages['pair'][item] = pictures.pair_picture(root, *item, None, on_images,
                                                                [path.name for path, _ in local_images])
                else:
                    _store(pages, kind, item, _plain_picture(pictures, root, kind, item, options))
                bar.update()
            if drawn is not None:
                for (kind, item), picture in zip(plain, drawn.get()):
                    _store(pages, kind, item, picture)
                    bar.update()
        finally:
            if drawn is not None:
                drawn.stop()
            bar.close()
        example_files = [pictures.example_image(root, c, examples[c])
                         for c in _example_classes(examples or [], options['example_images'])]
        summary = dict(
            title=options['title'] or _model_title(model), num_classes=model.num_classes, n_features=n,
            n_per_class=model.n_per_class, selection=selection, dataset_given=scan is not None,
            gallery_source=gallery_source if pictures.gallery is not None else None,
            gallery_images_seen=pictures.gallery.num_images if pictures.gallery is not None else 0,
            annotations=names.source or None, heatmap_normalisation=pictures.heat_note, class_names=class_names,
            features=[pictures.feature_info(j) for j in range(n)],
            class_features=pictures.features, pairs=[list(p) for p in drawable], skipped_pairs=skipped,
            explanation_metrics=None if measured is None else _explanation_summary(measured, annotations),
            examples=example_files,
            validation_accuracy=None if scan is None else float((scan.predictions == scan.targets).mean() * 100),
            dense_validation_accuracy=options['dense_accuracy'] or None, prediction_sets=sets.describe())
        (root / 'report.json').write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding='utf-8')
        (root / 'index.html').write_text(_index_html(summary, pages, pictures), encoding='utf-8')
        files.extend(sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file()))

    atomic_folder(folder, write)
    return Report(folder, folder / 'index.html', names, files)


_JOBS_PER_WORKER = 4  # at least this many pictures per drawing process
_TEMPLATES = Environment(loader=PackageLoader('qpm_timm.explain', 'templates'), autoescape=select_autoescape(['j2']),
                         keep_trailing_newline=True)
_DRAWING: Optional[Tuple] = None  # what the worker processes of _draw_plain_pictures draw from (inherited by fork)
_PAGE = {'feature': 'feature', 'class': 'cls', 'pair': 'pair'}  # job kind -> its pages in the summary


def _store(pages: Dict[str, Any], kind: str, item, picture: Tuple[str, str]) -> None:
    """File the picture of a job under its page: the global picture, or by feature, class or pair."""
    if kind == 'global':
        pages['global'] = picture
    else:  # a pair's job carries (pair, examples, evidence)
        pages[_PAGE[kind]][item[0] if kind == 'pair' else item] = picture


def _plain_picture(pictures: _Pictures, root: Path, kind: str, item, options: Dict) -> Tuple[str, str]:
    """One picture that needs no model pass: the global picture, a feature page, a class card or a contrastive
    pair (whose model pass is in its job)."""
    if kind == 'global':
        return pictures.global_picture(root)
    if kind == 'feature':
        return pictures.feature_page(root, item, options['gallery_images'])
    if kind == 'pair':
        (a, b), examples, evidence = item
        return pictures.pair_picture(root, a, b, examples, evidence)
    return pictures.class_card(root, item, options['card_patches'])


def _start_drawing_worker() -> None:
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool (as DataLoader workers do)


def _draw_job(job) -> Tuple[str, str]:
    pictures, root, options = _DRAWING
    return _plain_picture(pictures, root, *job, options)


def _draw_plain_pictures(pictures: _Pictures, root: Path, jobs: List, options: Dict):
    """Start drawing ``jobs`` in forked worker processes, while the caller draws the pictures that run the model;
    returns the pending result (the files of every job, in order), or None where forking is unavailable or there is
    a single CPU (then the caller draws them itself). The rule (docs/TRAINING.md, "Precision and speed"): one process
    per CPU this process may run on (``os.sched_getaffinity``), and no more than one per 4 jobs, so that every fork
    has work to pay for itself. Matplotlib draws on one core, so this divides the drawing time by about the number of
    CPUs. The pictures are the same either way."""
    global _DRAWING
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    workers = min(cpus, len(jobs) // _JOBS_PER_WORKER)
    if cpus < 2 or workers < 1 or 'fork' not in multiprocessing.get_all_start_methods():
        return None
    _DRAWING = (pictures, root, options)
    try:
        pool = multiprocessing.get_context('fork').Pool(workers, initializer=_start_drawing_worker)
    finally:
        _DRAWING = None  # the workers hold their copy
    result = pool.map_async(_draw_job, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
    pool.close()
    return _Pending(pool, result)


class _Pending:
    """Files of the pictures the worker processes draw; ``get`` waits for them and ends the pool."""

    def __init__(self, pool, result):
        self.pool, self.result, self.running = pool, result, True

    def get(self) -> List[Tuple[str, str]]:
        try:
            return self.result.get()
        finally:
            self.stop()

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.pool.terminate()
            self.pool.join()


def _number(x) -> Optional[float]:
    """A JSON number, None for NaN."""
    return None if x is None or not np.isfinite(x) else float(x)


def _explanation_summary(measured: ExplanationMetrics, annotations) -> Dict[str, Any]:
    """report.json's explanation metrics (docs/METHOD.md, "Explanation metrics"): plausibility, and per feature its
    grounding (with the concept it is matched to and the chance level) and its deletion drops and ratios."""
    d = measured.deletion
    names = annotations[1] if annotations else None
    features = []
    for j in range(len(d.images)):
        info = dict(feature=j, deletion_images=int(d.images[j]), activation_drop_peak=_number(d.activation_peak[j]),
                    activation_drop_random=_number(d.activation_random[j]),
                    activation_drop_ratio=_number(d.activation_ratio[j]), logit_drop_peak=_number(d.logit_peak[j]),
                    logit_drop_random=_number(d.logit_random[j]), logit_drop_ratio=_number(d.logit_ratio[j]))
        if measured.grounding is not None:
            k = int(measured.matching[j])
            info.update(grounding_concept=None if k < 0 or names is None else str(names[k]),
                        grounding=_number(measured.grounding[j]),
                        grounding_chance=_number(measured.grounding_chance[j]))
        features.append(info)
    return dict(plausibility=_number(measured.plausibility), plausibility_chance=_number(measured.plausibility_chance),
                summary={k: _number(v) for k, v in measured.summary().items()}, features=features)


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


def _model_title(model) -> str:
    arch = model.pretrained_cfg.get('architecture', 'qpm') if hasattr(model, 'pretrained_cfg') else 'qpm'
    return f'{arch} ({model.backbone_name} backbone)'


def _index_html(summary: Dict, pages: Dict, pictures: _Pictures) -> str:
    """index.html: the page template (``templates/index.html.j2``, Jinja2 with autoescaping) over report.json's
    summary, the pictures drawn and every feature's colour and label."""
    tags = {j: dict(colour=pictures.colour_hex(j), text=pictures.colour_hex(j, text=True), label=label)
            for j, label in enumerate(pictures.names.labels)}
    return _TEMPLATES.get_template('index.html.j2').render(s=summary, pages=pages, tags=tags)
