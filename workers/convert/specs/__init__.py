"""Declarative per-component export specs: inputs, outputs, shapes, dtypes, how to build the module.

One small class per package component (one module per kind: text encoders, UNets, VAE, safety checker),
registered in ``SPECS`` here.  Names, shapes and layouts follow the
Core ML interface contract the Swift ``StableDiffusion`` package relies on:

| component      | inputs                                                    | outputs                         |
|----------------|-----------------------------------------------------------|---------------------------------|
| text_encoder   | input_ids (1, S) fp32                                     | last_hidden_state, pooled_outputs |
| unet           | sample (B,4,h,w), timestep (B,), encoder_hidden_states (B,C,1,S), fp16 | noise_pred (B,4,h,w) fp32 |
| vae_decoder    | z (1,4,h,w) fp16                                          | image (1,3,fh,fw) fp32          |
| vae_encoder    | x (1,3,fh,fw) fp16                                        | latent (1,8,h,w) fp32           |

SDXL (Apple's Swift ``StableDiffusionXLPipeline``): both text encoders (``text_encoder``, ``text_encoder_2``)
output ``hidden_embeds`` (the penultimate layer's hidden states) and ``pooled_outputs``; the UNet also takes
``text_embeds`` (B, P) and ``time_ids`` (B, 6; a refiner's 5), fp16; a VAE that overflows in float16 (the
original SDXL one) is converted in float32, with float32 inputs.  :func:`spec_for` picks the SDXL text
encoder spec; the others read the difference from the geometry.

| controlled_unet | the unet's, then additional_residual_0..N-1 (B,c,h/f,w/f) fp16   | noise_pred (B,4,h,w) fp32 |
| controlnet     | the unet's, then controlnet_cond (B,3,fh,fw) fp16         | additional_residual_0..N-1 fp32 |
| safety_checker | clip_input (1,3,224,224), images (1,H,W,3), adjustment (1,) | filtered_images, has_nsfw_concepts, concept_scores |
"""

from __future__ import annotations

from workers.convert.geometry import Geometry
from workers.convert.specs.base import ComponentSpec
from workers.convert.specs.controlnet import ControlledUnetSpec, ControlNetSpec
from workers.convert.specs.safety import SafetyCheckerSpec
from workers.convert.specs.text import TextEncoder2Spec, TextEncoderSpec, XLTextEncoderSpec
from workers.convert.specs.unet import RefinerSpec, UNetSpec
from workers.convert.specs.vae import VAEDecoderSpec, VAEEncoderSpec

__all__ = ["SPECS", "ComponentSpec", "UNetSpec", "spec_for"]

SPECS: dict[str, ComponentSpec] = {
    spec.name: spec
    for spec in (TextEncoderSpec(), TextEncoder2Spec(), UNetSpec(), ControlledUnetSpec(), RefinerSpec(),
                 VAEDecoderSpec(), VAEEncoderSpec(), SafetyCheckerSpec(), ControlNetSpec())
}
XL_SPECS: dict[str, ComponentSpec] = {"text_encoder": XLTextEncoderSpec()}


def spec_for(component: str, g: Geometry) -> ComponentSpec:
    """The spec of ``component`` for a pipeline of geometry ``g`` (SDXL's first text encoder differs)."""
    return XL_SPECS.get(component, SPECS[component]) if g.xl else SPECS[component]
