"""``coreml-publish convert``: a local folder or Hub repo in, validated Core ML packages out."""

from __future__ import annotations

from pathlib import Path

import typer

from service.cli.options import with_options
from service.cli.output import EventPrinter, report_table, stdout, summary
from workers.declare import CONVERT
from workers.options import ConvertOptions, SourceOptions


@with_options(CONVERT, ConvertOptions, SourceOptions)
def convert(
    source: str = typer.Argument(..., help="A local diffusers folder, or a Hub repo id such as org/name."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created if missing)."),
    revision: str = typer.Option(None, help="Hub branch, tag or commit (default: main); pinned to its sha."),
    *,
    source_id: str = typer.Option(None, help="For a local folder: the Hub id it holds (used in file names)."),
    allow_pickle: bool = typer.Option(False, help="Load .bin/.ckpt weights (runs code from the file: trusted sources only)."),
    processes: int = typer.Option(None, min=1, help="Processes converting at once, each component in its own, side "
                                                    "by side as memory allows (default: one per core for sources of "
                                                    "1 GB and more; 1: all in this process)."),
    options: dict,
) -> None:
    """Convert a Stable Diffusion 1.x/2.x or SDXL pipeline (or a ControlNet, with --base) into float16 and
    palettized Core ML packages.

    Writes OUT/coreml-<name>/{original,split_einsum_v2}/packages/*.mlpackage, the same under
    OUT/coreml-<name>-palettized/, and OUT/report.json; every package is validated against the torch
    original, and the command fails if any does not reach its bar.
    """
    from workers.convert.outdir import check_output_dir

    check_output_dir(out)  # first: cheap, and before loading the toolchain, resolving or fetching anything

    from service.errors import ValidationError
    from service.settings import get_settings
    from workers.convert.engine import convert_pipeline
    from workers.source.fetch import fetched
    from workers.source.resolve import resolve_source

    settings = get_settings()
    conversion = ConvertOptions.from_user(**ConvertOptions.pick(options), bars=settings.validation_bars(),
                                          analyses=str(settings.analyses_path()),
                                          mixed_min_weights=settings.mixed_min_weights)
    extras = SourceOptions.from_user(**SourceOptions.pick(options))
    printer = EventPrinter()
    try:
        printer.status.update(f"resolving {source}…")
        resolved = resolve_source(source, revision=revision, source_id=source_id, allow_pickle=allow_pickle,
                                  max_bytes=int(settings.max_source_gb * 1e9),
                                  need_safety_checker=conversion.components is None
                                  or "safety_checker" in conversion.components, vae=extras.vae,
                                  refiner=extras.refiner, base=extras.base, checkpoint=extras.checkpoint,
                                  config=extras.config, loras=extras.loras)
        printer.status.update(f"fetching {resolved.id}…")
        with fetched(resolved) as fetched_source:
            report = convert_pipeline(fetched_source, out, conversion, on_event=printer,
                                      processes=processes or settings.convert_processes)
    except ValidationError as e:
        printer.close()
        if e.report is not None:
            stdout.print(report_table(e.report))
        raise
    except BaseException:
        printer.close()
        raise
    printer.close()
    stdout.print(report_table(report))
    stdout.print(f"{summary(report)} Report: {out / 'report.json'}")


def validate(
    out: Path = typer.Argument(..., help="An output tree: a folder written by convert, or a downloaded repo "
                                         "with the conversion's report.json beside it."),
    source: str = typer.Option(None, help="The source to check against (default: the one report.json names, "
                                          "at its recorded commit)."),
    allow_pickle: bool = typer.Option(False, help="Load .bin/.ckpt weights (runs code from the file: trusted sources only)."),
) -> None:
    """Re-run every check on an existing output tree and rewrite its report.json.

    Exits with status 3 when a package fails; nothing is deleted.
    """
    from service.errors import ValidationError
    from service.settings import get_settings
    from workers.source.fetch import fetched
    from workers.source.provenance import recorded_loras, recorded_ref
    from workers.source.resolve import resolve_source
    from workers.validate.output import read_report, verify_output

    recorded = read_report(out).source
    local = Path(recorded["path"]) if recorded.get("path") else None
    # the VAE and refiner the conversion took: their Hub repo, else the folder they were read from
    extras: dict = {kind: recorded[kind].get("repo_id") or recorded[kind].get("path")
                    for kind in ("vae", "refiner", "base", "config") if isinstance(recorded.get(kind), dict)}
    extras["checkpoint"] = (recorded.get("checkpoint") or {}).get("file")
    loras = recorded_loras(recorded)
    extras["loras"] = tuple(recorded_ref(lora) for lora in loras)
    extras["lora_revisions"] = tuple(lora.get("sha") for lora in loras)
    printer = EventPrinter()
    try:
        if source is None and local is not None and local.is_dir():
            resolved = resolve_source(str(local), source_id=recorded["id"], allow_pickle=allow_pickle, **extras)
        else:
            resolved = resolve_source(source or recorded["repo_id"] or recorded["id"],
                                      revision=None if source else recorded.get("sha"),
                                      source_id=recorded["id"], allow_pickle=allow_pickle,
                                      max_bytes=int(get_settings().max_source_gb * 1e9), **extras)
        printer.status.update(f"fetching {resolved.id}…")
        with fetched(resolved) as source:
            report = verify_output(out, source, get_settings().validation_bars(), on_event=printer)
    finally:
        printer.close()
    stdout.print(report_table(report))
    failures = [f for p in report.packages for f in p.failures()]  # copies too: each is a file of its own
    if failures:
        raise ValidationError(list(dict.fromkeys(failures)), report=report,
                              hint="Nothing was deleted; report.json has every figure.")
    stdout.print(f"{summary(report)} Report: {out / 'report.json'}")
