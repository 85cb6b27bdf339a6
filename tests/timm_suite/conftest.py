"""conftest for timm's own ``tests/test_models.py``, run on the ``qpm_*`` models by ``run.py``.

``run.py`` copies this file next to the fetched ``test_models.py``. Importing :mod:`qpm_timm` here,
before that module is collected, registers the ``qpm_*`` architectures, so timm's module-level
``list_models(...)`` parametrisations include them.
"""
from pathlib import Path

import pytest

import qpm_timm  # noqa: F401  (registers the qpm_* models in timm)

# The only tests of test_models.py that need the real Hugging Face Hub: they call
# create_model(name, pretrained=True) for every model with a pretrained tag, which downloads
# the published weights (our download path is tested against a local Hub in tests/test_hub_*.py).
HUB_TESTS = ("test_model_load_pretrained", "test_model_features_pretrained")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Deselect :data:`HUB_TESTS` of the test_models.py that sits next to this file."""
    here = Path(__file__).resolve().parent
    hub = [it for it in items
           if getattr(it, "originalname", it.name) in HUB_TESTS and Path(str(it.path)).resolve().parent == here]
    if hub:
        config.hook.pytest_deselected(items=hub)
        items[:] = [it for it in items if it not in hub]
