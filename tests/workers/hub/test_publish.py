"""Publishing conversion outputs to the dev Hub with the real huggingface_hub client."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError

from workers.hub.download import download_variant
from workers.errors import OptionsError, OutputError, PublishError, SourceNotFoundError
from workers.hub.client import with_retries
from workers.hub.publish import publish_tree
from workers.package.repos import package_output

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def trees(sd2_conversion, tmp_path: Path, xcrun_double):
    """The SD2 conversion, as if converted from Hub commit SHA, packaged with compiled resources."""
    out = Path(shutil.copytree(sd2_conversion[0], tmp_path / "out", symlinks=True))
    report = json.loads((out / "report.json").read_text())
    report["source"]["sha"] = SHA
    (out / "report.json").write_text(json.dumps(report))
    return package_output(out, namespace="studio", compiled=True, compiler=("xcrun", "coremlcompiler"))


def _publish(tree, devhub, **kwargs):
    return publish_tree(tree, namespace="studio", source_sha=SHA, endpoint=devhub[0], token="alice-token",
                        base_delay=0.01, **kwargs)


def test_publish_then_download_one_variant_as_apple_lays_it_out(trees, devhub, tmp_path: Path) -> None:
    url = devhub[0]
    results = [_publish(tree, devhub) for tree in trees]
    assert [r.repo_id for r in results] == ["studio/coreml-tiny-sd2", "studio/coreml-tiny-sd2-palettized"]
    assert all(r.changed and r.tag == f"source-{SHA}" for r in results)
    repo = "studio/coreml-tiny-sd2-palettized"
    folder = Path(snapshot_download(repo, endpoint=url, allow_patterns="split_einsum_v2/compiled/*",
                                    local_dir=tmp_path / "dl"))
    got = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts}
    assert {p.split("/")[2] for p in got} == {"TextEncoder.mlmodelc", "Unet.mlmodelc", "VAEDecoder.mlmodelc",
                                              "VAEEncoder.mlmodelc", "merges.txt", "vocab.json"}
    assert all(p.startswith("split_einsum_v2/compiled/") for p in got)
    archive = hf_hub_download(repo, "coreml-tiny-sd2-palettized_split_einsum_v2_compiled.zip", endpoint=url,
                              local_dir=tmp_path / "zip")
    assert {n.split("/")[0] for n in zipfile.ZipFile(archive).namelist()} == {
        "coreml-tiny-sd2-palettized_split_einsum_v2_compiled"}
    card = ModelCard(Path(hf_hub_download(
        repo, "README.md", endpoint=url, local_dir=tmp_path / "card")).read_text())
    assert card.data.base_model == "tests/tiny-sd2" and "| original | unet | palettized-6bit |" in card.text
    refs = HfApi(endpoint=url).list_repo_refs(repo)
    assert [(t.name, t.target_commit) for t in refs.tags] == [(f"source-{SHA}", results[1].commit)]
    compiled = download_variant(repo, tmp_path / "mine", variant="original", kind="compiled", endpoint=url)
    assert compiled == tmp_path / "mine" / "original" / "compiled" and (compiled / "Unet.mlmodelc").is_dir()
    assert not (tmp_path / "mine" / "split_einsum_v2").exists()


def test_republishing_identical_files_makes_no_commit(trees, devhub) -> None:
    first = _publish(trees[1], devhub)
    again = _publish(trees[1], devhub)
    assert again.commit == first.commit and not again.changed
    commits = HfApi(endpoint=devhub[0]).list_repo_commits(first.repo_id)
    assert len(commits) == 2  # the repo's initial commit and ours


def test_a_concurrent_push_is_retried_from_the_new_head(trees, devhub) -> None:
    api = HfApi(endpoint=devhub[0], token="alice-token")
    steps: list[str] = []

    def interfere(message: str) -> None:
        steps.append(message)
        if message.startswith("pushing") and len(steps) < 3:
            api.create_commit("studio/coreml-tiny-sd2", [CommitOperationAdd("stray.txt", b"x")],
                              commit_message="someone else")

    result = _publish(trees[0], devhub, on_step=interfere)
    assert any("moved while publishing" in s for s in steps)
    files = api.list_repo_files("studio/coreml-tiny-sd2", revision=result.commit)
    assert "README.md" in files and "stray.txt" not in files  # the repo holds exactly the published tree


def test_transient_errors_are_retried(trees, devhub) -> None:
    from urllib.request import Request, urlopen

    body = json.dumps({"route": "commit", "status": 503, "count": 3}).encode()
    urlopen(Request(f"{devhub[0]}/_devhub/faults", body, {"Content-Type": "application/json"}))
    result = _publish(trees[0], devhub)
    assert result.changed and "README.md" in HfApi(endpoint=devhub[0]).list_repo_files(result.repo_id)


def test_private_repos_stay_invisible_without_a_token(trees, devhub) -> None:
    result = _publish(trees[1], devhub, private=True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=devhub[0]).model_info(result.repo_id)
    assert HfApi(endpoint=devhub[0], token="alice-token").model_info(result.repo_id).private


def test_auth_errors_say_which_token_is_wrong_and_are_not_retried(trees, devhub) -> None:
    with pytest.raises(PublishError, match="cannot write to studio") as caught:
        publish_tree(trees[0], namespace="studio", source_sha=SHA, endpoint=devhub[0], token="bob-token")
    assert "write rights to the studio namespace" in caught.value.hint
    with pytest.raises(PublishError, match="refused the token") as caught:
        publish_tree(trees[0], namespace="studio", source_sha=SHA, endpoint=devhub[0], token="nope")
    assert "HF_TOKEN" in caught.value.hint and "nope" not in str(caught.value)


def test_downloads_of_missing_things_are_clear(devhub, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="not found"):
        download_variant("studio/none", tmp_path, endpoint=devhub[0])


def test_retry_helper_gives_up_after_its_attempts() -> None:
    class Flaky(Exception):
        class response:
            status_code = 503

    calls = []

    def call():
        calls.append(1)
        raise Flaky()

    with pytest.raises(Flaky):
        with_retries(call, attempts=3, sleep=lambda s: None)
    assert len(calls) == 3


# --- failures: what is retried, what is not, and what a failed first publish leaves behind -------------

COMPLETE = ("text_encoder", "unet", "vae_decoder")


def _small_tree(folder: Path, components=COMPLETE, *, variant: str = "original", compiled: bool = False):
    """A repo tree of a few small files standing for ``components``' packages (and compiled resources, with
    the variant's zip): publishing it needs no conversion."""
    from workers.package.card import zip_name
    from workers.names import compiled_file_name
    from workers.package.repos import RepoTree, write_zip

    (folder / variant / "packages").mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n\n# small\n")
    for component in components:
        package = folder / variant / "packages" / f"Stable_Diffusion_version_small_{component}.mlpackage"
        package.mkdir()
        (package / "Manifest.json").write_text(f'{{"component": "{component}"}}\n')
        if compiled:
            (folder / variant / "compiled" / compiled_file_name(component)).mkdir(parents=True)
            (folder / variant / "compiled" / compiled_file_name(component) / "coremldata.bin").write_bytes(b"x")
    if compiled:
        (folder / variant / "compiled" / "vocab.json").write_text("{}")
        (folder / variant / "compiled" / "merges.txt").write_text("#version: 0.2\n")
        archive = folder / zip_name(folder.name, variant)
        write_zip(folder / variant / "compiled", archive, archive.stem)
    return RepoTree(kind="float16", name=folder.name, folder=folder, variants=(variant,), compiled=compiled)


@pytest.fixture
def small_tree(tmp_path: Path):
    """A small complete repo tree of packages."""
    return _small_tree(tmp_path / "coreml-small")


def _fault(devhub, route: str, status: int, count: int) -> None:
    from urllib.request import Request, urlopen

    body = json.dumps({"route": route, "status": status, "count": count}).encode()
    urlopen(Request(f"{devhub[0]}/_devhub/faults", body, {"Content-Type": "application/json"}))


def _pending(devhub) -> dict:
    from urllib.request import urlopen

    with urlopen(f"{devhub[0]}/_devhub/faults") as answer:
        return json.loads(answer.read())


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_a_client_error_is_not_retried_and_a_failed_first_publish_leaves_no_repo(small_tree, devhub, status) -> None:
    _fault(devhub, "commit", status, 2)
    with pytest.raises(PublishError, match=f"studio/coreml-small.*{status}|{status}.*studio/coreml-small") as caught:
        _publish(small_tree, devhub)
    assert _pending(devhub) == {"commit": [status, 1]}  # one attempt, no retry
    assert "\n" not in caught.value.one_line() and "alice-token" not in caught.value.one_line()
    assert "HF_TOKEN" in caught.value.hint
    assert not HfApi(endpoint=devhub[0], token="alice-token").repo_exists("studio/coreml-small")


def test_a_first_publish_failing_after_its_retries_leaves_no_repo(small_tree, devhub) -> None:
    _fault(devhub, "commit", 503, 20)
    with pytest.raises(PublishError, match="answered 503"):
        _publish(small_tree, devhub)
    assert _pending(devhub) == {"commit": [503, 15]}  # five attempts
    assert not HfApi(endpoint=devhub[0], token="alice-token").repo_exists("studio/coreml-small")


def test_a_failed_update_keeps_the_repo_that_existed(small_tree, devhub) -> None:
    first = _publish(small_tree, devhub)
    (small_tree.folder / "README.md").write_text("---\nlicense: mit\n---\n\n# small, again\n")
    _fault(devhub, "commit", 401, 1)
    with pytest.raises(PublishError, match="refused the token"):
        _publish(small_tree, devhub)
    api = HfApi(endpoint=devhub[0], token="alice-token")
    assert api.repo_info(first.repo_id).sha == first.commit  # still there, unchanged


def test_a_private_conversion_is_not_pushed_into_a_public_repo(small_tree, devhub) -> None:
    HfApi(endpoint=devhub[0], token="alice-token").create_repo("studio/coreml-small", private=False)
    with pytest.raises(PublishError, match="exists and is public"):
        _publish(small_tree, devhub, private=True)
    files = HfApi(endpoint=devhub[0], token="alice-token").list_repo_files("studio/coreml-small")
    assert "README.md" not in files


class _HTTPError(OSError):
    """Like the Hub client's HTTP error: an OSError with a response."""

    def __init__(self, status: int, headers: dict | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.response = type("Response", (), {"status_code": status, "headers": headers or {}})()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_taken_for_network_errors(status) -> None:
    calls = []

    def call():
        calls.append(1)
        raise _HTTPError(status)

    with pytest.raises(_HTTPError):
        with_retries(call, attempts=5, sleep=lambda s: None)
    assert len(calls) == 1


@pytest.mark.parametrize(("headers", "waited"), [({"Retry-After": "7"}, 7.0), ({"Retry-After": "86400"}, 60.0),
                                                 ({"Retry-After": "soon"}, None), ({}, None)])
def test_retry_after_is_honoured_within_a_bound(headers, waited) -> None:
    from workers.hub.client import retry_after

    sleeps: list[float] = []
    answers = iter([_HTTPError(429, {k.lower(): v for k, v in headers.items()}), "done"])

    def call():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert with_retries(call, attempts=3, base_delay=0.5, sleep=sleeps.append) == "done"
    if waited is None:
        assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.5  # the usual jittered backoff
    else:
        assert sleeps == [waited]
    assert retry_after(_HTTPError(400, {"retry-after": "7"})) is None


def test_the_source_visibility_is_read_from_the_hub(devhub) -> None:
    from workers.errors import HubUnavailableError
    from workers.hub.publish import source_private

    alice = HfApi(endpoint=devhub[0], token="alice-token")
    alice.create_repo("studio/open", private=False)
    alice.create_repo("studio/closed", private=True)
    assert source_private("studio/open", endpoint=devhub[0], token="alice-token") is False
    assert source_private("studio/closed", endpoint=devhub[0], token="alice-token") is True
    # a source the publishing token cannot see is treated as private
    assert source_private("studio/closed", endpoint=devhub[0], token="bob-token") is True
    with pytest.raises(HubUnavailableError):
        source_private("studio/open", endpoint="http://127.0.0.1:1", attempts=1)


# --- complete variants only: the last guard before the Hub ----------------------------------------------

NO_HUB = "http://127.0.0.1:1"  # nothing listens: a refusal must come before any Hub call


@pytest.mark.parametrize(("components", "missing"), [
    (("unet", "vae_decoder"), "text_encoder"),
    (("text_encoder", "vae_decoder"), "unet (or both unet_chunk1 and unet_chunk2)"),
    (("text_encoder", "unet_chunk1", "vae_decoder"), "unet_chunk2 to go with unet_chunk1 (or unet)"),
    (("text_encoder", "unet"), "vae_decoder"),
])
def test_an_incomplete_tree_is_refused_before_any_hub_call(tmp_path: Path, components, missing) -> None:
    tree = _small_tree(tmp_path / "coreml-small", components)
    with pytest.raises(OutputError) as caught:
        publish_tree(tree, namespace="studio", source_sha=SHA, endpoint=NO_HUB, attempts=1)
    assert caught.value.message.startswith("studio/coreml-small (variant original) ")
    assert caught.value.message.endswith(f"missing: {missing}")


@pytest.mark.parametrize("name", ["vocab.json", "merges.txt", "Unet.mlmodelc"])
def test_a_compiled_tree_without_its_tokenizer_or_a_compiled_model_is_refused(tmp_path: Path, name) -> None:
    tree = _small_tree(tmp_path / "coreml-small", compiled=True)
    gone = tree.folder / "original" / "compiled" / name
    if gone.is_dir():
        shutil.rmtree(gone)
    else:
        gone.unlink()
    with pytest.raises(OutputError, match=f"missing: compiled/{name}$"):
        publish_tree(tree, namespace="studio", source_sha=SHA, endpoint=NO_HUB, attempts=1)


def test_a_tree_with_chunks_instead_of_the_whole_unet_passes_the_guard(tmp_path: Path) -> None:
    from workers.package.repos import check_tree

    check_tree(_small_tree(tmp_path / "coreml-small", ("text_encoder", "unet_chunk1", "unet_chunk2", "vae_decoder"),
                           compiled=True))


def test_a_package_the_report_beside_the_tree_failed_counts_as_missing(tmp_path: Path) -> None:
    tree = _small_tree(tmp_path / "coreml-small")
    (tmp_path / "report.json").write_text(json.dumps({
        "source": {}, "options": {}, "geometry": {}, "toolchain": {}, "repos": {"float16": "coreml-small"},
        "packages": [{"repo": "coreml-small", "variant": "original", "component": "vae_decoder", "precision": "float16",
                      "path": "coreml-small/original/packages/x_vae_decoder.mlpackage", "status": "failed",
                      "checks": []}]}))
    with pytest.raises(OutputError, match=r"missing: vae_decoder \(failed validation\)$"):
        publish_tree(tree, namespace="studio", source_sha=SHA, endpoint=NO_HUB, attempts=1)


def test_the_split_einsum_variant_downloads_like_the_others(tmp_path: Path, devhub) -> None:
    tree = _small_tree(tmp_path / "coreml-small", compiled=True, variant="split_einsum")
    _publish(tree, devhub)
    archive = download_variant("studio/coreml-small", tmp_path / "zip", variant="split_einsum", kind="zip",
                               endpoint=devhub[0], token="alice-token")
    assert archive.name == "coreml-small_split_einsum_compiled.zip"
    assert {n.split("/")[0] for n in zipfile.ZipFile(archive).namelist()} == {"coreml-small_split_einsum_compiled"}
    compiled = download_variant("studio/coreml-small", tmp_path / "dl", variant="split_einsum", endpoint=devhub[0],
                                token="alice-token")
    assert (compiled / "Unet.mlmodelc").is_dir() and compiled == tmp_path / "dl" / "split_einsum" / "compiled"
    with pytest.raises(OptionsError, match="unknown variant 'split_einsum_v3'") as caught:
        download_variant("studio/coreml-small", tmp_path, variant="split_einsum_v3", endpoint=NO_HUB)
    assert caught.value.hint == "Use one of original, split_einsum, split_einsum_v2."


def test_sizes_publish_as_variants_of_their_own_sharing_the_native_weights(sd1_sizes_conversion, devhub, tmp_path,
                                                                           xcrun_double, monkeypatch) -> None:
    """--resolution through the dev Hub: each extra size's compiled folder and zip at Apple-style names, the card's
    size table, and each weight file uploaded once for all sizes (one LFS object)."""
    from workers.devtools.devhub.store import Store

    out = Path(shutil.copytree(sd1_sizes_conversion[0], tmp_path / "out", symlinks=True))
    report = json.loads((out / "report.json").read_text())
    report["source"]["sha"] = SHA
    (out / "report.json").write_text(json.dumps(report))
    fp16 = package_output(out, namespace="studio", compiled=True, compiler=("xcrun", "coremlcompiler"))[0]
    uploads: list[str] = []
    put = Store.put_object_stream
    monkeypatch.setattr(Store, "put_object_stream",
                        lambda self, chunks, expected=None: (expected and uploads.append(expected)) or put(self, chunks,
                                                                                                  expected))
    result = _publish(fp16, devhub)
    url, repo = devhub[0], "studio/coreml-tiny-sd1"
    assert result.repo_id == repo and result.changed
    files = HfApi(endpoint=url).list_repo_tree(repo, recursive=True, expand=True)
    lfs = {f.path: f.lfs.sha256 for f in files if getattr(f, "lfs", None)}
    assert len(uploads) == len(set(uploads)) == len(set(lfs.values()))  # every object sent once
    for size in ("32x48", "48x32"):
        weights = f"split_einsum_v2/{size}/packages/Stable_Diffusion_version_tests_tiny-sd1_unet.mlpackage/" \
                  "Data/com.apple.CoreML/weights/weight.bin"
        assert lfs[weights] == lfs[weights.replace(f"/{size}", "")]
        folder = download_variant(repo, tmp_path / size, variant="split_einsum_v2", resolution=size, endpoint=url)
        assert folder == tmp_path / size / "split_einsum_v2" / size / "compiled"
        assert {p.name for p in folder.iterdir()} == {
            "TextEncoder.mlmodelc", "Unet.mlmodelc", "UnetChunk1.mlmodelc", "UnetChunk2.mlmodelc",
            "VAEDecoder.mlmodelc", "VAEEncoder.mlmodelc", "SafetyChecker.mlmodelc", "merges.txt", "vocab.json"}
        archive = download_variant(repo, tmp_path / f"zip-{size}", variant="split_einsum_v2", kind="zip",
                                   resolution=size, endpoint=url)
        assert archive.name == f"coreml-tiny-sd1_split_einsum_v2_{size}_compiled.zip"
        assert {n.split("/")[0] for n in zipfile.ZipFile(archive).namelist()} == {archive.name[:-4]}
    native = download_variant(repo, tmp_path / "native", variant="split_einsum_v2", endpoint=url)
    assert native == tmp_path / "native" / "split_einsum_v2" / "compiled" and (native / "Unet.mlmodelc").is_dir()
    assert not (native / "32x48").exists()
    card = ModelCard(Path(hf_hub_download(repo, "README.md", endpoint=url, local_dir=tmp_path / "card")).read_text())
    assert "## Image sizes" in card.text and "| 32×32 (native) | `split_einsum_v2` |" in card.text
    assert "| 32×48 | `split_einsum_v2/32x48` | `coreml-tiny-sd1_split_einsum_v2_32x48_compiled.zip` |" in card.text
    with pytest.raises(OptionsError, match="not an image size"):
        download_variant(repo, tmp_path / "bad", resolution="tall", endpoint=url)
    # the repo's manifest says what it holds, before any file is fetched
    with pytest.raises(SourceNotFoundError, match="has no split_einsum_v2/64x64 variant; it holds split_einsum_v2, "
                                                  "split_einsum_v2/32x48, split_einsum_v2/48x32"):
        download_variant(repo, tmp_path / "missing", variant="split_einsum_v2", resolution="64x64", endpoint=url)
    assert not (tmp_path / "missing").exists()
