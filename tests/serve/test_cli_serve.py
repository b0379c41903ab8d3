"""`grit-hf serve`'s command line: loopback by default, the API key from the flag or the environment, limits from
flags, and a warning when listening beyond the loopback without a key."""

from __future__ import annotations

import logging

import pytest

from grit_hf.cli import make_parser
from grit_hf.cli.serve import API_KEY_ENV, _is_loopback, build_server


def test_defaults_listen_on_the_loopback_only():
    args = make_parser().parse_args(["serve"])
    assert (args.model, args.host, args.port, args.api_key) == ("default", "127.0.0.1", 8000, None)
    assert args.cache_embeddings and args.max_concurrent_generations == 8
    help_text = make_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    assert "--api-key" in help_text and API_KEY_ENV in help_text and "--max-input-tokens" in help_text
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("example.org")


@pytest.fixture
def tiny_model(grit_checkpoint):
    from grit_hf import GritLMForCausalLM
    from grit_hf.rag import release_shared

    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama")).eval()
    yield model
    release_shared(model)


def test_key_from_the_environment_limits_from_flags_and_a_warning_beyond_the_loopback(tiny_model, monkeypatch, caplog):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    argv = ["serve", "--host", "0.0.0.0", "--max-inputs", "3", "--request-timeout", "7.5", "--no-cache-embeddings"]
    with caplog.at_level(logging.WARNING, logger="grit_hf.serve"):
        server = build_server(make_parser().parse_args(argv), model=tiny_model)
    assert "without an API key" in caplog.text
    state = server.config.app.state.grit
    assert state.settings.api_key is None and not state.settings.cache_embeddings
    assert state.limits.max_inputs == 3 and state.limits.request_timeout == 7.5
    assert server.config.host == "0.0.0.0"
    state.close()

    from grit_hf.rag import release_shared

    release_shared(tiny_model)
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="grit_hf.serve"):
        server = build_server(make_parser().parse_args(["serve", "--host", "0.0.0.0"]), model=tiny_model)
    assert "without an API key" not in caplog.text
    assert server.config.app.state.grit.settings.api_key == "from-env"
    server.config.app.state.grit.close()


def test_serve_model_default_answers_offline(default_model_dir):
    """`grit-hf serve --model default` (the command's own loading path, offline): embeddings equal `encode`, and a
    chat answer comes back."""
    import numpy as np
    from serve_helpers import start_server

    from grit_hf import load_model

    running = start_server(["--model", "default", "--max-tokens", "8"])
    try:
        client = running.openai()
        served, started_as = [model.id for model in client.models.list().data]
        # the checkpoint folder's name (the base's, or the trained one's) and the --model string too (as vLLM does)
        assert (served, started_as) == (default_model_dir.name, "default")
        text = "chgrp changes the group ownership of each file."
        vector = client.embeddings.create(model="default", input=[text]).data[0].embedding
        expected = load_model("default", device="cpu").encode([text])[0]
        np.testing.assert_allclose(vector, expected, atol=1e-5)
        chat = client.chat.completions.create(model=served, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert chat.choices[0].message.content and chat.usage.completion_tokens <= 4
    finally:
        running.stop()
        from grit_hf.rag import release_shared

        release_shared(running.state.rag.model)


def test_the_recompute_flag_reaches_the_answers_and_their_usage(tiny_model):
    """`--recompute` sets the shared instance's selective recomputation; a chat over a document named by id reports
    the recomputed positions in `usage.prompt_tokens_details` beside the cached ones."""
    import httpx
    from serve_helpers import start_server

    running = start_server(["--cache-attention", "bidirectional", "--recompute", "head:3"], model=tiny_model)
    try:
        base = running.base_url
        text = "Berlin is the capital of Germany; it has many museums and parks."
        httpx.post(base + "/v1/documents", json={"documents": [{"id": "berlin", "text": text}]}, timeout=60)
        body = {"messages": [{"role": "user", "content": "Where are the parks?"}], "documents": ["berlin"]}
        usage = httpx.post(base + "/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=60).json()["usage"]
        assert usage["prompt_tokens_details"]["recomputed_tokens"] == 3
        assert usage["prompt_tokens_details"]["cached_tokens"] > 0
        plain = httpx.post(
            base + "/v1/chat/completions", json={**body, "max_tokens": 2, "reuse_cache": False}, timeout=60
        )
        assert plain.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "recomputed_tokens": 0}
        assert plain.json()["usage"]["prompt_tokens"] == usage["prompt_tokens"]  # the same token ids, read as text
    finally:
        running.stop()


def test_quantization_flag_reaches_the_served_model(grit_checkpoint):
    """`--quantization int4` loads the served model quantized (the same load path as `--dtype`)."""
    pytest.importorskip("torchao")
    from grit_hf.quantization import model_quantization
    from grit_hf.rag import release_shared

    argv = ["serve", "--model", str(grit_checkpoint("llama")), "--quantization", "int4", "--dtype", "bfloat16"]
    server = build_server(make_parser().parse_args(argv))
    state = server.config.app.state.grit
    try:
        assert model_quantization(state.rag.model) == "int4"
    finally:
        state.close()
        release_shared(state.rag.model)
