"""ControlNet: the UNet that takes a ControlNet's residuals (Swift's ``ControlledUnet``), and a ControlNet itself.

Apple's contract (its converter's ``--unet-support-controlnet`` and ``--convert-controlnet``, and the Swift
``StableDiffusion`` package that loads them): the ControlledUnet takes the UNet's three inputs, then
``additional_residual_0 … additional_residual_{N-1}`` (float16), one per output of the UNet's down path
(``conv_in``, every ResNet, every downsampler) and the mid block's last, each shaped like that point of the UNet
(``Geometry.residuals``); it adds them as diffusers' ``down_block_additional_residuals`` and
``mid_block_additional_residual`` do.  A ControlNet takes ``sample``, ``timestep``, ``encoder_hidden_states`` and
``controlnet_cond`` (the conditioning image, at the image size, values in [0, 1]) and outputs exactly those
residuals, under the same names.
"""

from __future__ import annotations

import torch

from workers.convert.attention import export_unet
from workers.convert.features import TensorSpec
from workers.convert.geometry import Geometry
from workers.convert.specs.base import ComponentSpec, Wrapper
from workers.convert.specs.loading import load_component
from workers.convert.specs.unet import UNetSpec

RESIDUAL = "additional_residual_{}"


def residual_specs(g: Geometry, dtype: str) -> list[TensorSpec]:
    """The residual features, in the order the ControlledUnet takes them and a ControlNet gives them."""
    shapes = g.residual_shapes()
    return [TensorSpec(RESIDUAL.format(i), shape, dtype,
                       "The mid block's residual from a ControlNet" if i == len(shapes) - 1 else
                       f"A ControlNet's residual for the UNet's down-path output {i}")
            for i, shape in enumerate(shapes)]


class ControlledUnetSpec(UNetSpec):
    """The UNet that also takes a ControlNet's residuals (``--controlled-unet``; SD 1.x / 2.x)."""

    name = "controlled_unet"
    needs = ("unet",)
    description = ("Denoising UNet that also takes a ControlNet's residuals: predicts the noise in a latent, "
                   "conditioned on text embeddings and a ControlNet's output.")

    def inputs(self, g):
        return super().inputs(g) + residual_specs(g, "float16")

    def conditioning(self, extra):
        """The residuals, as diffusers' UNet takes a ControlNet's: the down path's, then the mid block's."""
        return {"down_block_additional_residuals": tuple(extra[:-1]), "mid_block_additional_residual": extra[-1]}


class ControlNetSpec(ComponentSpec):
    """A diffusers ``ControlNetModel`` (a ControlNet repo converted with ``--base``)."""

    name = "controlnet"
    needs = ("controlnet",)
    description = "ControlNet: residuals for a ControlledUnet from a conditioning image (edges, depth, pose, …)."

    def inputs(self, g):
        unet = UNetSpec().inputs(g)[:3]
        return unet + [TensorSpec("controlnet_cond", (g.batch_size, 3, g.image_height, g.image_width), "float16",
                                  "The conditioning image (edges, depth, pose, …), RGB, values in [0, 1]")]

    def outputs(self, g):
        return residual_specs(g, "float32")

    def load(self, path, variants, use_safetensors):
        from diffusers import ControlNetModel

        return {"controlnet": load_component(ControlNetModel, path, "controlnet", use_safetensors=use_safetensors,
                                             variant=variants.get("controlnet"))}

    def reference(self, modules):
        def forward(self, sample, timestep, context, condition):
            down, mid = self.controlnet(sample, timestep, context.squeeze(2).transpose(1, 2), condition,
                                        return_dict=False)
            return (*down, mid)

        return Wrapper(forward, controlnet=modules["controlnet"]).eval()

    def export_module(self, modules, attention):
        def forward(self, sample, timestep, context, condition):
            down, mid = self.controlnet(sample, timestep, context, condition, return_dict=False)
            return (*down, mid)

        return Wrapper(forward, controlnet=export_unet(modules["controlnet"], attention)).eval()

    def sample_inputs(self, g, seed):
        inputs = UNetSpec().sample_inputs(g, seed)
        gen = torch.Generator().manual_seed(seed + 7919)  # the image: its own stream, after the UNet's inputs
        inputs["controlnet_cond"] = torch.rand((g.batch_size, 3, g.image_height, g.image_width), generator=gen)
        return inputs
