"""Resolve step: find out what a source is and refuse what we cannot convert, before any download.

A source is a local diffusers folder or a Hub repo id (+ revision, pinned here to a commit sha).  The same
checks run on both: a Stable Diffusion 1.x/2.x or SDXL (base or refiner) diffusers pipeline, safetensors
weights for every component we need (pickle only when explicitly allowed), never remote code.  A ``--vae``
and an SDXL ``--refiner`` are resolved with the source (:func:`resolve_vae`, :func:`resolve_refiner`).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

from workers.package.card import card_license, license_id
from workers.names import looks_like_repo_id
from workers.source.configs import check_configs, read_json
from workers.errors import (
    TRANSIENT_STATUS,
    GatedSourceError,
    HubUnavailableError,
    OptionsError,
    SourceError,
    SourceNotFoundError,
    UnsafeWeightsError,
    UnsupportedModelError,
)
from workers.source.weights import check_weight_files

SD_PIPELINES = frozenset({"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"})
# SDXL base (and fine-tunes, Turbo) and refiner repos (an img2img pipeline, usually without text_encoder)
XL_PIPELINES = frozenset({"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"})
SUPPORTED_PIPELINES = SD_PIPELINES | XL_PIPELINES
# Pipelines people commonly try; named so the refusal can say what the source is.
KNOWN_UNSUPPORTED = {
    "StableDiffusionXLInpaintPipeline": "SDXL inpainting",
    "StableDiffusionXLControlNetPipeline": "SDXL ControlNet",
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
WEIGHT_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae", "safety_checker")
REQUIRED_COMPONENTS = ("text_encoder", "tokenizer", "unet", "vae")
# SDXL: text_encoder (with tokenizer) too, except in a refiner (checked with the UNet's config)
XL_REQUIRED_COMPONENTS = ("text_encoder_2", "tokenizer_2", "unet", "vae")
DEFAULT_MAX_BYTES = 30 * 1024**3  # the weights a conversion downloads; SDXL base's float32 ones are 14 GB
# the files the conversion reads from a CLIP tokenizer folder: either pair, or tokenizer.json alone
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))
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
    private: bool | None = None  # the Hub repo's visibility; None for local folders
    path: Path | None = None  # local folder holding the files (after fetch, for Hub sources)
    # a source of one component only (``--vae``): the folder inside the repo holding it ("" for the root)
    subfolder: str | None = None
    # other sources this conversion takes components from: "vae" (a VAE replacing the source's) and
    # "refiner" (an SDXL refiner's UNet, shipped as UnetRefiner); fetch links them into one folder
    extras: tuple[tuple[str, "Source"], ...] = ()
    origin: Path | None = None  # a composed source's own folder (``path`` is then the folder of links)

    @property
    def name(self) -> str:
        """The part of the id after the namespace; used for output repo names."""
        return self.id.rsplit("/", 1)[-1]

    def download_patterns(self) -> list[str]:
        """The files a fetch needs: index, configs, tokenizer, chosen weights, card. Nothing else."""
        if self.subfolder is not None:  # one component: its config and weights
            return ["README.md", f"{self.subfolder}/config.json".lstrip("/"),
                    *(f for names in self.weight_files.values() for f in names)]
        patterns = ["model_index.json", "README.md", "scheduler/*.json"]
        patterns += [f"{tokenizer}/*" for tokenizer in ("tokenizer", "tokenizer_2") if tokenizer in self.components]
        for component in self.components:
            patterns.append(f"{component}/*.json")
            patterns.extend(self.weight_files.get(component, ()))
        if "safety_checker" in self.components:
            patterns.append("feature_extractor/*")
        return patterns

    def with_path(self, path: Path) -> "Source":
        return replace(self, path=path)

    def provenance(self) -> dict:
        """What a report records of this source (and of each extra one)."""
        found = {"id": self.id, "repo_id": self.repo_id, "revision": self.revision, "sha": self.sha,
                 "path": str(self.origin or self.path), "pipeline_class": self.pipeline_class,
                 "license": self.license}
        for kind, extra in self.extras:
            found[kind] = extra.provenance()
        return found


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
    vae: str | None = None,
    refiner: str | None = None,
    vae_revision: str | None = None,
    refiner_revision: str | None = None,
) -> Source:
    """Resolve a local folder or a Hub repo id into a checked :class:`Source`.

    ``max_bytes`` bounds the size of the weights the conversion would read.  ``vae`` (a VAE repo or folder,
    see :func:`resolve_vae`) replaces the source's VAE; ``refiner`` (an SDXL refiner, see
    :func:`resolve_refiner`) adds its UNet to an SDXL base's packages.  Both are resolved here too, each at
    its ``*_revision`` when given (a job's pinned commits), else at its main branch's head.

    Raises SourceNotFoundError, UnsupportedModelError, UnsafeWeightsError, GatedSourceError, SourceError.
    """
    found = _resolve_main(source, revision=revision, source_id=source_id, allow_pickle=allow_pickle,
                          need_safety_checker=need_safety_checker, token=token, endpoint=endpoint,
                          max_bytes=max_bytes)
    extras = []
    if refiner:
        if found.pipeline_class not in XL_PIPELINES:
            raise OptionsError(f"--refiner needs an SDXL base source, and {found.id} is a {found.pipeline_class}",
                               hint="Drop --refiner, or convert an SDXL base model.")
        extras.append(("refiner", resolve_refiner(refiner, revision=refiner_revision, allow_pickle=allow_pickle,
                                                  token=token, endpoint=endpoint, max_bytes=max_bytes)))
    if vae:
        extras.append(("vae", resolve_vae(vae, revision=vae_revision, token=token, endpoint=endpoint)))
    return replace(found, extras=tuple(extras)) if extras else found


def _resolve_main(source: str, *, revision: str | None, source_id: str | None, allow_pickle: bool,
                  need_safety_checker: bool, token: str | None, endpoint: str | None, max_bytes: int) -> Source:
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
    sizes = source_files(path, source=str(path))
    files = list(sizes)
    index = _read_model_index(path / "model_index.json", source=str(path), files=files)
    license_ = _card_license(path / "README.md")
    name = source_id or path.name
    if source_id is not None and not looks_like_repo_id(source_id):
        raise SourceError(f"--source-id {source_id!r} is not a valid repo id", source=str(path),
                          hint="Use the form org/name.")
    checked = _check(index, files, source=str(path), allow_pickle=allow_pickle,
                     need_safety_checker=need_safety_checker, sizes=sizes, max_bytes=max_bytes)
    # the files are at hand: their configs and weight headers are checked now, before any work
    check_configs(path)
    check_weight_files(path, [f for names in checked["weight_files"].values() for f in names], source=str(path))
    return Source(id=name, license=license_, path=path, repo_id=source_id, **checked)


def source_files(root: Path, *, source: str, inside: tuple[Path, ...] = ()) -> dict[str, int]:
    """Every file under ``root`` (relative POSIX path -> size), following links that stay in the source.

    A file or folder that is a link resolving outside ``root`` (and outside ``inside``: a Hub cache's blob
    store) is refused, naming it: its contents would otherwise end up in a conversion or a model card.
    Raises SourceError.
    """
    root = root.resolve()
    allowed = (root, *(p.resolve() for p in inside))
    sizes: dict[str, int] = {}

    def walk(folder: Path, prefix: str, ancestors: frozenset[Path]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            raise SourceError(f"{source}: cannot read {prefix or '.'} ({e.strerror})", source=source,
                              hint="Check the folder's permissions.") from e
        for entry in entries:
            name, path = prefix + entry.name, folder / entry.name
            if entry.is_symlink():
                try:
                    real = path.resolve()
                except (OSError, RuntimeError):  # a loop of links
                    real = None
                if real is None or not any(real.is_relative_to(a) for a in allowed):
                    raise SourceError(f"{source}: {name} is a link that resolves outside the source folder",
                                      source=source, hint="Copy what it points to into the source, or remove the link.")
            if entry.is_dir():  # follows links (known by now to stay inside); a link back up would loop
                real = path.resolve()
                if real not in ancestors:
                    walk(path, name + "/", ancestors | {real})
            elif entry.is_file():
                sizes[name] = entry.stat().st_size

    walk(root, "", frozenset({root}))
    return sizes


def resolve_hub(repo_id: str, *, revision: str | None = None, allow_pickle: bool = False,
                token: str | None = None, endpoint: str | None = None,
                need_safety_checker: bool = True, max_bytes: int = DEFAULT_MAX_BYTES) -> Source:
    """Ask the Hub about a repo, pin the revision to a commit sha and check the file list."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(repo_id, revision):
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        files = [s.rfilename for s in info.siblings or []]
        sizes = {s.rfilename: s.size for s in info.siblings or [] if s.size is not None}
        if "model_index.json" not in files:
            _raise_not_diffusers(repo_id, files)
        index_path = hf_hub_download(repo_id, "model_index.json", revision=info.sha, token=token,
                                     endpoint=endpoint)
    index = _read_model_index(Path(index_path), source=repo_id, files=files)
    card = info.card_data
    license_ = license_id(card.get("license")) if card is not None else None
    checked = _check(index, files, source=repo_id, allow_pickle=allow_pickle,
                     need_safety_checker=need_safety_checker, sizes=sizes, max_bytes=max_bytes)
    return Source(id=repo_id, repo_id=repo_id, revision=revision or "main", sha=info.sha,
                  license=license_, private=bool(info.private), **checked)


@contextmanager
def _hub_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    """Hub refusals and network trouble around Hub calls for ``repo_id``, as this step's one-line errors."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
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


def resolve_vae(ref: str, *, revision: str | None = None, token: str | None = None,
                endpoint: str | None = None) -> Source:
    """``--vae``: a VAE to convert instead of the source's, from a local folder or a Hub repo (``revision``, or
    its main branch, pinned to a sha) holding an ``AutoencoderKL`` at its root (as float16-fixed SDXL VAEs are published) or in ``vae/``.

    Raises SourceNotFoundError, SourceError (no VAE there), UnsafeWeightsError, HubUnavailableError.
    """
    from huggingface_hub import HfApi, hf_hub_download

    path = Path(ref).expanduser()
    info = None
    if path.is_dir():
        if revision:
            raise SourceError(f"a revision applies to Hub repos, but --vae {ref} is a local folder", source=ref,
                              hint="Pass the VAE's Hub repo id.")
        files = list(source_files(path.resolve(), source=ref))
    elif ref.startswith((".", "/", "~")) or not looks_like_repo_id(ref):
        raise SourceNotFoundError(f"--vae {ref!r} is neither a local folder nor a valid Hub repo id", source=ref,
                                  hint="Pass a VAE repo id such as madebyollin/sdxl-vae-fp16-fix, or a folder.")
    else:
        with _hub_errors(ref, revision):
            info = HfApi(endpoint=endpoint, token=token).model_info(ref, revision=revision)
            files = [s.rfilename for s in info.siblings or []]
    folder = "" if "config.json" in files else "vae" if "vae/config.json" in files else None
    if folder is None:
        raise SourceError(f"--vae {ref} holds no VAE: no config.json at its root or in vae/", source=ref,
                          hint="Pass a repo or folder with a diffusers AutoencoderKL (config.json and weights).")
    config_file = f"{folder}/config.json".lstrip("/")
    if info is None:
        config = read_json(path / config_file, label=f"--vae {config_file}", source=ref)
    else:
        with _hub_errors(ref, revision):
            config = read_json(Path(hf_hub_download(ref, config_file, revision=info.sha, token=token,
                                                    endpoint=endpoint)), label=f"--vae {config_file}", source=ref)
    if config.get("_class_name") != "AutoencoderKL":
        raise UnsupportedModelError(f"--vae {ref} is not an AutoencoderKL VAE (its config's _class_name is "
                                    f"{str(config.get('_class_name'))[:60]})", source=ref,
                                    hint="Pass a diffusers AutoencoderKL VAE.")
    weights, variant, pickled = _component_weights("vae", folder, files, ref)
    if pickled:  # loaded beside the source's own components, which are read as safetensors
        raise UnsafeWeightsError(f"--vae {ref} has only pickle weights ({', '.join(pickled)}); --vae takes "
                                 "safetensors weights only", source=ref, files=pickled)
    common = dict(pipeline_class="AutoencoderKL", model_index={}, components=("vae",),
                  weight_files={"vae": weights}, weight_variant={"vae": variant}, subfolder=folder)
    if info is None:
        return Source(id=path.resolve().name, path=path.resolve(), license=_card_license(path / "README.md"),
                      **common)
    card = info.card_data
    return Source(id=ref, repo_id=ref, revision=revision or "main", sha=info.sha, private=bool(info.private),
                  license=license_id(card.get("license")) if card is not None else None, **common)


def resolve_refiner(ref: str, *, revision: str | None = None, allow_pickle: bool = False, token: str | None = None,
                    endpoint: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Source:
    """``--refiner``: an SDXL refiner repo or folder (a Hub repo at ``revision``, else its main branch) whose
    UNet ships beside the base's as UnetRefiner (only its UNet is fetched; the base's second text encoder
    conditions it).  Raises as :func:`resolve_source`."""
    found = resolve_source(ref, revision=revision, allow_pickle=allow_pickle, token=token, endpoint=endpoint,
                           need_safety_checker=False, max_bytes=max_bytes)
    if not found.use_safetensors:
        raise UnsafeWeightsError(f"--refiner {ref} has only pickle weights; --refiner takes safetensors weights only",
                                 source=ref, files=list(found.weight_files["unet"]))
    if found.pipeline_class not in XL_PIPELINES:
        raise UnsupportedModelError(f"--refiner {ref} is a {found.pipeline_class}, not an SDXL refiner",
                                    source=ref, hint="Pass an SDXL refiner repo such as "
                                                     "stabilityai/stable-diffusion-xl-refiner-1.0.")
    return replace(found, components=("unet",), weight_files={"unet": found.weight_files["unet"]},
                   weight_variant={"unet": found.weight_variant["unet"]}, subfolder="unet")


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
    index = read_json(path, label="model_index.json", source=source, hint="Fix or regenerate model_index.json.")
    if "_class_name" not in index:
        raise SourceError(f"{source}: model_index.json has no _class_name", source=source,
                          hint="Regenerate it with diffusers' save_pretrained.")
    if not isinstance(index["_class_name"], str):
        raise SourceError(f"{source}: model_index.json's _class_name must be a pipeline class name, not "
                          f"{str(index['_class_name'])[:60]}", source=source,
                          hint="Regenerate it with diffusers' save_pretrained.")
    return index


def _components(index: dict, source: str) -> tuple[str, ...]:
    """The components model_index.json lists with a (library, class) pair; refuses malformed entries of
    the components a conversion uses (others, unused, only count when well formed)."""
    used = {*REQUIRED_COMPONENTS, *XL_REQUIRED_COMPONENTS, *WEIGHT_COMPONENTS, "feature_extractor"}
    present = []
    for key, value in index.items():
        if key.startswith("_") or not (isinstance(value, list) or key in used):
            continue  # pipeline options such as requires_safety_checker
        if not (isinstance(value, list) and len(value) == 2 and all(v is None or isinstance(v, str) for v in value)):
            if key not in used:
                continue
            raise SourceError(f"{source}: model_index.json entry {key} must be a [library, class] pair, not "
                              f"{str(value)[:60]}", source=source, hint="Regenerate it with diffusers' save_pretrained.")
        if value[0] is not None:
            present.append(key)
    if not present:
        raise SourceError(f"{source}: model_index.json lists no components", source=source,
                          hint="Regenerate it with diffusers' save_pretrained.")
    return tuple(present)


def _card_license(readme: Path) -> str | None:
    """The license a local source's card names (front matter parsed without YAML aliases, size-bounded)."""
    if not readme.is_file():
        return None
    return card_license(readme.read_text(errors="replace"))


def _component_weights(component: str, folder: str, files: list[str], source: str
                       ) -> tuple[tuple[str, ...], str | None, list[str]]:
    """The weight files of one component in ``folder`` (repo-relative; "" for the root), their diffusers
    variant and which of them are pickle: plain safetensors, else the fp16 variant, else pickle files."""
    in_folder = [f for f in files if PurePosixPath(f).parent.as_posix() == (folder or ".")]
    safetensors = sorted(f for f in in_folder if f.endswith(".safetensors"))
    plain = [f for f in safetensors if not _VARIANT_FILE.match(PurePosixPath(f).name) or "-of-" in f]
    if plain:
        return tuple(plain) + tuple(f for f in in_folder if f.endswith(".safetensors.index.json")), None, []
    fp16 = [f for f in safetensors if PurePosixPath(f).name.split(".")[-2] == "fp16"]
    if fp16:
        return tuple(fp16), "fp16", []
    found = sorted(f for f in in_folder if f.endswith(PICKLE_SUFFIXES))
    if not found:
        raise SourceError(f"{source}: no weights found for {component}", source=source,
                          hint=f"Add {folder + '/' if folder else ''}*.safetensors to the source.")
    return tuple(found), None, found


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
            hint="Pick a Stable Diffusion 1.x/2.x or SDXL diffusers repo.")
    present = _components(index, source)
    xl = cls in XL_PIPELINES
    required = XL_REQUIRED_COMPONENTS + (("text_encoder", "tokenizer") if "text_encoder" in present else ()) \
        if xl else REQUIRED_COMPONENTS
    missing = [c for c in required if c not in present]
    if missing:
        raise SourceError(f"{source}: model_index.json lacks {', '.join(missing)}", source=source,
                          hint=f"A{'n SDXL' if xl else ' Stable Diffusion'} pipeline needs {', '.join(required)}.")
    for tokenizer in (t for t in ("tokenizer", "tokenizer_2") if t in required):
        if not any(f.startswith(f"{tokenizer}/") for f in files):
            raise SourceError(f"{source}: model_index.json lists a {tokenizer}, but there is no {tokenizer} folder",
                              source=source,
                              hint=f"Add the CLIP tokenizer's files (vocab.json, merges.txt) to {tokenizer}/.")
        if not any(all(f"{tokenizer}/{f}" in files for f in names) for names in TOKENIZER_FILES):
            raise SourceError(f"{source}: the {tokenizer} folder lacks vocab.json and merges.txt (or tokenizer.json)",
                              source=source, hint=f"Add the CLIP tokenizer's files to {tokenizer}/ in the source.")
    wanted = [c for c in WEIGHT_COMPONENTS if c in present
              and (c != "safety_checker" or need_safety_checker)]
    weight_files: dict[str, tuple[str, ...]] = {}
    weight_variant: dict[str, str | None] = {}
    pickles: list[str] = []
    for component in wanted:
        weight_files[component], weight_variant[component], pickled = _component_weights(
            component, component, files, source)
        pickles.extend(pickled)
    total = sum((sizes or {}).get(f, 0) for names in weight_files.values() for f in names)
    if total > max_bytes:
        raise SourceError(f"{source} is too large: {total / 1e9:.1f} GB of weights to convert, the limit is "
                          f"{max_bytes / 1e9:.1f} GB", source=source,
                          hint="Stable Diffusion pipelines (SDXL: 14 GB) are smaller; raise the limit only if "
                               "this source is what you expect (COREML_PUBLISH_MAX_SOURCE_GB).")
    if pickles and not allow_pickle:
        raise UnsafeWeightsError(
            f"{source} has only pickle weights for some components ({', '.join(pickles)}); "
            "loading pickle runs arbitrary code", source=source, files=pickles)
    return {
        "pipeline_class": cls,
        "model_index": index,
        "components": tuple(wanted) + tuple(t for t in ("tokenizer", "tokenizer_2") if t in required),
        "weight_files": weight_files,
        "weight_variant": weight_variant,
        "use_safetensors": not pickles,
    }
