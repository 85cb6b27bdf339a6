""" What the demo shows for one image, computed without any user interface (docs/EXPLANATIONS.md, "The demo").

:func:`load_demo_model` loads a QPM export (``local-dir:`` / ``hf-hub:``) with the parts of its explanation report a
demo needs (:class:`ReportAssets`: feature names, the heatmap scale, gallery pictures, class cards, contrastive
pictures, example images); :func:`analyse` explains one image with the explanation module's own functions
(:func:`qpm_timm.explain.class_evidence`, :func:`~qpm_timm.explain.heatmaps`, :func:`~qpm_timm.explain.overlay`,
:func:`~qpm_timm.explain.pair_features`, :func:`~qpm_timm.explain.difference_contributions`): the top-k classes, the
predicted class's ``n_wc`` features with their contributions and heatmaps, and the nearest class, the class that
shares the most features with the prediction (all but one for a contrastive pair), with the features that separate
them and their share of the logit difference on this image.

The report describes the exported model's features; an edited model (:mod:`qpm_timm.edit`) may keep other backbone
channels, so report entries are looked up by channel (:meth:`ReportAssets.features`): a channel the report does not
know is named ``ch <k>`` and its heatmap normalised per map.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
from PIL import Image

from ..explain import (
    class_evidence,
    denormalize,
    difference_contributions,
    feature_colours,
    heatmaps,
    overlay,
    pair_features,
    require_qpm,
)
from ..explain.report import load_images
from ..models.assignment import feature_names
from ..run.cli import UsageError
from ..run.model import _timm_model

__all__ = ['ReportAssets', 'FeatureView', 'DemoModel', 'Contrast', 'Analysis', 'load_demo_model',
           'read_report_assets', 'report_folder', 'model_title', 'read_image', 'analyse', 'nearest_class']

REPORT = 'report'  # the report's folder inside an export (qpm_timm.hub.save_pretrained's report_dir)


@dataclass
class FeatureView:
    """Name, heatmap scale, colour and gallery picture of every kept feature of one model (index ``j``)."""
    labels: List[str]
    active: np.ndarray  # typical active value; 0 where unknown (per-map heatmap normalisation)
    colours: np.ndarray  # (n, 3)
    galleries: List[Optional[Path]]  # the report's features/f<j>.png of the feature, None where unknown


@dataclass
class ReportAssets:
    """The parts of an explanation report (:func:`qpm_timm.explain.write_report`) the demo shows, for the exported
    model's kept channels; without a report: channel names, per-map heatmap normalisation and no pictures."""
    folder: Optional[Path]
    channels: List[int]  # the exported model's kept backbone channels (its head.selection)
    labels: List[str]  # their names, 'f3 ≈ disk (r = 0.93)' or 'f3 (ch 34)'
    active: Optional[np.ndarray]  # their typical active values (the heatmap scale)
    examples: List[Tuple[Path, str]] = field(default_factory=list)  # example image files and their captions

    def picture(self, relative: str) -> Optional[Path]:
        """A file of the report (e.g. ``classes/c3.png``), or None when there is none."""
        path = self.folder / relative if self.folder is not None else None
        return path if path is not None and path.is_file() else None

    def features(self, selection: Sequence[int]) -> FeatureView:
        """The :class:`FeatureView` of a model keeping backbone channels ``selection`` (the exported model's or an
        edited one's): known channels keep their name, colour and gallery; others are ``ch <k> (new)``."""
        index = {c: j for j, c in enumerate(self.channels)}
        known = [index.get(int(c)) for c in selection]
        colours = feature_colours(len(self.channels) + sum(j is None for j in known))
        extra = iter(range(len(self.channels), len(colours)))
        order = [j if j is not None else next(extra) for j in known]
        return FeatureView(
            [self.labels[j] if j is not None else f'ch {int(c)} (new)' for j, c in zip(known, selection)],
            np.array([self.active[j] if j is not None and self.active is not None else 0.0 for j in known]),
            colours[order], [self.picture(f'features/f{j}.png') if j is not None else None for j in known])


@dataclass
class DemoModel:
    """A QPM in eval mode with what the demo needs beside it."""
    model: torch.nn.Module
    name: str  # what --model said
    class_names: List[str]
    transform: object  # the export's evaluation transform (PIL image -> normalised tensor)
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    report: ReportAssets
    device: torch.device


@dataclass
class Contrast:
    """The nearest class ``other`` to the predicted class ``predicted`` and what separates them on the image."""
    predicted: int
    other: int
    only_predicted: List[int]  # features of the prediction only
    shared: List[int]
    only_other: List[int]
    terms: Dict[int, float]  # feature -> its term of logit_predicted - logit_other on this image (shared ones are 0)
    logits: Tuple[float, float]
    overlays: List[np.ndarray]  # heatmaps of the differing features on the image, prediction's first


@dataclass
class Analysis:
    """What the demo shows for one image, for one model (the exported one or an edited one)."""
    image: np.ndarray  # (H, W, 3) in [0, 1]: the image as the model sees it
    top: List[Tuple[int, float, float]]  # (class, logit, softmax probability), best first
    predicted: int
    features: List[int]  # the predicted class's features
    contributions: List[float]  # their normalised activations; their sum is the predicted logit
    overlays: List[np.ndarray]  # (H, W, 3) heatmap of each feature on the image
    contrast: Optional[Contrast]
    view: FeatureView  # names, colours and galleries of the model's features
    pooled: torch.Tensor  # (n_f*,) the image's pooled features (what the prediction sets read)


def model_title(name: str) -> str:
    """What the demo calls the model ``name``: the run's folder of an export (``<run>/export``), the export folder,
    or the Hub repository / variant."""
    if not name.startswith('local-dir:'):
        return name.split(':', 1)[-1]
    path = Path(name[len('local-dir:'):]).resolve()
    return path.parent.name if path.name == 'export' else path.name


def report_folder(name: str) -> Optional[Path]:
    """The report folder of an export: ``<folder>/report`` of ``local-dir:<folder>``, the ``report/`` files of an
    ``hf-hub:`` repository (downloaded, or from the cache offline); None when there is none."""
    if name.startswith('local-dir:'):
        folder = Path(name[len('local-dir:'):]) / REPORT
        return folder if folder.is_dir() else None
    if name.startswith(('hf-hub:', 'hf_hub:')):
        from huggingface_hub import snapshot_download
        repo, _, revision = name.split(':', 1)[1].partition('@')
        try:
            folder = Path(snapshot_download(repo, revision=revision or None, allow_patterns=[f'{REPORT}/*'])) / REPORT
        except Exception:  # noqa: BLE001  no report online and none cached: the demo runs without pictures
            return None
        return folder if folder.is_dir() else None
    return None


def read_report_assets(folder: Optional[Path], model) -> ReportAssets:
    """:class:`ReportAssets` of a report folder written for ``model`` (its ``report.json``); a report of another
    model (other sizes or channels) is refused, a missing one gives the fallbacks."""
    selection = model.head.selection.tolist()
    summary_path = folder / 'report.json' if folder is not None else None
    if summary_path is None or not summary_path.is_file():
        return ReportAssets(None, selection, feature_names(selection), None)
    summary = json.loads(summary_path.read_text(encoding='utf-8'))
    if summary.get('selection') != selection or summary.get('num_classes') != model.num_classes:
        raise UsageError(f'the report in {folder} describes another model ({summary.get("num_classes")} classes, '
                         f'channels {summary.get("selection")}) than this one ({model.num_classes} classes, '
                         f'channels {selection}): export the model and its report together '
                         f'(qpm_timm.hub.save_pretrained(..., report_dir=...)).')
    features = summary['features']
    examples = [(folder / e['file'], e['class_name']) for e in summary.get('examples', [])
                if (folder / e['file']).is_file()]
    active = [f.get('typical_active_value') for f in features]  # None in a report of the model alone
    return ReportAssets(folder, selection, [f['label'] for f in features],
                        None if None in active else np.array(active, dtype=np.float64), examples)


def load_demo_model(name: str, pretrained: bool = True, device: str = 'cpu') -> DemoModel:
    """Load the QPM ``name`` (``local-dir:<export>``, ``hf-hub:<repo>``, a registered variant) and its report."""
    model = _timm_model(name, pretrained=pretrained)
    try:
        require_qpm(model, 'the demo')
    except ValueError as e:
        raise UsageError(f'--model {name}: {e}') from e
    model = model.to(device).eval()
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    class_names = list(model.pretrained_cfg.get('label_names') or [f'class {c}' for c in range(model.num_classes)])
    return DemoModel(model, name, class_names, transform, tuple(config['mean']), tuple(config['std']),
                     read_report_assets(report_folder(name), model), torch.device(device))


def read_image(path: Path, shown_name: Optional[str] = None) -> Image.Image:
    """The RGB image of a file (:func:`qpm_timm.explain.load_images`); an unreadable one is a ValueError naming
    ``shown_name`` (what the user uploaded) instead of the server's temporary path."""
    try:
        return load_images([path])[0][1]
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(str(e).replace(str(path), shown_name or Path(path).name)) from e


def nearest_class(assignment: torch.Tensor, predicted: int, logits: torch.Tensor) -> Optional[int]:
    """The class that shares the most features with ``predicted`` (``n_wc - 1`` for a contrastive pair), ties to
    the higher logit on the image; None for a model with a single class."""
    w = (torch.as_tensor(assignment).cpu() != 0).float()  # a baseline's signed weights: the features it reads
    if w.shape[0] < 2:
        return None
    shared = (w @ w[predicted]).round()
    shared[predicted] = -1
    candidates = torch.nonzero(shared == shared.max()).flatten()
    return int(candidates[logits[candidates].argmax()])


def _overlays(view: FeatureView, image: np.ndarray, out, features: Sequence[int]) -> List[np.ndarray]:
    """Heatmaps of ``features`` on the image (docs/EXPLANATIONS.md, "Heatmaps"), each in its feature's colour."""
    heat = heatmaps(out.feature_maps[0, features], image.shape[:2], out.pooled[0, features], view.active[features])
    return [overlay(image, h, view.colours[j]) for h, j in zip(heat, features)]


def _contrast(model, view: FeatureView, image: np.ndarray, out, z: torch.Tensor, predicted: int) -> Optional[Contrast]:
    """The nearest class and the per-feature terms of the logit difference (``z``: normalised activations)."""
    assignment = model.class_weights.detach().cpu()
    other = nearest_class(assignment, predicted, out.logits[0])
    if other is None:
        return None
    only_a, shared, only_b = pair_features(assignment, predicted, other)
    terms = difference_contributions(z, assignment, predicted, other)
    return Contrast(predicted, other, only_a, shared, only_b, {j: float(terms[j]) for j in only_a + shared + only_b},
                    (float(out.logits[0, predicted]), float(out.logits[0, other])),
                    _overlays(view, image, out, only_a + only_b))


@torch.no_grad()
def analyse(demo: DemoModel, image: Image.Image, k: int = 5, model=None) -> Analysis:
    """Explain ``image`` (module docstring) with ``model`` (default: the exported one): top-``k`` classes, the
    prediction's features, their heatmaps and the nearest class."""
    model = demo.model if model is None else model
    view = demo.report.features(model.head.selection.tolist())
    tensor = demo.transform(image.convert('RGB'))[None]
    on_device = model.forward_with_features(tensor.to(demo.device))
    evidence = class_evidence(model, on_device, 0, int(on_device.logits[0].argmax()))
    z = model.head.normalize(on_device.pooled[0].float()).cpu()
    out = type(on_device)(*(t.float().cpu() for t in on_device))
    probabilities = out.logits[0].softmax(0)
    ranked = out.logits[0].argsort(descending=True, stable=True)[:k].tolist()
    top = [(c, float(out.logits[0, c]), float(probabilities[c])) for c in ranked]
    seen = denormalize(tensor, demo.mean, demo.std)[0]
    return Analysis(seen, top, evidence.class_index, evidence.features, evidence.contributions,
                    _overlays(view, seen, out, evidence.features),
                    _contrast(model, view, seen, out, z, evidence.class_index), view, out.pooled[0])
