"""The dev Hub against the real huggingface_hub client: repos, commits, refs, auth, LFS, faults."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError


def _post(url: str, data: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(data).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


@pytest.fixture
def alice(devhub) -> HfApi:
    return HfApi(endpoint=devhub[0], token="alice-token")


def test_whoami_and_repo_creation(alice: HfApi) -> None:
    assert alice.whoami()["name"] == "alice"
    url = alice.create_repo("studio/model")
    assert url.repo_id == "studio/model"
    assert alice.create_repo("studio/model", exist_ok=True).repo_id == "studio/model"
    with pytest.raises(HfHubHTTPError) as caught:
        alice.create_repo("studio/model")
    assert caught.value.response.status_code == 409
    assert [f for f in alice.list_repo_files("studio/model")] == [".gitattributes"]


def test_commits_history_tags_and_revisions(alice: HfApi, devhub, tmp_path: Path) -> None:
    alice.create_repo("alice/notes")
    first = alice.create_commit("alice/notes", [CommitOperationAdd("a.txt", b"one")], commit_message="first")
    second = alice.create_commit("alice/notes", [CommitOperationAdd("a.txt", b"two"),
                                                 CommitOperationAdd("w/x.bin", b"\0" * 3000)],
                                 commit_message="second", parent_commit=first.oid)
    assert len(first.oid) == 40 and first.oid != second.oid
    assert [c.title for c in alice.list_repo_commits("alice/notes")] == ["second", "first", "initial commit"]
    alice.create_tag("alice/notes", tag="v1", revision=first.oid)
    old = hf_hub_download("alice/notes", "a.txt", revision="v1", endpoint=devhub[0], cache_dir=tmp_path)
    new = hf_hub_download("alice/notes", "a.txt", endpoint=devhub[0], cache_dir=tmp_path)
    assert Path(old).read_text() == "one" and Path(new).read_text() == "two"
    lfs = alice.get_paths_info("alice/notes", ["w/x.bin"])[0]
    assert lfs.lfs is not None and lfs.lfs.size == 3000
    alice.create_branch("alice/notes", branch="dev", revision=first.oid)
    assert {b.name for b in alice.list_repo_refs("alice/notes").branches} == {"main", "dev"}
    with pytest.raises(RevisionNotFoundError):
        alice.model_info("alice/notes", revision="nope")


def test_stale_parent_commit_is_rejected(alice: HfApi) -> None:
    alice.create_repo("alice/race")
    head = alice.model_info("alice/race").sha
    alice.create_commit("alice/race", [CommitOperationAdd("a.txt", b"1")], commit_message="a", parent_commit=head)
    with pytest.raises(HfHubHTTPError) as caught:
        alice.create_commit("alice/race", [CommitOperationAdd("b.txt", b"2")], commit_message="b", parent_commit=head)
    assert caught.value.response.status_code == 412


def test_private_repos_and_rights(alice: HfApi, devhub) -> None:
    url = devhub[0]
    alice.create_repo("alice/secret", private=True)
    alice.create_commit("alice/secret", [CommitOperationAdd("a.txt", b"x")], commit_message="x")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=url).model_info("alice/secret")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=url, token="bob-token").model_info("alice/secret")
    assert "alice/secret" not in [m.id for m in HfApi(endpoint=url).list_models(author="alice")]
    assert "alice/secret" in [m.id for m in alice.list_models(author="alice")]
    alice.create_repo("alice/open")
    bob = HfApi(endpoint=url, token="bob-token")
    assert bob.model_info("alice/open").id == "alice/open"
    with pytest.raises(HfHubHTTPError) as caught:
        bob.create_commit("alice/open", [CommitOperationAdd("a.txt", b"x")], commit_message="x")
    assert caught.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as caught:
        HfApi(endpoint=url, token="wrong").whoami()
    assert caught.value.response.status_code == 401


def test_tree_is_paginated_and_snapshot_download_follows(alice: HfApi, devhub, tmp_path: Path) -> None:
    alice.create_repo("alice/many")
    alice.create_commit("alice/many", [CommitOperationAdd(f"d/{i:03}.txt", str(i).encode()) for i in range(120)],
                        commit_message="many")
    request = urllib.request.Request(f"{devhub[0]}/api/models/alice/many/tree/main?recursive=true")
    with urllib.request.urlopen(request) as response:
        assert len(json.loads(response.read())) == 50 and 'rel="next"' in response.headers["Link"]
    files = alice.list_repo_files("alice/many")
    assert len(files) == 121
    folder = snapshot_download("alice/many", endpoint=devhub[0], cache_dir=tmp_path, allow_patterns="d/1*")
    assert sorted(p.name for p in (Path(folder) / "d").iterdir()) == [f"{i}.txt" for i in range(100, 120)]


def test_identical_lfs_content_in_one_commit_and_reupload(alice: HfApi) -> None:
    alice.create_repo("alice/dups")
    blob = bytes(range(256)) * 20
    ops = [CommitOperationAdd(f"{v}/weight.bin", blob) for v in ("original", "split_einsum_v2")]
    first = alice.create_commit("alice/dups", ops, commit_message="dups")
    again = alice.create_commit("alice/dups", [CommitOperationAdd(f"{v}/weight.bin", blob)
                                               for v in ("original", "split_einsum_v2")], commit_message="same")
    assert again.oid == first.oid  # nothing changed, so no commit


def test_injected_faults_fail_the_next_requests(alice: HfApi, devhub) -> None:
    alice.create_repo("alice/flaky")
    assert _post(f"{devhub[0]}/_devhub/faults", {"route": "info", "status": 503, "count": 1})["pending"] == [503, 1]
    with pytest.raises(HfHubHTTPError) as caught:
        alice.model_info("alice/flaky")
    assert caught.value.response.status_code == 503
    assert alice.model_info("alice/flaky").id == "alice/flaky"


def test_card_metadata_is_validated(alice: HfApi) -> None:
    alice.create_repo("alice/card")
    good = "---\nlicense: openrail++\nbase_model: org/x\nbase_model_relation: quantized\ntags: [a]\n---\nhi\n"
    alice.create_commit("alice/card", [CommitOperationAdd("README.md", good.encode())], commit_message="card")
    assert alice.model_info("alice/card").card_data["license"] == "openrail++"
    with pytest.raises(ValueError, match="Invalid metadata"):
        alice.create_commit("alice/card", [CommitOperationAdd("README.md", b"---\nlicense: [1]\n---\n")],
                            commit_message="bad")
