"""UNet attention layouts: ORIGINAL, SPLIT_EINSUM and SPLIT_EINSUM_V2.

``export_unet(unet, attention)`` returns a copy of a diffusers ``UNet2DConditionModel`` whose
``Transformer2DModel`` blocks are replaced by :class:`SpatialTransformer`.  The copy shares every weight
tensor with the original (nothing is duplicated in memory) and takes ``encoder_hidden_states`` in the
(B, C, 1, S) layout the Swift pipeline feeds, for every layout.

Inside a transformer all activations stay 4-D as (B, C, 1, S): linear layers are 1x1 convolutions over
the same weights (a view, not a copy), layer norm normalises over the channel axis.  The attention kernel
is the only part that differs between layouts:

* ORIGINAL: one batched (B, heads, S_q, S_k) score tensor per layer (best on Mac GPUs);
* SPLIT_EINSUM: one (B, S_k, 1, S_q) score tensor per head, softmax over axis 1 (Neural Engine);
* SPLIT_EINSUM_V2: SPLIT_EINSUM with queries in chunks of 512 positions; the last chunk takes the
  remainder, so sequence lengths that are not a multiple of 512 (768-px models) are exact.

The traced graph is kept lean on purpose: the softmax scale is folded into the query weights (no op at
all), and heads and chunks come from one ``split`` each instead of a slice per head.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from workers.errors import UnsupportedModelError
from workers.layout import Attention

QUERY_CHUNK = 512


def _conv_view(linear: nn.Linear) -> nn.Parameter:
    """A 1x1-conv weight that is a view of a linear weight (shares storage)."""
    w = linear.weight
    return nn.Parameter(w.detach().view(w.shape[0], w.shape[1], 1, 1), requires_grad=False)


def _channel_view(p: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(p.detach().view(1, -1, 1, 1), requires_grad=False)


def _bias(linear: nn.Linear) -> nn.Parameter | None:
    return None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)


class Conv1x1(nn.Module):
    """A linear layer applied over the channel axis of (B, C, 1, S).

    With ``scale`` the weights are a scaled copy instead of a view: coremltools would fold a separate
    multiplication into the weights anyway, under a name that no longer matches the parameter.
    """

    def __init__(self, linear: nn.Linear, scale: float | None = None) -> None:
        super().__init__()
        if scale is None:
            self.weight = _conv_view(linear)
            self.bias = _bias(linear)
        else:
            w = linear.weight.detach()
            self.weight = nn.Parameter((w * scale).view(w.shape[0], w.shape[1], 1, 1), requires_grad=False)
            self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach() * scale,
                                                                       requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, 1, S), same weights and epsilon as the original."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        if not norm.elementwise_affine or norm.weight is None:
            raise UnsupportedModelError("layer norm without affine weights is not supported",
                                        source="unet")
        self.weight = _channel_view(norm.weight)
        self.bias = None if norm.bias is None else _channel_view(norm.bias)
        self.eps = norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        var = (centred * centred).mean(dim=1, keepdim=True)
        out = centred * torch.rsqrt(var + self.eps) * self.weight
        return out if self.bias is None else out + self.bias


def original_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Standard attention over (B, C, 1, S) inputs: one batched score tensor."""
    b, c, _, sq = q.shape
    d = c // heads
    qh = q.view(b, heads, d, sq).transpose(2, 3)  # (B, h, Sq, d)
    kh = k.view(b, heads, d, -1)  # (B, h, d, Sk)
    vh = v.view(b, heads, d, -1).transpose(2, 3)  # (B, h, Sk, d)
    weights = torch.matmul(qh, kh).softmax(dim=-1)  # (B, h, Sq, Sk)
    out = torch.matmul(weights, vh)  # (B, h, Sq, d)
    return out.transpose(2, 3).reshape(b, c, 1, sq)


def split_einsum_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                           chunk: int | None = None) -> torch.Tensor:
    """Per-head attention with (B, S_k, 1, S_q) scores; with ``chunk``, queries go in chunks of that size.

    torch.split gives the remainder chunk when S_q is not a multiple of ``chunk``.
    """
    d = q.shape[1] // heads
    q_heads = q.split(d, dim=1)  # (B, d, 1, Sq) each
    k_heads = k.transpose(1, 3).split(d, dim=3)  # (B, Sk, 1, d) each
    v_heads = v.split(d, dim=1)  # (B, d, 1, Sk) each
    outs = []
    for qh, kh, vh in zip(q_heads, k_heads, v_heads):
        chunks = qh.split(chunk, dim=3) if chunk and qh.shape[3] > chunk else (qh,)
        parts = []
        for qc in chunks:
            weights = torch.einsum("bchq,bkhc->bkhq", qc, kh).softmax(dim=1)
            parts.append(torch.einsum("bkhq,bchk->bchq", weights, vh))
        outs.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=3))
    return torch.cat(outs, dim=1)


class ChannelAttention(nn.Module):
    """diffusers ``Attention`` (self or cross) on (B, C, 1, S) tensors, with a chosen kernel."""

    def __init__(self, attn: nn.Module, attention: Attention) -> None:
        super().__init__()
        unsupported = [name for name in ("group_norm", "spatial_norm", "norm_q", "norm_k", "norm_cross")
                       if getattr(attn, name, None) is not None]
        if unsupported or getattr(attn, "residual_connection", False) \
                or getattr(attn, "rescale_output_factor", 1.0) != 1.0 \
                or getattr(attn, "add_k_proj", None) is not None:
            raise UnsupportedModelError(
                f"attention block features not supported: {', '.join(unsupported) or 'residual/rescale'}",
                source="unet")
        self.heads = attn.heads
        self.to_q = Conv1x1(attn.to_q, scale=float(attn.scale))  # softmax scale folded into the queries
        self.to_k = Conv1x1(attn.to_k)
        self.to_v = Conv1x1(attn.to_v)
        self.to_out = Conv1x1(attn.to_out[0])
        self.attention = attention

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = self.to_q(x)
        k = self.to_k(context)
        v = self.to_v(context)
        if self.attention is Attention.ORIGINAL:
            out = original_attention(q, k, v, self.heads)
        else:
            chunk = QUERY_CHUNK if self.attention is Attention.SPLIT_EINSUM_V2 else None
            out = split_einsum_attention(q, k, v, self.heads, chunk)
        return self.to_out(out)


class ChannelFeedForward(nn.Module):
    """diffusers ``FeedForward`` with GEGLU or GELU activation, on (B, C, 1, S)."""

    def __init__(self, ff: nn.Module) -> None:
        super().__init__()
        act = ff.net[0]
        kind = type(act).__name__
        if kind not in ("GEGLU", "GELU"):
            raise UnsupportedModelError(f"feed-forward activation {kind} is not supported", source="unet")
        self.gated = kind == "GEGLU"
        self.approximate = getattr(act, "approximate", "none")
        self.proj = Conv1x1(act.proj)
        self.out = Conv1x1(ff.net[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if self.gated:
            h, gate = h.chunk(2, dim=1)
            h = h * F.gelu(gate, approximate=self.approximate)
        else:
            h = F.gelu(h, approximate=self.approximate)
        return self.out(h)


class ChannelTransformerBlock(nn.Module):
    """diffusers ``BasicTransformerBlock`` (layer_norm type) on (B, C, 1, S)."""

    def __init__(self, block: nn.Module, attention: Attention) -> None:
        super().__init__()
        if getattr(block, "norm_type", "layer_norm") != "layer_norm" or block.only_cross_attention \
                or getattr(block, "pos_embed", None) is not None or block.attn2 is None:
            raise UnsupportedModelError("transformer block variant not supported", source="unet")
        self.norm1 = ChannelLayerNorm(block.norm1)
        self.attn1 = ChannelAttention(block.attn1, attention)
        self.norm2 = ChannelLayerNorm(block.norm2)
        self.attn2 = ChannelAttention(block.attn2, attention)
        self.norm3 = ChannelLayerNorm(block.norm3)
        self.ff = ChannelFeedForward(block.ff)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Drop-in replacement of diffusers' continuous-input ``Transformer2DModel``.

    Takes (B, C, H, W) and ``encoder_hidden_states`` as (B, C_ctx, 1, S); returns a tuple like the
    original's ``return_dict=False`` output so the surrounding diffusers blocks work unchanged.
    """

    def __init__(self, transformer: nn.Module, attention: Attention) -> None:
        super().__init__()
        if not getattr(transformer, "is_input_continuous", True) or transformer.norm is None:
            raise UnsupportedModelError("only continuous-input transformers are supported", source="unet")
        self.norm = transformer.norm  # GroupNorm, shared
        self.linear_projection = bool(transformer.use_linear_projection)
        if self.linear_projection:
            self.proj_in = Conv1x1(transformer.proj_in)
            self.proj_out = Conv1x1(transformer.proj_out)
        else:
            self.proj_in = transformer.proj_in  # already a 1x1 conv, shared
            self.proj_out = transformer.proj_out
        self.transformer_blocks = nn.ModuleList(
            ChannelTransformerBlock(b, attention) for b in transformer.transformer_blocks)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                *args, **kwargs) -> tuple[torch.Tensor]:
        b, c, h, w = hidden_states.shape
        x = self.proj_in(self.norm(hidden_states))
        x = x.reshape(b, x.shape[1], 1, h * w)
        for block in self.transformer_blocks:
            x = block(x, encoder_hidden_states)
        x = self.proj_out(x).reshape(b, c, h, w)
        return (x + hidden_states,)


def export_unet(unet: nn.Module, attention: Attention) -> nn.Module:
    """A structural copy of ``unet`` using ``attention``; weights are shared, not copied.

    The copy's forward takes ``encoder_hidden_states`` as (B, C_ctx, 1, S).
    Raises UnsupportedModelError for transformer features this layout does not implement.
    """
    memo = {id(t): t for t in list(unet.parameters()) + list(unet.buffers())}
    model = copy.deepcopy(unet, memo)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "Transformer2DModel":
                setattr(parent, name, SpatialTransformer(child, attention))
                replaced += 1
    if replaced == 0:
        raise UnsupportedModelError("the UNet has no Transformer2DModel blocks to convert", source="unet")
    return model.eval()
