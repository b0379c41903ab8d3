"""What one chat completion asks for, checked: `ChatCall.from_request` turns a `ChatRequest` into the messages, the
documents named by id and the generation options (400/404 in OpenAI's format for what the server cannot or will
not do), and `ChatCall.stream` plans, resolves and starts its generation (in a worker thread).

The prompt is a `PromptPlan` built once: documents named by id go in as `Cached` items where the chat template puts
the last user message (never pasted as text to be found again); texts a client pasted itself are found by
`GritRAG.plan_prompt`. The plan is resolved (tokenized, documents looked up) once, under the model's lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from jinja2.exceptions import TemplateError

from ..generation.engine import GenerationOptions, GenerationResult, GenerationStream
from ..generation.plan import Cached, PromptPlan, Text
from ..rag.prompts import placeholder, plan_chat
from ..validation import check_text
from .errors import APIError
from .limits import check_count
from .schemas import ChatRequest

__all__ = ["ChatCall"]

_UNSUPPORTED_ROLES = ("tool", "function")
_REFUSED = {  # fields whose non-default values would change the answer and that are not implemented
    "n": lambda body: body.n not in (None, 1),
    "presence_penalty": lambda body: body.presence_penalty not in (None, 0),
    "frequency_penalty": lambda body: body.frequency_penalty not in (None, 0),
    "logprobs": lambda body: bool(body.logprobs) or bool(body.top_logprobs),
    "logit_bias": lambda body: bool(body.logit_bias),
    "tools": lambda body: bool(body.tools) or bool(body.functions),
    "tool_choice": lambda body: body.tool_choice not in (None, "none", "auto"),
    "response_format": lambda body: body.response_format is not None and body.response_format.type != "text",
}


@dataclass(frozen=True)
class ChatCall:
    """A checked chat completion request.

    Attributes:
        messages: `{"role", "content"}` dicts of text for the chat template.
        doc_ids: the documents named by id (the `documents` extension), indexed.
        last_user: the message they go into (the last user message), when there are some.
        options: `GenerationOptions` fields.
        reuse_cache: splice cached states (`false`: every document read as text).
    """

    messages: list[dict[str, str]]
    doc_ids: list[str]
    last_user: int | None
    options: dict[str, Any]
    reuse_cache: bool

    @classmethod
    def from_request(cls, state, body: ChatRequest) -> ChatCall:
        """Check `body` against the server's limits and index, in one pass (400/404 naming the field)."""
        refused = next((name for name, refuse in _REFUSED.items() if refuse(body)), None)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_tokens = state.limits.max_tokens if max_tokens is None else max_tokens
        doc_ids = body.documents or []
        problem = _problem(refused, param, max_tokens, state.limits.max_tokens, body.temperature)
        if problem is not None:
            raise problem
        check_count(len(body.stop) if isinstance(body.stop, list) else 0, 16, "stop", "stop strings")
        check_count(len(doc_ids), state.limits.max_inputs, "documents", "document ids")
        options = _options(body, max_tokens, param)
        state.documents.check_known(doc_ids, "documents")
        messages = _messages(body)
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if doc_ids and last_user is None:
            raise APIError(400, "`documents` needs a user message to put the documents in.", "documents")
        return cls(messages, doc_ids, last_user if doc_ids else None, options, body.reuse_cache)

    def stream(self, rag, max_prompt_tokens: int) -> GenerationStream:
        """Plan the prompt, resolve it and start generating (the prefill runs here: call it in a worker thread)."""
        with rag.lock:  # documents are not removed while the prompt is planned, resolved and composed
            try:
                plan = self._plan(rag)
            except TemplateError as error:
                raise APIError(400, f"The chat template refused the messages: {error}", "messages") from None
            plan = rag.resolve(plan, self.reuse_cache)
            if plan.num_tokens > max_prompt_tokens:
                raise APIError(
                    400,
                    f"The prompt has {plan.num_tokens} tokens; the server accepts at most {max_prompt_tokens}.",
                    "messages",
                    "context_length_exceeded",
                )
            result = GenerationResult(doc_ids=plan.doc_ids)
            return rag.generate_from_plan(plan, stream=True, result=result, **self.options)

    def _plan(self, rag) -> PromptPlan:
        """The conversation as a prompt plan: the documents named by id (each followed by a blank line) as cached
        items before the last user message's content (`plan_chat`), and any indexed text the client pasted itself
        found by `plan_prompt`."""
        if self.last_user is None:
            return rag.plan_prompt(rag.render_chat(self.messages))
        marked = [dict(message) for message in self.messages]
        marked[self.last_user]["content"] = placeholder(0) + marked[self.last_user]["content"]
        documents = [item for doc_id in self.doc_ids for item in (Cached(doc_id), Text("\n\n"))]
        try:
            return PromptPlan(plan_chat(rag, marked, [documents]), rag.recompute)
        except ValueError as error:
            raise APIError(400, str(error), "documents") from None


def _problem(refused: str | None, param: str, max_tokens: int, limit: int, temperature) -> APIError | None:
    """The 400 of a refused field or an out-of-range value, if any."""
    if refused is not None:
        return APIError(
            400, f"`{refused}` is not supported by this server (leave it unset or at its default).", refused
        )
    if max_tokens < 1:
        return APIError(400, f"`{param}` must be at least 1, got {max_tokens}.", param)
    if max_tokens > limit:
        return APIError(400, f"`{param}`={max_tokens} is above the server's limit of {limit}.", param, "too_many")
    if temperature is not None and temperature > 2:
        return APIError(400, f"`temperature` must be in [0, 2], got {temperature}.", "temperature")
    return None


def _options(body: ChatRequest, max_tokens: int, param: str) -> dict[str, Any]:
    """`GenerationOptions` fields of the request, checked by `GenerationOptions` (400 naming the field)."""
    options = dict(
        max_new_tokens=max_tokens,
        stop=body.stop,
        temperature=body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        ignore_eos=body.ignore_eos,
    )
    try:
        return vars(GenerationOptions(**options))
    except (TypeError, ValueError) as error:
        match = re.search(r"`(\w+)`", str(error))
        field = match.group(1) if match else None
        field = {"max_new_tokens": param}.get(field, field)
        raise APIError(400, str(error).replace("max_new_tokens", param), field) from None


def _messages(body: ChatRequest) -> list[dict[str, str]]:
    """`{"role", "content"}` dicts of text for the chat template (400 for what the server cannot take)."""
    messages = []
    for index, message in enumerate(body.messages):
        where = f"messages[{index}]"
        if message.role in _UNSUPPORTED_ROLES or message.tool_calls:
            raise APIError(400, f"`{where}` is a tool call or result: this server does not support tools.", where)
        content = message.content
        if content is None:
            if message.role != "assistant":
                raise APIError(400, f"`{where}.content` is missing.", f"{where}.content")
            content = ""
        if isinstance(content, list):
            texts = []
            for part_index, part in enumerate(content):
                if isinstance(part, dict):
                    kind = part.get("type")
                    raise APIError(
                        400,
                        f"`{where}.content[{part_index}]` has type {kind!r}: only text parts are supported.",
                        f"{where}.content[{part_index}]",
                    )
                texts.append(part.text)
            content = "".join(texts)
        try:
            check_text(content, f"{where}.content")
        except ValueError as error:
            raise APIError(400, str(error), f"{where}.content") from None
        messages.append({"role": "system" if message.role == "developer" else message.role, "content": content})
    return messages
