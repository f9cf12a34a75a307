"""`coreml-publish demo` end to end, as a user runs it: the job through every stage on a dev Hub in a temporary
folder, the published repos, the download line, the status page served until Ctrl+C, and nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi

from tests.helpers import wait_for


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "200"}


def _published(stdout: str) -> list[str]:
    block = stdout.split("Published (on the dev Hub, while the demo runs):\n", 1)[1]
    return [line.strip() for line in block.splitlines()[:2] if line.startswith("  ") and "/" in line]


def _folder(stdout: str) -> Path:
    return Path(re.search(r"working in (\S+)", stdout)[1])


def test_demo_serves_the_status_page_until_ctrl_c_and_removes_its_folder(tmp_path: Path) -> None:
    """The job succeeds through every stage, both repos it prints are on the dev Hub, the download line works,
    the page shows the job; Ctrl+C stops both servers and removes the folder."""
    process = subprocess.Popen(["coreml-publish", "demo", "--port", "0", "--attention", "original"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_env(tmp_path), start_new_session=True)
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda s=s, sink=sink: sink.extend(iter(s.readline, "")), daemon=True)
               for s, sink in ((process.stdout, out), (process.stderr, err))]
    for reader in readers:
        reader.start()
    try:
        address = wait_for(lambda: next((m for m in (re.search(r"Status page: (http://127\.0\.0\.1:\d+/)", line)
                                                     for line in out) if m), None) or process.poll() is not None,
                           600, "the status page address")
        assert process.poll() is None, "".join(out)[-3000:] + "".join(err)[-3000:]
        url = address[1]
        stdout = "".join(out)
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "dev/tiny-sd" in page.text
        jobs = httpx.get(url + "jobs", timeout=30).json()
        assert [(j["source_repo"], j["state"]) for j in jobs] == [("dev/tiny-sd", "succeeded")]
        converts = [s for s in jobs[0]["stages"] if s["stage"] == "convert"]
        assert converts and all(s["progress"]["fraction"] == 1.0 for s in converts)
        assert "Job 1 (succeeded) dev/tiny-sd@" in stdout
        for stage in ("fetch", "convert shared", "convert unet-original", "merge", "package", "publish"):
            assert f" {stage} done\n" in stdout
        assert re.search(r"progress convert unet-original: 7/7 steps \(100%\)", "".join(err))
        repos = _published(stdout)
        assert repos == ["dev/coreml-tiny-sd", "dev/coreml-tiny-sd-palettized"]
        hub = re.search(r"Dev Hub at (http://127\.0\.0\.1:\d+)", stdout)[1]
        for repo in repos:
            files = HfApi(endpoint=hub).list_repo_files(repo)
            assert "README.md" in files and any(f.startswith("original/packages/") and
                                                f.endswith("_unet.mlpackage/Manifest.json") for f in files), files
        line = next(line.strip() for line in stdout.splitlines() if "snapshot_download" in line)
        download = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "HF_HOME": str(tmp_path / "hf")})
        assert download.returncode == 0, download.stderr
        assert (Path(download.stdout.strip()) / "original" / "packages").is_dir()
        folder = _folder(stdout)
        assert folder.is_dir()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, "".join(err)[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for reader in readers:
        reader.join(timeout=10)
    assert f"Stopped. Removed the dev Hub and the demo's folder {folder}." in "".join(out)
    assert not folder.exists() and not list(tmp_path.glob("coreml-publish-demo-*"))
    for gone in (url, hub):  # neither the API nor the dev Hub listens any more
        with pytest.raises(httpx.ConnectError):
            httpx.get(gone, timeout=5)
