"""The layers: the conversion library never imports the service; light commands never load torch; the
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


@pytest.mark.parametrize("path", sorted((ROOT / "workers").glob("*.py")), ids=lambda p: p.name)
def test_the_conversion_library_imports_nothing_from_the_service(path: Path) -> None:
    service = sorted(n for n in _imports(path) if n == "service" or n.startswith("service."))
    assert not service, f"{path.name} imports {service}"


@pytest.mark.parametrize("module", ["service.settings", "service.api", "service.cli", "service.jobs",
                                    "service.watch", "service.cli.jobs"])
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
