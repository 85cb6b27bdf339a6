"""How the scripts end: bad input is a message on stderr and exit code 2, a code bug keeps its traceback."""
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, Tuple, Type

__all__ = ['UsageError', 'BAD_INPUT', 'exit_code', 'unexpected_keywords']


class UsageError(ValueError):
    """Bad input found before anything is written (a flag, a file, a folder): its message names the fix."""


# The one list of bad-input errors. ValueError: the package's own checks of sizes, data and checkpoints (and
# UsageError); FileNotFoundError: a path that does not exist. A TypeError, an AttributeError or any other
# OSError is a bug of the code or the machine and keeps its traceback.
BAD_INPUT: Tuple[Type[BaseException], ...] = (ValueError, FileNotFoundError)


def exit_code(main: Callable, argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``: 0 on success; bad input (:data:`BAD_INPUT`) -> ``error: <message>`` on stderr and 2."""
    try:
        main(argv)
    except BAD_INPUT as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


@contextmanager
def unexpected_keywords(message: Callable[[TypeError], str]) -> Iterator[None]:
    """Inside the block, a TypeError for an unexpected keyword argument (a flag's keywords that a dataset or model
    does not take) is bad input: ``UsageError(message(error))``; any other TypeError is a bug and propagates."""
    try:
        yield
    except TypeError as e:
        if 'unexpected keyword argument' not in str(e):
            raise
        raise UsageError(message(e)) from e
