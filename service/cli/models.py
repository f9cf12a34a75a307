"""``coreml-publish tiny-pipeline``: make a small random pipeline to try the tool on."""

from __future__ import annotations

from pathlib import Path

import typer

from service.cli.output import stdout


def tiny_pipeline(
    out: Path = typer.Argument(..., help="Folder to write the diffusers pipeline to."),
    style: str = typer.Option("sd1", help="sd1 (SD 1.x architecture, with safety checker), sd2, sdxl (base) or "
                                          "sdxl-refiner."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
    push: str = typer.Option(None, metavar="REPO", help="Also upload it to this Hub repo (e.g. one on the dev Hub)."),
    private: bool = typer.Option(False, help="With --push: create the repo as private."),
    controlnet_for: Path = typer.Option(None, metavar="FOLDER", help="Write a tiny random ControlNet for the tiny "
                                                                     "SD 1.x / 2.x pipeline in FOLDER instead."),
) -> None:
    """Write a tiny random Stable Diffusion pipeline (a few MB, safetensors) to OUT, and optionally push it;
    with --controlnet-for, a tiny ControlNet for one."""
    from service.errors import OptionsError
    from workers.devtools.tiny import STYLES, build_tiny_pipeline
    from workers.convert.outdir import check_output_dir

    if style not in STYLES:
        raise OptionsError(f"--style must be one of {', '.join(STYLES)}, not {style!r}", hint="Use sd1, sd2, sdxl or sdxl-refiner.")
    check_output_dir(out)
    if out.exists() and any(out.iterdir()):
        raise OptionsError(f"{out} exists and is not empty", hint="Pick a new folder.")
    if controlnet_for is not None and not (controlnet_for / "unet" / "config.json").is_file():
        raise OptionsError(f"--controlnet-for {controlnet_for} is not a tiny pipeline's folder (no unet/config.json)",
                           hint="Make one first: coreml-publish tiny-pipeline ./tiny-sd")
    if push:
        _check_push(push)
    if controlnet_for is not None:
        from workers.devtools.tiny import build_tiny_controlnet

        build_tiny_controlnet(out, controlnet_for, seed=seed)
        style = "controlnet"
    else:
        build_tiny_pipeline(out, style=style, seed=seed)
    stdout.print(f"Wrote a tiny random {style} {'model' if controlnet_for else 'pipeline'} to {out}")
    if push:
        commit = _push(out, push, private=private, style=style)
        stdout.print(f"Pushed it to {push} (commit {commit[:10]})")


def _check_push(repo_id: str) -> None:
    """Before any work: --push names a repo id, and there is a token to write with."""
    from huggingface_hub import get_token

    from service.errors import OptionsError
    from workers.names import looks_like_repo_id

    if not looks_like_repo_id(repo_id) or "/" not in repo_id:
        raise OptionsError(f"--push {repo_id[:100]!r} is not a Hub repo id", hint="Use namespace/name, e.g. you/tiny-sd.")
    if not get_token():
        raise OptionsError("--push needs a Hub token and none is set",
                           hint=f"Set HF_TOKEN to a token that can write to {repo_id.split('/')[0]}.")


def _push(out: Path, repo_id: str, *, private: bool, style: str) -> str:
    """Upload the folder as one commit; Hub refusals and network trouble become one PublishError line."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from service.errors import PublishError
    from workers.hub.client import network_errors

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=str(out),
                                 commit_message=f"Tiny random {style} pipeline").oid
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise PublishError(f"the Hub refused the push to {repo_id} ({status or e.__class__.__name__})",
                           repo_id=repo_id, hint=f"Check that HF_TOKEN can write to {repo_id.split('/')[0]}; "
                                                 f"the pipeline is in {out}.") from None
    except network_errors() as e:
        raise PublishError(f"cannot reach the Hub to push {repo_id} ({e.__class__.__name__})", repo_id=repo_id,
                           hint=f"Check your network and HF_ENDPOINT; the pipeline is in {out}.") from None
