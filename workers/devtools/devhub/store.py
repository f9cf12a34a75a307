"""On-disk storage of the dev Hub: content-addressed objects, commits, refs, repos and tokens.

Layout of the data folder::

    objects/<sha256>          file contents, stored once whatever the repo or path
    commits/<commit id>.json  {"id", "parents", "tree": {path: entry}, "title", "message", "author", "date"}
    repos/<type>/<ns>/<name>.json   {"private", "branches": {name: commit}, "tags": {name: commit}, ...}
    tokens.json               {token: {"user", "orgs", "write"}}

Every write goes through a temporary file and an atomic rename, under one process-wide lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

REPO_TYPES = ("model", "dataset", "space")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")
LFS_SUFFIXES = (".bin", ".safetensors", ".ckpt", ".pt", ".pth", ".zip", ".mlmodel", ".onnx", ".h5", ".msgpack",
                ".gguf", ".tar", ".gz", ".npz", ".npy", ".pkl", ".png", ".jpg")
LFS_MIN_SIZE = 1_000_000
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)


class StoreError(Exception):
    """An error the HTTP layer turns into a status code and an ``X-Error-Code`` header."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def is_lfs(path: str, size: int, sample: bytes) -> bool:
    """Whether a file is stored through LFS: by suffix (like .gitattributes), size, or binary content."""
    return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or b"\0" in sample


@dataclass(frozen=True)
class Token:
    user: str
    orgs: tuple[str, ...]
    write: bool

    def may_read(self, namespace: str) -> bool:
        return namespace == self.user or namespace in self.orgs

    def may_write(self, namespace: str) -> bool:
        return self.write and self.may_read(namespace)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    """The dev Hub's state on disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for sub in ("objects", "commits", "repos", "uploads"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    # --- small helpers --------------------------------------------------------------------------------

    def _write_json(self, path: Path, data: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)

    @staticmethod
    def _read_json(path: Path) -> dict:
        return json.loads(path.read_text())

    # --- tokens ---------------------------------------------------------------------------------------

    def tokens(self) -> dict[str, Token]:
        path = self.root / "tokens.json"
        if not path.is_file():
            return {}
        return {t: Token(v["user"], tuple(v.get("orgs", ())), bool(v.get("write", True)))
                for t, v in self._read_json(path).items()}

    def add_token(self, user: str, *, token: str | None = None, orgs: Iterable[str] = (), write: bool = True) -> str:
        """Register a token for ``user`` (generated when not given) and return it."""
        if not _NAME.match(user):
            raise ValueError(f"invalid user name {user!r}")
        token = token or "hf_dev_" + secrets.token_hex(16)
        with self.lock:
            path = self.root / "tokens.json"
            data = self._read_json(path) if path.is_file() else {}
            data[token] = {"user": user, "orgs": list(orgs), "write": write}
            self._write_json(path, data)
        return token

    # --- objects --------------------------------------------------------------------------------------

    def object_path(self, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise StoreError(400, "BadRequest", "invalid sha256")
        return self.root / "objects" / sha256

    def has_object(self, sha256: str) -> bool:
        return self.object_path(sha256).is_file()

    def put_object_stream(self, chunks: Iterator[bytes], expected: str | None = None) -> tuple[str, int]:
        """Store a stream of bytes; returns (sha256, size). Rejects a body whose hash differs from ``expected``."""
        digest = hashlib.sha256()
        tmp = self.root / "uploads" / f"{secrets.token_hex(8)}.part"
        size = 0
        try:
            with tmp.open("wb") as f:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
            sha = digest.hexdigest()
            if expected is not None and sha != expected:
                raise StoreError(400, "BadRequest", f"content hash {sha} does not match {expected}")
            target = self.object_path(sha)
            if target.is_file():
                tmp.unlink()
            else:
                tmp.replace(target)
            return sha, size
        finally:
            tmp.unlink(missing_ok=True)

    def put_object(self, data: bytes) -> str:
        return self.put_object_stream(iter([data]))[0]

    # --- repos ----------------------------------------------------------------------------------------

    def _repo_path(self, repo_type: str, repo_id: str) -> Path:
        namespace, name = split_repo_id(repo_id)
        return self.root / "repos" / repo_type / namespace / f"{name}.json"

    def repo(self, repo_type: str, repo_id: str) -> dict | None:
        path = self._repo_path(repo_type, repo_id)
        return self._read_json(path) if path.is_file() else None

    def save_repo(self, repo_type: str, repo_id: str, data: dict) -> None:
        self._write_json(self._repo_path(repo_type, repo_id), data)

    def list_repos(self, repo_type: str) -> list[tuple[str, dict]]:
        base = self.root / "repos" / repo_type
        out = []
        for path in sorted(base.glob("*/*.json")):
            out.append((f"{path.parent.name}/{path.stem}", self._read_json(path)))
        return out

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool, author: str) -> dict:
        with self.lock:
            if self.repo(repo_type, repo_id) is not None:
                raise StoreError(409, "RepoExists", f"You already created this {repo_type} repo: {repo_id}")
            tree = {".gitattributes": self._entry_for(".gitattributes", GITATTRIBUTES.encode(), lfs=False)}
            commit = self._save_commit([], tree, "initial commit", "", author)
            data = {"id": repo_id, "private": private, "created": _now(), "branches": {"main": commit["id"]},
                    "tags": {}, "type": repo_type}
            self.save_repo(repo_type, repo_id, data)
            return data

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            path = self._repo_path(repo_type, repo_id)
            if not path.is_file():
                raise StoreError(404, "RepoNotFound", f"Repository {repo_id} not found")
            path.unlink()

    # --- commits --------------------------------------------------------------------------------------

    def _entry_for(self, path: str, data: bytes, *, lfs: bool) -> dict:
        sha = self.put_object(data)
        return {"sha256": sha, "size": len(data), "lfs": lfs,
                "oid": git_blob_sha1(lfs_pointer(sha, len(data)) if lfs else data)}

    def _save_commit(self, parents: list[str], tree: dict, title: str, message: str, author: str) -> dict:
        date = _now()
        body = json.dumps({"parents": parents, "tree": tree, "title": title, "message": message,
                           "author": author, "date": date}, sort_keys=True)
        commit_id = hashlib.sha1(body.encode()).hexdigest()
        commit = {"id": commit_id, "parents": parents, "tree": tree, "title": title, "message": message,
                  "author": author, "date": date}
        self._write_json(self.root / "commits" / f"{commit_id}.json", commit)
        return commit

    def commit(self, commit_id: str) -> dict:
        path = self.root / "commits" / f"{commit_id}.json"
        if not _COMMIT_ID.match(commit_id) or not path.is_file():
            raise StoreError(404, "RevisionNotFound", f"Invalid rev id: {commit_id}")
        return self._read_json(path)

    def resolve_revision(self, repo: dict, revision: str) -> dict:
        """A branch, tag or commit id of this repo → the commit."""
        revision = revision or "main"
        if revision in repo["branches"]:
            return self.commit(repo["branches"][revision])
        if revision in repo["tags"]:
            return self.commit(repo["tags"][revision])
        if _COMMIT_ID.match(revision) and revision in self.history_ids(repo):
            return self.commit(revision)
        raise StoreError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def history_ids(self, repo: dict) -> set[str]:
        seen: set[str] = set()
        stack = list(repo["branches"].values()) + list(repo["tags"].values())
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            stack.extend(self.commit(cid)["parents"])
        return seen

    def history(self, commit: dict) -> list[dict]:
        out, current = [], commit
        while True:
            out.append(current)
            if not current["parents"]:
                return out
            current = self.commit(current["parents"][0])

    def apply_commit(self, repo_type: str, repo_id: str, branch: str, *, title: str, message: str, author: str,
                     parent: str | None, files: dict[str, bytes], lfs_files: dict[str, tuple[str, int]],
                     deleted_files: list[str], deleted_folders: list[str]) -> dict:
        """Create a commit on ``branch``; 412 when ``parent`` is given and is not the branch head."""
        with self.lock:
            repo = self.repo(repo_type, repo_id)
            if repo is None:
                raise StoreError(404, "RepoNotFound", f"Repository {repo_id} not found")
            if branch not in repo["branches"]:
                raise StoreError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            head = repo["branches"][branch]
            if parent is not None and parent != head:
                raise StoreError(412, "ParentCommitMismatch",
                                 f"A commit has happened since. Please refresh and try again. (head {head})")
            tree = dict(self.commit(head)["tree"])
            for path in deleted_files:
                if path not in tree:
                    raise StoreError(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
                del tree[path]
            for folder in deleted_folders:
                prefix = folder.rstrip("/") + "/"
                for path in [p for p in tree if p.startswith(prefix)]:
                    del tree[path]
            for path, data in files.items():
                tree[_check_path(path)] = self._entry_for(path, data, lfs=False)
            for path, (sha, size) in lfs_files.items():
                if not self.has_object(sha):
                    raise StoreError(400, "BadRequest", f"LFS object {sha} for {path} was never uploaded")
                tree[_check_path(path)] = {"sha256": sha, "size": size, "lfs": True,
                                           "oid": git_blob_sha1(lfs_pointer(sha, size))}
            commit = self._save_commit([head], tree, title, message, author)
            repo["branches"][branch] = commit["id"]
            repo["last_modified"] = commit["date"]
            self.save_repo(repo_type, repo_id, repo)
            return commit

    def set_ref(self, repo_type: str, repo_id: str, kind: str, name: str, commit_id: str | None,
                *, exist_ok: bool = False) -> None:
        """Create (or with ``commit_id=None`` delete) a tag or branch."""
        with self.lock:
            repo = self.repo(repo_type, repo_id)
            if repo is None:
                raise StoreError(404, "RepoNotFound", f"Repository {repo_id} not found")
            refs = repo["tags" if kind == "tag" else "branches"]
            if commit_id is None:
                if name not in refs:
                    raise StoreError(404, "RevisionNotFound", f"Invalid rev id: {name}")
                del refs[name]
            else:
                if name in refs and not exist_ok:
                    raise StoreError(409, "RefExists", f"{kind} {name} already exists")
                if not _NAME.match(name.replace("/", "-")):
                    raise StoreError(400, "BadRequest", f"invalid {kind} name {name!r}")
                refs[name] = commit_id
            self.save_repo(repo_type, repo_id, repo)


def split_repo_id(repo_id: str) -> tuple[str, str]:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_NAME.match(p) for p in parts) or ".." in repo_id:
        raise StoreError(400, "BadRequest", f"invalid repo id {repo_id!r}")
    return parts[0], parts[1]


def _check_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or path.startswith(".git/"):
        raise StoreError(400, "BadRequest", f"invalid path {path!r}")
    return path

