"""``coreml-publish publish`` and ``download``: conversion output to the Hub, and one variant back."""

from __future__ import annotations

from pathlib import Path

import typer

from service.cli.output import console, stdout
from workers.names import Attention

VARIANTS = ", ".join(a.value for a in Attention)  # the variant folders a repo may hold


def publish(
    out: Path = typer.Argument(..., help="A conversion output folder (made by `convert`)."),
    namespace: str = typer.Option(..., help="User or organisation to publish under."),
    private: bool | None = typer.Option(None, "--private/--public",
                                        help="Create the repos private or public (default: as the source repo "
                                             "is; private when the source is a local folder)."),
    packages_only: bool = typer.Option(False, help="Publish .mlpackage files only, without compiled resources "
                                                   "(for machines without Xcode; the card says so)."),
) -> None:
    """Publish OUT as two Hub repos: NAMESPACE/coreml-<name> (float16) and NAMESPACE/coreml-<name>-palettized.

    Compiles every package to .mlmodelc (needs macOS with Xcode), zips each variant, writes the model card,
    and pushes each repo as one commit. Uses the token in HF_TOKEN or the huggingface_hub login cache.
    Refuses a variant without text_encoder, unet (or both UNet chunks) or vae_decoder: convert without
    --components for a complete one. Without a palettized repo (--bits 0) only the float16 one is made.
    """
    from workers.hub.publish import publish_tree
    from workers.package.compile import require_compiler
    from workers.package.complete import check_output
    from workers.package.repos import package_output
    from workers.validate.report import Report

    report = Report.load(out)
    report.require_passed(out)
    check_output(report, out, namespace=namespace)  # before anything else: an incomplete variant is never published
    compiler = None if packages_only else require_compiler()
    if private is None:
        private = _follow_source(report.source)
    with console.status("packaging") as status:
        trees = package_output(out, namespace=namespace, compiled=not packages_only, compiler=compiler,
                               on_step=lambda message: status.update(message + "…"))
        for tree in trees:
            result = publish_tree(tree, namespace=namespace, source_sha=report.source.get("sha"),
                                  private=private, on_step=lambda message: status.update(message + "…"))
            change = f"commit {result.commit[:10]}" if result.changed else \
                f"no changes: the Hub already holds these files (commit {result.commit[:10]})"
            stdout.print(f"[green]✓[/] {result.repo_id}: {change}" + (f", tag {result.tag}" if result.tag else ""))


def _follow_source(source: dict) -> bool:
    """The source's visibility: a Hub repo's own (asked now), private for a local folder (no visibility to
    follow, and publishing it publicly could leak it)."""
    from workers.hub.publish import source_private

    if source.get("repo_id") and source.get("sha"):  # converted from the Hub at a commit
        private = source_private(source["repo_id"])
        stdout.print(f"Publishing {'private' if private else 'public'} repos, as {source['repo_id']} is "
                     f"{'private (or not visible to this token)' if private else 'public'} "
                     f"(--private/--public to choose).")
        return private
    stdout.print("Publishing private repos: the source is a local folder (--public to publish publicly).")
    return True


def download(
    repo: str = typer.Argument(..., help="A published repo id, e.g. org/coreml-stable-diffusion-2-1-base-palettized."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to download into."),
    variant: str = typer.Option(Attention.SPLIT_EINSUM_V2.value,
                                help=f"One of {VARIANTS}: original for Mac GPUs, split_einsum* for the Neural "
                                     "Engine (split_einsum_v2 where the repo has it)."),
    compiled: bool = typer.Option(False, "--compiled", help="The compiled resources (default)."),
    packages: bool = typer.Option(False, "--packages", help="The .mlpackage files."),
    zip_: bool = typer.Option(False, "--zip", help="The variant's zip, as apps download it."),
    resolution: str = typer.Option(None, "--resolution", metavar="WxH",
                                   help="The variant at this image size (width x height in pixels, e.g. 512x768; "
                                        "default: the model's native size)."),
    revision: str = typer.Option(None, help="Branch, tag or commit (default: main)."),
) -> None:
    """Download one variant of a published repo: only the files asked for."""
    from workers.hub.download import download_variant
    from service.errors import OptionsError

    chosen = [k for k, on in (("compiled", compiled), ("packages", packages), ("zip", zip_)) if on]
    if len(chosen) > 1:
        raise OptionsError("choose one of --compiled, --packages, --zip", hint="Pass just one of them.")
    with console.status(f"downloading {repo}…"):
        path = download_variant(repo, out, variant=variant, kind=(chosen or ["compiled"])[0], revision=revision,
                                resolution=resolution)
    stdout.print(f"Downloaded to {path}")
