"""``coreml-publish tiny-pipeline``: make a small random pipeline to try the tool on."""

from __future__ import annotations

from pathlib import Path

import typer

from service.cli.output import stdout


def tiny_pipeline(
    out: Path = typer.Argument(..., help="Folder to write the diffusers pipeline to."),
    style: str = typer.Option("sd1", help="sd1 (SD 1.x architecture, with safety checker) or sd2."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
    push: str = typer.Option(None, metavar="REPO", help="Also upload it to this Hub repo (e.g. one on the dev Hub)."),
    private: bool = typer.Option(False, help="With --push: create the repo as private."),
) -> None:
    """Write a tiny random Stable Diffusion pipeline (a few MB, safetensors) to OUT, and optionally push it."""
    from service.errors import OptionsError
    from service.devtools.tiny import STYLES, build_tiny_pipeline

    if style not in STYLES:
        raise OptionsError(f"--style must be one of {', '.join(STYLES)}, not {style!r}", hint="Use sd1 or sd2.")
    if out.exists() and any(out.iterdir()):
        raise OptionsError(f"{out} exists and is not empty", hint="Pick a new folder.")
    build_tiny_pipeline(out, style=style, seed=seed)
    stdout.print(f"Wrote a tiny random {style} pipeline to {out}")
    if push:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=push, folder_path=str(out), commit_message=f"Tiny random {style} pipeline")
        stdout.print(f"Pushed it to {push} (commit {commit.oid[:10]})")
