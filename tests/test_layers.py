"""The package is layered: data / nn / metrics -> models -> audit -> callbacks -> the rest; no module imports upwards."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_tru"
LAYERS = {"io": 0, "datamodules": 0, "nn": 0, "metrics": 0, "models": 1, "audit": 2, "callbacks": 3}
TOP = 4  # cli, lifecycle, ledger, report, ...: may import anything


def _layer(module: str) -> int:
    """Layer of ``lightning_tru.<part>...`` (the package root itself re-exports: top)."""
    parts = module.split(".")
    return LAYERS.get(parts[1], TOP) if len(parts) > 1 else TOP


def _imports(path: Path) -> set[str]:
    """Every ``lightning_tru`` module a file imports, lazily inside functions too."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_tru"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("lightning_tru")}
    return out


FILES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(PACKAGE)) for p in FILES])
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    module = ".".join(("lightning_tru", *path.relative_to(PACKAGE).with_suffix("").parts))
    upward = sorted(m for m in _imports(path) if _layer(m) > _layer(module))
    assert not upward, f"{module} (layer {_layer(module)}) imports {upward}"


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from lightning_tru.callbacks.base import UnlearningCallback\n")
    assert any(_layer(m) > _layer("lightning_tru.models.unlearning") for m in _imports(bad))
