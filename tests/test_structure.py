"""The layers: the conversion library never imports the service; no module imports itself back through
others; nothing the service runs imports the development tools; light commands never load torch; the
database models and the migrations describe the same schema."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
    """Every package of the library and the service has a row naming each of its modules (a sub-package may be
    named in its parent's row instead, as ``specs/`` and ``devhub/`` are); every module a row names exists."""
    readme = (ROOT / "README.md").read_text()
    code_map = readme[readme.index("## Code map"):readme.index("\n## ", readme.index("## Code map") + 1)]
    rows = {line.split("|")[1].strip().strip("`"): line for line in code_map.splitlines()
            if line.startswith("| `")}
    named = {folder: {w.strip("`(),:+;") for w in row.split() if w.strip("`(),:+;").endswith(".py")}
             for folder, row in rows.items()}
    for folder in rows:
        assert (ROOT / folder).is_dir(), f"the code map names {folder}, which does not exist"
        for name in named[folder]:
            assert list((ROOT / folder).rglob(name)), f"the code map names {folder}{name}, which does not exist"
    for package in sorted(p.parent for top in ("service", "workers") for p in (ROOT / top).rglob("__init__.py")):
        folder = package.relative_to(ROOT).as_posix() + "/"
        if folder not in rows:
            parent = package.parent.relative_to(ROOT).as_posix() + "/"
            assert f"`{package.name}/" in rows.get(parent, ""), f"the code map has no row for {folder}"
            continue
        files = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
        assert files <= named[folder], f"{folder}: not in the code map {sorted(files - named[folder])}"


def _source_modules() -> list[Path]:
    return sorted(p for package in ("service", "workers") for p in (ROOT / package).rglob("*.py"))


def test_no_module_is_over_400_lines_and_no_function_over_80() -> None:
    long_modules, long_functions = [], []
    for path in _source_modules():
        text = path.read_text()
        if len(text.splitlines()) > 400:
            long_modules.append(f"{path.relative_to(ROOT)} ({len(text.splitlines())})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long_functions.append(f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long_modules, f"split these by what they do: {long_modules}"
    assert not long_functions, f"split these: {long_functions}"


def test_no_private_name_is_imported_from_another_module() -> None:
    found = []
    for path in _source_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("service", "workers")):
                found += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_")]
    assert not found, found


# suites that test a capability across modules rather than one module (end to end, bad input, the layers)
SUITES = {"test_bad_input", "test_bad_sources", "test_queue", "test_multihost", "test_broker_restart",
          "test_database_restart", "test_local_and_api", "test_secrets"}


def test_the_tests_mirror_the_source_tree() -> None:
    """tests/<folder>/test_<name>.py tests <folder>/<name>.py (or the package <folder>/<name>/; test_<package>.py
    in a package's folder tests its __init__), apart from the cross-module suites above."""
    unmirrored = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        folder = path.parent.relative_to(ROOT / "tests")
        name = path.stem.removeprefix("test_")
        if folder == Path("."):
            assert (ROOT / name).is_dir() or path.stem == "test_structure", path  # the tree, docker/
            continue
        source = ROOT / folder
        assert source.is_dir(), f"{path.relative_to(ROOT)} mirrors no source folder ({folder})"
        if not ((source / f"{name}.py").is_file() or (source / name).is_dir() or name == source.name
                or path.stem in SUITES):
            unmirrored.append(str(path.relative_to(ROOT)))
    assert not unmirrored, f"name these after the module they test: {unmirrored}"


@pytest.mark.parametrize("path", sorted((ROOT / "tests" / "workers").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_library_tests_import_nothing_from_the_service(path: Path) -> None:
    service = sorted(n for n in _imports(path) if n == "service" or n.startswith("service."))
    assert not service, f"{path.relative_to(ROOT)} imports {service}"
