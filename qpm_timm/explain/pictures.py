""" The report's pictures of one QPM: the global picture, feature pages, class cards, contrastive pairs, local
explanations and example images (PNG + JSON each, :func:`qpm_timm.explain.figures.save_figure`), drawn from the
validation scan, the gallery and the feature names; :class:`PlainDrawer` draws the ones that need no model pass
(in the worker processes of :mod:`qpm_timm.explain.drawing`).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..models.assignment import class_features
from .contrastive import difference_contributions, pair_features
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
from .heatmap import active_values, denormalize, feature_colours, heatmaps, text_colour
from .local import class_evidence
from .naming import FeatureNames
from .scan import DatasetScan

__all__ = ['ReportPictures', 'PlainDrawer', 'forward_float']


def forward_float(model, images: torch.Tensor, device):
    """``forward_with_features`` of a QPM on a few normalised images, in float on the CPU."""
    with torch.no_grad():
        out = model.forward_with_features(images.to(device))
    return type(out)(*(t.float().cpu() for t in out))


class ReportPictures:
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
        out = forward_float(self.model, tensors, self.device)
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


@dataclass(frozen=True)
class PlainDrawer:
    """Draws one job ``(kind, item)`` of the pictures that need no model pass into ``root``: the global picture
    (``'global'``), a feature page (``'feature'``, j), a class card (``'class'``, c) or a contrastive pair
    (``'pair'``, (pair, examples, evidence): its model pass is in its job); returns the picture's (PNG, JSON)."""
    pictures: ReportPictures
    root: Path
    gallery_images: int  # images per feature page
    card_patches: int  # patches per feature on a class card

    def __call__(self, job: Tuple[str, object]) -> Tuple[str, str]:
        kind, item = job
        if kind == 'global':
            return self.pictures.global_picture(self.root)
        if kind == 'feature':
            return self.pictures.feature_page(self.root, item, self.gallery_images)
        if kind == 'pair':
            (a, b), examples, evidence = item
            return self.pictures.pair_picture(self.root, a, b, examples, evidence)
        return self.pictures.class_card(self.root, item, self.card_patches)
