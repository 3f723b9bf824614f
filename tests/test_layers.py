"""The layering of the product code, checked on its source (ast): imports only go downward
(``ml_backend`` -> ``training`` -> ``label_config``), each layer keeps out what it must not use, and
only the settings module reads the environment.  Inside ``ml_backend`` the subpackages are layered too
(``ML_BACKEND_ORDER``, drawn in docs/architecture.md); benchmarks and the dev kit never import the tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("label_config", "training", "ml_backend")  # bottom to top
SETTINGS_MODULE = ROOT / "ml_backend" / "settings.py"
# what a lower layer must not import, besides the layers above it
FORBIDDEN = {
    "label_config": {"torch", "torchvision", "requests", "redis", "rq", "fastapi", "starlette", "label_studio_sdk"},
    "training": {"requests", "httpx", "redis", "rq", "fastapi", "starlette", "uvicorn", "label_studio_sdk"},
    "ml_backend": set(),
}


# ml_backend's own layers, bottom to top: a unit imports units of its own rank or below, never above
ML_BACKEND_ORDER = {
    "settings": 0, "credentials": 0,
    "labelstudio": 1,
    "predict": 2,
    "jobs": 3,
    "api": 4,
    "local": 5,
    "cli": 6,
}


def product_files() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module an ``import`` or ``from ... import`` names, at any depth (functions included)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def layering_violations(path: Path, tree: ast.AST) -> list[str]:
    layer = path.relative_to(ROOT).parts[0]
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    bad = []
    for line, module in imported_modules(tree):
        top = module.split(".")[0]
        if top in above:
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} (a layer above {layer})")
        elif top in FORBIDDEN[layer]:
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({layer} must not use {top})")
    return bad


def ml_backend_unit(parts: tuple[str, ...]) -> str | None:
    """The ``ml_backend`` unit (subpackage or top-level module) a module path or dotted name belongs to."""
    if len(parts) < 2 or parts[0] != "ml_backend":
        return None
    return parts[1].removesuffix(".py")


def sibling_violations(path: Path, tree: ast.AST) -> list[str]:
    """Imports between ``ml_backend`` subpackages against ``ML_BACKEND_ORDER`` (an unknown unit is an error)."""
    unit = ml_backend_unit(path.relative_to(ROOT).parts)
    if unit is None or unit == "__init__":
        return []
    if unit not in ML_BACKEND_ORDER:
        return [f"{path.relative_to(ROOT)}: ml_backend/{unit} has no place in ML_BACKEND_ORDER (tests/test_layers.py)"]
    bad = []
    for line, module in imported_modules(tree):
        target = ml_backend_unit(tuple(module.split(".")))
        if target is not None and target != unit and ML_BACKEND_ORDER.get(target, 99) > ML_BACKEND_ORDER[unit]:
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} (ml_backend.{unit} sits below {target})")
    return bad


def test_ml_backend_subpackages_import_only_downward() -> None:
    bad = []
    for path in sorted((ROOT / "ml_backend").rglob("*.py")):
        bad += sibling_violations(path, ast.parse(path.read_text(), str(path)))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source, where, expected", [
    ("from ml_backend.api.app import create_app", "predict/x.py", "ml_backend.predict sits below api"),
    ("def f():\n    from ml_backend.jobs.queue import TrainingQueue", "labelstudio/x.py", "sits below jobs"),
    ("from ml_backend.labelstudio.fetch import ImageFetcher", "predict/x.py", None),
    ("from ml_backend.predict.registry import ModelRegistry", "api/app.py", None),
])
def test_the_checker_catches_imports_up_the_subpackages(source: str, where: str, expected: str | None) -> None:
    bad = sibling_violations(ROOT / "ml_backend" / where, ast.parse(source))
    assert (expected in bad[0]) if expected else not bad


def test_benchmarks_and_the_dev_kit_never_import_the_tests() -> None:
    bad = []
    for path in sorted([*(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "devkit").rglob("*.py")]):
        for line, module in imported_modules(ast.parse(path.read_text(), str(path))):
            if module.split(".")[0] == "tests":
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def environment_reads(path: Path, tree: ast.AST) -> list[str]:
    """``os.environ`` / ``os.getenv`` / ``os.putenv`` anywhere, or ``from os import environ``."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                and node.attr in ("environ", "getenv", "environb", "putenv"):
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno} reads os.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os" \
                and any(a.name in ("environ", "getenv", "environb") for a in node.names):
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports os.environ")
    return bad


def test_imports_only_go_downward() -> None:
    bad = []
    for path in product_files():
        bad += layering_violations(path, ast.parse(path.read_text(), str(path)))
    assert not bad, "\n".join(bad)


def test_only_the_settings_module_reads_the_environment() -> None:
    bad = []
    for path in product_files():
        if path != SETTINGS_MODULE:
            bad += environment_reads(path, ast.parse(path.read_text(), str(path)))
    assert not bad, "\n".join(bad)
    assert environment_reads(SETTINGS_MODULE, ast.parse(SETTINGS_MODULE.read_text())), "settings reads nothing?"


@pytest.mark.parametrize("source, layer, expected", [
    ("from ml_backend.settings import Settings", "training", "a layer above training"),
    ("def f():\n    from training.models import build_model", "label_config", "a layer above label_config"),
    ("import redis", "training", "training must not use redis"),
    ("import torch", "label_config", "label_config must not use torch"),
    ("from training.images import to_batch", "ml_backend", None),
])
def test_the_checker_catches_upward_and_forbidden_imports(source: str, layer: str, expected: str | None) -> None:
    bad = layering_violations(ROOT / layer / "x.py", ast.parse(source))
    assert (expected in bad[0]) if expected else not bad


def test_the_checker_catches_environment_reads() -> None:
    for source in ("import os\nos.environ.get('X')", "import os\nos.getenv('X')", "from os import environ"):
        assert environment_reads(ROOT / "training" / "x.py", ast.parse(source)), source
    assert not environment_reads(ROOT / "training" / "x.py", ast.parse("import os\nos.path.join('a')"))
