"""`GritRAG`: retrieval and generation with one GRIT model, reusing the key/value states computed while embedding
(paper section 4, "RAG with caching").

Modes of `GritRAG.answer`: `none`, plain RAG `rag_query_doc` / `rag_doc_query` and the caching modes `query`, `doc`,
`query_doc`, `doc_query` (the table and the prompt layouts are in `grit_hf.rag.prompts`).

Plain RAG re-reads exactly the token ids the caching modes take from the cache. With causal caches
(`cache_attention="causal"`), `query` equals `rag_query_doc` token for token, and so does `doc` with one document
equal `rag_doc_query`; with several documents each was cached without seeing the others, so `doc` approximates plain
RAG (exactness then needs the documents cached together, or a model trained with the cache loss). With
bidirectional caches (the embedding pass's own states, one pass per document) the caching modes are approximations
unless the checkpoint was trained for them (`GRITTrainer` with `lambda_cache > 0`, recorded as the config's
`cache_attention="bidirectional"`, which is then the default here).

Positions: every cached part is re-rotated to its offset in the prompt, so several documents (`top_k > 1`) and
query+document caches sit at consecutive positions (the reference started every cache at 0).

Counts: `prompt_tokens` counts every prompt token, `cache_read_tokens` those whose states were reused (stored
document states, and the query states of the retrieval pass in query modes). Threads: every forward pass holds the
model's lock (`grit_hf.locking`), so threads and `GritRAG` instances may share a model; streams interleave by token
(or share decode steps, `batch_decoding`). Stored states are never written to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from transformers.utils import logging

from ..cache.buffers import DecodeCache
from ..cache.disk import DiskKVStore
from ..cache.entries import CacheEntryError
from ..cache.fingerprint import compute_fingerprint
from ..cache.positions import verify_rerotation
from ..cache.states import KVStates
from ..cache.store import KVStore, MemoryKVStore
from ..configuration_gritlm import ATTENTIONS
from ..formatting import apply_chat_template, check_messages
from ..generation.engine import GenerationOptions, GenerationResult, GenerationStream, Generator
from ..generation.segments import CachedSegment, Part, Segment, resolve_segments, strip_prefix_end
from ..validation import check_positive_int, check_str_list, check_text, check_texts
from .documents import DocumentTable, document_id
from .embedding_pass import EmbeddingPass
from .prompts import CACHED_QUERY_MODES, DocumentSlot, QuerySlot, RAGMode, RAGPrompts, check_mode

logger = logging.get_logger(__name__)

__all__ = ["GritRAG"]


class GritRAG:
    """Retrieval and generation with one GRIT model, reusing cached key/value states.

    Args:
        model: a `GritLMForCausalLM` (its tokenizer is `model.tokenizer`).
        cache_attention: the states cached for documents: `"bidirectional"` (the embedding pass's own states, one pass
            per document) or `"causal"` (an extra causal pass; exact continuation). Defaults to the checkpoint's
            `config.cache_attention` (bidirectional for checkpoints trained with the cache loss, else causal).
        store: where document states go (default: an unbounded `MemoryKVStore`); bound to this setup's fingerprint.
            `MemoryKVStore(quantize="int8")` / `DiskKVStore(..., quantize="int8")` keep them in 8 bits (half of bf16
            per token; `grit_hf.cache.quantization`).
        prompts: the prompt formats (default: `RAGPrompts.for_model(model)`).
        query_instruction: instruction for queries (default: `config.default_query_instruction`).
        max_length: most tokens embedded per document or query, template included (a retrieval choice: a longer text
            is embedded truncated, with a warning; its states are still cached in full, up to `cache_max_length`).
        cache_max_length: most tokens of a document or query whose states are cached (default: the model's
            positions). A longer document is re-read as text where it is used.
        batch_size: texts per embedding forward pass.
        decode_cache, compile, batch_decoding: the generation engine's settings (`grit_hf.generation.Generator`;
            `batch_decoding` runs the decode steps of concurrent streams as one forward pass).
        verify_positions: check once that re-rotating keys matches the model (`verify_rerotation`).
        weights_hash: how the fingerprint covers the weights (`compute_fingerprint`): `"full"` (every byte) or
            `"sample"`. Default: `"full"` for a `DiskKVStore` (entries outlive the process; the model may change in
            between), `"sample"` for memory stores.

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
        cache_attention: Literal["bidirectional", "causal"] | None = None,
        store: KVStore | None = None,
        prompts: RAGPrompts | None = None,
        query_instruction: str | None = None,
        max_length: int = 4096,
        cache_max_length: int | None = None,
        batch_size: int = 8,
        decode_cache: DecodeCache = "preallocated",
        compile: bool = False,
        batch_decoding: bool = False,
        verify_positions: bool = True,
        weights_hash: Literal["full", "sample"] | None = None,
    ):
        if not hasattr(model, "encode") or not hasattr(model, "tokenizer"):
            raise TypeError(f"`model` must be a GritLMForCausalLM, got {type(model).__name__}.")
        cache_attention = model.config.cache_attention if cache_attention is None else cache_attention
        if cache_attention not in ATTENTIONS:
            raise ValueError(f"Invalid `cache_attention`: {cache_attention!r}. Valid choices are: {ATTENTIONS}.")
        if store is not None and not isinstance(store, KVStore):
            raise TypeError(f"`store` must be a KVStore, got {type(store).__name__}.")
        if prompts is not None and not isinstance(prompts, RAGPrompts):
            raise TypeError(f"`prompts` must be a RAGPrompts, got {type(prompts).__name__}.")
        if query_instruction is not None:
            check_text(query_instruction, "query_instruction")
        check_positive_int(max_length, "max_length")
        check_positive_int(cache_max_length, "cache_max_length", allow_none=True)
        check_positive_int(batch_size, "batch_size")
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.generator = Generator(model, decode_cache, compile, batch_decoding)
        self.cache_attention = cache_attention
        self.causal_cache = cache_attention == "causal"
        cache_max_length = cache_max_length or model.max_positions or max_length
        self.embedding_pass = EmbeddingPass(model, self.causal_cache, max_length, cache_max_length, batch_size)
        self.prompts = prompts if prompts is not None else RAGPrompts.for_model(model)
        self.query_instruction = (
            model.config.default_query_instruction if query_instruction is None else query_instruction
        )
        if verify_positions:
            with self.lock:
                verify_rerotation(model)
        weights_hash = weights_hash or ("full" if isinstance(store, DiskKVStore) else "sample")
        self.fingerprint = compute_fingerprint(model, is_causal=self.causal_cache, weights_hash=weights_hash)
        self.store = store if store is not None else MemoryKVStore()
        self.store.bind(self.fingerprint)
        self.documents = DocumentTable(model.config.text_config.hidden_size)

    @property
    def lock(self):
        """The model's re-entrant forward lock (`model.forward_lock`); hold it for direct model use."""
        return self.model.forward_lock

    # -- embedding ---------------------------------------------------------------------------------------------------
    def embed(self, texts: str | Sequence[str], instruction: str | None = None) -> torch.Tensor:
        """Embeddings `(n, dim)` (float32, CPU) of `texts` with `instruction` (default: `query_instruction`; `""`
        embeds them as documents). Nothing is indexed or cached."""
        texts, _ = check_texts(texts, "texts")
        if instruction is not None:
            check_text(instruction, "instruction")
        if not texts:
            return torch.empty(0, self.documents.embeddings.shape[1])
        instruction = self.query_instruction if instruction is None else instruction
        return self.embedding_pass.run(texts, instruction, states=False)[0].float().cpu()

    # -- indexing ----------------------------------------------------------------------------------------------------
    def add_documents(
        self, texts: str | Sequence[str], ids: Sequence[str] | None = None, show_progress_bar: bool | None = None
    ) -> list[str]:
        """Embed documents and store their states (one encode pass gives both when the attentions agree).

        Idempotent: a document already indexed under the same id with the same text is not recomputed; an id with a
        new text is replaced. The batch is atomic: if storing any state fails (e.g. a full disk, raised as
        `OSError`), the index and the store are left as they were.

        Args:
            texts: the documents.
            ids: their ids (default: `document_id(text)`, so the same text is indexed once).
            show_progress_bar: show tqdm bars; `None` shows them when the logger is at INFO or DEBUG.

        Returns:
            The ids, in order.
        """
        texts, _ = check_texts(texts, "texts")
        if ids is None:
            ids = [document_id(text) for text in texts]
        else:
            ids = check_str_list(ids, "ids")
            if len(ids) != len(texts):
                raise ValueError(f"`ids` must hold one id per text: {len(texts)} texts, {len(ids)} ids.")
        new = self.documents.changed(ids, texts)
        if not new:
            return ids
        embeddings, parts = self.embedding_pass.run(list(new.values()), "", states=True, progress=show_progress_bar)
        uncached = [isinstance(part, list) for part in parts]  # too long to cache: any older entry is deleted
        with self.lock:
            self.store.put_many({i: None if cut else part for i, part, cut in zip(new, parts, uncached)})
            self.documents.update(new, embeddings, uncached)
        return ids

    def remove_documents(self, ids: Sequence[str]) -> list[str]:
        """Forget indexed documents: their texts, embeddings and stored states. Unknown ids are ignored.

        Returns:
            The ids that were indexed (and are now removed), in the order given.
        """
        ids = check_str_list(ids, "ids")
        with self.lock:
            removed = self.documents.remove(ids)
            for doc_id in removed:
                self.store.delete(doc_id)
        return removed

    @property
    def doc_ids(self) -> list[str]:
        """Ids of the indexed documents."""
        return list(self.documents.ids)

    def get_text(self, doc_id: str) -> str:
        """The text of an indexed document."""
        return self.documents.texts[self.documents.check_known([doc_id])[0]]

    def get_embeddings(self, doc_ids: Sequence[str]) -> torch.Tensor:
        """The stored embeddings `(n, dim)` (float32, CPU) of indexed documents, in the order of `doc_ids`."""
        doc_ids = self.documents.check_known(doc_ids)
        with self.lock:
            return self.documents.embeddings_of(doc_ids)

    def _document(self, doc_id: str) -> KVStates | list[int]:
        """The stored states of a document, recomputed (and stored again) if they were evicted or their entry is
        damaged; the token ids of its embedding input if it is too long to cache."""
        text = self.documents.texts[self.documents.check_known([doc_id])[0]]
        if doc_id in self.documents.uncached:
            return self.embedding_pass.input_ids(text, "")
        try:
            states = self.store.get(doc_id)
        except CacheEntryError as error:  # e.g. a file damaged on disk: the document's text is still here
            logger.warning(f"{error} Recomputing the states of {doc_id!r}.")
            states = None
        if states is None:
            _, (states,) = self.embedding_pass.run([text], "", states=True, embeddings=False)
            self.store.put(doc_id, states)
        return states

    # -- retrieval ---------------------------------------------------------------------------------------------------
    def search(self, query: str, top_k: int = 4) -> list[tuple[str, float]]:
        """The `top_k` documents closest to `query` (cosine similarity), best first: `[(doc_id, score), ...]`."""
        check_text(query, "query")
        check_positive_int(top_k, "top_k")
        return self.documents.rank(self.embedding_pass.run([query], self.query_instruction, states=False)[0][0], top_k)

    def query_states(self, query: str) -> KVStates | list[int]:
        """The states of `query` in its embedding format (query template + query) and the cache attention: what the
        query-caching modes reuse (`answer` takes them from the retrieval pass itself). A query longer than
        `cache_max_length` gives its full token ids instead (truncated states would drop part of it)."""
        return self._query_states(check_text(query, "query"))

    def _query_states(self, query: str) -> KVStates | list[int]:
        return self.embedding_pass.run([query], self.query_instruction, states=True, embeddings=False)[1][0]

    # -- prompts -----------------------------------------------------------------------------------------------------
    def render_chat(self, messages: str | list[dict[str, str]]) -> str:
        """Render `{"role", "content"}` messages (or one user message) with the checkpoint's chat template."""
        return apply_chat_template(self.tokenizer, check_messages(messages), self.model.config.chat_template)

    def split_prompt(self, prompt: str, doc_ids: Sequence[str] | None = None) -> list[Segment]:
        """Split a rendered prompt into segments, replacing each indexed document (of at least `MIN_CACHED_CHARS`
        characters, with stored states) whose text appears verbatim by a `CachedSegment` (earliest, then longest
        match first).

        A cached document stands for `document_template + text`: if the template text directly precedes the match
        it is absorbed (the prompt is unchanged); otherwise the spliced states add the template's tokens there.

        Returns `[str, CachedSegment, str, ...]` (empty text pieces left out); `[prompt]` if no document appears.
        """
        check_text(prompt, "prompt")
        doc_ids = None if doc_ids is None else self.documents.check_known(doc_ids)
        return self.documents.split_prompt(prompt, doc_ids, self.model.config.document_template)

    def _text_ids(self, ids: list[int], first: bool) -> list[int]:
        """`ids` without the special prefix (BOS) unless the part opens the prompt: exactly the ids a cached part
        stands for at that place."""
        return ids[strip_prefix_end(ids, self.generator.special_prefix, first) :]

    def build_segments(
        self, query: str, mode: RAGMode, doc_ids: Sequence[str], query_states: KVStates | list[int] | None = None
    ) -> list[Segment]:
        """The prompt of `mode` for `query` and the documents `doc_ids`, as segments for `generate_from_segments`.

        Plain RAG modes give token id lists (exactly the ids the caching modes take from the cache, texts in full);
        caching modes give `CachedSegment`s and the query's `KVStates` (`query_states`, computed here if not given).
        """
        check_mode(mode)
        check_text(query, "query")
        doc_ids = [] if mode == "none" else self.documents.check_known(doc_ids)
        return self._build_segments(query, mode, doc_ids, query_states)

    def _build_segments(
        self, query: str, mode: RAGMode, doc_ids: list[str], query_states: KVStates | list[int] | None
    ) -> list[Segment]:
        if mode == "none":
            messages = [{"role": "user", "content": query}]
            return [apply_chat_template(self.tokenizer, messages, self.model.config.chat_template)
                    + self.prompts.response_prefix]  # fmt: skip
        cached = mode not in ("rag_query_doc", "rag_doc_query")
        if mode in CACHED_QUERY_MODES and query_states is None:
            query_states = self._query_states(query)
        segments: list[Segment] = []
        for item in self.prompts.layout(mode, query, [self.documents.texts[d] for d in doc_ids]):
            first = not segments
            if isinstance(item, QuerySlot):
                query_part = query_states if cached else self.embedding_pass.input_ids(query, self.query_instruction)
                segments.append(self._text_ids(query_part, first) if isinstance(query_part, list) else query_part)
            elif isinstance(item, DocumentSlot):
                doc_id = doc_ids[item.index]
                segments.append(
                    CachedSegment(doc_id)
                    if cached
                    else self._text_ids(self.embedding_pass.input_ids(self.documents.texts[doc_id], ""), first)
                )
            else:
                segments.append(item)
        return segments

    # -- generation --------------------------------------------------------------------------------------------------
    def resolve(self, segments: Sequence[Segment], reuse_cache: bool = True) -> list[Part]:
        """The `Part`s of a prompt given as segments (cached documents looked up in the store; see
        `grit_hf.generation.segments`): what the generation engine composes."""
        with self.lock:
            return resolve_segments(
                segments, self.tokenizer, self._document, reuse_cache, prefix=self.generator.special_prefix
            )

    def generate_from_segments(
        self,
        segments: Sequence[Segment],
        stream: bool = False,
        reuse_cache: bool = True,
        result: GenerationResult | None = None,
        **options,
    ) -> GenerationResult | GenerationStream:
        """Generate after a prompt made of segments: text (`str`, run as is: no special tokens are added, so a
        rendered chat prompt keeps its own), token id lists, `KVStates`, and `CachedSegment`s (a document's stored
        states, re-rotated to their offset; they stand for `document_template + text`).

        Args:
            segments: the prompt, in order.
            stream: return a `GenerationStream` of text deltas (the prompt is composed before it returns).
            reuse_cache: `False` re-reads the cached parts' tokens as text (the no-cache reference).
            result: a `GenerationResult` to fill (e.g. carrying `doc_ids`).
            **options: `GenerationOptions` fields: `max_new_tokens` (default 256), `stop`, `temperature`, `top_p`,
                `seed`, `ignore_eos`.

        Returns a `GenerationResult` (text, token ids, prompt/cache-read/completion counts, finish reason), or a stream.
        """
        return self._generate(segments, stream, reuse_cache, result, GenerationOptions(**options))

    def _generate(
        self, segments: Sequence[Segment], stream: bool, reuse_cache: bool, result, options: GenerationOptions
    ):
        pieces = self.generator.stream(self.resolve(segments, reuse_cache), options, result)
        return pieces if stream else pieces.consume()

    def generate(
        self, prompt: str | list[dict[str, str]], stream: bool = False, reuse_cache: bool = True, **options
    ) -> GenerationResult | GenerationStream:
        """Answer a prompt (rendered text, or chat messages rendered with the chat template), splicing in the cached
        states of every indexed document found in it verbatim (`split_prompt`); `doc_ids` of the result lists them.
        `options` as for `generate_from_segments`."""
        prompt = check_text(prompt, "prompt") if isinstance(prompt, str) else self.render_chat(prompt)
        if not prompt:
            raise ValueError("`prompt` is empty: there is nothing to continue.")
        template = self.model.config.document_template
        segments = self.documents.split_prompt(prompt, None, template) if reuse_cache else [prompt]
        doc_ids = list(dict.fromkeys(s.doc_id for s in segments if isinstance(s, CachedSegment)))
        return self.generate_from_segments(segments, stream, result=GenerationResult(doc_ids=doc_ids), **options)

    def answer(
        self,
        query: str,
        mode: RAGMode = "doc",
        top_k: int = 1,
        doc_ids: Sequence[str] | None = None,
        stream: bool = False,
        **options,
    ) -> GenerationResult | GenerationStream:
        """Retrieve the `top_k` documents for `query` (or use `doc_ids`) and answer with `mode` (see the module
        docstring). Returns a `GenerationResult` (`text`, `doc_ids`, `scores`, `mode`, `cache_read_tokens`, ...), or
        with `stream=True` a `GenerationStream` whose `result` is complete at the end. `options` as for
        `generate_from_segments` (`max_new_tokens` defaults to 64 here)."""
        check_text(query, "query")
        check_mode(mode)
        check_positive_int(top_k, "top_k")
        options.setdefault("max_new_tokens", 64)
        options = GenerationOptions(**options)
        query_states, scores = None, []
        if mode == "none":
            doc_ids = []
        elif doc_ids is None:
            embedding, parts = self.embedding_pass.run([query], self.query_instruction, mode in CACHED_QUERY_MODES)
            ranked = self.documents.rank(embedding[0], top_k)
            if not ranked:
                raise ValueError("No documents are indexed: call `add_documents` first.")
            doc_ids, scores = [doc_id for doc_id, _ in ranked], [score for _, score in ranked]
            query_states = parts[0] if parts else None
        else:
            doc_ids = self.documents.check_known(doc_ids)
        segments = self._build_segments(query, mode, doc_ids, query_states)
        result = GenerationResult(doc_ids=list(doc_ids), scores=scores, mode=mode)
        return self._generate(segments, stream, True, result, options)
