"""The FastAPI app of `grit-hf serve`: one model and one key/value store behind OpenAI's embeddings and chat
endpoints (see `grit_hf.serve` for the endpoints and extensions)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..rag.gritrag import GritRAG
from . import chat, embeddings, rerank, routes
from .errors import install_error_handlers
from .limits import Limits
from .metrics import MetricsMiddleware
from .security import GuardMiddleware
from .shutdown import EndOnShutdown, ShutdownGrace
from .state import ServerSettings, ServerState

__all__ = ["create_app"]


def create_app(rag: GritRAG, settings: ServerSettings, limits: Limits | None = None) -> FastAPI:
    """The app serving `rag` (its model and key/value store) with `settings` and `limits`.

    The state (batcher thread, generation threads) starts with the app and stops with its lifespan; the app's
    `state.grit` holds it (`ServerState`), and `state.shutdown` the grace period of open requests at shutdown
    (`ShutdownGrace`, started by `shutdown.GracefulServer`).
    """
    limits = limits if limits is not None else Limits()
    state = ServerState(rag, settings, limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title="grit-hf",
        summary="OpenAI-style embeddings and chat from one GRIT model, sharing cached document states.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.grit = state
    app.state.shutdown = ShutdownGrace(settings.shutdown_timeout)
    install_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(embeddings.router)
    app.include_router(chat.router)
    app.include_router(rerank.router)
    # the last added is the outermost: metrics see every request, refused ones and those ended by shutdown included
    app.add_middleware(
        GuardMiddleware,
        api_key=settings.api_key,
        max_body_bytes=limits.max_body_bytes,
        body_timeout=limits.request_timeout,
    )
    app.add_middleware(EndOnShutdown, grace=app.state.shutdown)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
