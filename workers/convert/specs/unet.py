"""The denoising UNet, and an SDXL refiner's UNet shipped beside a base's."""

from __future__ import annotations

from dataclasses import replace

import torch

from workers.convert.attention import export_unet
from workers.convert.features import TensorSpec
from workers.convert.geometry import Geometry
from workers.convert.specs.base import ComponentSpec, Wrapper
from workers.convert.specs.loading import load_component, load_lean_component


class UNetSpec(ComponentSpec):
    name = "unet"
    needs = ("unet",)
    lean = True
    description = "Denoising UNet: predicts the noise in a latent, conditioned on text embeddings."

    def inputs(self, g):
        b = g.batch_size
        return [
            TensorSpec("sample", (b, g.latent_channels, g.latent_height, g.latent_width), "float16",
                       "The low resolution latent feature maps being denoised through reverse diffusion"),
            TensorSpec("timestep", (b,), "float16",
                       "A value emitted by the associated scheduler object to condition the model on a "
                       "given noise schedule"),
            TensorSpec("encoder_hidden_states", (b, g.context_dim, 1, g.sequence_length), "float16",
                       "Output embeddings from the associated text_encoder model to condition to generated "
                       f"image on text. A maximum of {g.sequence_length} tokens are allowed; longer text is "
                       "truncated. Shorter text does not reduce computation."),
        ] + ([
            TensorSpec("text_embeds", (b, g.text_embeds_dim), "float16",
                       "The pooled text embedding of the second text encoder"),
            TensorSpec("time_ids", (b, g.time_ids), "float16",
                       "The micro-conditioning: original size, crop top-left and target size (a refiner: "
                       "original size, crop top-left and aesthetic score)"),
        ] if g.xl else [])

    def outputs(self, g):
        return [TensorSpec("noise_pred", (g.batch_size, g.latent_channels, g.latent_height, g.latent_width),
                           "float32", "Same shape as the `sample` input. The predicted noise to facilitate "
                           "the reverse diffusion (denoising) process")]

    def load(self, path, variants, use_safetensors):
        from diffusers import UNet2DConditionModel

        return {"unet": load_component(UNet2DConditionModel, path, "unet", use_safetensors=use_safetensors,
                              variant=variants.get("unet"))}

    def load_lean(self, path, variants, *, meta):
        from diffusers import UNet2DConditionModel

        return {"unet": load_lean_component(UNet2DConditionModel, path, self.needs[0], variant=variants.get(self.needs[0]),
                                   meta=meta)}

    def conditioning(self, extra: tuple[torch.Tensor, ...]) -> dict:
        """The UNet's keyword arguments for the inputs after the first three (SDXL's added conditioning)."""
        return {"added_cond_kwargs": _added(extra)}

    def reference(self, modules):
        spec = self

        def forward(self, sample, timestep, context, *extra):
            return (self.unet(sample, timestep, context.squeeze(2).transpose(1, 2), return_dict=False,
                              **spec.conditioning(extra))[0],)

        return Wrapper(forward, unet=modules["unet"]).eval()

    def export_module(self, modules, attention):
        spec = self

        def forward(self, sample, timestep, context, *extra):
            return (self.unet(sample, timestep, context, return_dict=False, **spec.conditioning(extra))[0],)

        return Wrapper(forward, unet=export_unet(modules["unet"], attention)).eval()

    def sample_inputs(self, g, seed):
        gen = torch.Generator().manual_seed(seed)
        inputs = {t.name: torch.randn(t.shape, generator=gen) for t in self.inputs(g)}
        # a timestep a scheduler emits (an integer below 1,000: exact in float16), drawn like the rest
        inputs["timestep"] = torch.randint(1, 1000, (1,), generator=gen).float().expand(g.batch_size).clone()
        if g.xl:  # what the Swift pipeline feeds: sizes in pixels, crops, a base's target size or a refiner's score
            side = float(g.image_height)
            values = [side, float(g.image_width), 0.0, 0.0] + ([side, float(g.image_width)] if g.time_ids == 6
                                                               else [6.0])
            inputs["time_ids"] = torch.tensor(values).expand(g.batch_size, g.time_ids).clone()
        return inputs


class RefinerSpec(UNetSpec):
    """An SDXL refiner's UNet shipped beside a base's (``--refiner``): Swift's ``UnetRefiner``, taking the second
    text encoder's hidden states and a refiner's five time_ids."""

    name = "refiner"
    needs = ("refiner",)
    description = "SDXL refiner UNet: the last denoising steps, conditioned on the second text encoder."

    def _own(self, g: Geometry) -> Geometry:
        return replace(g, context_dim=g.refiner_context_dim, text_embeds_dim=g.refiner_text_embeds_dim,
                       time_ids=g.refiner_time_ids)

    def inputs(self, g):
        return super().inputs(self._own(g))

    def sample_inputs(self, g, seed):
        return super().sample_inputs(self._own(g), seed)

    def load(self, path, variants, use_safetensors):
        from diffusers import UNet2DConditionModel

        return {"unet": load_component(UNet2DConditionModel, path, "refiner", use_safetensors=use_safetensors,
                              variant=variants.get("refiner"))}


def _added(added: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor] | None:
    """SDXL's added conditioning, fed after the three SD inputs in the spec's order."""
    return {"text_embeds": added[0], "time_ids": added[1]} if added else None
