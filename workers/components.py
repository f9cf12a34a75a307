"""The package components a pipeline is converted into, as plain facts (no toolchain imported): their order,
which are converted once per attention layout, and the UNets that are also cut into two chunks.

The export specs (:mod:`workers.convert.specs`) implement exactly these components, in this order (a test
holds the two together); the options, the job service and the packaging step read the facts here.
"""

from __future__ import annotations

COMPONENTS: tuple[str, ...] = ("text_encoder", "text_encoder_2", "unet", "controlled_unet", "refiner", "vae_decoder",
                               "vae_encoder", "safety_checker", "controlnet")

# converted once per attention layout; every other component is converted once and shared by all layouts
PER_LAYOUT: frozenset[str] = frozenset({"unet", "controlled_unet", "refiner", "controlnet"})

# the same program at every image size (``--resolution``): converted once, placed in every size's variants; every
# other component takes the image (or latent) size in its inputs and is converted at each size
SIZE_INDEPENDENT: frozenset[str] = frozenset({"text_encoder", "text_encoder_2"})

# converted only when asked for (``--controlled-unet``): the option that asks for each
ON_REQUEST: dict[str, str] = {"controlled_unet": "controlled_unet"}

# the UNets that are cut in two (the SDXL refiner's too: Swift's UnetRefinerChunk1/2), and their chunks' names
CHUNKED: dict[str, tuple[str, str]] = {"unet": ("unet_chunk1", "unet_chunk2"),
                                       "controlled_unet": ("controlled_unet_chunk1", "controlled_unet_chunk2"),
                                       "refiner": ("refiner_chunk1", "refiner_chunk2")}


def depends_on_attention(component: str) -> bool:
    """Whether a component's program differs between attention layouts (converted once per layout)."""
    return component in PER_LAYOUT


def whole_of(component: str) -> str | None:
    """The UNet a chunk component was cut from (``unet``, ``refiner``); None for any other component."""
    return next((whole for whole, pair in CHUNKED.items() if component in pair), None)


def pipeline_of(components: set[str] | frozenset[str]) -> str:
    """Which Swift pipeline a set of components is for: ``sd`` (1.x/2.x), ``sdxl``, ``sdxl-refiner`` (a second
    text encoder without a first), or ``controlnet`` (a ControlNet repo's, loaded beside an SD 1.x/2.x one)."""
    if "controlnet" in components:
        return "controlnet"
    if "text_encoder_2" not in components:
        return "sd"
    return "sdxl" if "text_encoder" in components else "sdxl-refiner"
