"""Run the repository's scripts as a user does (``python validate.py ...``), in this process: the script file is
executed as ``__main__`` with its own ``sys.argv`` (``python -m <module>`` the same way), so flags, exit codes and
messages are the real ones, without a new interpreter per call. Nothing imports a script."""
import contextlib
import csv
import io
import json
import runpy
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, argv: Sequence[str]) -> int:
    """Exit code of ``python <name> <argv>`` run in this process."""
    saved = sys.argv
    sys.argv = [str(ROOT / name), *map(str, argv)]
    try:
        runpy.run_path(str(ROOT / name), run_name='__main__')
    except SystemExit as e:
        return 0 if e.code is None else e.code
    finally:
        sys.argv = saved
    return 0


def run_module(module: str, argv: Sequence[str]) -> Tuple[int, str, str]:
    """Exit code, stdout and stderr of ``python -m <module> <argv>`` run in this process (``runpy``, as ``-m``)."""
    saved, out, err = sys.argv, io.StringIO(), io.StringIO()
    sys.argv = [module, *map(str, argv)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)  # "found in sys.modules": the module is imported already
            runpy.run_module(module, run_name='__main__', alter_sys=True)
    except SystemExit as e:
        code = 0 if e.code is None else e.code
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


def refused(name: str, argv: Sequence[str]) -> Tuple[int, str]:
    """Exit code and stderr of ``python <name> <argv>`` run in this process (for bad input, which ends early)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_script(name, argv)
    return code, err.getvalue()


def read_results(path: Path) -> Dict[str, Any]:
    """validate.py's results file (json, or csv with its one row's numbers as floats)."""
    if path.suffix == '.json':
        return json.loads(path.read_text())
    with open(path, newline='') as f:
        (row,) = list(csv.DictReader(f))

    def value(text: str):
        try:
            return float(text)
        except ValueError:
            return text
    return {k: value(v) for k, v in row.items()}
