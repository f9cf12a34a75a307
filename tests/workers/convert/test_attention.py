"""Attention layouts against diffusers' own UNet, in float32."""

from __future__ import annotations

import pytest
import torch

from torch import nn

from workers.convert.attention import (
    QUERY_CHUNK,
    ChannelResnetBlock,
    Conv1x1,
    SpatialTransformer,
    export_unet,
    original_attention,
    split_einsum_attention,
)
from workers.errors import UnsupportedModelError
from workers.names import Attention
from workers.validate.checks import psnr


def _reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Textbook attention on (B, C, 1, S) tensors (q already scaled)."""
    b, c, _, sq = q.shape
    d = c // heads
    qh = q.reshape(b, heads, d, sq).permute(0, 1, 3, 2)
    kh = k.reshape(b, heads, d, -1).permute(0, 1, 3, 2)
    vh = v.reshape(b, heads, d, -1).permute(0, 1, 3, 2)
    out = torch.softmax(qh @ kh.transpose(-1, -2), dim=-1) @ vh
    return out.permute(0, 1, 3, 2).reshape(b, c, 1, sq)


@pytest.mark.parametrize("queries", [64, 512, 576, 1100, 2304])
def test_kernels_match_textbook_attention_including_the_remainder_chunk(queries: int) -> None:
    gen = torch.Generator().manual_seed(queries)
    q = torch.randn(2, 32, 1, queries, generator=gen) * 0.3
    k = torch.randn(2, 32, 1, 77, generator=gen)
    v = torch.randn(2, 32, 1, 77, generator=gen)
    expected = _reference_attention(q, k, v, heads=4)
    for got in (original_attention(q, k, v, 4), split_einsum_attention(q, k, v, 4),
                split_einsum_attention(q, k, v, 4, QUERY_CHUNK)):
        assert got.shape == expected.shape
        assert psnr(expected.numpy(), got.numpy()) >= 60


def test_remainder_chunk_is_not_dropped() -> None:
    # Apple's S // 512 chunks would lose the last 64 queries of a 576-token sequence
    q = torch.randn(1, 8, 1, 576)
    k = v = torch.randn(1, 8, 1, 10)
    out = split_einsum_attention(q, k, v, heads=2, chunk=QUERY_CHUNK)
    assert out.shape == (1, 8, 1, 576)
    expected = _reference_attention(q, k, v, heads=2)
    assert torch.allclose(out[..., 512:], expected[..., 512:], atol=1e-5)


def _unet(style: str, **config):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    sd2 = style == "sd2"
    return UNet2DConditionModel(
        sample_size=24 if sd2 else 16, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D") if sd2 else ("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D") if sd2 else ("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64 if sd2 else 32, attention_head_dim=(2, 4) if sd2 else 4,
        use_linear_projection=sd2, norm_num_groups=32, **config,
    ).eval()


@pytest.mark.parametrize("style", ["sd1", "sd2"])
@pytest.mark.parametrize("attention", list(Attention))
def test_layouts_match_diffusers_unet_at_60_db(style: str, attention: Attention) -> None:
    unet = _unet(style)
    size = unet.config.sample_size
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, size, size, generator=gen)
    timestep = torch.tensor([981.0, 981.0])
    context = torch.randn(2, unet.config.cross_attention_dim, 1, 77, generator=gen)
    with torch.no_grad():
        expected = unet(sample, timestep, context.squeeze(2).transpose(1, 2)).sample
        ours = export_unet(unet, attention)(sample, timestep, context).sample
    assert psnr(expected.numpy(), ours.numpy()) >= 60


@pytest.mark.parametrize("time_ids", [6, 5])  # SDXL base, refiner
@pytest.mark.parametrize("attention", list(Attention))
def test_sdxl_added_conditioning_matches_diffusers_in_every_layout(attention: Attention, time_ids: int) -> None:
    """text_embeds and time_ids through SDXL's add_embedding: (B, C, 1, 1) in the split_einsum layouts too."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, layers_per_block=1, block_out_channels=(32, 64), norm_num_groups=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=80, attention_head_dim=(2, 4), use_linear_projection=True,
        transformer_layers_per_block=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=48 + time_ids * 8).eval()
    gen = torch.Generator().manual_seed(1)
    sample, timestep = torch.randn(2, 4, 16, 16, generator=gen), torch.tensor([981.0, 981.0])
    context = torch.randn(2, 80, 1, 77, generator=gen)
    added = {"text_embeds": torch.randn(2, 48, generator=gen),
             "time_ids": torch.tensor([32.0, 32.0, 0.0, 0.0, 32.0, 32.0][:time_ids]).expand(2, time_ids)}
    with torch.no_grad():
        expected = unet(sample, timestep, context.squeeze(2).transpose(1, 2), added_cond_kwargs=added).sample
        no_added = unet(sample, timestep, context.squeeze(2).transpose(1, 2),
                        added_cond_kwargs={"text_embeds": added["text_embeds"] * 0,
                                           "time_ids": added["time_ids"]}).sample
        ours = export_unet(unet, attention)(sample, timestep, context, added_cond_kwargs=added).sample
    assert psnr(expected.numpy(), ours.numpy()) >= 60
    assert psnr(expected.numpy(), no_added.numpy()) < 40  # the added inputs matter: the check can fail


def test_export_shares_weights_instead_of_copying() -> None:
    unet = _unet("sd2")
    exported = export_unet(unet, Attention.SPLIT_EINSUM_V2)
    originals = {p.data_ptr() for p in unet.parameters()}
    transformers = [m for m in exported.modules() if isinstance(m, SpatialTransformer)]
    assert transformers
    block = transformers[0].transformer_blocks[0]
    # 1x1-conv weights are views of the linear weights; only the pre-scaled queries are new tensors
    assert block.attn1.to_k.weight.data_ptr() in originals
    assert block.ff.proj.weight.data_ptr() in originals
    assert transformers[0].proj_in.weight.data_ptr() in originals
    new = [p for p in exported.parameters() if p.data_ptr() not in originals]
    assert all(p.dim() == 4 for p in new)  # the query weights
    # the time path's 1x1 convs are views of the linear weights, under the same parameter names
    resnets = [m for m in exported.modules() if isinstance(m, ChannelResnetBlock)]
    assert len(resnets) == sum(type(m).__name__ == "ResnetBlock2D" for m in unet.modules())
    params = dict(unet.named_parameters())
    time_path = [(n, p) for n, p in exported.named_parameters() if "time_emb" in n]
    assert len(time_path) == 2 * (2 + len(resnets))  # weight and bias of time_embedding.linear_1/2, time_emb_proj
    for name, p in time_path:
        assert p.data_ptr() == params[name].data_ptr() and p.numel() == params[name].numel(), name
    assert exported.time_embedding.linear_1.weight.dim() == 4 and resnets[0].time_emb_proj.weight.dim() == 4
    # the diffusers UNet itself is left untouched
    assert not any(isinstance(m, SpatialTransformer) for m in unet.modules())
    assert isinstance(unet.time_embedding.linear_1, nn.Linear)


@pytest.mark.parametrize("config", [{"resnet_time_scale_shift": "scale_shift"}, {"time_cond_proj_dim": 8},
                                    {"class_embed_type": "timestep"}])
def test_split_einsum_refuses_time_conditioning_it_does_not_implement(config: dict) -> None:
    unet = _unet("sd1", **config)
    export_unet(unet, Attention.ORIGINAL)  # diffusers' own time path: unchanged
    with pytest.raises(UnsupportedModelError, match="split_einsum"):
        export_unet(unet, Attention.SPLIT_EINSUM)


@pytest.mark.parametrize("attention", list(Attention))
def test_split_einsum_programs_have_no_linear_ops(attention: Attention) -> None:
    """Converted tiny SD1 UNet: in split_einsum layouts the time embedding and every ResNet's time_emb_proj
    are 1x1 convs, so no `linear` op is left; ORIGINAL keeps diffusers' linear layers."""
    from collections import Counter

    from workers.convert.program import convert_module
    from workers.convert.features import TensorSpec
    from workers.validate.readback import load_program
    from workers.convert.specs import UNetSpec

    unet = _unet("sd1")
    size, ctx = unet.config.sample_size, unet.config.cross_attention_dim
    inputs = [TensorSpec("sample", (2, 4, size, size), "float16", ""), TensorSpec("timestep", (2,), "float16", ""),
              TensorSpec("encoder_hidden_states", (2, ctx, 1, 77), "float16", "")]
    outputs = [TensorSpec("noise_pred", (2, 4, size, size), "float32", "")]
    gen = torch.Generator().manual_seed(0)
    example = {"sample": torch.randn(2, 4, size, size, generator=gen), "timestep": torch.tensor([981.0, 981.0]),
               "encoder_hidden_states": torch.randn(2, ctx, 1, 77, generator=gen)}
    export = UNetSpec().export_module({"unet": unet}, attention)
    model = convert_module(export, example, inputs, outputs, component="unet", target="iOS17")
    ops = Counter(op.op_type for op in load_program(model).functions["main"].operations)
    time_linears = 2 + sum(type(m).__name__ == "ResnetBlock2D" for m in unet.modules())
    convs = sum(isinstance(m, (nn.Conv2d, Conv1x1)) for m in export.modules())
    if attention is Attention.ORIGINAL:
        assert ops["linear"] == time_linears == sum(isinstance(m, nn.Linear) for m in export.modules())
    else:
        assert ops["linear"] == 0 and not any(isinstance(m, nn.Linear) for m in export.modules())
        assert convs == sum(isinstance(m, (nn.Conv2d, Conv1x1)) for m in export_unet(unet, Attention.ORIGINAL)
                            .modules()) + time_linears
    assert ops["conv"] == convs


def _attention_calls(unet, sample_size: int) -> list[tuple[int, int, int]]:
    """(heads, query length, key length) of every attention layer of a diffusers UNet, in call order."""
    from diffusers.models.attention_processor import Attention as DiffusersAttention

    calls = []

    def record(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        context = kwargs.get("encoder_hidden_states")
        calls.append((module.heads, hidden.shape[1], (context if context is not None else hidden).shape[1]))

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in unet.modules()
             if isinstance(m, DiffusersAttention)]
    with torch.no_grad():
        unet(torch.randn(1, 4, sample_size, sample_size), 10, torch.randn(1, 77, unet.config.cross_attention_dim))
    for hook in hooks:
        hook.remove()
    return calls


def test_saved_unets_have_the_layouts_attention_structure(sd2_pipeline, sd2_layouts_conversion) -> None:
    """Read back from the saved programs: one attention per layer in `original`; per-head einsums and
    softmaxes in `split_einsum*`; query chunks of 512 plus the remainder in `split_einsum_v2` at 2,304 tokens."""
    from collections import Counter

    from diffusers import UNet2DConditionModel

    from workers.validate.readback import read_package

    out, report = sd2_layouts_conversion
    calls = _attention_calls(UNet2DConditionModel.from_pretrained(sd2_pipeline / "unet"), 48)
    assert max(q for _, q, _ in calls) == 2304 and any(q == 576 for _, q, _ in calls)

    def chunks(queries: int) -> list[int]:
        return [QUERY_CHUNK] * (queries // QUERY_CHUNK) + ([queries % QUERY_CHUNK] if queries % QUERY_CHUNK else [])

    expected = {
        "original": Counter((1, h, q, k) for h, q, k in calls),
        "split_einsum": Counter(shape for h, q, k in calls for shape in [(1, k, 1, q)] * h),
        "split_einsum_v2": Counter(shape for h, q, k in calls for c in chunks(q) for shape in [(1, k, 1, c)] * h),
    }
    assert expected["split_einsum_v2"][(1, 2304, 1, 256)] > 0  # the remainder of 2,304 = 4 x 512 + 256
    for package in report.packages:
        operations = read_package(out / package.path).program.functions["main"].operations
        softmaxes = Counter(tuple(op.inputs["x"].shape) for op in operations if op.op_type == "softmax")
        einsums = sum(1 for op in operations if op.op_type == "einsum")
        assert softmaxes == expected[package.variant], package.variant
        assert einsums == (0 if package.variant == "original" else 2 * sum(softmaxes.values())), package.variant
