"""`submit --local` (no broker, both databases) and the HTTP API."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from huggingface_hub import HfApi, hf_hub_download

from service.api import create_api
from service.db import session_scope
from service.errors import OptionsError
from service.jobs import get_job, list_jobs
from service.settings import Settings
from tests.service.cli.test_cli import run
from workers.devtools.tiny import build_tiny_pipeline


@pytest.fixture
def hub_with_source(devhub, tmp_path: Path):
    url, _ = devhub
    folder = build_tiny_pipeline(tmp_path / "tiny-sd", style="sd1", seed=4)
    api = HfApi(endpoint=url, token="alice-token")
    api.create_repo("studio/tiny-sd")
    api.upload_folder(repo_id="studio/tiny-sd", folder_path=str(folder))
    return url


def test_local_mode_runs_every_stage_without_a_broker(hub_with_source: str, tmp_path: Path) -> None:
    """On SQLite (the local default); local jobs on PostgreSQL run in test_progress and test_status_page."""
    from service.db import upgrade

    database_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(database_url)
    env = {"HF_ENDPOINT": hub_with_source, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "alice-token",
           "COREML_PUBLISH_DATABASE_URL": database_url, "COREML_PUBLISH_BROKER_URL": "redis://127.0.0.1:1/0",
           "COREML_PUBLISH_ARTIFACT_STORE": str(tmp_path / "artifacts"), "COREML_PUBLISH_SCRATCH": str(tmp_path)}
    result = run("submit", "studio/tiny-sd", "--local", "--packages-only", "--namespace", "studio", "--bits", "0",
                 "--attention", "split_einsum_v2", "--chunks-only", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    with session_scope(database_url) as session:
        job = list_jobs(session)[0]
        assert job.state == "succeeded" and job.trigger == "cli"
        assert [p.repo_id for p in job.published] == ["studio/coreml-tiny-sd"]  # float16 only: one repo
        assert {s.stage for s in job.stages} == {"fetch", "convert", "merge", "package", "publish"}
    files = HfApi(endpoint=hub_with_source).list_repo_files("studio/coreml-tiny-sd")
    assert "split_einsum_v2/packages/Stable_Diffusion_version_studio_tiny-sd_safety_checker.mlpackage/Manifest.json" \
        in files
    # the UNet part was cut into chunks by its worker, merged, and shipped instead of the whole UNet
    unets = sorted({f.split("/")[2] for f in files if "_unet" in f})
    assert unets == [f"Stable_Diffusion_version_studio_tiny-sd_unet_chunk{i}.mlpackage" for i in (1, 2)]


def test_a_mixed_bit_job_publishes_its_recipe_and_plot_and_keeps_its_analysis(hub_with_source: str,
                                                                                 tmp_path: Path) -> None:
    from service.db import upgrade

    database_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(database_url)
    env = {"HF_ENDPOINT": hub_with_source, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "alice-token",
           "COREML_PUBLISH_DATABASE_URL": database_url, "COREML_PUBLISH_BROKER_URL": "redis://127.0.0.1:1/0",
           "COREML_PUBLISH_ARTIFACT_STORE": str(tmp_path / "artifacts"), "COREML_PUBLISH_SCRATCH": str(tmp_path),
           "COREML_PUBLISH_MIXED_MIN_WEIGHTS": "2048"}  # the tiny UNet's layers are far below Apple's 100,000
    result = run("submit", "studio/tiny-sd", "--local", "--packages-only", "--namespace", "studio",
                 "--bits", "mixed:4", "--attention", "original", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    with session_scope(database_url) as session:
        job = list_jobs(session)[0]
        assert job.state == "succeeded"
        assert [p.repo_id for p in job.published] == ["studio/coreml-tiny-sd", "studio/coreml-tiny-sd-mixed-bit"]
        recorded = {c: r for s in job.stages if s.stage == "convert" for c, r in s.figures.get("recipes", {}).items()}
    assert abs(recorded["unet"]["bits"] - 4) <= 0.05 and recorded["unet"]["passes"]  # what the status page plots
    files = HfApi(endpoint=hub_with_source).list_repo_files("studio/coreml-tiny-sd-mixed-bit")
    assert {"recipes/studio-tiny-sd_palettization_recipe.json", "recipes/studio-tiny-sd_size_psnr.svg"} <= set(files)
    card = Path(hf_hub_download("studio/coreml-tiny-sd-mixed-bit", "README.md", endpoint=hub_with_source,
                                cache_dir=tmp_path / "hf")).read_text()
    assert "## Mixed-bit palettization" in card and "(recipes/studio-tiny-sd_size_psnr.svg)" in card
    assert len(list((tmp_path / "analyses").glob("*.json"))) >= 1  # kept for a re-conversion of this commit


def test_http_api(hub_with_source: str, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple] = []
    monkeypatch.setattr("service.submit.enqueue", lambda job_id, parts, **_: sent.append((job_id, parts)) or "task")
    settings = Settings(database_url=database_url, hub_endpoint=hub_with_source, default_namespace="studio",
                        api_token="secret", broker_url="redis://127.0.0.1:1/0")
    client = TestClient(create_api(settings))
    auth = {"Authorization": "Bearer secret"}
    body = {"repo": "studio/tiny-sd", "packages_only": True, "bits": 4}
    assert client.post("/jobs", json=body).status_code == 401
    assert client.post("/jobs", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    created = client.post("/jobs", json=body, headers=auth)
    assert created.status_code == 201 and created.json()["created"] is True
    job = created.json()
    assert job["state"] == "queued" and job["trigger"] == "api" and len(job["source_sha"]) == 40
    assert sent == [(job["id"], ["shared", "unet-original", "unet-split_einsum_v2"])]
    duplicate = client.post("/jobs", json=body, headers=auth)
    assert duplicate.status_code == 200 and duplicate.json()["id"] == job["id"] and len(sent) == 1
    assert client.get(f"/jobs/{job['id']}").status_code == 401  # reads need the token too
    assert client.get(f"/jobs/{job['id']}", headers=auth).json()["source_repo"] == "studio/tiny-sd"
    assert [j["id"] for j in client.get("/jobs", params={"state": "queued"}, headers=auth).json()] == [job["id"]]
    assert client.get("/jobs/999", headers=auth).status_code == 404
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 401
    assert client.post(f"/jobs/{job['id']}/cancel", headers=auth).json()["state"] == "cancelled"
    assert client.post(f"/jobs/{job['id']}/cancel", headers=auth).status_code == 409
    assert client.post(f"/jobs/{job['id']}/retry", headers=auth).json()["state"] == "queued"
    assert len(sent) == 2
    bad = client.post("/jobs", json={"repo": "studio/missing"}, headers=auth)
    assert bad.status_code == 404 and "not found" in bad.json()["error"]
    assert client.post("/jobs", json={"repo": "studio/tiny-sd", "bits": 3}, headers=auth).status_code == 422
    # sizes are checked against the source's configs before a job is recorded (the tiny model: 32x32 px, step 4)
    too_big = client.post("/jobs", json={"repo": "studio/tiny-sd", "resolutions": ["32x72"]}, headers=auth)
    assert too_big.status_code == 422 and "more than twice the model's native 32 px" in too_big.json()["error"]
    assert "not a multiple of 4 px" in client.post("/jobs", json={"repo": "studio/tiny-sd", "resolutions": ["30x32"]},
                                                   headers=auth).json()["error"]
    sized = client.post("/jobs", json={**body, "resolutions": ["48x32"]}, headers=auth)
    assert sized.status_code == 201 and sized.json()["id"] != job["id"] and len(sent) == 3  # sizes key the job
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["database"] == "ok" and "unreachable" in ready.json()["broker"]
    with session_scope(database_url) as session:
        assert get_job(session, job["id"]).trigger == "api"


def test_insecure_api_settings_are_refused() -> None:
    with pytest.raises(OptionsError, match="no API token is set"):
        Settings().check_api("0.0.0.0")
    Settings().check_api("127.0.0.1")
    Settings(api_token="t").check_api("0.0.0.0")
    with pytest.raises(OptionsError, match="SQLite"):
        Settings(environment="production", api_token="t").check_api("127.0.0.1")
    production = dict(environment="production", database_url="postgresql+psycopg://svc@db/jobs")
    with pytest.raises(OptionsError, match="no API token is set"):  # in production, loopback too
        Settings(**production).check_api("127.0.0.1")
    Settings(**production, api_token="t").check_api("127.0.0.1")


def test_sdxl_job_with_a_vae_and_a_refiner_publishes_one_repo_with_the_swift_names(devhub, tmp_path: Path) -> None:
    """`submit --local --vae --refiner --chunk-unet`: the refiner's UNet as UnetRefiner (and its chunks) and the
    float16-safe VAE in float16, in the base's repo, through the dev Hub and the compiler double; the card names
    both sources."""
    import coremltools as ct

    from workers.devtools.tiny import build_tiny_vae

    url, _ = devhub
    api = HfApi(endpoint=url, token="alice-token")
    for repo, folder in (("studio/tiny-sdxl", build_tiny_pipeline(tmp_path / "base", style="sdxl", seed=1)),
                         ("studio/tiny-refiner", build_tiny_pipeline(tmp_path / "refiner", style="sdxl-refiner", seed=2)),
                         ("studio/tiny-vae-fp16", build_tiny_vae(tmp_path / "vae", seed=3))):
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=str(folder))
    database, env = local_env(url, tmp_path)
    result = run("submit", "studio/tiny-sdxl", "--local", "--namespace", "studio", "--bits", "0", "--attention",
                 "split_einsum", "--vae", "studio/tiny-vae-fp16", "--refiner", "studio/tiny-refiner", "--chunk-unet",
                 env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    with session_scope(database) as session:
        job = list_jobs(session)[0]
        assert job.state == "succeeded" and job.options["vae"] == "studio/tiny-vae-fp16"
    repo = Path(snapshot(url, "studio/coreml-tiny-sdxl", tmp_path / "published"))
    assert sorted(p.name for p in (repo / "split_einsum" / "compiled").iterdir()) == [
        "TextEncoder.mlmodelc", "TextEncoder2.mlmodelc", "Unet.mlmodelc", "UnetChunk1.mlmodelc", "UnetChunk2.mlmodelc",
        "UnetRefiner.mlmodelc", "UnetRefinerChunk1.mlmodelc", "UnetRefinerChunk2.mlmodelc", "VAEDecoder.mlmodelc",
        "VAEEncoder.mlmodelc", "merges.txt", "vocab.json"]
    packages = repo / "split_einsum" / "packages"
    refiner = ct.models.MLModel(str(packages / "Stable_Diffusion_version_studio_tiny-sdxl_refiner.mlpackage"),
                                skip_model_load=True).get_spec()
    assert {f.name: tuple(f.type.multiArrayType.shape) for f in refiner.description.input} == {
        "sample": (2, 4, 8, 8), "timestep": (2,), "encoder_hidden_states": (2, 48, 1, 77),
        "text_embeds": (2, 48), "time_ids": (2, 5)}
    decoder = ct.models.MLModel(str(packages / "Stable_Diffusion_version_studio_tiny-sdxl_vae_decoder.mlpackage"),
                                skip_model_load=True).get_spec()
    assert decoder.description.input[0].type.multiArrayType.dataType == \
        ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16  # the float16-safe VAE: float16, not float32
    card = (repo / "README.md").read_text()
    assert "- VAE (instead of the source's): [studio/tiny-vae-fp16](/studio/tiny-vae-fp16) at commit `" in card
    assert "- Refiner UNet (`UnetRefiner`): [studio/tiny-refiner](/studio/tiny-refiner) at commit `" in card


def local_env(url: str, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A fresh SQLite job database and the environment of a `submit --local` against the dev Hub at ``url``, with
    the compiler double first on PATH."""
    import os

    from service.db import upgrade
    from tests.conftest import DOUBLES

    database = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(database)
    return database, {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "alice-token",
                      "COREML_PUBLISH_DATABASE_URL": database, "COREML_PUBLISH_BROKER_URL": "redis://127.0.0.1:1/0",
                      "COREML_PUBLISH_ARTIFACT_STORE": str(tmp_path / "artifacts"),
                      "COREML_PUBLISH_SCRATCH": str(tmp_path), "PATH": f"{DOUBLES}{os.pathsep}{os.environ['PATH']}"}


def snapshot(url: str, repo: str, folder: Path) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo, endpoint=url, token="alice-token", local_dir=folder)


def test_a_controlled_unet_and_a_controlnet_publish_into_repos_apps_load_together(devhub, tmp_path: Path,
                                                                                  xcrun_double) -> None:
    """Through the dev Hub, every stage, compiled with the xcrun double: a base with --controlled-unet, then a
    ControlNet repo with --base; their zips unpacked into one folder make the layout the Swift pipeline loads."""
    import os
    import zipfile

    from service.db import upgrade
    from workers.devtools.tiny import build_tiny_controlnet

    url, _ = devhub
    api = HfApi(endpoint=url, token="alice-token")
    base = build_tiny_pipeline(tmp_path / "tiny-sd", style="sd1", seed=4)
    controlnet = build_tiny_controlnet(tmp_path / "sd-controlnet-canny", base, seed=5, base_model="studio/tiny-sd")
    for repo, folder in (("studio/tiny-sd", base), ("studio/sd-controlnet-canny", controlnet)):
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=str(folder))
    database_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(database_url)
    env = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "alice-token", "PATH": os.environ["PATH"],
           "COREML_PUBLISH_DATABASE_URL": database_url, "COREML_PUBLISH_BROKER_URL": "redis://127.0.0.1:1/0",
           "COREML_PUBLISH_ARTIFACT_STORE": str(tmp_path / "artifacts"), "COREML_PUBLISH_SCRATCH": str(tmp_path)}
    common = ("--local", "--namespace", "studio", "--attention", "split_einsum_v2", "--bits", "0")
    result = run("submit", "studio/tiny-sd", "--controlled-unet", *common, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run("submit", "studio/sd-controlnet-canny", "--base", "studio/tiny-sd", *common, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    files = set(HfApi(endpoint=url).list_repo_files("studio/coreml-sd-controlnet-canny"))
    assert "split_einsum_v2/packages/ControlNet_studio_sd-controlnet-canny.mlpackage/Manifest.json" in files
    assert "split_einsum_v2/compiled/controlnet/StudioSdControlnetCanny.mlmodelc/coremldata.bin" in files
    unpacked = tmp_path / "app"
    for repo in ("coreml-tiny-sd", "coreml-sd-controlnet-canny"):
        archive = Path(hf_hub_download(f"studio/{repo}", f"{repo}_split_einsum_v2_compiled.zip", endpoint=url,
                                       local_dir=tmp_path / "zips"))
        with zipfile.ZipFile(archive) as z:
            z.extractall(unpacked / "coreml-tiny-sd_split_einsum_v2_compiled" if repo != "coreml-tiny-sd"
                         else unpacked)
    folder = unpacked / "coreml-tiny-sd_split_einsum_v2_compiled"
    assert {p.name for p in folder.iterdir()} == {
        "TextEncoder.mlmodelc", "Unet.mlmodelc", "ControlledUnet.mlmodelc", "VAEDecoder.mlmodelc",
        "VAEEncoder.mlmodelc", "SafetyChecker.mlmodelc", "merges.txt", "vocab.json", "controlnet"}
    assert [p.name for p in (folder / "controlnet").iterdir()] == ["StudioSdControlnetCanny.mlmodelc"]
    card = Path(hf_hub_download("studio/coreml-sd-controlnet-canny", "README.md", endpoint=url,
                                local_dir=tmp_path / "card")).read_text()
    assert "Condition: canny" in card and "[studio/tiny-sd](/studio/tiny-sd)" in card and "controlnet" in card
    base_card = Path(hf_hub_download("studio/coreml-tiny-sd", "README.md", endpoint=url,
                                     local_dir=tmp_path / "card2")).read_text()
    assert "ControlledUnet.mlmodelc" in base_card and "--base studio/tiny-sd" in base_card
    with session_scope(database_url) as session:
        jobs = sorted(list_jobs(session), key=lambda j: j.id)
        assert [j.state for j in jobs] == ["succeeded", "succeeded"]
        assert jobs[1].options["base"] == "studio/tiny-sd" and len(jobs[1].options["base_sha"]) == 40


def test_a_single_file_checkpoint_with_a_lora_publishes_like_any_source(hub_with_source: str, tmp_path: Path) -> None:
    """`submit --local` of a Hub repo holding one single-file checkpoint, unpacked with --config's configs, with a
    --lora repo fused at its scale: every commit pinned in the job, the card names the file, the configs and
    the LoRA."""
    from workers.devtools.checkpoint import write_checkpoint
    from workers.devtools.lora import write_lora


    url = hub_with_source
    api = HfApi(endpoint=url, token="alice-token")
    base = Path(api.snapshot_download("studio/tiny-sd", local_dir=tmp_path / "tiny-sd-copy"))
    fine_tune, style = tmp_path / "fine-tune", tmp_path / "style"
    write_checkpoint(base, fine_tune / "fine-tune-v2.safetensors")
    write_lora(base, style / "pytorch_lora_weights.safetensors", kind="kohya")
    for repo, folder in (("studio/fine-tune", fine_tune), ("studio/style", style)):
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=str(folder))
    database, env = local_env(url, tmp_path)
    result = run("submit", "studio/fine-tune", "--local", "--namespace", "studio", "--bits", "0",
                 "--attention", "original", "--config", "studio/tiny-sd", "--lora", "studio/style:0.5", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    with session_scope(database) as session:
        job = list_jobs(session)[0]
        assert job.state == "succeeded"
        assert job.options["config_sha"] == api.model_info("studio/tiny-sd").sha
        assert job.options["lora_shas"] == [api.model_info("studio/style").sha]
        assert job.options["loras"] == ["studio/style:0.5"]
    files = api.list_repo_files("studio/coreml-fine-tune")
    # the compiled variant carries the tokenizer of the configs the checkpoint was unpacked with
    assert {"original/compiled/vocab.json", "original/compiled/merges.txt",
            "original/compiled/Unet.mlmodelc/coremldata.bin"} <= set(files)
    vocab = hf_hub_download("studio/coreml-fine-tune", "original/compiled/vocab.json", endpoint=url, token="alice-token")
    assert Path(vocab).read_bytes() == (base / "tokenizer" / "vocab.json").read_bytes()
    card = hf_hub_download("studio/coreml-fine-tune", "README.md", endpoint=url, token="alice-token")
    text = Path(card).read_text()
    assert "- Single-file checkpoint: `fine-tune-v2.safetensors` (sha256 `" in text
    assert "- Configs (`--config`, for the single-file checkpoint): [studio/tiny-sd](/studio/tiny-sd)" in text
    assert "- LoRA fused into the weights at scale 0.5: [studio/style](/studio/style), " \
           "`pytorch_lora_weights.safetensors` at commit `" in text
