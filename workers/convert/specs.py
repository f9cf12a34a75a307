"""Declarative per-component export specs: inputs, outputs, shapes, dtypes, how to build the module.

One small class per package component, registered in ``SPECS``.  Names, shapes and layouts follow the
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

| safety_checker | clip_input (1,3,224,224), images (1,H,W,3), adjustment (1,) | filtered_images, has_nsfw_concepts, concept_scores |
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from workers.convert.attention import export_unet
from workers.errors import CoreMLPublishError, SourceError
from workers.convert.geometry import Geometry, TensorSpec
from workers.components import depends_on_attention
from workers.names import Attention
from workers.source.weights import count_non_finite, iter_tensors, loaded_files, non_finite_error, read_header

# diffusers' words for a checkpoint tensor whose shape contradicts the config's model
_DIFFUSERS_MISMATCH = re.compile(r"(\S+) expected shape torch\.Size\((\[.*?\])\), but got torch\.Size\((\[.*?\])\)")
_CONTRADICTS = "The weights do not belong to this config: fix or re-download the component."
_UNLOADABLE = "The component's files are damaged or do not match its config: fix or re-download them."


def _load(cls: Any, path: Path, subfolder: str, *, use_safetensors: bool, variant: str | None,
          **kwargs: Any) -> nn.Module:
    """Load one component in float32, refusing with one line (naming the component) weights that are
    damaged, contradict its config, leave some of its tensors uninitialised, or hold NaN/inf values."""
    from transformers import PreTrainedModel

    source = str(path)
    if use_safetensors:  # a damaged file is named here, not deep inside the loader
        for file in loaded_files(path / subfolder, variant):
            read_header(file, source=source, label=f"{subfolder}/{file.name}")
    if issubclass(cls, PreTrainedModel):  # report mismatched shapes in the loading info, not a bare error
        kwargs["ignore_mismatched_sizes"] = True
    try:
        model, info = cls.from_pretrained(str(path), subfolder=subfolder, use_safetensors=use_safetensors,
                                          variant=variant, output_loading_info=True, **kwargs)
    except (CoreMLPublishError, MemoryError):
        raise
    except Exception as e:  # anything the loaders raise for a source that does not match its config
        found = _DIFFUSERS_MISMATCH.search(str(e))
        detail = (f"tensor {found[1]} is {found[3]} in the weights but the config's model has {found[2]}"
                  if found else (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200])
        raise SourceError(f"{subfolder} cannot be loaded: {detail}", source=source,
                          hint=_CONTRADICTS if found else _UNLOADABLE) from e
    _refuse_unmatched(subfolder, source, info.get("mismatched_keys") or [], info.get("missing_keys") or [])
    model = model.float().eval().requires_grad_(False)
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            bad = count_non_finite(tensor)
            if bad:
                raise non_finite_error(subfolder, name, bad, tensor.numel(), source=source)
    return model


def _refuse_unmatched(subfolder: str, source: str, mismatched: list, missing) -> None:
    """Raise SourceError for weights whose shapes contradict the config's model (``(key, weights' shape, model's
    shape)``), then for tensors of the model the weights lack."""
    if mismatched:
        key, weights, model_shape = sorted(mismatched)[0]
        raise SourceError(f"{subfolder} cannot be loaded: tensor {key} is {list(weights)} in the weights but the "
                          f"config's model has {list(model_shape)}", source=source, hint=_CONTRADICTS)
    missing = sorted(missing)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise SourceError(f"{subfolder}: the weights lack {', '.join(missing[:3])}{more}", source=source,
                          hint="Those tensors would be random: " + _CONTRADICTS)


def _load_lean(cls: Any, path: Path, subfolder: str, *, variant: str | None, meta: bool) -> nn.Module:
    """One component built from its config on the ``meta`` device (``meta``: no weights, for tracing), or with its
    safetensors weights read as float16 tensor by tensor (``workers.convert.lean``).

    Query projections stay float32: the export module folds the softmax scale into them first, rounding as the
    normal path does.  Refuses like ``_load``: damaged files, NaN/inf values, missing or mis-shaped tensors
    (tensors the config's model has no place for are left out, as diffusers' loader leaves them).
    """
    config = cls.load_config(str(path), subfolder=subfolder)
    with torch.device("meta"):
        model = cls.from_config(config)
    model = model.float().eval().requires_grad_(False)
    if meta:
        return model
    source = str(path)
    files = loaded_files(path / subfolder, variant)
    if not files:
        raise SourceError(f"{subfolder} has no safetensors weights to read", source=source,
                          hint="Convert the component's weights to safetensors.")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for key, tensor in iter_tensors(file, source=source, label=f"{subfolder}/{file.name}"):
            if tensor.is_floating_point():
                bad = count_non_finite(tensor)
                if bad:
                    raise non_finite_error(subfolder, key, bad, tensor.numel(), source=source)
                tensor = tensor.float() if ".to_q." in key else tensor.half()
            state[key] = tensor
    expected = model.state_dict()
    _refuse_unmatched(subfolder, source,
                      [(key, tensor.shape, expected[key].shape) for key, tensor in state.items()
                       if key in expected and tuple(expected[key].shape) != tuple(tensor.shape)],
                      set(expected) - set(state))
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True, assign=True)
    return model


class ComponentSpec:
    """What one package component looks like and how to build its export module."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]]  # diffusers sub-folders holding its weights
    palettize: ClassVar[bool] = True  # Apple keeps the VAE in float16 in palettized repos
    input_dtype: ClassVar[str] = "float16"
    compared_outputs: ClassVar[tuple[str, ...] | None] = None  # None: every output
    lean: ClassVar[bool] = False  # converts memory-lean when large (``load_lean``, ``workers.convert.lean``)
    description: ClassVar[str]

    def precision(self, g: Geometry) -> str:
        """The precision the component is converted in: float16 unless it overflows there."""
        return "float16"

    @property
    def depends_on_attention(self) -> bool:
        """Converted once per attention layout (the fact lives in ``workers.names``)."""
        return depends_on_attention(self.name)

    def inputs(self, g: Geometry) -> list[TensorSpec]:
        raise NotImplementedError

    def outputs(self, g: Geometry) -> list[TensorSpec]:
        raise NotImplementedError

    def load(self, path: Path, variants: dict[str, str | None], use_safetensors: bool) -> dict[str, nn.Module]:
        """Load the float32 torch modules this component needs from a source folder."""
        raise NotImplementedError

    def load_lean(self, path: Path, variants: dict[str, str | None], *, meta: bool) -> dict[str, nn.Module]:
        """The modules built on the ``meta`` device, or with float16 weights (see ``workers.convert.lean``); only
        components large enough to need it implement this."""
        raise NotImplementedError(f"{self.name} has no memory-lean conversion")

    def reference(self, modules: dict[str, nn.Module]) -> nn.Module:
        """The unmodified library module computing this component's outputs, in float32."""
        return self.export_module(modules, Attention.ORIGINAL)

    def export_module(self, modules: dict[str, nn.Module], attention: Attention) -> nn.Module:
        """The module that is traced and converted (taking and returning the spec's features)."""
        raise NotImplementedError

    def sample_inputs(self, g: Geometry, seed: int) -> dict[str, torch.Tensor]:
        """Deterministic random inputs in the spec's shapes (float32 values)."""
        gen = torch.Generator().manual_seed(seed)
        return {t.name: torch.randn(t.shape, generator=gen) for t in self.inputs(g)}

    def compared(self, g: Geometry) -> list[str]:
        return list(self.compared_outputs or [t.name for t in self.outputs(g)])


class _Wrapper(nn.Module):
    def __init__(self, fn: Any, **modules: nn.Module) -> None:
        super().__init__()
        for key, module in modules.items():
            self.add_module(key, module)
        self._fn = fn

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._fn(self, *args)


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
        return {"text_encoder": _load(CLIPTextModel, path, "text_encoder", use_safetensors=use_safetensors,
                                      variant=variants.get("text_encoder"), attn_implementation="eager")}

    def export_module(self, modules, attention):
        def forward(self, input_ids):
            out = self.text_encoder(input_ids.to(torch.int64), return_dict=False)
            return out[0], out[1]

        return _Wrapper(forward, text_encoder=modules["text_encoder"]).eval()

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

        return _Wrapper(forward, **{key: modules[key]}).eval()


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

        return {"text_encoder_2": _load(CLIPTextModelWithProjection, path, "text_encoder_2",
                                        use_safetensors=use_safetensors, variant=variants.get("text_encoder_2"),
                                        attn_implementation="eager")}


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

        return {"unet": _load(UNet2DConditionModel, path, "unet", use_safetensors=use_safetensors,
                              variant=variants.get("unet"))}

    def load_lean(self, path, variants, *, meta):
        from diffusers import UNet2DConditionModel

        return {"unet": _load_lean(UNet2DConditionModel, path, self.needs[0], variant=variants.get(self.needs[0]),
                                   meta=meta)}

    def reference(self, modules):
        def forward(self, sample, timestep, context, *added):
            return (self.unet(sample, timestep, context.squeeze(2).transpose(1, 2), return_dict=False,
                              added_cond_kwargs=_added(added))[0],)

        return _Wrapper(forward, unet=modules["unet"]).eval()

    def export_module(self, modules, attention):
        def forward(self, sample, timestep, context, *added):
            return (self.unet(sample, timestep, context, return_dict=False, added_cond_kwargs=_added(added))[0],)

        return _Wrapper(forward, unet=export_unet(modules["unet"], attention)).eval()

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

        return {"unet": _load(UNet2DConditionModel, path, "refiner", use_safetensors=use_safetensors,
                              variant=variants.get("refiner"))}


def _added(added: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor] | None:
    """SDXL's added conditioning, fed after the three SD inputs in the spec's order."""
    return {"text_embeds": added[0], "time_ids": added[1]} if added else None


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

        return {"vae": _load(AutoencoderKL, path, "vae", use_safetensors=use_safetensors,
                             variant=variants.get("vae"))}

    def export_module(self, modules, attention):
        vae = modules["vae"]

        def forward(self, z):
            return (self.decoder(self.post_quant_conv(z)),)

        return _Wrapper(forward, post_quant_conv=vae.post_quant_conv, decoder=vae.decoder).eval()


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

        return _Wrapper(forward, encoder=vae.encoder, quant_conv=vae.quant_conv).eval()

    def sample_inputs(self, g, seed):
        gen = torch.Generator().manual_seed(seed)
        return {"x": torch.rand((1, 3, g.image_height, g.image_width), generator=gen) * 2 - 1}


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

        return {"safety_checker": _load(StableDiffusionSafetyChecker, path, "safety_checker",
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

        return _Wrapper(forward, checker=checker).eval()

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

        return _Wrapper(forward, vision_model=checker.vision_model, visual_projection=checker.visual_projection,
                        special_care=scores_layer(checker.special_care_embeds, checker.special_care_embeds_weights),
                        concepts=scores_layer(checker.concept_embeds, checker.concept_embeds_weights)).eval()

    def concept_count(self, modules: dict[str, nn.Module]) -> int:
        return int(modules["safety_checker"].concept_embeds.shape[0])

    def sample_inputs(self, g, seed):
        gen = torch.Generator().manual_seed(seed)
        s = g.safety_image_size
        return {"clip_input": torch.randn((1, 3, s, s), generator=gen),
                "images": torch.rand((1, g.image_height, g.image_width, 3), generator=gen),
                "adjustment": torch.zeros(1)}


SPECS: dict[str, ComponentSpec] = {
    spec.name: spec
    for spec in (TextEncoderSpec(), TextEncoder2Spec(), UNetSpec(), RefinerSpec(), VAEDecoderSpec(), VAEEncoderSpec(),
                 SafetyCheckerSpec())
}
_XL_SPECS: dict[str, ComponentSpec] = {"text_encoder": XLTextEncoderSpec()}


def spec_for(component: str, g: Geometry) -> ComponentSpec:
    """The spec of ``component`` for a pipeline of geometry ``g`` (SDXL's first text encoder differs)."""
    return _XL_SPECS.get(component, SPECS[component]) if g.xl else SPECS[component]


def resolve_outputs(spec: ComponentSpec, g: Geometry, modules: dict[str, nn.Module]) -> list[TensorSpec]:
    """The spec's outputs with sizes that only the loaded module knows filled in."""
    outputs = spec.outputs(g)
    if isinstance(spec, SafetyCheckerSpec):
        n = spec.concept_count(modules)
        outputs = [TensorSpec(t.name, (1, n), t.dtype, t.description) if t.name == "concept_scores" else t
                   for t in outputs]
    return outputs
