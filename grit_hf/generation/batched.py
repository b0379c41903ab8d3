"""Batched decoding: the decode steps of all active streams of one `Generator` run as one forward pass.

Each stream composes its prompt in its own thread (the prefill, under the model's lock, as an unbatched stream does)
and hands the composed states and the prompt's last logits to the `DecodeBatch` thread. At every step that thread
picks each stream's next token (with the stream's own sampling options and seed) and hands it over, then runs one
forward pass for all streams: their caches stacked along the batch, left-padded to the longest (the padding masked
out, every row at its own positions). A new stream joins at the next step; a finished or closed one leaves. Text,
stop strings and streaming stay in each stream's thread (`Generator._text`).

Batch-invariant in bf16 (CPU): at every step, a stream's logits are those it gets decoded alone in the batch, to the
bit, whatever else is decoded with it, so a greedy answer does not depend on the server's load. Two things make it so:
a lone stream decodes as 2 rows (`_fit_shadow`: oneDNN's bf16 matmul rounds one-row calls differently from calls of 2
rows or more, which agree with each other), and the decode attention runs row by row over each row's own keys
(`grit_hf.attention._decode_attention`); measured in `benchmarks/results/batch_invariance_cpu.md`. In fp32 the rows of
one call still round with the batch's size (MKL picks its fp32 kernels by the row count): the last bits of the logits
can differ, and greedy answers did not (0 of 20). Sequential decoding (`batch_decoding=False`) runs one-row matmuls: in
bf16 its answers can differ from the batched ones, each of them independent of the load.

Why not transformers' continuous batching (`generate_batch` / `ContinuousBatchingManager`, the engine behind
`transformers serve`): a request there is a list of token ids whose states it computes itself, into its own paged
cache. It has no way to start from composed cached states (a document's stored states re-rotated to their place in
the prompt), which is what GRIT's caching is for. Stacking composed caches here costs one copy of the batch's cache
when a stream joins or leaves, none per step (the stacked cache is a preallocated buffer, `PreallocatedLayer`).
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ..cache.buffers import PreallocatedLayer

__all__ = ["DecodeBatch"]

_END = object()
IDLE_SECONDS = 1.0
"""The loop's thread ends after this long without streams (so that none is left waiting when the process exits)."""


@dataclass(eq=False)
class _Stream:
    """One stream in the batch: its next-token logits, position, options and the queue its tokens go to."""

    logits: torch.Tensor
    position: int
    options: object  # GenerationOptions
    result: object  # GenerationResult
    layers: list[tuple[torch.Tensor, torch.Tensor]] | None  # its composed states, until it joins
    sampler: torch.Generator | None
    tokens: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    steps: int = 0
    closed: bool = False


class DecodeBatch:
    """The decode loop shared by the streams of one `Generator` (see the module docstring).

    Args:
        model: the `GritLMForCausalLM`.
        eos_ids: end tokens.
        pick: `pick(logits, temperature, top_p, sampler) -> token id`.
        forward: the forward of a step (called under the model's lock; default `model.causal_lm_forward`, e.g. a
            compiled one).
    """

    def __init__(self, model, eos_ids: set[int], pick, forward=None):
        self.model, self.eos_ids, self._pick = model, eos_ids, pick
        self._step = model.causal_lm_forward if forward is None else forward
        self._cond = threading.Condition()
        self._joining: list[_Stream] = []
        self._streams: list[_Stream] = []
        self._layers: list[PreallocatedLayer] = []  # the stacked cache, [streams, heads, capacity, head_dim]
        self._mask = torch.zeros(0, 0, dtype=torch.long)  # [streams, width]: 1 for real positions
        self._thread: threading.Thread | None = None
        self._closing = False
        # a lone stream decodes as 2 rows (see `_fit_shadow`): in bf16/fp16 on the CPU, where it makes decoding
        # batch-invariant; fp32 rows round with the row count anyway, and a shadow row cost 40% of one stream's speed
        self.invariant = model.device.type == "cpu" and model.dtype in (torch.bfloat16, torch.float16)
        _open_batches.add(self)

    @property
    def active(self) -> int:
        """Streams being decoded or waiting to join."""
        with self._cond:
            return len(self._streams) + len(self._joining)

    def submit(self, cache, logits: torch.Tensor, position: int, options, result) -> Iterator[int]:
        """Hand a composed prompt (`cache` with `position` positions, its last `logits`) to the loop; returns the
        stream's token ids as they are decoded (closing it makes the stream leave at the next step)."""
        sampler = None
        if options.seed is not None:
            sampler = torch.Generator(device=logits.device).manual_seed(options.seed)
        layers = [(layer.keys[:, :, :position], layer.values[:, :, :position]) for layer in cache.layers]
        stream = _Stream(logits, position, options, result, layers, sampler)
        with self._cond:
            if self._closing:
                raise RuntimeError("This generator's decode batch is closed (the process is exiting).")
            self._joining.append(stream)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="grit-hf-decode-batch", daemon=True)
                self._thread.start()
            self._cond.notify()
        return self._tokens(stream)

    def close(self) -> None:
        """Stop the loop's thread (at exit; streams still decoding get no more tokens)."""
        with self._cond:
            self._closing = True
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _tokens(self, stream: _Stream) -> Iterator[int]:
        try:
            while (item := stream.tokens.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stream.closed = True  # the loop drops it at its next step

    # -- the loop (its own thread) -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._joining and not self._streams and not self._closing:
                    self._cond.wait(IDLE_SECONDS)
                if self._closing or (not self._joining and not self._streams):
                    self._thread = None  # idle (the next stream starts a new thread) or closed
                    return
                joining, self._joining = self._joining, []
            try:
                with torch.inference_mode():
                    self._join(joining)
                    tokens = self._next_tokens()
                    if self._streams:
                        self._forward(tokens)
            except BaseException as error:  # handed to every stream of the batch
                with self._cond:
                    failed = list(dict.fromkeys([*self._streams, *joining]))
                    self._streams, self._layers = [], []
                    self._mask = self._mask[:0, :0]
                for stream in failed:
                    stream.tokens.put(error)

    def _next_tokens(self) -> list[int]:
        """Pick every stream's next token and hand it over; streams that end (or were closed) leave the batch."""
        keep, tokens = [], []
        for row, stream in enumerate(self._streams):
            if stream.closed:
                continue
            options = stream.options
            token = self._pick(stream.logits, options.temperature, options.top_p, stream.sampler)
            if token in self.eos_ids and not options.ignore_eos:
                stream.result.finish_reason = "stop"
                stream.tokens.put(_END)
                continue
            stream.tokens.put(token)
            stream.steps += 1
            if stream.steps == options.max_new_tokens:
                stream.tokens.put(_END)
                continue
            keep.append(row)
            tokens.append(token)
        if len(keep) < len(self._streams):
            self._keep_rows(keep)
        return tokens

    def _forward(self, tokens: list[int]) -> None:
        device = self.model.device
        rows = self._mask.shape[0]  # the streams, and a lone stream's shadow row
        tokens = tokens + tokens[: rows - len(tokens)]
        positions = [s.position for s in self._streams]
        positions += positions[: rows - len(positions)]
        self._mask = torch.cat([self._mask, self._mask.new_ones(rows, 1)], dim=1)
        cache = DynamicCache()
        cache.layers.extend(self._layers)
        with self.model.forward_lock:
            logits = self._step(
                input_ids=torch.tensor(tokens, device=device)[:, None],
                attention_mask=self._mask.to(device),
                position_ids=torch.tensor(positions, device=device)[:, None],
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
        for stream, row_logits in zip(self._streams, logits):
            stream.logits = row_logits
            stream.position += 1

    # -- the stacked cache ---------------------------------------------------------------------------------------------
    def _join(self, joining: list[_Stream]) -> None:
        """Stack the joining streams' states under the batch's, all left-padded to the longest."""
        if not joining:
            return
        width = max([self._mask.shape[1], *(s.layers[0][0].shape[2] for s in joining)])
        n = len(self._streams)  # rows past them: a shadow row, dropped here
        rows = [self._padded(layer.keys[:n], layer.values[:n], width) for layer in self._layers] if n else None
        masks = [torch.nn.functional.pad(self._mask[:n], (width - self._mask.shape[1], 0))] if n else []
        new_rows = []
        for stream in joining:
            length = stream.layers[0][0].shape[2]
            new_rows.append([self._padded(k, v, width) for k, v in stream.layers])
            masks.append(
                torch.cat(
                    [torch.zeros(1, width - length, dtype=torch.long), torch.ones(1, length, dtype=torch.long)], 1
                )
            )
            stream.layers = None
        per_layer = [[r[i] for r in ([rows] if rows else []) + new_rows] for i in range(len(new_rows[0]))]
        self._layers = [
            _layer(torch.cat([kv[0] for kv in kvs]), torch.cat([kv[1] for kv in kvs]), width) for kvs in per_layer
        ]
        self._mask = torch.cat(masks)
        self._streams = [*self._streams, *joining]
        self._fit_shadow()

    @staticmethod
    def _padded(keys: torch.Tensor, values: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        pad = width - keys.shape[2]
        return (
            torch.nn.functional.pad(keys, (0, 0, pad, 0)),
            torch.nn.functional.pad(values, (0, 0, pad, 0)),
        )

    def _keep_rows(self, rows: list[int]) -> None:
        self._streams = [self._streams[row] for row in rows]
        if not rows:
            self._layers, self._mask = [], self._mask[:0, :0]
            return
        index = torch.tensor(rows, device=self._layers[0].keys.device)
        width = self._mask.shape[1]
        # drop the columns that are padding in every remaining row
        first = int((self._mask[rows].cumsum(1) == 0).sum(1).min())
        self._layers = [
            _layer(
                layer.keys.index_select(0, index)[:, :, first:],
                layer.values.index_select(0, index)[:, :, first:],
                width - first,
            )
            for layer in self._layers
        ]
        self._mask = self._mask[rows][:, first:]
        self._fit_shadow()

    def _fit_shadow(self) -> None:
        """Give a lone stream a shadow row (a copy of its own) in the stacked cache, and drop it when others join.

        Batch invariance in bf16 on the CPU: oneDNN's bf16 matmul computes a one-row call with other kernels (another
        summation order over K) than a call with 2 or more rows, and those agree with each other whatever the row
        count and a row's place (checked up to 64 rows, 1 and 2 threads: `benchmarks/batch_invariance.py`). So a
        lone stream decodes as 2 rows: its tokens are those it gets among others. The copy is made when a stream
        joins or leaves, not per step; a step costs the attention of one more row."""
        n = len(self._streams)
        want = self.invariant and n == 1
        if want == (self._mask.shape[0] > n):
            return
        index = torch.tensor([0, 0] if want else list(range(n)), device=self._layers[0].keys.device)
        width = self._mask.shape[1]
        self._layers = [
            _layer(layer.keys.index_select(0, index), layer.values.index_select(0, index), width)
            for layer in self._layers
        ]
        self._mask = self._mask[index.cpu()]


_open_batches: weakref.WeakSet[DecodeBatch] = weakref.WeakSet()


@atexit.register
def _close_open_batches() -> None:
    """End the loops' threads before the interpreter stops daemon threads (which would abort the process)."""
    for batch in list(_open_batches):
        batch.close()


def _layer(keys: torch.Tensor, values: torch.Tensor, length: int, spare: int = 64) -> PreallocatedLayer:
    """A `PreallocatedLayer` holding `keys`/`values` ([batch, heads, length, dim]) with room for `spare` more steps."""
    layer = PreallocatedLayer(length + spare)
    layer.lazy_initialization(keys, values)
    layer._keys[:, :, :length] = keys
    layer._values[:, :, :length] = values
    layer.length = length
    layer._set_views()
    return layer
