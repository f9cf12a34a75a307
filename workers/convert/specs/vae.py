"""The VAE's decoder (latent to image) and encoder (image to latent distribution)."""

from __future__ import annotations

import torch

from workers.convert.features import TensorSpec
from workers.convert.specs.base import ComponentSpec, Wrapper
from workers.convert.specs.loading import load_component


class VAEDecoderSpec(ComponentSpec):
    name = "vae_decoder"
    needs = ("vae",)
    palettize = False
    description = "VAE decoder: post_quant_conv and decoder, latent (already scaled) to image."

    def precision(self, g):
        return g.vae_precision

    def inputs(self, g):
        return [TensorSpec("z", (1, g.latent_channels, g.latent_height, g.latent_width), g.vae_precision,
                           "The denoised latent embeddings from the unet model after the last step of "
                           "reverse diffusion, divided by the VAE scaling factor")]

    def outputs(self, g):
        return [TensorSpec("image", (1, 3, g.image_height, g.image_width), "float32",
                           "Generated image normalized to range [-1, 1]")]

    def load(self, path, variants, use_safetensors):
        from diffusers import AutoencoderKL

        return {"vae": load_component(AutoencoderKL, path, "vae", use_safetensors=use_safetensors,
                             variant=variants.get("vae"))}

    def export_module(self, modules, attention):
        vae = modules["vae"]

        def forward(self, z):
            return (self.decoder(self.post_quant_conv(z)),)

        return Wrapper(forward, post_quant_conv=vae.post_quant_conv, decoder=vae.decoder).eval()


class VAEEncoderSpec(ComponentSpec):
    name = "vae_encoder"
    needs = ("vae",)
    palettize = False
    description = "VAE encoder: image to the latent distribution's mean and log-variance."

    def precision(self, g):
        return g.vae_precision

    def inputs(self, g):
        return [TensorSpec("x", (1, 3, g.image_height, g.image_width), g.vae_precision,
                           "An image normalized to range [-1, 1], for image-to-image and in-painting")]

    def outputs(self, g):
        return [TensorSpec("latent", (1, 2 * g.latent_channels, g.latent_height, g.latent_width), "float32",
                           "The latent distribution's mean (channels 0-3) and log-variance (4-7)")]

    def load(self, path, variants, use_safetensors):
        return VAEDecoderSpec.load(self, path, variants, use_safetensors)

    def export_module(self, modules, attention):
        vae = modules["vae"]

        def forward(self, x):
            return (self.quant_conv(self.encoder(x)),)

        return Wrapper(forward, encoder=vae.encoder, quant_conv=vae.quant_conv).eval()

    def sample_inputs(self, g, seed):
        gen = torch.Generator().manual_seed(seed)
        return {"x": torch.rand((1, 3, g.image_height, g.image_width), generator=gen) * 2 - 1}
