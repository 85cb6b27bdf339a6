"""qpm-timm: QPM (ICLR 2025) globally interpretable classifiers as a timm extension.

``import qpm_timm`` registers the ``qpm_*`` architectures in timm's model registry.
The pipeline reads top to bottom: :mod:`qpm_timm.data` → :mod:`qpm_timm.models` (dense model)
→ :mod:`qpm_timm.stats` → :mod:`qpm_timm.solver` (both in one call: :func:`qpm_timm.fit_qpm`) → fine-tune
(``train.py``) → :mod:`qpm_timm.hub` → :mod:`qpm_timm.explain` (pictures and the HTML report).
"""
import importlib

from .models import *  # noqa: F401,F403  (registers the qpm_* models in timm)
from .models import QPMModel, QPMOutput, create_qpm, from_timm_classifier, load_weights

__version__ = "0.1.0"

_LAZY = ("data", "hub", "losses", "metrics", "solver", "stats", "explain", "conformal", "fit")
_LAZY_NAMES = {"fit_qpm": "fit", "QPMFit": "fit"}


def __getattr__(name: str):
    """Import the heavier submodules (OR-Tools, scikit-learn) only when first used."""
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'qpm_timm' has no attribute {name!r}")
