"""Resolving and fetching Hub sources with the real huggingface_hub client against a Hub test double."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from workers.errors import GatedSourceError, SourceNotFoundError, UnsupportedModelError
from tests.hub_double import HubDouble
from workers.source.fetch import fetch_source
from workers.source.resolve import resolve_source


@pytest.fixture
def hub(sd2_pipeline: Path, tmp_path: Path):
    repo = Path(shutil.copytree(sd2_pipeline, tmp_path / "repo"))
    # files a conversion must never download: a pickle copy, an fp16 variant, a single-file checkpoint
    shutil.copy(repo / "unet" / "diffusion_pytorch_model.safetensors", repo / "unet" / "diffusion_pytorch_model.bin")
    shutil.copy(repo / "unet" / "diffusion_pytorch_model.safetensors",
                repo / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    (repo / "v2-1_512-ema-pruned.ckpt").write_bytes(b"0" * 1000)
    with HubDouble() as double:
        double.add("org/tiny-sd2", repo, card={"license": "openrail++"})
        yield double


def test_hub_source_is_pinned_to_a_sha_and_fetches_only_what_it_needs(hub: HubDouble, tmp_path: Path) -> None:
    source = resolve_source("org/tiny-sd2", endpoint=hub.endpoint)
    sha = hub.repos["org/tiny-sd2"].sha
    assert (source.id, source.repo_id, source.sha, source.revision) == ("org/tiny-sd2", "org/tiny-sd2", sha, "main")
    assert source.license == "openrail++" and source.path is None
    fetched = fetch_source(source, cache_dir=tmp_path / "cache", endpoint=hub.endpoint)
    assert (fetched.path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    downloaded = hub.downloaded("org/tiny-sd2")
    assert "unet/diffusion_pytorch_model.safetensors" in downloaded
    assert "tokenizer/vocab.json" in downloaded and "model_index.json" in downloaded
    assert not {"unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.safetensors",
                "v2-1_512-ema-pruned.ckpt"} & downloaded
    # every download asked for the pinned commit, never a moving branch
    assert all(f"/resolve/{sha}/" in path for method, path in hub.requests
               if method == "GET" and "/resolve/" in path and not path.endswith("model_index.json"))


def test_too_large_hub_sources_are_refused_from_the_file_list(hub: HubDouble) -> None:
    from workers.errors import SourceError

    with pytest.raises(SourceError, match="too large"):
        resolve_source("org/tiny-sd2", endpoint=hub.endpoint, max_bytes=1000)
    assert not hub.downloaded("org/tiny-sd2") - {"model_index.json"}


def test_revision_by_sha(hub: HubDouble) -> None:
    sha = hub.repos["org/tiny-sd2"].sha
    assert resolve_source("org/tiny-sd2", revision=sha, endpoint=hub.endpoint).sha == sha


def test_unknown_repo_and_revision_are_told_apart(hub: HubDouble) -> None:
    with pytest.raises(SourceNotFoundError, match="repo org/missing not found"):
        resolve_source("org/missing", endpoint=hub.endpoint)
    with pytest.raises(SourceNotFoundError, match="has no revision 'v9'"):
        resolve_source("org/tiny-sd2", revision="v9", endpoint=hub.endpoint)


def test_gated_repo_without_token_says_what_to_do(hub: HubDouble, sd2_pipeline: Path) -> None:
    hub.add("org/gated", sd2_pipeline, gated=True)
    with pytest.raises(GatedSourceError) as caught:
        resolve_source("org/gated", endpoint=hub.endpoint)
    assert "HF_TOKEN" in caught.value.hint


def test_a_damaged_single_file_checkpoint_is_refused_naming_it(hub: HubDouble, tmp_path: Path) -> None:
    from workers.errors import SourceError

    folder = tmp_path / "single"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"0")
    hub.add("org/single", folder)
    with pytest.raises(SourceError, match="org/single: model.safetensors is not a valid safetensors file"):
        resolve_source("org/single", endpoint=hub.endpoint)
    (folder / "model.safetensors").unlink()
    (folder / "notes.txt").write_text("no weights")
    hub.add("org/nothing", folder)
    with pytest.raises(UnsupportedModelError, match="org/nothing is not a diffusers pipeline: no model_index.json"):
        resolve_source("org/nothing", endpoint=hub.endpoint)


def test_unreachable_hub_is_a_clear_error() -> None:
    from workers.errors import SourceError

    with pytest.raises(SourceError, match="cannot reach the Hub|answered"):
        resolve_source("org/tiny-sd2", endpoint="http://127.0.0.1:9")


def test_damaged_hub_weights_are_refused_after_download_naming_the_file(hub: HubDouble, tmp_path: Path) -> None:
    from workers.errors import SourceError

    repo = hub.repos["org/tiny-sd2"].folder
    weights = repo / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    source = resolve_source("org/tiny-sd2", endpoint=hub.endpoint)  # the Hub's file list cannot show it
    with pytest.raises(SourceError, match="vae/diffusion_pytorch_model.safetensors is not a valid safetensors file"):
        fetch_source(source, cache_dir=tmp_path / "cache", endpoint=hub.endpoint)


def test_a_hub_source_without_tokenizer_files_is_refused_before_download(hub: HubDouble) -> None:
    from workers.errors import SourceError

    (hub.repos["org/tiny-sd2"].folder / "tokenizer" / "vocab.json").unlink()
    with pytest.raises(SourceError, match="tokenizer folder lacks vocab.json and merges.txt"):
        resolve_source("org/tiny-sd2", endpoint=hub.endpoint)
    assert not hub.downloaded("org/tiny-sd2") - {"model_index.json"}


def test_a_download_folder_with_links_out_is_refused(hub: HubDouble, tmp_path: Path) -> None:
    from workers.errors import SourceError

    local = tmp_path / "download"
    local.mkdir()
    (local / "notes.txt").symlink_to("/etc/passwd")
    source = resolve_source("org/tiny-sd2", endpoint=hub.endpoint)
    with pytest.raises(SourceError, match="notes.txt is a link that resolves outside the source folder"):
        fetch_source(source, local_dir=local, endpoint=hub.endpoint)
    # the cache's own links (snapshot files into its blob store) are fine
    fetched = fetch_source(source, cache_dir=tmp_path / "cache", endpoint=hub.endpoint)
    assert (fetched.path / "unet" / "diffusion_pytorch_model.safetensors").is_symlink()


def test_a_composed_folder_of_links_is_removed_after_its_block_and_nothing_it_points_to(
        sd1_pipeline: Path, tmp_path: Path) -> None:
    from workers.source.fetch import fetched

    source = Path(shutil.copytree(sd1_pipeline, tmp_path / "model"))
    other = Path(shutil.copytree(sd1_pipeline, tmp_path / "other"))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(RuntimeError, match="the work failed"), fetched(resolve_source(str(source), vae=str(other))) as composed:
        assert composed.origin == source.resolve() and (composed.path / "vae").resolve() == (other / "vae").resolve()
        folder = composed.path
        raise RuntimeError("the work failed")
    assert not folder.exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # both sources whole
    with fetched(resolve_source(str(source))) as plain:  # not composed: the source's own folder stays
        assert plain.origin is None
    assert plain.path.is_dir()
