"""Run timm's own ``tests/test_models.py`` (from the sdist of the installed timm) on the qpm_* models.

Usage (from anywhere)::

    python tests/timm_suite/run.py                 # = pytest test_models.py -q -k qpm -x
    python tests/timm_suite/run.py -k resnet18 -rA # arguments replace "-k qpm -x" and pass through

The sdist is fetched once with ``pip download --no-deps --no-binary :all: timm==<installed>`` into
``$QPM_TIMM_SDIST_CACHE`` (default ``~/.cache/qpm-timm/timm-sdist``); ``tests/test_models.py`` and any
sibling module it imports are extracted to ``<cache>/timm-<version>-tests/`` with our ``conftest.py``
(imports qpm_timm, deselects the two tests that need the real Hub) and a ``pytest.ini`` carrying timm's
markers. Nothing from timm enters this git tree. The exit code is pytest's.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import List, Sequence

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_ARGS = ("-k", "qpm", "-x")


def cache_dir() -> Path:
    return Path(os.environ.get("QPM_TIMM_SDIST_CACHE", Path.home() / ".cache" / "qpm-timm" / "timm-sdist"))


def fetch_sdist(timm_version: str, cache: Path) -> Path:
    """Path of ``timm-<version>.tar.gz`` in ``cache``, downloaded from PyPI with pip if missing."""
    sdist = cache / f"timm-{timm_version}.tar.gz"
    if not sdist.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"timm=={timm_version}", "-d", str(cache)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not sdist.is_file():
            raise RuntimeError(f"could not fetch the timm {timm_version} sdist with {' '.join(cmd)}:\n"
                               f"{proc.stdout}\n{proc.stderr}")
    return sdist


def _local_imports(source: str, available: Sequence[str]) -> List[str]:
    """Sibling modules of tests/ that ``source`` imports (``import x``, ``from x|.x|tests.x import``)."""
    pattern = re.compile(r"^\s*(?:from\s+(?:tests\.|\.)?(\w+)\s+import|import\s+(?:tests\.)?(\w+))", re.M)
    names = {a or b for a, b in pattern.findall(source)}
    return sorted(n for n in names if n in available)


def extract_suite(sdist: Path, dest: Path) -> Path:
    """Extract ``tests/test_models.py`` and the sibling test modules it needs into ``dest``."""
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name and m.isfile()}
        modules = [n[len("tests/"):-3] for n in members if re.fullmatch(r"tests/\w+\.py", n)]
        pyproject = tar.extractfile(members["pyproject.toml"]).read().decode()
        todo, done = ["test_models"], set()
        dest.mkdir(parents=True, exist_ok=True)
        while todo:
            name = todo.pop()
            if name in done:
                continue
            done.add(name)
            source = tar.extractfile(members[f"tests/{name}.py"]).read().decode()
            (dest / f"{name}.py").write_text(source)
            todo += [n for n in _local_imports(source, modules) if n != "conftest"]
    markers = tomllib.loads(pyproject).get("tool", {}).get("pytest", {}).get("ini_options", {}).get("markers", [])
    try:
        import pytest_timeout  # noqa: F401
    except ImportError:  # test_models.py marks tests with @pytest.mark.timeout; without the plugin it is inert
        markers = [*markers, "timeout: per-test time limit (inert: pytest-timeout is not installed)"]
    ini = "[pytest]\nmarkers =\n" + "".join(f"    {m}\n" for m in markers)
    (dest / "pytest.ini").write_text(ini)
    shutil.copyfile(HERE / "conftest.py", dest / "conftest.py")
    return dest / "test_models.py"


def main(argv: Sequence[str]) -> int:
    timm_version = version("timm")
    cache = cache_dir()
    test_file = extract_suite(fetch_sdist(timm_version, cache), cache / f"timm-{timm_version}-tests")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    args = list(argv) if argv else list(DEFAULT_ARGS)
    cmd = [sys.executable, "-m", "pytest", str(test_file), "-c", str(test_file.parent / "pytest.ini"),
           "--rootdir", str(test_file.parent), "-p", "no:cacheprovider", "-q", *args]
    print(f"timm {timm_version}: {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, env=env, cwd=str(test_file.parent))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
