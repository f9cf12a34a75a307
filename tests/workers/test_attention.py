"""Attention layouts against diffusers' own UNet, in float32."""

from __future__ import annotations

import pytest
import torch

from workers.attention import QUERY_CHUNK, SpatialTransformer, export_unet, original_attention, split_einsum_attention
from workers.layout import Attention
from workers.validate import psnr


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


def _unet(style: str):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    sd2 = style == "sd2"
    return UNet2DConditionModel(
        sample_size=24 if sd2 else 16, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D") if sd2 else ("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D") if sd2 else ("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64 if sd2 else 32, attention_head_dim=(2, 4) if sd2 else 4,
        use_linear_projection=sd2, norm_num_groups=32,
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
    # the diffusers UNet itself is left untouched
    assert not any(isinstance(m, SpatialTransformer) for m in unet.modules())
