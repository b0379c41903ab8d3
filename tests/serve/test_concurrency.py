"""Concurrent clients get exactly what they get one at a time (greedy), a long answer does not stall embeddings or
other chats, and a client that goes away stops its generation (which frees its cache and its slot)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from serve_helpers import slow_generation

PROMPTS = [
    "Tell me about Paris.",
    "What is photosynthesis?",
    "Name a city in Germany.",
    "Why is the sky blue?",
]
TEXTS = [f"Document number {i}: the quick brown fox jumps over {i} lazy dogs." for i in range(12)]


def _chat(client, prompt: str, stream: bool = False, max_tokens: int = 16):
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0)
    if not stream:
        response = client.chat.completions.create(**kwargs)
        return response.choices[0].message.content, response.usage.model_dump()
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].usage.model_dump()


def _embed(client, texts: list[str], **extra) -> np.ndarray:
    response = client.embeddings.create(model="tiny", input=texts, extra_body=extra or None)
    return np.array([item.embedding for item in response.data])


def test_concurrent_clients_equal_sequential_ones(server):
    clients = [server.openai() for _ in range(4)]
    groups = [TEXTS[i::4] for i in range(4)]
    sequential_chats = [_chat(clients[0], prompt) for prompt in PROMPTS]
    sequential_streams = [_chat(clients[0], prompt, stream=True) for prompt in PROMPTS]
    sequential_docs = [_embed(clients[0], group) for group in groups]
    sequential_queries = [_embed(clients[0], group, input_type="query") for group in groups]
    with ThreadPoolExecutor(16) as pool:
        chats = [pool.submit(_chat, clients[i], p) for i, p in enumerate(PROMPTS)]
        docs = [pool.submit(_embed, clients[i], g) for i, g in enumerate(groups)]
        queries = [pool.submit(_embed, clients[i], g, input_type="query") for i, g in enumerate(groups)]
        chats = [f.result() for f in chats]
        docs = [f.result() for f in docs]
        queries = [f.result() for f in queries]
        streams = list(pool.map(lambda i: _chat(clients[i], PROMPTS[i], stream=True), range(4)))
    assert chats == sequential_chats
    assert streams == sequential_streams
    assert [c[0] for c in streams] == [c[0] for c in chats]
    for got, expected in zip(docs + queries, sequential_docs + sequential_queries):
        # documents: the stored embedding is returned; queries: batches pad differently, so float noise only
        assert np.allclose(got, expected, atol=1e-5)


def test_a_long_answer_stalls_neither_embeddings_nor_other_chats(server):
    client = server.openai()
    done: dict[str, float] = {}
    started = threading.Event()

    def long_answer() -> None:
        stream = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Write a long story."}],
            max_tokens=500,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for _ in stream:
            started.set()
        done["long"] = time.monotonic()

    thread = threading.Thread(target=long_answer)
    thread.start()
    assert started.wait(30)
    _embed(client, ["An embedding requested while a long answer streams."])
    done["embedding"] = time.monotonic()
    _chat(client, "A short question?", max_tokens=4)
    done["chat"] = time.monotonic()
    thread.join(120)
    assert done["embedding"] < done["long"] and done["chat"] < done["long"]


def test_a_client_that_goes_away_stops_its_generation(open_server, monkeypatch, metrics):
    closed = slow_generation(monkeypatch, open_server, delay=0.05)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000, "stream": True}
    body["ignore_eos"] = True
    with httpx.stream("POST", open_server.base_url + "/v1/chat/completions", json=body, timeout=30) as response:
        lines = (line for line in response.iter_lines() if line)
        assert next(lines).startswith("data: ")  # the role chunk
        assert '"content"' in next(lines)
        assert open_server.state.slots.active == 1
    assert closed.wait(3.0), "the generation did not stop when its client went away"
    deadline = time.monotonic() + 1.0
    while open_server.state.slots.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert open_server.state.slots.active == 0
    assert metrics(open_server)["grit_hf_active_generations"] == 0
