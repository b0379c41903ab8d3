"""`GritLM`: a LlamaIndex LLM on a GRIT model that reuses the cached key/value states of nodes it finds, verbatim, in
the prompt (for example nodes indexed through `GritLMEmbedding` on the same model)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from pydantic import Field

from grit_hf.rag import GenerationResult
from grit_hf.rag.integration import UsesSharedGrit, aiter_in_thread
from grit_hf.validation import check_non_negative_number, check_positive_int

__all__ = ["GritLM"]

_ROLE_NAMES = {MessageRole.DEVELOPER: "system", MessageRole.CHATBOT: "assistant", MessageRole.MODEL: "assistant"}


def _usage(result: GenerationResult) -> dict[str, Any]:
    return {
        "cache_read_tokens": result.cache_read_tokens,
        "recomputed_tokens": result.recomputed_tokens,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "finish_reason": result.finish_reason,
        "cached_doc_ids": list(result.doc_ids),
    }


class GritLM(UsesSharedGrit, CustomLLM):
    """A GRIT model as a LlamaIndex LLM, reusing the key/value states of cached nodes found in the prompt.

    Prompts are rendered with the checkpoint's chat template (`complete` wraps the prompt in one user turn, after
    `system_prompt` if set); every cached text (embedded through `GritLMEmbedding` on the same `model`) that appears
    verbatim in the rendered prompt is read from the key/value store instead of being recomputed. Every response
    reports the reused prompt tokens in `additional_kwargs["cache_read_tokens"]` (with `prompt_tokens`,
    `completion_tokens` and `finish_reason`). Decoding is greedy unless `temperature > 0`.

    Args:
        model, cache_attention, rag_kwargs: the shared model and its key/value store (`UsesSharedGrit`): a
            checkpoint folder, a Hub name such as `"GritLM/GritLM-7B"`, `"default"` or a loaded `GritLMForCausalLM`.
        max_new_tokens: maximum number of new tokens.
        temperature: sampling temperature; `None` or `0` decodes greedily.
        stop: stop sequences (the answer is cut before the first one).
        reuse_cache: look for cached texts in the prompt (`False` always recomputes the whole prompt).
        context_window: tokens of prompt plus answer, for LlamaIndex's prompt packing (defaults to the model's
            maximum positions).

    Example:

    ```python
    >>> from llama_index.llms.gritlm import GritLM
    >>> llm = GritLM(model="default", max_new_tokens=16)
    >>> llm.complete("What is the capital of France?").text
    'The capital of France is Paris.'
    ```
    """

    max_new_tokens: int = Field(default=256, gt=0, description="Maximum number of new tokens.")
    temperature: float | None = Field(default=None, ge=0, description="Sampling temperature (None/0: greedy).")
    stop: list[str] | None = Field(default=None, description="Stop sequences.")
    reuse_cache: bool = Field(default=True, description="Reuse cached key/value states of texts in the prompt.")
    context_window: int | None = Field(default=None, gt=0, description="Tokens of prompt plus answer.")

    @classmethod
    def class_name(cls) -> str:
        return "GritLM"

    @property
    def metadata(self) -> LLMMetadata:
        """Context window (the model's maximum positions), output budget and name; a chat model."""
        return LLMMetadata(
            context_window=self.context_window or self.shared.model.max_positions or 2048,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            model_name=self.shared_name,
        )

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(kwargs) - {"max_new_tokens", "max_tokens", "temperature", "stop", "reuse_cache"}
        if unknown:
            raise TypeError(f"GritLM got unexpected keyword argument(s) {sorted(unknown)}.")
        max_new_tokens = check_positive_int(
            kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens)), "max_new_tokens"
        )
        return {
            "max_new_tokens": max_new_tokens,
            "stop": kwargs["stop"] if kwargs.get("stop") is not None else self.stop,
            "temperature": check_non_negative_number(
                kwargs.get("temperature", self.temperature), "temperature", allow_none=True
            ),
            "reuse_cache": kwargs.get("reuse_cache", self.reuse_cache),
        }

    def _chat_prompt(self, messages: Sequence[ChatMessage]) -> str:
        if not messages:
            raise ValueError("`messages` must not be empty.")
        rendered = []
        for index, message in enumerate(messages):
            if not isinstance(message, ChatMessage):
                raise TypeError(f"`messages[{index}]` must be a ChatMessage, got {type(message).__name__}.")
            if message.role in (MessageRole.TOOL, MessageRole.FUNCTION):
                raise ValueError(f"`messages[{index}]` has role {message.role.value!r}: GritLM does not call tools.")
            role = _ROLE_NAMES.get(message.role, message.role.value)
            rendered.append({"role": role, "content": message.content or ""})
        if self.system_prompt and rendered[0]["role"] != "system":
            rendered.insert(0, {"role": "system", "content": self.system_prompt})
        return self.shared.render_chat(rendered)

    def _completion_prompt(self, prompt: str, formatted: bool) -> str:
        if not isinstance(prompt, str):
            raise TypeError(f"`prompt` must be a str, got {type(prompt).__name__}.")
        if formatted:
            return prompt
        return self._chat_prompt([ChatMessage(role=MessageRole.USER, content=prompt)])

    def _completion_responses(self, full_prompt: str, options: dict[str, Any]) -> CompletionResponseGen:
        stream = self.shared.generate(full_prompt, stream=True, **options)
        text = ""
        try:
            for delta in stream:
                text += delta
                yield CompletionResponse(text=text, delta=delta, additional_kwargs=_usage(stream.result))
        finally:
            stream.close()
        result = stream.result
        yield CompletionResponse(text=text, delta="", raw=result, additional_kwargs=_usage(result))

    def _chat_responses(self, full_prompt: str, options: dict[str, Any]) -> ChatResponseGen:
        for response in self._completion_responses(full_prompt, options):
            message = ChatMessage(role=MessageRole.ASSISTANT, content=response.text)
            yield ChatResponse(
                message=message, delta=response.delta, raw=response.raw, additional_kwargs=response.additional_kwargs
            )

    # -- completion --------------------------------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer `prompt` (rendered as one user turn unless `formatted=True`, i.e. already a full model prompt)."""
        result = self.shared.generate(self._completion_prompt(prompt, formatted), **self._options(kwargs))
        return CompletionResponse(text=result.text, raw=result, additional_kwargs=_usage(result))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Stream the answer to `prompt`; each response carries the text so far and the new `delta`."""
        return self._completion_responses(self._completion_prompt(prompt, formatted), self._options(kwargs))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Async `complete` (runs in a worker thread; the shared lock serialises model use)."""
        return await asyncio.to_thread(self.complete, prompt, formatted, **kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Async `stream_complete` (the whole generation runs in one worker thread)."""
        full_prompt = self._completion_prompt(prompt, formatted)
        options = self._options(kwargs)
        return aiter_in_thread(lambda: self._completion_responses(full_prompt, options))

    # -- chat --------------------------------------------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer a conversation rendered with the checkpoint's chat template."""
        result = self.shared.generate(self._chat_prompt(messages), **self._options(kwargs))
        message = ChatMessage(role=MessageRole.ASSISTANT, content=result.text)
        return ChatResponse(message=message, raw=result, additional_kwargs=_usage(result))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream the answer to a conversation; each response carries the text so far and the new `delta`."""
        return self._chat_responses(self._chat_prompt(messages), self._options(kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async `chat` (runs in a worker thread)."""
        return await asyncio.to_thread(self.chat, messages, **kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """Async `stream_chat` (the whole generation runs in one worker thread)."""
        full_prompt = self._chat_prompt(messages)
        options = self._options(kwargs)
        return aiter_in_thread(lambda: self._chat_responses(full_prompt, options))
