"""Resolve step: find out what a source is and refuse what we cannot convert, before any download.

A source is a local diffusers folder or a Hub repo id (+ revision, pinned here to a commit sha, with the exact
files to fetch); :mod:`workers.source.pipelines` says what is accepted.  A ``--vae`` and an SDXL ``--refiner``
are resolved with the source (:func:`resolve_vae`, :func:`resolve_refiner`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from workers.errors import (
    OptionsError,
    SourceError,
    SourceNotFoundError,
    UnsafeWeightsError,
    UnsupportedModelError,
)
from workers.hub.client import hub_errors
from workers.names import looks_like_repo_id
from workers.package.card import license_id
from workers.source.config_checks import check_configs
from workers.source.configs import read_json
from workers.source.pipelines import (
    DEFAULT_MAX_BYTES,
    SUPPORTED_PIPELINES,
    XL_PIPELINES,
    card_license_of,
    check_pipeline,
    component_weights,
    raise_not_diffusers,
    read_model_index,
)
from workers.source.controlnet import (
    BASE_FILES,
    base_only,
    check_fit,
    controlnet_source,
    is_controlnet,
    read_configs,
    require_base,
    root_config,
)
from workers.source.checkpoint import candidates, checkpoint_fields, hub_shapes, local_shapes
from workers.source.lora import resolve_lora
from workers.source.source import Source, source_files
from workers.source.weights import check_weight_files, sha256_of

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
    base: str | None = None,
    base_revision: str | None = None,
    checkpoint: str | None = None,
    config: str | None = None,
    config_revision: str | None = None,
    loras: tuple[str, ...] = (),
    lora_revisions: tuple[str | None, ...] = (),
) -> Source:
    """Resolve a local folder or a Hub repo id into a checked :class:`Source`.

    ``max_bytes`` bounds the size of the weights the conversion would read.  ``vae`` (a VAE repo or folder,
    see :func:`resolve_vae`) replaces the source's VAE; ``refiner`` (an SDXL refiner, see
    :func:`resolve_refiner`) adds its UNet to an SDXL base's packages.  Both are resolved here too, each at
    its ``*_revision`` when given (a job's pinned commits), else at its main branch's head.  A ControlNet
    source (:mod:`workers.source.controlnet`) needs ``base``, the SD 1.x / 2.x pipeline it is used with (its
    configs only), and is refused when it does not fit it.  ``loras`` (``REF[:SCALE]`` each, see
    :func:`workers.source.lora.resolve_lora`, each at its ``lora_revisions`` entry) are fused after the fetch.
    A single-file checkpoint source
    (:mod:`workers.source.checkpoint`; ``checkpoint`` picks the file) is unpacked with its architecture's shipped
    configs, or with those of ``config`` (a diffusers pipeline at ``config_revision``: its configs only).

    Raises SourceNotFoundError, UnsupportedModelError, UnsafeWeightsError, GatedSourceError, SourceError.
    """
    configs = resolve_config(config, revision=config_revision, token=token, endpoint=endpoint) if config else None
    found = _resolve_main(source, revision=revision, source_id=source_id, allow_pickle=allow_pickle,
                          need_safety_checker=need_safety_checker, token=token, endpoint=endpoint,
                          max_bytes=max_bytes, checkpoint=checkpoint, config=configs)
    if found.checkpoint is None and (checkpoint or config):
        flag = "--checkpoint" if checkpoint else "--config"
        raise OptionsError(f"{flag} is for single-file checkpoints, and {found.id} is a {found.pipeline_class} "
                           "folder", hint=f"Drop {flag}.")
    require_base(found, base)
    extras = [("config", configs)] if configs is not None else []
    if base:
        extras.append(("base", resolve_base(found, base, revision=base_revision, token=token, endpoint=endpoint)))
    if refiner:
        if found.pipeline_class not in XL_PIPELINES:
            raise OptionsError(f"--refiner needs an SDXL base source, and {found.id} is a {found.pipeline_class}",
                               hint="Drop --refiner, or convert an SDXL base model.")
        extras.append(("refiner", resolve_refiner(refiner, revision=refiner_revision, allow_pickle=allow_pickle,
                                                  token=token, endpoint=endpoint, max_bytes=max_bytes)))
    if vae:
        extras.append(("vae", resolve_vae(vae, revision=vae_revision, token=token, endpoint=endpoint)))
    if loras and found.pipeline_class not in SUPPORTED_PIPELINES:
        raise OptionsError(f"--lora is for pipelines, and {found.id} is a {found.pipeline_class}",
                           hint="Pass --lora with the pipeline the LoRA was trained for.")
    for i, lora in enumerate(loras):
        revision_i = lora_revisions[i] if i < len(lora_revisions) else None
        extras.append((f"lora{i}", resolve_lora(lora, revision=revision_i, token=token, endpoint=endpoint)))
    return replace(found, extras=tuple(extras)) if extras else found


def _resolve_main(source: str, *, revision: str | None, source_id: str | None, allow_pickle: bool,
                  need_safety_checker: bool, token: str | None, endpoint: str | None, max_bytes: int,
                  checkpoint: str | None = None, config: Source | None = None) -> Source:
    path = Path(source).expanduser()
    if path.exists():
        if revision:
            raise SourceError(f"--revision applies to Hub repos, but {source} is a local folder",
                              source=source, hint="Drop --revision, or pass a Hub repo id.")
        return resolve_local(path, source_id=source_id, allow_pickle=allow_pickle,
                             need_safety_checker=need_safety_checker, max_bytes=max_bytes, checkpoint=checkpoint,
                             config=config, token=token, endpoint=endpoint)
    if source.startswith((".", "/", "~")):
        raise SourceNotFoundError(f"no folder at {source}", source=source,
                                  hint="Check the path, or pass a Hub repo id like org/name.")
    if not looks_like_repo_id(source):
        raise SourceNotFoundError(
            f"{source!r} is neither a local folder nor a valid Hub repo id", source=source,
            hint="Pass a diffusers folder or a repo id like stabilityai/stable-diffusion-2-1-base.")
    return resolve_hub(source, revision=revision, allow_pickle=allow_pickle, token=token,
                       endpoint=endpoint, need_safety_checker=need_safety_checker, max_bytes=max_bytes,
                       checkpoint=checkpoint, config=config)


def resolve_local(path: Path, *, source_id: str | None = None, allow_pickle: bool = False,
                  need_safety_checker: bool = True, max_bytes: int = DEFAULT_MAX_BYTES, checkpoint: str | None = None,
                  config: Source | None = None, token: str | None = None, endpoint: str | None = None) -> Source:
    """Check a local diffusers folder (a pipeline, or a ControlNet), or a single-file checkpoint (the file, or a
    folder holding it)."""
    path = path.resolve()
    if source_id is not None and not looks_like_repo_id(source_id):
        raise SourceError(f"--source-id {source_id!r} is not a valid repo id", source=str(path),
                          hint="Use the form org/name.")
    if path.is_file():  # a checkpoint file: its folder, of which only that file is read
        return _local_checkpoint(path.parent, [path.name], path.name, name=source_id or path.stem, license_=None,
                                 repo_id=source_id, allow_pickle=allow_pickle, config=config, token=token,
                                 endpoint=endpoint)
    sizes = source_files(path, source=str(path))
    files = list(sizes)
    license_ = card_license_of(path / "README.md")
    name = source_id or path.name
    config_json = root_config(path, source=str(path)) if not (path / "model_index.json").is_file() else None
    if not (path / "model_index.json").is_file() and not is_controlnet(config_json) and candidates(files):
        return _local_checkpoint(path, files, checkpoint, name=name, license_=license_, repo_id=source_id,
                                 allow_pickle=allow_pickle, config=config, token=token, endpoint=endpoint)
    config = config_json
    if is_controlnet(config):
        found = controlnet_source(str(path), config, files, allow_pickle=allow_pickle, id=name, license=license_,
                                  path=path, repo_id=source_id)
        check_weight_files(path, list(found.weight_files["controlnet"]), source=str(path))
        return found
    index = read_model_index(path / "model_index.json", source=str(path), files=files)
    checked = check_pipeline(index, files, source=str(path), allow_pickle=allow_pickle,
                             need_safety_checker=need_safety_checker, sizes=sizes, max_bytes=max_bytes)
    # the files are at hand: their configs and weight headers are checked now, before any work
    check_configs(path)
    check_weight_files(path, [f for names in checked["weight_files"].values() for f in names], source=str(path))
    return Source(id=name, license=license_, path=path, repo_id=source_id, **checked)


def _local_checkpoint(folder: Path, files: list[str], wanted: str | None, *, name: str, license_: str | None,
                      repo_id: str | None, allow_pickle: bool, config: Source | None, token: str | None,
                      endpoint: str | None) -> Source:
    def shapes_of(file: str) -> dict:
        check_weight_files(folder, [file], source=str(folder / file))
        return local_shapes(folder / file, source=str(folder))

    fields = checkpoint_fields(str(folder), files, wanted=wanted, allow_pickle=allow_pickle, shapes_of=shapes_of,
                               config=config, read_config=_config_reader(config, token, endpoint))
    fields["checkpoint_sha256"] = sha256_of(folder / fields["checkpoint"])
    return Source(id=name, license=license_, path=folder, repo_id=repo_id, **fields)


def _config_reader(config: Source | None, token: str | None, endpoint: str | None):
    return None if config is None else \
        (lambda names: read_configs(config, names, label="--config", token=token, endpoint=endpoint))


def resolve_config(ref: str, *, revision: str | None = None, token: str | None = None,
                   endpoint: str | None = None) -> Source:
    """``--config``: the diffusers pipeline (a Hub repo at ``revision``, else its main branch, or a folder) whose
    configs and tokenizers a single-file checkpoint is unpacked with; none of its weights are fetched."""
    found = resolve_source(ref, revision=revision, token=token, endpoint=endpoint, need_safety_checker=False)
    if found.checkpoint is not None:
        raise OptionsError(f"--config {ref} is a single-file checkpoint, not a diffusers pipeline",
                           hint="Pass --config with a diffusers pipeline (a repo or folder with model_index.json).")
    configs_only = replace(found, weight_files={}, weight_variant={}, components=tuple(
        c for c in found.components if c in ("text_encoder", "text_encoder_2", "unet", "vae", "tokenizer",
                                             "tokenizer_2")))
    return configs_only.pinned(found.files) if found.files is not None else configs_only


def resolve_hub(repo_id: str, *, revision: str | None = None, allow_pickle: bool = False,
                token: str | None = None, endpoint: str | None = None,
                need_safety_checker: bool = True, max_bytes: int = DEFAULT_MAX_BYTES,
                checkpoint: str | None = None, config: Source | None = None) -> Source:
    """Ask the Hub about a repo, pin the revision to a commit sha and check the file list."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(repo_id, revision):
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        files = [s.rfilename for s in info.siblings or []]
        sizes = {s.rfilename: s.size for s in info.siblings or [] if s.size is not None}
        card = info.card_data
        license_ = license_id(card.get("license")) if card is not None else None
        if "model_index.json" not in files:
            root = read_json(Path(hf_hub_download(repo_id, "config.json", revision=info.sha, token=token,
                                                  endpoint=endpoint)), label="config.json", source=repo_id) \
                if "config.json" in files else None
            if is_controlnet(root):
                return controlnet_source(repo_id, root, files, allow_pickle=allow_pickle, id=repo_id,
                                         repo_id=repo_id, revision=revision or "main", sha=info.sha,
                                         private=bool(info.private), license=license_).pinned(sizes)
            if candidates(files):
                return _hub_checkpoint(repo_id, info, files, sizes, checkpoint, license_=license_,
                                       revision=revision, allow_pickle=allow_pickle, config=config,
                                       token=token, endpoint=endpoint, max_bytes=max_bytes)
            raise_not_diffusers(repo_id, files)
        index_path = hf_hub_download(repo_id, "model_index.json", revision=info.sha, token=token,
                                     endpoint=endpoint)
    index = read_model_index(Path(index_path), source=repo_id, files=files)
    checked = check_pipeline(index, files, source=repo_id, allow_pickle=allow_pickle,
                             need_safety_checker=need_safety_checker, sizes=sizes, max_bytes=max_bytes)
    return Source(id=repo_id, repo_id=repo_id, revision=revision or "main", sha=info.sha,
                  license=license_, private=bool(info.private), **checked).pinned(sizes)


def _hub_checkpoint(repo_id: str, info, files: list[str], sizes: dict[str, int], wanted: str | None, *,
                    license_: str | None, revision: str | None, allow_pickle: bool, config: Source | None,
                    token: str | None, endpoint: str | None, max_bytes: int) -> Source:
    def shapes_of(file: str) -> dict:
        if not file.endswith(".safetensors"):
            raise UnsafeWeightsError(f"{repo_id}: {file} is a pickle checkpoint, which jobs do not load",
                                     source=repo_id, files=[file])
        if sizes.get(file, 0) > max_bytes:
            raise SourceError(f"{repo_id}: {file} is {sizes[file] / 1e9:.1f} GB, over the limit of "
                              f"{max_bytes / 1e9:.1f} GB", source=repo_id,
                              hint="Raise COREML_PUBLISH_MAX_SOURCE_GB if this is the model you expect.")
        return hub_shapes(repo_id, file, sha=info.sha, token=token, endpoint=endpoint)

    fields = checkpoint_fields(repo_id, files, wanted=wanted, allow_pickle=allow_pickle, shapes_of=shapes_of,
                               config=config, read_config=_config_reader(config, token, endpoint))
    lfs = next((s.lfs for s in info.siblings or [] if s.rfilename == fields["checkpoint"]), None)
    fields["checkpoint_sha256"] = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None))
    return Source(id=repo_id, repo_id=repo_id, revision=revision or "main", sha=info.sha, license=license_,
                  private=bool(info.private), **fields).pinned(sizes)


def resolve_base(controlnet: Source, ref: str, *, revision: str | None = None, token: str | None = None,
                 endpoint: str | None = None) -> Source:
    """``--base``: the SD 1.x / 2.x pipeline a ControlNet source is used with (a Hub repo at ``revision``, else its
    main branch, or a folder), checked to fit the ControlNet (:func:`workers.source.controlnet.check_fit`); only its
    configs and tokenizer are fetched.  Raises as :func:`resolve_source`."""
    found = base_only(resolve_source(ref, revision=revision, token=token, endpoint=endpoint,
                                     need_safety_checker=False))
    unet, vae = read_configs(found, BASE_FILES, label="--base", token=token, endpoint=endpoint)
    config, = read_configs(controlnet, ("config.json",), token=token, endpoint=endpoint)
    check_fit(config, unet, vae, source=controlnet.id, base=ref)
    return found


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
        with hub_errors(ref, revision):
            info = HfApi(endpoint=endpoint, token=token).model_info(ref, revision=revision, files_metadata=True)
            files = [s.rfilename for s in info.siblings or []]
    folder = "" if "config.json" in files else "vae" if "vae/config.json" in files else None
    if folder is None:
        raise SourceError(f"--vae {ref} holds no VAE: no config.json at its root or in vae/", source=ref,
                          hint="Pass a repo or folder with a diffusers AutoencoderKL (config.json and weights).")
    config_file = f"{folder}/config.json".lstrip("/")
    if info is None:
        config = read_json(path / config_file, label=f"--vae {config_file}", source=ref)
    else:
        with hub_errors(ref, revision):
            config = read_json(Path(hf_hub_download(ref, config_file, revision=info.sha, token=token,
                                                    endpoint=endpoint)), label=f"--vae {config_file}", source=ref)
    if config.get("_class_name") != "AutoencoderKL":
        raise UnsupportedModelError(f"--vae {ref} is not an AutoencoderKL VAE (its config's _class_name is "
                                    f"{str(config.get('_class_name'))[:60]})", source=ref,
                                    hint="Pass a diffusers AutoencoderKL VAE.")
    weights, variant, pickled = component_weights("vae", folder, files, ref)
    if pickled:  # loaded beside the source's own components, which are read as safetensors
        raise UnsafeWeightsError(f"--vae {ref} has only pickle weights ({', '.join(pickled)}); --vae takes "
                                 "safetensors weights only", source=ref, files=pickled)
    common = dict(pipeline_class="AutoencoderKL", model_index={}, components=("vae",),
                  weight_files={"vae": weights}, weight_variant={"vae": variant}, subfolder=folder)
    if info is None:
        return Source(id=path.resolve().name, path=path.resolve(), license=card_license_of(path / "README.md"),
                      **common)
    card = info.card_data
    sizes = {s.rfilename: s.size for s in info.siblings or [] if s.size is not None}
    return Source(id=ref, repo_id=ref, revision=revision or "main", sha=info.sha, private=bool(info.private),
                  license=license_id(card.get("license")) if card is not None else None, **common).pinned(sizes)


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
    unet = replace(found, components=("unet",), weight_files={"unet": found.weight_files["unet"]},
                   weight_variant={"unet": found.weight_variant["unet"]}, subfolder="unet")
    return unet.pinned(found.files) if found.files is not None else unet  # only the UNet's files are fetched
