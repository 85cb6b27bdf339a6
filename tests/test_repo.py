"""The repository cites only what it contains (docs/, the code, commits) and public papers and repositories.

A reader of a clone has no issue tracker, no task text and no folder beside the repository, so a docstring,
comment or document that points there ("issue 12", "the spec", "../shared/...") points at nothing.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

OUTSIDE_CITATION = re.compile(
    r"\bissues?\s*#?\d"                       # issue 12, issue #12, issues 5
    r"|(?:^|[\s(\[])#\d+\b"                   # #12 (not a colour such as color:#222)
    r"|\bthe issue's\b"
    r"|\b(?:the|QPM) spec\b|(?<!\w)\(spec[,:]"  # the spec, QPM spec, (spec, "...") / (spec: ...)
    r"|(?<![.\w])\.\./\w|/work/",            # a folder above the repository, the machine's own checkout
    re.IGNORECASE)


def tracked_text_files():
    """(path, text) of every file git tracks whose bytes are UTF-8 text, except this test."""
    names = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True).stdout
    for name in names.decode().split('\0'):
        if not name or name == THIS:
            continue
        data = (ROOT / name).read_bytes()
        if b'\0' in data:
            continue
        try:
            yield name, data.decode('utf-8')
        except UnicodeDecodeError:
            continue


@pytest.mark.parametrize('text', [
    'LP relaxation, issue 12', 'see issue #5', 'fixed in #13.', 'the spec, "Locality bias B"',
    'QPM spec, stage 2', '(spec: x / sum x)', '../notes/x.md', '../shared/x',
    "the issue's scenario", 'config /work/main/qpm_timm/configs/concepts.yaml',
])
def test_outside_citation_pattern_catches(text):
    assert OUTSIDE_CITATION.search(text)


@pytest.mark.parametrize('text', [
    'docs/METHOD.md, "Locality bias"', 'color:#222', 'resolve_class(spec, class_names)',
    'https://git-lfs.github.com/spec/v1', 'features are shared between classes', 'arXiv:2502.20130',
    'dict(file=".../model.safetensors")',
])
def test_outside_citation_pattern_passes_in_repo_text(text):
    assert not OUTSIDE_CITATION.search(text)


def test_no_tracked_file_cites_a_document_outside_the_repository():
    files = dict(tracked_text_files())
    # the scan reads the real tree: the code, the docs and the tests
    assert {'README.md', 'docs/METHOD.md', 'qpm_timm/stats.py', 'tests/test_stats.py'} <= set(files)
    found = [f'{name}:{number}: {line.strip()}'
             for name, text in files.items()
             for number, line in enumerate(text.splitlines(), 1)
             if OUTSIDE_CITATION.search(line)]
    assert not found, 'citations of documents outside the repository:\n' + '\n'.join(found)


# paths a run or an export writes, which the docs and tests name inside those folders
RUN_DOCUMENTS = ('export/README.md',)


def test_every_markdown_document_a_file_names_is_in_the_repository():
    """A ``*.md`` path named anywhere resolves inside the repository (from its root, the naming file's folder or
    docs/), or is a file a run writes (:data:`RUN_DOCUMENTS`)."""
    missing = []
    for name, text in tracked_text_files():
        for match in re.finditer(r'(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)(?!\w|\.\w)', text):  # not x.md.j2
            doc = match.group(1)
            bases = (ROOT, (ROOT / name).parent, ROOT / 'docs')
            if doc in RUN_DOCUMENTS or any((base / doc).exists() for base in bases):
                continue
            missing.append(f'{name}: {doc}')
    assert not missing, 'documents named but not in the repository:\n' + '\n'.join(missing)


def test_the_code_passes_the_linter():
    """ruff with the rules of pyproject.toml (pyflakes, pycodestyle, 120 columns) over the whole repository."""
    proc = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', str(ROOT)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
