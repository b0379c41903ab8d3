"""`GritRAG`: retrieval, reranking and generation with one GRIT model, reusing the key/value states computed while
embedding (paper section 4, "RAG with caching").

Modes of `GritRAG.answer`: `none`, plain RAG `rag_query_doc` / `rag_doc_query` and the caching modes `query`, `doc`,
`query_doc`, `doc_query` (layouts in `grit_hf.rag.prompts`). Plain RAG re-reads exactly the token ids the caching
modes take from the cache. With causal caches, `query` equals `rag_query_doc` token for token, and `doc` with one
document equals `rag_doc_query` (several documents were each cached without the others). Bidirectional caches (the
embedding pass's own states) approximate plain RAG unless the checkpoint was trained for them (the cache loss, recorded
as `cache_attention="bidirectional"`, the default here then); `recompute` (default: the checkpoint's
`cache_recompute`) computes chosen positions of them again, causally (`grit_hf.generation.recompute`).

Prompts are `PromptPlan`s (`grit_hf.generation.plan`), built once from ids (`build_plan`, through `RAGPrompts.plan`;
`plan_prompt` finds indexed documents in a free-text prompt), resolved once against the `DocumentIndex`, composed
once (cached parts re-rotated to their offsets). Counts: `prompt_tokens`, `cache_read_tokens` (reused states) and
`recomputed_tokens`. Every forward pass holds the model's lock (`grit_hf.locking`), so threads and instances may
share a model; stored states are never written to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from transformers.utils import logging

from ..cache.buffers import DecodeCache
from ..cache.disk import DiskKVStore
from ..cache.fingerprint import compute_fingerprint
from ..cache.positions import verify_rerotation
from ..cache.states import KVStates
from ..cache.store import KVStore, MemoryKVStore
from ..configuration_gritlm import ATTENTIONS
from ..formatting import apply_chat_template, check_messages
from ..generation.engine import GenerationOptions, GenerationResult, GenerationStream, Generator
from ..generation.plan import PromptPlan, Text
from ..generation.recompute import Recompute
from ..validation import check_positive_int, check_text, check_texts
from .documents import DocumentTable
from .embedding_pass import EmbeddingPass
from .index import DocumentIndex
from .opening import open_index
from .prompts import CACHED_QUERY_MODES, PLAIN_MODES, QUERY_PART_MODES, RAGMode, RAGPrompts, check_mode
from .rerank import Reranker, candidate_items, rerank_ranked

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
        recompute: selective recomputation of bidirectional cached states (`Recompute`, `"RULE:AMOUNT"` such as
            `"deviation:0.15"`, or `"none"`). Default: the checkpoint's `cache_recompute` for bidirectional caches,
            none for causal ones (they are exact already).

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
        recompute: Recompute | str | float | int | None = None,
    ):
        if not hasattr(model, "encode") or not hasattr(model, "tokenizer"):
            raise TypeError(f"`model` must be a GritLMForCausalLM, got {type(model).__name__}.")
        cache_attention = model.config.cache_attention if cache_attention is None else cache_attention
        if cache_attention not in ATTENTIONS:
            raise ValueError(f"Invalid `cache_attention`: {cache_attention!r}. Valid choices are: {ATTENTIONS}.")
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
        if recompute is None and not self.causal_cache:
            recompute = model.config.cache_recompute
        self.recompute = Recompute.parse(recompute)
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
        self.index = DocumentIndex(
            self.embedding_pass, store if store is not None else MemoryKVStore(), self.fingerprint
        )

    from_index = classmethod(open_index)  # GritRAG.from_index(DIR): an index built by `grit-hf index`, read-only

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
            return torch.empty(0, self.model.config.text_config.hidden_size)
        instruction = self.query_instruction if instruction is None else instruction
        return self.embedding_pass.run(texts, instruction, states=False)[0].float().cpu()

    # -- indexing (`grit_hf.rag.index.DocumentIndex`) ---------------------------------------------------------------
    def add_documents(
        self, texts: str | Sequence[str], ids: Sequence[str] | None = None, show_progress_bar: bool | None = None
    ) -> list[str]:
        """Embed documents and store their states (one encode pass gives both when the attentions agree); returns the
        ids, in order. Idempotent: a document already indexed under the same id with the same text is not recomputed; an id with a
        new text is replaced. The batch is atomic: if storing any state fails (e.g. a full disk, raised as
        `OSError`), the index and the store are left as they were.

        Args:
            texts: the documents.
            ids: their ids (default: `document_id(text)`, so the same text is indexed once).
            show_progress_bar: show tqdm bars; `None` shows them when the logger is at INFO or DEBUG.
        """
        return self.index.add(texts, ids, show_progress_bar)

    def remove_documents(self, ids: Sequence[str]) -> list[str]:
        """Forget indexed documents (texts, embeddings, stored states); returns those that were indexed, in the order
        given. Unknown ids are ignored; the documents of an opened index (`from_index`) are read-only."""
        return self.index.remove(ids)

    @property
    def doc_ids(self) -> list[str]:
        """Ids of the indexed documents."""
        return list(self.documents.ids)

    def get_text(self, doc_id: str) -> str:
        """The text of an indexed document."""
        return self.index.text(doc_id)

    def get_embeddings(self, doc_ids: Sequence[str]) -> torch.Tensor:
        """The stored embeddings `(n, dim)` (float32, CPU) of indexed documents, in the order of `doc_ids`."""
        return self.index.embeddings(doc_ids)

    @property
    def documents(self) -> DocumentTable:
        """The indexed documents' ids, texts and embeddings (`index.table`)."""
        return self.index.table

    @documents.setter
    def documents(self, table: DocumentTable) -> None:
        self.index.table = table

    @property
    def store(self) -> KVStore:
        """Where the documents' states are stored (`index.store`; a store set here must carry this fingerprint)."""
        return self.index.store

    @store.setter
    def store(self, store: KVStore) -> None:
        self.index.store = store

    # -- retrieval ---------------------------------------------------------------------------------------------------
    def search(
        self, query: str, top_k: int = 4, rerank: str | Reranker | None = None, rerank_top_k: int = 10
    ) -> list[tuple[str, float]]:
        """The `top_k` documents closest to `query` (cosine similarity), best first: `[(doc_id, score), ...]`. With
        `rerank` (`"likelihood"`, `"permutation"` or a `Reranker`), the first `max(top_k, rerank_top_k)` are reranked
        by the same model (`rerank`) and the scores are the reranker's."""
        check_text(query, "query")
        check_positive_int(top_k, "top_k")
        embedding = self.embedding_pass.run([query], self.query_instruction, states=False)[0][0]
        ranked = self.documents.rank(embedding, max(top_k, rerank_top_k) if rerank else top_k)
        return rerank_ranked(self, query, ranked, top_k, rerank, rerank_top_k)

    def rerank(
        self,
        query: str,
        doc_ids: Sequence[str] | None = None,
        texts: Sequence[str] | None = None,
        method: str | Reranker = "likelihood",
        reuse_cache: bool = True,
    ) -> list[float]:
        """Relevance scores of candidates for `query` by this model (`grit_hf.rag.rerank`): indexed documents by
        `doc_ids` (read from their cached states) or `texts` (indexed ones from their states, others as text).
        `reuse_cache=False` reads every candidate as text (the reference). Higher is more relevant."""
        check_text(query, "query")
        reranker = method if isinstance(method, Reranker) else Reranker(method)
        return reranker.scores(self, query, candidate_items(self, doc_ids, texts), reuse_cache)

    def query_states(self, query: str) -> KVStates | list[int]:
        """The states of `query` in its embedding format (query template + query) and the cache attention: what the
        query-caching modes reuse (`answer` takes them from the retrieval pass itself). A query longer than
        `cache_max_length` gives its full token ids instead (truncated states would drop part of it)."""
        check_text(query, "query")
        return self.embedding_pass.run([query], self.query_instruction, states=True, embeddings=False)[1][0]

    # -- prompts -----------------------------------------------------------------------------------------------------
    def render_chat(self, messages: str | list[dict[str, str]]) -> str:
        """Render `{"role", "content"}` messages (or one user message) with the checkpoint's chat template."""
        return apply_chat_template(self.tokenizer, check_messages(messages), self.model.config.chat_template)

    def plan_prompt(self, prompt: str, doc_ids: Sequence[str] | None = None) -> PromptPlan:
        """A rendered prompt as a plan: each indexed document (at least `MIN_CACHED_CHARS` characters, states stored;
        all, or those of `doc_ids`) found verbatim becomes a `Cached` item (`DocumentTable.find_in`), the rest text.
        This is how prompts written by other libraries (LangChain, LlamaIndex) reuse cached states; where the ids are
        known, build the plan from them (`build_plan`). A cached document stands for `document_template + text`: a
        template directly before the match is absorbed, otherwise the spliced states add its tokens there."""
        check_text(prompt, "prompt")
        doc_ids = None if doc_ids is None else self.documents.check_known(doc_ids)
        template = self.model.config.document_template
        return PromptPlan(self.documents.plan_items(prompt, doc_ids, template), self.recompute)

    def build_plan(
        self,
        query: str,
        mode: RAGMode,
        doc_ids: Sequence[str],
        query_states: KVStates | list[int] | None = None,
        recompute: Recompute | str | float | int | None = None,
    ) -> PromptPlan:
        """The prompt of `mode` for `query` and the documents `doc_ids` (`RAGPrompts.plan`). Documents are `Cached`
        items and the query part its states (`query_states`, computed here if not given) or, in plain modes, the ids
        of its embedding input; plain RAG modes resolve them as token ids (`resolve` does), so they read exactly the
        ids the caching modes take from the cache. `recompute` overrides this instance's setting."""
        check_mode(mode)
        check_text(query, "query")
        doc_ids = [] if mode == "none" else self.documents.check_known(doc_ids)
        if mode in QUERY_PART_MODES and query_states is None:
            query_states = self.embedding_pass.run(
                [query], self.query_instruction, states=mode in CACHED_QUERY_MODES, embeddings=False
            )[1][0]
        chat = self.render_chat(query) if mode == "none" else None
        texts = [self.documents.texts[doc_id] for doc_id in doc_ids]
        recompute = self.recompute if recompute is None else Recompute.parse(recompute)
        return self.prompts.plan(mode, query, texts, doc_ids, query_states, recompute, chat_prompt=chat)

    # -- generation --------------------------------------------------------------------------------------------------
    def resolve(self, plan: PromptPlan, reuse_cache: bool = True) -> PromptPlan:
        """The plan ready to compose: stored documents looked up in this index (`PromptPlan.resolve`)."""
        with self.lock:
            return plan.resolve(self.tokenizer, self.index, reuse_cache, prefix=self.generator.special_prefix)

    def generate_from_plan(
        self,
        plan: PromptPlan | list,
        stream: bool = False,
        reuse_cache: bool = True,
        result: GenerationResult | None = None,
        **options,
    ) -> GenerationResult | GenerationStream:
        """Generate after a prompt plan: `Text` (run as is: no special tokens are added, so a rendered chat prompt
        keeps its own), `Tokens`, and `Cached` items (a stored document's states, re-rotated to their offset; they
        stand for `document_template + text`). A list of items or shorthands (`str`, token id lists, `KVStates`) is
        taken as `PromptPlan.of(items, recompute=self.recompute)`.

        Args:
            plan: the prompt.
            stream: return a `GenerationStream` of text deltas (the prompt is composed before it returns).
            reuse_cache: `False` re-reads the cached items' tokens as text (the no-cache reference).
            result: a `GenerationResult` to fill (e.g. carrying `doc_ids`).
            **options: `GenerationOptions` fields: `max_new_tokens` (default 256), `stop`, `temperature`, `top_p`,
                `seed`, `ignore_eos`.

        Returns a `GenerationResult` (text, token ids, prompt/cache-read/recomputed/completion counts, finish reason),
        or a stream.
        """
        if not isinstance(plan, PromptPlan):
            plan = PromptPlan.of(plan, self.recompute)
        options = GenerationOptions(**options)
        with self.lock:
            plan = plan.resolve(self.tokenizer, self.index, reuse_cache, prefix=self.generator.special_prefix)
        pieces = self.generator.stream(plan, options, result)
        return pieces if stream else pieces.consume()

    def generate(
        self,
        prompt: str | list[dict[str, str]],
        stream: bool = False,
        reuse_cache: bool = True,
        recompute: Recompute | str | float | int | None = None,
        **options,
    ) -> GenerationResult | GenerationStream:
        """Answer a prompt (rendered text, or chat messages rendered with the chat template), splicing in the cached
        states of every indexed document found in it verbatim (`plan_prompt`); `doc_ids` of the result lists them.
        `recompute` overrides this instance's setting; `options` as for `generate_from_plan`."""
        prompt = check_text(prompt, "prompt") if isinstance(prompt, str) else self.render_chat(prompt)
        if not prompt:
            raise ValueError("`prompt` is empty: there is nothing to continue.")
        plan = self.plan_prompt(prompt) if reuse_cache else PromptPlan([Text(prompt)])
        plan.recompute = self.recompute if recompute is None else Recompute.parse(recompute)
        result = GenerationResult(doc_ids=plan.doc_ids)
        return self.generate_from_plan(plan, stream, reuse_cache, result, **options)

    def answer(
        self,
        query: str,
        mode: RAGMode = "doc",
        top_k: int = 1,
        doc_ids: Sequence[str] | None = None,
        stream: bool = False,
        recompute: Recompute | str | float | int | None = None,
        rerank: str | Reranker | None = None,
        rerank_top_k: int = 10,
        **options,
    ) -> GenerationResult | GenerationStream:
        """Retrieve the `top_k` documents for `query` (or use `doc_ids`) and answer with `mode` (see the module
        docstring). Returns a `GenerationResult` (`text`, `doc_ids`, `scores`, `mode`, `cache_read_tokens`,
        `recomputed_tokens`, ...), or with `stream=True` a `GenerationStream` whose `result` is complete at the end.
        `recompute` overrides this instance's setting; `rerank` reranks the first `rerank_top_k` retrieved before the
        `top_k` are kept (as `search` does); `options` as for `generate_from_plan` (`max_new_tokens` defaults to 64
        here)."""
        check_text(query, "query")
        check_mode(mode)
        check_positive_int(top_k, "top_k")
        options = GenerationOptions(**{"max_new_tokens": 64, **options})
        retrieve = mode != "none" and doc_ids is None
        embedding, parts = None, [None]
        if (
            retrieve or mode in QUERY_PART_MODES
        ):  # one pass: the query's embedding and what stands for it in the prompt
            embedding, parts = self.embedding_pass.run(
                [query], self.query_instruction, states=mode in CACHED_QUERY_MODES, embeddings=retrieve
            )
        if retrieve:
            ranked = self.documents.rank(embedding[0], max(top_k, rerank_top_k) if rerank else top_k)
            if not ranked:
                raise ValueError("No documents are indexed: call `add_documents` first.")
        else:
            doc_ids = [] if mode == "none" else self.documents.check_known(doc_ids)
        if retrieve:
            ranked = rerank_ranked(self, query, ranked, top_k, rerank, rerank_top_k)
            doc_ids = [doc_id for doc_id, _ in ranked]
        chat = None
        if mode == "none":
            messages = [{"role": "user", "content": query}]
            chat = apply_chat_template(self.tokenizer, messages, self.model.config.chat_template)
        plan = self.prompts.plan(
            mode, query, [self.documents.texts[doc_id] for doc_id in doc_ids], doc_ids, parts[0],
            self.recompute if recompute is None else Recompute.parse(recompute), chat_prompt=chat,
        )  # fmt: skip
        with self.lock:
            plan = plan.resolve(self.tokenizer, self.index, mode not in PLAIN_MODES, self.generator.special_prefix)
        scores = [score for _, score in ranked] if retrieve else []
        pieces = self.generator.stream(plan, options, GenerationResult(doc_ids=doc_ids, scores=scores, mode=mode))
        return pieces if stream else pieces.consume()
