"""What one server holds: the shared `GritRAG`, its settings and limits, the embedding batcher, the generation slots
and worker threads, the document index and the metrics (`ServerState`, kept in `app.state.grit`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from fastapi import Request

from ..rag.gritrag import GritRAG
from ..validation import check_non_negative_number
from .documents import ServerDocuments
from .embedding_batcher import EmbeddingBatcher
from .errors import APIError
from .limits import GenerationSlots, Limits
from .metrics import Metrics

__all__ = ["ServerSettings", "ServerState", "get_state"]


@dataclass(frozen=True)
class ServerSettings:
    """How the server behaves (its limits are in `Limits`).

    Attributes:
        model_name: the model id the server answers with (`/v1/models` lists it first).
        model_aliases: other ids clients may name for it (the `--model` string, the checkpoint folder's name), as
            vLLM accepts the name it was started with; requests naming any other model get 404.
        api_key: the Bearer key every endpoint but `/health` needs (`None`: none).
        cache_embeddings: whether `/v1/embeddings` indexes documents and keeps their states by default (a request's
            `cache` field overrides it).
        batch_size: texts per call of the embedding batcher (at most, unless one request holds more).
        batch_wait: seconds the batcher waits for more requests after the first.
        shutdown_timeout: seconds open requests may still take once shutdown starts (SIGTERM, Ctrl-C); then each
            ends with a 503, streams with a final error event (`grit_hf.serve.shutdown`).
    """

    model_name: str
    model_aliases: tuple[str, ...] = ()
    api_key: str | None = None
    cache_embeddings: bool = True
    batch_size: int = 64
    batch_wait: float = 0.002
    shutdown_timeout: float = 10.0

    def __post_init__(self) -> None:
        check_non_negative_number(self.shutdown_timeout, "shutdown_timeout")


class ServerState:
    """The objects behind one app (see the module docstring)."""

    def __init__(self, rag: GritRAG, settings: ServerSettings, limits: Limits):
        self.rag, self.settings, self.limits = rag, settings, limits
        self.metrics = Metrics()
        self.documents = ServerDocuments(rag, limits.max_documents)
        self.slots = GenerationSlots(limits.max_concurrent_generations)
        self.executor = ThreadPoolExecutor(limits.max_concurrent_generations, thread_name_prefix="grit-hf-generate")
        self.batcher = EmbeddingBatcher(
            self._embed,
            max_batch=settings.batch_size,
            max_wait=settings.batch_wait,
            max_queued=limits.max_queued_inputs,
            on_batch=self.metrics.batch_size.observe,
        )
        self.created = int(time.time())
        m = self.metrics
        m.active_generations.set_function(lambda: self.slots.active)
        m.queued_inputs.set_function(lambda: self.batcher.queued)
        m.documents.set_function(lambda: len(self.documents))
        m.store_bytes.set_function(lambda: getattr(rag.store, "nbytes", 0))

    @property
    def dimension(self) -> int:
        return self.rag.model.config.text_config.hidden_size

    def _embed(self, key: Hashable, texts: list[str]) -> np.ndarray:
        """The batcher's model call: `("document", cache)` or `("query", instruction)`."""
        kind, value = key
        if kind == "document" and value:
            return self.documents.embed_and_cache(texts)
        instruction = "" if kind == "document" else value
        return self.rag.embed(texts, instruction=instruction).numpy()

    @property
    def model_names(self) -> list[str]:
        """Every id of the served model, its own first."""
        return list(dict.fromkeys([self.settings.model_name, *self.settings.model_aliases]))

    def check_model(self, name: str | None) -> None:
        """404 unless `name` is one of the served model's ids (or not given)."""
        if name is not None and name not in self.model_names:
            raise APIError(
                404,
                f"The model {name!r} does not exist here: this server serves {self.settings.model_name!r} "
                "(GET /v1/models).",
                "model",
                "model_not_found",
            )

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text, without special tokens or templates (what `usage` reports)."""
        if not texts:
            return []
        return [len(ids) for ids in self.rag.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def check_fits(self, texts: list[str], instruction: str, param: str) -> None:
        """400 for a text whose embedding input (template, instruction and special tokens included) is longer than the
        model's positions: it could only be embedded truncated, and the server truncates nothing silently."""
        model = self.rag.model
        if model.max_positions is None:
            return
        inputs = model.tokenize_for_embedding(texts, instruction, model.max_positions, warn=False)
        for index, cut in enumerate(inputs.truncated):
            if cut:
                where = f"{param}[{index}]" if len(texts) > 1 else param
                raise APIError(
                    400,
                    f"`{where}` does not fit the model: with its template it takes more than the model's "
                    f"{model.max_positions} positions (nothing is truncated). Split the text or shorten it.",
                    where,
                    "context_length_exceeded",
                )

    def deadline(self) -> float:
        """The `time.monotonic()` by which a request starting now must be done."""
        return time.monotonic() + self.limits.request_timeout

    async def in_thread(self, function, *args):
        """Run blocking work (tokenizing, indexing) in the default thread pool."""
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    def timeout_error(self) -> APIError:
        """The 504 of a request that took longer than `request_timeout`."""
        return APIError(
            504,
            f"The request took longer than the server's limit of {self.limits.request_timeout:g} s.",
            code="timeout",
        )

    async def before(self, deadline: float, awaitable):
        """The result of `awaitable`, or `timeout_error()` once `deadline` (`time.monotonic()`) has passed."""
        try:
            return await asyncio.wait_for(awaitable, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise self.timeout_error() from None

    def close(self) -> None:
        self.batcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


def get_state(request: Request) -> ServerState:
    return request.app.state.grit
