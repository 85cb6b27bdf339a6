"""What the scripts share: bad input ends with a message on stderr and exit code 2."""
import sys
from typing import Callable, Optional, Sequence, Tuple, Type

__all__ = ['BAD_INPUT', 'exit_code']

BAD_INPUT: Tuple[Type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, OSError)


def exit_code(main: Callable, argv: Optional[Sequence[str]] = None,
              errors: Tuple[Type[BaseException], ...] = BAD_INPUT) -> int:
    """Run ``main(argv)``: 0 on success; one of ``errors`` -> ``error: <message>`` on stderr and 2."""
    try:
        main(argv)
    except errors as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0
