"""Resolve step: find out what a source is and refuse what we cannot convert, before any download.

A source is a local diffusers folder or a Hub repo id (+ revision, pinned here to a commit sha).  The same
checks run on both: a Stable Diffusion 1.x/2.x diffusers pipeline, safetensors weights for every component
we need (pickle only when explicitly allowed), never remote code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Iterable

from workers.errors import (
    TRANSIENT_STATUS,
    GatedSourceError,
    HubUnavailableError,
    SourceError,
    SourceNotFoundError,
    UnsafeWeightsError,
    UnsupportedModelError,
)

SUPPORTED_PIPELINES = frozenset({"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"})
# Pipelines people commonly try; named so the refusal can say what the source is.
KNOWN_UNSUPPORTED = {
    "StableDiffusionXLPipeline": "SDXL",
    "StableDiffusionXLImg2ImgPipeline": "SDXL refiner",
    "StableDiffusion3Pipeline": "Stable Diffusion 3",
    "FluxPipeline": "FLUX",
    "StableDiffusionInpaintPipeline": "Stable Diffusion inpainting",
    "StableDiffusionUpscalePipeline": "Stable Diffusion upscaler",
    "StableDiffusionDepth2ImgPipeline": "Stable Diffusion depth-to-image",
    "LatentConsistencyModelPipeline": "LCM",
    "PixArtAlphaPipeline": "PixArt",
    "KandinskyV22Pipeline": "Kandinsky 2.2",
}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# diffusers components that hold weights, and the package components that need them
WEIGHT_COMPONENTS = ("text_encoder", "unet", "vae", "safety_checker")
REQUIRED_COMPONENTS = ("text_encoder", "tokenizer", "unet", "vae")
DEFAULT_MAX_BYTES = 30 * 1024**3  # the weights a conversion downloads; far above any SD 1.x/2.x pipeline
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
_VARIANT_FILE = re.compile(r"^[^.]+\.(?P<variant>[A-Za-z0-9_]+)\.safetensors$")


@dataclass(frozen=True)
class Source:
    """What we know about a source model after resolving it (and, once fetched, where it is)."""

    id: str  # repo id, or the name given to a local folder; used in file names and provenance
    pipeline_class: str
    model_index: dict
    components: tuple[str, ...]  # diffusers components present in model_index.json with weights
    weight_files: dict[str, tuple[str, ...]]  # component -> weight files to load (repo-relative)
    weight_variant: dict[str, str | None]  # component -> diffusers `variant` ("fp16") or None
    use_safetensors: bool = True
    repo_id: str | None = None
    revision: str | None = None
    sha: str | None = None
    license: str | None = None
    path: Path | None = None  # local folder holding the files (after fetch, for Hub sources)

    @property
    def name(self) -> str:
        """The part of the id after the namespace; used for output repo names."""
        return self.id.rsplit("/", 1)[-1]

    def download_patterns(self) -> list[str]:
        """The files a fetch needs: index, configs, tokenizer, chosen weights, card. Nothing else."""
        patterns = ["model_index.json", "README.md", "tokenizer/*", "scheduler/*.json"]
        for component in self.components:
            patterns.append(f"{component}/*.json")
            patterns.extend(self.weight_files.get(component, ()))
        if "safety_checker" in self.components:
            patterns.append("feature_extractor/*")
        return patterns

    def with_path(self, path: Path) -> "Source":
        return replace(self, path=path)


def looks_like_repo_id(text: str) -> bool:
    """True for ``name`` or ``namespace/name`` made of the characters the Hub allows."""
    return bool(_REPO_ID.match(text)) and ".." not in text and "--" not in text


def resolve_source(
    source: str,
    *,
    revision: str | None = None,
    source_id: str | None = None,
    allow_pickle: bool = False,
    need_safety_checker: bool = True,
    token: str | None = None,
    endpoint: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Source:
    """Resolve a local folder or a Hub repo id into a checked :class:`Source`.

    ``max_bytes`` bounds the size of the weights the conversion would read.

    Raises SourceNotFoundError, UnsupportedModelError, UnsafeWeightsError, GatedSourceError, SourceError.
    """
    path = Path(source).expanduser()
    if path.exists():
        if revision:
            raise SourceError(f"--revision applies to Hub repos, but {source} is a local folder",
                              source=source, hint="Drop --revision, or pass a Hub repo id.")
        return resolve_local(path, source_id=source_id, allow_pickle=allow_pickle,
                             need_safety_checker=need_safety_checker, max_bytes=max_bytes)
    if source.startswith((".", "/", "~")):
        raise SourceNotFoundError(f"no folder at {source}", source=source,
                                  hint="Check the path, or pass a Hub repo id like org/name.")
    if not looks_like_repo_id(source):
        raise SourceNotFoundError(
            f"{source!r} is neither a local folder nor a valid Hub repo id", source=source,
            hint="Pass a diffusers folder or a repo id like stabilityai/stable-diffusion-2-1-base.")
    return resolve_hub(source, revision=revision, allow_pickle=allow_pickle, token=token,
                       endpoint=endpoint, need_safety_checker=need_safety_checker, max_bytes=max_bytes)


def resolve_local(path: Path, *, source_id: str | None = None, allow_pickle: bool = False,
                  need_safety_checker: bool = True, max_bytes: int = DEFAULT_MAX_BYTES) -> Source:
    """Check a local diffusers folder."""
    path = path.resolve()
    if not path.is_dir():
        raise SourceError(f"{path} is a file, not a diffusers folder", source=str(path),
                          hint="Single-file checkpoints are not supported yet; pass a diffusers folder.")
    sizes = {p.relative_to(path).as_posix(): p.stat().st_size for p in path.rglob("*") if p.is_file()}
    files = list(sizes)
    index = _read_model_index(path / "model_index.json", source=str(path), files=files)
    license_ = _card_license(path / "README.md")
    name = source_id or path.name
    if source_id is not None and not looks_like_repo_id(source_id):
        raise SourceError(f"--source-id {source_id!r} is not a valid repo id", source=str(path),
                          hint="Use the form org/name.")
    checked = _check(index, files, source=str(path), allow_pickle=allow_pickle,
                     need_safety_checker=need_safety_checker, sizes=sizes, max_bytes=max_bytes)
    return Source(id=name, license=license_, path=path, repo_id=source_id, **checked)


def resolve_hub(repo_id: str, *, revision: str | None = None, allow_pickle: bool = False,
                token: str | None = None, endpoint: str | None = None,
                need_safety_checker: bool = True, max_bytes: int = DEFAULT_MAX_BYTES) -> Source:
    """Ask the Hub about a repo, pin the revision to a commit sha and check the file list."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(endpoint=endpoint, token=token)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        files = [s.rfilename for s in info.siblings or []]
        sizes = {s.rfilename: s.size for s in info.siblings or [] if s.size is not None}
        if "model_index.json" not in files:
            _raise_not_diffusers(repo_id, files)
        index_path = hf_hub_download(repo_id, "model_index.json", revision=info.sha, token=token,
                                     endpoint=endpoint)
    except GatedRepoError as e:
        raise GatedSourceError(f"{repo_id} is gated", source=repo_id) from e
    except RevisionNotFoundError as e:
        raise SourceNotFoundError(f"{repo_id} has no revision {revision!r}", source=repo_id,
                                  hint="Pass a branch, tag or commit sha that exists.") from e
    except RepositoryNotFoundError as e:
        raise SourceNotFoundError(
            f"repo {repo_id} not found (or private)", source=repo_id,
            hint="Check the id; for a private repo set HF_TOKEN to a token that can read it.") from e
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        error = HubUnavailableError if status in TRANSIENT_STATUS else SourceError
        raise error(f"the Hub answered {status} for {repo_id}", source=repo_id,
                    hint="Try again later; check HF_ENDPOINT and HF_TOKEN.") from e
    except network_errors() as e:  # connection refused, DNS, timeouts
        raise HubUnavailableError(f"cannot reach the Hub for {repo_id}: {e.__class__.__name__}",
                                  source=repo_id, hint="Check your network and HF_ENDPOINT.") from e
    index = _read_model_index(Path(index_path), source=repo_id, files=files)
    card = info.card_data
    license_ = (card.get("license") if card is not None else None) or None
    checked = _check(index, files, source=repo_id, allow_pickle=allow_pickle,
                     need_safety_checker=need_safety_checker, sizes=sizes, max_bytes=max_bytes)
    return Source(id=repo_id, repo_id=repo_id, revision=revision or "main", sha=info.sha,
                  license=license_, **checked)


def network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning the Hub could not be reached (huggingface_hub 2.x speaks through httpx2)."""
    import httpx2

    return (OSError, httpx2.TransportError)


def _raise_not_diffusers(source: str, files: Iterable[str]) -> None:
    singles = sorted(f for f in files if f.endswith(SINGLE_FILE_SUFFIXES) and "/" not in f)
    detail = f" (it has single-file checkpoints: {', '.join(singles[:3])})" if singles else ""
    raise UnsupportedModelError(
        f"{source} is not a diffusers pipeline: no model_index.json{detail}", source=source,
        hint="Convert it to the diffusers folder layout first, or pick a diffusers repo.")


def _read_model_index(path: Path, *, source: str, files: list[str]) -> dict:
    if not path.is_file():
        _raise_not_diffusers(source, files)
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{source}: model_index.json is not valid JSON ({e})", source=source,
                          hint="Fix or regenerate model_index.json.") from e
    if not isinstance(index, dict) or "_class_name" not in index:
        raise SourceError(f"{source}: model_index.json has no _class_name", source=source,
                          hint="Regenerate it with diffusers' save_pretrained.")
    return index


def _card_license(readme: Path) -> str | None:
    if not readme.is_file():
        return None
    try:
        from huggingface_hub.repocard import metadata_load

        meta = metadata_load(readme) or {}
    except Exception:  # a broken card must not stop a conversion; the license is then unknown
        return None
    value = meta.get("license")
    return str(value) if value else None


def _check(index: dict, files: list[str], *, source: str, allow_pickle: bool,
           need_safety_checker: bool, sizes: dict[str, int] | None = None,
           max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    cls = index["_class_name"]
    if cls not in SUPPORTED_PIPELINES:
        what = KNOWN_UNSUPPORTED.get(cls)
        label = f"{cls} ({what})" if what else cls
        raise UnsupportedModelError(
            f"{source}: {label} is not supported yet; supported: "
            + ", ".join(sorted(SUPPORTED_PIPELINES)), source=source,
            hint="Pick a Stable Diffusion 1.x/2.x diffusers repo.")
    present = tuple(
        c for c in index
        if not c.startswith("_") and isinstance(index[c], list) and index[c][0] is not None
    )
    missing = [c for c in REQUIRED_COMPONENTS if c not in present]
    if missing:
        raise SourceError(f"{source}: model_index.json lacks {', '.join(missing)}", source=source,
                          hint="A Stable Diffusion pipeline needs text_encoder, tokenizer, unet and vae.")
    wanted = [c for c in WEIGHT_COMPONENTS if c in present
              and (c != "safety_checker" or need_safety_checker)]
    weight_files: dict[str, tuple[str, ...]] = {}
    weight_variant: dict[str, str | None] = {}
    pickles: list[str] = []
    for component in wanted:
        in_folder = [f for f in files if PurePosixPath(f).parent.as_posix() == component]
        safetensors = sorted(f for f in in_folder if f.endswith(".safetensors"))
        plain = [f for f in safetensors if not _VARIANT_FILE.match(PurePosixPath(f).name)
                 or "-of-" in f]
        if plain:
            weight_files[component] = tuple(plain) + tuple(
                f for f in in_folder if f.endswith(".safetensors.index.json"))
            weight_variant[component] = None
            continue
        fp16 = [f for f in safetensors if PurePosixPath(f).name.split(".")[-2] == "fp16"]
        if fp16:
            weight_files[component] = tuple(fp16)
            weight_variant[component] = "fp16"
            continue
        found = sorted(f for f in in_folder if f.endswith(PICKLE_SUFFIXES))
        if not found:
            raise SourceError(f"{source}: no weights found for {component}", source=source,
                              hint=f"Add {component}/*.safetensors to the source.")
        pickles.extend(found)
        weight_files[component] = tuple(found)
        weight_variant[component] = None
    total = sum((sizes or {}).get(f, 0) for names in weight_files.values() for f in names)
    if total > max_bytes:
        raise SourceError(f"{source} is too large: {total / 1e9:.1f} GB of weights to convert, the limit is "
                          f"{max_bytes / 1e9:.1f} GB", source=source,
                          hint="Stable Diffusion 1.x/2.x pipelines are far smaller; raise the limit only if "
                               "this source is what you expect (COREML_PUBLISH_MAX_SOURCE_GB).")
    if pickles and not allow_pickle:
        raise UnsafeWeightsError(
            f"{source} has only pickle weights for some components ({', '.join(pickles)}); "
            "loading pickle runs arbitrary code", source=source, files=pickles)
    return {
        "pipeline_class": cls,
        "model_index": index,
        "components": tuple(wanted) + ("tokenizer",),
        "weight_files": weight_files,
        "weight_variant": weight_variant,
        "use_safetensors": not pickles,
    }
