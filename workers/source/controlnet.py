"""ControlNet sources: a diffusers ``ControlNetModel`` repo or folder (``config.json`` and weights at its root, as
ControlNets are published), converted for the SD 1.x / 2.x pipeline it is used with, ``--base``.

The base gives the sizes (latent and image size, text width, sequence length) and is held to the ControlNet by
config, not by the card's ``base_model`` name, so fine-tunes of one base share its ControlNets: the ControlNet's
cross-attention width, channels, layers per block and down blocks must be its UNet's (its residuals are added
to exactly that UNet's down path), and its conditioning embedding must downsample by the base VAE's factor (the
conditioning image is the generated image's size).  Only the base's configs and tokenizer are fetched.
SDXL ControlNets are refused: Apple's Swift package runs none.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from workers.errors import OptionsError, SourceError, UnsafeWeightsError, UnsupportedModelError
from workers.source.config_checks import residual_levels
from workers.source.configs import MAX_CHANNELS, Config, read_json, shown
from workers.source.pipelines import SD_PIPELINES, component_weights
from workers.source.source import Source

CONTROLNET_CLASS = "ControlNetModel"
BASE_FILES = ("unet/config.json", "vae/config.json")  # what the fit is judged by


def is_controlnet(config: dict) -> bool:
    """Whether a root ``config.json`` is a diffusers ControlNet's."""
    return isinstance(config, dict) and config.get("_class_name") == CONTROLNET_CLASS


def controlnet_source(ref: str, config: dict, files: list[str], *, allow_pickle: bool, **found) -> Source:
    """The Source of a ControlNet repo or folder whose root ``config.json`` is ``config`` (``found``: its id,
    path or Hub facts).  Refuses SDXL and other ControlNets the Swift pipeline cannot run."""
    data = Config(config, "config.json", ref)
    if data.get("addition_embed_type") is not None or data.get("projection_class_embeddings_input_dim"):
        raise UnsupportedModelError(f"{ref} is an SDXL ControlNet, and Apple's Swift pipeline runs ControlNets with "
                                    "SD 1.x / 2.x only", source=ref, hint="Pick an SD 1.x / 2.x ControlNet.")
    if data.get("class_embed_type") is not None or data.get("encoder_hid_dim") is not None:
        raise UnsupportedModelError(f"{ref}: ControlNets with class or encoder-hidden embeddings are not supported",
                                    source=ref, hint="Pick an SD 1.x / 2.x ControlNet.")
    if data.integer("conditioning_channels", 3, high=MAX_CHANNELS) != 3:
        raise UnsupportedModelError(f"{ref}: a ControlNet with {data.get('conditioning_channels')} conditioning "
                                    "channels is not supported (the Swift pipeline feeds an RGB image)", source=ref,
                                    hint="Pick a ControlNet conditioned on an RGB image.")
    weights, variant, pickled = component_weights("controlnet", "", files, ref)
    if pickled and not allow_pickle:
        raise UnsafeWeightsError(f"{ref} has only pickle weights ({', '.join(pickled)}); loading pickle runs "
                                 "arbitrary code", source=ref, files=pickled)
    return Source(pipeline_class=CONTROLNET_CLASS, model_index={}, components=("controlnet",),
                  weight_files={"controlnet": weights}, weight_variant={"controlnet": variant},
                  use_safetensors=not pickled, subfolder="", **found)


def base_only(base: Source) -> Source:
    """The base pipeline as a ControlNet conversion reads it: its configs and tokenizer, no weights."""
    if base.pipeline_class not in SD_PIPELINES:
        raise UnsupportedModelError(f"--base {base.id} is a {base.pipeline_class}; ControlNets are converted for "
                                    "SD 1.x / 2.x pipelines only (Apple's Swift pipeline runs no SDXL ControlNet)",
                                    source=base.id, hint="Pass the SD 1.x / 2.x pipeline the ControlNet was trained for.")
    configs_only = replace(base, weight_files={}, weight_variant={}, components=tuple(
        c for c in base.components if c in ("text_encoder", "unet", "vae", "tokenizer")))
    return configs_only.pinned(base.files) if base.files is not None else configs_only


def check_fit(controlnet: dict, unet: dict, vae: dict, *, source: str, base: str) -> None:
    """Refuse (UnsupportedModelError, naming the mismatch) a ControlNet whose residuals would not fit the base's
    UNet, or whose conditioning image is not the base's image size."""
    cn, un = Config(controlnet, "config.json", source), Config(unet, "unet/config.json", base)
    pairs = [("cross_attention_dim", cn.get("cross_attention_dim", 1280), un.get("cross_attention_dim", 1280),
              "text encoder width"),
             ("in_channels", cn.get("in_channels", 4), un.get("in_channels", 4), "latent channels"),
             ("block_out_channels", _listed(cn.get("block_out_channels")), _listed(un.get("block_out_channels")),
              "UNet channels"),
             ("down_block_types", _listed(cn.get("down_block_types")), _listed(un.get("down_block_types")),
              "UNet down blocks")]
    for key, ours, theirs, what in pairs:
        if ours != theirs:
            raise UnsupportedModelError(f"{source} does not fit --base {base}: its {key} {shown(ours)} is not the "
                                        f"base's {what} {shown(theirs)}", source=source,
                                        hint="Pass the base the ControlNet was trained for (same architecture).")
    if residual_levels(cn) != residual_levels(un):
        raise UnsupportedModelError(f"{source} does not fit --base {base}: its residuals "
                                    f"{list(residual_levels(cn))} are not the base UNet's {list(residual_levels(un))}",
                                    source=source, hint="Pass the base the ControlNet was trained for.")
    steps = len(cn.integers("conditioning_embedding_out_channels", [16, 32, 96, 256], high=MAX_CHANNELS)) - 1
    vae_factor = 2 ** (len(Config(vae, "vae/config.json", base).integers("block_out_channels", [64],
                                                                          high=MAX_CHANNELS)) - 1)
    if 2 ** steps != vae_factor:
        raise UnsupportedModelError(f"{source} does not fit --base {base}: its conditioning image is {2 ** steps}x "
                                    f"the latent size, the base's images are {vae_factor}x", source=source,
                                    hint="Pass the base the ControlNet was trained for.")


def read_configs(source: Source, names: tuple[str, ...], *, label: str = "", token: str | None,
                 endpoint: str | None) -> list[dict]:
    """JSON files of a resolved source (repo-relative ``names``), read from its folder or downloaded at its pinned
    commit; ``label`` prefixes their names in errors (``--base``)."""
    from huggingface_hub import hf_hub_download

    from workers.hub.client import hub_errors

    found = []
    for name in names:
        if source.path is not None:
            file = source.path / name
        else:
            with hub_errors(source.repo_id, source.sha):
                file = Path(hf_hub_download(source.repo_id, name, revision=source.sha, token=token,
                                            endpoint=endpoint))
        found.append(read_json(file, label=f"{label} {name}".strip(), source=source.id))
    return found


def require_base(source: Source, base: str | None) -> None:
    """A ControlNet source needs ``--base``; any other source takes none."""
    if source.pipeline_class == CONTROLNET_CLASS and base is None:
        raise OptionsError(f"{source.id} is a ControlNet: it is converted for the SD 1.x / 2.x pipeline it is used "
                           "with", hint="Pass --base with that pipeline, e.g. --base "
                                        "stable-diffusion-v1-5/stable-diffusion-v1-5.")
    if source.pipeline_class != CONTROLNET_CLASS and base is not None:
        raise OptionsError(f"--base is for ControlNet sources, and {source.id} is a {source.pipeline_class}",
                           hint="Drop --base (use --controlled-unet to add a ControlledUnet to a pipeline).")


def _listed(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def root_config(path: Path, *, source: str) -> dict | None:
    """A folder's root ``config.json`` (a single model's, such as a ControlNet), or None."""
    file = path / "config.json"
    if not file.is_file():
        return None
    try:
        return read_json(file, label="config.json", source=source)
    except SourceError:
        return None
