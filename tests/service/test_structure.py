"""The layers: the conversion library never imports the service; no module imports itself back through
others; nothing the service runs imports the development tools; light commands never load torch; the
database models and the migrations describe the same schema."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "coremltools", "diffusers", "transformers")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules() -> dict[str, Path]:
    modules = {}
    for package in ("service", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _project_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports anywhere (inside functions too); its own parent packages excluded."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
    return {m for m in found if m in modules and m != name and not name.startswith(m + ".")}


def test_no_import_circles() -> None:
    modules = _modules()
    graph = {name: _project_imports(name, path, modules) for name, path in modules.items()}
    circles = []
    for start in graph:  # a path from a module's imports back to itself is a circle
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name == start:
                circles.append(start)
                break
            if name not in seen:
                seen.add(name)
                todo += graph[name]
    assert not circles, f"modules importing themselves back through others: {sorted(circles)}"


def test_the_service_does_not_run_the_development_tools() -> None:
    modules = _modules()
    for name, path in modules.items():
        if name.startswith(("workers.devtools", "service.cli", "service.demo")):
            continue  # the tools themselves, the CLI commands that start them, and the demo
        tools = sorted(m for m in _project_imports(name, path, modules) if m.startswith("workers.devtools"))
        assert not tools, f"{name} imports {tools}"


@pytest.mark.parametrize("path", sorted((ROOT / "workers").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_conversion_library_imports_nothing_from_the_service(path: Path) -> None:
    service = sorted(n for n in _imports(path) if n == "service" or n.startswith("service."))
    assert not service, f"{path.name} imports {service}"


@pytest.mark.parametrize("module", ["service.settings", "service.api", "service.cli", "service.jobs",
                                    "service.watch", "service.cli.jobs", "service.submit", "service.celery_app"])
def test_light_modules_load_no_conversion_toolchain(module: str) -> None:
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing {module} loads {result.stdout.strip()}"


def test_models_match_the_migrations(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from service.db import upgrade
    from service.models import Base

    url = f"sqlite:///{tmp_path / 'schema.db'}"
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == [], "the models and the migrations differ: add a migration"


def test_the_readme_code_map_matches_the_tree() -> None:
    readme = (ROOT / "README.md").read_text()
    code_map = readme[readme.index("## Code map"):readme.index("\n## ", readme.index("## Code map") + 1)]
    rows = {line.split("|")[1].strip().strip("`"): line for line in code_map.splitlines()
            if line.startswith("| `")}
    for folder in ("workers/", "service/", "service/api/"):
        files = {p.name for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py"}
        named = {word.strip("`(),:+") for word in rows[folder].split() if word.strip("`(),:+").endswith(".py")}
        assert files == named, f"{folder}: not in the code map {sorted(files - named)}, gone {sorted(named - files)}"
    for folder in rows:
        assert (ROOT / folder).is_dir(), f"the code map names {folder}, which does not exist"
