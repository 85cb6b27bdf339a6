"""Atomic file and folder writes: a result is either the earlier one or the complete new one, never half-written."""
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator, Optional, Union

__all__ = ['atomic_write', 'atomic_folder']


@contextmanager
def atomic_write(path: Union[str, os.PathLike], mode: str = 'w', newline: Optional[str] = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it is flushed to disk and renamed onto
    ``path`` (``os.replace``), on any error it is removed and ``path`` stays as it was."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f'.{os.path.basename(path)}.')
    try:
        with os.fdopen(fd, mode, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_folder(folder: Union[str, os.PathLike], write: Callable[[Path], None], keep_files: bool = False) -> Path:
    """Fill a fresh sibling folder with ``write(tmp)``, then swap it in for ``folder``: an interrupted write
    leaves the earlier folder intact. ``keep_files`` first copies the earlier folder's top-level files into the
    new one (e.g. a ``.gitattributes`` of a Hub clone that ``write`` does not produce)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.', dir=folder.parent))
    try:
        if keep_files and folder.is_dir():
            for f in folder.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        write(tmp)
        old = folder.with_name(f'.{folder.name}.old')
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
