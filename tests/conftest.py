"""Shared fixtures: isolated Hub caches, tiny random pipelines built in code, and their conversions."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

# isolate every Hub cache and credential before huggingface_hub is imported anywhere
_HOME = Path(os.environ.get("PYTEST_HF_HOME", "/tmp")) / f"coreml-publish-tests-{os.getpid()}"
os.environ["HF_HOME"] = str(_HOME / "hf")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ.setdefault("TQDM_DISABLE", "1")


# fixtures that convert with coremltools (or build pipelines to convert); tests using them are slow
_CONVERTING = {"sd1_conversion", "sd2_conversion", "sd2_layouts_conversion", "sd1_sizes_conversion", "sd1_pipeline",
               "sd2_pipeline", "hub_with_source", "trees"}
_SLOW_MODULES = {"tests.service.test_queue", "tests.service.cli.test_publish"}  # real workers, or convert through the CLI


# the longest test files, longest first (measured): run first, so that the two workers of `-n 2 --dist loadfile`
# finish together instead of one waiting on a long file handed out last
_LONGEST_FIRST = ("tests/service/test_queue.py", "tests/service/cli/test_publish.py",
                  "tests/workers/convert/test_engine.py", "tests/service/cli/test_cli.py",
                  "tests/workers/execute/test_executor.py", "tests/service/test_local_and_api.py",
                  "tests/service/test_secrets.py", "tests/workers/convert/test_chunk.py",
                  "tests/service/test_multihost.py", "tests/workers/convert/test_attention.py",
                  "tests/service/test_database_restart.py", "tests/service/test_broker_restart.py",
                  "tests/service/api/test_status.py", "tests/workers/convert/test_targets.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: in-file order kept
    for item in items:  # `python -m pytest -m "not slow"`: the quick subset
        if _CONVERTING & set(getattr(item, "fixturenames", ())) or item.module.__name__ in _SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    if platform.system() == "Darwin":
        return
    skip = pytest.mark.skip(reason="needs macOS with Xcode")
    for item in items:
        if "macos" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sd1_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD 1.x-style pipeline (conv projections, fixed heads, safety checker)."""
    from workers.devtools.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("sources") / "tiny-sd1", style="sd1", seed=1)


@pytest.fixture(scope="session")
def sd2_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD 2.x-style pipeline (linear projections, per-block heads, 576-token attention)."""
    from workers.devtools.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("sources") / "tiny-sd2", style="sd2", seed=2)


def _convert(source: Path, out: Path, **options):
    from workers.convert.engine import convert_pipeline
    from workers.options import ConvertOptions
    from workers.source.resolve import resolve_source

    return convert_pipeline(resolve_source(str(source), source_id=f"tests/{source.name}"), out,
                            ConvertOptions(**options))


@pytest.fixture(scope="session")
def sd1_conversion(sd1_pipeline: Path, tmp_path_factory: pytest.TempPathFactory):
    """The SD1 fixture converted with default options: (output folder, report)."""
    out = tmp_path_factory.mktemp("sd1-out")
    return out, _convert(sd1_pipeline, out)


@pytest.fixture(scope="session")
def sd1_sizes_conversion(sd1_pipeline: Path, tmp_path_factory: pytest.TempPathFactory):
    """The SD1 fixture at its native 32x32 px and at 32x48 (portrait) and 48x32 (landscape), split_einsum_v2,
    UNet chunks too: (output folder, report)."""
    from workers.names import Attention

    out = tmp_path_factory.mktemp("sd1-sizes-out")
    return out, _convert(sd1_pipeline, out, attentions=(Attention.SPLIT_EINSUM_V2,),
                         resolutions=("48x32", "32x48", "32x32"), chunk_unet=True)


@pytest.fixture(scope="session")
def sd2_conversion(sd2_pipeline: Path, tmp_path_factory: pytest.TempPathFactory):
    """The SD2 fixture converted with default options: (output folder, report)."""
    out = tmp_path_factory.mktemp("sd2-out")
    return out, _convert(sd2_pipeline, out)


@pytest.fixture(scope="session")
def sd2_layouts_conversion(sd2_pipeline: Path, tmp_path_factory: pytest.TempPathFactory):
    """The SD2 fixture's UNet at a 48x48 latent (2,304 tokens) in all three layouts, float16, batch 1."""
    from workers.convert.engine import convert_pipeline
    from workers.options import ConvertOptions
    from workers.names import Attention
    from workers.source.resolve import resolve_source

    out = tmp_path_factory.mktemp("sd2-layouts")
    options = ConvertOptions(components=("unet",), bits=None, latent_size=(48, 48), batch_size=1,
                             attentions=(Attention.ORIGINAL, Attention.SPLIT_EINSUM, Attention.SPLIT_EINSUM_V2))
    return out, convert_pipeline(resolve_source(str(sd2_pipeline)), out, options)


DOUBLES = Path(__file__).parent / "doubles"


@pytest.fixture
def xcrun_double(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the test double of `xcrun coremlcompiler` (tests/doubles/xcrun) first on PATH."""
    monkeypatch.setenv("PATH", f"{DOUBLES}{os.pathsep}{os.environ['PATH']}")
    return DOUBLES / "xcrun"


@pytest.fixture
def devhub(tmp_path: Path):
    """A running dev Hub with users alice (org: studio) and a read-only bob; yields (url, store)."""
    from workers.devtools.devhub.server import running_devhub
    from workers.devtools.devhub.store import Store

    store = Store(tmp_path / "devhub")
    store.add_token("alice", token="alice-token", orgs=["studio"])
    store.add_token("bob", token="bob-token", write=False)
    with running_devhub(tmp_path / "devhub", page_size=50) as url:
        yield url, store


POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_database(name: str):
    """Create a fresh PostgreSQL database; returns (url, drop function)."""
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        from service.db import engine_for

        engine_for(POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}").dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}", drop


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path):
    """A migrated, empty database: a SQLite file, then a fresh PostgreSQL database."""
    from service.db import upgrade

    if request.param == "sqlite":
        url, drop = f"sqlite:///{tmp_path / 'jobs.db'}", (lambda: None)
    else:
        url, drop = _postgres_database(f"coreml_publish_test_{os.getpid()}_{request.node.name[-40:]}".lower()
                                       .replace("[", "_").replace("]", "").replace("-", "_"))
    upgrade(url)
    yield url
    drop()
