"""Publishing conversion outputs to the dev Hub with the real huggingface_hub client."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError

from workers.download import download_variant
from service.errors import PublishError, SourceNotFoundError
from workers.publish import publish_tree, with_retries
from workers.package import package_output

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

    body = json.dumps({"route": "commit", "status": 503, "count": 2}).encode()
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
