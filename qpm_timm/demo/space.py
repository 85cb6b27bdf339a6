""" ``export-space``: a folder that runs as a Hugging Face Space unchanged (docs/EXPLANATIONS.md, "The demo").

    <folder>/app.py            builds the demo (:func:`qpm_timm.demo.build_app`) and launches it
    <folder>/requirements.txt  qpm-timm's own requirements (Gradio comes from the Space's ``sdk_version``)
    <folder>/README.md         the Space's front matter (sdk gradio, its version, app_file) and a short card
    <folder>/qpm_timm/         this package's source (qpm-timm is not on PyPI), so ``import qpm_timm`` works as is
    <folder>/model/export/     the export (weights, config.json, report), or nothing with ``hub_id``: the app then
                               loads ``hf-hub:<hub_id>``
    <folder>/model/statistics.npz, args.yaml   the run's statistics and arguments, when the export lies in a train.py
                               experiment folder: the demo's edit action re-solves on them (:mod:`.editing`)

Upload it with ``huggingface_hub.HfApi().upload_folder(repo_id=..., repo_type='space', folder_path=<folder>)``. The
folder is written beside and swapped in, so an error leaves an earlier one intact.
"""
import importlib.metadata
import shutil
from pathlib import Path
from typing import List, Optional

import yaml

from ..atomic import atomic_folder
from ..run.cli import UsageError
from .analysis import model_title

__all__ = ['export_space', 'space_requirements', 'MODEL_DIR']

MODEL_DIR = 'model'
EXPORT_FILES = ('model.safetensors', 'config.json')
RUN_FILES = ('statistics.npz', 'args.yaml')  # beside export/ in an experiment folder: what editing reads
_PACKAGE = Path(__file__).resolve().parents[1]  # the qpm_timm package folder

APP = '''""" QPM demo as a Hugging Face Space, written by `python -m qpm_timm.demo export-space`. """
from pathlib import Path

from qpm_timm.demo import build_app, launch, load_demo_model

MODEL = {model}
app = build_app(load_demo_model(MODEL, pretrained=True), title={title!r})

if __name__ == '__main__':
    launch(app, host=None)  # the Space sets GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; else 127.0.0.1:7860
'''


def space_requirements() -> List[str]:
    """The installed qpm-timm's core requirements (no extras): what the Space's ``requirements.txt`` lists."""
    try:
        requires = importlib.metadata.requires('qpm-timm') or []
    except importlib.metadata.PackageNotFoundError as e:
        raise UsageError('export-space reads qpm-timm\'s requirements from its installation: pip install -e .') from e
    return [r for r in requires if 'extra ==' not in r]


def _gradio_version() -> str:
    """The installed Gradio's version: the Space runs the same one (its ``sdk_version``)."""
    try:
        return importlib.metadata.version('gradio')
    except importlib.metadata.PackageNotFoundError as e:
        raise UsageError('export-space names the installed Gradio version in the Space\'s front matter: '
                         'pip install -e ".[demo]".') from e


def _front_matter(title: str) -> str:
    front = dict(title=title, emoji='🔍', colorFrom='blue', colorTo='green', sdk='gradio',
                 sdk_version=_gradio_version(), app_file='app.py', pinned=False, license='apache-2.0')
    return f'---\n{yaml.safe_dump(front, sort_keys=False, allow_unicode=True)}---\n'


def _card(title: str, model: str) -> str:
    return (f'{_front_matter(title)}\n# {title}\n\nA QPM (Norrenbrock et al., ICLR 2025): upload an image and see '
            f'the top classes, the predicted class\'s features with their heatmaps and gallery patches, and the '
            f'nearest class with what separates it. The model: `{model}`. Written by '
            f'`python -m qpm_timm.demo export-space`; run it locally with `python app.py`.\n')


def export_space(export: Optional[str], folder: str, hub_id: Optional[str] = None) -> Path:
    """Write the Space folder (module docstring) for the export folder ``export`` or, with ``hub_id``
    (``ORG/NAME``), for that Hub model repository."""
    if hub_id is None:
        export_path = Path(export)
        missing = [name for name in EXPORT_FILES if not (export_path / name).is_file()]
        if missing:
            raise UsageError(f'{export} is no export folder (missing {", ".join(missing)}): give the export/ folder '
                             f'of a train.py run or a folder written by qpm_timm.hub.save_pretrained.')
        title = model_title(f'local-dir:{export}')
        model, shown = f"'local-dir:' + str(Path(__file__).resolve().parent / {MODEL_DIR!r} / 'export')", \
            f'{MODEL_DIR}/export/'
        run = export_path.resolve().parent if (export_path.resolve().parent / RUN_FILES[0]).is_file() else None
    else:
        title, run = hub_id.split('/')[-1], None
        model, shown = repr(f'hf-hub:{hub_id}'), f'hf-hub:{hub_id}'
    requirements = space_requirements()
    _gradio_version()  # checked before anything is written

    def write(tmp: Path) -> None:
        (tmp / 'app.py').write_text(APP.format(model=model, title=title), encoding='utf-8')
        (tmp / 'requirements.txt').write_text('\n'.join(requirements) + '\n', encoding='utf-8')
        (tmp / 'README.md').write_text(_card(f'QPM demo {title}', shown), encoding='utf-8')
        shutil.copytree(_PACKAGE, tmp / 'qpm_timm', ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        if hub_id is None:
            shutil.copytree(export, tmp / MODEL_DIR / 'export')
        for name in RUN_FILES if run is not None else ():
            if (run / name).is_file():
                shutil.copy2(run / name, tmp / MODEL_DIR / name)

    return atomic_folder(folder, write)
