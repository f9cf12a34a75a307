"""The status page: in a real browser (Debian's chromium driven by Playwright) against a running API whose
database holds a real job, converted and published through the dev Hub; and its HTML routes through FastAPI's
TestClient (escaping, signing in, public status, forms from elsewhere)."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api import create_api
from service.db import session_scope, upgrade
from tests.helpers import start_stage
from workers.options import JobOptions
from service.jobs import finish_stage, get_job, list_jobs, record_event, set_state, stage_result, \
    submit_job
from service.models import JobState, StageResult
from service.settings import Settings
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "s3cret-Operator-token-0123456789"
NO_BROKER = "redis://127.0.0.1:1/0"
BROKER = "redis://127.0.0.1:6379/14"  # its own db (test files run side by side); only its own messages are removed
_NO_CHROMIUM = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                                "(apt-get install -y chromium)")


def browser_test(test):
    """A test in chromium against the running API; slow: its database holds a real conversion."""
    return pytest.mark.slow(_NO_CHROMIUM(test))


# --- a database with a real job, an API serving it, a browser ----------------------------------------------

@pytest.fixture(scope="module")
def real_job(tmp_path_factory: pytest.TempPathFactory):
    """A PostgreSQL database holding one job run through every stage by `submit --local` (a tiny SD 1.x pipeline
    from the dev Hub, the split_einsum_v2 layout, float16 and 6-bit, packages only): (database URL, job id, Hub)."""
    from huggingface_hub import HfApi

    from workers.devtools.devhub.server import running_devhub
    from workers.devtools.devhub.store import Store
    from workers.devtools.tiny import build_tiny_pipeline
    from tests.conftest import _postgres_database
    from tests.service.cli.test_cli import run

    root = tmp_path_factory.mktemp("status-page")
    Store(root / "devhub").add_token("alice", token="alice-token", orgs=["studio"])
    url, drop = _postgres_database(f"coreml_publish_test_{os.getpid()}_status_page")
    upgrade(url)
    try:
        with running_devhub(root / "devhub") as hub:
            api = HfApi(endpoint=hub, token="alice-token")
            api.create_repo("studio/tiny-sd")
            api.upload_folder(repo_id="studio/tiny-sd",
                              folder_path=str(build_tiny_pipeline(root / "tiny-sd", style="sd1", seed=4)))
            env = {"HF_ENDPOINT": hub, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "alice-token",
                   "COREML_PUBLISH_DATABASE_URL": url, "COREML_PUBLISH_BROKER_URL": NO_BROKER,
                   "COREML_PUBLISH_ARTIFACT_STORE": str(root / "artifacts"), "COREML_PUBLISH_SCRATCH": str(root)}
            result = run("submit", "studio/tiny-sd", "--local", "--packages-only", "--namespace", "studio",
                         "--attention", "split_einsum_v2", env=env)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            with session_scope(url) as session:
                job = list_jobs(session)[0]
                assert job.state == "succeeded"
            yield url, job.id, hub
    finally:
        drop()


class RunningAPI:
    """The API served by uvicorn in a thread, on a free port."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        self.settings = settings
        self.server = uvicorn.Server(uvicorn.Config(create_api(settings), host="127.0.0.1", port=free_port(),
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the API did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.server.config.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def api(real_job):
    """The API with a token, reading the real job's database."""
    url, _, hub = real_job
    server = RunningAPI(Settings(database_url=url, api_token=TOKEN, broker_url=NO_BROKER, hub_endpoint=hub))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def sign_in(page, api: RunningAPI, token: str = TOKEN, then: str = "/") -> None:
    page.goto(api.url + then)
    assert "/login" in page.url
    page.fill("#token", token)
    page.click("button[type=submit]")


def queued_job(url: str, repo: str) -> int:
    with session_scope(url) as session:
        return submit_job(session, source_repo=repo, source_sha="b" * 40, options=JobOptions(namespace="studio")).job.id


# --- in the browser ----------------------------------------------------------------------------------------

@browser_test
def test_the_page_refuses_without_the_token_and_never_shows_it(api: RunningAPI, page, real_job) -> None:
    seen_urls: list[str] = []
    page.on("request", lambda request: seen_urls.append(request.url))
    page.goto(api.url + "/")
    assert page.url.startswith(api.url + "/login") and page.locator("table.jobs").count() == 0
    assert "studio/tiny-sd" not in page.content()
    page.goto(api.url + f"/ui/jobs/{real_job[1]}")
    assert "/login" in page.url and "vae_decoder" not in page.content()
    page.fill("#token", "wrong-token")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").inner_text() == "That is not the API token."
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    assert page.url == api.url + f"/ui/jobs/{real_job[1]}"  # back where the login started
    for path in ("/", f"/ui/jobs/{real_job[1]}", "/ui/watches", "/ui/workers"):
        page.goto(api.url + path)
        assert TOKEN not in page.content()
    assert seen_urls and not [u for u in seen_urls if TOKEN in u]
    cookies = page.context.cookies()
    assert [c["name"] for c in cookies] == ["coreml_publish_session"]
    assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict" and TOKEN not in cookies[0]["value"]
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
    page.click("text=Sign out")
    page.goto(api.url + "/")
    assert "/login" in page.url


@browser_test
def test_the_jobs_table_lists_the_jobs_newest_first_and_filters_by_state(api: RunningAPI, page, real_job) -> None:
    url, job_id, _ = real_job
    other = queued_job(url, "studio/another-model")
    sign_in(page, api)
    rows = page.locator("tr.job-row")
    ids = [int(rows.nth(i).get_attribute("data-job")) for i in range(rows.count())]
    assert ids == sorted(ids, reverse=True) and {job_id, other} <= set(ids)
    finished = page.locator(f"tr.job-row[data-job='{job_id}']").inner_text()
    assert "succeeded" in finished and "studio/tiny-sd" in finished and "split_einsum_v2" in finished
    assert "studio/coreml-tiny-sd-palettized" in finished
    page.click("#state-filter >> text=succeeded")
    assert page.url.endswith("/?state=succeeded")
    shown = [int(rows.nth(i).get_attribute("data-job")) for i in range(rows.count())]
    assert job_id in shown and other not in shown


@browser_test
def test_a_job_page_shows_its_timeline_and_validation_plot(api: RunningAPI, page, real_job) -> None:
    url, job_id, _ = real_job
    with session_scope(url) as session:
        job = get_job(session, job_id)
        stages = [f"{s.stage} {s.part}".strip() for s in job.stages]
        packages = [name for s in job.stages if s.stage == "convert" for name in s.figures]
    sign_in(page, api, then=f"/ui/jobs/{job_id}")
    timeline = page.locator("#timeline svg")
    assert timeline.locator("rect.bar-succeeded").count() == len(stages) == 6
    labels = timeline.locator("text").all_text_contents()
    assert all(name in labels for name in stages) and any(re.fullmatch(r".+ · \d+ s", t) for t in labels)
    plot = page.locator("#packages svg")
    # every package the conversion validated: two figures each (program executed, torch), each against its bar
    assert len(packages) == 7 and plot.locator("rect.pass").count() == 2 * len(packages)
    assert plot.locator("line.threshold").count() == 2 * len(packages) + 1  # and the legend's
    assert page.locator("table.packages tbody tr").count() == len(packages)
    assert "unet/split_einsum_v2/palettized-6bit" in page.locator("table.packages").inner_text()
    assert "published studio/coreml-tiny-sd-palettized" in page.locator("#log").inner_text()
    assert page.locator("#cancel").count() == 0 and page.locator("#retry").count() == 0  # it succeeded
    target = os.environ.get("COREML_PUBLISH_SCREENSHOT")
    if target:  # the README's picture: COREML_PUBLISH_SCREENSHOT=docs/status-page.png
        path = ROOT / target
        path.parent.mkdir(parents=True, exist_ok=True)
        height = min(page.evaluate("document.body.scrollHeight"), 1750)
        page.screenshot(path=str(path), full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": height})


@browser_test
def test_cancel_works_from_the_page_and_the_page_follows_the_job_live(api: RunningAPI, page, real_job) -> None:
    from playwright.sync_api import expect

    url = real_job[0]
    job_id = queued_job(url, "studio/cancel-me")
    sign_in(page, api, then=f"/ui/jobs/{job_id}")
    assert page.locator("#summary .badge").inner_text() == "queued"
    with session_scope(url) as session:  # a worker takes it: the open page shows it without a reload
        job = get_job(session, job_id)
        set_state(session, job, JobState.RUNNING)
        start_stage(session, stage_result(session, job, "fetch"))
        record_event(session, job_id, "fetch started on a-linux-box")
    expect(page.locator("#summary .badge")).to_have_text("running", timeout=10_000)  # the page's script, polling
    assert page.locator("#timeline rect.bar-running").count() == 1
    assert "fetch started on a-linux-box" in page.locator("#log").inner_text()
    page.click("#cancel")
    assert page.locator("[role=status]").inner_text().startswith("Cancelled")
    assert page.locator("#summary .badge").inner_text() == "cancelled"
    with session_scope(url) as session:
        assert get_job(session, job_id).state == "cancelled"
    assert page.locator("#retry").count() == 1 and page.locator("#cancel").count() == 0


# --- the routes, through TestClient ------------------------------------------------------------------------

HOSTILE = '<script>alert("repo")</script>'


@browser_test
def test_a_user_finds_a_model_is_told_where_it_is_and_follows_its_repo_page(api: RunningAPI, browser,
                                                                             real_job) -> None:
    """Search as you type, the already-converted notice with its links, the repo page from the repo's manifest and
    its copy button; and the refused cases: a bad repo id, options the API refuses, signed out."""
    from playwright.sync_api import expect

    _, job_id, _ = real_job
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    try:
        sign_in(page, api, then="/ui/submit")
        page.locator("#repo").press_sequentially("tiny", delay=60)
        expect(page.locator("#repo-suggestions option[value='studio/tiny-sd']")).to_have_count(1, timeout=10_000)
        # the options the real job was made with (split_einsum_v2, 6-bit, packages only, under studio)
        page.fill("#repo", "studio/tiny-sd")
        page.check("input[name=attentions][value=split_einsum_v2]")
        page.check("#packages_only")
        page.fill("#namespace", "studio")
        page.click("button[value=check]")
        notice = page.locator("#check .already")
        assert f"Already published from this commit with these options by job {job_id}" in notice.inner_text()
        page.click("#check a.repo >> text=studio/coreml-tiny-sd-palettized")
        assert page.url == api.url + "/ui/repos/studio/coreml-tiny-sd-palettized"
        row = page.locator("tr.variant")
        assert row.count() == 1 and row.get_attribute("data-variant") == "split_einsum_v2"
        assert "Unet.mlmodelc" in row.inner_text() and "palettized-6bit" in row.inner_text()
        assert "iOS 17" in page.locator("main").inner_text() and f"job {job_id}" in page.locator("#summary").inner_text()
        page.locator("button.copy").first.click()
        expect(page.locator("button.copy").first).to_have_text("Copied")
        copied = page.evaluate("navigator.clipboard.readText()")
        assert 'snapshot_download("studio/coreml-tiny-sd-palettized", allow_patterns="split_einsum_v2/packages/*"' \
            in copied
        # refused as the API refuses, in one line, with nothing recorded
        with session_scope(real_job[0]) as session:
            jobs_before = len(list_jobs(session))
        for repo, bits, expected in (("not a repo!", "", "is not a Hub repo id"),
                                     ("studio/tiny-sd", "3", "--bits 3 is not supported")):
            page.goto(api.url + "/ui/submit")
            page.fill("#repo", repo)
            page.fill("#bits", bits)
            page.fill("#namespace", "studio")
            page.click("#convert")
            assert expected in page.locator("#form-error").inner_text()
        with session_scope(real_job[0]) as session:
            assert len(list_jobs(session)) == jobs_before
        context.clear_cookies()  # signed out: no form, no search
        page.goto(api.url + "/ui/submit")
        assert "/login" in page.url
        assert page.request.get(api.url + "/ui/hub-search?q=tiny").status == 401
    finally:
        context.close()


@browser_test
def test_from_a_fresh_browser_a_model_is_converted_and_downloaded_by_its_repo_page(
        real_job, browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The front door end to end: signed in, a dev Hub model submitted from the form (float16 only, the original
    layout), its stages run (here in this process, as `submit --local` runs them), the job page linking the repo
    page, and the repo page's download line run as it is copied."""
    import redis
    from huggingface_hub import snapshot_download

    from service.runner import run_local

    url, _, hub = real_job
    monkeypatch.setenv("HF_TOKEN", "alice-token")
    settings = Settings(database_url=url, api_token=TOKEN, broker_url=BROKER, hub_endpoint=hub,
                        artifact_store=str(tmp_path / "artifacts"), scratch=str(tmp_path))
    server = RunningAPI(settings)
    broker = redis.Redis.from_url(BROKER)
    waiting = broker.llen("convert")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, server, then="/ui/submit")
        page.fill("#repo", "studio/tiny-sd")
        page.check("input[name=attentions][value=original]")
        page.fill("#bits", "0")
        page.check("#packages_only")
        page.fill("#namespace", "studio")
        page.click("#convert")
        assert re.search(r"/ui/jobs/\d+\?done=submitted$", page.url)
        job_id = int(page.url.split("/")[-1].split("?")[0])
        assert f"Submitted: job {job_id}" in page.locator("#submitted").inner_text()
        while broker.llen("convert") > waiting:  # no worker consumes this broker: run the stages here
            broker.lpop("convert")
        run_local(job_id, settings=settings)
        page.goto(f"{server.url}/ui/jobs/{job_id}")
        assert page.locator("#summary .badge").inner_text() == "succeeded"
        page.click("#published a.repo >> text=studio/coreml-tiny-sd")
        assert page.url == server.url + "/ui/repos/studio/coreml-tiny-sd"
        line = page.locator(".download pre").first.inner_text()
        found = re.search(r'snapshot_download\("([^"]+)", allow_patterns="([^"]+)"', line)
        assert found and found[1] == "studio/coreml-tiny-sd" and found[2] == "original/packages/*"
        folder = Path(snapshot_download(found[1], allow_patterns=found[2], local_dir=str(tmp_path / "download"),
                                        endpoint=hub, token="alice-token"))
        unet = folder / "original" / "packages" / "Stable_Diffusion_version_studio_tiny-sd_unet.mlpackage"
        assert (unet / "Manifest.json").is_file()
    finally:
        while broker.llen("convert") > waiting:
            broker.lpop("convert")
        context.close()
        server.stop()


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    return url


def _client(database: str, **settings) -> TestClient:
    settings.setdefault("broker_url", NO_BROKER)
    return TestClient(create_api(Settings(database_url=database, **settings)),
                      base_url="http://127.0.0.1:8000")


def _form_token(client: TestClient, path: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get(path).text)
    assert found, "the page has no form"
    return found[1]


def test_everything_user_provided_is_escaped(database: str) -> None:
    with session_scope(database) as session:
        job = submit_job(session, source_repo=f"{HOSTILE}/x", source_sha="c" * 40,
                         options=JobOptions(namespace="studio"), revision="<img src=x onerror=alert(1)>").job
        result = stage_result(session, job, "convert", "<b>part</b>")
        start_stage(session, result)
        result.worker_host = "<svg onload=alert(2)>"
        finish_stage(session, result, state="failed", error="<iframe src=x>",
                     figures={"<svg onload=alert(3)>/original/float16": {"status": "failed", "size_bytes": 10,
                                                                       "psnr_program": 1.0,
                                                                       "psnr_program_threshold": 35.0}})
        record_event(session, job.id, "<script>alert('log')</script>", stage="<i>")
        job_id = job.id
    client = _client(database)
    pages = [client.get("/").text, client.get(f"/ui/jobs/{job_id}").text,
             "".join(client.get(f"/ui/jobs/{job_id}/live").json()["parts"].values()),
             "".join(client.get("/ui/live/jobs").json()["parts"].values())]
    for text in pages:
        assert "<script>alert" not in text and "<svg onload" not in text and "<iframe" not in text
        assert "<img src=x" not in text and "<b>part" not in text
    assert "&lt;script&gt;alert(&#34;repo&#34;)&lt;/script&gt;/x" in pages[0]
    assert "&lt;svg onload=alert(3)&gt;" in pages[1] and "&lt;iframe src=x&gt;" in pages[1]
    assert "script-src 'self'" in client.get("/").headers["content-security-policy"]


def test_reading_needs_the_token_unless_status_is_public(database: str) -> None:
    job_id = queued_job(database, "studio/model")
    client = _client(database, api_token=TOKEN)
    for path in ("/", f"/ui/jobs/{job_id}", "/ui/watches", "/ui/workers", "/?state=queued"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=%2F")
    assert client.get(f"/ui/jobs/{job_id}/live").status_code == 401
    assert client.get("/ui/live/jobs").status_code == 401
    assert client.get(f"/ui/jobs/{job_id}/live", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    reads = ("/jobs", f"/jobs/{job_id}", "/watches", "/metrics")  # the JSON API's reads follow the same rule
    for path in reads:
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
    assert client.get("/health").status_code == 200
    refused = client.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert refused.status_code == 401 and "nope" not in refused.text and "coreml_publish_session" not in refused.cookies
    signed = client.post("/login", data={"token": TOKEN, "next": f"/ui/jobs/{job_id}"}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == f"/ui/jobs/{job_id}"
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    page = client.get(f"/ui/jobs/{job_id}")
    assert page.status_code == 200 and "studio/model" in page.text and TOKEN not in page.text
    # another API process (another key) does not take this cookie, nor does a changed token
    stale = client.cookies.get("coreml_publish_session")
    other = _client(database, api_token=TOKEN)
    other.cookies.set("coreml_publish_session", stale)
    assert other.get("/", follow_redirects=False).status_code == 303
    changed = _client(database, api_token=TOKEN + "-new")
    changed.app.state.session_key = client.app.state.session_key
    changed.cookies.set("coreml_publish_session", stale)
    assert changed.get("/", follow_redirects=False).status_code == 303
    expired = TestClient(client.app, base_url="http://127.0.0.1:8000")
    expired.cookies.set("coreml_publish_session", "1." + stale.split(".", 1)[1])
    assert expired.get("/", follow_redirects=False).status_code == 303
    still = TestClient(client.app, base_url="http://127.0.0.1:8000")
    still.cookies.set("coreml_publish_session", stale)
    assert still.get("/", follow_redirects=False).status_code == 200  # the same cookie, unchanged, is good
    # the login goes back only to this site
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        again = client.post("/login", data={"token": TOKEN, "next": target}, follow_redirects=False)
        assert again.headers["location"] == "/"

    assert all(client.get(path).status_code == 200 for path in reads)  # signed in: the cookie reads them too

    public = _client(database, api_token=TOKEN, public_status=True)
    assert all(public.get(path).status_code == 200 for path in reads)
    assert public.post(f"/jobs/{job_id}/cancel").status_code == 401
    page = public.get(f"/ui/jobs/{job_id}")
    assert page.status_code == 200 and 'id="cancel"' not in page.text and "Sign in to cancel or retry" in page.text
    answer = public.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": "x"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    with session_scope(database) as session:
        assert get_job(session, job_id).state == "queued"


def test_wrong_tokens_from_one_address_are_slowed_down_and_others_still_sign_in(database: str) -> None:
    from service.api import signin

    client = _client(database, api_token=TOKEN)
    for _ in range(signin.FAILED_SIGN_INS):
        assert client.post("/login", data={"token": "guess", "next": "/"}, follow_redirects=False).status_code == 401
    blocked = client.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)  # even the right one
    assert blocked.status_code == 429 and 0 < int(blocked.headers["retry-after"]) <= signin.FAILURE_WINDOW + 1
    assert "Too many wrong tokens" in blocked.text and "coreml_publish_session" not in blocked.cookies
    elsewhere = TestClient(client.app, base_url="http://127.0.0.1:8000", client=("10.0.0.9", 50000))
    assert elsewhere.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False).status_code == 303
    failures = client.app.state.sign_in_failures  # a minute later the address may try again
    failures["testclient"] = [t - signin.FAILURE_WINDOW for t in failures["testclient"]]
    assert client.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False).status_code == 303


def test_cancel_and_retry_need_a_signed_in_form_from_the_page(database: str) -> None:
    import redis

    job_id = queued_job(database, "studio/model")
    client = _client(database, api_token=TOKEN, broker_url=BROKER)
    client.post("/login", data={"token": TOKEN, "next": "/"})
    csrf = _form_token(client, f"/ui/jobs/{job_id}")
    cross_site = client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf},
                             headers={"Origin": "https://evil.example"}, follow_redirects=False)
    no_token = client.post(f"/ui/jobs/{job_id}/cancel", data={}, follow_redirects=False)
    assert cross_site.status_code == 403 and no_token.status_code == 403
    with session_scope(database) as session:
        assert get_job(session, job_id).state == "queued"
    done = client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf}, headers={"Origin": "http://127.0.0.1:8000"},
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/ui/jobs/{job_id}?done=cancelled"
    again = client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf})
    assert again.status_code == 409 and "already cancelled" in again.text
    # retry: queued again and sent to the broker, as `POST /jobs/{id}/retry` does
    broker = redis.Redis.from_url(BROKER)
    waiting = broker.llen("convert")
    try:
        retried = client.post(f"/ui/jobs/{job_id}/retry", data={"csrf": csrf}, follow_redirects=False)
        assert retried.status_code == 303 and retried.headers["location"] == f"/ui/jobs/{job_id}?done=retried"
        assert broker.llen("convert") == waiting + 1
    finally:
        while broker.llen("convert") > waiting:  # nobody consumes this broker's queues here
            broker.lpop("convert")
    with session_scope(database) as session:
        job = get_job(session, job_id)
        assert job.state == "queued" and job.task_id and job.task_id != "local"
    assert "Queued again" in client.get(retried.headers["location"]).text
    # signed out: the form token of the old session no longer works either
    client.post("/logout", follow_redirects=False)
    client.cookies.clear()
    answer = client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")


def test_without_a_token_the_page_is_open_and_shows_progress_and_watches(database: str) -> None:
    from service.watch import add_watch

    job_id = queued_job(database, "studio/model")
    with session_scope(database) as session:
        job = get_job(session, job_id)
        set_state(session, job, JobState.RUNNING)
        result = stage_result(session, job, "convert", "unet-original")
        start_stage(session, result)
        progress = {"component": "unet", "layout": "original", "precision": "float16", "step": "convert",
                           "done": 3, "total": 8, "fraction": 0.375, "eta_seconds": 95.0,
                           "counter": {"label": "Running MIL default pipeline", "done": 40, "total": 90}}
        if hasattr(StageResult, "progress"):
            result.progress = progress
        else:  # before stage results had a progress column
            result.figures = {"progress": progress}
        add_watch(session, repo_id="studio/watched", options=JobOptions(namespace="studio"))
    client = _client(database)
    assert client.get("/login", follow_redirects=False).headers["location"] == "/"
    page = client.get(f"/ui/jobs/{job_id}").text
    assert '<progress max="1" value="0.375">' in page and "step 3 of 8" in page and "1 min 35 s left" in page
    assert "Running MIL default pipeline 40/90" in page and 'data-live="/ui/jobs/' in page and 'id="cancel"' in page
    workers = client.get("/ui/workers").text
    assert "The broker does not answer" in workers and "job 1: convert unet-original" in workers
    watches = client.get("/ui/watches").text
    assert "studio/watched" in watches and "active" in watches
    assert client.get("/?state=bogus").status_code == 422
    assert client.get("/ui/jobs/12345").status_code == 404
