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

In the SPLIT_EINSUM layouts the time embedding (with SDXL's added embedding) is also carried as
(B, C, 1, 1), like Apple's converter does: ``time_embedding`` and every ResNet's ``time_emb_proj`` are 1x1 convolutions over views of the
linear weights, so the program has no ``linear`` op left.  ORIGINAL keeps diffusers' time path.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from workers.errors import UnsupportedModelError
from workers.names import Attention

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


_ELEMENTWISE = (nn.SiLU, nn.Mish, nn.GELU, nn.ReLU)  # what diffusers' get_activation builds
_TIME_BLOCKS = {"CrossAttnDownBlock2D", "DownBlock2D", "UNetMidBlock2DCrossAttn", "CrossAttnUpBlock2D",
                "UpBlock2D"}  # blocks whose forward passes ``temb`` to their ``resnets`` and nowhere else


def _elementwise(act: nn.Module | None, what: str) -> nn.Module | None:
    if act is not None and not isinstance(act, _ELEMENTWISE):
        raise UnsupportedModelError(f"{what} {type(act).__name__} is not supported in split_einsum layouts",
                                    source="unet")
    return act


class ChannelTimestepEmbedding(nn.Module):
    """diffusers ``TimestepEmbedding`` (no ``cond_proj``) taking (B, C), returning (B, C_out, 1, 1)."""

    def __init__(self, embedding: nn.Module) -> None:
        super().__init__()
        if type(embedding).__name__ != "TimestepEmbedding" or getattr(embedding, "cond_proj", None) is not None:
            raise UnsupportedModelError("time embedding variant (timestep_cond) not supported in split_einsum "
                                        "layouts", source="unet")
        self.linear_1 = Conv1x1(embedding.linear_1)
        self.act = _elementwise(embedding.act, "time embedding activation")
        self.linear_2 = Conv1x1(embedding.linear_2)
        self.post_act = _elementwise(embedding.post_act, "time embedding activation")

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            raise UnsupportedModelError("timestep_cond is not supported in split_einsum layouts", source="unet")
        x = self.linear_1(sample.reshape(*sample.shape, 1, 1))
        x = self.linear_2(x if self.act is None else self.act(x))
        return x if self.post_act is None else self.post_act(x)


class ChannelResnetBlock(nn.Module):
    """diffusers ``ResnetBlock2D`` ("default" time embedding norm, no up/down) taking ``temb`` as (B, C, 1, 1).

    Every layer but ``time_emb_proj`` (a 1x1 conv over a view of its weight) is the original's, shared.
    """

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        kind = type(resnet).__name__
        norm = getattr(resnet, "time_embedding_norm", None)
        problem = (kind if kind != "ResnetBlock2D" else f"time_embedding_norm={norm!r}" if norm != "default"
                   else "no time_emb_proj" if resnet.time_emb_proj is None
                   else "up/down sampling" if resnet.upsample is not None or resnet.downsample is not None
                   else None)
        if problem:
            raise UnsupportedModelError(f"ResNet with {problem} is not supported in split_einsum layouts",
                                        source="unet")
        self.norm1, self.conv1, self.norm2 = resnet.norm1, resnet.conv1, resnet.norm2
        self.time_emb_proj = Conv1x1(resnet.time_emb_proj)
        self.dropout, self.conv2, self.conv_shortcut = resnet.dropout, resnet.conv2, resnet.conv_shortcut
        self.nonlinearity = _elementwise(resnet.nonlinearity, "ResNet activation")
        self.skip_time_act = bool(resnet.skip_time_act)
        self.output_scale_factor = float(resnet.output_scale_factor)

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(input_tensor)))
        h = h + self.time_emb_proj(temb if self.skip_time_act else self.nonlinearity(temb))
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        x = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
        return x + h if self.output_scale_factor == 1.0 else (x + h) / self.output_scale_factor


def channel_time_path(unet: nn.Module) -> None:
    """Carry ``unet``'s time embedding as (B, C, 1, 1) through 1x1 convolutions (in place, weights shared).

    SDXL's added embedding (``addition_embed_type="text_time"``: pooled text and micro-conditioning through
    a second ``TimestepEmbedding``, summed with the time embedding) is carried the same way.
    Raises UnsupportedModelError when something else consumes the embedding (class or other added
    embeddings, blocks other than SD's five kinds): those would need the (B, C) layout.
    """
    text_time = getattr(unet.config, "addition_embed_type", None) == "text_time"
    extra = [n for n in ("class_embedding", "add_embedding") if getattr(unet, n, None) is not None
             and not (n == "add_embedding" and text_time)]
    # a ControlNet has the down path and mid block only
    blocks = [b for b in (*unet.down_blocks, unet.mid_block, *getattr(unet, "up_blocks", ())) if b is not None]
    extra += sorted({type(b).__name__ for b in blocks} - _TIME_BLOCKS)
    if extra:
        raise UnsupportedModelError(f"not supported in split_einsum layouts: {', '.join(extra)}", source="unet")
    _elementwise(getattr(unet, "time_embed_act", None), "time embedding activation")
    unet.time_embedding = ChannelTimestepEmbedding(unet.time_embedding)
    if text_time:
        unet.add_embedding = ChannelTimestepEmbedding(unet.add_embedding)
    for block in blocks:
        block.resnets = nn.ModuleList(ChannelResnetBlock(r) for r in block.resnets)


def export_unet(unet: nn.Module, attention: Attention) -> nn.Module:
    """A structural copy of ``unet`` using ``attention``; weights are shared, not copied.

    The copy's forward takes ``encoder_hidden_states`` as (B, C_ctx, 1, S); in the SPLIT_EINSUM layouts its
    time embedding is (B, C, 1, 1) throughout (see ``channel_time_path``).
    Raises UnsupportedModelError for transformer or time-path features this layout does not implement.
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
    if attention is not Attention.ORIGINAL:
        channel_time_path(model)
    return model.eval()
