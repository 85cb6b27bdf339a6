"""Atomic file writes: a result file is either the earlier one or the complete new one, never half-written."""
import os
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator, Optional, Union

__all__ = ['atomic_write']


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
