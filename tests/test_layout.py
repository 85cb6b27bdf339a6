"""The package's rooms import downwards only, and no module imports itself back through others.

The rooms, bottom to top (docs/DEVELOPING.md, "Layout"): precision / atomic, ``data``, ``models``,
``forward`` / ``losses``, ``stats``, ``solver``, ``baselines``, ``fit``, ``hub`` / ``convert``, then ``explain``,
``conformal``, ``metrics``, ``edit``, ``export`` side by side, ``run`` (what the scripts share) and ``demo``. Every
import counts, at module level or inside a function, except a script entry point (``__main__.py`` or an ``if __name__ ==
'__main__':`` block), which may call the run layer as train.py does.
"""
import ast
from pathlib import Path
from typing import Dict, Set

import networkx as nx
import pytest

from helpers.scripts import run_module

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'qpm_timm'
RANK = {'precision': 0, 'atomic': 0, 'data': 1, 'models': 2, 'forward': 3, 'losses': 3, 'stats': 4,
        'solver': 5, 'baselines': 6, 'fit': 7, 'hub': 8, 'convert': 8, 'explain': 9, 'conformal': 9, 'metrics': 9,
        'edit': 9, 'export': 9, 'run': 10, 'demo': 11}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _is_module(name: str) -> bool:
    where = ROOT / name.replace('.', '/')
    return where.with_suffix('.py').is_file() or (where / '__init__.py').is_file()


def _is_main_block(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and getattr(node.test.left, 'id', None) == '__name__')


def imports_of(path: Path) -> Set[str]:
    """The package modules ``path`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    name = _module_name(path)
    package = name.split('.') if path.name == '__init__.py' else name.split('.')[:-1]
    found: Set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_main_block(child):
                continue
            if isinstance(child, ast.ImportFrom):
                base = package[:len(package) - child.level + 1] if child.level else []
                target = '.'.join(base + ([child.module] if child.module else []))
                if target.split('.')[0] == 'qpm_timm':
                    subs = [f'{target}.{a.name}' for a in child.names if _is_module(f'{target}.{a.name}')]
                    found.update(subs or [target])
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.split('.')[0] == 'qpm_timm')
            visit(child)
    visit(ast.parse(path.read_text()))
    return found


def import_graph() -> Dict[str, Set[str]]:
    return {_module_name(p): imports_of(p) for p in PACKAGE.rglob('*.py') if p.name != '__main__.py'}


def _room(module: str) -> str:
    return module.split('.')[1]


def test_the_graph_sees_the_imports_it_checks():
    graph = import_graph()
    assert 'qpm_timm.run.cli' in graph['qpm_timm.run.training']  # from .cli import ...
    assert 'qpm_timm.hub' in graph['qpm_timm.run.training']       # from .. import hub
    assert 'qpm_timm.run.editing' not in graph['qpm_timm.edit.api']


def test_no_module_imports_itself_back():
    graph = nx.DiGraph([(a, b) for a, targets in import_graph().items() for b in targets])
    assert list(nx.simple_cycles(graph)) == []


def test_lower_rooms_never_import_higher_ones():
    upward = {(a, b) for a, targets in import_graph().items() if len(a.split('.')) > 1 for b in targets
              if len(b.split('.')) > 1 and RANK[_room(a)] < RANK[_room(b)]}
    assert not upward, sorted(upward)


def test_every_room_has_a_rank():
    rooms = {_room(m) for m in import_graph() if m.count('.')}
    assert rooms <= set(RANK), rooms - set(RANK)


@pytest.mark.parametrize('module, usage', [('qpm_timm.edit', 'usage: python -m qpm_timm.edit'),
                                           ('qpm_timm.export', 'usage: python -m qpm_timm.export')])
def test_the_package_entry_points_run_their_command_lines(tmp_path, module, usage):
    """``python -m`` of a library room reaches its command line in the run layer: help, and bad input -> exit 2."""
    code, out, err = run_module(module, ['--help'])
    assert code == 0 and usage in out, err
    bad = {'qpm_timm.edit': [str(tmp_path / 'missing'), '--forbid-feature', '0', '--output', str(tmp_path / 'o')],
           'qpm_timm.export': ['onnx', f'local-dir:{tmp_path / "missing"}', str(tmp_path / 'q.onnx')]}[module]
    code, _, err = run_module(module, bad)
    assert code == 2 and err.startswith('error: '), err
