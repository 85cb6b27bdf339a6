""" What a failed ``pretrained=True`` load means, and what to do about it.

timm's loader raises what huggingface_hub, safetensors and ``torch.load`` raise: a missing or empty Hub repository,
no network with nothing cached, a truncated or corrupted file. :func:`explained_load_errors` turns those into errors
that name the variant, the repository or file and the two ways to weights (convert the authors' release, or train
with the variant's recipe); anything else passes unchanged. The model files stay free of Hub code, as in timm.
"""
import pickle
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional

from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError
from timm.models import resolve_pretrained_cfg

from .authors import AUTHORS_EVAL_DATASETS, releases_of
from .variants import VARIANT_ARGS, variant_dataset

__all__ = ['PretrainedWeightsUnavailableError', 'explained_load_errors', 'load_error', 'unreadable_checkpoint_message',
           'weights_unavailable_message']


class PretrainedWeightsUnavailableError(RuntimeError):
    """``pretrained=True`` found no weights: the Hub repository is missing or empty, or offline with no cache."""


_NOT_ON_HUB = (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)
_UNREADABLE_FILE = (RuntimeError, EOFError, pickle.UnpicklingError)  # what torch.load raises for a bad file


def unreadable_checkpoint_message(path: str, error: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, and what to do."""
    if 'weights_only' in str(error) or isinstance(error, pickle.UnpicklingError):
        return (f'{path} is not a plain state dict of tensors: torch.load(weights_only=True) refused it '
                f'({type(error).__name__}: {str(error).splitlines()[0]}); it holds code or other objects, which are '
                f'never run here. Load it only if you trust it, and save model.state_dict() again.')
    return (f'{path} is not a readable checkpoint, truncated or corrupted ({type(error).__name__}: '
            f'{str(error).splitlines()[0] if str(error) else "empty file"}); download or export it again.')


def _hub_reason(error: Exception) -> str:
    if isinstance(error, RepositoryNotFoundError):
        return 'the repository does not exist (or is private)'
    if isinstance(error, RevisionNotFoundError):
        return 'the repository has no such revision'
    if isinstance(error, LocalEntryNotFoundError):
        return ('no network or HF_HUB_OFFLINE=1 (which skips the connection retries), and the weights are not in '
                'the Hugging Face cache')
    return 'the repository holds no weights file'


def weights_unavailable_message(variant: str, repo_id: str, reason: str, backbone: str = '') -> str:
    """Names the variant and the repository and says the two ways to weights: convert the authors' release and
    push it (docs/RELEASING.md), or train with the variant's recipe."""
    push = f'python -m qpm_timm.hub push <folder> --repo-id {repo_id}'
    first = f'push an export of trained weights (qpm_timm.hub.save_pretrained): {push}'
    dataset = variant_dataset(variant) if variant in VARIANT_ARGS else None
    train = f'--model {variant} --dataset {dataset}' if dataset else \
        f'--model {variant} --backbone {backbone} --dataset <dataset>'
    if dataset in AUTHORS_EVAL_DATASETS:
        releases = releases_of(variant)
        released = ('; '.join(f'{r.name} (--source {r.source}): {r.url}' for r in releases) if releases else
                    'none for this variant; a checkpoint of their code for it converts the same way')
        first = (f'convert a checkpoint of the authors\' code (released: {released}), then load or push it:\n'
                 f'       python -m qpm_timm.convert --source {releases[0].source if releases else "authors-qpm"} '
                 f'--checkpoint <file.pth> --variant {variant} --output <folder>\n'
                 f'       timm.create_model("local-dir:<folder>", pretrained=True)  or  {push}')
    return (f'{variant}: no pretrained weights at the Hugging Face Hub repository {repo_id}: {reason}. (The README\'s '
            f'Models table lists which variants have published weights.) Two ways to weights:\n'
            f'  1. {first}\n'
            f'  2. train it with the variant\'s recipe: python train.py {train} --data-dir <data>, then '
            f'timm.create_model("local-dir:<output>/export", pretrained=True).')


def load_error(variant: str, kwargs: Dict[str, Any], error: Exception) -> Optional[Exception]:
    """Our error for a failed ``pretrained=True`` load, or None when it is not a missing or unreadable file."""
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    if isinstance(error, SafetensorError):
        return ValueError(f'the weights of {variant} ({cfg.file or cfg.hf_hub_id or variant}) are truncated or '
                          f'corrupted ({error}); delete the file (or its Hugging Face cache entry) and export or '
                          f'download it again.')
    if cfg.file and not str(cfg.file).endswith('.safetensors') and isinstance(error, _UNREADABLE_FILE):
        return ValueError(f'{variant}: {unreadable_checkpoint_message(cfg.file, error)}')
    if not cfg.file and cfg.hf_hub_id and isinstance(error, _NOT_ON_HUB) and not isinstance(error, GatedRepoError):
        return PretrainedWeightsUnavailableError(weights_unavailable_message(
            variant, cfg.hf_hub_id, _hub_reason(error), kwargs.get('backbone', '')))
    return None


@contextmanager
def explained_load_errors(variant: str, kwargs: Dict[str, Any]) -> Iterator[None]:
    """Re-raise a missing or unreadable weights file of building ``variant`` with ``kwargs`` as :func:`load_error`
    explains it; other errors pass unchanged."""
    try:
        yield
    except (SafetensorError, *_UNREADABLE_FILE, *_NOT_ON_HUB) as e:
        error = load_error(variant, kwargs, e)
        if error is None:
            raise
        raise error from e
