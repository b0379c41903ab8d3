"""`grit_sdpa`: transformers' sdpa attention, plus a fast path for new tokens after cached ones on CPU.

RAG with caching prefills text on top of cached states (e.g. a long query after a short cached document). transformers
then builds an explicit lower-right causal mask (torch's `is_causal` is top-left aligned), and sdpa with an explicit
mask cannot use the CPU flash kernel: the prefill ran ~1.5x slower than plain RAG computing every token. Here the
attention of the new tokens needs no mask: after a few cached positions (a short cached query or document), the
queries are padded in front to the keys' length, so torch's top-left causal mask is the right one; after many, it is
split in two flash-kernel calls, over the cached positions (all visible) and over the new positions (causal), merged
with their log-sum-exps, exactly (at inference only: the kernel's log-sum-exp carries no gradient). Everything
else (padding, sliding windows, bidirectional embedding passes, fp32 decoding, CUDA) goes to transformers' own sdpa,
except decode steps in bf16/fp16 on the CPU, which run as two fp32 matmuls (`_decode_attention`: torch's CPU kernel is
~9x slower for one low-precision query than for an fp32 one), row by row in a left-padded batch (batch-invariant).

Registered with transformers' `AttentionInterface` / `AttentionMaskInterface` in `grit_hf/__init__.py`;
`GritLMPreTrainedModel.from_pretrained` selects it for models that would use sdpa.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import causal_mask_function, sdpa_mask

__all__ = ["ATTENTION_NAME", "offset_causal_sdpa_attention", "offset_causal_sdpa_mask"]

ATTENTION_NAME = "grit_sdpa"

# What `offset_causal_sdpa_mask` returns instead of a mask for the fast path (transformers itself uses `None` for
# "plain top-left causal", which a first prefill into an empty static cache also gets, so `None` cannot mark it).
OFFSET_CAUSAL = torch.empty((0, 0, 0, 0), dtype=torch.bool)

PAD_RATIO = 4
"""Up to `q_length / PAD_RATIO` cached positions, the fast path pads the queries (one causal call; the padding costs
at most ~1/PAD_RATIO² of the attention) instead of merging two calls (whose merge of the outputs cost ~5% of a
1000-token prefill on CPU)."""


def _flash(query, key, value, is_causal: bool, scale: float | None):
    """torch's CPU flash-attention kernel (what sdpa dispatches to without a mask), which also returns the log-sum-exp
    of every query's scores."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, is_causal, scale=scale)


def _sdpa_dtype(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """`query, key, value` in the one dtype sdpa would compute in: under autocast its lower-precision dtype (sdpa is
    on autocast's list; the aten kernel called directly is not, and under CPU bf16 autocast RoPE leaves queries and
    keys in fp32 next to bf16 values), else the query's."""
    device_type = query.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else query.dtype
    return query.to(dtype), key.to(dtype), value.to(dtype)


def _cpu_low_precision_decode(query, key, value, dropout, module, kwargs) -> bool:
    """A decode step (one new query per sequence) in bf16/fp16 on the CPU, at inference."""
    return (
        query.device.type == "cpu"
        and query.shape[2] == 1
        and query.dtype in (torch.bfloat16, torch.float16)
        and not (dropout and module.training)
        and not (torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad))
        and kwargs.get("s_aux") is None  # attention sinks: transformers' own path
    )


def _decode_attention(query, key, value, attention_mask, scaling: float | None) -> torch.Tensor:
    """Attention of one query per sequence over the cache in fp32 (scores, softmax, weighted sum), from bf16/fp16
    inputs: the numbers of torch's sdpa kernel (which computes in fp32 too), 5-9x faster on the CPU, where that kernel
    runs one low-precision query 9x slower than an fp32 one (3.3 ms against 0.36 ms per layer over 4000 cached
    positions, AMD EPYC, one thread). Grouped-query heads share their key/value head without copies. Returns
    `[batch, 1, heads, head_dim]` like `sdpa_attention_forward`.

    Batch-invariant: each row is computed on its own, over its own keys (a decode batch's rows are left-padded to its
    longest cache, `grit_hf.generation.batched`), so it gets, to the bit, what it gets alone. Over a padded batch at
    once, the fp32 sums over the keys round with the padding in front of a row's keys and with the batch's size
    (torch's batched matmuls pick their kernels by both; `benchmarks/batch_invariance.py`). A mask that is not
    left-padding (holes) is applied to the batch as it is."""
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    scale = dim**-0.5 if scaling is None else scaling
    contiguous = dict(dtype=torch.float32, memory_format=torch.contiguous_format)  # equal inputs, equal layouts
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim).to(**contiguous)
    starts = _left_padding(attention_mask, batch, key.shape[2])
    if starts is None:  # a mask with holes
        return _attend_batch(query, key, value, attention_mask, scaling)
    rows = []
    for row, start in enumerate(starts):
        keys = key[row : row + 1, :, start:].to(**contiguous)
        scores = torch.matmul(grouped[row : row + 1], keys.transpose(-1, -2)) * scale
        rows.append(torch.matmul(scores.softmax(-1), value[row : row + 1, :, start:].to(**contiguous)))
    output = torch.cat(rows) if batch > 1 else rows[0]
    return output.reshape(batch, heads, 1, dim).transpose(1, 2).to(query.dtype).contiguous()


def _attend_batch(query, key, value, attention_mask, scaling: float | None) -> torch.Tensor:
    """`_decode_attention` of the whole batch at once, the mask applied to the scores (not batch-invariant)."""
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim).float()
    scores = torch.matmul(grouped, key.transpose(-1, -2).float()) * (dim**-0.5 if scaling is None else scaling)
    if attention_mask is not None:  # [batch, 1, 1, keys]: boolean (True = attend) or additive
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask[..., -key.shape[2] :], float("-inf"))
        else:
            scores = scores + attention_mask[..., -key.shape[2] :].float()
    output = torch.matmul(scores.softmax(-1), value.float())
    return output.reshape(batch, heads, 1, dim).transpose(1, 2).to(query.dtype).contiguous()


def _left_padding(attention_mask: torch.Tensor | None, batch: int, length: int) -> list[int] | None:
    """Where each row's keys start, if `attention_mask` (`[batch, 1, 1, keys]`, boolean or additive; `None`: every
    key) masks only a run of keys in front of each row; else `None`."""
    if attention_mask is None:
        return [0] * batch
    keep = attention_mask[:, 0, -1, -length:].expand(batch, length)
    keep = keep if keep.dtype == torch.bool else keep == 0
    starts = (~keep).sum(1)
    if not torch.equal(keep, torch.arange(length, device=keep.device)[None] >= starts[:, None]):
        return None
    return starts.tolist()


def offset_causal_sdpa_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
):
    """transformers' `sdpa_mask`, except the `OFFSET_CAUSAL` marker for a plain causal mask of several new tokens right
    after every cached one on CPU (no padding, no window, no empty slots of a static cache):
    `offset_causal_sdpa_attention` handles that case without a mask."""
    device = torch.device(kwargs.get("device", "cpu"))
    if (
        device.type == "cpu"
        and mask_function is causal_mask_function
        and 1 < q_length < kv_length
        and isinstance(q_offset, int)
        and q_offset + q_length == kv_length
        and kv_offset == 0
        and (attention_mask is None or bool(attention_mask.all()))
    ):
        return OFFSET_CAUSAL
    return sdpa_mask(
        batch_size, q_length, kv_length, q_offset=q_offset, kv_offset=kv_offset, mask_function=mask_function,
        attention_mask=attention_mask, **kwargs,
    )  # fmt: skip


def offset_causal_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """sdpa attention; new tokens right after cached ones (the `OFFSET_CAUSAL` marker) attend to the cached positions
    and causally to each other through two maskless flash-kernel calls merged by log-sum-exp."""
    q_length, kv_length = query.shape[2], key.shape[2]
    if _cpu_low_precision_decode(query, key, value, dropout, module, kwargs):
        return _decode_attention(query, key, value, attention_mask, scaling), None
    if attention_mask is OFFSET_CAUSAL and dropout and module.training:  # the kernel takes no dropout: mask instead
        attention_mask = torch.ones(q_length, kv_length, dtype=torch.bool, device=query.device)
        attention_mask = attention_mask.tril(kv_length - q_length)[None, None]
    if attention_mask is not OFFSET_CAUSAL:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    cached = kv_length - q_length
    # The CPU flash kernel returns its log-sum-exp without a gradient, so the merge would drop part of the gradient:
    # under autograd (the trainer's cache loss) the padded call is used whatever the number of cached positions.
    differentiable = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    if differentiable or PAD_RATIO * cached <= q_length:
        # Few cached positions: pad the queries to the keys' length with `cached` rows in front, so that torch's
        # top-left causal mask is the lower-right one, in one call: the call of a plain prefill of the whole prompt
        # (each row's output depends only on its own query, so the new rows get exactly what it computes for them).
        padded = torch.cat([query.new_zeros((*query.shape[:2], cached, query.shape[-1])), query], dim=2)
        output = torch.nn.functional.scaled_dot_product_attention(
            padded, key, value, is_causal=True, scale=scaling, enable_gqa=key.shape[1] != query.shape[1]
        )[:, :, cached:]
        return output.transpose(1, 2).contiguous(), None
    query, key, value = _sdpa_dtype(query, key, value)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out_cached, lse_cached = _flash(query, key[:, :, :cached], value[:, :, :cached], False, scaling)
    out_new, lse_new = _flash(query, key[:, :, cached:], value[:, :, cached:], True, scaling)
    lse = torch.logaddexp(lse_cached, lse_new)
    output = out_cached * torch.exp(lse_cached - lse).unsqueeze(-1) + out_new * torch.exp(lse_new - lse).unsqueeze(-1)
    return output.to(query.dtype).transpose(1, 2).contiguous(), None
