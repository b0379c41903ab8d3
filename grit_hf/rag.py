"""RAG with one GRIT model: it retrieves with its embeddings and answers, reusing the key/value states computed while
embedding (paper section 4, "RAG with caching").

Modes of `GritRAG.answer` (prompts in `grit_hf.rag_prompts`):

| mode | prompt | cached |
|---|---|---|
| `none` | the query in the chat template | - |
| `rag_query_doc` | query part (query template + query) + `query_cached` suffix with the documents' text | - |
| `rag_doc_query` | document part(s) (document template + text) + `doc_cached` suffix with the query | - |
| `query` | as `rag_query_doc` | the query part (states of its embedding pass) |
| `doc` | as `rag_doc_query` | the document part(s) (states stored by `add_documents`) |
| `query_doc` | query part + document part(s) + `query_doc_cached` suffix | both |
| `doc_query` | document part(s) + query part + `doc_query_cached` suffix | both |

Plain RAG re-reads exactly the token ids the caching modes take from the cache, so with causal caches
(`cache_attention="causal"`) `query` equals `rag_query_doc` and `doc` equals `rag_doc_query` token for token. With
bidirectional caches (the paper, one embedding pass gives both the embedding and the states) they approximate it.

Positions: every cached part is re-rotated to the offset it takes in the prompt, so several documents (`top_k > 1`)
and query+document caches sit at correct, consecutive positions (the reference started every cache at 0). A cached
document stands for its whole embedding input, `document_template + text` (plus BOS when it opens the prompt; a BOS
is dropped when the document comes later). `split_prompt` therefore takes a document template that directly precedes
a document's text in a rendered prompt into the cached part, and otherwise the template's tokens are added there: a
prompt that starts with a cached document continues exactly as without the cache (causal caches).

Counts: `prompt_tokens` counts every prompt token, `cache_read_tokens` those whose states were reused rather than
computed during generation (stored document states, and the query states of the retrieval pass in query modes).

Threads: one re-entrant lock per model (`model_lock`) is held around every forward pass (embedding toggles the
decoder's attention flag), so several threads and `GritRAG` instances may share a model; streams interleave by token.
Stored states are never written to: they are copied once into the decode cache of each answer.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers.utils import logging

from .cache.buffers import DECODE_CACHES, DecodeCache
from .cache.positions import find_rotary_embedding, verify_rerotation
from .cache.states import KVStates
from .cache.store import KVStore, MemoryKVStore, compute_fingerprint
from .formatting import apply_chat_template, check_texts, count_prefix_tokens, tokenize_with_prefix
from .rag_generation import (
    CachedSegment,
    GenerationResult,
    GenerationStream,
    Segment,
    SegmentGenerationMixin,
    model_lock,
)
from .rag_prompts import RAG_MODES, RAGMode, RAGPrompts, split_on_texts

logger = logging.get_logger(__name__)

__all__ = [
    "GritRAG",
    "model_lock",
    "RAGAnswer",
    "RAGStream",
    "CachedSegment",
    "GenerationResult",
    "GenerationStream",
    "Segment",
]

CacheAttention = Literal["bidirectional", "causal"]
_CACHED_QUERY_MODES = ("query", "query_doc", "doc_query")


@dataclass
class RAGAnswer(GenerationResult):
    """A `GenerationResult` plus the retrieval: `doc_ids` and `scores` of the documents used, and the `mode`."""

    doc_ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    mode: str = "doc"


class RAGStream(GenerationStream):
    """Text pieces of an answer; `result` is the `RAGAnswer`, complete once the stream is exhausted."""


class GritRAG(SegmentGenerationMixin):
    """Retrieval and generation with one GRIT model, reusing cached key/value states.

    Args:
        model: a `GritLMForCausalLM` (its tokenizer is `model.tokenizer`).
        cache_attention: `"bidirectional"` (the paper: the embedding pass's states are stored) or `"causal"`
            (states from a causal pass; exact continuation). When it differs from the model's embedding attention,
            documents and queries are run twice (an embedding pass and a states pass).
        store: where document states go (default: an unbounded `MemoryKVStore`); bound to this setup's fingerprint.
        prompts: the prompt formats (default: `RAGPrompts.for_model(model)`).
        query_instruction: instruction for queries (default: `config.default_query_instruction`).
        max_length: most tokens per document or query, template included.
        batch_size: texts per embedding forward pass.
        decode_cache: the cache decoded from (`grit_hf.cache.buffers`): `"preallocated"` (default; appends without
            copying), `"dynamic"` (transformers' `DynamicCache`) or `"static"` (`StaticCache`).
        compile: with `decode_cache="static"` on CUDA, decode with a `torch.compile`d forward.
        verify_positions: check once that re-rotating keys matches the model (`verify_rerotation`).

    Example:

    ```python
    >>> rag = GritRAG(model)
    >>> rag.add_documents(["Paris is the capital of France."], ids=["paris"])
    ['paris']
    >>> rag.answer("What is the capital of France?", mode="doc").doc_ids
    ['paris']
    ```
    """

    def __init__(
        self,
        model,
        cache_attention: CacheAttention = "bidirectional",
        store: KVStore | None = None,
        prompts: RAGPrompts | None = None,
        query_instruction: str | None = None,
        max_length: int = 4096,
        batch_size: int = 8,
        decode_cache: DecodeCache = "preallocated",
        compile: bool = False,
        verify_positions: bool = True,
    ):
        if not hasattr(model, "encode") or not hasattr(model, "tokenizer"):
            raise TypeError(f"`model` must be a GritLMForCausalLM, got {type(model).__name__}.")
        if cache_attention not in ("bidirectional", "causal"):
            raise ValueError(
                f"Invalid `cache_attention`: {cache_attention!r}. Valid choices are: ('bidirectional', 'causal')."
            )
        if store is not None and not isinstance(store, KVStore):
            raise TypeError(f"`store` must be a KVStore, got {type(store).__name__}.")
        if prompts is not None and not isinstance(prompts, RAGPrompts):
            raise TypeError(f"`prompts` must be a RAGPrompts, got {type(prompts).__name__}.")
        if decode_cache not in DECODE_CACHES:
            raise ValueError(f"Invalid `decode_cache`: {decode_cache!r}. Valid choices are: {DECODE_CACHES}.")
        for name, value in (("max_length", max_length), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if compile and decode_cache != "static":
            raise ValueError("`compile=True` needs `decode_cache='static'`.")
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.cache_attention = cache_attention
        self.causal_cache = cache_attention == "causal"
        self.prompts = prompts if prompts is not None else RAGPrompts.for_model(model)
        self.query_instruction = (
            model.config.default_query_instruction if query_instruction is None else query_instruction
        )
        self.max_length, self.batch_size = max_length, batch_size
        self.decode_cache, self.compile = decode_cache, compile
        self._lock = model_lock(model)
        self._rotary = find_rotary_embedding(model)
        if verify_positions:
            with self._lock:
                verify_rerotation(model)
        prefix = self.tokenizer("", add_special_tokens=True)["input_ids"]
        self._special_prefix = prefix[: count_prefix_tokens(self.tokenizer, "")]
        self.fingerprint = compute_fingerprint(model, is_causal=self.causal_cache)
        self.store = store if store is not None else MemoryKVStore()
        self.store.bind(self.fingerprint)
        self._ids: list[str] = []
        self._texts: dict[str, str] = {}
        self._embeddings = torch.empty(0, model.config.text_config.hidden_size)

    # -- indexing ----------------------------------------------------------------------------------------------------
    def _encode(
        self,
        texts: list[str],
        instruction: str,
        states: bool,
        embeddings: bool = True,
        show_progress_bar: bool | None = False,
    ):
        """`(embeddings, states)` of `texts` under the model's lock: embeddings in the model's embedding attention,
        states (if asked) in the cache attention (one pass when the two agree; `embeddings=False` skips a pass)."""
        kwargs = dict(
            instruction=instruction,
            batch_size=self.batch_size,
            max_length=self.max_length,
            convert_to_tensor=True,
            show_progress_bar=show_progress_bar,
        )
        with self._lock:
            if not states:
                return self.model.encode(texts, **kwargs), None
            if self.causal_cache == self.model.config.is_causal_embedding:
                return self.model.encode(texts, return_states=True, **kwargs)
            vectors = self.model.encode(texts, **kwargs) if embeddings else None
            _, kv = self.model.encode(texts, return_states=True, is_causal=self.causal_cache, **kwargs)
            return vectors, kv

    def add_documents(
        self, texts: str | Sequence[str], ids: Sequence[str] | None = None, show_progress_bar: bool | None = None
    ) -> list[str]:
        """Embed documents and store their states (one encode pass gives both when the attentions agree).

        Args:
            texts: the documents.
            ids: their ids (default: the first 16 hex digits of the sha256 of each text). An existing id is replaced.
            show_progress_bar: show tqdm bars; `None` shows them when the logger is at INFO or DEBUG.

        Returns:
            The ids, in order.
        """
        texts, _ = check_texts(texts, "texts")
        if ids is None:
            ids = [hashlib.sha256(text.encode()).hexdigest()[:16] for text in texts]
        elif isinstance(ids, str) or not isinstance(ids, Sequence) or len(ids) != len(texts):
            raise ValueError(f"`ids` must be a list of {len(texts)} str (one per text), got {ids!r:.80}.")
        ids = list(ids)
        for index, doc_id in enumerate(ids):
            if not isinstance(doc_id, str) or not doc_id:
                raise TypeError(f"`ids[{index}]` must be a non-empty str, got {doc_id!r}.")
        if len(set(ids)) != len(ids):
            raise ValueError("`ids` contain duplicates.")
        if not texts:
            return []
        embeddings, states = self._encode(texts, "", states=True, show_progress_bar=show_progress_bar)
        with self._lock:
            for doc_id, text, kv in zip(ids, texts, states):
                self.store.put(doc_id, kv)
                self._texts[doc_id] = text
            keep = [i for i, doc_id in enumerate(self._ids) if doc_id not in set(ids)]
            self._ids = [self._ids[i] for i in keep] + ids
            self._embeddings = torch.cat([self._embeddings[keep], embeddings.float().cpu()])
        return ids

    @property
    def doc_ids(self) -> list[str]:
        """Ids of the indexed documents."""
        return list(self._ids)

    def get_text(self, doc_id: str) -> str:
        """The text of an indexed document."""
        if doc_id not in self._texts:
            raise KeyError(f"Unknown document id {doc_id!r}.")
        return self._texts[doc_id]

    def get_embeddings(self, doc_ids: Sequence[str]) -> torch.Tensor:
        """The stored embeddings `(n, dim)` (float32, CPU) of indexed documents, in the order of `doc_ids`."""
        if isinstance(doc_ids, str) or not isinstance(doc_ids, Sequence):
            raise TypeError(f"`doc_ids` must be a list of str, got {type(doc_ids).__name__}.")
        with self._lock:
            rows = {doc_id: row for row, doc_id in enumerate(self._ids)}
            missing = [doc_id for doc_id in doc_ids if doc_id not in rows]
            if missing:
                raise KeyError(f"Unknown document id(s) {missing[:5]!r}: add them with `add_documents` first.")
            return self._embeddings[[rows[doc_id] for doc_id in doc_ids]].clone()

    def embed(self, texts: str | Sequence[str], instruction: str | None = None) -> torch.Tensor:
        """Embeddings `(n, dim)` of `texts` with `instruction` (default: `query_instruction`; `""` embeds them as
        documents), under the lock; nothing is indexed or cached."""
        texts, _ = check_texts(texts, "texts")
        if instruction is not None and not isinstance(instruction, str):
            raise TypeError(f"`instruction` must be a str or None, got {type(instruction).__name__}.")
        if not texts:
            return torch.empty(0, self._embeddings.shape[1])
        instruction = self.query_instruction if instruction is None else instruction
        return self._encode(texts, instruction, states=False)[0].float().cpu()

    @property
    def lock(self) -> threading.RLock:
        """The re-entrant lock held around every forward pass of the model (hold it for direct model use)."""
        return self._lock

    def _cached_states(self, doc_id: str) -> KVStates:
        if not isinstance(doc_id, str):
            raise TypeError(f"`doc_id` must be a str, got {type(doc_id).__name__}.")
        states = self.store.get(doc_id)
        if states is not None:
            return states
        if doc_id not in self._texts:
            raise KeyError(f"No cached states for document {doc_id!r}: add it with `add_documents` first.")
        logger.info(f"States of {doc_id!r} are no longer stored; recomputing them.")
        _, (states,) = self._encode([self._texts[doc_id]], "", states=True)
        self.store.put(doc_id, states)
        return states

    # -- retrieval ---------------------------------------------------------------------------------------------------
    def _rank(self, query_embedding: torch.Tensor, top_k: int) -> list[tuple[str, float]]:
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"`top_k` must be a positive int, got {top_k!r}.")
        if not self._ids:
            return []
        scores = self._embeddings @ query_embedding.float().cpu().reshape(-1)
        values, order = scores.topk(min(top_k, len(self._ids)))
        return [(self._ids[i], float(v)) for i, v in zip(order.tolist(), values.tolist())]

    def search(self, query: str, top_k: int = 4) -> list[tuple[str, float]]:
        """The `top_k` documents closest to `query` (cosine similarity), best first: `[(doc_id, score), ...]`."""
        if not isinstance(query, str):
            raise TypeError(f"`query` must be a str, got {type(query).__name__}.")
        embedding, _ = self._encode([query], self.query_instruction, states=False)
        return self._rank(embedding[0], top_k)

    def split_prompt(self, prompt: str, doc_ids: Sequence[str] | None = None) -> list[Segment]:
        """Split a rendered prompt into segments, replacing each indexed document whose text appears verbatim by a
        `CachedSegment` (earliest, then longest match first; overlapping matches are skipped).

        A cached document stands for `document_template + text`: if the template text directly precedes the match
        it is absorbed (the prompt is unchanged); otherwise the spliced states add the template's tokens there.

        Args:
            prompt: the rendered prompt (e.g. a chat template's output).
            doc_ids: only look for these documents (default: all indexed documents).

        Returns:
            `[str, CachedSegment, str, ...]` (empty text pieces left out); `[prompt]` if no document appears.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"`prompt` must be a str, got {type(prompt).__name__}.")
        candidates = self._ids if doc_ids is None else list(doc_ids)
        texts = {doc_id: self._texts[doc_id] for doc_id in candidates if self._texts.get(doc_id)}
        pieces = split_on_texts(prompt, texts, self.model.config.document_template)
        return [piece if isinstance(piece, str) else CachedSegment(piece[0]) for piece in pieces]

    # -- answering ---------------------------------------------------------------------------------------------------
    def _query_part(self, query: str, need_states: bool, need_embedding: bool = True):
        embedding, states = self._encode([query], self.query_instruction, need_states, need_embedding)
        return (embedding[0] if embedding is not None else None), (states[0] if states else None)

    def query_states(self, query: str) -> KVStates:
        """The states of `query` in its embedding format (query template + query) and the cache attention: what the
        query-caching modes reuse (`answer` takes them from the retrieval pass itself)."""
        if not isinstance(query, str):
            raise TypeError(f"`query` must be a str, got {type(query).__name__}.")
        return self._query_part(query, need_states=True, need_embedding=False)[1]

    def _text_ids(self, text: str, prefix: str, first: bool) -> list[int]:
        """The token ids the embedding pass runs for `prefix + text` (BOS dropped unless `first`)."""
        (ids,), _ = tokenize_with_prefix(self.tokenizer, prefix, [text], self.max_length)
        if not first and self._special_prefix and ids[: len(self._special_prefix)] == self._special_prefix:
            ids = ids[len(self._special_prefix) :]
        return ids

    def build_segments(
        self, query: str, mode: RAGMode, doc_ids: Sequence[str], query_states: KVStates | None = None
    ) -> list:
        """The prompt of `mode` for `query` and the documents `doc_ids`, as segments for `generate_from_segments`.

        Plain RAG modes give token id lists (exactly the ids the caching modes take from the cache); caching modes
        give `CachedSegment`s and the query's `KVStates` (`query_states`, computed here if not given)."""
        if mode not in RAG_MODES:
            raise ValueError(f"Invalid `mode`: {mode!r}. Valid modes are: {RAG_MODES}.")
        prompts = self.prompts
        if mode == "none":
            return [
                apply_chat_template(self.tokenizer, query, self.model.config.chat_template) + prompts.response_prefix
            ]
        if mode in _CACHED_QUERY_MODES and query_states is None:
            _, query_states = self._query_part(query, need_states=True, need_embedding=False)
        docs_text = prompts.doc_separator.join(self.get_text(doc_id) for doc_id in doc_ids)
        cached_docs = [CachedSegment(doc_id) for doc_id in doc_ids]
        if mode == "rag_query_doc":
            query_ids = self._text_ids(query, self.model.config.format_query_prefix(self.query_instruction), True)
            return [query_ids, prompts.suffix(mode, doc=docs_text)]
        if mode == "query":
            return [query_states, prompts.suffix(mode, doc=docs_text)]
        if mode == "rag_doc_query":
            template = self.model.config.document_template
            doc_parts = [self._text_ids(self.get_text(d), template, i == 0) for i, d in enumerate(doc_ids)]
            return [*doc_parts, prompts.suffix(mode, query=query)]
        if mode == "doc":
            return [*cached_docs, prompts.suffix(mode, query=query)]
        if mode == "query_doc":
            return [query_states, *cached_docs, prompts.suffix(mode)]
        return [*cached_docs, query_states, prompts.suffix(mode)]

    def _start_answer(self, query, mode, top_k, max_new_tokens, stop, doc_ids, **kwargs):
        if not isinstance(query, str):
            raise TypeError(f"`query` must be a str, got {type(query).__name__}.")
        if mode not in RAG_MODES:
            raise ValueError(f"Invalid `mode`: {mode!r}. Valid modes are: {RAG_MODES}.")
        query_states, scores = None, []
        if mode == "none":
            doc_ids = []
        elif doc_ids is None:
            embedding, query_states = self._query_part(query, need_states=mode in _CACHED_QUERY_MODES)
            ranked = self._rank(embedding, top_k)
            if not ranked:
                raise ValueError("No documents are indexed: call `add_documents` first.")
            doc_ids, scores = [doc_id for doc_id, _ in ranked], [score for _, score in ranked]
        else:
            doc_ids = list(doc_ids)
        segments = self.build_segments(query, mode, doc_ids, query_states)
        answer = RAGAnswer(doc_ids=doc_ids, scores=scores, mode=mode)
        return self._start(segments, max_new_tokens, stop, result=answer, **kwargs)

    def answer(
        self,
        query: str,
        mode: RAGMode = "doc",
        top_k: int = 1,
        max_new_tokens: int = 64,
        stop: str | list[str] | None = None,
        doc_ids: Sequence[str] | None = None,
        stream: bool = False,
        temperature: float = 0.0,
        top_p: float = 1.0,
        ignore_eos: bool = False,
        seed: int | None = None,
    ) -> RAGAnswer | RAGStream:
        """Retrieve the `top_k` documents for `query` (or use `doc_ids`) and answer with `mode` (see the module
        docstring). Returns a `RAGAnswer` (`text`, `doc_ids`, `scores`, `cache_read_tokens`, ...), or with
        `stream=True` a `RAGStream` of text pieces whose `result` is the `RAGAnswer`."""
        pieces, answer = self._start_answer(
            query,
            mode,
            top_k,
            max_new_tokens,
            stop,
            doc_ids,
            temperature=temperature,
            top_p=top_p,
            ignore_eos=ignore_eos,
            seed=seed,
        )
        if stream:
            return RAGStream(pieces, answer)
        for _ in pieces:
            pass
        return answer

    def stream_answer(
        self, query: str, mode: RAGMode = "doc", top_k: int = 1, max_new_tokens: int = 64, **kwargs
    ) -> RAGStream:
        """`answer(..., stream=True)`: an iterator of text pieces; its `result` is the `RAGAnswer` at the end."""
        return self.answer(query, mode=mode, top_k=top_k, max_new_tokens=max_new_tokens, stream=True, **kwargs)
