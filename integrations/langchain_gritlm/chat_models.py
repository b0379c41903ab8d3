"""`ChatGritLM`: a LangChain chat model on a GRIT model that reuses the cached key/value states of documents it finds,
verbatim, in the prompt (for example documents retrieved through `GritLMEmbeddings` on the same model)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import InputTokenDetails, UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from grit_hf.rag import GenerationResult
from grit_hf.rag.integration import UsesSharedGrit, aiter_in_thread
from grit_hf.validation import check_non_negative_number, check_positive_int

__all__ = ["ChatGritLM"]

_ROLES = {HumanMessage: "user", AIMessage: "assistant", SystemMessage: "system"}


def _message_to_dict(message: BaseMessage, index: int) -> dict[str, str]:
    """A `{"role", "content"}` dict for the chat template (text content only)."""
    if isinstance(message, (ToolMessage, FunctionMessage)) or getattr(message, "tool_calls", None):
        raise ValueError(
            f"`messages[{index}]` is a {type(message).__name__} with tool calls or results: ChatGritLM does not "
            "support tool calling."
        )
    if isinstance(message, ChatMessage):
        role = message.role
    else:
        role = next((r for cls, r in _ROLES.items() if isinstance(message, cls)), None)
        if role is None:
            raise ValueError(f"`messages[{index}]` has an unsupported message type {type(message).__name__}.")
    if not isinstance(message.content, str):
        non_text = [b.get("type") for b in message.content if isinstance(b, dict) and b.get("type") != "text"]
        if non_text:
            raise ValueError(f"`messages[{index}]` has content blocks of type {non_text}: ChatGritLM takes text only.")
    return {"role": role, "content": message.text}


def _usage(result: GenerationResult) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=result.prompt_tokens,
        output_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
        input_token_details=InputTokenDetails(cache_read=result.cache_read_tokens),
    )


class ChatGritLM(UsesSharedGrit, BaseChatModel):
    """Chat with a GRIT model, reusing the key/value states of cached documents found in the prompt.

    The messages are rendered with the checkpoint's chat template; every cached document (embedded through
    `GritLMEmbeddings` on the same `model`) whose text appears verbatim in the rendered prompt is read from the
    key/value store instead of being recomputed. `usage_metadata["input_token_details"]["cache_read"]` counts the
    prompt tokens that were reused. Decoding is greedy unless `temperature > 0`.

    Args:
        model, cache_attention, rag_kwargs: the shared model and its key/value store (`UsesSharedGrit`): a
            checkpoint folder, a Hub name such as `"GritLM/GritLM-7B"`, `"default"` or a loaded `GritLMForCausalLM`.
        max_tokens: maximum number of new tokens.
        temperature: sampling temperature; `None` or `0` decodes greedily.
        stop: stop sequences (the answer is cut before the first one).
        reuse_cache: look for cached documents in the prompt (`False` always recomputes the whole prompt).

    Example:

    ```python
    >>> from langchain_gritlm import ChatGritLM
    >>> llm = ChatGritLM(model="default", max_tokens=16)
    >>> llm.invoke("What is the capital of France?").content
    'The capital of France is Paris.'
    ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), populate_by_name=True)

    max_tokens: int = Field(default=256, gt=0, alias="max_new_tokens")
    temperature: float | None = Field(default=None, ge=0)
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    reuse_cache: bool = True
    streaming: bool = False

    @property
    def model_name(self) -> str:
        """A readable name of the model (the checkpoint folder's name)."""
        return self.shared_name

    @property
    def _llm_type(self) -> str:
        return "gritlm-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "reuse_cache": self.reuse_cache,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="gritlm",
            ls_model_name=kwargs["model"] if isinstance(kwargs.get("model"), str) else self.model_name,
            ls_model_type="chat",
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _call_options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(kwargs) - {"max_tokens", "max_new_tokens", "temperature", "reuse_cache"}
        if unknown:
            raise TypeError(f"ChatGritLM got unexpected keyword argument(s) {sorted(unknown)}.")
        max_tokens = check_positive_int(
            kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_tokens)), "max_tokens"
        )
        temperature = check_non_negative_number(
            kwargs.get("temperature", self.temperature), "temperature", allow_none=True
        )
        return {
            "max_new_tokens": max_tokens,
            "stop": stop if stop is not None else self.stop,
            "temperature": temperature,
            "reuse_cache": kwargs.get("reuse_cache", self.reuse_cache),
        }

    def _prompt(self, messages: list[BaseMessage]) -> str:
        if not messages:
            raise ValueError("`messages` must not be empty.")
        return self.shared.render_chat([_message_to_dict(m, i) for i, m in enumerate(messages)])

    def _metadata(self, result: GenerationResult) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_provider": "gritlm",
            "finish_reason": result.finish_reason,
            "cache_read_tokens": result.cache_read_tokens,
            "recomputed_tokens": result.recomputed_tokens,
            "cached_doc_ids": list(result.doc_ids),
        }

    # -- generation --------------------------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        options = self._call_options(stop, kwargs)
        result = self.shared.generate(self._prompt(messages), **options)
        message = AIMessage(
            content=result.text, usage_metadata=_usage(result), response_metadata=self._metadata(result)
        )
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"model_name": self.model_name})

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        options = self._call_options(stop, kwargs)
        stream = self.shared.generate(self._prompt(messages), stream=True, **options)
        try:
            for delta in stream:  # BaseChatModel reports each chunk to the callbacks
                yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
        finally:
            stream.close()
        result = stream.result
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=_usage(result),
                response_metadata=self._metadata(result),
                chunk_position="last",
            ),
            generation_info={"finish_reason": result.finish_reason},
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """Stream from a worker thread, yielding each chunk in the event loop as soon as it is decoded."""
        async for chunk in aiter_in_thread(lambda: self._stream(messages, stop=stop, **kwargs)):
            yield chunk  # BaseChatModel reports each chunk to the callbacks
