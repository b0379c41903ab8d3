"""`grit-hf serve`: start the OpenAI-compatible server (FastAPI on uvicorn) for one model.

    grit-hf serve --model default                      # 127.0.0.1:8000, no key
    GRIT_HF_API_KEY=secret grit-hf serve --model ./ckpt --host 0.0.0.0 --port 9000 --cache-dir /var/cache/grit
    grit-hf serve --index ./manpages-index --port 8001   # one replica of a shared index (grit-hf index)

Heavy imports (torch, FastAPI, uvicorn) happen inside the command, so `grit-hf --help` stays fast.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

__all__ = ["add_parser", "build_app", "build_server", "API_KEY_ENV"]

API_KEY_ENV = "GRIT_HF_API_KEY"
logger = logging.getLogger("grit_hf.serve")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `serve` command."""
    from ..serve.limits import Limits
    from .model_commands import add_model_arguments, add_recompute_argument

    parser = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible server: embeddings and chat from one model, sharing cached document states",
        description="Serve /v1/embeddings, /v1/chat/completions, /v1/models, /v1/documents, /health and /metrics "
        "from one GRIT model (FastAPI + uvicorn; needs the 'serve' extra).",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--index",
        default=None,
        help="serve an index built by `grit-hf index` (read-only, shared with other replicas; documents added here "
        "stay in this replica's store); the model is the one its manifest names unless --model names another",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on every endpoint but /health (default: ${API_KEY_ENV})",
    )
    parser.add_argument("--served-model-name", default=None, help="the model id clients send (default: its name)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    store = parser.add_argument_group("key/value store")
    store.add_argument(
        "--cache-bytes",
        type=int,
        default=2**30,
        help="byte budget of the in-memory store (LRU; with --index also of the shared states read, each)",
    )
    store.add_argument(
        "--cache-dir",
        default=None,
        help="keep states on disk here (the memory store fronts it; with --index: the states of documents added here)",
    )
    store.add_argument("--cache-attention", choices=["causal", "bidirectional"], default=None)
    add_recompute_argument(store)
    store.add_argument(
        "--decode-cache",
        choices=["preallocated", "dynamic", "static"],
        default=None,
        help="decode cache (GPU: static)",
    )
    store.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile decoding (CUDA: with --decode-cache static; CPU: compiles for minutes at the first chats, "
        "then steps about a quarter faster)",
    )
    store.add_argument(
        "--no-cache-embeddings",
        dest="cache_embeddings",
        action="store_false",
        help="do not index documents embedded through /v1/embeddings unless a request asks ('cache': true)",
    )
    store.add_argument(
        "--no-batch-decoding",
        dest="batch_decoding",
        action="store_false",
        help="decode each chat on its own (default: the decode steps of concurrent chats run as one forward pass, "
        "batch-invariant: a chat's tokens do not depend on the others; off with --decode-cache static)",
    )
    batching = parser.add_argument_group("embedding batcher")
    batching.add_argument("--batch-size", type=int, default=64, help="texts per model call (at most)")
    batching.add_argument("--batch-wait-ms", type=float, default=2.0, help="wait for more requests (ms)")
    limits = parser.add_argument_group("limits")
    defaults = Limits()
    for name, kind in (
        ("max_body_bytes", int),
        ("max_inputs", int),
        ("max_input_tokens", int),
        ("max_tokens", int),
        ("max_prompt_tokens", int),
        ("max_concurrent_generations", int),
        ("max_queued_inputs", int),
        ("max_documents", int),
        ("request_timeout", float),
    ):
        limits.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name))
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="seconds open requests may still take after SIGTERM or Ctrl-C; then each ends with a 503 in OpenAI's "
        "format (streams with a final error event)",
    )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(func=run)
    return parser


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_app(args: argparse.Namespace, model=None):
    """The app for parsed `args` (`model`: a loaded model to serve instead of `--model`)."""
    import torch

    from ..cache.disk import DiskKVStore
    from ..cache.store import MemoryKVStore
    from ..rag.registry import get_shared, model_display_name
    from ..serve.app import create_app
    from ..serve.limits import Limits
    from ..serve.state import ServerSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    limits = Limits(**{name: getattr(args, name) for name in Limits.__dataclass_fields__})
    if args.cache_dir:
        store = DiskKVStore(args.cache_dir, memory_bytes=args.cache_bytes)
    else:
        store = MemoryKVStore(max_bytes=args.cache_bytes)
    rag_kwargs = dict(store=store, max_length=limits.max_input_tokens + 512, cache_attention=args.cache_attention)
    rag_kwargs.update(recompute=args.recompute)
    batch_decoding = args.batch_decoding and args.decode_cache != "static"
    rag_kwargs.update(decode_cache=args.decode_cache, compile=args.compile or None, batch_decoding=batch_decoding)
    if args.index:
        rag = _open_index(args, model, rag_kwargs)
    else:
        source = model if model is not None else args.model
        load_kwargs = None
        if model is None:
            load_kwargs = dict(
                device=args.device, dtype=args.dtype, revision=args.revision, quantization=args.quantization
            )
        rag = get_shared(source, load_kwargs=load_kwargs, rag_kwargs=rag_kwargs)
    limits = _fit_input_tokens(limits, rag.model)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    aliases = [name for name in (args.model if model is None else None, model_display_name(rag.model)) if name]
    settings = ServerSettings(
        model_name=args.served_model_name or model_display_name(rag.model),
        model_aliases=tuple(str(name) for name in aliases),
        api_key=api_key,
        cache_embeddings=args.cache_embeddings,
        batch_size=args.batch_size,
        batch_wait=args.batch_wait_ms / 1000,
        shutdown_timeout=args.shutdown_timeout,
    )
    return create_app(rag, settings, limits)


def _open_index(args: argparse.Namespace, model, rag_kwargs: dict):
    """`GritRAG.from_index(--index)`: the manifest's model unless `--model` (or `model`) names another, in the index's
    dtype unless `--dtype` says otherwise; this replica's store (`--cache-bytes`, `--cache-dir`) holds what it adds."""
    from ..checkpoint.loading import load_model
    from ..rag.gritrag import GritRAG
    from ..rag.manifest import IndexManifest

    if args.model == "default":  # the flag's default: the model the manifest names (a name clients may use)
        args.model = IndexManifest.load(args.index).model
    if model is None and (args.dtype != "auto" or args.quantization):
        model = load_model(args.model, args.device, args.dtype, args.revision, quantization=args.quantization)
    model = model if model is not None else args.model
    store = rag_kwargs.pop("store")
    return GritRAG.from_index(
        args.index, model, store, device=args.device, memory_bytes=args.cache_bytes, **rag_kwargs
    )


def _fit_input_tokens(limits, model):
    """`limits` with `max_input_tokens` capped so that a text of that many tokens, with the document template and
    special tokens, fits the model's positions (said once at start; longer queries are refused per request)."""
    import dataclasses

    if model.max_positions is None:
        return limits
    overhead = len(model.tokenize_for_embedding(["x"], "", model.max_positions, warn=False).token_ids[0]) - 1
    fit = model.max_positions - overhead
    if limits.max_input_tokens <= fit:
        return limits
    logger.warning(
        f"--max-input-tokens {limits.max_input_tokens} lowered to {fit}: the model has {model.max_positions} positions "
        f"and the template takes {overhead} of them."
    )
    return dataclasses.replace(limits, max_input_tokens=fit)


def build_server(args: argparse.Namespace, model=None):
    """A `uvicorn.Server` for parsed `args`, not yet running (`server.run()` blocks; tests run it in a thread)."""
    import uvicorn

    from ..serve.shutdown import BACKSTOP_SECONDS, GracefulServer

    if not _is_loopback(args.host) and not (args.api_key or os.environ.get(API_KEY_ENV)):
        logger.warning(f"Listening on {args.host} without an API key: anyone who can reach it may use the model.")
    app = build_app(args, model)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_keep_alive=5,
        # open requests end in OpenAI's format after --shutdown-timeout (serve/shutdown.py); uvicorn's own deadline,
        # which cancels tasks with a traceback each, is a backstop that is not reached
        timeout_graceful_shutdown=args.shutdown_timeout + BACKSTOP_SECONDS,
        access_log=False,
    )
    return GracefulServer(config, app.state.shutdown)


class _Stop(Exception):
    """SIGTERM, raised where the main thread is (uvicorn re-raises the signals it handled after its shutdown)."""


def _on_sigterm(signum, frame) -> None:
    raise _Stop("SIGTERM")


def run(args: argparse.Namespace) -> int:
    """Build and run the server until Ctrl-C (SIGINT) or SIGTERM: open requests may finish for `--shutdown-timeout`
    seconds, then each ends with a 503 in OpenAI's format; one line says how it ended; no traceback."""
    import signal
    import sys

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        server = build_server(args)
        name = server.config.app.state.grit.settings.model_name
        print(f"grit-hf serve: {name} on http://{args.host}:{args.port}/v1", flush=True)
        server.run()
    except (KeyboardInterrupt, _Stop) as stop:
        how = "SIGINT" if isinstance(stop, KeyboardInterrupt) else str(stop)
        print(f"grit-hf serve: stopped by {how}", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
