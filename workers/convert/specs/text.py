"""The text encoders: CLIP (SD 1.x/2.x), and SDXL's two (hidden states of the penultimate layer)."""

from __future__ import annotations

import torch

from workers.convert.features import TensorSpec
from workers.convert.geometry import Geometry
from workers.convert.specs.base import ComponentSpec, Wrapper
from workers.convert.specs.loading import load_component


class TextEncoderSpec(ComponentSpec):
    name = "text_encoder"
    needs = ("text_encoder",)
    input_dtype = "float32"
    description = "CLIP text encoder: token ids to the embeddings that condition the UNet."

    def inputs(self, g: Geometry) -> list[TensorSpec]:
        return [TensorSpec("input_ids", (1, g.sequence_length), "float32",
                           "The token ids that represent the input text")]

    def outputs(self, g: Geometry) -> list[TensorSpec]:
        return [
            TensorSpec("last_hidden_state", (1, g.sequence_length, g.context_dim), "float32",
                       "The token embeddings as encoded by the Transformer model"),
            TensorSpec("pooled_outputs", (1, g.context_dim), "float32",
                       "The version of the `last_hidden_state` output after pooling"),
        ]

    def load(self, path, variants, use_safetensors):
        from transformers import CLIPTextModel

        # eager attention traces to plain matmul/softmax that coremltools converts everywhere
        return {"text_encoder": load_component(CLIPTextModel, path, "text_encoder", use_safetensors=use_safetensors,
                                      variant=variants.get("text_encoder"), attn_implementation="eager")}

    def export_module(self, modules, attention):
        def forward(self, input_ids):
            out = self.text_encoder(input_ids.to(torch.int64), return_dict=False)
            return out[0], out[1]

        return Wrapper(forward, text_encoder=modules["text_encoder"]).eval()

    def sample_inputs(self, g, seed):
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, g.vocab_size, (1, g.sequence_length), generator=gen)
        return {"input_ids": ids.float()}  # token ids as floats, as the Swift pipeline feeds them


class XLTextEncoderSpec(TextEncoderSpec):
    """SDXL's first text encoder (CLIP ViT-L): the penultimate layer's hidden states, and its pooled output
    (which the Swift pipeline does not use; kept so both encoders have one interface)."""

    description = "SDXL's first CLIP text encoder: token ids to the penultimate layer's hidden states."

    def width(self, g: Geometry) -> int:
        return g.text_encoder_dim

    def pooled_width(self, g: Geometry) -> int:
        return g.text_encoder_dim

    def outputs(self, g):
        return [
            TensorSpec("hidden_embeds", (1, g.sequence_length, self.width(g)), "float32",
                       "The penultimate layer's hidden states of the text encoder"),
            TensorSpec("pooled_outputs", (1, self.pooled_width(g)), "float32",
                       "The pooled text embedding (the second encoder's is the UNet's text_embeds)"),
        ]

    def export_module(self, modules, attention):
        key = self.name

        def forward(self, input_ids):
            out = getattr(self, key)(input_ids.to(torch.int64), output_hidden_states=True, return_dict=True)
            pooled = out.text_embeds if "text_embeds" in out else out.pooler_output
            return out.hidden_states[-2], pooled

        return Wrapper(forward, **{key: modules[key]}).eval()


class TextEncoder2Spec(XLTextEncoderSpec):
    name = "text_encoder_2"
    needs = ("text_encoder_2",)
    description = "SDXL's second CLIP text encoder: hidden states and the pooled, projected text embedding."

    def width(self, g: Geometry) -> int:
        return g.text_encoder_2_dim

    def pooled_width(self, g: Geometry) -> int:
        return g.text_embeds_dim

    def load(self, path, variants, use_safetensors):
        from transformers import CLIPTextModelWithProjection

        return {"text_encoder_2": load_component(CLIPTextModelWithProjection, path, "text_encoder_2",
                                        use_safetensors=use_safetensors, variant=variants.get("text_encoder_2"),
                                        attn_implementation="eager")}
