""" The report's page: report.json's summary and ``index.html``, rendered from it and the pictures drawn by the
template ``templates/index.html.j2`` (Jinja2 with autoescaping).

The pages of the pictures (what the template links) are a dict: ``global`` (the picture), ``feature`` (by feature),
``cls`` (by class), ``pair`` (by class pair), ``local`` and ``trees`` (lists of ``(title, picture)``); a picture is
its ``(PNG, JSON)`` paths inside the report.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from .grounding import ExplanationMetrics
from .pictures import ReportPictures
from .scan import DatasetScan

__all__ = ['new_pages', 'file_picture', 'report_summary', 'explanation_summary', 'index_html']

_TEMPLATES = Environment(loader=PackageLoader('qpm_timm.explain', 'templates'), autoescape=select_autoescape(['j2']),
                         keep_trailing_newline=True)
_PAGE = {'feature': 'feature', 'class': 'cls', 'pair': 'pair'}  # job kind -> its pages


def new_pages() -> Dict[str, Any]:
    """The pages before any picture is drawn."""
    return dict(feature={}, cls={}, pair={}, local=[], trees=[])


def file_picture(pages: Dict[str, Any], kind: str, item, picture: Tuple[str, str]) -> None:
    """File the picture of a drawing job (:class:`qpm_timm.explain.pictures.PlainDrawer`) under its page: the global
    picture, or by feature, class or pair."""
    if kind == 'global':
        pages['global'] = picture
    else:  # a pair's job carries (pair, examples, evidence)
        pages[_PAGE[kind]][item[0] if kind == 'pair' else item] = picture


def _number(x) -> Optional[float]:
    """A JSON number, None for NaN."""
    return None if x is None or not np.isfinite(x) else float(x)


def explanation_summary(measured: ExplanationMetrics, annotations) -> Dict[str, Any]:
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


def _model_title(model) -> str:
    arch = model.pretrained_cfg.get('architecture', 'qpm') if hasattr(model, 'pretrained_cfg') else 'qpm'
    return f'{arch} ({model.backbone_name} backbone)'


def report_summary(
        model,
        pictures: ReportPictures,
        scan: Optional[DatasetScan],
        pairs: Sequence[Tuple[int, int]],
        skipped_pairs: List[Dict],
        measured: Optional[ExplanationMetrics],
        annotations,
        examples: List[Dict],
        gallery_source: Optional[str],
        prediction_sets: Dict,
        title: Optional[str] = None,
        dense_accuracy: Optional[Dict[str, float]] = None,
) -> Dict[str, Any]:
    """report.json: the model's sizes, its features and classes, the pairs drawn and skipped, the explanation
    metrics, the example images, the accuracy (with the dense model's) and the prediction sets; the page renders it."""
    selection = model.head.selection.cpu().tolist()
    gallery = pictures.gallery
    return dict(
        title=title or _model_title(model), num_classes=model.num_classes, n_features=len(selection),
        n_per_class=model.n_per_class, selection=selection, dataset_given=scan is not None,
        gallery_source=gallery_source if gallery is not None else None,
        gallery_images_seen=gallery.num_images if gallery is not None else 0,
        annotations=pictures.names.source or None, heatmap_normalisation=pictures.heat_note,
        class_names=pictures.class_names, features=[pictures.feature_info(j) for j in range(len(selection))],
        class_features=pictures.features, pairs=[list(p) for p in pairs], skipped_pairs=skipped_pairs,
        explanation_metrics=None if measured is None else explanation_summary(measured, annotations),
        examples=examples,
        validation_accuracy=None if scan is None else float((scan.predictions == scan.targets).mean() * 100),
        dense_validation_accuracy=dense_accuracy or None, prediction_sets=prediction_sets)


def index_html(summary: Dict, pages: Dict, pictures: ReportPictures) -> str:
    """index.html: the page template over report.json's summary, the pictures drawn and every feature's colour and
    label."""
    tags = {j: dict(colour=pictures.colour_hex(j), text=pictures.colour_hex(j, text=True), label=label)
            for j, label in enumerate(pictures.names.labels)}
    return _TEMPLATES.get_template('index.html.j2').render(s=summary, pages=pages, tags=tags)
