"""The safety checker: flags and blanks images close to unsafe concepts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workers.convert.features import TensorSpec
from workers.convert.specs.base import ComponentSpec, Wrapper
from workers.convert.specs.loading import load_component


class SafetyCheckerSpec(ComponentSpec):
    name = "safety_checker"
    needs = ("safety_checker",)
    palettize = False  # float16 in the palettized repo too, as Apple's (a copy, not converted twice)
    compared_outputs = ("concept_scores",)
    description = "Safety checker: flags and blanks images close to unsafe concepts."

    def inputs(self, g):
        s = g.safety_image_size
        return [
            TensorSpec("clip_input", (1, 3, s, s), "float16",
                       f"The normalized image input tensor resized to ({s}x{s}) in channels-first (BCHW) format"),
            TensorSpec("images", (1, g.image_height, g.image_width, 3), "float16",
                       "Output of the vae_decoder in channels-last (BHWC) format"),
            TensorSpec("adjustment", (1,), "float16",
                       "Bias added to the concept scores to trade off increased recall for reduced "
                       "precision in the safety checker classifier"),
        ]

    def outputs(self, g):
        return [
            TensorSpec("filtered_images", (1, g.image_height, g.image_width, 3), "float32",
                       "Identical to the input `images`; an image with sensitive content is replaced by zeros"),
            TensorSpec("has_nsfw_concepts", (1,), "float32",
                       "Whether the safety checker found sensitive content in the image"),
            TensorSpec("concept_scores", (1, 0), "float32",  # width filled from the module
                       "Scores before thresholding at zero; tune `adjustment` with them"),
        ]

    def load(self, path, variants, use_safetensors):
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

        return {"safety_checker": load_component(StableDiffusionSafetyChecker, path, "safety_checker",
                                        use_safetensors=use_safetensors,
                                        variant=variants.get("safety_checker"))}

    def reference(self, modules):
        checker = modules["safety_checker"]

        def forward(self, clip_input, images, adjustment):
            pooled = self.checker.vision_model(clip_input)[1]
            embeds = F.normalize(self.checker.visual_projection(pooled))
            special = embeds @ F.normalize(self.checker.special_care_embeds).t()
            concepts = embeds @ F.normalize(self.checker.concept_embeds).t()
            special_scores = special - self.checker.special_care_embeds_weights + adjustment
            special_care = (special_scores > 0).float().amax(dim=1, keepdim=True)
            scores = concepts - self.checker.concept_embeds_weights + special_care * 0.01
            flagged = (scores > 0).float().amax(dim=1)
            filtered = images * (1.0 - flagged.view(-1, 1, 1, 1))
            return filtered, flagged, scores

        return Wrapper(forward, checker=checker).eval()

    def export_module(self, modules, attention):
        """The reference with each concept comparison as one linear layer: unit-length concept directions
        as weights, minus the thresholds as biases.  coremltools folds the reference's normalisation and
        subtraction into exactly such a layer; here its weights are parameters, found in the package."""
        checker = modules["safety_checker"]

        def scores_layer(embeds: torch.Tensor, thresholds: torch.Tensor) -> nn.Linear:
            layer = nn.Linear(embeds.shape[1], embeds.shape[0])
            with torch.no_grad():
                layer.weight.copy_(F.normalize(embeds))
                layer.bias.copy_(-thresholds)
            return layer.requires_grad_(False)

        def forward(self, clip_input, images, adjustment):
            pooled = self.vision_model(clip_input)[1]
            embeds = F.normalize(self.visual_projection(pooled))
            special_scores = self.special_care(embeds) + adjustment
            special_care = (special_scores > 0).float().amax(dim=1, keepdim=True)
            scores = self.concepts(embeds) + special_care * 0.01
            flagged = (scores > 0).float().amax(dim=1)
            filtered = images * (1.0 - flagged.view(-1, 1, 1, 1))
            return filtered, flagged, scores

        return Wrapper(forward, vision_model=checker.vision_model, visual_projection=checker.visual_projection,
                        special_care=scores_layer(checker.special_care_embeds, checker.special_care_embeds_weights),
                        concepts=scores_layer(checker.concept_embeds, checker.concept_embeds_weights)).eval()

    def resolved_outputs(self, g, modules):
        """The concept scores are as wide as the checker has concepts."""
        n = int(modules["safety_checker"].concept_embeds.shape[0])
        return [TensorSpec(t.name, (1, n), t.dtype, t.description) if t.name == "concept_scores" else t
                for t in self.outputs(g)]

    def sample_inputs(self, g, seed):
        gen = torch.Generator().manual_seed(seed)
        s = g.safety_image_size
        return {"clip_input": torch.randn((1, 3, s, s), generator=gen),
                "images": torch.rand((1, g.image_height, g.image_width, 3), generator=gen),
                "adjustment": torch.zeros(1)}
